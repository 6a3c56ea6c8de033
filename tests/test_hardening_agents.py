"""Issue 12, the agents' part: errors in plain sentences with their type kept apart (15),
repeated failure log lines rate-limited with a count (17), the Claude agent on the SDK's retry
policy (18)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import msgspec
import nats
import pytest

from examples.messages_api import Failure, MessagesApiStandIn
from flockrt import (
    Actor,
    ActorRef,
    ActorSystem,
    ChildSpec,
    ClaudeError,
    InvalidParameters,
    LocalFlock,
    RemoteFailure,
    Supervisor,
    WorkFailed,
)
from flockrt.actors.repeats import RepeatedLines
from flockrt.agents.agent import Agent, capability, handles_task
from flockrt.bus.embedded import EmbeddedNats
from flockrt.wire.schema import TaskMessage
from tests.conftest import wait_for
from tests.test_bus_flock import Node, plain
from tests.test_claude import answer, start_claude

__all__ = ["plain"]  # a fixture

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


# ---------------------------------------------------------------------------------------------
# 15: errors in plain sentences that name the parameter, the exception's type kept as a field


class TextAgent(Agent):
    """Counts the calls that reach its handlers: a refused request must not reach them."""

    calls = 0

    @capability("text-analysis")
    async def analyze(self, text: str, instructions: str | None = None) -> dict[str, int]:
        TextAgent.calls += 1
        return {"words": len(text.split())}

    @capability("tally")
    async def tally(self, counts: list[int], label="total") -> dict[str, int]:
        TextAgent.calls += 1
        return {label: sum(counts)}

    @capability("pick")
    async def pick(self, mode: Literal["fast", "slow"], level: int) -> str:
        TextAgent.calls += 1
        return mode

    @capability("lookup")
    async def lookup(self, key: str) -> str:
        return {"a": "b"}[key]

    @handles_task("ai")
    async def ai(self, task: TaskMessage) -> Any:
        return await self.request_capability("claude-ai", {"prompt": str(task.data)})


@pytest.mark.parametrize(
    ("capability_name", "parameters", "parameter", "message"),
    [
        (
            "text-analysis",
            {"bogus": 1},
            "bogus",
            "text-analysis has no parameter 'bogus' (it takes: text, instructions)",
        ),
        (
            "text-analysis",
            {"instructions": "x"},
            "text",
            "text-analysis needs parameter 'text' (it takes: text, instructions)",
        ),
        (
            "text-analysis",
            None,
            "text",
            "text-analysis needs parameter 'text' (it takes: text, instructions)",
        ),
        (
            "text-analysis",
            {"text": 42},
            "text",
            "parameter 'text' of text-analysis must be a string, not an integer",
        ),
        ("text-analysis", 42, "text", "parameter 'text' of text-analysis must be a string, not an integer"),
        (
            "text-analysis",
            {"text": "x", "instructions": []},
            "instructions",
            "parameter 'instructions' of text-analysis must be a string or null, not an array",
        ),
        (
            "tally",
            {"counts": [1, "two"]},
            "counts",
            "parameter 'counts' of tally is invalid at counts[1]: expected an integer, not a string",
        ),
        (
            "tally",
            {"counts": [1], "other": 2},
            "other",
            "tally has no parameter 'other' (it takes: counts, label)",
        ),
        (
            "pick",
            {"mode": "medium"},
            "mode",
            "parameter 'mode' of pick must be one of 'fast', 'slow', not 'medium'",
        ),
        ("pick", "medium", "mode", "parameter 'mode' of pick must be one of 'fast', 'slow', not 'medium'"),
        ("pick", "fast", "level", "pick needs parameter 'level' (it takes: mode, level)"),
    ],
)
async def test_bad_parameters_are_refused_before_the_handler_runs_in_plain_words(
    flock: LocalFlock, capability_name: str, parameters: Any, parameter: str, message: str
) -> None:
    await flock.system.spawn(TextAgent, "text")
    before = TextAgent.calls
    with pytest.raises(WorkFailed) as info:
        await flock.request_capability(capability_name, parameters)
    failed = info.value
    assert isinstance(failed.cause, InvalidParameters)
    assert (failed.cause.capability, failed.cause.parameter) == (capability_name, parameter)
    assert str(failed.cause) == message
    assert str(failed) == f"agent text: capability {capability_name!r} failed: {message}"
    assert failed.error_type == "InvalidParameters"
    assert TextAgent.calls == before  # the handler never ran
    # Well-formed calls go on, untyped parameters included.
    assert await flock.request_capability("text-analysis", {"text": "a b c"}) == {"words": 3}
    assert await flock.request_capability("tally", {"counts": [1, 2], "label": "n"}) == {"n": 3}


async def test_a_tasks_error_is_a_sentence_and_its_type_a_field(flock: LocalFlock) -> None:
    await flock.system.spawn(TextAgent, "text")
    result = await asyncio.wait_for(flock.dispatcher.start_task(flock.new_task("ai", "hi")), 5)
    assert result.status == "error"
    # Was: NoCapableAgent("no agent offers capability 'claude-ai'")
    assert result.error == "no agent offers capability 'claude-ai'"
    assert result.error_type == "NoCapableAgent"
    assert json.loads(msgspec.json.encode(result))["errorType"] == "NoCapableAgent"


async def test_errors_cross_processes_once_wrapped_with_their_type(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    async with Node(nats_server.url, "worker") as worker, Node(nats_server.url, "asker") as asker:
        await worker.system.spawn(TextAgent, "text")
        await worker.settled()
        with pytest.raises(WorkFailed) as info:
            await asker.flock.request_capability("text-analysis", {"bogus": 1}, timeout=5)
        failed = info.value
        # Was: WorkFailed(... RuntimeError('TypeError("TextAgent.analyze() got an unexpected keyword ...")'))
        assert str(failed) == (
            "agent text: capability 'text-analysis' failed: "
            "text-analysis has no parameter 'bogus' (it takes: text, instructions)"
        )
        assert isinstance(failed.cause, RemoteFailure)
        assert (failed.error_type, failed.cause.error_type) == ("InvalidParameters", "InvalidParameters")
        with pytest.raises(WorkFailed) as info:
            await asker.flock.request_capability("lookup", {"key": "z"}, timeout=5)
        assert str(info.value) == "agent text: capability 'lookup' failed: KeyError: 'z'"
        assert info.value.error_type == "KeyError"
        # What any NATS peer sees: the sentence, and the type as errorType.
        reply = await plain.request(
            "capability.text-analysis",
            json.dumps(
                {"capability": "text-analysis", "parameters": {"text": 1}, "requester": "x", "timeout": 5000}
            ).encode(),
            timeout=5,
        )
        answer = json.loads(reply.data)
        assert answer["error"] == "parameter 'text' of text-analysis must be a string, not an integer"
        assert answer["errorType"] == "InvalidParameters"


# ---------------------------------------------------------------------------------------------
# 17: a crash storm writes a few lines a window, with counts, not a line per crash


class Crasher(Actor[Any]):
    async def receive(self, message: Any) -> None:
        raise RuntimeError(f"boom {message}")


def failure_lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= logging.WARNING]


async def test_a_crash_storm_is_logged_once_per_window_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with ActorSystem("storm", shutdown_timeout=2.0) as system:
        system.failure_log.window = 0.5
        specs = [ChildSpec(id="crasher", factory=Crasher)]
        root = await system.spawn(functools.partial(Supervisor, specs, max_restarts=10_000), name="root")
        [info] = await Supervisor.which_children(root)
        crasher = info.ref
        assert isinstance(crasher, ActorRef)
        for _ in range(200):
            await crasher.send("same")
        crasher.tell("other")  # another kind of failure is not hidden by the storm
        await wait_for(lambda: system.stats().restarts >= 201)
        lines = failure_lines(caplog, "flockrt.actor")
        assert lines == [
            "actor /root/crasher failed: RuntimeError('boom same')",
            "actor /root/crasher failed: RuntimeError('boom other')",
        ]
        first = next(r for r in caplog.records if r.getMessage() == lines[0])
        assert first.exc_info is not None  # the first one has its traceback
        # When the window ends, the count: nothing was dropped silently.
        await wait_for(lambda: len(failure_lines(caplog, "flockrt.actor")) == 3)
        assert failure_lines(caplog, "flockrt.actor")[2] == (
            "actor /root/crasher failed: RuntimeError('boom same') (and 199 more like it in the last 0.5 s)"
        )
        assert system.failure_log.suppressed == 199
        # After the window, the next one is written in full again.
        await crasher.send("same")
        await wait_for(lambda: len(failure_lines(caplog, "flockrt.actor")) == 4)
        assert (
            failure_lines(caplog, "flockrt.actor")[3]
            == "actor /root/crasher failed: RuntimeError('boom same')"
        )
        system.failure_log.window = 60.0
        for _ in range(3):
            await crasher.send("late")
        await wait_for(lambda: system.stats().restarts >= 205)
    # The system stopped within the window: its counts are logged as it stops.
    assert failure_lines(caplog, "flockrt.actor")[-2:] == [
        "actor /root/crasher failed: RuntimeError('boom late')",
        "actor /root/crasher failed: RuntimeError('boom late') (and 2 more like it in the last 60 s)",
    ]


class Failing(Agent):
    @capability("fail")
    async def fail(self, why: str) -> None:
        raise ValueError(f"cannot: {why}")


async def test_an_agents_identical_failures_are_counted_not_repeated(
    flock: LocalFlock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "flockrt.agent")
    flock.system.failure_log.window = 60.0
    await flock.system.spawn(Failing, "failing")
    for why in ["x"] * 50 + ["y"]:
        with pytest.raises(WorkFailed):
            await flock.request_capability("fail", {"why": why})
    assert failure_lines(caplog, "flockrt.agent") == [
        "agent failing: capability fail failed: cannot: x",
        "agent failing: capability fail failed: cannot: y",
    ]
    flock.system.failure_log.flush()
    assert failure_lines(caplog, "flockrt.agent")[-1] == (
        "agent failing: capability fail failed: cannot: x (and 49 more like it in the last 60 s)"
    )


async def test_failure_lines_stay_bounded_when_every_message_differs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("flockrt.test.repeats")
    caplog.set_level(logging.ERROR, logger.name)
    lines = RepeatedLines(window=60.0, max_kinds=2)
    for n in range(5):  # five kinds: two watched, the others written every time
        lines.log(logger, logging.ERROR, n, "failure %d", n)
        lines.log(logger, logging.ERROR, n, "failure %d", n)
    assert [r.getMessage() for r in caplog.records] == [
        "failure 0",
        "failure 1",
        "failure 2",
        "failure 2",
        "failure 3",
        "failure 3",
        "failure 4",
        "failure 4",
    ]
    lines.flush()
    assert [r.getMessage() for r in caplog.records][-2:] == [
        "failure 0 (and 1 more like it in the last 60 s)",
        "failure 1 (and 1 more like it in the last 60 s)",
    ]
    assert lines.suppressed == 2
