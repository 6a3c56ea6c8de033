"""The process's one NATS connection; with :mod:`flockrt.bus.jetstream`, the only code that imports ``nats``.

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

JetStream (work-queue streams, pull consumers, key-value) lives in :mod:`flockrt.bus.jetstream`:
each connection has one :class:`~flockrt.bus.jetstream.JetStream`, its ``jetstream`` attribute,
whose methods it also offers under their older names (``js_publish``, ``pull``, ``kv_put``, ...).
Its :class:`JsMessage` and :class:`PullConsumer` are importable from here too.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import msgspec
import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from flockrt.actors.tasks import TaskOwner
from flockrt.bus.jetstream import JetStream, JsMessage, PullConsumer
from flockrt.bus.liveness import in_cluster, server_of
from flockrt.bus.pending import append_pub, understands
from flockrt.bus.replies import Replies, publish_checked
from flockrt.bus.stepping import resume
from flockrt.errors import BusUnavailable
from flockrt.supervisor.spec import Backoff

if TYPE_CHECKING:
    from flockrt.bus.service import BusService

__all__ = ["BusState", "BusStats", "Handler", "JsMessage", "Message", "NatsConnection"]
__all__ += ["PullConsumer", "Subscription"]

log = logging.getLogger("flockrt.bus")

DEFAULT_MAX_PAYLOAD: Final = 1024 * 1024
"""nats-server's default max_payload: the limit assumed until a server says its own."""


class BusState(enum.StrEnum):
    """Where the connection stands."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DEGRADED = "degraded"
    """NATS unreachable: publishes are buffered, requests fail fast, reconnection goes on."""
    CLOSED = "closed"


_CONNECTED = BusState.CONNECTED  # a global, for the per-message checks


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


class Message(msgspec.Struct, frozen=True):
    """A message received from NATS (a Struct: one is built per message, in a tenth of the
    time a frozen dataclass takes).

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


Handler = Callable[[Message], Awaitable[None] | None]
"""Called with each message; a coroutine function, or a plain function (cheaper per message)."""


class Subscription:
    """A subscription that survives reconnects; :meth:`unsubscribe` ends it."""

    __slots__ = ("_bus", "_sub", "handler", "max_msgs", "queue", "raw", "subject")

    def __init__(
        self, bus: NatsConnection, subject: str, queue: str, handler: Handler, max_msgs: int = 0
    ) -> None:
        self._bus = bus
        self.subject = subject
        self.queue = queue
        self.handler = handler
        self.max_msgs = max_msgs
        self.raw = False  # whether the handler takes nats-py's Msg (NatsConnection.subscribe)
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

    async def drain(self) -> None:
        """Stop receiving, but first handle what the server sent before it heard (one round
        trip); idempotent."""
        self._bus._subscriptions.discard(self)
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.drain()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped
            except nats.errors.Error as exc:  # already gone with its connection
                log.debug("drain %s: %r", self.subject, exc)


@dataclass(frozen=True, slots=True)
class _Outgoing:
    subject: str
    data: bytes
    headers: dict[str, str] | None
    reply: str


