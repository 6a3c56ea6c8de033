"""FlockClient: argument checks, an unreachable gateway, the circuit breaker, the NATS fallback.

The gateway-backed tests (every tool against a live gateway, pushed messages, reconnection)
are in tests/test_client_gateway.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from flockrt import (
    BusUnavailable,
    CircuitBreaker,
    CircuitOpen,
    FlockClient,
    GatewayUnavailable,
    NoCapableAgent,
    UnknownAgent,
    WorkFailed,
)
from flockrt.breaker import BreakerState
from flockrt.bus.embedded import EmbeddedNats
from flockrt.cli import operate
from flockrt.runtime import Flock
from tests import client_support
from tests.client_support import agents_flock_config, dead_url
from tests.conftest import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def nats_flock(nats_server: EmbeddedNats) -> AsyncIterator[Flock]:
    """A flock on the test's nats-server, with no gateway: agents rec (Recorder) and echo."""
    client_support.RECEIVED.clear()
    async with Flock(agents_flock_config(nats={"url": nats_server.url})) as flock:
        yield flock


# ---------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "tcp://127.0.0.1:4002/mcp"}, "url must be a ws:// or wss:// URL"),
        ({"timeout": 0}, "timeout must be > 0 seconds, got 0"),
        ({"connect_timeout": -1}, "connect_timeout must be > 0 seconds"),
        ({"backoff": 2, "max_backoff": 1}, "expected 0 < backoff <= max_backoff"),
        ({"failure_threshold": 0}, "failure_threshold must be an int >= 1"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FlockClient(**kwargs)


def test_an_http_url_of_the_endpoint_means_its_websocket() -> None:
    assert FlockClient("http://127.0.0.1:4002/mcp").url == "ws://127.0.0.1:4002/mcp"
    assert FlockClient("https://flock.example/mcp").url == "wss://flock.example/mcp"


async def test_bad_arguments_are_refused_before_anything_is_sent() -> None:
    client = FlockClient(dead_url())
    try:
        with pytest.raises(ValueError, match="to must be a non-empty string, got ''"):
            await client.send_message("", "hi")
        with pytest.raises(ValueError, match="capability must be a non-empty string, got 3"):
            await client.request_capability(3, {})  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout must be > 0 seconds, got -1"):
            await client.request_capability("upper", {}, timeout=-1)
        with pytest.raises(ValueError, match="status must be online, offline or all, got 'gone'"):
            await client.list_agents(status="gone")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="priority must be low, medium or high, got 'urgent'"):
            await client.submit("general", "x", priority="urgent")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="capabilities must be a sequence of non-empty strings"):
            await client.announce_agent("me", capabilities="upper")
        with pytest.raises(ValueError, match="max_concurrent_tasks must be an int >= 1, got 0"):
            await client.announce_agent("me", max_concurrent_tasks=0)
        with pytest.raises(TypeError, match="handler must be callable"):
            client.register_message_handler("query", "not a function")  # type: ignore[arg-type]
        # None of this touched the network, so nothing counted against the gateway.
        assert client.breaker.failures == 0
    finally:
        await client.close()


# ---------------------------------------------------------------------- unreachable gateway


async def test_an_unreachable_gateway_is_a_clear_error() -> None:
    url = dead_url()
    client = FlockClient(url)
    try:
        with pytest.raises(GatewayUnavailable, match=f"MCP gateway at {url} is unavailable") as info:
            await client.connect()
        assert isinstance(info.value, ConnectionError)
        assert not client.connected
        with pytest.raises(GatewayUnavailable):
            await client.request_capability("upper", {"text": "x"})
    finally:
        await client.close()


