"""Waiting for a submitted task's TaskResult: on the reply subject, or on ``task.result``.

``submit(..., wait=True)`` asks on ``tasks.<type>`` and takes whichever comes first: the
answer to its request (what flockrt agents send) or a TaskResult for its task on
``task.result`` (all the AI Flock seed's agents send). In durable mode the task is stored, not
asked for, and only ``task.result`` can answer; there a failed attempt is retried, so only an
``ok`` result ends the wait. ``task.result`` is taken from the first wait on, and read only
while someone waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from flockrt.bus.connection import Message, Subscription
from flockrt.bus.outlet import Outlet
from flockrt.errors import WorkTimeout
from flockrt.wire import subjects
from flockrt.wire.schema import TaskMessage, TaskResult

__all__ = ["ResultWaiters"]

Wait = Callable[[asyncio.Future[TaskResult], str, str, float | None], Awaitable[TaskResult]]
"""How a future is awaited within a timeout (the dispatcher's ``wait``: WorkTimeout if late)."""


class ResultWaiters:
    """The submits of one process that wait for their task's result.

    Args:
        outlet: How the flock talks on the bus.
        wait: Awaits a future within a timeout (counting it as the flock counts work).
        ok_only: Only an ``ok`` result ends a wait (durable mode: a failed attempt is retried).
    """

    def __init__(self, outlet: Outlet, wait: Wait, *, ok_only: bool) -> None:
        self.outlet = outlet
        self._wait = wait
        self.ok_only = ok_only
        self.waiters: dict[str, asyncio.Future[TaskResult]] = {}
        """Task id -> the future its submit awaits."""
        self._subscription: Subscription | None = None

    async def watch(self) -> None:
        """Take ``task.result`` (once)."""
        if self._subscription is None:
            self._subscription = await self.outlet.bus.subscribe(subjects.TASK_RESULT, self._on_result)

    async def close(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.unsubscribe()

    def _on_result(self, message: Message) -> None:
        if not self.waiters:
            return
        result = self.outlet.decode(message, TaskResult)
        if result is not None and (result.status == "ok" or not self.ok_only):
            waiter = self.waiters.get(result.task_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(result)

    async def until_result(
        self, task: TaskMessage, send: Callable[[], Awaitable[TaskResult | None]], timeout: float
    ) -> TaskResult:
        """Run ``send`` (which publishes the task, and may return its result from a reply) and
        return the task's first result: ``send``'s, or one on ``task.result``.

        Raises:
            WorkTimeout: no result within ``timeout`` seconds.
            Whatever ``send`` raises but its own timeout (NoCapableAgent: nobody takes the task).
        """
        await self.watch()
        waiter: asyncio.Future[TaskResult] = asyncio.get_running_loop().create_future()
        self.waiters[task.id] = waiter

        def settle(sending: asyncio.Future[TaskResult | None]) -> None:
            if sending.cancelled():
                return
            error = sending.exception()  # retrieved in every case: no "never retrieved" warning
            if waiter.done():
                return
            if error is None:
                result = sending.result()
                if result is not None:
                    waiter.set_result(result)
            elif not isinstance(error, WorkTimeout):  # late: the wait below says so itself
                waiter.set_exception(error)

        sending = asyncio.ensure_future(send())
        sending.add_done_callback(settle)
        try:
            return await self._wait(waiter, "task", task.type, timeout)
        finally:
            self.waiters.pop(task.id, None)
            if not sending.done():
                sending.cancel()
