"""The gateway in the Flock runtime: started after the flock and logged, stopped first; the
metrics-only listener when there is no [mcp]; idle HTTP sessions ending."""

from __future__ import annotations

import asyncio
import logging
import socket

import aiohttp
import pytest

import flockrt
from flockrt.config import FlockConfig, McpConfig, MetricsConfig, RuntimeConfig
from flockrt.runtime import Flock
from tests.conftest import wait_for
from tests.mcp_support import RawPeer, gateway_flock_config


async def test_the_gateway_logs_where_it_listens_and_stops_first(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flockrt.runtime")
    flock = Flock(gateway_flock_config())
    await flock.start()
    try:
        assert flock.gateway_url is not None and flock.gateway_url.startswith("http://127.0.0.1:")
        assert not flock.gateway_url.endswith(":0/mcp")
        lines = [r.getMessage() for r in caplog.records if "MCP gateway listening on" in r.getMessage()]
        assert lines == [f"MCP gateway listening on {flock.gateway_url} (WebSocket and Streamable HTTP)"]
        async with RawPeer.connect(flock.gateway_url) as peer:
            await peer.call("announce_agent", {"id": "outside"})
            await flock.stop()
            # The gateway said goodbye (1001) before the system stopped under it.
            await peer._reader
            assert peer.close_code == 1001
        assert flock.flock is not None and flock.flock.get_agent("outside").status == "offline"  # type: ignore[union-attr]
    finally:
        await flock.stop()


async def test_metrics_only_listener_without_mcp() -> None:
    config = FlockConfig(runtime=RuntimeConfig(name="m"), metrics=MetricsConfig(port=0))
    async with Flock(config) as flock:
        assert flock.gateway_url is None
        assert flock.metrics_url is not None
        base = flock.metrics_url.removesuffix("/metrics")
        async with aiohttp.ClientSession() as http:
            async with http.get(flock.metrics_url) as response:
                assert response.status == 200
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 200
            async with http.post(f"{base}/mcp", data=b"{}") as response:
                assert response.status == 404  # no gateway here


async def test_no_listener_without_either_section() -> None:
    async with Flock(FlockConfig(runtime=RuntimeConfig(name="quiet"))) as flock:
        assert flock.gateway_url is None and flock.metrics_url is None


async def test_a_disabled_gateway_is_not_started() -> None:
    config = FlockConfig(runtime=RuntimeConfig(name="off"), mcp=McpConfig(enabled=False, port=0))
    async with Flock(config) as flock:
        assert flock.gateway_url is None


async def test_readyz_is_503_when_the_flock_cannot_take_work() -> None:
    async with Flock(gateway_flock_config()) as flock:
        assert flock.gateway_url is not None
        base = flock.gateway_url.removesuffix("/mcp")
        flock.system._failure = RuntimeError("root gave up")  # what a failed root supervisor leaves
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{base}/readyz") as response:
                assert response.status == 503
        finally:
            flock.system._failure = None


async def test_idle_http_sessions_end_and_their_agents_go_offline() -> None:
    async with Flock(gateway_flock_config()) as flock:
        gateway = flock.gateway
        assert gateway is not None and flock.gateway_url is not None
        init = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"},
        }
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        async with aiohttp.ClientSession(headers=headers) as http:
            body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}
            async with http.post(flock.gateway_url, json=body) as response:
                session_id = response.headers["Mcp-Session-Id"]
            call = {"name": "announce_agent", "arguments": {"id": "idle-agent"}}
            body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call}
            async with http.post(
                flock.gateway_url, json=body, headers={"Mcp-Session-Id": session_id}
            ) as response:
                assert response.status == 200
        session = gateway.sessions[session_id]
        assert gateway.expire_idle(now=session.last_active + gateway.agent_idle_timeout - 1) == 0
        assert gateway.expire_idle(now=session.last_active + gateway.agent_idle_timeout + 1) == 1
        await wait_for(lambda: session_id not in gateway.sessions)
        assert flock.flock is not None
        await wait_for(lambda: flock.flock.get_agent("idle-agent").status == "offline")  # type: ignore[union-attr]


