"""Issue 12, the agents' part: errors in plain sentences with their type kept apart (15),
repeated failure log lines rate-limited with a count (17), the Claude agent on the SDK's retry
policy (18)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import pytest

from examples.messages_api import Failure, MessagesApiStandIn
from flockrt import ActorSystem, ClaudeError, LocalFlock, WorkFailed
from tests.test_claude import answer, start_claude

# ---------------------------------------------------------------------------------------------
# 18: the Claude agent retries as the SDK does, and counts every attempt


@pytest.fixture
async def api() -> AsyncIterator[MessagesApiStandIn]:
    async with MessagesApiStandIn(answer) as server:
        yield server


@pytest.fixture
async def flock() -> AsyncIterator[LocalFlock]:
    async with ActorSystem("hardening-agents", shutdown_timeout=2.0) as system:
        yield LocalFlock(system, node="node-a", heartbeat_interval=60)


async def test_one_server_error_is_retried_by_the_sdk(flock: LocalFlock, api: MessagesApiStandIn) -> None:
    agent = await start_claude(flock, api)
    api.fail_next(Failure(500, "Internal server error"))
    result = await flock.request_capability("claude-ai", "again")
    assert result["text"] == "Claude says: again"
    assert [h["x-stainless-retry-count"] for h in api.headers] == ["0", "1"]
    assert (agent.usage.requests["server_error"], agent.usage.requests["ok"], agent.usage.retries) == (
        1,
        1,
        1,
    )
    assert agent.breaker.failures == 0


@pytest.mark.parametrize("status", [503, 408])
async def test_unavailable_and_request_timeout_wait_what_retry_after_ms_says(
    flock: LocalFlock, api: MessagesApiStandIn, status: int
) -> None:
    agent = await start_claude(flock, api)
    api.fail_next(Failure(status, "try again later", headers=(("retry-after-ms", "600"),)))
    started = time.monotonic()
    result = await flock.request_capability("claude-ai", "patience")
    assert result["text"] == "Claude says: patience"
    # The SDK's own first delay is at most 0.5 s: 0.6 s is the server's.
    assert time.monotonic() - started >= 0.6
    assert len(api.requests) == 2
    outcome = "server_error" if status == 503 else "timeout"
    assert (agent.usage.requests[outcome], agent.usage.requests["ok"]) == (1, 1)


async def test_x_should_retry_false_is_obeyed(
    flock: LocalFlock, api: MessagesApiStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    agent = await start_claude(flock, api)
    caplog.set_level(logging.WARNING, "flockrt.agents.claude")
    api.fail_next(Failure(429, "not this one", headers=(("x-should-retry", "false"),)))
    with pytest.raises(WorkFailed) as info:
        await flock.request_capability("claude-ai", "once")
    error = info.value.cause
    assert isinstance(error, ClaudeError)
    assert (error.kind, error.status, error.attempts) == ("rate_limited", 429, 1)
    assert str(error) == "Claude API rate limited (429 rate_limit_error): not this one"
    assert len(api.requests) == 1
    assert agent.usage.retries == 0
    assert "Claude agent claude: rate limited (429, x-should-retry: false) (attempt 1 of at most 4)" in [
        r.getMessage() for r in caplog.records
    ]


async def test_overload_in_the_middle_of_a_stream_is_retried_by_the_agent(
    flock: LocalFlock, api: MessagesApiStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    agent = await start_claude(flock, api)
    caplog.set_level(logging.WARNING, "flockrt.agents.claude")
    api.fail_next(Failure(529, "Overloaded", mid_stream=True))
    result = await flock.request_capability("claude-ai", {"prompt": "stream me", "stream": True})
    assert result["text"] == "Claude says: stream me"
    assert len(api.requests) == 2
    # The SDK cannot retry a stream that had begun (a 200): each is a first attempt for it.
    assert [h["x-stainless-retry-count"] for h in api.headers] == ["0", "0"]
    assert (agent.usage.requests["overloaded"], agent.usage.requests["ok"], agent.usage.retries) == (1, 1, 1)
    [retry] = [r.getMessage() for r in caplog.records]
    assert retry.startswith("Claude agent claude: overloaded (200 overloaded_error): Overloaded midway")
    assert "(attempt 1 of 4); retrying in 0.00 s" in retry


async def test_a_stream_that_fails_midway_uses_what_is_left_of_max_retries(
    flock: LocalFlock, api: MessagesApiStandIn
) -> None:
    agent = await start_claude(flock, api, max_retries=1)
    api.fail_next(Failure(529, "Overloaded", mid_stream=True), Failure(529, "Overloaded", mid_stream=True))
    with pytest.raises(WorkFailed) as info:
        await flock.request_capability("claude-ai", {"prompt": "x", "stream": True})
    error = info.value.cause
    assert isinstance(error, ClaudeError)
    assert (error.kind, error.attempts) == ("overloaded", 2)
    assert len(api.requests) == 2
    assert agent.usage.requests["overloaded"] == 2
