"""The Claude agent against a local Messages API (examples/messages_api.py) through the real SDK.

Real sockets on 127.0.0.1: the SDK's HTTP client talks to an aiohttp server that answers with
the API's JSON and server-sent events, and fails as the API does (429 with retry-after, 529
overloaded, 500, an error event mid-stream).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from examples.messages_api import Failure, MessagesApiStandIn
from flockrt import ActorSystem, ClaudeError, LocalFlock, NoCapableAgent, WorkFailed, assembly
from flockrt.agents.agent import Agent, capability
from flockrt.agents.builtins import AiTaskAgent, analyze_text
from flockrt.agents.claude import OUTCOMES, USAGE, ClaudeAgent
from flockrt.breaker import CircuitBreaker
from flockrt.config import ConfigError, load_config
from flockrt.supervisor.spec import Backoff
from tests.conftest import wait_for

NO_WAIT = Backoff(initial=0.0, maximum=0.0, jitter=0.0)
NO_RETRY = (("x-should-retry", "false"),)
KEY = "sk-test-key"


def answer(request: dict[str, Any]) -> str:
    """The stand-in's answers: code for code requests, else an echo of the prompt."""
    prompt = request["messages"][-1]["content"]
    if "code for this" in prompt:
        return "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nIt adds."
    return f"Claude says: {prompt}"


@pytest.fixture
async def api() -> AsyncIterator[MessagesApiStandIn]:
    async with MessagesApiStandIn(answer) as server:
        yield server


@pytest.fixture
async def flock() -> AsyncIterator[LocalFlock]:
    async with ActorSystem("claude-test", shutdown_timeout=2.0) as system:
        yield LocalFlock(system, node="node-a", heartbeat_interval=60)


async def start_claude(flock: LocalFlock, api: MessagesApiStandIn, **options: Any) -> ClaudeAgent:
    """Spawn a ClaudeAgent pointed at the stand-in and return the instance (for its counters)."""
    made: list[ClaudeAgent] = []

    def make(agent_id: str) -> ClaudeAgent:
        settings: dict[str, Any] = {
            "api_key": KEY,
            "base_url": api.base_url,
            "model": "claude-test",
            "backoff": NO_WAIT,
            **options,
        }
        made.append(ClaudeAgent(agent_id, **settings))
        return made[-1]

    await flock.system.spawn(make, "claude")
    return made[0]


async def test_claude_ai_answers_through_the_sdk_and_counts_tokens(
    flock: LocalFlock, api: MessagesApiStandIn
) -> None:
    agent = await start_claude(flock, api, max_tokens=300)
    before = USAGE.snapshot()
    result = await flock.request_capability("claude-ai", {"prompt": "hello there", "system": "Be brief."})
    assert result == {
        "text": "Claude says: hello there",
        "model": "claude-test",
        "stopReason": "end_turn",
        "usage": {"inputTokens": 5, "outputTokens": 5},  # the stand-in counts words and signs
        "streamed": False,
    }
    [sent] = api.requests
    assert sent == {
        "model": "claude-test",
        "max_tokens": 300,
        "messages": [{"role": "user", "content": "hello there"}],
        "system": "Be brief.",
    }
    assert api.headers[0]["Authorization"] == f"Bearer {KEY}"
    assert api.headers[0]["x-stainless-retry-count"] == "0"  # a first attempt
    # A bare string is the prompt.
    second = await flock.request_capability("claude-ai", "just text")
    assert second["text"] == "Claude says: just text"
    assert agent.usage.requests == {**dict.fromkeys(OUTCOMES, 0), "ok": 2}
    assert (agent.usage.input_tokens, agent.usage.output_tokens) == (5 + 2, 5 + 5)
    after = USAGE.snapshot()
    assert after["requests"]["ok"] - before["requests"]["ok"] == 2
    assert after["inputTokens"] - before["inputTokens"] == 7
    assert after["outputTokens"] - before["outputTokens"] == 10


async def test_bad_parameters_fail_the_work_not_the_agent(flock: LocalFlock, api: MessagesApiStandIn) -> None:
    await start_claude(flock, api)
    with pytest.raises(WorkFailed, match="needs a prompt or messages"):
        await flock.request_capability("claude-ai", {"system": "no prompt"})
    conversation = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ]
    result = await flock.request_capability("claude-ai", {"messages": conversation})
    assert result["text"] == "Claude says: again"
    assert api.requests[-1]["messages"] == conversation


