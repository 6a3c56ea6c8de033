"""The Streamable HTTP server stream (GET): keepalives find a client that vanished, a new GET
takes over from the old one, and a notification whose write fails is not lost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from flockrt.runtime import Flock
from tests.conftest import wait_for
from tests.mcp_support import INIT_REQUEST, JSON_HEADERS, gateway_flock_config


@pytest.fixture
async def flock() -> AsyncIterator[Flock]:
    async with Flock(gateway_flock_config()) as running:
        yield running


async def open_session(flock: Flock) -> tuple[str, Any]:
    assert flock.gateway_url is not None and flock.gateway is not None
    async with (
        aiohttp.ClientSession() as http,
        http.post(flock.gateway_url, json=INIT_REQUEST, headers=JSON_HEADERS) as r,
    ):
        assert r.status == 200
        session_id = r.headers["Mcp-Session-Id"]
    return session_id, flock.gateway.sessions[session_id]


async def next_event(response: aiohttp.ClientResponse) -> Any:
    """The next SSE message of a server stream (keepalive comments skipped)."""
    async with asyncio.timeout(5):
        while True:
            line = await response.content.readline()
            assert line, "the stream ended"
            if line.startswith(b"data: "):
                return json.loads(line[len(b"data: ") :])


async def test_a_new_get_takes_over_and_a_vanished_client_is_noticed(flock: Flock) -> None:
    assert flock.gateway_url is not None and flock.gateway is not None
    flock.gateway.keepalive_interval = 0.05
    session_id, session = await open_session(flock)
    headers = {"Mcp-Session-Id": session_id, "Accept": "text/event-stream"}
    async with aiohttp.ClientSession() as first_http, aiohttp.ClientSession() as second_http:
        first = await first_http.get(flock.gateway_url, headers=headers)
        assert first.status == 200
        assert await first.content.readline() == b": keepalive\n"
        first_stream = session.stream
        second = await second_http.get(flock.gateway_url, headers=headers)  # was 409
        assert second.status == 200
        await wait_for(lambda: first_stream.ended.is_set())
        session.push("notifications/test", {"n": 1})
        assert (await next_event(second))["params"] == {"n": 1}
        first.close()
        second.close()  # the client vanishes without a word
    await wait_for(lambda: not session.streaming)
    session.push("notifications/test", {"n": 2})
    async with aiohttp.ClientSession() as http, http.get(flock.gateway_url, headers=headers) as third:
        assert (await next_event(third))["params"] == {"n": 2}


async def test_a_notification_whose_write_fails_goes_to_the_next_stream(flock: Flock) -> None:
    assert flock.gateway_url is not None and flock.gateway is not None
    session_id, session = await open_session(flock)  # keepalives far apart: the push finds it
    headers = {"Mcp-Session-Id": session_id, "Accept": "text/event-stream"}
    async with aiohttp.ClientSession() as http:
        gone = await http.get(flock.gateway_url, headers=headers)
        assert gone.status == 200
        await wait_for(lambda: session.stream is not None)
        request = session.stream.request
        gone.close()
    await wait_for(lambda: request.transport is None or request.transport.is_closing())
    session.push("notifications/test", {"n": 1})
    await wait_for(lambda: not session.streaming)
    async with aiohttp.ClientSession() as http, http.get(flock.gateway_url, headers=headers) as again:
        assert (await next_event(again))["params"] == {"n": 1}
