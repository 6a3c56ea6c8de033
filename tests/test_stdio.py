"""``flockrt mcp``: MCP over stdio, bridged to a running flock's gateway, driven as a host drives
it: the official SDK's stdio client launching the command, or raw lines on its pipes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

import flockrt
from flockrt.cli import _parser
from flockrt.config import AuthConfig
from flockrt.runtime import Flock
from tests.client_support import dead_url
from tests.conftest import wait_for
from tests.mcp_support import INIT_PARAMS, Analyst, Slow, gateway_flock_config, structured, ws_url

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")

ROOT = Path(__file__).resolve().parent.parent


def bridge_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def bridge_params(url: str, *extra: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "flockrt", "mcp", "--url", url, *extra], env=bridge_env()
    )


class Reporter(flockrt.Agent):
    """Reports its progress twice while it works."""

    @flockrt.capability("reporting")
    async def work(self) -> str:
        self.report_progress(1, 2, "half way")
        await asyncio.sleep(0)
        self.report_progress(2, 2, "all there")
        return "finished"


@pytest.fixture
async def flock() -> AsyncIterator[Flock]:
    async with Flock(gateway_flock_config()) as running:
        await running.system.spawn(Analyst, "analyst-1", name="analyst-1")
        yield running


def gateway(flock: Flock) -> str:
    assert flock.gateway_url is not None
    return ws_url(flock.gateway_url)


async def test_the_sdk_stdio_client_lists_and_calls_the_flocks_tools(flock: Flock) -> None:
    await flock.system.spawn(Reporter, "reporter-1")
    messages: list[str | None] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        messages.append(message)

    async with Client(stdio_client(bridge_params(gateway(flock)))) as c:
        init = c.session.initialize_result
        assert init is not None and init.server_info.name == "flockrt"
        tools = {tool.name for tool in (await c.list_tools()).tools}
        assert {"list_agents", "request_capability", "submit_task"} <= tools
        agents = structured(await c.call_tool("list_agents", {}))
        assert {"analyst-1", "reporter-1"} <= {agent["id"] for agent in agents["agents"]}
        result = await c.call_tool(
            "request_capability", {"capability": "reporting"}, progress_callback=on_progress
        )
        assert structured(result)["result"] == "finished"
        assert structured(result)["agentId"] == "reporter-1"
        arguments = {"capability": "text-analysis", "parameters": {"text": "a b"}}
        analysed = structured(await c.call_tool("request_capability", arguments))
        assert analysed["result"] == {"words": 2}
    # The gateway's progress and the agent's own, relayed line by line, in order.
    assert messages[0] == "started" and messages[-1] == "done"
    assert [m for m in messages if m in ("half way", "all there")] == ["half way", "all there"]


class Bridge:
    """``flockrt mcp`` as a subprocess driven line by line, with deadlines."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self._ids = iter(range(1, 1 << 30))

    @classmethod
    async def start(cls, url: str, *extra: str) -> Bridge:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "flockrt",
            "mcp",
            "--url",
            url,
            *extra,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=bridge_env(),
        )
        return cls(process)

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        await self.process.stdin.drain()

    async def request(self, method: str, params: Any = None) -> int:
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        return request_id

    async def line(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        assert raw, "stdout ended"
        message: dict[str, Any] = json.loads(raw)
        return message

    async def answer(self, request_id: int, timeout: float = 10.0) -> dict[str, Any]:
        """The answer to ``request_id``, skipping notifications (kept in ``self.notified``)."""
        while True:
            message = await self.line(timeout)
            if message.get("id") == request_id and "method" not in message:
                return message

    async def initialize(self) -> None:
        answer = await self.answer(await self.request("initialize", INIT_PARAMS))
        assert answer["result"]["serverInfo"]["name"] == "flockrt"
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def exit_status(self, timeout: float = 10.0) -> int:
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def stderr(self) -> str:
        assert self.process.stderr is not None
        return (await asyncio.wait_for(self.process.stderr.read(), 10.0)).decode()

    def close_stdin(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def test_an_unreachable_gateway_is_exit_3_with_a_message() -> None:
    url = dead_url()
    bridge = await Bridge.start(url)
    try:
        assert await bridge.exit_status() == 3
        stderr = await bridge.stderr()
        assert url in stderr and "unavailable" in stderr
        assert "Traceback" not in stderr
        assert bridge.process.stdout is not None and await bridge.process.stdout.read() == b""
    finally:
        await bridge.kill()


async def test_the_url_and_token_come_from_the_configs_mcp_section(tmp_path: Path) -> None:
    port = free_port()
    auth = AuthConfig(tokens=["secret-token"])
    config = tmp_path / "flock.toml"
    config.write_text(
        f'[runtime]\nname = "x"\n\n[mcp]\nhost = "0.0.0.0"\nport = {port}\nauth.tokens = ["secret-token"]\n'
    )
    async with Flock(gateway_flock_config(port=port, host="0.0.0.0", auth=auth)) as running:
        assert running.gateway is not None
        # No --url, no --token: 0.0.0.0 is reached on loopback, with the config's token.
        bridge = Bridge(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "flockrt",
                "mcp",
                "--config",
                str(config),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**bridge_env(), "FLOCKRT_TOKEN": ""},
            )
        )
        try:
            await bridge.initialize()
            assert len(running.gateway.sessions) == 1
            bridge.close_stdin()
            assert await bridge.exit_status() == 0
        finally:
            await bridge.kill()
        # A token the gateway refuses: a message and exit 1, not 3 (it is reachable).
        refused = await Bridge.start(f"ws://127.0.0.1:{port}/mcp", "--token", "wrong")
        try:
            assert await refused.exit_status() == 1
            assert "401" in await refused.stderr()
        finally:
            await refused.kill()


