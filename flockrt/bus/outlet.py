"""Outlet: how a NATS flock talks on the bus.

Decoding what arrives (a rejected message is counted by subject and logged, never raised),
publishing from async and from synchronous code, the ordered outbox for NATS work queued from
synchronous code (an agent that starts, a heartbeat), requests that turn NATS errors into flock
errors, the one sink of finished tasks' results, and the background Tasks of the flock, owned
by one :class:`~flockrt.actors.tasks.TaskOwner`. The other parts of the NATS flock (intake,
presence, the flock itself) all publish through one of these.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from flockrt.actors.tasks import TaskOwner
from flockrt.bus.connection import Message, NatsConnection
from flockrt.bus.remote import CORRELATION_HEADER
from flockrt.errors import BusTimeout, BusUnavailable, NoCapableAgent, NoResponders, WorkTimeout
from flockrt.wire import subjects
from flockrt.wire.schema import MSGPACK, Codec, InvalidMessage, TaskResult

__all__ = ["Outlet", "outgoing_headers"]

log = logging.getLogger("flockrt.flock")

T = TypeVar("T")


class Outlet:
    """The bus as the parts of one NATS flock use it.

    Args:
        bus: The process's NATS connection.
        codec: Shared encoders/decoders (and the payload size limit).
        node: The flock's node, to name its background Tasks in log lines.
    """

    def __init__(self, bus: NatsConnection, codec: Codec, node: str) -> None:
        self.bus = bus
        self.codec = codec
        self.invalid: Counter[str] = Counter()
        """Rejected messages by subject."""
        self._outbox: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._tasks = TaskOwner(f"NATS flock {node}", log)

    def start(self) -> None:
        """Start the outbox worker (see :meth:`later`)."""
        self._worker = asyncio.get_running_loop().create_task(self._work_outbox(), name="flock outbox")

    async def drain(self) -> None:
        """Wait until every job queued with :meth:`later` has run."""
        if self._worker is not None:
            await self._outbox.join()

    async def close(self) -> None:
        """Run what is queued, then stop the worker and cancel the background Tasks."""
        await self.drain()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        await self._tasks.close()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` in a background Task (its failure is logged; cancelled at close)."""
        self._tasks.spawn(coroutine)

    def later(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job`` on the outbox worker: NATS work from sync code, in order."""
        self._outbox.put_nowait(job)

    async def _work_outbox(self) -> None:
        while True:
            job = await self._outbox.get()
            try:
                await job()
            except Exception:  # one failed publish must not stop the ones after it
                log.exception("flock outbox job failed")
            finally:
                self._outbox.task_done()

    def decode(self, message: Message, type: type[T]) -> T | None:
        headers = message.headers
        try:
            content_type = headers.get("Content-Type") if headers else None  # most have no headers
            return self.codec.decode(message.subject, message.data, type, content_type)
        except InvalidMessage as exc:
            self.invalid[message.subject] += 1
            log.warning("%s (rejected %d on this subject so far)", exc, self.invalid[message.subject])
            return None

    def publish_result(self, result: TaskResult, correlation: str | None) -> None:
        """The dispatcher's sink: a finished task's result on ``task.result``.

        The correlation id of the task's work travels on, in the header, unless it is the
        task's id, which the result carries as taskId anyway (a header repeating it would cost
        about 7 us a result to build and parse, a fifth of a fan-out task's whole cost)."""
        headers = {CORRELATION_HEADER: correlation} if correlation and correlation != result.task_id else None
        try:
            self.bus.publish_nowait(subjects.TASK_RESULT, self.codec.encode(result), headers=headers)
        except BusUnavailable as exc:  # closing: nothing more goes out
            log.debug("result of %s not published: %s", result.task_id, exc)

    def publish_nowait(self, subject: str, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        """Publish from synchronous code (a finished task's result), without an outbox turn."""
        msgpack = headers is not None and headers.get("Content-Type") == MSGPACK
        try:
            self.bus.publish_nowait(
                subject, self.codec.encode(payload, msgpack=msgpack), headers=outgoing_headers(headers)
            )
        except BusUnavailable as exc:  # closing: nothing more goes out
            log.debug("not published to %s: %s", subject, exc)

    async def publish(self, subject: str, payload: Any, headers: dict[str, str] | Any = None) -> None:
        msgpack = bool(headers) and headers.get("Content-Type") == MSGPACK
        try:
            await self.bus.publish(
                subject, self.codec.encode(payload, msgpack=msgpack), headers=outgoing_headers(headers)
            )
        except BusUnavailable as exc:  # closing: nothing more goes out
            log.debug("not published to %s: %s", subject, exc)

    async def request(
        self,
        subject: str,
        payload: Any,
        kind: str,
        key: str,
        timeout: float,
        headers: dict[str, str] | None,
    ) -> Message:
        try:
            return await self.bus.request(
                subject, self.codec.encode(payload), timeout=timeout, headers=headers
            )
        except NoResponders:
            raise NoCapableAgent(kind, key) from None
        except BusTimeout:
            raise WorkTimeout(kind, key, timeout) from None


def outgoing_headers(headers: Mapping[str, str] | None) -> dict[str, str] | None:
    """Of an incoming message's headers, those an answer carries on (or None)."""
    if not headers:
        return None
    kept = {k: v for k, v in headers.items() if k in (CORRELATION_HEADER, "Content-Type")}
    return kept or None