async def test_the_breaker_opens_after_n_failures_and_half_opens_after_the_timeout() -> None:
    clock = Clock()
    url = dead_url()
    breaker = CircuitBreaker(url, failure_threshold=3, reset_timeout=60, clock=clock)
    client = FlockClient(url, breaker=breaker)
    try:
        for _ in range(3):
            with pytest.raises(GatewayUnavailable):
                await client.list_agents()
        assert breaker.state is BreakerState.OPEN
        with pytest.raises(CircuitOpen, match=r"next trial in 60\.0 s"):
            await client.list_agents()  # fails fast: not even a connection attempt
        clock.now += 59
        with pytest.raises(CircuitOpen, match=r"next trial in 1\.0 s"):
            await client.send_message("rec", "hi")
        clock.now += 1
        assert breaker.state is BreakerState.HALF_OPEN
        with pytest.raises(GatewayUnavailable):  # the trial went out, and failed
            await client.get_agent_info("rec")
        assert breaker.state is BreakerState.OPEN  # one failed trial is enough to reopen
        with pytest.raises(CircuitOpen):
            await client.get_agent_info("rec")
    finally:
        await client.close()


# ---------------------------------------------------------------------- NATS fallback


async def test_capability_requests_and_messages_fall_back_to_nats(nats_flock: Flock) -> None:
    client = FlockClient(dead_url(), nats_url=nats_flock.nats_url, failure_threshold=2)
    try:
        await client.connect()  # the gateway is down, but there is NATS: no error
        assert not client.connected
        assert await client.request_capability("upper", {"text": "via nats"}, timeout=5) == "VIA NATS"
        answer = await client.send_message("rec", {"n": 1}, type="query", timeout=5)
        assert answer["to"] == "rec"
        assert answer["got"] == {"n": 1}
        assert answer["from"].startswith("client-")
        assert await client.send_message("rec", "fire and forget") is None
        await wait_for(lambda: any(m.message == "fire and forget" for m in client_support.RECEIVED))
        assert client.fallbacks == 3
        assert client.breaker.state is BreakerState.OPEN  # 2 failures to reach the gateway ...
        # ... and with the breaker open, calls go straight to NATS.
        assert await client.request_capability("echo", "breaker open", timeout=5) == "echo: breaker open"
        assert client.fallbacks == 4
        # Errors over NATS are the same as through the gateway.
        with pytest.raises(NoCapableAgent, match="no agent offers capability 'nothing'"):
            await client.request_capability("nothing", {}, timeout=5)
        with pytest.raises(UnknownAgent, match="nobody"):
            await client.send_message("nobody", "hi", type="query", timeout=5)
        with pytest.raises(WorkFailed, match="exploding on purpose"):
            await client.request_capability("explode", {}, timeout=5)
    finally:
        await client.close()


async def test_without_nats_an_open_breaker_fails_fast() -> None:
    client = FlockClient(dead_url(), failure_threshold=1)
    try:
        with pytest.raises(GatewayUnavailable):
            await client.request_capability("upper", {"text": "x"})
        with pytest.raises(CircuitOpen):
            await client.request_capability("upper", {"text": "x"})
    finally:
        await client.close()


async def test_operations_without_a_nats_equivalent_do_not_fall_back(nats_flock: Flock) -> None:
    client = FlockClient(dead_url(), nats_url=nats_flock.nats_url)
    try:
        with pytest.raises(GatewayUnavailable):
            await client.list_agents()
        assert client.fallbacks == 0
    finally:
        await client.close()


async def test_with_nats_down_too_the_error_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    nats_url = dead_url().replace("ws://", "nats://").removesuffix("/mcp")
    client = FlockClient(dead_url(), nats_url=nats_url, reconnect=False)
    try:
        with pytest.raises(BusUnavailable, match="is unreachable") as info:
            await client.request_capability("upper", {"text": "x"})
        assert isinstance(info.value, ConnectionError)
        assert isinstance(info.value.__context__, GatewayUnavailable)  # what was tried first
        assert client.fallbacks == 0
    finally:
        await client.close()
    assert await operate(["request", "upper", "{}", "--url", dead_url(), "--nats", nats_url]) == 3
    err = capsys.readouterr().err
    assert "flockrt request: neither the gateway nor NATS can be reached" in err
    assert f"NATS at {nats_url} is unreachable" in err
