"""Requests of one connection, answered on one subscription: ``<inbox>.*``.

A request is a publish whose reply subject is ``<inbox>.<token>``, one token per request (what
nats-py's own requests do), and a future in a map. No Task, no ``asyncio.wait_for`` and no
timer per request: the deadlines are the kernel's ask deadlines
(:class:`~flockrt.actors.deadlines.AskDeadlines`: slots of a millisecond, one loop timer for
the earliest), so a request fails with :class:`~flockrt.errors.BusTimeout` up to a millisecond
after its timeout, never before. A reply nobody waits for any more (its request gave up,
or was answered another way) is dropped unread.

:meth:`Replies.send` lets a caller wait for a reply *or* something else on the same future (a
task's result on ``task.result``: :mod:`flockrt.bus.results`); :meth:`Replies.request` is the
plain request/reply of :meth:`NatsConnection.request <flockrt.bus.connection.NatsConnection.request>`.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any, Final

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from flockrt.actors.deadlines import AskDeadlines
from flockrt.errors import BusTimeout, BusUnavailable, NoResponders

if TYPE_CHECKING:
    from flockrt.bus.connection import Message, NatsConnection

__all__ = ["Replies", "no_responders", "publish_checked"]

_STATUS_PINGS: Final = 3
"""Round trips :func:`publish_checked` waits for a no-responders status."""


def _bus_timeout(subject: str, timeout: float) -> BaseException:
    return BusTimeout(subject, timeout)


def no_responders(reply: Message) -> bool:
    """Whether ``reply`` is the server's status saying nobody subscribes to the request's subject."""
    headers = reply.headers
    return bool(headers) and not reply.data and headers.get("Status") == "503"


class Replies:
    """The requests of one :class:`~flockrt.bus.connection.NatsConnection` waiting for replies."""

    def __init__(self, bus: NatsConnection) -> None:
        self._bus = bus
        self._asked: dict[str, tuple[asyncio.Future[Any], int]] = {}  # token -> future, deadline key
        self._tokens = itertools.count()
        self._inbox = ""  # "<inbox>." once subscribed
        self._subscribed: asyncio.Event | None = None  # set once the first subscribe is over
        self._deadlines: AskDeadlines | None = None

    @property
    def waiting(self) -> int:
        """Requests waiting for their reply."""
        return len(self._asked)

    async def _subscribe(self) -> None:
        """Take ``<inbox>.*``, once; concurrent first requests wait for the one subscribe."""
        if self._subscribed is not None:
            await self._subscribed.wait()
            if not self._inbox:
                raise BusUnavailable("cannot request: the reply subscription could not be made")
            return
        self._subscribed = asyncio.Event()
        try:
            inbox = self._bus.new_inbox()
            await self._bus.subscribe(f"{inbox}.*", self._on_reply)
            self._deadlines = AskDeadlines(asyncio.get_running_loop(), _bus_timeout)
            self._inbox = f"{inbox}."
        finally:
            subscribed = self._subscribed
            if not self._inbox:
                self._subscribed = None  # the next request tries again
            subscribed.set()

    async def send(
        self,
        subject: str,
        data: bytes,
        future: asyncio.Future[Any],
        *,
        timeout: float,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Publish a request; its reply (a :class:`~flockrt.bus.connection.Message`) is set on
        ``future`` unless that is done by then, and :class:`BusTimeout` after ``timeout``
        seconds. Returns the request's token: :meth:`end` it once done with the future.

        Raises:
            BusUnavailable: NATS is unreachable (degraded) or the connection is closed.
        """
        bus = self._bus
        if not bus.connected:
            raise BusUnavailable(f"cannot request {subject!r}: NATS at {bus.url} is unreachable")
        if not self._inbox:
            await self._subscribe()
        token = self._ask(subject, future, timeout)
        try:
            await bus.publish(subject, data, headers=headers, reply=self._inbox + token)
        except BaseException:
            self.end(token)
            raise
        return token

    def send_nowait(
        self,
        subject: str,
        data: bytes,
        future: asyncio.Future[Any],
        *,
        timeout: float,
        headers: dict[str, str] | None = None,
    ) -> str:
        """:meth:`send` without a coroutine, once the reply subscription is made (:attr:`ready`:
        a request went out before). The request is published as
        :meth:`NatsConnection.publish_nowait <flockrt.bus.connection.NatsConnection.publish_nowait>`
        does it: into nats-py's pending buffer. Its caller, which waits for the reply, waits
        for nothing else: when that buffer is over its limit, the wait for nats-py's flusher is
        the connection's (:meth:`send` waits for it itself).

        Raises:
            BusUnavailable: NATS is unreachable (degraded) or the connection is closed.
        """
        bus = self._bus
        if not bus.connected:
            raise BusUnavailable(f"cannot request {subject!r}: NATS at {bus.url} is unreachable")
        assert self._inbox, "send() the first request: it makes the reply subscription"
        token = self._ask(subject, future, timeout)
        try:
            bus.publish_nowait(subject, data, headers=headers, reply=self._inbox + token)
        except BaseException:
            self.end(token)
            raise
        return token

    @property
    def ready(self) -> bool:
        """Whether the reply subscription is made (:meth:`send_nowait` may be called)."""
        return bool(self._inbox)

    def _ask(self, subject: str, future: asyncio.Future[Any], timeout: float) -> str:
        """A new request's token, its future and deadline noted."""
        deadlines = self._deadlines
        assert deadlines is not None
        token = str(next(self._tokens))
        self._asked[token] = (future, deadlines.add(future, subject, timeout))
        return token

    def end(self, token: str) -> None:
        """The request of ``token`` is over: a reply that still comes is dropped."""
        entry = self._asked.pop(token, None)
        if entry is not None and self._deadlines is not None:
            self._deadlines.discard(entry[1], entry[0])

    async def request(
        self, subject: str, data: bytes, *, timeout: float, headers: dict[str, str] | None = None
    ) -> Message:
        """Send a request and wait for the first reply (see ``NatsConnection.request``)."""
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        token = await self.send(subject, data, future, timeout=timeout, headers=headers)
        try:
            reply = await future
        finally:
            self.end(token)
        if no_responders(reply):
            raise NoResponders(subject)
        return reply

    def _on_reply(self, message: Message) -> None:
        entry = self._asked.get(message.subject[len(self._inbox) :])
        if entry is not None and not entry[0].done():
            entry[0].set_result(message)