async def test_long_answers_stream_and_report_progress_as_they_come(
    flock: LocalFlock, api: MessagesApiStandIn
) -> None:
    await start_claude(flock, api, progress_interval=0)
    reports: list[tuple[float, float | None, str | None]] = []
    api.hold_stream = asyncio.Event()
    call = asyncio.ensure_future(
        flock.request_capability(
            "claude-ai",
            {"prompt": "tell me a long story please"},
            progress=lambda done, total, message: reports.append((done, total, message)),
        )
    )
    # The first delta is reported while the server still holds the rest of the answer back.
    await wait_for(lambda: len(reports) == 1)
    assert not call.done()
    assert reports[0] == (len("Claude says: "), None, "13 characters from Claude")
    api.hold_stream.set()
    result = await asyncio.wait_for(call, 5)
    text = "Claude says: tell me a long story please"
    assert result["text"] == text
    assert result["streamed"] is True
    assert result["usage"] == {"inputTokens": 6, "outputTokens": 9}  # message_delta, not message_start
    assert api.requests[0]["stream"] is True
    done = [r[0] for r in reports]
    assert done == sorted(done) and len(done) >= 4  # one per delta, only growing
    assert reports[-1] == (len(text), len(text), "answer complete")


async def test_large_max_tokens_stream_without_a_listener(flock: LocalFlock, api: MessagesApiStandIn) -> None:
    await start_claude(flock, api, stream_above=2000)
    small = await flock.request_capability("claude-ai", {"prompt": "a", "max_tokens": 1999})
    large = await flock.request_capability("claude-ai", {"prompt": "b", "max_tokens": 2000})
    assert (small["streamed"], large["streamed"]) == (False, True)
    assert [r.get("stream", False) for r in api.requests] == [False, True]
    assert large["text"] == "Claude says: b"


async def test_rate_limit_and_overload_are_retried_by_the_sdk_and_counted(
    flock: LocalFlock, api: MessagesApiStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    agent = await start_claude(flock, api)
    api.fail_next(
        Failure(429, "Number of request tokens has exceeded your rate limit", retry_after="0.05"),
        Failure(529, "Overloaded", headers=(("retry-after-ms", "20"),)),
    )
    caplog.set_level(logging.WARNING, "flockrt.agents.claude")
    result = await flock.request_capability("claude-ai", "third time lucky")
    assert result["text"] == "Claude says: third time lucky"
    assert len(api.requests) == 3
    # The SDK retried (it says so in its header), waiting what retry-after(-ms) said.
    assert [h["x-stainless-retry-count"] for h in api.headers] == ["0", "1", "2"]
    counts = agent.usage.requests
    assert (counts["rate_limited"], counts["overloaded"], counts["ok"]) == (1, 1, 1)
    assert agent.usage.retries == 2
    assert [r.getMessage() for r in caplog.records] == [
        "Claude agent claude: rate limited (429) (attempt 1 of at most 4)",
        "Claude agent claude: overloaded (529) (attempt 2 of at most 4)",
    ]
    assert agent.breaker.state == "closed" and agent.breaker.failures == 0


async def test_overload_in_the_middle_of_a_stream_is_retried(
    flock: LocalFlock, api: MessagesApiStandIn
) -> None:
    agent = await start_claude(flock, api, progress_interval=0)
    api.fail_next(Failure(529, "Overloaded", mid_stream=True))
    reports: list[float] = []
    result = await flock.request_capability(
        "claude-ai", "stream me", progress=lambda done, total, message: reports.append(done)
    )
    assert result["text"] == "Claude says: stream me"
    assert (agent.usage.requests["overloaded"], agent.usage.requests["ok"]) == (1, 1)
    assert reports == sorted(reports)  # the partial first attempt does not make progress go back


async def test_retries_run_out_into_a_clear_failed_work(flock: LocalFlock, api: MessagesApiStandIn) -> None:
    await start_claude(flock, api, max_retries=1)
    soon = (("retry-after-ms", "1"),)
    api.fail_next(Failure(429, "slow down", headers=soon), Failure(429, "slow down", headers=soon))
    with pytest.raises(WorkFailed) as info:
        await flock.request_capability("claude-ai", "in vain")
    error = info.value.cause
    assert isinstance(error, ClaudeError)
    assert (error.kind, error.status, error.attempts) == ("rate_limited", 429, 2)
    assert str(error) == (
        "Claude API rate limited (429 rate_limit_error): slow down; gave up after 2 attempts"
    )
    assert (await flock.request_capability("claude-ai", "later"))["text"] == "Claude says: later"


async def test_a_server_error_the_server_says_not_to_retry_fails_at_once(
    flock: LocalFlock, api: MessagesApiStandIn
) -> None:
    agent = await start_claude(flock, api)
    api.fail_next(Failure(500, "Internal server error", headers=NO_RETRY))
    with pytest.raises(WorkFailed) as info:
        await flock.request_capability("claude-ai", "boom")
    error = info.value.cause
    assert isinstance(error, ClaudeError)
    assert (error.kind, error.status, error.attempts) == ("server_error", 500, 1)
    assert str(error) == "Claude API server error (500 api_error): Internal server error"
    assert len(api.requests) == 1  # not retried
    assert (await flock.request_capability("claude-ai", "fine"))["text"] == "Claude says: fine"
    assert agent.usage.requests["server_error"] == 1


async def test_breaker_opens_after_repeated_failures_then_a_trial_closes_it(
    flock: LocalFlock, api: MessagesApiStandIn
) -> None:
    now = [1000.0]
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=30.0, clock=lambda: now[0])
    agent = await start_claude(flock, api, breaker=breaker)
    opened_before = USAGE.circuit_opened
    api.fail_next(Failure(500, "down", headers=NO_RETRY), Failure(500, "down", headers=NO_RETRY))
    for _ in range(2):
        with pytest.raises(WorkFailed, match="500 api_error"):
            await flock.request_capability("claude-ai", "x")
    assert breaker.state == "open"
    # Open: work fails at once, the API is not called.
    with pytest.raises(WorkFailed) as info:
        await flock.request_capability("claude-ai", "x")
    error = info.value.cause
    assert isinstance(error, ClaudeError) and error.kind == "circuit_open"
    assert str(error) == "Claude API circuit open after 2 failed calls in a row; next try in 30.0 s"
    assert len(api.requests) == 2
    assert agent.usage.requests["circuit_open"] == 1
    assert (agent.usage.circuit_opened, USAGE.circuit_opened - opened_before) == (1, 1)
    # The agent is alive and still advertised all along.
    assert [a.id for a in flock.list_agents(capability="claude-ai")] == ["claude"]
    now[0] += 30.0
    assert breaker.state == "half_open"
    assert (await flock.request_capability("claude-ai", "back?"))["text"] == "Claude says: back?"
    assert breaker.state == "closed"
    assert len(api.requests) == 3


