"""JetStream on the process's NATS connection: work-queue streams, pull consumers, key-value.

The core connection (:mod:`flockrt.bus.connection`) carries core NATS: publish, subscribe,
request, the service API, and degraded mode. This module adds what needs JetStream, through
the connection's current client (so it follows the connection through reconnects):

- durable tasks (:mod:`flockrt.bus.durable`): :meth:`JetStream.ensure_work_queue`,
  :meth:`JetStream.publish` and :meth:`JetStream.pull`, which hands out a :class:`PullConsumer`
  whose :meth:`PullConsumer.fetch` returns :class:`JsMessage` objects;
- the flock's agent directory: :meth:`JetStream.kv_put`, :meth:`JetStream.kv_delete` and
  :meth:`JetStream.kv_items` on key-value buckets.

Every :class:`~flockrt.bus.connection.NatsConnection` has one :class:`JetStream`, its
``jetstream`` attribute, and keeps its older names for these methods (``js_publish``, ``pull``,
``kv_put``, ...) as thin delegations.

Unlike a plain publish, a JetStream publish is never buffered: its whole point is the server's
confirmation that the message is stored, so while degraded it raises BusUnavailable and the
caller decides (a resubmission with the same message id is safe). Key-value writes are not
buffered either. Pull consumers survive outages: a fetch while degraded waits for the
connection, and a consumer bound to a client that the connection replaced (after nats-py gave
up) binds again to the new one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.kv import KeyValue

from flockrt.bus.streams import reconcile
from flockrt.errors import BusTimeout, BusUnavailable, JetStreamError

if TYPE_CHECKING:
    from flockrt.bus.connection import NatsConnection

__all__ = ["JetStream", "JsMessage", "KvEntry", "PullConsumer"]

log = logging.getLogger("flockrt.bus")

_MSG_ID = "Nats-Msg-Id"
_STREAM_NAME_IN_USE = 10058  # JetStream: "stream name already in use with a different configuration"
_REBIND_PAUSE = 0.1
"""Seconds a fetch waits after a failed (re)bind, so a persistent failure does not spin."""


def _js_error(what: str, exc: nats.js.errors.APIError) -> JetStreamError:
    if isinstance(exc, nats.js.errors.ServiceUnavailableError) and not exc.description:
        detail = "JetStream is not available (is it enabled on the server?)"
    else:
        detail = exc.description or f"JetStream error {exc.code}"
    return JetStreamError(
        f"{what}: {detail}",
        code=exc.code,
        err_code=exc.err_code,
        description=exc.description,
    )


class JetStream:
    """The JetStream operations of one :class:`~flockrt.bus.connection.NatsConnection`.

    Made by the connection (its ``jetstream`` attribute), never by users. Each operation uses
    the connection's client of the moment, so it works across reconnects; none is buffered
    while NATS is unreachable (each raises :class:`BusUnavailable` instead).

    Args:
        connection: The connection whose client carries the JetStream API.
    """

    def __init__(self, connection: NatsConnection, *, replicas: int = 1) -> None:
        if not 1 <= replicas <= 5:
            raise ValueError(f"replicas must be 1..5 (JetStream's limit), got {replicas!r}")
        self.connection = connection
        self.replicas = replicas
        """Replicas of the streams and buckets this process creates (``[nats] replicas``);
        an existing one with more is an error, one with fewer is raised to it."""
        self._buckets: dict[str, tuple[Client, KeyValue]] = {}
        """Key-value handles, each with the client it was made on (stale after a new client)."""

    async def ensure_work_queue(
        self, stream: str, subjects: list[str], *, duplicate_window: float = 120.0, timeout: float = 5.0
    ) -> None:
        """Create the work-queue stream ``stream`` on ``subjects``, or bring an existing one up to it.

        Work-queue retention keeps a message until a consumer acks (or terminates) it, file
        storage keeps it across a server restart, and :attr:`replicas` servers of a cluster
        hold a copy each. Within ``duplicate_window`` seconds the server drops a publish whose
        ``Nats-Msg-Id`` it has already stored.

        An existing stream is never weakened (see :func:`flockrt.bus.streams.reconcile`): it
        gains missing subjects, more replicas or a longer duplicate window, and keeps whatever
        else an operator set.

        Raises:
            BusUnavailable: NATS is unreachable or the connection is closed.
            BusTimeout: JetStream did not answer within ``timeout`` seconds.
            JetStreamError: JetStream refused the config (subjects overlap another stream, more
                replicas than servers), or the existing stream has more replicas than
                :attr:`replicas`, another retention or memory storage (the message says what
                to change).
        """
        config = StreamConfig(
            name=stream,
            subjects=list(subjects),
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=duplicate_window,
            num_replicas=self.replicas,
        )
        await self._ensure_stream(config, f"stream {stream}", timeout)

    async def _ensure_stream(self, wanted: StreamConfig, what: str, timeout: float) -> None:
        """Create the stream ``wanted`` describes, or reconcile the existing one with it."""
        name = wanted.name
        assert name is not None
        js = self._context(what, timeout)
        try:
            for _ in range(3):  # another process may create or change it meanwhile: look again
                try:
                    info = await js.stream_info(name)
                except nats.js.errors.NotFoundError:
                    try:
                        await js.add_stream(wanted)
                    except nats.js.errors.BadRequestError as exc:
                        if exc.err_code != _STREAM_NAME_IN_USE:
                            raise
                        continue
                    log.info("JetStream %s created (%d replicas)", what, wanted.num_replicas or 1)
                    return
                update, outcome = reconcile(info.config, wanted, what=what)
                if update is not None:
                    await js.update_stream(update)
                log.info("JetStream %s", outcome)
                return
            raise JetStreamError(f"cannot set up {what}: it kept changing under this process")
        except nats.js.errors.APIError as exc:
            raise self._setup_error(what, exc) from None
        except nats.errors.TimeoutError:
            raise BusTimeout(f"$JS.API.STREAM.CREATE.{name}", timeout) from None
        except nats.errors.ConnectionClosedError:
            raise BusUnavailable(f"cannot set up {what}: the connection closed") from None

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        msg_id: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> bool:
        """Publish ``data`` to the stream that captures ``subject`` and wait until it is stored.

        ``msg_id`` goes in the ``Nats-Msg-Id`` header: within the stream's duplicate window the
        server stores a message id once, so resubmitting after a timeout or a crash is safe.

        Returns:
            True if the message was stored, False if the server already had ``msg_id``.

        Raises:
            BusUnavailable: NATS is unreachable (degraded) or the connection is closed. Nothing
                is buffered: the caller must know the message is not stored.
            BusTimeout: no confirmation within ``timeout`` s; the message may or may not be
                stored (publish again with the same ``msg_id`` to make sure).
            JetStreamError: no stream captures ``subject``, or the stream refused the message.
        """
        nc = self.connection._nc
        if self.connection.closed:
            raise BusUnavailable(f"cannot publish to {subject!r}: the NATS connection is closed")
        if nc is None or not nc.is_connected:
            raise BusUnavailable(
                f"cannot publish to {subject!r}: NATS at {self.connection.url} is unreachable"
            )
        all_headers = dict(headers or {})
        all_headers[_MSG_ID] = msg_id
        try:
            ack = await nc.jetstream(timeout=timeout).publish(subject, data, headers=all_headers)
        except nats.js.errors.NoStreamResponseError:
            raise JetStreamError(f"no JetStream stream captures {subject!r}") from None
        except nats.js.errors.APIError as exc:
            raise _js_error(f"publish to {subject!r} refused", exc) from None
        except nats.errors.TimeoutError:
            raise BusTimeout(subject, timeout) from None
        except nats.errors.ConnectionClosedError:
            raise BusUnavailable(f"cannot publish to {subject!r}: the connection closed") from None
        self.connection.stats.published += 1
        return not ack.duplicate

    async def pull(
        self,
        stream: str,
        durable_name: str,
        filter_subject: str,
        *,
        ack_wait: float,
        max_deliver: int = -1,
        max_ack_pending: int = 1000,
        timeout: float = 5.0,
    ) -> PullConsumer:
        """A pull consumer on the durable consumer ``durable_name`` of ``stream``.

        The durable consumer is created, or updated to this config (the last process to bind
        sets it). Many processes may bind the same one: each message goes to one of them. The
        server redelivers a message not settled within ``ack_wait`` seconds (a crash), at most
        ``max_deliver`` times in all (-1: no limit).

        No ``backoff`` is set on the consumer on purpose: JetStream then replaces ``ack_wait``
        with the first backoff step, so a short first step would have every running task
        redelivered while still running. Back off with :meth:`JsMessage.nak` delays instead.

        If NATS is unreachable the consumer is returned unbound and binds at its first fetch
        once connected.

        Raises:
            JetStreamError: JetStream refused the consumer (no such stream, a filter that
                overlaps another consumer of a work-queue stream, a bad name).
            BusUnavailable: the connection is closed.
        """
        config = ConsumerConfig(
            name=durable_name,
            durable_name=durable_name,
            filter_subject=filter_subject,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            max_ack_pending=max_ack_pending,
        )
        consumer = PullConsumer(self, stream, config, timeout)
        nc = self.connection._nc
        if nc is not None and nc.is_connected:
            try:
                await consumer._bind(nc)
            except (BusTimeout, BusUnavailable) as exc:  # lost on the way: the first fetch binds
                log.debug("binding consumer %s: %r", durable_name, exc)
        elif self.connection.closed:
            raise BusUnavailable(f"cannot consume from {stream!r}: the NATS connection is closed")
        return consumer

    # ------------------------------------------------------------------ key-value

    async def kv_put(self, bucket: str, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` in the JetStream key-value ``bucket`` (created on first
        use, keeping one revision; with ``ttl`` an entry not written again within ``ttl``
        seconds disappears).

        Raises:
            BusUnavailable: NATS is unreachable (a key-value write is never buffered).
            JetStreamError: JetStream refused the bucket or the key.
        """
        kv = await self._bucket(bucket, ttl)
        try:
            await kv.put(key, value)
        except nats.js.errors.APIError as exc:
            raise _js_error(f"key {key!r} of bucket {bucket}", exc) from None
        except (nats.errors.Error, ValueError) as exc:
            raise JetStreamError(f"cannot write key {key!r} of bucket {bucket}: {exc!r}") from None

    async def kv_delete(self, bucket: str, key: str, *, ttl: float | None = None) -> None:
        """Remove ``key`` from ``bucket`` (no error when it is not there)."""
        kv = await self._bucket(bucket, ttl)
        try:
            await kv.delete(key)
        except nats.js.errors.APIError as exc:
            raise _js_error(f"key {key!r} of bucket {bucket}", exc) from None
        except (nats.errors.Error, ValueError) as exc:
            raise JetStreamError(f"cannot delete key {key!r} of bucket {bucket}: {exc!r}") from None

    async def kv_items(self, bucket: str, *, ttl: float | None = None) -> dict[str, bytes]:
        """Every live entry of ``bucket``."""
        return {key: entry.value for key, entry in (await self.kv_entries(bucket, ttl=ttl)).items()}

    async def kv_entries(self, bucket: str, *, ttl: float | None = None) -> dict[str, KvEntry]:
        """Every live entry of ``bucket``, with when the server stored it.

        Raises:
            BusUnavailable: NATS is unreachable.
            BusTimeout: JetStream did not answer in time.
            JetStreamError: JetStream refused the bucket.
        """
        await self._bucket(bucket, ttl)
        js = self._context(f"key-value bucket {bucket}", 5.0)
        stream, prefix = f"KV_{bucket}", f"$KV.{bucket}."
        entries: dict[str, KvEntry] = {}
        try:
            # The stream's subjects, not nats-py's KeyValue.keys(): its watcher can report an
            # empty bucket when the first entry arrives while it asks for the consumer's info.
            info = await js.stream_info(stream, subjects_filter=f"{prefix}>")
            for subject in info.state.subjects or {}:
                try:
                    msg = await js.get_msg(stream, subject=subject)
                except nats.js.errors.NotFoundError:  # expired meanwhile
                    continue
                if msg.data is None or (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
                    continue  # a deletion's marker
                entries[subject.removeprefix(prefix)] = KvEntry(msg.data, msg.time or datetime.now(UTC))
        except nats.js.errors.APIError as exc:
            raise _js_error(f"key-value bucket {bucket}", exc) from None
        except nats.errors.TimeoutError:
            raise BusTimeout(f"$JS.API.STREAM.MSG.GET.KV_{bucket}", 5.0) from None
        return entries

    async def ensure_bucket(self, bucket: str, *, ttl: float | None = None) -> None:
        """Create the key-value ``bucket`` (:attr:`replicas` copies, file storage, one revision
        per key, entries expiring ``ttl`` seconds after their last write), or check the
        existing one: as with :meth:`ensure_work_queue`, it is never weakened (more replicas
        than :attr:`replicas` is an error; fewer are raised to it). The other key-value methods
        do this at their first use; call it to get the error at start.

        Raises:
            BusUnavailable: NATS is unreachable or the connection is closed.
            BusTimeout: JetStream did not answer in time.
            JetStreamError: JetStream refused the bucket, or the existing one cannot be kept
                (the message says what to change).
        """
        await self._bucket(bucket, ttl)

    def _setup_error(self, what: str, exc: nats.js.errors.APIError) -> JetStreamError:
        error = _js_error(f"cannot set up {what}", exc)
        if self.replicas > 1:  # the usual cause then: a single server, or too few
            error = JetStreamError(
                f"{error} ([nats] replicas = {self.replicas} needs a JetStream cluster of at least "
                "that many servers)",
                code=error.code,
                err_code=error.err_code,
                description=error.description,
            )
        return error

    async def _bucket(self, bucket: str, ttl: float | None) -> KeyValue:
        nc = self.connection._nc
        cached = self._buckets.get(bucket)
        if cached is not None and cached[0] is nc:
            return cached[1]
        what = f"key-value bucket {bucket}"
        js = self._context(what, 5.0)
        try:
            try:
                # Its stream first: an existing bucket is checked (and never weakened) as a stream is.
                stream = await js.stream_info(f"KV_{bucket}")
            except nats.js.errors.NotFoundError:
                kv = await js.create_key_value(
                    bucket=bucket, ttl=ttl, history=1, storage=StorageType.FILE, replicas=self.replicas
                )
                log.info("JetStream %s created (%d replicas)", what, self.replicas)
            else:
                wanted = StreamConfig(
                    name=stream.config.name, storage=StorageType.FILE, num_replicas=self.replicas
                )
                update, outcome = reconcile(stream.config, wanted, what=what)
                if update is not None:
                    await js.update_stream(update)
                log.info("JetStream %s", outcome)
                kv = await js.key_value(bucket)
        except nats.js.errors.APIError as exc:
            raise self._setup_error(what, exc) from None
        except nats.errors.TimeoutError:
            raise BusTimeout(f"$JS.API (bucket {bucket})", 5.0) from None
        assert nc is not None
        self._buckets[bucket] = (nc, kv)
        return kv

    def _context(self, what: str, timeout: float) -> JetStreamContext:
        nc = self.connection._nc
        if self.connection.closed:
            raise BusUnavailable(f"cannot set up {what}: the NATS connection is closed")
        if nc is None or not nc.is_connected:
            raise BusUnavailable(f"cannot set up {what}: NATS at {self.connection.url} is unreachable")
        return nc.jetstream(timeout=timeout)

    async def _settle(self, reply: str, payload: bytes, timeout: float, *, confirm: bool) -> None:
        """Settle a JetStream message: publish ``payload`` on its ack subject with the current client.

        Only the ack subject matters, not the client the message came with, so a message
        fetched before a reconnect with a new client can still be settled.
        """
        nc = self.connection._nc
        if self.connection.closed:
            raise BusUnavailable("cannot settle a JetStream message: the NATS connection is closed")
        if nc is None:
            raise BusUnavailable(
                f"cannot settle a JetStream message: NATS at {self.connection.url} is unreachable"
            )
        try:
            if confirm:
                # While nats-py reconnects, the request waits in its buffer and goes out on reconnect.
                await nc.request(reply, payload, timeout=timeout)
            else:
                await nc.publish(reply, payload)
        except nats.errors.NoRespondersError:
            raise JetStreamError("no JetStream consumer answers for this message (deleted?)") from None
        except nats.errors.TimeoutError:
            raise BusTimeout(reply, timeout) from None
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionDrainingError,
            nats.errors.OutboundBufferLimitError,
        ) as exc:
            raise BusUnavailable(f"cannot settle a JetStream message: {exc!r}") from None


