"""The Claude agent: Anthropic's Messages API as capabilities of the flock.

The only module of flockrt that imports ``anthropic`` (so ``import flockrt`` stays free of it),
and only when an agent with an API key starts or handles an error: importing the SDK takes
longer (about 1.7 s) than starting a whole flock, which a flock without Claude need not pay.

:class:`ClaudeAgent` offers ``claude-ai`` (a prompt or a conversation in, Claude's answer out),
``text-analysis`` and ``code-generation``, and offers them only when it has an API key: without
one it advertises nothing, and a config's ``class = "claude"`` entry is left out of the tree
with one log line.

Calls go through ``anthropic.AsyncAnthropic`` with the SDK's own retry policy (``max_retries``
from the config): it retries 408, 409, 429, 5xx (529 included), timeouts and connection errors,
waits what ``retry-after-ms`` or ``retry-after`` says (else its exponential backoff), and obeys
``x-should-retry``. A middleware on the client sees every attempt, so each one is counted by
outcome and logged. The agent retries by itself only where the SDK cannot: a failure in the
middle of a stream (an ``overloaded_error`` event, a connection lost or timed out after the
200), with :attr:`ClaudeAgent.backoff`. Calls that still fail feed a :class:`CircuitBreaker`: after
``failure_threshold`` failed calls in a row it opens and work fails at once with
:class:`~flockrt.errors.ClaudeError` (``kind="circuit_open"``) until ``reset_timeout`` has
passed; then one trial call decides whether it closes again. Every failure is failed work with
a clear message, never a crashed agent.

Long answers are streamed (``messages.stream``), and so is every answer whose requester listens
for progress: the characters received so far go to :meth:`~flockrt.Agent.report_progress`.

Token usage and requests by outcome are counted in plain counters: per agent
(:attr:`ClaudeAgent.usage`) and for the whole process (:data:`USAGE`), which a metrics collector
reads at scrape time.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import logging
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flockrt.agents.agent import Agent, capability
from flockrt.agents.builtins import analyze_text
from flockrt.breaker import CircuitBreaker
from flockrt.config import ClaudeConfig
from flockrt.errors import CircuitOpen, ClaudeError, ConfigError
from flockrt.supervisor.spec import Backoff

if TYPE_CHECKING:
    import anthropic
    import httpx2
    from anthropic import APIRequest, AsyncAPIResponse, AsyncCallNext
    from anthropic.types import Message, MessageParam

    from flockrt.config import FlockConfig

__all__ = ["INSTALL_HINT", "OUTCOMES", "USAGE", "ClaudeAgent", "ClaudeUsage", "anthropic_installed"]

log = logging.getLogger("flockrt.agents.claude")

OUTCOMES = (
    "ok",
    "rate_limited",
    "overloaded",
    "server_error",
    "timeout",
    "connection_error",
    "client_error",
    "circuit_open",
)
"""What a request to the API can come to; ``circuit_open`` ones were never sent."""

_RETRIED = frozenset({"rate_limited", "overloaded", "timeout", "connection_error"})
"""Failures in the middle of a stream that the agent retries itself (the SDK cannot: the
response had begun)."""
# Failures that say the API (or the way to it) is in trouble; a client error says it is up.
_BREAKER_FAILURES = frozenset({"rate_limited", "overloaded", "server_error", "timeout", "connection_error"})


@dataclass(slots=True)
class ClaudeUsage:
    """Counters of the Claude API use: requests by outcome, retries and tokens.

    Plain integers, only ever increased, read at scrape time (``flockrt_claude_*`` metrics).
    Each HTTP request is counted once by its outcome; a retry is a request of its own.
    """

    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    """Requests by outcome (every key of :data:`OUTCOMES` is present)."""
    retries: int = 0
    """Requests that were retries of a failed one."""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    circuit_opened: int = 0
    """Times a circuit breaker opened."""

    def snapshot(self) -> dict[str, Any]:
        """The counters as a JSON-able dict (a copy)."""
        return {
            "requests": dict(self.requests),
            "retries": self.retries,
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "cacheCreationInputTokens": self.cache_creation_input_tokens,
            "cacheReadInputTokens": self.cache_read_input_tokens,
            "circuitOpened": self.circuit_opened,
        }


USAGE = ClaudeUsage()
"""The whole process's Claude usage: the sum over every ClaudeAgent."""


