"""The command itself: --version, the help of every subcommand, a fast --help, completion
scripts, the first run's message, port conflicts, and the Claude extra's error."""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import flockrt
from flockrt.cli.completion import script
from flockrt.cli.parser import COMMANDS, build_parser
from flockrt.cli.serve import count_agents
from flockrt.config import load_config
from tests.test_cli_ops import clean_env, free_port

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "flock.toml"
FLOCKRT = (sys.executable, "-m", "flockrt")


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLOCKRT, *argv], capture_output=True, text=True, cwd=ROOT, env=env or clean_env(), timeout=60
    )


def test_version() -> None:
    done = run("--version")
    assert (done.returncode, done.stdout) == (0, f"flockrt {flockrt.__version__}\n")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_subcommand_says_what_it_does() -> None:
    parsers = subcommands()
    assert list(parsers) == list(COMMANDS)
    listed = run("--help").stdout
    for name, parser in parsers.items():
        assert parser.description, f"flockrt {name} has no description"
        assert re.search(rf"^    {name}\s+\S", listed, re.M) or re.search(
            rf"^    {name}\n\s+\S", listed, re.M
        ), f"flockrt --help does not say what {name} does"
        for action in parser._actions:
            assert action.help, f"flockrt {name} {action.option_strings or action.dest} has no help"