@dataclass(frozen=True, slots=True)
class KvEntry:
    """One entry of a key-value bucket.

    Attributes:
        value: What is stored.
        stored: When the server stored it (aware UTC, by the server's clock).
    """

    value: bytes
    stored: datetime


class JsMessage:
    """A message delivered by a JetStream pull consumer.

    Settle it once with :meth:`ack`, :meth:`nak` or :meth:`term`; until then the server holds
    it for this consumer and redelivers it after the consumer's ack wait. Settlements are
    confirmed by the server (a "double ack"), so when one returns the outcome is recorded; one
    that raises may or may not have arrived, and the message may come back.

    Attributes:
        subject: The subject it was published on.
        data: The raw payload.
        headers: NATS headers (empty when none).
        num_delivered: 1 on the first delivery, 2 on the first redelivery, and so on.
        sequence: Its sequence number in the stream (stable across redeliveries).
    """

    __slots__ = ("_js", "_reply", "data", "headers", "num_delivered", "sequence", "subject")

    def __init__(self, js: JetStream, msg: Msg) -> None:
        metadata = msg.metadata
        self._js = js
        self._reply = msg.reply
        self.subject = msg.subject
        self.data = msg.data
        self.headers: Mapping[str, str] = msg.headers or {}
        self.num_delivered = metadata.num_delivered
        self.sequence = metadata.sequence.stream

    def __repr__(self) -> str:
        return f"<JsMessage {self.subject} seq={self.sequence} delivery={self.num_delivered}>"

    async def ack(self, timeout: float = 5.0) -> None:
        """Done: the work-queue stream deletes the message.

        Raises:
            BusUnavailable: no connection to send it on.
            BusTimeout: not confirmed within ``timeout`` s (it may still have arrived).
            JetStreamError: the consumer no longer exists.
        """
        await self._js._settle(self._reply, b"+ACK", timeout, confirm=True)

    async def nak(self, delay: float = 0.0, timeout: float = 5.0) -> None:
        """Not done: redeliver it, after ``delay`` seconds. Raises as :meth:`ack`."""
        payload = b"-NAK"
        if delay > 0:
            payload += b" " + json.dumps({"delay": int(delay * 1e9)}).encode()
        await self._js._settle(self._reply, payload, timeout, confirm=True)

    async def term(self, reason: str = "", timeout: float = 5.0) -> None:
        """Never redeliver it; the work-queue stream deletes it. Raises as :meth:`ack`.

        The server (2.10.4 and later) puts ``reason`` in its termination advisory.
        """
        payload = b"+TERM"
        if reason:
            payload += b" " + " ".join(reason.split()).encode()
        await self._js._settle(self._reply, payload, timeout, confirm=True)

    async def in_progress(self) -> None:
        """Still working on it: restart the ack wait. Unconfirmed; may be sent many times.

        Raises:
            BusUnavailable: no connection to send it on.
        """
        await self._js._settle(self._reply, b"+WPI", 0.0, confirm=False)