class _Call:
    """One piece of work's way through the API: HTTP attempts so far (the SDK's retries
    included) and progress reported."""

    attempts: int = 0
    answered: bool = False
    """Whether the last attempt got a successful response (a failure after it is mid-stream)."""
    characters: int = 0
    last_report: float = -math.inf


_current_call: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "flockrt_claude_call", default=None
)
"""The call an attempt belongs to, for the client's middleware (which runs in the caller's Task)."""


_DEFAULTS = ClaudeConfig()  # the [claude] defaults are the agent's defaults
_DEFAULT_BACKOFF = Backoff(initial=1.0, maximum=30.0, multiplier=2.0, jitter=0.2)

_ANALYST = (
    "You analyse texts for other programs. Answer in plain prose of at most five sentences: "
    "the topic, the tone, and anything notable. No preamble."
)
_CODER = (
    "You write correct, idiomatic, complete code. Answer with exactly one fenced code block, "
    "then at most two sentences about it."
)
_FENCE = re.compile(r"```[\w+-]*\n(?P<code>.*?)```", re.S)


INSTALL_HINT = "pip install 'flockrt[claude]'"
"""How to install the Anthropic SDK, an optional extra of flockrt."""


def anthropic_installed() -> bool:
    """Whether the Anthropic SDK can be imported, without importing it (that takes seconds)."""
    try:
        return importlib.util.find_spec("anthropic") is not None
    except (ImportError, ValueError):  # blocked by an import hook, or sys.modules["anthropic"] = None
        return False


