"""TaskOwner: the one owner of background asyncio Tasks that sees every failure.

A Task nobody awaits loses its exception to asyncio's "Task exception was never retrieved" at
garbage collection, long after the fact and without context. Every Task flockrt starts in the
background (an agent's runners, a query being answered, a publish in flight) belongs to a
TaskOwner instead: it keeps a strong reference while the Task runs, logs a failure the moment
the Task ends with one (naming the owner and the Task), and cancels and awaits what is left
when its owner closes.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["TaskOwner"]

T = TypeVar("T")

_log = logging.getLogger("flockrt.tasks")


class TaskOwner:
    """Background Tasks of one owner (``what`` names it in log lines).

    Args:
        what: Who owns the Tasks ("agent a-1", "NATS flock node-1"): the start of each log line.
        logger: Where failures are logged (default ``flockrt.tasks``).
    """

    __slots__ = ("_log", "_tasks", "what")

    def __init__(self, what: str, logger: logging.Logger | None = None) -> None:
        self.what = what
        self._log = logger or _log
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(
        self,
        coroutine: Coroutine[Any, Any, T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        """Run ``coroutine`` in a Task of this owner's; its failure is logged when it ends."""
        task = asyncio.get_running_loop().create_task(coroutine, name=name, context=context)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def start(
        self, coroutine: Coroutine[Any, Any, None], *, context: contextvars.Context | None = None
    ) -> asyncio.Task[None]:
        """:meth:`spawn` for a coroutine that reports its own end: it must call :meth:`ended`
        when it ends for any reason (in a ``finally``), with the exception that ends it, if
        any, and must not raise anything but a cancellation. No done-callback: one loop turn
        and two objects less per Task, for the Tasks that run each piece of an agent's work.
        (A Task cancelled before it first ran never runs its ``finally``: :meth:`take` and
        :meth:`close` are how such Tasks leave.)"""
        task = asyncio.get_running_loop().create_task(coroutine, context=context)
        self._tasks.add(task)
        return task

    def ended(self, task: asyncio.Task[Any] | None, error: BaseException | None = None) -> None:
        """A Task of :meth:`start` ends (``error``: the exception that ends it, logged here)."""
        self._tasks.discard(task)  # (None: not a Task: nothing)
        if error is not None:
            name = task.get_name() if task is not None else "?"
            self._log.error("%s: background task %s failed", self.what, name, exc_info=error)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()  # retrieved: asyncio will not complain about it again
        if exc is not None:
            self._log.error("%s: background task %s failed", self.what, task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    def take(self) -> set[asyncio.Task[Any]]:
        """Hand over the Tasks running now (the owner keeps none of them): for a stop that
        first waits for them and then cancels the late ones (see :meth:`cancel`)."""
        running, self._tasks = self._tasks, set()
        return running

    async def wait(self, timeout: float | None) -> set[asyncio.Task[Any]]:
        """Wait up to ``timeout`` seconds for the running Tasks to end; returns those still running."""
        if not self._tasks:
            return set()
        _, late = await asyncio.wait(list(self._tasks), timeout=timeout)
        return late

    async def close(self) -> None:
        """Cancel every running Task and wait for all of them to end. Idempotent."""
        await self.cancel(self._tasks)
        # A Task of start() cancelled before it first ran never ran its finally: drop it here.
        self._tasks = {task for task in self._tasks if not task.done()}

    @staticmethod
    async def cancel(tasks: set[asyncio.Task[Any]] | list[asyncio.Task[Any]]) -> None:
        """Cancel ``tasks`` and wait for them to end (their failures are logged as they end)."""
        pending = list(tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