def test_help_imports_none_of_the_heavy_packages() -> None:
    code = (
        "import sys\nfrom flockrt.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = ('msgspec', 'nats', 'aiohttp', 'prometheus_client', 'jwt', 'anthropic', "
        "'flockrt.client', 'flockrt.runtime', 'flockrt.config')\n"
        "print(','.join(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stderr.strip() == ""
    assert "usage: flockrt" in done.stdout


def complete(words: str, cursor_word: str = "") -> list[str]:
    """What bash completion offers after ``words`` (the script sourced into a real bash)."""
    line = f"{words} {cursor_word}".strip() if cursor_word else words + " "
    parts = line.split(" ")
    program = (
        f"{script('bash')}\n"
        f"COMP_WORDS=({' '.join(repr(p) for p in parts)})\n"
        f"COMP_CWORD={len(parts) - 1}\n"
        "_flockrt\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_offers_subcommands_options_and_choices() -> None:
    assert "agents" in complete("flockrt", "ag") and "completion" in complete("flockrt")
    assert complete("flockrt", "--v") == ["--version"]
    assert {"--json", "--config", "--timeout", "--all"} <= set(complete("flockrt agents"))
    assert complete("flockrt submit --priority") == ["low", "medium", "high"]
    assert complete("flockrt completion") == ["bash", "zsh", "fish", "--help"]
    assert complete("flockrt request", "--na") == ["--nats"]


def test_zsh_and_fish_scripts_cover_every_subcommand() -> None:
    zsh = script("zsh")
    assert zsh.startswith("#compdef flockrt\n") and "complete -F _flockrt flockrt" in zsh
    fish = script("fish")
    for name in COMMANDS:
        assert f"-a {name} -d " in fish
    assert "complete -c flockrt -n '__fish_seen_subcommand_from agents' -l json" in fish
    for shell in ("bash", "zsh", "fish"):
        done = run("completion", shell)
        assert (done.returncode, done.stdout) == (0, script(shell))
        if shutil.which(shell):
            check = subprocess.run([shell, "-n"], input=done.stdout, text=True, capture_output=True)
            assert check.returncode == 0, check.stderr


def test_the_agent_count_leaves_supervisors_out() -> None:
    leaf = {"name": "a", "children": []}
    group = {"name": "g", "supervisor": {"strategy": "one_for_all"}, "children": [leaf, leaf]}
    root = {"name": "root", "supervisor": {"strategy": "one_for_one"}, "children": [leaf, group]}
    assert count_agents(root) == 3


async def test_first_run_counts_the_agents_and_says_what_to_do_next(tmp_path: Path) -> None:
    port = free_port()
    text = CONFIG.read_text().replace("port = 4222", "port = 0", 1)
    text = text.replace("port = 4002", f"port = {port}", 1)
    config = tmp_path / "flock.toml"
    config.write_text(text)
    proc = await asyncio.create_subprocess_exec(
        *FLOCKRT, "run", str(config), cwd=ROOT, env=clean_env(), stderr=asyncio.subprocess.PIPE
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            while not lines or " metrics: " not in lines[-1]:
                line = (await proc.stderr.readline()).decode()
                assert line, "".join(lines)
                lines.append(line)
        proc.send_signal(2)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log = "".join(lines)
    checked = run("check", str(config)).stdout
    assert "ok (4 actors" in checked  # no API key: the Claude agent is left out
    assert "ready: 4 agents under /root" in log  # the same count, the gateway's own actors aside
    base = f"http://127.0.0.1:{port}"
    assert f"gateway: {base}/mcp" in log
    assert f"try: flockrt agents --config {config}, flockrt top --config {config}" in log
    assert f"live view: {base}/ in a browser" in log
    assert lines[-1].rstrip().endswith(f"metrics: {base}/metrics")


def taken_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize(
    ("section", "variable", "what"),
    [
        ("nats", "NATS_PORT", "the embedded nats-server"),
        ("mcp", "MCP_PORT", "the MCP gateway"),
        ("metrics", "METRICS_PORT", "/metrics"),
    ],
)
def test_a_taken_port_names_the_key_the_variable_and_port_0(
    tmp_path: Path, section: str, variable: str, what: str
) -> None:
    with taken_port() as holder:
        port = holder.getsockname()[1]
        sections = {"nats": "[nats]\nport = 0\n", "mcp": "[mcp]\nport = 0\n", "metrics": ""}
        sections[section] = f"[{section}]\nport = {port}\n"
        if section == "metrics":
            sections["mcp"] = ""  # /metrics listens alone without a gateway
        config = tmp_path / "flock.toml"
        config.write_text("".join(sections.values()) + "[[agents]]\nid = 'e'\nclass = 'echo'\n")
        done = run("run", str(config))
    assert done.returncode == 1
    message = done.stderr.strip().splitlines()[-1]
    assert message == (
        f"flockrt: {what} cannot listen on 127.0.0.1:{port} ([{section}] port = {port}): the port is "
        f"already in use (another flock?). Choose another port with [{section}] port or {variable}=..., "
        "or port = 0 for a free one"
    )
    assert "nats-server output" not in done.stderr and "Traceback" not in done.stderr


def test_port_variables_override_the_file(tmp_path: Path) -> None:
    config = tmp_path / "flock.toml"
    config.write_text("[nats]\nport = 4222\n[metrics]\nport = 9464\n")
    loaded = load_config(config, env={"NATS_PORT": "4300", "METRICS_PORT": "0"})
    assert loaded.nats is not None and loaded.nats.port == 4300
    assert loaded.metrics is not None and loaded.metrics.port == 0


BLOCK_ANTHROPIC = """
import sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == "anthropic" or name.startswith("anthropic."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Blocker())
from flockrt.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_claude_agent_without_the_sdk_says_what_to_install(tmp_path: Path, command: str) -> None:
    config = tmp_path / "flock.toml"
    config.write_text("[[agents]]\nid = 'claude'\nclass = 'claude'\n[[agents]]\nid = 'e'\nclass = 'echo'\n")
    env = clean_env(ANTHROPIC_API_KEY="sk-ant-test")
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_ANTHROPIC, command, str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"flockrt: {config}: Claude agent 'claude' needs the Anthropic SDK, which is not installed: "
        "pip install 'flockrt[claude]'"
    )
    # Without a key the agent is left out anyway, and nothing needs the SDK.
    without_key = {k: v for k, v in env.items() if k != "ANTHROPIC_API_KEY"}
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_ANTHROPIC, "check", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=without_key,
        timeout=60,
    )
    assert done.returncode == 0 and "ok (1 actors" in done.stdout, done.stderr