@pytest.mark.parametrize("how", ["stdin closed", "SIGTERM"])
async def test_stdin_closed_or_sigterm_closes_the_socket_and_exits_0(flock: Flock, how: str) -> None:
    assert flock.gateway is not None
    bridge = await Bridge.start(gateway(flock))
    try:
        await bridge.initialize()
        assert len(flock.gateway.sessions) == 1
        if how == "SIGTERM":
            bridge.process.send_signal(signal.SIGTERM)
        else:
            bridge.close_stdin()
        assert await bridge.exit_status() == 0
        await wait_for(lambda: not flock.gateway.sessions)  # type: ignore[union-attr]
        assert "Traceback" not in await bridge.stderr()
    finally:
        await bridge.kill()


async def test_the_hosts_cancellation_reaches_the_flock(flock: Flock) -> None:
    Slow.started, Slow.cancelled = asyncio.Event(), asyncio.Event()
    await flock.system.spawn(Slow, "slow-1")
    bridge = await Bridge.start(gateway(flock))
    try:
        await bridge.initialize()
        call = {"name": "request_capability", "arguments": {"capability": "slow"}}
        slow = await bridge.request("tools/call", call)
        await asyncio.wait_for(Slow.started.wait(), 10.0)
        await bridge.send(
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": slow}}
        )
        await asyncio.wait_for(Slow.cancelled.wait(), 10.0)
        # The session goes on after it.
        listed = await bridge.answer(await bridge.request("tools/list"))
        assert "request_capability" in {tool["name"] for tool in listed["result"]["tools"]}
    finally:
        await bridge.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_lost_gateway_answers_with_errors_until_it_comes_back() -> None:
    port = free_port()
    Slow.started, Slow.cancelled = asyncio.Event(), asyncio.Event()
    first = Flock(gateway_flock_config(port=port))
    await first.start()
    bridge = await Bridge.start(f"ws://127.0.0.1:{port}/mcp")
    try:
        try:
            await first.system.spawn(Slow, "slow-1")
            await bridge.initialize()
            subscribed = await bridge.answer(
                await bridge.request("resources/subscribe", {"uri": "flock://agents"})
            )
            assert "error" not in subscribed
            slow = await bridge.request(
                "tools/call", {"name": "request_capability", "arguments": {"capability": "slow"}}
            )
            await asyncio.wait_for(Slow.started.wait(), 10.0)
        finally:
            await first.stop()
        # The call in flight when the gateway went away, and any request after it: errors.
        lost = await bridge.answer(slow)
        assert lost["error"]["code"] == -32000 and "unreachable" in lost["error"]["message"]
        refused = await bridge.answer(await bridge.request("tools/list"))
        assert "the flock is unreachable" in refused["error"]["message"]

        async with Flock(gateway_flock_config(port=port)) as second:
            # Back: the bridge re-initializes by itself and tells the host the tools changed.
            while (await bridge.line(15.0)).get("method") != "notifications/tools/list_changed":
                pass
            # ... and the subscription holds on the new connection.
            await second.system.spawn(Analyst, "analyst-2")
            while (update := await bridge.line()).get("method") != "notifications/resources/updated":
                pass
            assert update["params"]["uri"] == "flock://agents"
            listed = await bridge.answer(await bridge.request("tools/list"))
            assert "request_capability" in {tool["name"] for tool in listed["result"]["tools"]}
            arguments = {"capability": "text-analysis", "parameters": {"text": "x y z"}}
            call = await bridge.answer(
                await bridge.request("tools/call", {"name": "request_capability", "arguments": arguments})
            )
            assert call["result"]["structuredContent"]["result"] == {"words": 3}
            bridge.close_stdin()
            assert await bridge.exit_status() == 0
    finally:
        await bridge.kill()


def test_the_guides_host_entries_launch_flockrt_mcp() -> None:
    """The Claude Desktop and Claude Code lines of docs/gateway.md run this command."""
    guide = (ROOT / "docs" / "gateway.md").read_text()
    desktop = json.loads(next(line for line in guide.splitlines() if line.startswith('{"mcpServers"')))
    server = desktop["mcpServers"]["flock"]
    code = next(line for line in guide.splitlines() if line.startswith("claude mcp add flock -- "))
    for command in ([server["command"], *server["args"]], code.split(" -- ", 1)[1].split()):
        assert command[0] == "flockrt"
        args = _parser().parse_args(command[1:])
        assert args.command == "mcp" and args.url == "ws://127.0.0.1:4002/mcp"