class ClaudeAgent(Agent):
    """An agent that answers with Claude: capabilities ``claude-ai``, ``text-analysis`` and
    ``code-generation``, offered only when ``api_key`` is set.

    A config names it ``class = "claude"``; its options default to the ``[claude]`` section
    (ANTHROPIC_API_KEY, CLAUDE_MODEL), and the agent is left out of the tree when no key is
    configured.

    Args:
        agent_id: Unique in the flock.
        api_key: Anthropic API key; without one the agent offers nothing.
        model: The model of every call.
        max_tokens: Default cap on an answer's length (a request may ask for another).
        base_url: Another Messages API endpoint ("" = the SDK's default).
        max_retries: Retries of a call (the SDK's policy: 408, 409, 429, 5xx, timeouts,
            connection errors, as the server's ``x-should-retry`` allows), and of a stream
            that fails midway.
        timeout: Seconds one HTTP call may take.
        stream_above: Answers allowed this many tokens or more are streamed even when nobody
            listens for progress (answers are streamed whenever somebody does).
        progress_interval: Seconds between progress reports while streaming (the first and
            the last are always sent).
        backoff: Delays between the retries of a stream that failed midway (the SDK's own
            retries wait what the server says, else the SDK's backoff).
        breaker: The circuit breaker (default: opens after 5 failed calls, for 30 s).
        max_concurrent_tasks: Calls in flight at once (default 4).
    """

    max_concurrent_tasks = 4

    def __init__(
        self,
        agent_id: str,
        *,
        api_key: str = "",
        model: str = _DEFAULTS.model,
        max_tokens: int = _DEFAULTS.max_tokens,
        base_url: str = "",
        max_retries: int = _DEFAULTS.max_retries,
        timeout: float = _DEFAULTS.timeout,
        stream_above: int = 4096,
        progress_interval: float = 0.25,
        backoff: Backoff = _DEFAULT_BACKOFF,
        breaker: CircuitBreaker | None = None,
        name: str | None = None,
        max_concurrent_tasks: int | None = None,
    ) -> None:
        super().__init__(agent_id, name=name, max_concurrent_tasks=max_concurrent_tasks)
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
        self.api_key = api_key
        self.model = model
        self.max_tokens = max_tokens
        self.base_url = base_url
        self.max_retries = max_retries
        self.timeout = timeout
        self.stream_above = stream_above
        self.progress_interval = progress_interval
        self.backoff = backoff
        self.breaker = (
            breaker
            if breaker is not None
            else CircuitBreaker("Claude API", failure_threshold=5, reset_timeout=30.0)
        )
        self.usage = ClaudeUsage()
        """This agent's counters (:data:`USAGE` has the process's totals)."""
        self._client: anthropic.AsyncAnthropic | None = None

    @classmethod
    def flock_options(
        cls, config: FlockConfig, agent_id: str, options: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The keyword arguments of a ``class = "claude"`` entry: ``[claude]`` first, then the
        entry's own options; None (and one log line) when there is no API key."""
        section = config.claude
        merged: dict[str, Any] = {
            "api_key": section.api_key,
            "model": section.model,
            "max_tokens": section.max_tokens,
            "base_url": section.base_url,
            "max_retries": section.max_retries,
            "timeout": section.timeout,
            **options,
        }
        if not merged["api_key"]:
            log.info(
                "Claude agent %r skipped: no API key (set ANTHROPIC_API_KEY or [claude] api_key)", agent_id
            )
            return None
        if not anthropic_installed():
            raise ConfigError(
                f"Claude agent {agent_id!r} needs the Anthropic SDK, which is not installed: {INSTALL_HINT}"
            )
        return merged

    @property
    def capabilities(self) -> tuple[str, ...]:
        return super().capabilities if self.api_key else ()

    # ------------------------------------------------------------------ lifecycle

    async def setup(self) -> None:
        if not self.api_key:
            log.warning("Claude agent %s has no API key: it offers no capability", self.agent_id)
            return
        if not anthropic_installed():
            raise ConfigError(f"Claude agent {self.agent_id} needs the Anthropic SDK: {INSTALL_HINT}")
        import anthropic  # here, not at the top: importing the SDK takes longer than starting a flock

        # The SDK retries (its policy honours retry-after-ms and x-should-retry); the middleware
        # sees each of its attempts, to count and log them.
        self._client = anthropic.AsyncAnthropic(
            api_key=self.api_key,
            base_url=self.base_url or None,
            max_retries=self.max_retries,
            timeout=self.timeout,
            middleware=[self._attempt],
        )

    async def teardown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    # ------------------------------------------------------------------ capabilities

    @capability("claude-ai")
    async def ask(
        self,
        prompt: str | None = None,
        *,
        messages: list[MessageParam] | None = None,
        system: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stream: bool | None = None,
        maxTokens: int | None = None,
        model: str | None = None,
    ) -> dict[str, Any]:
        """Claude's answer to ``prompt``, or to the conversation ``messages`` (Messages API
        format), with an optional ``system`` prompt. ``maxTokens`` (the wire's camelCase, as the
        AI Flock seed sends it) is ``max_tokens`` by its other name; ``model`` overrides the
        agent's model for this call.

        Returns:
            ``{"text", "model", "stopReason", "usage": {"inputTokens", "outputTokens"}, "streamed"}``.

        Raises:
            ValueError: neither or both of ``prompt`` and ``messages``.
            ClaudeError: the call failed (after retries) or the circuit is open.
        """
        if (prompt is None) == (messages is None):
            raise ValueError("claude-ai needs a prompt or messages (one of them)")
        conversation: list[MessageParam] = (
            messages if messages is not None else [{"role": "user", "content": str(prompt)}]
        )
        if max_tokens is not None and maxTokens is not None and max_tokens != maxTokens:
            raise ValueError("claude-ai got max_tokens and maxTokens with different values (give one)")
        return await self.complete(
            conversation,
            system=system,
            max_tokens=max_tokens if max_tokens is not None else maxTokens,
            temperature=temperature,
            stream=stream,
            model=model,
        )

    @capability("text-analysis")
    async def analyze(
        self,
        text: str,
        instructions: str | None = None,
        useClaude: bool | None = None,
        model: str | None = None,
    ) -> dict[str, Any]:
        """The local counts of :func:`flockrt.agents.builtins.analyze_text` (the same keys as every
        text-analysis agent gives) plus Claude's ``analysis`` of the text, by ``model`` if given.
        ``useClaude`` (the AI Flock seed's flag) is accepted: this agent always uses Claude."""
        request = f"{instructions or 'Analyse this text.'}\n\n<text>\n{text}\n</text>"
        answer = await self.complete([{"role": "user", "content": request}], system=_ANALYST, model=model)
        return {**analyze_text(text), "analysis": answer["text"], "model": answer["model"]}

    @capability("code-generation")
    async def generate_code(self, prompt: str, language: str = "python") -> dict[str, Any]:
        """Code in ``language`` that does what ``prompt`` says.

        Returns:
            ``{"code", "language", "text", "model", "usage"}``: ``code`` is the first fenced
            block of Claude's answer (the whole answer when it has none), ``text`` all of it.
        """
        request = f"Write {language} code for this:\n\n{prompt}"
        answer = await self.complete([{"role": "user", "content": request}], system=_CODER)
        match = _FENCE.search(answer["text"])
        code = match["code"] if match else answer["text"]
        return {
            "code": code,
            "language": language,
            "text": answer["text"],
            "model": answer["model"],
            "usage": answer["usage"],
        }

    # ------------------------------------------------------------------ calling the API

    async def complete(
        self,
        messages: list[MessageParam],
        *,
        system: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stream: bool | None = None,
        model: str | None = None,
    ) -> dict[str, Any]:
        """One answer from the Messages API, with retries, the breaker and usage counting.

        Streams when ``stream`` is True, or when it is None and the current work's requester
        listens for progress or ``max_tokens`` is at least ``stream_above``.

        Raises:
            ClaudeError: the call failed after the retries it was worth, the circuit is open,
                or the agent has no API key.
        """
        client = self._client
        if client is None:
            raise ClaudeError(f"Claude agent {self.agent_id} has no API key", kind="no_api_key")
        limit = max_tokens if max_tokens is not None else self.max_tokens
        request: dict[str, Any] = {"model": model or self.model, "max_tokens": limit, "messages": messages}
        if system:
            request["system"] = system
        if temperature is not None:
            request["temperature"] = temperature
        streamed = (
            stream
            if stream is not None
            else (self.progress_listener is not None or limit >= self.stream_above)
        )
        try:
            trial = self.breaker.check()
        except CircuitOpen as exc:
            self._count("circuit_open")
            raise ClaudeError(
                f"Claude API circuit open after {self.breaker.failures} failed calls in a row; "
                f"next try in {max(exc.retry_after, 0.0):.1f} s",
                kind="circuit_open",
            ) from None
        try:
            message = await self._call_with_retries(client, request, streamed, _Call())
        except ClaudeError as exc:
            if exc.kind not in _BREAKER_FAILURES:
                self.breaker.record_success()  # the API answered: it is up
            elif self.breaker.record_failure():
                self._opened(exc)
            raise
        except BaseException:  # cancelled (or a bug): no verdict on the API's health
            self.breaker.release(trial)
            raise
        self.breaker.record_success()
        return {
            "text": "".join(block.text for block in message.content if block.type == "text"),
            "model": message.model,
            "stopReason": message.stop_reason,
            "usage": {"inputTokens": message.usage.input_tokens, "outputTokens": message.usage.output_tokens},
            "streamed": streamed,
        }

    async def _call_with_retries(
        self, client: anthropic.AsyncAnthropic, request: dict[str, Any], streamed: bool, call: _Call
    ) -> Message:
        """The SDK's retries happen within ``messages.create`` (or the start of a stream); a
        stream that fails after its 200 is retried here, within what is left of ``max_retries``."""
        import anthropic
        import httpx2  # the SDK's HTTP client: transport errors in the middle of a stream arrive unwrapped

        token = _current_call.set(call)
        try:
            while True:
                try:
                    if streamed:
                        message = await self._stream(client, request, call)
                    else:
                        message = await client.messages.create(**request)
                except (anthropic.APIError, httpx2.TransportError) as exc:
                    outcome = _outcome(exc)
                    midway = call.answered
                    if midway:  # the middleware saw a 200: this failure is not counted yet
                        self._count(outcome)
                    left = self.max_retries + 1 - call.attempts
                    if not midway or outcome not in _RETRIED or left <= 0:
                        raise _error(exc, outcome, call.attempts, self.base_url) from exc
                    delay = self.backoff.delay(call.attempts - 1)
                    log.warning(
                        "Claude agent %s: %s midway (attempt %d of %d); retrying in %.2f s",
                        self.agent_id,
                        _describe(exc, outcome),
                        call.attempts,
                        self.max_retries + 1,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    client = client.with_options(max_retries=left - 1)
                    continue
                self._count("ok", message)
                return message
        finally:
            _current_call.reset(token)

    async def _attempt(self, request: APIRequest, call_next: AsyncCallNext) -> AsyncAPIResponse[Any]:
        """The client's middleware: runs once per HTTP attempt, the SDK's retries included,
        to count it (a failed one by its outcome; a success when its answer is complete) and
        log its failure."""
        import anthropic

        call = _current_call.get()
        if call is not None:
            call.attempts += 1
            call.answered = False
            attempt = call.attempts
        else:  # a call made on the client directly, not through complete()
            attempt = request.retries_taken + 1
        if attempt > 1:
            self.usage.retries += 1
            USAGE.retries += 1
        try:
            response = await call_next(request)
        except anthropic.APIConnectionError as exc:  # no response: timed out or unreachable
            outcome = "timeout" if isinstance(exc, anthropic.APITimeoutError) else "connection_error"
            self._count(outcome)
            self._attempt_failed(attempt, f"{outcome.replace('_', ' ')}: {exc.message}")
            raise
        status = response.status_code
        if status >= 400:
            outcome = _status_outcome(status, None)
            self._count(outcome)
            hint = response.headers.get("x-should-retry")
            said = "" if hint is None else f", x-should-retry: {hint}"
            self._attempt_failed(attempt, f"{outcome.replace('_', ' ')} ({status}{said})")
        elif call is not None:
            call.answered = True
        return response

    def _attempt_failed(self, attempt: int, what: str) -> None:
        log.warning(
            "Claude agent %s: %s (attempt %d of at most %d)",
            self.agent_id,
            what,
            attempt,
            self.max_retries + 1,
        )

    async def _stream(
        self, client: anthropic.AsyncAnthropic, request: dict[str, Any], call: _Call
    ) -> Message:
        loop = asyncio.get_running_loop()
        async with client.messages.stream(**request) as stream:
            async for text in stream.text_stream:
                call.characters += len(text)  # across attempts too: progress only grows
                now = loop.time()
                if now - call.last_report >= self.progress_interval:
                    call.last_report = now
                    self.report_progress(call.characters, None, f"{call.characters} characters from Claude")
            message = await stream.get_final_message()
        self.report_progress(call.characters, call.characters, "answer complete")
        return message

    def _count(self, outcome: str, message: Message | None = None) -> None:
        for usage in (self.usage, USAGE):
            usage.requests[outcome] += 1
            if message is not None:
                usage.input_tokens += message.usage.input_tokens
                usage.output_tokens += message.usage.output_tokens
                usage.cache_creation_input_tokens += message.usage.cache_creation_input_tokens or 0
                usage.cache_read_input_tokens += message.usage.cache_read_input_tokens or 0

    def _opened(self, cause: ClaudeError) -> None:
        self.usage.circuit_opened += 1
        USAGE.circuit_opened += 1
        log.error(
            "Claude agent %s: circuit open after %d failed calls in a row (last: %s); "
            "calls fail at once for %g s",
            self.agent_id,
            self.breaker.failures,
            cause,
            self.breaker.reset_timeout,
        )


def _outcome(exc: anthropic.APIError | httpx2.TransportError) -> str:
    import anthropic
    import httpx2

    if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
        return "timeout"
    if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError):
        return "connection_error"
    if isinstance(exc, anthropic.APIStatusError):
        return _status_outcome(exc.status_code, exc.type)
    return "server_error"  # e.g. a response that does not match the API's schema


def _status_outcome(status: int, error_type: str | None) -> str:
    """The outcome of a response with HTTP ``status`` (and the error's ``type``, if known).

    A mid-stream error event arrives on a 200: its type says what it is.
    """
    if status == 429 or error_type == "rate_limit_error":
        return "rate_limited"
    if status == 529 or error_type == "overloaded_error":
        return "overloaded"
    if status == 408 or error_type == "timeout_error":
        return "timeout"
    if status >= 500 or status < 400:
        return "server_error"
    return "client_error"


def _describe(exc: anthropic.APIError | httpx2.TransportError, outcome: str) -> str:
    import anthropic

    if isinstance(exc, anthropic.APIStatusError):
        kind = exc.type or "error"
        detail = exc.api_message or exc.message
        return f"{outcome.replace('_', ' ')} ({exc.status_code} {kind}): {detail}"
    return f"{outcome.replace('_', ' ')}: {_detail(exc)}"


def _detail(exc: anthropic.APIError | httpx2.TransportError) -> str:
    import anthropic

    if isinstance(exc, anthropic.APIError):
        return exc.message
    return str(exc) or f"{type(exc).__name__} in the middle of the answer"


def _error(
    exc: anthropic.APIError | httpx2.TransportError, outcome: str, attempts: int, base_url: str
) -> ClaudeError:
    import anthropic

    status = exc.status_code if isinstance(exc, anthropic.APIStatusError) else None
    if outcome == "connection_error":
        where = base_url or "the default endpoint"
        text = f"cannot reach the Claude API at {where} after {attempts} attempts: {_detail(exc)}"
    elif attempts > 1:
        text = f"Claude API {_describe(exc, outcome)}; gave up after {attempts} attempts"
    elif outcome == "client_error":
        text = f"Claude API refused the request: {_describe(exc, outcome)}"
    else:
        text = f"Claude API {_describe(exc, outcome)}"
    return ClaudeError(text, kind=outcome, status=status, attempts=attempts)
