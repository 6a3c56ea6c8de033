"""The least a ``submit(..., wait=True)`` with flockrt's documented guarantees can be, in one
process: a model for measuring what those guarantees cost by themselves (issue 15, in process).

:func:`floor_submit` keeps what a user can observe of a submit and nothing else:

- ``submit`` is a coroutine function taking flockrt's arguments, and the task is a
  :class:`~flockrt.wire.schema.TaskMessage` with a fresh id (``batches.new_task``);
- the handler (an agent's ``async def``, awaiting the model) runs in the submitter's Task, its
  steps in a context of its own (a copy, so that what it sets does not leak back), in which
  ``correlation_id`` is the task's id;
- its value comes back as a :class:`~flockrt.wire.schema.TaskResult`.

It leaves out all that makes it a runtime: no choice of agent (no free heaps, no slot taken
and given back), no work set (a stop could not interrupt it), no hooks, result sink or
listeners, no counts, no cancellation or failure handling. So it is a floor, not a rival:
flockrt cannot be cheaper than this without giving up one of the guarantees above.

:func:`tracked_per_task` counts the objects the garbage collector tracks per task in flight,
the figure that decides how often it runs (see ``benchmarks.collector``).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from benchmarks import _agents
from flockrt.actors.correlation import correlation_id
from flockrt.actors.system import ActorSystem
from flockrt.flock import batches
from flockrt.flock.local import LocalFlock
from flockrt.wire.schema import TaskMessage, TaskResult

__all__ = ["floor_submit", "tracked_per_task"]


class _Here:
    """The handler of one task driven in its submitter's Task, each step in its own context."""

    __slots__ = ("context", "coroutine", "model", "task")

    def __init__(self, task: TaskMessage, model: _agents.Model, base: contextvars.Context) -> None:
        self.task = task
        self.model = model
        self.context = base.copy()
        self.coroutine: Coroutine[Any, Any, Any] | None = None

    def __await__(self) -> Generator[Any, Any, TaskResult]:
        return self  # type: ignore[return-value]  # (an iterator of its own: no frame)

    def __iter__(self) -> _Here:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def _start(self, value: Any) -> Any:
        correlation_id.set(self.task.id)
        self.coroutine = _handler(self.model, self.task)
        return self.coroutine.send(value)

    def send(self, value: Any) -> Any:
        try:
            if self.coroutine is None:
                return self.context.run(self._start, value)
            return self.context.run(self.coroutine.send, value)
        except StopIteration as ended:
            task = self.task
            result = TaskResult(task_id=task.id, result=ended.value, processed_by="floor", duration_ms=0.0)
            raise StopIteration(result) from None


async def _handler(model: _agents.Model, task: TaskMessage) -> Any:
    return await model.call(task.data)


def _submitter(model: _agents.Model) -> Callable[..., Coroutine[Any, Any, TaskResult]]:
    base = contextvars.copy_context()

    async def submit(
        task_type: str,
        data: Any = None,
        *,
        priority: batches.Priority = "medium",
        task_id: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> TaskResult:
        task = batches.new_task(
            "floor", task_type, data, priority=priority, task_id=task_id, timeout=timeout, metadata=metadata
        )
        result: TaskResult = await _Here(task, model, base)
        return result

    return submit


async def floor_submit(n: int, trace: bool) -> dict[str, Any]:
    """``benchmarks._agents.local_submit`` with :class:`_Here` in place of the flock."""
    model = _agents.Model(trace)
    submit = _submitter(model)
    return await _agents.measure(
        n, model, lambda: asyncio.gather(*(submit(_agents.TASK_TYPE, i, wait=True) for i in range(n)))
    )


class _Counting(_agents.Model):
    """A model that notes how many objects the collector tracks when all ``n`` calls wait."""

    __slots__ = ("n", "tracked")

    def __init__(self, n: int) -> None:
        super().__init__(False)
        self.n = n
        self.tracked = 0

    async def call(self, prompt: Any) -> dict[str, Any]:
        if self.in_flight + 1 == self.n:
            self.tracked = len(gc.get_objects())
        return await super().call(prompt)


async def tracked_per_task(n: int, implementation: str) -> float:
    """Objects the collector tracks per task in flight, ``n`` at once: ``bare`` (asyncio.gather
    of the model's calls), ``floor`` or ``flockrt`` (``LocalFlock.submit(..., wait=True)``).
    A first run warms up; the second is counted."""
    model = _Counting(n)
    async with ActorSystem() as system:
        flock = LocalFlock(system)
        slots = -(-n // _agents.AGENTS)
        await flock.spawn_pool(_agents.Caller, _agents.AGENTS, model=model, max_concurrent_tasks=slots)
        submit = _submitter(model)

        def calls() -> Any:
            if implementation == "bare":
                return asyncio.gather(*(model.call(i) for i in range(n)))
            if implementation == "floor":
                return asyncio.gather(*(submit(_agents.TASK_TYPE, i, wait=True) for i in range(n)))
            return asyncio.gather(*(flock.submit(_agents.TASK_TYPE, i, wait=True) for i in range(n)))

        await calls()
        gc.collect()
        before = len(gc.get_objects())
        await calls()
    return (model.tracked - before) / n