async def publish_checked(
    nc: Client, subject: str, data: bytes, headers: dict[str, str] | None, timeout: float
) -> None:
    """Publish ``data`` and make sure somebody subscribes to ``subject``, without waiting
    for an answer: it goes out as a request whose reply nobody waits for, and the server's
    no-responders status, if any, is looked for after each of up to three pings (the
    status usually comes before the first ping's answer; on a fresh connection it
    sometimes comes a round trip later).

    Raises:
        BusUnavailable: the connection closed.
        NoResponders: nobody subscribes to ``subject`` (the message went nowhere).
        BusTimeout: the server did not answer the ping within ``timeout`` seconds.
    """
    status: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
    inbox = nc.new_inbox()
    try:
        # A subscription with a future (nats-py's old-style requests): the reply is set on
        # it as it is read, so it is there once the ping's answer, read after it, is.
        subscription = await nc.subscribe(inbox, future=status, max_msgs=1)
        try:
            await nc.publish(subject, data, inbox, headers)
            for _ in range(_STATUS_PINGS):
                await nc.flush(timeout)  # type: ignore[arg-type]  # nats-py says int, means seconds
                if status.done():
                    break
        finally:
            await subscription.unsubscribe()
    except nats.errors.FlushTimeoutError:
        raise BusTimeout(subject, timeout) from None
    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
        raise BusUnavailable(f"cannot publish to {subject!r}: the connection closed") from None
    if status.done() and not status.cancelled():
        reply = status.result()
        if reply.headers and reply.headers.get("Status") == "503":
            raise NoResponders(subject)
