"""The operator commands (agents, tree, send, request, submit): bad input, a gateway that is down,
the NATS fallback, and the tree drawing. The commands against a live gateway are in
tests/test_client_gateway.py."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flockrt import ActorSystem, Agent, ChildSpec, Supervisor
from flockrt.bus.embedded import EmbeddedNats
from flockrt.cli import draw_tree, main, operate
from flockrt.runtime import Flock
from tests.client_support import agents_flock_config, dead_url
from tests.test_cli import read_until, shipped_config_on_a_free_port, start_flock

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def nats_flock(nats_server: EmbeddedNats) -> AsyncIterator[Flock]:
    async with Flock(agents_flock_config(nats={"url": nats_server.url})) as flock:
        yield flock


@pytest.mark.parametrize(
    "argv",
    [
        ["agents"],
        ["tree"],
        ["send", "echo", "hello"],
        ["request", "text-analysis", '{"text": "hi"}'],
        ["submit", "general", '"hi"', "--wait"],
    ],
)
def test_a_gateway_that_is_down_exits_3_with_a_clear_message(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = dead_url()
    assert main([*argv, "--url", url]) == 3
    err = capsys.readouterr().err
    assert f"flockrt {argv[0]}: MCP gateway at {url} is unavailable" in err
    assert "is the flock running with an [mcp] section?" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["request", "upper", "{text: 1}"], "flockrt request: parameters is not valid JSON"),
        (["submit", "general", "[1,"], "flockrt submit: data is not valid JSON"),
        (["agents", "--url", "localhost:4002"], "flockrt agents: url must be a ws:// or wss:// URL"),
        (["send", "", "hi"], "flockrt send: to must be a non-empty string, got ''"),
    ],
)
def test_bad_input_exits_2_before_anything_is_sent(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if "--url" not in argv:
        argv = [*argv, "--url", dead_url()]  # would be exit 3 if it got as far as connecting
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err


def test_bad_options_exit_2_with_usage() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flockrt.cli", "request", "upper", "{}", "--timeout", "soon"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "argument --timeout: expected seconds, got 'soon'" in result.stderr


def test_url_defaults_to_mcp_port(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = dead_url()
    port = url.split(":")[2].split("/")[0]
    monkeypatch.setenv("MCP_PORT", port)
    assert main(["agents"]) == 3
    assert f"ws://127.0.0.1:{port}/mcp is unavailable" in capsys.readouterr().err


async def test_request_and_send_fall_back_to_nats(
    nats_flock: Flock, capsys: pytest.CaptureFixture[str]
) -> None:
    nats = ["--url", dead_url(), "--nats", str(nats_flock.nats_url), "--timeout", "5"]
    assert await operate(["request", "upper", '{"text": "over nats"}', *nats]) == 0
    assert json.loads(capsys.readouterr().out) == "OVER NATS"
    assert await operate(["send", "echo", "plain words", "--type", "query", *nats]) == 0
    assert json.loads(capsys.readouterr().out) == "echo: plain words"
    assert await operate(["request", "nothing", "{}", *nats]) == 1
    assert "no agent offers capability 'nothing'" in capsys.readouterr().err


class Worker(Agent):
    pass


async def test_the_tree_is_drawn_with_strategy_restart_types_and_states() -> None:
    async with ActorSystem("drawn") as system:
        workers = [ChildSpec(id=name, factory=lambda name=name: Worker(name)) for name in ("w-1", "w-2")]
        inner = ChildSpec(
            id="pool", factory=lambda: Supervisor(workers, strategy="one_for_all"), type="supervisor"
        )
        last = ChildSpec(id="last", factory=lambda: Worker("last"), restart="transient")
        await system.spawn(lambda: Supervisor([inner, last]), name="root")
        lines = draw_tree(system.snapshot())
    assert lines == [
        "/  _Guardian  running",
        "└── root  Supervisor  running  one_for_one, max 3 restarts in 5.0 s",
        "    ├── pool  Supervisor  running  one_for_all, max 3 restarts in 5.0 s  permanent",
        "    │   ├── w-1  Worker  running  permanent",
        "    │   └── w-2  Worker  running  permanent",
        "    └── last  Worker  running  transient",
    ]


async def flockrt(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flockrt.cli",
        *argv,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_commands_against_flockrt_run(tmp_path: Path) -> None:
    proc = await start_flock(shipped_config_on_a_free_port(tmp_path))
    try:
        output = await read_until(proc, "agents under /root")
        found = re.search(r"MCP gateway listening on (http://\S+/mcp)", output)
        assert found is not None, output
        url = ("--url", found.group(1))
        status, out, err = await flockrt("agents", *url)
        assert (status, err) == (0, "")
        assert [line.split()[0] for line in out.splitlines()] == ["AGENT", "ai", "echo", "text-1", "text-2"]
        status, out, _ = await flockrt("tree", *url)
        assert status == 0
        assert "│   ├── text-1  TextAgent  running  permanent" in out
        status, out, _ = await flockrt("request", "text-analysis", '{"text": "One. Two three!"}', *url)
        assert status == 0
        assert json.loads(out)["words"] == 3
        status, out, _ = await flockrt("submit", "general", '"hi"', "--wait", *url)
        assert status == 0
        assert json.loads(out)["result"] == "echo: hi"
        status, out, err = await flockrt("send", "nobody", "hi", "--type", "query", *url)
        assert status == 1
        assert "flockrt send: no agent with id 'nobody'" in err
        assert "Traceback" not in err
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
