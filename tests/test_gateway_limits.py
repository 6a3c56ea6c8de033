"""Per-client limits: a WebSocket that never initializes is closed, requests in flight per
session are capped, tool timeouts are capped, and only existing resources can be subscribed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from flockrt.runtime import Flock
from tests.conftest import wait_for
from tests.mcp_support import INIT_REQUEST, JSON_HEADERS, RawPeer, RpcError, gateway_flock_config


@pytest.fixture
async def flock() -> AsyncIterator[Flock]:
    async with Flock(gateway_flock_config()) as running:
        yield running


def query(to: str, request_id: int) -> str:
    arguments = {"to": to, "message": "q", "type": "query", "timeout": 30_000}
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": "send_message", "arguments": arguments},
        }
    )


async def test_a_websocket_that_never_initializes_is_closed(flock: Flock) -> None:
    assert flock.gateway_url is not None and flock.gateway is not None
    flock.gateway.init_timeout = 0.1
    async with (
        RawPeer.connect(flock.gateway_url) as initialized,
        RawPeer.connect(flock.gateway_url, initialize=False) as silent,
    ):
        await wait_for(lambda: silent.close_code is not None)
        assert silent.close_code == 1008
        await wait_for(lambda: len(flock.gateway.sessions) == 1)
        assert "result" in await initialized.request("ping")  # its timer fired too: still open


async def test_requests_in_flight_are_capped_per_session(flock: Flock) -> None:
    assert flock.gateway_url is not None and flock.gateway is not None
    gateway = flock.gateway
    gateway.max_inflight = 2
    async with RawPeer.connect(flock.gateway_url) as x, RawPeer.connect(flock.gateway_url) as asker:
        await x.call("announce_agent", {"id": "x"})
        (session,) = [s for s in gateway.sessions.values() if s.agent_id is None]
        await asker.send_raw(query("x", 101))
        await asker.send_raw(query("x", 102))
        await wait_for(lambda: len(session.inflight) == 2)
        with pytest.raises(RpcError) as refused:
            await asker.call("list_agents", {})
        assert refused.value.code == -32000 and "too many requests in flight" in str(refused.value)
        # Over Streamable HTTP: 429 with the same error.
        url = flock.gateway_url
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=INIT_REQUEST, headers=JSON_HEADERS) as r:
                headers = {**JSON_HEADERS, "Mcp-Session-Id": r.headers["Mcp-Session-Id"]}
            posts = [
                asyncio.ensure_future(http.post(url, data=query("x", n), headers=headers)) for n in (2, 3)
            ]
            (http_session,) = [s for s in gateway.sessions.values() if s.transport == "http"]
            await wait_for(lambda: len(http_session.inflight) == 2)
            async with http.post(url, data=query("x", 4), headers=headers) as r:
                body: Any = await r.json()
                assert r.status == 429 and body["error"]["code"] == -32000
            await http_session.close()
            for done in await asyncio.gather(*posts):
                done.close()


async def test_tool_timeouts_are_capped(flock: Flock) -> None:
    assert flock.gateway_url is not None
    async with RawPeer.connect(flock.gateway_url) as peer:
        await peer.call("announce_agent", {"id": "me"})
        command = {"to": "me", "message": "m", "type": "command"}
        assert not (await peer.call("send_message", {**command, "timeout": 600_000}))["isError"]
        for tool, arguments in (
            ("send_message", command),
            ("request_capability", {"capability": "c"}),
            ("submit_task", {"type": "t", "data": None}),
        ):
            with pytest.raises(RpcError) as refused:
                await peer.call(tool, {**arguments, "timeout": 600_001})
            assert refused.value.code == -32602 and "timeout" in str(refused.value)
        listing = {tool["name"]: tool for tool in (await peer.request("tools/list"))["result"]["tools"]}
        for tool in ("send_message", "request_capability", "submit_task"):
            bound = listing[tool]["inputSchema"]["properties"]["timeout"]
            assert "600000" in json.dumps(bound)  # the schema says it too


async def test_only_existing_resources_can_be_subscribed(flock: Flock) -> None:
    assert flock.gateway_url is not None
    async with RawPeer.connect(flock.gateway_url) as peer:
        await peer.call("announce_agent", {"id": "me"})
        for uri in ("flock://agents", "flock://tree", "flock://agents/me"):
            assert (await peer.request("resources/subscribe", {"uri": uri}))["result"] == {}
        for uri in ("flock://agents/ghost", "flock://nowhere"):
            response = await peer.request("resources/subscribe", {"uri": uri})
            assert response["error"]["code"] == -32002, uri
