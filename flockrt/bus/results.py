"""Waiting for a submitted task's TaskResult: on the reply subject, or on ``task.result``.

``submit(..., wait=True)`` publishes its task on ``tasks.<type>`` as a request (with a reply
subject) and takes whichever comes first: the answer on its reply subject (what flockrt agents
send, after the same result on ``task.result``) or a TaskResult for its task on
``task.result`` (all the AI Flock seed's agents send). Peers see an ordinary NATS request.

The replies of every submit of the process come to one subscription, ``<inbox>.*`` (one token
per request, as nats-py's own requests do), so a submit costs no Task, no nats-py request
machinery and no timer of its own: its future waits in two maps, and its deadline shares a
millisecond slot (:class:`~flockrt.actors.deadlines.AskDeadlines`). A reply that comes after its
task's result came on ``task.result`` (a flockrt agent's usual order) is dropped unread, by its
token; the server's no-responders status on the reply subject says nobody takes the type.

In durable mode the task is stored, not asked for, and only ``task.result`` can answer; there
a failed attempt is retried, so only an ``ok`` result ends the wait. ``task.result`` is taken
from the first wait on, and read only while someone waits.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

from flockrt.actors.deadlines import AskDeadlines
from flockrt.bus.connection import Message, Subscription
from flockrt.bus.outlet import Outlet
from flockrt.errors import BusUnavailable, InvalidMessage, NoCapableAgent, WorkTimeout
from flockrt.wire import subjects
from flockrt.wire.schema import TaskMessage, TaskResult

__all__ = ["ResultWaiters"]

Wait = Callable[[asyncio.Future[TaskResult], str, str, float | None], Awaitable[TaskResult]]
"""How a future is awaited within a timeout (the dispatcher's ``wait``: WorkTimeout if late)."""


def _late(task_type: str, timeout: float) -> BaseException:
    return WorkTimeout("task", task_type, timeout)


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
        self._asked: dict[str, tuple[asyncio.Future[TaskResult], str]] = {}
        """Reply token -> the future of the submit that asked, and its task type."""
        self._tokens = itertools.count()
        self._inbox = ""  # "<inbox>." once the reply subscription is up
        self._deadlines: AskDeadlines | None = None
        self._subscription: Subscription | None = None
        self._replies: Subscription | None = None

    async def watch(self) -> None:
        """Take ``task.result`` (once)."""
        if self._subscription is None:
            self._subscription = await self.outlet.bus.subscribe(subjects.TASK_RESULT, self._on_result)

    async def close(self) -> None:
        subscription, self._subscription = self._subscription, None
        replies, self._replies = self._replies, None
        for sub in (subscription, replies):
            if sub is not None:
                await sub.unsubscribe()

    def _on_result(self, message: Message) -> None:
        if not self.waiters:
            return
        result = self.outlet.decode(message, TaskResult)
        if result is not None and (result.status == "ok" or not self.ok_only):
            waiter = self.waiters.get(result.task_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(result)

    def _on_reply(self, message: Message) -> None:
        """The answer to a submit's request (or the server's no-responders status)."""
        asked = self._asked.get(message.subject[len(self._inbox) :])
        if asked is None:  # its result came on task.result first, or its submit gave up
            return
        waiter, task_type = asked
        if waiter.done():
            return
        headers = message.headers
        if headers and not message.data and headers.get("Status") == "503":
            waiter.set_exception(NoCapableAgent("task", task_type))
            return
        try:
            content_type = headers.get("Content-Type") if headers else None
            result = self.outlet.codec.decode(message.subject, message.data, TaskResult, content_type)
        except InvalidMessage as exc:  # the asker hears why, as from any bad reply
            waiter.set_exception(exc)
            return
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
        bus = self.outlet.bus
        if self._replies is None:
            await self.watch()
            inbox = bus.new_inbox()
            self._replies = await bus.subscribe(f"{inbox}.*", self._on_reply)
            self._inbox = f"{inbox}."
            self._deadlines = AskDeadlines(asyncio.get_running_loop(), _late)
        if not bus.connected:
            raise BusUnavailable(f"cannot request {subject!r}: NATS at {bus.url} is unreachable")
        deadlines = self._deadlines
        assert deadlines is not None
        waiter: asyncio.Future[TaskResult] = asyncio.get_running_loop().create_future()
        token = str(next(self._tokens))
        task_id = task.id
        self.waiters[task_id] = waiter
        self._asked[token] = (waiter, task.type)
        key = deadlines.add(waiter, task.type, timeout)
        try:
            bus.publish_nowait(subject, data, headers=headers, reply=self._inbox + token)
            return await waiter
        finally:
            if self.waiters.get(task_id) is waiter:
                del self.waiters[task_id]
            del self._asked[token]
            deadlines.discard(key, waiter)

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