async def test_client_errors_do_not_open_the_breaker(flock: LocalFlock, api: MessagesApiStandIn) -> None:
    agent = await start_claude(flock, api, breaker=CircuitBreaker(failure_threshold=1))
    api.fail_next(Failure(401, "invalid x-api-key"))
    with pytest.raises(WorkFailed) as info:
        await flock.request_capability("claude-ai", "x")
    assert str(info.value.cause) == (
        "Claude API refused the request: client error (401 authentication_error): invalid x-api-key"
    )
    assert agent.breaker.state == "closed"


async def test_an_unreachable_api_is_retried_then_reported(
    flock: LocalFlock, api: MessagesApiStandIn
) -> None:
    await api.stop()  # nothing listens on its port any more
    agent = await start_claude(flock, api, max_retries=2)
    with pytest.raises(WorkFailed) as info:
        await flock.request_capability("claude-ai", "anyone?")
    error = info.value.cause
    assert isinstance(error, ClaudeError)
    assert error.kind == "connection_error"
    assert str(error).startswith(f"cannot reach the Claude API at {api.base_url} after 3 attempts")
    assert agent.usage.requests["connection_error"] == 3


async def test_text_analysis_and_code_generation(flock: LocalFlock, api: MessagesApiStandIn) -> None:
    await start_claude(flock, api)
    text = "A flock of agents. It works!"
    analysis = await flock.request_capability("text-analysis", {"text": text})
    # The same keys as the local text agents give, plus Claude's analysis.
    assert {k: analysis[k] for k in analyze_text(text)} == analyze_text(text)
    assert analysis["analysis"].startswith("Claude says: Analyse this text.")
    assert "<text>\nA flock of agents. It works!\n</text>" in api.requests[-1]["messages"][0]["content"]
    assert api.requests[-1]["system"].startswith("You analyse texts")
    code = await flock.request_capability("code-generation", {"prompt": "add two numbers"})
    assert code["code"] == "def add(a, b):\n    return a + b\n"
    assert code["language"] == "python"
    assert code["text"].startswith("Here it is:")


async def test_progress_reaches_the_requester_of_a_delegating_agent(
    flock: LocalFlock, api: MessagesApiStandIn
) -> None:
    await start_claude(flock, api, progress_interval=0)
    await flock.system.spawn(AiTaskAgent, "ai")
    reports: list[float] = []
    task = flock.new_task("ai", "what is a flock?")
    result = await asyncio.wait_for(
        flock.dispatcher.start_task(task, progress=lambda done, total, message: reports.append(done)), 5
    )
    assert (result.status, result.processed_by) == ("ok", "ai")
    assert result.result["text"] == "Claude says: what is a flock?"
    assert result.result["streamed"] is True  # somebody listened, so the answer streamed
    assert reports and reports[-1] == len("Claude says: what is a flock?")


