"""Built-in agents that a config can name by a short name (``class = "echo"``)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from flockrt.agents.agent import Agent, capability, handles_task
from flockrt.wire.schema import DirectMessage, TaskMessage

__all__ = ["AiTaskAgent", "EchoAgent", "TextAgent", "analyze_text"]


class EchoAgent(Agent):
    """Answers with what it was given: the AI Flock's ``general`` tasks, the ``echo``
    capability, and direct queries. Handy to check that a flock is wired up.

    Args:
        agent_id: Unique in the flock.
        prefix: Prepended to string answers (``options = { prefix = "echo: " }`` in a config).
    """

    max_concurrent_tasks = 16

    def __init__(
        self,
        agent_id: str,
        *,
        prefix: str = "",
        name: str | None = None,
        max_concurrent_tasks: int | None = None,
    ) -> None:
        super().__init__(agent_id, name=name, max_concurrent_tasks=max_concurrent_tasks)
        self.prefix = prefix

    def _echo(self, value: Any) -> Any:
        return f"{self.prefix}{value}" if isinstance(value, str) else value

    @handles_task("general")
    async def general(self, task: TaskMessage) -> Any:
        return self._echo(task.data)

    @capability("echo")
    async def echo(self, value: Any = None, **fields: Any) -> Any:
        return fields if fields else self._echo(value)

    async def on_message(self, message: DirectMessage) -> Any:
        return self._echo(message.message)


class TextAgent(Agent):
    """Local text work, no model needed: ``text-analysis`` (counts and top words) and
    ``text-processing`` (normalising and case operations), as capabilities and as the AI
    Flock's ``analysis`` and ``processing`` tasks.

    A task's ``data`` is the text itself or ``{"text": ..., "operation": ...}``.
    """

    max_concurrent_tasks = 8

    @capability("text-analysis")
    async def analyze(
        self, text: str, useClaude: bool | None = None, model: str | None = None
    ) -> dict[str, Any]:
        """Counts of ``text`` and its five most common words. ``useClaude`` and ``model`` (what
        the AI Flock seed sends) are accepted; counting needs no model, so they change nothing
        here (the Claude agent's text-analysis uses ``model``)."""
        return analyze_text(text)

    @capability("text-processing")
    async def process(self, text: str, operation: str = "normalize") -> dict[str, str]:
        operations: dict[str, Callable[[str], str]] = {
            "normalize": lambda t: " ".join(t.split()),
            "upper": str.upper,
            "lower": str.lower,
            "title": str.title,
            "reverse": lambda t: t[::-1],
        }
        if operation not in operations:
            raise ValueError(f"operation must be one of {', '.join(operations)}, got {operation!r}")
        return {"operation": operation, "text": operations[operation](text)}

    @handles_task("analysis")
    async def analysis_task(self, task: TaskMessage) -> dict[str, Any]:
        return await self.analyze(**_text_arguments(task.data))

    @handles_task("processing")
    async def processing_task(self, task: TaskMessage) -> dict[str, str]:
        return await self.process(**_text_arguments(task.data))


class AiTaskAgent(Agent):
    """Handles the AI Flock's ``ai`` tasks (and the seed's ``claude`` tasks, alike) without a
    model of its own: it asks an agent that offers ``claude-ai`` (the Claude agent, in this
    process or another one on the same NATS) and returns its answer as the task's result.

    A task's ``data`` is the prompt itself or the parameters of ``claude-ai``
    (``{"prompt": ..., "system": ..., "maxTokens": ...}``; ``max_tokens`` is accepted too).
    Without a Claude agent in the flock the task fails with a result that says so; the
    progress the Claude agent reports reaches whoever waits for the task in this process.

    Args:
        agent_id: Unique in the flock.
        capability: The capability asked for.
        timeout: Seconds to wait for the answer when the task gives no ``timeout`` of its own.
    """

    max_concurrent_tasks = 8

    def __init__(
        self,
        agent_id: str,
        *,
        capability: str = "claude-ai",
        timeout: float = 120.0,
        name: str | None = None,
        max_concurrent_tasks: int | None = None,
    ) -> None:
        super().__init__(agent_id, name=name, max_concurrent_tasks=max_concurrent_tasks)
        self.capability = capability
        self.timeout = timeout

    @handles_task("ai")
    async def ai_task(self, task: TaskMessage) -> Any:
        return await self._ask(task)

    @handles_task("claude")
    async def claude_task(self, task: TaskMessage) -> Any:
        """The AI Flock seed's task type for Claude: served exactly like ``ai``."""
        return await self._ask(task)

    async def _ask(self, task: TaskMessage) -> Any:
        parameters = (
            task.data if isinstance(task.data, dict) else {"prompt": _text_arguments(task.data)["text"]}
        )
        timeout = task.timeout / 1000 if task.timeout else self.timeout
        return await self.request_capability(self.capability, parameters, timeout=timeout)


def analyze_text(text: str) -> dict[str, Any]:
    """Counts of ``text`` (characters, words, sentences) and its five most common words.

    The ``text-analysis`` answer of every agent that offers it, so a requester gets the same
    keys whichever agent answers (the Claude agent adds its own ``analysis`` to them).
    """
    words = re.findall(r"\w+", text.lower())
    sentences = [s for s in re.split(r"[.!?]+", text) if s.strip()]
    return {
        "characters": len(text),
        "words": len(words),
        "sentences": len(sentences),
        "topWords": [word for word, _ in Counter(words).most_common(5)],
    }


def _text_arguments(data: Any) -> dict[str, Any]:
    if isinstance(data, dict):
        return data
    return {"text": "" if data is None else str(data)}