def tls_context(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext:
    """A client TLS context: verifying the server with ``ca`` (default: the system's CAs), and
    presenting ``cert``/``key`` when the server verifies clients (mutual TLS).

    Raises:
        OSError / ssl.SSLError: a file is missing or not a certificate or key.
    """
    context = ssl.create_default_context(cafile=ca or None)
    if cert:
        context.load_cert_chain(cert, key or None)
    return context


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
        credentials: A NATS ``.creds`` file (user JWT and NKey seed).
        user: Username (with ``password``) for servers configured with them.
        password: The user's password.
        token: An authentication token.
        tls: TLS settings (see :func:`tls_context`); a ``tls://`` URL alone uses the system's.
        ping_interval: Seconds between the client's pings to its server. A server that has
            not answered a ping for a whole interval makes :meth:`not_ready_reason` say so.
        max_outstanding_pings: Unanswered pings after which nats-py drops the connection as
            stale and reconnects (to another server of the cluster, if any).
        replicas: Replicas of the JetStream streams and buckets this process creates.
        options: Further nats-py connect options, passed through.

    Attributes:
        jetstream: Its JetStream operations (:class:`~flockrt.bus.jetstream.JetStream`), also
            bound here under their older names: ``ensure_work_queue``, ``js_publish`` (its
            ``publish``), ``pull``, ``kv_put``, ``kv_delete`` and ``kv_items``.
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
        credentials: str | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
        ping_interval: float = 10.0,
        max_outstanding_pings: int = 2,
        replicas: int = 1,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if not ping_interval > 0:
            raise ValueError(f"ping_interval must be > 0 seconds, got {ping_interval!r}")
        if max_outstanding_pings < 1:
            raise ValueError(f"max_outstanding_pings must be >= 1, got {max_outstanding_pings!r}")
        if buffer_limit < 0:
            raise ValueError(f"buffer_limit must be >= 0, got {buffer_limit!r}")
        if max_retries < 1:  # nats-py reads 0 as "retry forever"
            raise ValueError(f"max_retries must be >= 1, got {max_retries!r}")
        if not max_backoff >= 0:
            raise ValueError(f"max_backoff must be >= 0 seconds, got {max_backoff!r}")
        self.url = url
        self.name = name
        self._max_retries = max_retries
        self._reconnect_wait = reconnect_wait
        # 50 ms after the first failed attempt, doubling up to max_backoff, +-20 % jitter.
        self._backoff = Backoff(initial=min(0.05, max_backoff), maximum=max_backoff, jitter=0.2)
        self._buffer_limit = buffer_limit
        self._connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self._options: dict[str, Any] = {
            "ping_interval": ping_interval,
            "max_outstanding_pings": max_outstanding_pings,
            **(options or {}),
        }
        # Authentication and TLS, as nats-py names them.
        if credentials:
            self._options["user_credentials"] = credentials
        if user:
            self._options.update(user=user, password=password)
        if token:
            self._options["token"] = token
        if tls is not None:
            self._options["tls"] = tls
        self._nc: Client | None = None
        self._direct = False  # whether nats-py's pending buffer is as append_pub knows it
        self.direct: Client | None = None
        """The client to append PUBs to (:func:`~flockrt.bus.pending.append_pub`) now: connected,
        nothing buffered, its pending buffer as append_pub knows it; else None."""
        self.server = ""
        """The server this process is (or was last) connected to, as :func:`server_of` names it."""
        self.max_payload = DEFAULT_MAX_PAYLOAD
        """The largest message the server takes (its ``max_payload``; the default until the
        first connect, then the last server's)."""
        self._state = BusState.CONNECTING
        self._buffer: deque[_Outgoing] = deque()
        self._subscriptions: set[Subscription] = set()
        self._services: set[BusService] = set()
        # The reconnect loop and the buffer flusher: cancelled at close, their failures logged.
        self._background = TaskOwner(f"NATS connection {name}", log)
        self._reconnector: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        # publish_nowait calls that nats-py made wait: awaited at close, their failures logged.
        self._publishing = TaskOwner(f"NATS connection {name}", log)
        self._state_changed = asyncio.Event()
        self.stats = BusStats()
        self.replies = Replies(self)
        """Its requests waiting for their replies."""
        self.jetstream = JetStream(self, replicas=replicas)
        # JetStream's operations under the names they had here before it had a module of its own.
        self.ensure_work_queue = self.jetstream.ensure_work_queue
        self.js_publish = self.jetstream.publish
        self.pull = self.jetstream.pull
        self.kv_put = self.jetstream.kv_put
        self.kv_delete = self.jetstream.kv_delete
        self.kv_items = self.jetstream.kv_items

    # ------------------------------------------------------------------ lifecycle

    @property
    def state(self) -> BusState:
        """connecting, connected, degraded or closed."""
        return self._state

    @property
    def connected(self) -> bool:
        return self._state is BusState.CONNECTED

    @property
    def clustered(self) -> bool:
        """Whether the server now in use is one of a cluster (:func:`~flockrt.bus.liveness.in_cluster`)."""
        return self._nc is not None and in_cluster(self._nc)

    @property
    def closed(self) -> bool:
        """Closed for good (:meth:`close`): publishes, requests and JetStream operations raise
        :class:`BusUnavailable`."""
        return self._state is BusState.CLOSED

    def not_ready_reason(self) -> str | None:
        """Why this connection cannot carry work now (what ``/readyz`` says), or None if it can.

        Not ready: closed; degraded or reconnecting; flushing what was buffered meanwhile; or
        stale, its server silent for a whole ping interval (a ping sent an interval ago still
        unanswered when the next goes out). A stale connection is one nats-py has not given up
        on yet: it does after ``max_outstanding_pings`` unanswered pings, and reconnects.
        """
        state, nc = self._state, self._nc
        if state is BusState.CLOSED:
            return "the NATS connection is closed"
        if state is BusState.CONNECTING:
            return f"connecting to NATS at {self.url}"
        connected = nc is not None and nc.is_connected
        if state is BusState.DEGRADED and connected:
            return f"sending {len(self._buffer)} publishes buffered while NATS was unreachable"
        if state is BusState.DEGRADED or not connected:  # nats-py's reconnection, or this module's
            lost = f"lost NATS server {self.server}" if self.server else f"NATS at {self.url} is unreachable"
            return f"{lost}; reconnecting (degraded mode: publishes are buffered)"
        if nc is not None and nc._pings_outstanding >= 2:
            return (
                f"NATS server {self.server} has not answered a ping for over {self.ping_interval:g} s "
                "(stale connection)"
            )
        return None

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
        await self._publishing.wait(None)  # their messages are in nats-py's buffer: the drain sends them
        await self._background.close()
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.drain() if nc.is_connected else await nc.close()
            except (nats.errors.Error, OSError) as exc:  # the server went first: nothing to drain to
                log.warning("closing the NATS connection: %r", exc)
                await nc.close()
        if self._buffer:
            self.stats.dropped += len(self._buffer)
            log.warning("closed with %d publishes still buffered; they are dropped", len(self._buffer))
            self._buffer.clear()
            self.stats.buffered = 0

    # ------------------------------------------------------------------ messaging

    async def publish(
        self, subject: str, data: bytes, *, headers: dict[str, str] | None = None, reply: str = ""
    ) -> None:
        """Publish ``data``; while degraded it is buffered (or dropped and counted when full).
        Without headers it goes straight into nats-py's pending buffer (see :meth:`publish_nowait`)
        unless that is full: then it waits for nats-py's flusher, as nats-py's publish does."""
        direct = self.direct  # the usual case first
        if direct is not None and headers is None and append_pub(direct, subject, reply, data):
            self.stats.published += 1
            return
        nc = self._nc
        state = self._state
        if state is _CONNECTED and nc is not None and not self._buffer:
            try:  # (when nats-py's pending buffer is full, this waits for its flusher)
                await nc.publish(subject, data, reply, headers)
                self.stats.published += 1
                return
            except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as exc:
                log.debug("publish to %s while the connection is going down: %r", subject, exc)
        elif state is BusState.CLOSED:
            raise BusUnavailable(f"cannot publish to {subject!r}: the NATS connection is closed")
        self._buffer_publish(_Outgoing(subject, data, headers, reply))

    def publish_nowait(
        self, subject: str, data: bytes, *, headers: dict[str, str] | None = None, reply: str = ""
    ) -> None:
        """Publish from synchronous code: :meth:`publish` without the ``await``.

        Without headers, on a connection that is up and whose flusher runs, the message goes
        straight into nats-py's pending buffer (:func:`~flockrt.bus.pending.append_pub`: what
        nats-py's own publish does, without its three coroutines).

        While connected, nats-py's publish only appends the message to its pending buffer and
        wakes its flusher, so its coroutine is driven here by hand and normally finishes in
        that one step: no Task, no loop turn. It waits only when the pending buffer is over
        its limit (for the flusher to write it out; the message is already in the buffer):
        the rest of that wait then runs in a task of this connection's. Degraded, the message
        is buffered as with :meth:`publish`.
        """
        direct = self.direct  # the usual case first
        if direct is not None and headers is None and append_pub(direct, subject, reply, data):
            self.stats.published += 1
            return
        nc = self._nc
        state = self._state
        if state is _CONNECTED and nc is not None and not self._buffer:
            publishing = nc.publish(subject, data, reply, headers)
            try:
                waiting_for = publishing.send(None)
            except StopIteration:
                self.stats.published += 1
                return
            except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as exc:
                log.debug("publish to %s while the connection is going down: %r", subject, exc)
            except nats.errors.ConnectionDrainingError:
                raise BusUnavailable(f"cannot publish to {subject!r}: the connection is closing") from None
            else:
                self.stats.published += 1
                self._publishing.spawn(resume(publishing, waiting_for), name="flockrt-publish")
                return
        elif state is BusState.CLOSED:
            raise BusUnavailable(f"cannot publish to {subject!r}: the NATS connection is closed")
        self._buffer_publish(_Outgoing(subject, data, headers, reply))

    async def subscribe(
        self, subject: str, handler: Handler, *, queue: str = "", max_msgs: int = 0, raw: bool = False
    ) -> Subscription:
        """Call ``handler`` for every message on ``subject`` (in a queue group if ``queue``);
        with ``max_msgs``, the server sends at most that many, then drops the interest. With
        ``raw`` (for the bus's own hot paths), ``handler`` gets nats-py's ``Msg`` as it came.

        The subscription is remembered and re-established after a reconnect. A handler that
        raises is logged and counted; the subscription lives on.
        """
        subscription = Subscription(self, subject, queue, handler, max_msgs)
        subscription.raw = raw
        self._subscriptions.add(subscription)
        if self._nc is not None and self._state is BusState.CONNECTED:
            await self._attach(self._nc, subscription)
            # Once subscribe() returns, the server knows: what others publish next arrives.
            try:
                await self._nc.flush()
            except (nats.errors.Error, TimeoutError) as exc:  # still subscribed; just not confirmed
                log.warning("subscribe %s: the server did not confirm in time: %r", subject, exc)
        return subscription

    async def add_service(
        self, name: str, version: str, *, description: str = "", metadata: Mapping[str, str] | None = None
    ) -> BusService:
        """Announce a service on the NATS service API (``$SRV.PING/INFO/STATS``), so standard
        NATS tooling (``nats micro ls``) discovers it and its endpoints; see :class:`BusService`.
        Re-created after a reconnect, like subscriptions."""
        from flockrt.bus.service import BusService  # it builds on this module

        service = BusService(self, name, version, description, dict(metadata or {}))
        self._services.add(service)
        if self._nc is not None and self._state is BusState.CONNECTED:
            await service._attach(self._nc)
        return service

    async def request(
        self, subject: str, data: bytes, *, timeout: float, headers: dict[str, str] | None = None
    ) -> Message:
        """Send a request and wait for the first reply (on the connection's one reply
        subscription: :class:`~flockrt.bus.replies.Replies`).

        Raises:
            BusUnavailable: NATS is unreachable (degraded) or the connection is closed.
            NoResponders: nobody subscribes to ``subject``.
            BusTimeout: no reply within ``timeout`` seconds.
        """
        return await self.replies.request(subject, data, timeout=timeout, headers=headers)

    def new_inbox(self) -> str:
        """A subject no one else uses (nats-py's ``new_inbox``: its ``inbox_prefix``, a unique
        token), for replies; made up here, with the default prefix, while never connected."""
        nc = self._nc
        if nc is not None:
            return nc.new_inbox()
        return f"_INBOX.{uuid.uuid4().hex}"

    async def publish_checked(
        self, subject: str, data: bytes, *, headers: dict[str, str] | None = None, timeout: float = 5.0
    ) -> None:
        """Publish ``data`` and make sure somebody subscribes to ``subject``, without waiting
        for an answer (:func:`~flockrt.bus.replies.publish_checked`).

        Raises:
            BusUnavailable: NATS is unreachable (degraded) or the connection is closed.
            NoResponders: nobody subscribes to ``subject`` (the message went nowhere).
            BusTimeout: the server did not answer the ping within ``timeout`` seconds.
        """
        nc = self._nc
        if self._state is not BusState.CONNECTED or nc is None:
            raise BusUnavailable(f"cannot publish to {subject!r}: NATS at {self.url} is unreachable")
        await publish_checked(nc, subject, data, headers, timeout)
        self.stats.published += 1

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until the server has seen everything published so far (no-op while degraded)."""
        if self._nc is not None and self._state is BusState.CONNECTED:
            await self._nc.flush(timeout=timeout)  # type: ignore[arg-type]  # nats-py says int, means seconds

    # ------------------------------------------------------------------ internals

    def _set_state(self, state: BusState) -> None:
        if self._state is BusState.CLOSED and state is not BusState.CLOSED:
            return
        self._state = state
        self.direct = self._nc if state is _CONNECTED and self._direct and not self._buffer else None
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
        self.direct = None  # (what is buffered goes first)
        self.stats.buffered = len(self._buffer)

    async def _try_connect(self) -> bool:
        try:
            # nats-py applies its reconnect settings to the first connect too (it would retry
            # max_retries times, reconnect_wait apart, before failing): try once, fast, and set
            # the real values once connected.
            nc = await nats.connect(
                # "nats://a:4222,nats://b:4222": several members of one cluster
                [server.strip() for server in self.url.split(",")] if "," in self.url else self.url,
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
        self._direct = understands(nc)
        previous, self.server = self.server, server_of(nc)
        self.max_payload = nc.max_payload or DEFAULT_MAX_PAYLOAD
        for subscription in list(self._subscriptions):
            await self._attach(nc, subscription)
        for service in list(self._services):
            await service._attach(nc)
        self._log_server(previous, "connected to")
        self._resume()
        return True

    async def _attach(self, nc: Client, subscription: Subscription) -> None:
        handler: Callable[[Any], Awaitable[None] | None] = subscription.handler
        raw = subscription.raw

        async def deliver(msg: Msg) -> None:
            self.stats.received += 1
            try:
                pending = handler(
                    msg if raw else Message(msg.subject, msg.data, msg.headers or _NO_HEADERS, msg.reply)
                )
                if pending is not None:
                    await pending
            except Exception as exc:  # isolation boundary: one bad message must not end the subscription
                self.stats.handler_errors += 1
                log.exception("handler for %s failed: %r", msg.subject, exc)

        subscription._sub = await nc.subscribe(subscription.subject, queue=subscription.queue, cb=deliver)
        if subscription.max_msgs:  # UNSUB <sid> <max>: the server stops after that many
            await subscription._sub.unsubscribe(limit=subscription.max_msgs)

    def _resume(self) -> None:
        """Connected (again): flush the buffer in order, then accept direct publishes."""
        if self._buffer:
            if self._flusher is None or self._flusher.done():
                self._flusher = self._background.spawn(self._flush_buffer(), name="flockrt-bus-flush")
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

    def _log_server(self, previous: str, verb: str) -> None:
        """Name the server now in use; a failover when it is at another address than before
        (the same server restarted may have another name or version: not a failover)."""
        if previous and previous.rpartition(" at ")[2] != self.server.rpartition(" at ")[2]:
            log.warning("failed over from NATS server %s to %s", previous, self.server)
        else:
            log.info("%s NATS server %s", verb, self.server)

    def _start_reconnector(self) -> None:
        if self._reconnector is None or self._reconnector.done():
            self._reconnector = self._background.spawn(self._reconnect_forever(), name="flockrt-reconnect")

    async def _reconnect_forever(self) -> None:
        attempt = 0
        while self._state is not BusState.CLOSED:
            await asyncio.sleep(self._backoff.delay(attempt))
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
            log.warning(
                "disconnected from NATS server %s; degraded until it is back", self.server or self.url
            )
            self._set_state(BusState.DEGRADED)

    async def _on_reconnected(self) -> None:
        self.stats.reconnects += 1
        previous = self.server
        if self._nc is not None:  # another server of the cluster may allow another size
            self.max_payload = self._nc.max_payload or self.max_payload
            self.server = server_of(self._nc)
        self._log_server(previous, "reconnected to")
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


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
"""The headers of a message that has none (one shared, read-only mapping)."""


def _wrap(msg: Msg) -> Message:
    return Message(msg.subject, msg.data, msg.headers or _NO_HEADERS, msg.reply)
