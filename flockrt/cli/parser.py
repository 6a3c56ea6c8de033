"""The command line of ``flockrt``: every subcommand, its help and its options.

Adding a subcommand: write ``add_<name>(commands)`` below (its help says in one line what it
does, its description may say more; :func:`operator_command` gives a command that talks to a
running flock the shared options) and add a :class:`Command` to :data:`COMMANDS` naming the
function that runs it, ``"flockrt.cli.<module>:<function>"``, taking the parsed arguments and
returning the exit status. The module is imported only when the subcommand runs, so that
``flockrt --help`` stays fast: nothing here imports more than the standard library.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, TypeAlias

from flockrt._version import __version__
from flockrt.cli.endpoint import CONFIG_VARIABLE

__all__ = ["BENCH_SUITES", "COMMANDS", "Command", "build_parser", "operator_command", "seconds"]

BENCH_SUITES = ("kernel", "bus", "agents", "gateway", "metrics", "startup", "cluster")
"""The suites of ``benchmarks/`` that ``flockrt bench`` runs, in this order."""

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``add_subparsers`` returns: each ``add_<name>`` adds its subcommand to it."""


def seconds(text: str) -> float:
    """An argument in seconds, > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def _parent(*adders: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    for add in adders:
        add(parent)
    return parent


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"the flock's TOML config: its [mcp] and [nats] sections say where the flock is "
        f"(default ${CONFIG_VARIABLE})",
    )


def _connection(parser: argparse.ArgumentParser, timeout: float = 30.0) -> None:
    _config_option(parser)
    parser.add_argument(
        "--url",
        help="the gateway's WebSocket endpoint (default: from --config, else "
        "ws://127.0.0.1:$MCP_PORT/mcp with MCP_PORT=4002)",
    )
    parser.add_argument(
        "--token", help="bearer token (default $FLOCKRT_TOKEN, else the config's first token)"
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=timeout,
        help=f"seconds to wait for the flock, connecting included (default {timeout:g})",
    )


def _nats_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nats",
        metavar="URL",
        help="the flock's NATS, used when the gateway cannot be reached (default: from --config)",
    )


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts) instead of text")


def _quiet_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="show no progress on standard error while waiting"
    )


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config",
        nargs="?",
        default=os.environ.get(CONFIG_VARIABLE),
        help=f"path to the TOML config, e.g. configs/flock.toml (default ${CONFIG_VARIABLE})",
    )


def add_run(commands: Subparsers) -> argparse.ArgumentParser:
    run = commands.add_parser(
        "run",
        help="run the flock a config file describes, until Ctrl-C or SIGTERM",
        description="Start the embedded NATS (if configured), the agents under one root supervisor, "
        "the MCP gateway and /metrics; stop gracefully on SIGINT or SIGTERM.",
    )
    _config_argument(run)
    return run


def add_check(commands: Subparsers) -> argparse.ArgumentParser:
    check = commands.add_parser(
        "check",
        help="validate a config file without starting anything",
        description="Check every key and every agent class of a config "
        "(exit 2 naming the key if one is wrong).",
    )
    _config_argument(check)
    _json_option(check)
    return check


def operator_command(
    commands: Subparsers,
    name: str,
    help: str,
    description: str,
    *,
    nats: bool = False,
    progress: bool = False,
) -> argparse.ArgumentParser:
    """A subcommand that talks to a running flock: ``--config``, ``--url``, ``--token``,
    ``--timeout`` and ``--json`` (resolve them with :func:`flockrt.cli.endpoint.resolve`), plus
    ``--nats`` (the NATS fallback) and ``--quiet`` (no progress on stderr) where asked for."""
    parents = [_parent(_connection, _json_option)]
    if nats:
        parents.append(_parent(_nats_option))
    if progress:
        parents.append(_parent(_quiet_option))
    parser: argparse.ArgumentParser = commands.add_parser(
        name, parents=parents, help=help, description=description
    )
    return parser


def add_agents(commands: Subparsers) -> argparse.ArgumentParser:
    agents = operator_command(
        commands,
        "agents",
        "list the flock's agents, on every node",
        "List the agents the flock knows (of every node on its NATS): status, capabilities, load, node.",
    )
    agents.add_argument("--all", action="store_true", help="offline agents too")
    agents.add_argument("--capability", help="only agents offering this capability")
    return agents


def add_tree(commands: Subparsers) -> argparse.ArgumentParser:
    return operator_command(
        commands,
        "tree",
        "draw the supervision tree of the gateway's process",
        "Draw the supervision tree of the process serving the gateway: supervisors, strategies, "
        "restart types, states, restarts and queued messages.",
    )


def add_top(commands: Subparsers) -> argparse.ArgumentParser:
    top = operator_command(
        commands,
        "top",
        "watch the flock live: every node, agent, restart and failure (Ctrl-C quits)",
        "Watch the flock live in the terminal, from the gateway's live-view feed: every node's actors, "
        "tasks per second and latency, every agent, restarts and recent failures. --once prints one "
        "frame (with the supervision trees), --json the feed's snapshot.",
    )
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    return top


def add_send(commands: Subparsers) -> argparse.ArgumentParser:
    send = operator_command(
        commands,
        "send",
        "send a direct message to an agent (a query prints its answer)",
        "Send a direct message to one agent by id; with --type query, wait for its answer and print it.",
        nats=True,
    )
    send.add_argument("to", help="the agent's id")
    send.add_argument("message", help="JSON, or else taken as a string")
    send.add_argument("--type", default="command", help="command (default), query (prints the answer), ...")
    return send


def add_request(commands: Subparsers) -> argparse.ArgumentParser:
    request = operator_command(
        commands,
        "request",
        "have an agent offering a capability do it, and print the result",
        "Request a capability of the flock: an agent that offers it does it; its result is printed as JSON.",
        nats=True,
        progress=True,
    )
    request.add_argument("capability", help="the capability's name, e.g. text-analysis")
    request.add_argument("parameters", nargs="?", default="{}", help="JSON parameters (default {})")
    return request


def add_submit(commands: Subparsers) -> argparse.ArgumentParser:
    submit = operator_command(
        commands,
        "submit",
        "submit a task to the flock (with --wait, print its result)",
        "Submit a task of a type (published on tasks.<type>); print its id, or with --wait its result.",
        progress=True,
    )
    submit.add_argument("type", help="the task type (tasks.<type>)")
    submit.add_argument("data", nargs="?", default="null", help="the task's data as JSON (default null)")
    submit.add_argument("--wait", action="store_true", help="wait for the result and print it")
    submit.add_argument(
        "--priority", choices=("low", "medium", "high"), default="medium", help="default medium"
    )
    return submit


def add_mcp(commands: Subparsers) -> argparse.ArgumentParser:
    mcp = commands.add_parser(
        "mcp",
        help="speak MCP on stdin/stdout, bridged to a running flock (for Claude Desktop, Claude Code)",
        description="An MCP server on stdin/stdout for hosts that launch servers as commands, "
        "forwarding everything to a running flock's gateway.",
    )
    _connection(mcp, timeout=10.0)
    return mcp


def add_health(commands: Subparsers) -> argparse.ArgumentParser:
    health = commands.add_parser(
        "health",
        help="check a running flock's /healthz or /readyz (exit 0 when healthy)",
        description="Ask a running flock's HTTP listener whether it is alive (/healthz) or can take "
        "work (--ready: /readyz); for container health checks.",
    )
    _config_option(health)
    health.add_argument(
        "--url",
        help="the flock's HTTP listener (default: from --config, else http://127.0.0.1:$MCP_PORT, "
        "MCP_PORT=4002)",
    )
    health.add_argument("--ready", action="store_true", help="check /readyz: can the flock take work?")
    health.add_argument("--timeout", type=seconds, default=3.0, help="seconds to wait (default 3)")
    _json_option(health)
    return health


def add_bench(commands: Subparsers) -> argparse.ArgumentParser:
    bench = commands.add_parser(
        "bench",
        help="run the benchmark suites of a source checkout and print their tables",
        description="Run benchmarks/<suite>.py of a source checkout, one after the other.",
    )
    bench.add_argument("suites", nargs="*", metavar="SUITE", help=f"{', '.join(BENCH_SUITES)} (default: all)")
    bench.add_argument("--quick", action="store_true", help="small N, one run each: minutes become seconds")
    bench.add_argument(
        "--json", type=Path, metavar="DIR", help="also write each suite's results to DIR/<suite>.json"
    )
    bench.add_argument(
        "--loop", choices=("asyncio", "uvloop"), help="event loop of the kernel, bus and metrics suites"
    )
    return bench


def add_completion(commands: Subparsers) -> argparse.ArgumentParser:
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or fish)",
        description="Print the completion script of a shell. Install it with, for bash: "
        "flockrt completion bash > ~/.local/share/bash-completion/completions/flockrt; "
        'zsh: flockrt completion zsh > "${fpath[1]}/_flockrt"; '
        "fish: flockrt completion fish > ~/.config/fish/completions/flockrt.fish",
    )
    completion.add_argument("shell", choices=("bash", "zsh", "fish"), help="the shell")
    return completion


class Command(NamedTuple):
    """A subcommand: how its arguments are declared and what runs it."""

    add: Callable[[Subparsers], argparse.ArgumentParser]
    handler: str
    """``"module:function"``: called with the parsed arguments, returns the exit status."""


COMMANDS: dict[str, Command] = {
    "run": Command(add_run, "flockrt.cli.serve:run"),
    "check": Command(add_check, "flockrt.cli.serve:check"),
    "agents": Command(add_agents, "flockrt.cli.operations:main"),
    "tree": Command(add_tree, "flockrt.cli.operations:main"),
    "top": Command(add_top, "flockrt.cli.top:run"),
    "send": Command(add_send, "flockrt.cli.operations:main"),
    "request": Command(add_request, "flockrt.cli.operations:main"),
    "submit": Command(add_submit, "flockrt.cli.operations:main"),
    "mcp": Command(add_mcp, "flockrt.cli.tools:mcp"),
    "health": Command(add_health, "flockrt.cli.tools:health"),
    "bench": Command(add_bench, "flockrt.cli.tools:bench"),
    "completion": Command(add_completion, "flockrt.cli.completion:main"),
}
"""Every subcommand, in the order ``flockrt --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command line."""
    parser = argparse.ArgumentParser(
        prog="flockrt",
        description="Run and inspect a flockrt flock: an actor-model runtime for AI agents.",
        epilog="'flockrt COMMAND --help' tells more of each. Shell completion: 'flockrt completion bash'.",
    )
    parser.add_argument(
        "--version", action="version", version=f"flockrt {__version__}", help="print the version and exit"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        command.add(commands)
    return parser