class PullConsumer:
    """One binding to a durable pull consumer; obtained from :meth:`JetStream.pull`.

    It outlives outages: a fetch while NATS is unreachable waits for the connection (returning
    nothing if it is not back within the fetch timeout); after nats-py reconnects by itself the
    binding holds (the consumer is stored with the stream, and nats-py resubscribes); after this
    module reconnected with a new client, or when JetStream lost the consumer, the next fetch
    binds again, re-creating the consumer.
    """

    def __init__(self, js: JetStream, stream: str, config: ConsumerConfig, timeout: float) -> None:
        assert config.durable_name is not None
        self._js = js
        self.stream = stream
        self.name: str = config.durable_name
        self._config = config
        self._timeout = timeout
        self._nc: Client | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._closed = False

    async def fetch(self, batch: int, timeout: float) -> list[JsMessage]:
        """Up to ``batch`` messages, waiting up to about ``timeout`` seconds for the first one.

        Returns an empty list when nothing came in time, including while NATS is unreachable
        or the binding is being restored (transient trouble is logged at debug, never raised).

        Raises:
            ValueError: ``batch`` < 1 or ``timeout`` <= 0.
            BusUnavailable: this consumer or the connection is closed.
            JetStreamError: JetStream refused to (re)create the consumer, e.g. the stream is gone.
        """
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        bus = self._js.connection
        if self._closed or bus.closed:
            raise BusUnavailable(f"consumer {self.name} is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        nc = bus._nc
        if nc is None or not nc.is_connected:
            try:
                await bus.wait_connected(timeout)
            except TimeoutError:
                return []
            nc = bus._nc
            if nc is None:
                return []
        sub = self._sub
        if sub is None or self._nc is not nc:
            try:
                sub = await self._bind(nc)
            except (BusTimeout, BusUnavailable) as exc:
                log.debug("binding consumer %s: %r", self.name, exc)
                await asyncio.sleep(min(_REBIND_PAUSE, max(0.0, deadline - loop.time())))
                return []
        remaining = deadline - loop.time()
        if remaining <= 0:
            return []
        try:
            msgs = await sub.fetch(batch, timeout=remaining)
        except TimeoutError:  # nothing came (or the pull request was lost in an outage)
            return []
        except nats.js.errors.APIError as exc:
            # e.g. 409 "Consumer Deleted": bind again (re-creating it) at the next fetch.
            log.warning("fetch from consumer %s failed: %s; binding again", self.name, exc)
            self._sub = None
            await asyncio.sleep(min(_REBIND_PAUSE, max(0.0, deadline - loop.time())))
            return []
        except nats.errors.Error as exc:  # the client under this binding closed or is closing
            log.debug("fetch from consumer %s: %r; binding again", self.name, exc)
            self._sub = None
            return []
        js = self._js
        return [JsMessage(js, msg) for msg in msgs]

    async def close(self) -> None:
        """Stop fetching; idempotent. Messages fetched and not settled are redelivered after the
        ack wait (sooner if settled with a nak)."""
        self._closed = True
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except (nats.errors.Error, ValueError) as exc:  # already gone with its connection
                log.debug("closing consumer %s: %r", self.name, exc)

    async def _bind(self, nc: Client) -> JetStreamContext.PullSubscription:
        js = nc.jetstream(timeout=self._timeout)
        old, self._sub = self._sub, None
        if old is not None:
            try:
                await old.unsubscribe()
            except (nats.errors.Error, ValueError) as exc:
                log.debug("dropping the old binding of consumer %s: %r", self.name, exc)
        try:
            await js.add_consumer(self.stream, config=self._config)  # create or update
            sub = await js.pull_subscribe_bind(self.name, stream=self.stream)
        except nats.js.errors.APIError as exc:
            raise _js_error(f"cannot bind consumer {self.name!r} of stream {self.stream!r}", exc) from None
        except nats.errors.TimeoutError:
            raise BusTimeout(f"$JS.API.CONSUMER.CREATE.{self.stream}.{self.name}", self._timeout) from None
        except nats.errors.Error as exc:
            raise BusUnavailable(f"cannot bind consumer {self.name!r}: {exc!r}") from None
        self._nc, self._sub = nc, sub
        return sub
