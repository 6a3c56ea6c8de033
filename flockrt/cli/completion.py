"""``flockrt completion bash|zsh|fish``: a completion script written from the parser itself,
so it completes every subcommand and option there is, and costs nothing at start-up (no
completion hook runs Python while you type)."""

from __future__ import annotations

import argparse

from flockrt.cli.parser import build_parser

__all__ = ["main", "script"]


def _commands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, list[argparse.Action]]]:
    """Each subcommand's help and options (the help flags aside)."""
    found: dict[str, tuple[str, list[argparse.Action]]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                options = [
                    a for a in sub._actions if a.option_strings and not isinstance(a, argparse._HelpAction)
                ]
                found[name] = (helps.get(name, ""), options)
    return found


def _positional_choices(parser: argparse.ArgumentParser, name: str) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub = action.choices[name]
            for positional in sub._actions:
                if not positional.option_strings and positional.choices:
                    return [str(choice) for choice in positional.choices]
    return []


def _bash(parser: argparse.ArgumentParser) -> str:
    commands = _commands(parser)
    cases = []
    for name, (_, options) in commands.items():
        words = [flag for action in options for flag in action.option_strings]
        words += _positional_choices(parser, name)
        cases.append(f'        {name}) words="{" ".join(words)}" ;;')
    # After an option that takes a value: its choices, a file name, or nothing to offer.
    value_cases = []
    for name, (_, options) in commands.items():
        for action in options:
            if action.nargs == 0:
                continue
            pattern = "|".join(f"{name}:{flag}" for flag in action.option_strings)
            if action.choices:
                values = " ".join(map(str, action.choices))
                reply = f'COMPREPLY=($(compgen -W "{values}" -- "$cur")); return'
            elif action.dest in ("config", "json"):
                reply = 'COMPREPLY=($(compgen -f -- "$cur")); return'
            else:
                reply = "return"
            value_cases.append(f"        {pattern}) {reply} ;;")
    value_block = "\n".join(value_cases)
    return f"""# bash completion for flockrt (flockrt completion bash)
_flockrt() {{
    local cur prev command words i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    command=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            -*) ;;
            *) command="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    if [[ -z "$command" ]]; then
        COMPREPLY=($(compgen -W "{" ".join(commands)} --help --version" -- "$cur"))
        return
    fi
    case "$command:$prev" in
{value_block}
    esac
    case "$command" in
{chr(10).join(cases)}
        *) words="" ;;
    esac
    if [[ "$command" == run || "$command" == check ]] && [[ "$cur" != -* ]]; then
        COMPREPLY=($(compgen -f -- "$cur"))
        return
    fi
    COMPREPLY=($(compgen -W "$words --help" -- "$cur"))
}}
complete -F _flockrt flockrt
"""


def _zsh(parser: argparse.ArgumentParser) -> str:
    return (
        "#compdef flockrt\n# zsh completion for flockrt (flockrt completion zsh): the bash one, "
        "through zsh's bashcompinit\nautoload -U +X bashcompinit && bashcompinit\n" + _bash(parser)
    )


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish(parser: argparse.ArgumentParser) -> str:
    commands = _commands(parser)
    lines = [
        "# fish completion for flockrt (flockrt completion fish)",
        "complete -c flockrt -f",
        "complete -c flockrt -n __fish_use_subcommand -l version -d 'print the version'",
    ]
    for name, (help, _) in commands.items():
        lines.append(f"complete -c flockrt -n __fish_use_subcommand -a {name} -d {_fish_quote(help)}")
    for name, (_, options) in commands.items():
        condition = f"'__fish_seen_subcommand_from {name}'"
        for choice in _positional_choices(parser, name):
            lines.append(f"complete -c flockrt -n {condition} -a {choice}")
        if name in ("run", "check"):
            lines.append(f"complete -c flockrt -n {condition} -F")
        for action in options:
            flags = []
            for flag in action.option_strings:
                flags.append(f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}")
            takes = "" if action.nargs == 0 else (" -r -F" if action.dest in ("config", "json") else " -r")
            if action.choices:
                takes = f" -r -a {_fish_quote(' '.join(map(str, action.choices)))}"
            description = f" -d {_fish_quote(action.help)}" if action.help else ""
            lines.append(f"complete -c flockrt -n {condition} {' '.join(flags)}{takes}{description}")
    return "\n".join(lines) + "\n"


def script(shell: str) -> str:
    """The completion script of ``shell`` (bash, zsh or fish)."""
    parser = build_parser()
    return {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](parser)


def main(args: argparse.Namespace) -> int:
    print(script(args.shell), end="")
    return 0
