"""The process's one NATS connection: the only module that imports ``nats``.

Everything above the bus sees :class:`NatsConnection` and :class:`Message`, never a nats-py
object, so the client's quirks (state in ints, options in dicts, its own error classes) stay here.

Degraded mode. When NATS cannot be reached, at start or later, the process keeps running: local
agents keep serving in-process, outgoing publishes are buffered up to ``buffer_limit`` (beyond
it they are dropped, counted and logged, never silently), subscriptions are remembered, and a
background task keeps reconnecting with exponential backoff. Once connected again the buffer is
flushed in order and the subscriptions are live. Requests fail fast with BusUnavailable while
degraded: a caller waiting for an answer should know at once that none can come.

Short outages are first handled by nats-py's own reconnection (``max_retries`` attempts,
``reconnect_wait`` apart), which keeps subscriptions; when it gives up, this module's loop takes
over and never gives up, backing off up to ``max_backoff`` seconds between attempts.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from flockrt.errors import BusTimeout, BusUnavailable, NoResponders

__all__ = ["BusState", "BusStats", "Handler", "Message", "NatsConnection", "Subscription"]

log = logging.getLogger("flockrt.bus")


class BusState(enum.StrEnum):
    """Where the connection stands."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DEGRADED = "degraded"
    """NATS unreachable: publishes are buffered, requests fail fast, reconnection goes on."""
    CLOSED = "closed"


@dataclass(slots=True)
class BusStats:
    """Counters since start (the metrics layer reads them)."""

    published: int = 0
    received: int = 0
    buffered: int = 0
    """Publishes waiting in the degraded-mode buffer right now."""
    flushed: int = 0
    """Buffered publishes sent after a reconnect."""
    dropped: int = 0
    """Publishes lost because the buffer was full (or still buffered at close)."""
    reconnects: int = 0
    handler_errors: int = 0


@dataclass(frozen=True, slots=True)
class Message:
    """A message received from NATS.

    Attributes:
        subject: Where it arrived.
        data: The raw payload.
        headers: NATS headers (empty when none).
        reply: The reply subject of a request, or "".
    """

    subject: str
    data: bytes
    headers: Mapping[str, str]
    reply: str


Handler = Callable[[Message], Awaitable[None]]


class Subscription:
    """A subscription that survives reconnects; :meth:`unsubscribe` ends it."""

    __slots__ = ("_bus", "_sub", "handler", "queue", "subject")

    def __init__(self, bus: NatsConnection, subject: str, queue: str, handler: Handler) -> None:
        self._bus = bus
        self.subject = subject
        self.queue = queue
        self.handler = handler
        self._sub: NatsSubscription | None = None

    async def unsubscribe(self) -> None:
        """Stop receiving; idempotent."""
        self._bus._subscriptions.discard(self)
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:  # already gone with its connection
                log.debug("unsubscribe %s: %r", self.subject, exc)


@dataclass(frozen=True, slots=True)
class _Outgoing:
    subject: str
    data: bytes
    headers: dict[str, str] | None
    reply: str