async def test_without_a_key_nothing_is_advertised(flock: LocalFlock) -> None:
    await flock.system.spawn(ClaudeAgent, "claude")
    [info] = flock.list_agents()
    assert (info.id, info.capabilities) == ("claude", ())
    with pytest.raises(NoCapableAgent):
        await flock.request_capability("claude-ai", "hello")


def test_config_starts_the_claude_agent_only_with_a_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "flock.toml"
    path.write_text(
        '[claude]\nmax_tokens = 200\n[[agents]]\nid = "echo"\nclass = "echo"\n'
        '[[agents]]\nid = "claude"\nclass = "claude"\noptions = { max_retries = 1 }\n'
    )
    caplog.set_level(logging.INFO, "flockrt.agents.claude")
    specs = assembly.child_specs(load_config(path, env={}))
    assert [spec.id for spec in specs] == ["echo"]
    assert [r.getMessage() for r in caplog.records] == [
        "Claude agent 'claude' skipped: no API key (set ANTHROPIC_API_KEY or [claude] api_key)"
    ]
    config = load_config(path, env={"ANTHROPIC_API_KEY": KEY, "CLAUDE_MODEL": "claude-other"})
    specs = assembly.child_specs(config)
    assert [spec.id for spec in specs] == ["echo", "claude"]
    agent = specs[1].factory(*specs[1].args)
    assert isinstance(agent, ClaudeAgent)
    # [claude] and the environment, then the entry's own options.
    assert (agent.api_key, agent.model, agent.max_tokens, agent.max_retries) == (KEY, "claude-other", 200, 1)
    assert agent.capabilities == ("claude-ai", "text-analysis", "code-generation")


class Waiter(Agent):
    @capability("slow")
    async def slow(self) -> None:
        await asyncio.Event().wait()


async def test_progress_outside_work_and_a_failing_listener_are_harmless(flock: LocalFlock) -> None:
    agent = Waiter("w")
    agent.report_progress(1)  # not in a handler: nothing to report to
    assert agent.progress_listener is None

    class Reporter(Agent):
        @capability("report")
        async def report(self) -> str:
            self.report_progress(1, 2, "half")
            return "done"

    await flock.system.spawn(Reporter, "reporter")

    def broken(done: float, total: float | None, message: str | None) -> None:
        raise RuntimeError("listener bug")

    assert await flock.request_capability("report", progress=broken) == "done"


async def test_a_timed_out_call_is_retried_then_reported(flock: LocalFlock, api: MessagesApiStandIn) -> None:
    agent = await start_claude(flock, api, timeout=0.2, max_retries=1)
    api.hold_stream = asyncio.Event()  # the server stops sending after the first delta
    try:
        with pytest.raises(WorkFailed) as info:
            await flock.request_capability("claude-ai", {"prompt": "hang", "stream": True})
    finally:
        api.hold_stream.set()
    error = info.value.cause
    assert isinstance(error, ClaudeError)
    assert (error.kind, error.attempts) == ("timeout", 2)
    assert agent.usage.requests["timeout"] == 2


async def test_stopping_the_agent_mid_call_fails_the_work_and_frees_the_trial(
    flock: LocalFlock, api: MessagesApiStandIn
) -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5.0, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 5.0  # half-open: the next call is the trial
    made: list[ClaudeAgent] = []

    def make(agent_id: str) -> ClaudeAgent:
        made.append(ClaudeAgent(agent_id, api_key=KEY, base_url=api.base_url, breaker=breaker))
        made[-1].drain_timeout = 0  # stopped mid-call: no waiting for the call to end
        return made[-1]

    ref = await flock.system.spawn(make, "claude")
    api.hold_stream = asyncio.Event()
    call = asyncio.ensure_future(flock.request_capability("claude-ai", {"prompt": "x", "stream": True}))
    await wait_for(lambda: len(api.requests) == 1)
    await ref.stop()
    with pytest.raises(WorkFailed, match="agent stopped"):
        await call
    api.hold_stream.set()
    assert breaker.state == "half_open"
    breaker.check()  # the cancelled trial left no call in flight behind


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("max_tokens = 0", "claude.max_tokens: expected >= 1, got 0"),
        ("max_retries = -1", "claude.max_retries: expected >= 0, got -1"),
        ("timeout = 0", "claude.timeout: expected > 0 (seconds), got 0"),
        ("base_url = 'localhost:8080'", 'claude.base_url: expected "" or an http(s):// URL'),
        ("modle = 'x'", "claude.modle: unknown key"),
    ],
)
def test_bad_claude_settings_name_the_key(tmp_path: Path, section: str, expected: str) -> None:
    path = tmp_path / "flock.toml"
    path.write_text(f"[claude]\n{section}\n")
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(path, env={})