async def test_requests_and_connections_are_reported_to_the_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    from flockrt.mcp import observe

    requests: list[tuple[str, str]] = []
    connections: dict[str, int] = {}

    class Gauge:
        def __init__(self, transport: str) -> None:
            self.transport = transport

        def inc(self, delta: int) -> None:
            connections[self.transport] = connections.get(self.transport, 0) + delta

    class Connections:
        def labels(self, transport: str) -> Gauge:
            return Gauge(transport)

    monkeypatch.setattr(
        observe, "_observe", lambda method, outcome, seconds: requests.append((method, outcome))
    )
    monkeypatch.setattr(observe, "_connections", Connections())
    async with Flock(gateway_flock_config()) as flock:
        assert flock.gateway_url is not None
        async with RawPeer.connect(flock.gateway_url) as peer:
            assert connections == {"websocket": 1}
            await peer.call("list_agents", {})
            missing = await peer.call("get_agent_info", {"agent_id": "ghost"})
            assert missing["isError"]
            await peer.send_raw("{bad")
            await peer.next("<unmatched>")
            with pytest.raises(Exception, match="nope"):
                await peer.call("nope", {})
        await wait_for(lambda: connections == {"websocket": 0})
        async with aiohttp.ClientSession() as http, http.post(flock.gateway_url, data=b"[]") as response:
            assert response.status == 400
    assert ("initialize", "ok") in requests
    assert ("tools/call", "ok") in requests
    assert ("tools/call", "error") in requests
    assert requests.count(("other", "invalid")) == 2  # the bad frame and the bad body
    assert ("tools/call", "invalid") in requests  # the unknown tool


async def test_a_port_in_use_is_a_clear_error() -> None:
    from flockrt.web import ListenError

    async with Flock(gateway_flock_config()) as first:
        assert first.web is not None and first.web.port is not None
        with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{first.web.port}"):
            async with Flock(gateway_flock_config(port=first.web.port)):
                pass


async def test_a_client_that_connects_as_the_listener_stops_is_closed_not_left_hanging() -> None:
    # On asyncio's selector loop a connection accepted in the turn before the listener closes
    # used to be leaked: its client waited on a socket nobody served (and the socket's
    # ResourceWarning failed whatever test collected it). Each client below connects, the loop
    # runs 0 to 5 turns (the accept lands in one of them), and the listener stops.
    from aiohttp import web

    from flockrt.web import WebServer

    loop = asyncio.get_running_loop()
    for turns in range(6):
        server = WebServer(web.Application(), "127.0.0.1", 0)
        await server.start()
        assert server.port is not None
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            client.setblocking(False)
            for _ in range(turns):
                await asyncio.sleep(0)
            await server.stop()
            try:
                ended = await asyncio.wait_for(loop.sock_recv(client, 16), 5)
            except ConnectionResetError:  # refused before it was accepted
                ended = b""
            assert ended == b"", f"after {turns} turns the client got {ended!r}"


class Gate(flockrt.Agent):
    """A capability that finishes when the test opens the gate."""

    opened: asyncio.Event
    started: asyncio.Event

    @flockrt.capability("gated")
    async def gated(self) -> str:
        Gate.started.set()
        await Gate.opened.wait()
        return "finished"


async def test_a_graceful_stop_lets_mcp_calls_in_flight_finish() -> None:
    Gate.opened, Gate.started = asyncio.Event(), asyncio.Event()
    flock = Flock(gateway_flock_config())
    await flock.start()
    try:
        await flock.system.spawn(Gate, "gate-1")
        assert flock.gateway_url is not None
        async with RawPeer.connect(flock.gateway_url) as peer:
            call = asyncio.ensure_future(peer.call("request_capability", {"capability": "gated"}))
            await asyncio.wait_for(Gate.started.wait(), 5)
            stopping = asyncio.ensure_future(flock.stop())  # what SIGTERM does
            await wait_for(lambda: not flock.gateway or bool(flock.gateway.sessions))
            assert not call.done()
            Gate.opened.set()
            result = await asyncio.wait_for(call, 5)
            assert result["structuredContent"]["result"] == "finished"  # not "agent stopped"
            await asyncio.wait_for(stopping, 10)
    finally:
        await flock.stop()