class NatsConnection:
    """One shared NATS connection with degraded mode.

    Args:
        url: NATS server URL(s), comma separated.
        name: Client name shown by the server.
        max_retries: Reconnect attempts nats-py makes after a disconnect before this module's
            own loop takes over (MAX_RETRIES).
        reconnect_wait: Seconds between nats-py's reconnect attempts.
        max_backoff: Upper bound of the background loop's backoff, in seconds.
        buffer_limit: Publishes kept while degraded; more are dropped and counted.
        connect_timeout: Seconds one connection attempt may take.
        options: Further nats-py connect options (credentials, TLS), passed through.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "flockrt",
        max_retries: int = 60,
        reconnect_wait: float = 2.0,
        max_backoff: float = 5.0,
        buffer_limit: int = 10_000,
        connect_timeout: float = 2.0,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if buffer_limit < 0:
            raise ValueError(f"buffer_limit must be >= 0, got {buffer_limit!r}")
        if max_retries < 1:  # nats-py reads 0 as "retry forever"
            raise ValueError(f"max_retries must be >= 1, got {max_retries!r}")
        self.url = url
        self.name = name
        self._max_retries = max_retries
        self._reconnect_wait = reconnect_wait
        self._max_backoff = max_backoff
        self._buffer_limit = buffer_limit
        self._connect_timeout = connect_timeout
        self._options = dict(options or {})
        self._nc: Client | None = None
        self._state = BusState.CONNECTING
        self._buffer: deque[_Outgoing] = deque()
        self._subscriptions: set[Subscription] = set()
        self._reconnector: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._state_changed = asyncio.Event()
        self.stats = BusStats()

    # ------------------------------------------------------------------ lifecycle

    @property
    def state(self) -> BusState:
        """connecting, connected, degraded or closed."""
        return self._state

    @property
    def connected(self) -> bool:
        return self._state is BusState.CONNECTED

    async def start(self) -> None:
        """Connect once; if NATS is unreachable, go degraded and keep trying in the background."""
        if await self._try_connect():
            return
        log.warning(
            "NATS at %s is unreachable; running degraded (local agents keep working, up to %d "
            "publishes are buffered) and retrying in the background",
            self.url,
            self._buffer_limit,
        )
        self._set_state(BusState.DEGRADED)
        self._start_reconnector()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the connection is up (raises TimeoutError after ``timeout`` s)."""
        async with asyncio.timeout(timeout):
            while self._state is not BusState.CONNECTED:
                if self._state is BusState.CLOSED:
                    raise BusUnavailable(f"connection to {self.url} is closed")
                self._state_changed.clear()
                await self._state_changed.wait()

    async def close(self) -> None:
        """Flush what can be flushed, close, and stop reconnecting. Idempotent."""
        if self._state is BusState.CLOSED:
            return
        self._set_state(BusState.CLOSED)
        for task in (self._reconnector, self._flusher):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.drain() if nc.is_connected else await nc.close()
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("closing the NATS connection: %r", exc)
        if self._buffer:
            self.stats.dropped += len(self._buffer)
            log.warning("closed with %d publishes still buffered; they are dropped", len(self._buffer))
            self._buffer.clear()
            self.stats.buffered = 0

    # ------------------------------------------------------------------ messaging

    async def publish(
        self, subject: str, data: bytes, *, headers: dict[str, str] | None = None, reply: str = ""
    ) -> None:
        """Publish ``data``; while degraded it is buffered (or dropped and counted when full)."""
        if self._state is BusState.CLOSED:
            raise BusUnavailable(f"cannot publish to {subject!r}: the NATS connection is closed")
        nc = self._nc
        if self._state is BusState.CONNECTED and nc is not None and not self._buffer:
            try:
                await nc.publish(subject, data, reply=reply, headers=headers)
                self.stats.published += 1
                return
            except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as exc:
                log.debug("publish to %s while the connection is going down: %r", subject, exc)
        self._buffer_publish(_Outgoing(subject, data, headers, reply))

    async def subscribe(self, subject: str, handler: Handler, *, queue: str = "") -> Subscription:
        """Call ``handler`` for every message on ``subject`` (in a queue group if ``queue``).

        The subscription is remembered and re-established after a reconnect. A handler that
        raises is logged and counted; the subscription lives on.
        """
        subscription = Subscription(self, subject, queue, handler)
        self._subscriptions.add(subscription)
        if self._nc is not None and self._state is BusState.CONNECTED:
            await self._attach(self._nc, subscription)
            # Once subscribe() returns, the server knows: what others publish next arrives.
            try:
                await self._nc.flush()
            except (nats.errors.Error, TimeoutError) as exc:  # still subscribed; just not confirmed
                log.warning("subscribe %s: the server did not confirm in time: %r", subject, exc)
        return subscription

    async def request(
        self, subject: str, data: bytes, *, timeout: float, headers: dict[str, str] | None = None
    ) -> Message:
        """Send a request and wait for the first reply.

        Raises:
            BusUnavailable: NATS is unreachable (degraded) or the connection is closed.
            NoResponders: nobody subscribes to ``subject``.
            BusTimeout: no reply within ``timeout`` seconds.
        """
        nc = self._nc
        if self._state is not BusState.CONNECTED or nc is None:
            raise BusUnavailable(f"cannot request {subject!r}: NATS at {self.url} is unreachable")
        try:
            reply = await nc.request(subject, data, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise NoResponders(subject) from None
        except nats.errors.TimeoutError:
            raise BusTimeout(subject, timeout) from None
        except nats.errors.ConnectionClosedError:
            raise BusUnavailable(f"cannot request {subject!r}: the connection closed") from None
        self.stats.published += 1
        return _wrap(reply)

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until the server has seen everything published so far (no-op while degraded)."""
        if self._nc is not None and self._state is BusState.CONNECTED:
            await self._nc.flush(timeout=timeout)  # type: ignore[arg-type]  # nats-py says int, means seconds

    # ------------------------------------------------------------------ internals

    def _set_state(self, state: BusState) -> None:
        if self._state is BusState.CLOSED and state is not BusState.CLOSED:
            return
        self._state = state
        self._state_changed.set()

    def _buffer_publish(self, item: _Outgoing) -> None:
        if len(self._buffer) >= self._buffer_limit:
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 1000 == 0:
                log.warning(
                    "NATS unreachable and the publish buffer is full (%d): dropped %d so far, latest to %s",
                    self._buffer_limit,
                    self.stats.dropped,
                    item.subject,
                )
            return
        self._buffer.append(item)
        self.stats.buffered = len(self._buffer)

    async def _try_connect(self) -> bool:
        try:
            # nats-py applies its reconnect settings to the first connect too (it would retry
            # max_retries times, reconnect_wait apart, before failing): try once, fast, and set
            # the real values once connected.
            nc = await nats.connect(
                self.url,
                name=self.name,
                connect_timeout=self._connect_timeout,
                reconnect_time_wait=0,
                max_reconnect_attempts=1,
                allow_reconnect=True,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                closed_cb=self._on_closed,
                **self._options,
            )
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            log.debug("connecting to %s: %r", self.url, exc)
            return False
        if self._state is BusState.CLOSED:
            await nc.close()
            return False
        nc.options["max_reconnect_attempts"] = self._max_retries
        nc.options["reconnect_time_wait"] = self._reconnect_wait
        self._nc = nc
        for subscription in list(self._subscriptions):
            await self._attach(nc, subscription)
        log.info("connected to NATS at %s", self.url)
        self._resume()
        return True

    async def _attach(self, nc: Client, subscription: Subscription) -> None:
        async def deliver(msg: Msg) -> None:
            self.stats.received += 1
            try:
                await subscription.handler(_wrap(msg))
            except Exception as exc:  # isolation boundary: one bad message must not end the subscription
                self.stats.handler_errors += 1
                log.exception("handler for %s failed: %r", msg.subject, exc)

        subscription._sub = await nc.subscribe(subscription.subject, queue=subscription.queue, cb=deliver)

    def _resume(self) -> None:
        """Connected (again): flush the buffer in order, then accept direct publishes."""
        if self._buffer:
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.get_running_loop().create_task(self._flush_buffer())
        else:
            self._set_state(BusState.CONNECTED)

    async def _flush_buffer(self) -> None:
        nc = self._nc
        assert nc is not None
        sent = 0
        # State stays non-CONNECTED while flushing, so new publishes queue behind the old ones.
        while self._buffer and self._nc is nc and nc.is_connected:
            item = self._buffer.popleft()
            try:
                await nc.publish(item.subject, item.data, reply=item.reply, headers=item.headers)
            except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError):
                self._buffer.appendleft(item)
                break
            sent += 1
        self.stats.flushed += sent
        self.stats.published += sent
        self.stats.buffered = len(self._buffer)
        if sent:
            log.info("flushed %d publishes buffered while NATS was unreachable", sent)
        if not self._buffer and self._nc is nc and nc.is_connected:
            self._set_state(BusState.CONNECTED)

    def _start_reconnector(self) -> None:
        if self._reconnector is None or self._reconnector.done():
            self._reconnector = asyncio.get_running_loop().create_task(self._reconnect_forever())

    async def _reconnect_forever(self) -> None:
        attempt = 0
        while self._state is not BusState.CLOSED:
            delay = min(self._max_backoff, 0.05 * 2**attempt) * random.uniform(0.8, 1.2)
            await asyncio.sleep(delay)
            if await self._try_connect():
                self.stats.reconnects += 1
                return
            attempt += 1
            if attempt in (1, 10) or attempt % 100 == 0:
                log.warning("NATS at %s still unreachable after %d attempts; retrying", self.url, attempt)

    # nats-py callbacks

    async def _on_error(self, exc: Exception) -> None:
        log.debug("NATS client error: %r", exc)

    async def _on_disconnected(self) -> None:
        if self._state is not BusState.CLOSED:
            log.warning("disconnected from NATS at %s; degraded until it is back", self.url)
            self._set_state(BusState.DEGRADED)

    async def _on_reconnected(self) -> None:
        self.stats.reconnects += 1
        log.info("reconnected to NATS at %s", self.url)
        self._resume()

    async def _on_closed(self) -> None:
        if self._state is not BusState.CLOSED:
            log.warning(
                "NATS client gave up after %d reconnect attempts; reconnecting in the background",
                self._max_retries,
            )
            self._nc = None
            for subscription in self._subscriptions:
                subscription._sub = None
            self._set_state(BusState.DEGRADED)
            self._start_reconnector()


def _wrap(msg: Msg) -> Message:
    return Message(subject=msg.subject, data=msg.data, headers=msg.headers or {}, reply=msg.reply)
