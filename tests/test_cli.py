"""The flockrt command: check, run, signals, exit statuses and config errors."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from flockrt import assembly
from flockrt.cli import main
from flockrt.config import ENV_OVERRIDES, ConfigError, load_config
from flockrt.errors import NoCapableAgent

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "flock.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "flock.toml"
    path.write_text(text)
    return path


def test_check_accepts_the_shipped_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert main(["check", str(CONFIG)]) == 0
    assert "ok (4 actors" in capsys.readouterr().out  # the Claude agent is left out without a key
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-any")
    assert main(["check", str(CONFIG)]) == 0
    assert "ok (5 actors" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[[agents]]\nid="a"\nclass="echo"\n[[agents]]\nid="b"\nclass="echo"\n'
            '[[agents]]\nid="c"\nclass="echo"\nrestart="always"\n',
            'agents[2].restart: expected one of permanent, transient, temporary, got "always"',
        ),
        ('[runtime]\nloop="trio"\n', 'runtime.loop: expected one of asyncio, uvloop, got "trio"'),
        ("[runtime]\nmailbox_capacity = 0\n", "runtime.mailbox_capacity: expected >= 1, got 0"),
        ("[runtime]\nname = 3\n", "runtime.name: expected str, got int"),
        ("[runtime]\nnmae = 'x'\n", "runtime.nmae: unknown key"),
        ("[[agents]]\nclass='echo'\n", "missing required field `id`"),
        (
            "[[agents]]\nid='x'\nclass='nope'\n",
            "agents[0].class: expected a built-in name (ai, claude, echo, text)",
        ),
        ("[[agents]]\nid='x'\nclass='tests.cli_actors:NotAnActor'\n", "is not an Actor subclass"),
        ("[[agents]]\nid='x'\nclass='no.such.module:X'\n", "cannot import 'no.such.module'"),
        ("[[agents]]\nid='x'\nclass='echo'\ncount=0\n", "agents[0].count: expected >= 1, got 0"),
        ("[[agents]\n", "not valid TOML"),
        ("[metricz]\nport = 1\n", "metricz: unknown key"),
        ("[mcp]\nport = 70000\n", "mcp.port: expected 0..65535"),
        ("[mcp]\nhost = '0.0.0.0'\n", "[mcp] host = '0.0.0.0' is reachable from other machines"),
        (
            "[mcp.auth]\njwt_secret = 'short'\n",
            "mcp.auth.jwt_secret: expected at least 32 bytes for HS256, got 5",
        ),
        ("[nats]\nurl = 'x'\n", 'nats.url: expected "embedded" or nats:// URLs'),
        ("[nats]\nheartbeat_interval = 0\n", "nats.heartbeat_interval: expected > 0"),
        (
            "[[agents]]\nid='e'\nclass='echo'\noptions={prefx='a'}\n",
            "agents[0].options: echo does not take them: got an unexpected keyword argument 'prefx'",
        ),
    ],
)
def test_bad_configs_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
    with pytest.raises(ConfigError, match=re.escape(expected)):
        assembly.load(path)  # what check and run read; load_config checks no class


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read the config file" in capsys.readouterr().err


def test_bad_command_line_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flockrt.cli", "fly"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


async def start_flock(config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flockrt.cli",
        "run",
        str(config),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        # The config under test decides, not variables the machine happens to have set.
        env={k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES},
    )


async def read_until(proc: asyncio.subprocess.Process, needle: str, timeout: float = 20) -> str:
    assert proc.stderr is not None
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            line = (await proc.stderr.readline()).decode()
            if not line:
                raise AssertionError(f"process ended before {needle!r}:\n{''.join(seen)}")
            seen.append(line)
            if needle in line:
                return "".join(seen)


def shipped_config_on_a_free_port(tmp_path: Path) -> Path:
    """The shipped config, unchanged but for the embedded server's and the gateway's ports (tests
    run in parallel)."""
    text = CONFIG.read_text()
    assert "port = 4222" in text and "port = 4002" in text
    return write(tmp_path, text.replace("port = 4222", "port = 0", 1).replace("port = 4002", "port = 0", 1))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_run_starts_the_tree_and_stops_cleanly_on_signal(signum: int, tmp_path: Path) -> None:
    proc = await start_flock(shipped_config_on_a_free_port(tmp_path))
    try:
        output = await read_until(proc, "agents under /root")
        for agent in ("text-1", "text-2", "echo", "ai"):
            assert f"started /root/{agent} (permanent)" in output
        proc.send_signal(signum)
        output = await read_until(proc, "stopped cleanly")
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_run_exits_1_when_the_root_supervisor_gives_up(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "[supervisor]\nmax_restarts = 1\n[[agents]]\nid = 'crasher'\nclass = 'tests.cli_actors:CrashSoon'\n",
    )
    proc = await start_flock(config)
    try:
        output = await read_until(proc, "stopped:")
        assert "gave up: more than 1 restart within" in output
        assert await asyncio.wait_for(proc.wait(), 20) == 1
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_the_shipped_flock_answers_ai_flock_json_on_its_embedded_nats(tmp_path: Path) -> None:
    proc = await start_flock(shipped_config_on_a_free_port(tmp_path))
    try:
        output = await read_until(proc, "agents under /root")
        url = re.search(r"on NATS at (nats://\S+)", output).group(1)  # type: ignore[union-attr]
        client = await nats.connect(url, allow_reconnect=False)
        try:
            results: asyncio.Queue[bytes] = asyncio.Queue()

            async def collect(msg: Msg) -> None:
                results.put_nowait(msg.data)

            await client.subscribe("task.result", cb=collect)
            await client.flush()
            await client.publish(
                "tasks.general", json.dumps({"id": "t-1", "type": "general", "data": "hi"}).encode()
            )
            result = json.loads(await asyncio.wait_for(results.get(), 10))
            assert (result["taskId"], result["status"], result["result"]) == ("t-1", "ok", "echo: hi")
            request = {"capability": "text-analysis", "parameters": {"text": "A flock. Of agents!"}}
            reply = await client.request("capability.text-analysis", json.dumps(request).encode(), timeout=10)
            answer = json.loads(reply.data)
            assert answer["error"] is None
            assert answer["agentId"] in ("text-1", "text-2")
            assert (answer["result"]["words"], answer["result"]["sentences"]) == (4, 2)
        finally:
            await client.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_environment_variables_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[runtime]\nname = "from-file"\n[[agents]]\nid = "e"\nclass = "echo"\n')
    assert load_config(path, env={}).nats is None
    env = {
        "NATS_URL": "nats://10.0.0.5:4222",
        "HEARTBEAT_INTERVAL": "5000",
        "MAX_RETRIES": "7",
        "LOG_LEVEL": "debug",
        "AGENT_ID": "node-7",
    }
    config = load_config(path, env=env)
    assert config.nats is not None
    assert (config.nats.url, config.nats.heartbeat_interval, config.nats.max_retries) == (
        "nats://10.0.0.5:4222",
        5000,
        7,
    )
    assert (config.runtime.log_level, config.runtime.name) == ("DEBUG", "node-7")
    shipped = load_config(CONFIG, env={"NATS_URL": "nats://127.0.0.1:4333"})
    assert shipped.nats is not None and shipped.nats.url == "nats://127.0.0.1:4333"  # replaces "embedded"
    assert shipped.nats.durable is False  # the rest of the section stays


def test_mcp_and_claude_variables(tmp_path: Path) -> None:
    path = write(tmp_path, "[mcp]\nport = 5000\n")
    config = load_config(path, env={"MCP_PORT": "4100", "MCP_TIMEOUT": "2500"})
    assert config.mcp is not None and (config.mcp.port, config.mcp.timeout) == (4100, 2500)
    assert load_config(path, env={"MCP_ENABLED": "false"}).mcp is None
    bare = write(tmp_path, "")
    assert load_config(bare, env={}).mcp is None
    enabled = load_config(bare, env={"MCP_ENABLED": "1"}).mcp
    assert enabled is not None and enabled.port == 4002  # the variable adds the section
    claude = load_config(bare, env={"ANTHROPIC_API_KEY": "sk-test", "CLAUDE_MODEL": "claude-x"}).claude
    assert (claude.api_key, claude.model) == ("sk-test", "claude-x")
    assert load_config(bare, env={}).claude.api_key == ""


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"HEARTBEAT_INTERVAL": "30s"}, "HEARTBEAT_INTERVAL: expected an integer (milliseconds), got '30s'"),
        ({"MAX_RETRIES": "many"}, "MAX_RETRIES: expected an integer (a count), got 'many'"),
        (
            {"LOG_LEVEL": "loud"},
            "LOG_LEVEL: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'loud'",
        ),
        ({"NATS_URL": "localhost"}, 'nats.url: expected "embedded" or nats:// URLs'),
        ({"HEARTBEAT_INTERVAL": "0"}, "nats.heartbeat_interval: expected > 0"),
        ({"MCP_ENABLED": "maybe"}, "MCP_ENABLED: expected true or false, got 'maybe'"),
        ({"MCP_PORT": "http"}, "MCP_PORT: expected an integer (a port), got 'http'"),
        ({"MCP_TIMEOUT": "30s"}, "MCP_TIMEOUT: expected an integer (milliseconds), got '30s'"),
        ({"MCP_TIMEOUT": "0"}, "mcp.timeout: expected > 0 (milliseconds)"),
    ],
)
def test_bad_environment_variables_are_named(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(write(tmp_path, ""), env=env)


def test_the_cli_reads_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "chatty")
    assert main(["check", str(write(tmp_path, ""))]) == 2
    assert "LOG_LEVEL: expected one of" in capsys.readouterr().err


def test_auth_tokens_from_the_environment_and_prefixed_agent_ids(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[runtime]\nname = "n1"\nprefix_agent_ids = true\n[mcp]\nhost = "0.0.0.0"\n'
        '[[agents]]\nid = "e"\nclass = "echo"\ncount = 2\n',
    )
    with pytest.raises(ConfigError, match="reachable from other machines"):
        load_config(path, env={})
    config = load_config(path, env={"MCP_AUTH_TOKENS": "one, two,", "AGENT_ID": "node-3"})
    assert config.mcp is not None and config.mcp.auth.tokens == ["one", "two"]
    assert [spec.id for spec in assembly.child_specs(config)] == ["node-3-e-1", "node-3-e-2"]
    with pytest.raises(ConfigError, match=r"runtime.name: prefixes agent ids .* got 'a.b'"):
        load_config(path, env={"MCP_AUTH_TOKENS": "x", "AGENT_ID": "a.b"})
    assert load_config(write(tmp_path, ""), env={"MCP_AUTH_TOKENS": "x"}).mcp is None  # no gateway, no tokens


@pytest.mark.parametrize("name", ["flock.toml", "cluster.toml"])
def test_every_shipped_config_checks(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(ROOT / "configs" / name)]) == 0
    assert ": ok (" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("url = 'nats://h:4222'\nuser = 'u'\n", "nats.user / nats.password: expected both or neither"),
        ("url = 'nats://h:4222'\ncredentials = '/no/such.creds'\n", "nats.credentials: no such file"),
        ("token = 't'\n", "credentials, user, token and TLS are for a server of your own"),
        ("url = 'tls://h:4222'\ntls_cert = '/etc/hostname'\n", "nats.tls_cert / nats.tls_key: expected both"),
    ],
)
def test_nats_authentication_settings_are_checked(tmp_path: Path, section: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(write(tmp_path, "[nats]\n" + section), env={})


async def test_supervisors_of_their_own_under_the_root(tmp_path: Path) -> None:
    from flockrt.runtime import Flock

    path = write(
        tmp_path,
        "[[agents]]\nid = 'echo'\nclass = 'echo'\n"
        "[[supervisors]]\nid = 'text-pool'\nstrategy = 'one_for_all'\nmax_restarts = 5\nmax_seconds = 10.0\n"
        "[[supervisors.agents]]\nid = 'text'\nclass = 'text'\ncount = 2\n",
    )
    config = load_config(path, env={})
    async with Flock(config) as flock:
        root = flock.system.snapshot()["children"][0]
        assert [child["name"] for child in root["children"]] == ["echo", "text-pool"]
        group = root["children"][1]
        assert [child["name"] for child in group["children"]] == ["text-1", "text-2"]
        assert sorted(agent.id for agent in flock.list_agents()) == ["echo", "text-1", "text-2"]
    bad = write(
        tmp_path,
        "[[supervisors]]\nid = 'g'\n[[supervisors.agents]]\nid = 'x'\nclass = 'echo'\nrestart = 'always'\n",
    )
    with pytest.raises(
        ConfigError, match=r"supervisors\[0\]\.agents\[0\]\.restart: expected one of permanent"
    ):
        load_config(bad, env={})
    twice = write(tmp_path, "[[agents]]\nid = 'g'\nclass = 'echo'\n[[supervisors]]\nid = 'g'\n")
    with pytest.raises(ConfigError, match=r"supervisors\[0\]\.id: 'g' is used twice"):
        load_config(twice, env={})


async def test_an_agent_entry_may_offer_only_some_capabilities(tmp_path: Path) -> None:
    from flockrt.runtime import Flock

    path = write(tmp_path, "[[agents]]\nid = 't'\nclass = 'text'\ncapabilities = ['text-analysis']\n")
    async with Flock(load_config(path, env={})) as flock:
        (agent,) = flock.list_agents()
        assert agent.capabilities == ("text-analysis",)
        assert (await flock.request_capability("text-analysis", {"text": "a b"}))["words"] == 2
        with pytest.raises(NoCapableAgent):
            await flock.request_capability("text-processing", {"text": "a b"})
    bad = write(tmp_path, "[[agents]]\nid = 't'\nclass = 'text'\ncapabilities = ['mind-reading']\n")
    with pytest.raises(
        ConfigError, match=r"agents\[0\]\.capabilities: text does not offer mind-reading \(it offers"
    ):
        assembly.load(bad, env={})


async def test_classes_are_checked_by_the_assembly_before_anything_starts(tmp_path: Path) -> None:
    from flockrt.runtime import Flock

    path = write(tmp_path, "[nats]\nport = 0\n[[agents]]\nid = 'x'\nclass = 'no.such.module:X'\n")
    config = load_config(path, env={})  # plain data: the config imports no class
    expected = r"agents\[0\]\.class: cannot import 'no.such.module'"
    with pytest.raises(ConfigError, match=expected):
        assembly.load(path, env={})
    flock = Flock(config)
    with pytest.raises(ConfigError, match=expected):
        await flock.start()
    assert (flock.server, flock.bus, flock.flock) == (None, None, None)  # no NATS server was started
