"""``flockrt top`` against a running flock, as an operator runs it (a real ``flockrt`` process):
``--once`` draws one frame, ``--json`` prints the feed's snapshot, the live mode redraws when an
agent crashes and restarts, and the error paths (no token, nothing listening) say what to do."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flockrt.bus.embedded import EmbeddedNats
from flockrt.config import ENV_OVERRIDES, AgentConfig, AuthConfig, FlockConfig, McpConfig, NatsConfig
from flockrt.runtime import Flock
from flockrt.view.top import apply, draw, feed_url, sparkline
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


def crashy(count: int) -> list[AgentConfig]:
    return [AgentConfig(id="w", class_="tests.view_agents:Crashy", count=count)]


@pytest.fixture
async def flock(nats_server: EmbeddedNats) -> AsyncIterator[Flock]:
    config = FlockConfig(mcp=McpConfig(port=0), nats=NatsConfig(url=nats_server.url), agents=crashy(3))
    async with Flock(config) as running:
        yield running


async def crash(flock: Flock, agent_id: str) -> None:
    assert flock.flock is not None and flock.view is not None
    await flock.flock.send(agent_id, "crash")
    node = flock.view.node
    await wait_for(lambda: node.state is not None and node.state.restarts >= 1 and bool(node.state.recent))


async def top(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES and k != "FLOCKRT_TOKEN"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flockrt", "top", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_once_draws_nodes_agents_failures_and_trees(flock: Flock) -> None:
    await crash(flock, "w-2")
    assert flock.web is not None
    status, out, err = await top("--once", "--url", flock.web.url)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[1].startswith("1 nodes · 3/3 agents online"), out
    node = next(line for line in lines if line.startswith("flock "))
    assert node.split()[2:4] == ["1", "1"], node  # restarts, failures
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("w-")}
    assert sorted(rows) == ["w-1", "w-2", "w-3"]
    assert rows["w-2"][1:3] == ["flock", "online"] and rows["w-2"][5] == "1"  # restarted once
    assert rows["w-1"][5] == "0" and rows["w-1"][6] == "echo-back"
    assert any("/root/w-2 RuntimeError: w-2 was asked to crash" in line for line in lines), out
    assert "│   ├── w-2  Crashy  restarted 1x" in out or "├── w-2  Crashy  restarted 1x" in out, out
    assert "\x1b[" not in out  # no colour into a pipe


async def test_json_prints_the_feeds_snapshot(flock: Flock) -> None:
    assert flock.web is not None
    # The WebSocket endpoint of the other commands works as --url too.
    status, out, err = await top("--json", "--url", flock.web.url.replace("http", "ws") + "/mcp")
    assert status == 0, err
    snapshot = json.loads(out)
    assert snapshot["version"] == 1 and snapshot["node"] == "flock"
    assert sorted(snapshot["agents"]) == ["w-1", "w-2", "w-3"]
    assert snapshot["agents"]["w-1"]["capabilities"] == ["echo-back"]
    node = snapshot["nodes"]["flock"]
    assert node["self"] is True and node["stale"] is False
    assert node["tree"]["children"][0]["name"] == "root"


class LiveTop:
    """A ``flockrt top`` in live mode against ``url``, its output read as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen = ""

    @classmethod
    async def start(cls, url: str) -> LiveTop:
        env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flockrt", "top", "--url", url, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return cls(proc)

    async def read_until(self, text: str) -> None:
        assert self.proc.stdout is not None
        async with asyncio.timeout(20):
            while text not in self.seen:
                chunk = await self.proc.stdout.read(4096)
                assert chunk, f"flockrt top ended early:\n{self.seen}"
                self.seen += chunk.decode()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def test_live_mode_redraws_on_a_crash_and_quits_cleanly_on_ctrl_c(flock: Flock) -> None:
    assert flock.web is not None
    top = await LiveTop.start(flock.web.url)
    proc = top.proc
    try:
        await top.read_until("w-3")
        assert "asked to crash" not in top.seen
        await flock.flock.send("w-1", "crash")  # type: ignore[union-attr]
        await top.read_until("w-1 was asked to crash")
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        assert proc.stderr is not None and proc.stdout is not None
        assert "Traceback" not in (await proc.stderr.read()).decode()
        rest = (await proc.stdout.read()).decode()
        assert (top.seen + rest).endswith("\x1b[?25h\x1b[?1049l")  # the terminal is given back
    finally:
        await top.kill()


