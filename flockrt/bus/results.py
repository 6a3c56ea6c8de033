"""Waiting for a submitted task's TaskResult: on the reply subject, or on ``task.result``.

``submit(..., wait=True)`` publishes its task on ``tasks.<type>`` as a request (with a reply
subject) and takes whichever comes first: the answer on its reply subject (what flockrt agents
send, after the same result on ``task.result``) or a TaskResult for its task on
``task.result`` (all the AI Flock seed's agents send). Peers see an ordinary NATS request.

One future per submit takes either: the reply (through the connection's one reply
subscription, :class:`~flockrt.bus.replies.Replies`) or the result on ``task.result``; no Task,
no nats-py request machinery and no timer of its own. A reply that comes after its task's
result came on ``task.result`` (a flockrt agent's usual order) is dropped unread; the server's
no-responders status on the reply subject says nobody takes the type.

In durable mode the task is stored, not asked for, and only ``task.result`` can answer; there
a failed attempt is retried, so only an ``ok`` result ends the wait. ``task.result`` is taken
from the first wait on, and read only while someone waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from flockrt.bus.connection import Message, Subscription
from flockrt.bus.outlet import Outlet
from flockrt.bus.replies import no_responders
from flockrt.errors import BusTimeout, NoCapableAgent, WorkTimeout
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
        self.waiters: dict[str, asyncio.Future[Any]] = {}
        """Task id -> the future its submit awaits (a TaskResult, or a reply Message for ask)."""
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

    async def ask(
        self,
        subject: str,
        task: TaskMessage,
        data: bytes,
        headers: dict[str, str] | None,
        timeout: float,
    ) -> TaskResult:
        """Publish ``task`` (encoded: ``data``) on ``subject`` as a request and return its first
        result: the reply, or one on ``task.result``.

        Raises:
            BusUnavailable: NATS is unreachable (degraded) or the connection is closed.
            NoCapableAgent: nobody takes ``subject`` (the server's no-responders status).
            WorkTimeout: no result within ``timeout`` seconds.
            InvalidMessage: the reply is not a TaskResult.
        """
        await self.watch()
        replies = self.outlet.bus.replies
        # One future for both ways: the reply (a Message) or the result on task.result.
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        task_id = task.id
        self.waiters[task_id] = waiter
        token = ""
        try:
            token = await replies.send(subject, data, waiter, timeout=timeout, headers=headers)
            outcome = await waiter
        except BusTimeout:
            raise WorkTimeout("task", task.type, timeout) from None
        finally:
            if self.waiters.get(task_id) is waiter:
                del self.waiters[task_id]
            if token:
                replies.end(token)
        if isinstance(outcome, TaskResult):
            return outcome
        if no_responders(outcome):
            raise NoCapableAgent("task", task.type)
        content_type = outcome.headers.get("Content-Type") if outcome.headers else None
        result: TaskResult = self.outlet.codec.decode(outcome.subject, outcome.data, TaskResult, content_type)
        return result

    async def until_result(
        self, task: TaskMessage, send: Callable[[], Awaitable[TaskResult | None]], timeout: float
    ) -> TaskResult:
        """Run ``send`` (which publishes the task, and may return its result from a reply) and
        return the task's first result: ``send``'s, or one on ``task.result`` (durable mode).

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
