"""Outlet: how a NATS flock talks on the bus.

Decoding what arrives (a rejected message is counted by subject and logged, never raised),
publishing from async and from synchronous code, the ordered outbox for NATS work queued from
synchronous code (an agent that starts, a heartbeat), requests that turn NATS errors into flock
errors, the one sink of finished tasks' results, and the background Tasks of the flock, owned
by one :class:`~flockrt.actors.tasks.TaskOwner`. The other parts of the NATS flock (intake,
presence, the flock itself) all publish through one of these.

Answers (task results, capability answers, query answers) are encoded by
:meth:`Outlet.encode_answer`: one that cannot be sent (it does not encode, or it is over the
server's ``max_payload``) is replaced by an error answer that says so, counted in
:attr:`Outlet.unsendable` and logged, so the requester hears of it at once instead of waiting
out its timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

import msgspec

from flockrt.actors.tasks import TaskOwner
from flockrt.bus.connection import Message, NatsConnection
from flockrt.bus.pending import append_pub
from flockrt.bus.remote import CORRELATION_HEADER
from flockrt.errors import BusTimeout, BusUnavailable, NoCapableAgent, NoResponders, WorkTimeout
from flockrt.wire import subjects
from flockrt.wire.schema import MSGPACK, Codec, InvalidMessage, TaskResult

__all__ = ["Outlet", "outgoing_headers", "unsendable_result"]

log = logging.getLogger("flockrt.flock")

T = TypeVar("T")
A = TypeVar("A")

_UNENCODABLE = (msgspec.EncodeError, TypeError, ValueError, OverflowError, RecursionError)
"""What msgspec raises for a value it cannot encode (a type it does not know, a cycle, nesting
past the recursion limit, an integer out of range)."""

_TASK_RESULT = subjects.TASK_RESULT  # (a global: one lookup less per result)


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
        self.unsendable = 0
        """Answers replaced by an error answer because they could not be sent."""
        self._json_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}  # (the codec's, by type)
        self._encode_json = msgspec.json.Encoder().encode  # (as the codec's: one call less)
        self._last_result: TaskResult | None = None  # what publish_result sent last, and its bytes
        self._last_data = b""
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

    def decode(self, message: Message, type: type[T], counted_as: str | None = None) -> T | None:
        """``message`` as ``type``, or None if it is invalid: counted in :attr:`invalid` under
        its subject (or ``counted_as``: the subscription's wildcard, so made-up subjects cannot
        grow the counter) and logged at warning."""
        headers = message.headers
        if not headers:  # the usual message, JSON: straight to its decoder
            data = message.data
            decoder = self._json_decoders.get(type)
            if decoder is None:
                decoder = self._json_decoders[type] = self.codec.json_decoder(type)
            if len(data) <= self.codec.max_bytes:
                try:
                    result: T = decoder.decode(data)
                    return result
                except Exception:  # (whatever it was, codec.decode below says why)
                    pass
        try:
            content_type = headers.get("Content-Type") if headers else None
            return self.codec.decode(message.subject, message.data, type, content_type)
        except InvalidMessage as exc:
            self.reject(counted_as or message.subject, str(exc))
            return None

    def reject(self, subject: str, reason: str) -> None:
        """Count and log a message rejected on ``subject`` (a subject or a wildcard)."""
        self.invalid[subject] += 1
        log.warning("%s (rejected %d on %s so far)", reason, self.invalid[subject], subject)

    def encode_answer(
        self, answer: A, failed: Callable[[A, str], A], *, msgpack: bool = False
    ) -> tuple[bytes, A]:
        """``answer`` encoded, and the answer actually encoded: ``answer`` itself, or, if it
        cannot be sent (it does not encode, or is over the server's ``max_payload``),
        ``failed(answer, problem)``, an error answer saying so (counted and logged).

        Checked where it is cheap: an exception msgspec raises anyway, and one comparison."""
        try:
            data = self.codec.encode(answer, msgpack=msgpack)
        except _UNENCODABLE as exc:
            problem = f"it cannot be encoded ({exc})"
        else:
            if len(data) <= self.bus.max_payload:
                return data, answer
            problem = f"it is {len(data)} bytes, over the NATS server's max_payload of {self.bus.max_payload}"
        self.unsendable += 1
        log.warning(
            "the answer of %s could not be sent (%s); an error answer goes instead", _author(answer), problem
        )
        replacement = failed(answer, f"the answer could not be sent: {problem}")
        return self.codec.encode(replacement, msgpack=msgpack), replacement

    def why_invalid(self, message: Message, type: type[Any]) -> str:
        """Why :meth:`decode` rejected ``message``, for an error answer (decoded again: this
        is the rare path, and the common one stays as it is)."""
        try:
            self.codec.decode(message.subject, message.data, type, message.headers.get("Content-Type"))
        except InvalidMessage as exc:
            return str(exc)
        return f"invalid {type.__name__}"

    def publish_result(self, result: TaskResult, correlation: str | None) -> None:
        """The dispatcher's sink: a finished task's result on ``task.result`` (or, if it cannot
        be sent, an error result that says why).

        The correlation id of the task's work travels on, in the header, unless it is the
        task's id, which the result carries as taskId anyway (a header repeating it would cost
        about 7 us a result to build and parse, a fifth of a fan-out task's whole cost)."""
        bus = self.bus
        headers = {CORRELATION_HEADER: correlation} if correlation and correlation != result.task_id else None
        try:  # encode_answer, inlined: this is every task's way out
            data = self._encode_json(result)
        except _UNENCODABLE:
            data = b""
        if not data or len(data) > bus.max_payload:
            data, _ = self.encode_answer(result, unsendable_result)
        self._last_result, self._last_data = result, data
        direct = bus.direct  # NatsConnection.publish_nowait's usual case, without its frame
        if direct is not None and headers is None and append_pub(direct, _TASK_RESULT, "", data):
            bus.stats.published += 1
            return
        try:
            bus.publish_nowait(_TASK_RESULT, data, headers=headers)
        except BusUnavailable as exc:  # closing: nothing more goes out
            log.debug("result of %s not published: %s", result.task_id, exc)

    def answer_task(self, reply: str, result: TaskResult, headers: Mapping[str, str] | None) -> None:
        """A task's result to the reply subject of its request (``headers``: the request's),
        in the bytes :meth:`publish_result` just sent to ``task.result`` when it is the same
        result in the same encoding (the usual case: encoded once, sent twice)."""
        msgpack = headers.get("Content-Type") == MSGPACK if headers else False
        if result is self._last_result and not msgpack:
            data = self._last_data
        else:
            data, _ = self.encode_answer(result, unsendable_result, msgpack=msgpack)
        self.send(reply, data, outgoing_headers(headers))

    def publish_nowait(
        self,
        subject: str,
        payload: A,
        headers: Mapping[str, str] | None = None,
        failed: Callable[[A, str], A] | None = None,
    ) -> A:
        """Publish from synchronous code (a finished task's result), without an outbox turn.

        Args:
            subject: Where to.
            payload: What (a wire struct).
            headers: The headers of the message this answers (see :func:`outgoing_headers`).
            failed: For an answer: builds the error answer that goes instead of one that
                cannot be sent (see :meth:`encode_answer`).

        Returns:
            What was published: ``payload``, or the error answer that replaced it.
        """
        msgpack = headers is not None and headers.get("Content-Type") == MSGPACK
        if failed is None:
            data = self.codec.encode(payload, msgpack=msgpack)
        else:
            data, payload = self.encode_answer(payload, failed, msgpack=msgpack)
        try:
            self.bus.publish_nowait(subject, data, headers=outgoing_headers(headers))
        except BusUnavailable as exc:  # closing: nothing more goes out
            log.debug("not published to %s: %s", subject, exc)
        return payload

    def send(self, subject: str, data: bytes, headers: dict[str, str] | None) -> None:
        """Publish encoded ``data`` (see :meth:`encode_answer`) from synchronous code."""
        try:
            self.bus.publish_nowait(subject, data, headers=headers)
        except BusUnavailable as exc:  # closing: nothing more goes out
            log.debug("not published to %s: %s", subject, exc)

    async def publish(
        self,
        subject: str,
        payload: A,
        headers: Mapping[str, str] | None = None,
        failed: Callable[[A, str], A] | None = None,
    ) -> None:
        """Publish (see :meth:`publish_nowait` for the arguments)."""
        msgpack = headers is not None and headers.get("Content-Type") == MSGPACK
        if failed is None:
            data = self.codec.encode(payload, msgpack=msgpack)
        else:
            data, _ = self.encode_answer(payload, failed, msgpack=msgpack)
        try:
            await self.bus.publish(subject, data, headers=outgoing_headers(headers))
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


def _author(answer: Any) -> str:
    """Who gave ``answer`` (a TaskResult, CapabilityResponse or DirectMessage), for a log line."""
    for field in ("processed_by", "agent_id", "sender"):
        name = getattr(answer, field, None)
        if name:
            return str(name)
    return "an agent"


def unsendable_result(result: TaskResult, problem: str) -> TaskResult:
    """The error result that goes instead of a task result that cannot be sent."""
    return TaskResult(
        task_id=result.task_id,
        processed_by=result.processed_by,
        status="error",
        error=problem,
        duration_ms=result.duration_ms,
    )


def outgoing_headers(headers: Mapping[str, str] | None) -> dict[str, str] | None:
    """Of an incoming message's headers, those an answer carries on (or None)."""
    if not headers:
        return None
    kept = {k: v for k, v in headers.items() if k in (CORRELATION_HEADER, "Content-Type")}
    return kept or None