async def test_a_token_is_needed_when_configured_and_nothing_listening_is_exit_3() -> None:
    config = FlockConfig(mcp=McpConfig(port=0, auth=AuthConfig(tokens=["t0ken"])), agents=crashy(1))
    async with Flock(config) as flock:
        assert flock.web is not None
        status, out, err = await top("--once", "--url", flock.web.url)
        assert status == 1 and out == ""
        assert "the gateway refused: unauthorized: missing bearer token (give --token" in err
        status, out, err = await top("--once", "--url", flock.web.url, "--token", "t0ken")
        assert status == 0 and "w  " not in err and "1/1 agents online" in out
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status, out, err = await top("--json", "--url", f"http://127.0.0.1:{port}", "--timeout", "5")
    assert status == 3
    assert f"cannot reach the gateway at http://127.0.0.1:{port}" in err


def test_patches_merge_like_the_page() -> None:
    picture: dict[str, object] = {}
    apply(picture, "snapshot", {"agents": {"a": {"id": "a"}, "b": {"id": "b"}}, "nodes": {"n": {"live": 1}}})
    apply(picture, "patch", {"agents": {"a": None, "c": {"id": "c"}}, "nodes": {"n": {"restarts": 2}}})
    assert picture["agents"] == {"b": {"id": "b"}, "c": {"id": "c"}}
    assert picture["nodes"] == {"n": {"live": 1, "restarts": 2}}
    apply(picture, "patch", {"nodes": {"n": None}})
    assert picture["nodes"] == {}


def test_urls_and_drawing_helpers() -> None:
    assert feed_url("ws://h:4002/mcp", "/view/feed") == "http://h:4002/view/feed"
    assert feed_url("wss://h/mcp", "/view/state") == "https://h/view/state"
    assert feed_url("127.0.0.1:4002", "/view/state") == "http://127.0.0.1:4002/view/state"
    assert sparkline([0, 1, 2, 4], 10) == "▁▂▄█"
    assert sparkline([], 10) == ""
    many = {"agents": {f"a{i}": {"id": f"a{i}", "status": "online"} for i in range(100)}, "nodes": {}}
    frame = draw(many, "x", height=30)
    assert len(frame) == 29, frame  # a full screen would scroll on its last newline
    assert frame[-4].startswith("… ") and "more agents" in frame[-4]


async def test_live_mode_says_when_the_gateway_goes_away_and_reconnects() -> None:
    first = Flock(FlockConfig(mcp=McpConfig(port=0), agents=crashy(1)))
    await first.start()
    assert first.web is not None and first.web.port is not None
    port = first.web.port
    top = await LiveTop.start(first.web.url)
    second: Flock | None = None
    try:
        await top.read_until("w  ")
        await first.stop()
        await top.read_until("disconnected (")
        # The same port again, another flock: top finds it without being restarted.
        agents = [AgentConfig(id="v", class_="tests.view_agents:Crashy", count=1)]
        second = Flock(FlockConfig(mcp=McpConfig(port=port), agents=agents))
        await second.start()
        await top.read_until("v  ")
        top.proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(top.proc.wait(), 20) == 0
    finally:
        await top.kill()
        await first.stop()
        if second is not None:
            await second.stop()


async def test_config_names_the_gateway_and_its_token(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "flock.toml"
    path.write_text(f'[mcp]\nport = {port}\n\n[mcp.auth]\ntokens = ["from-the-config"]\n')
    auth = AuthConfig(tokens=["from-the-config"])
    async with Flock(FlockConfig(mcp=McpConfig(port=port, auth=auth), agents=crashy(2))):
        status, out, err = await top("--json", "--config", str(path))
        assert status == 0, err
        assert sorted(json.loads(out)["agents"]) == ["w-1", "w-2"]
    status, out, err = await top("--once", "--config", str(tmp_path / "missing.toml"))
    assert status == 2 and "missing.toml" in err
