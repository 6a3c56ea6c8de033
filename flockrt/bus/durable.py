"""Durable tasks: ``tasks.<type>`` through a JetStream work-queue stream (issue 3, durable mode).

In the default mode a task is a core NATS message in a queue group: if its handler crashes or
its process dies, it is gone. In durable mode a task is stored in a work-queue stream until it
is settled, so none is lost to a crash, a failing handler or a restarted nats-server:

- :meth:`DurableTasks.submit` stores the task with ``Nats-Msg-Id`` = its id, and the stream
  drops a second submission of the same id (within its duplicate window);
- a :class:`TaskConsumer` pulls tasks of one type, never more than the process can run
  (``capacity``) plus ``prefetch``, which is also flow control across processes: what one
  process does not pull stays in the stream for the others; a prefetched task waits in the
  consumer and starts when a slot frees up;
- a task is acked only after its handler returned an ``ok`` result. A failure (an ``error``
  result or an exception) is redelivered after the backoff delay for that delivery; a crash
  (the process dies, or stops answering) is redelivered after ``ack_wait``. While a task is
  held (prefetched or running), the consumer tells the server so every ``ack_wait / 3``
  (``+WPI``), so a long task is never taken for a crashed one and ``ack_wait`` can be short;
- :meth:`TaskConsumer.stop` is the graceful stop: no more fetches, prefetched tasks go back at
  once (nak without delay), running ones may finish (and are acked) within the grace period;
- after ``max_deliver`` deliveries the task is terminated and a :class:`DeadLetter` with the
  reason is published on the dead-letter subject. A message that is not a valid task is
  dead-lettered at once. When the stream captures the dead-letter subject (``tasks.dead`` in
  ``tasks.>``, the default) dead letters are stored there too, until an operator consumes them.

Delivery is at least once: a handler may see a task again when its outcome could not reach the
server (e.g. the server died between the handler's end and the ack), so handlers should be
idempotent, and can tell a redelivery by :attr:`TaskMessage.id`.

Every redelivery is logged at info and every dead letter at warning; :class:`DurableStats`
counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import msgspec

from flockrt.bus.connection import BusState, NatsConnection
from flockrt.bus.jetstream import JsMessage, PullConsumer
from flockrt.errors import BusTimeout, BusUnavailable, FlockError, JetStreamError
from flockrt.supervisor.spec import Backoff
from flockrt.wire import subjects
from flockrt.wire.schema import Codec, InvalidMessage, TaskMessage, TaskResult

__all__ = ["DeadLetter", "DurableStats", "DurableTasks", "TaskConsumer"]

log = logging.getLogger("flockrt.durable")

RunTask = Callable[[TaskMessage], Awaitable[TaskResult]]

_MAX_BATCH = 100
"""Most messages one fetch asks for, however large the capacity."""
_CAPACITY_RECHECK = 1.0
"""Seconds a full consumer waits before asking ``capacity()`` again if nothing woke it."""
_RETRY_PAUSE = Backoff(initial=0.1, maximum=5.0, jitter=0.0)
"""Pauses of the fetch loop after consecutive JetStream errors: 0.2 s after the first, doubling
up to 5 s (its ``delay(n)`` after the n-th error in a row)."""


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """What the dead-letter subject receives for a task given up on.

    Attributes:
        task: The task, or None if the message was not a valid task.
        raw: The payload as text when it was not a valid task, else None.
        reason: Why it was given up on (the last error, or what was invalid).
        deliveries: How many times it was delivered.
        subject: The subject it was published on.
    """

    task: TaskMessage | None
    raw: str | None
    reason: str
    deliveries: int
    subject: str


@dataclass(slots=True)
class DurableStats:
    """Counters since start, over every consumer of one :class:`DurableTasks`."""

    submitted: int = 0
    """Tasks stored by :meth:`DurableTasks.submit` (duplicates not included)."""
    duplicates: int = 0
    """Submissions dropped because the stream already had the task id."""
    received: int = 0
    """Deliveries fetched, first ones and redeliveries."""
    acked: int = 0
    """Tasks done: handler result ok and the ack confirmed by the server."""
    redelivered: int = 0
    """Failed attempts sent back for another delivery (nak with backoff)."""
    dead_lettered: int = 0
    """Tasks terminated and published on the dead-letter subject."""
    invalid: int = 0
    """Messages that were not valid tasks (they are dead-lettered too)."""
    unsettled: int = 0
    """Outcomes (ack, nak, term) the server did not confirm; the task will come back."""


class DurableTasks:
    """Tasks on ``tasks.<type>`` stored in a JetStream work-queue stream.

    Call :meth:`setup` once connected, then :meth:`submit` tasks and :meth:`consume` task types.
    Every process of a flock in durable mode uses the same stream and consumer names, so a task
    goes to exactly one of them at a time.

    Args:
        connection: The process's NATS connection.
        codec: Encoders and decoders (and the payload size limit).
        stream: The stream's name.
        subjects: What the stream captures; must include ``tasks.<type>`` of every task type.
        max_deliver: Deliveries of a task before it is dead-lettered (the handler runs at most
            this many times).
        backoff: Seconds before redelivering a failed task: the first entry after the first
            failure, and so on; the last entry repeats.
        ack_wait: Seconds without news from a consumer (no outcome, no progress) after which
            the server takes its task for crashed and redelivers it.
        dead_letter_subject: Where dead letters are published. It must not be a consumed task
            subject.
        duplicate_window: Seconds during which a second submission of a task id is dropped.
        fetch_timeout: Seconds one fetch waits for tasks (a long poll).
        settle_timeout: Seconds to wait for the server to confirm an ack, nak or term.
    """

    def __init__(
        self,
        connection: NatsConnection,
        codec: Codec,
        *,
        stream: str = "FLOCK_TASKS",
        subjects: Sequence[str] = ("tasks.>",),
        max_deliver: int = 5,
        backoff: Sequence[float] = (0.1, 0.5, 2.0),
        ack_wait: float = 10.0,
        dead_letter_subject: str = "tasks.dead",
        duplicate_window: float = 120.0,
        fetch_timeout: float = 1.0,
        settle_timeout: float = 2.0,
    ) -> None:
        if max_deliver < 1:
            raise ValueError(f"max_deliver must be >= 1, got {max_deliver!r}")
        if not backoff or any(delay < 0 for delay in backoff):
            raise ValueError(f"backoff must be one or more delays >= 0 seconds, got {backoff!r}")
        if min(ack_wait, fetch_timeout, settle_timeout) <= 0:
            raise ValueError(
                "ack_wait, fetch_timeout and settle_timeout must be > 0 seconds, got "
                f"{ack_wait!r}, {fetch_timeout!r}, {settle_timeout!r}"
            )
        if not subjects:
            raise ValueError("subjects must name at least one subject")
        self.connection = connection
        self.codec = codec
        self.stream = stream
        self.subjects = list(subjects)
        self.max_deliver = max_deliver
        self.backoff = tuple(backoff)
        self.ack_wait = ack_wait
        self.dead_letter_subject = dead_letter_subject
        self.duplicate_window = duplicate_window
        self.fetch_timeout = fetch_timeout
        self.settle_timeout = settle_timeout
        self.stats = DurableStats()
        # A dead letter on a subject of the stream is stored (confirmed before the task is
        # terminated); elsewhere it can only be a plain publish.
        self._store_dead_letters = any(_matches(pattern, dead_letter_subject) for pattern in self.subjects)

    async def setup(self) -> None:
        """Create the stream, or update it to this config; call once connected.

        Raises:
            BusUnavailable: NATS is unreachable.
            BusTimeout: JetStream did not answer in time.
            JetStreamError: JetStream refused the stream (see :class:`JetStreamError`).
        """
        await self.connection.jetstream.ensure_work_queue(
            self.stream, self.subjects, duplicate_window=self.duplicate_window
        )

    async def submit(self, task: TaskMessage, *, headers: dict[str, str] | None = None) -> bool:
        """Store ``task`` on ``tasks.<type>``; it is done once some consumer acks it.

        Its id is the message id, so submitting the same task again is safe: the stream keeps
        one (within its duplicate window).

        Args:
            task: The task; its id must be unique per task.
            headers: More NATS headers (e.g. a correlation id).

        Returns:
            True if stored, False if the stream already had this task id (dropped).

        Raises:
            ValueError: the task type cannot be a subject token.
            BusUnavailable: NATS is unreachable: the task is NOT stored (never buffered).
            BusTimeout: no confirmation in time; it may be stored (submit it again to be sure).
            JetStreamError: no stream captures ``tasks.<type>``.
        """
        stored = await self.connection.jetstream.publish(
            subjects.tasks(task.type), self.codec.encode(task), msg_id=task.id, headers=headers
        )
        if stored:
            self.stats.submitted += 1
        else:
            self.stats.duplicates += 1
            log.info("task %s (%s) was already submitted; duplicate dropped", task.id, task.type)
        return stored

    def counts(self) -> dict[str, int]:
        """What :attr:`stats` counted, by event name (the metrics layer's labels)."""
        events = self.stats
        return {
            "submitted": events.submitted,
            "duplicate": events.duplicates,
            "received": events.received,
            "acked": events.acked,
            "redelivered": events.redelivered,
            "dead_lettered": events.dead_lettered,
            "invalid": events.invalid,
            "unsettled": events.unsettled,
        }

    async def consume(
        self, task_type: str, run: RunTask, *, capacity: Callable[[], int] = lambda: 1, prefetch: int = 0
    ) -> TaskConsumer:
        """Start running tasks of ``task_type`` with ``run``, until the consumer is stopped.

        Args:
            task_type: The task type; its subject ``tasks.<type>`` must be in the stream.
            run: Runs one task and returns its result: ``ok`` acks it, ``error`` (or an
                exception) sends it back for a retry or, at the last delivery, dead-letters it.
                Calls run concurrently, up to ``capacity()`` at once; delivery is at least
                once, so ``run`` should be idempotent.
            capacity: How many tasks of this type the process can run at once right now (e.g.
                the total ``max_concurrent_tasks`` of its agents for the type). Asked before
                every fetch; tasks this consumer already runs are subtracted, so it never holds
                more than that many running. Call :meth:`TaskConsumer.wake` when it grows.
            prefetch: Tasks fetched beyond ``capacity()``; they wait in the consumer (kept
                alive with in-progress acks) and start as running ones finish.

        Returns:
            The running consumer; :meth:`TaskConsumer.stop` ends it.

        Raises:
            ValueError: ``task_type`` is not a valid subject token, or its subject is the
                dead-letter subject (dead letters would be run as tasks, and fail again).
            JetStreamError: JetStream refused the consumer (e.g. the stream does not exist).
        """
        subject = subjects.tasks(task_type)
        if subject == self.dead_letter_subject:
            raise ValueError(f"task type {task_type!r} would consume the dead letters on {subject!r}")
        pull = await self.connection.jetstream.pull(
            self.stream,
            _consumer_name(task_type),
            subject,
            ack_wait=self.ack_wait,
            # Deliveries are limited here, not by the server: at its limit the server would
            # stop redelivering a task whose last attempt crashed and leave it in the stream
            # forever; here the next delivery dead-letters it.
            max_deliver=-1,
        )
        consumer = TaskConsumer(self, task_type, pull, run, capacity, prefetch)
        consumer._start()
        return consumer

    # ------------------------------------------------------------------ used by TaskConsumer

    def _retry_delay(self, delivery: int) -> float:
        return self.backoff[min(delivery, len(self.backoff)) - 1]

    async def _dead_letter(self, message: JsMessage, task: TaskMessage | None, reason: str) -> None:
        letter = DeadLetter(
            task=task,
            raw=None if task is not None else message.data.decode("utf-8", "replace"),
            reason=reason,
            deliveries=message.num_delivered,
            subject=message.subject,
        )
        data = self.codec.encode(letter)
        what = f"task {task.id}" if task is not None else f"message {message.sequence}"
        try:
            if self._store_dead_letters:
                # Keyed by the stream sequence: dead-lettering again after a crash stores one.
                await self.connection.jetstream.publish(
                    self.dead_letter_subject, data, msg_id=f"dead:{self.stream}:{message.sequence}"
                )
            else:
                await self.connection.publish(self.dead_letter_subject, data)
        except (BusUnavailable, BusTimeout, JetStreamError) as exc:
            # Not terminated: it comes back, and is dead-lettered at that delivery.
            log.warning(
                "%s on %s could not be dead-lettered (%s); it will be delivered again: %s",
                what,
                message.subject,
                exc,
                reason,
            )
            await self._settle(message, "nak", lambda: message.nak(self.backoff[-1], self.settle_timeout))
            return
        await self._settle(message, "term", lambda: message.term(reason, self.settle_timeout))
        self.stats.dead_lettered += 1
        log.warning(
            "%s on %s dead-lettered to %s after %d deliveries: %s",
            what,
            message.subject,
            self.dead_letter_subject,
            message.num_delivered,
            reason,
        )

    async def _settle(self, message: JsMessage, what: str, settle: Callable[[], Awaitable[None]]) -> bool:
        """Send one outcome (``settle()``: ack, nak or term) and have the server confirm it.

        Lost in an outage, it is sent again once connected, until ``ack_wait`` has passed (by
        then the server redelivers the task anyway). Not answered by a server that is up, it is
        given up at once: that server does not know this delivery any more (after a crash it
        may have lost the consumer's delivery state and redelivered the task afresh), and
        waiting would only hold up the outcome. Returns whether it was confirmed.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_wait
        while True:
            try:
                await settle()
                return True
            except (BusUnavailable, BusTimeout) as exc:
                answered_by_none = isinstance(exc, BusTimeout) and self.connection.connected
                if answered_by_none or self.connection.state is BusState.CLOSED or loop.time() >= deadline:
                    self._unsettled(message, what, exc)
                    return False
                log.debug("%s of %r not confirmed (%s); again once connected", what, message, exc)
                with contextlib.suppress(TimeoutError):
                    await self.connection.wait_connected(max(0.0, deadline - loop.time()))
            except JetStreamError as exc:
                self._unsettled(message, what, exc)
                return False

    def _unsettled(self, message: JsMessage, what: str, exc: Exception) -> None:
        self.stats.unsettled += 1
        log.warning(
            "%s of %s (delivery %d) not confirmed by the server: %s; it will be delivered again",
            what,
            message.subject,
            message.num_delivered,
            exc,
        )


class TaskConsumer:
    """A running consumer of one task type; made by :meth:`DurableTasks.consume`.

    It owns its fetch loop, its progress ticker and the handlers it runs: :meth:`stop` ends
    them all.
    """

    def __init__(
        self,
        tasks: DurableTasks,
        task_type: str,
        pull: PullConsumer,
        run: RunTask,
        capacity: Callable[[], int],
        prefetch: int = 0,
    ) -> None:
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch!r}")
        self.task_type = task_type
        self._tasks = tasks
        self._pull = pull
        self._run = run
        self._capacity = capacity
        self._prefetch = prefetch
        self._loop_task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._running: dict[asyncio.Task[None], JsMessage] = {}
        """Every task handling a fetched message, until its outcome is settled."""
        self._in_hand: set[JsMessage] = set()
        """Started messages whose handler has not finished: what counts against capacity."""
        self._held: deque[JsMessage] = deque()
        """Fetched messages not started yet (the prefetch), oldest first."""
        self._room = asyncio.Event()
        self._stopped = False

    @property
    def running(self) -> int:
        """Tasks started whose handler has not finished yet (what counts against capacity)."""
        return len(self._in_hand)

    @property
    def held(self) -> int:
        """Tasks fetched and not started yet."""
        return len(self._held)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def wake(self) -> None:
        """Capacity may have grown (e.g. an agent joined): look for more tasks now."""
        self._start_held()
        self._room.set()

    async def stop(self, grace: float = 0.0) -> None:
        """Stop fetching, send back what never started, give running handlers ``grace``
        seconds (their outcome is settled as usual: an ok result is acked), then cancel the rest.

        Fetched tasks that never started go back at once (nak without delay): another
        process takes them now instead of after ``ack_wait``, and they never ran here. A task
        whose handler is cancelled after the grace period is sent back the same way; that
        counts as one of its deliveries, and it runs again elsewhere. An outcome still being
        sent is abandoned: if it did not reach the server, the task is redelivered after
        ``ack_wait``. Idempotent.
        """
        if self._stopped:
            return
        self._stopped = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        held, self._held = list(self._held), deque()
        await self._send_back(held, "never started")
        if held:
            log.info("stop: %d prefetched tasks of %s sent back to the stream", len(held), self.task_type)
        if self._running and grace > 0:
            await asyncio.wait(list(self._running), timeout=grace)
        requeue = [message for message in self._running.values() if message in self._in_hand]
        cancelled = list(self._running)
        for job in cancelled:
            job.cancel()
        await asyncio.gather(*cancelled, return_exceptions=True)
        if requeue:
            log.warning(
                "stop: %d tasks of %s still running after %g s were cancelled and sent back; they run again",
                len(requeue),
                self.task_type,
                grace,
            )
        await self._send_back(requeue, "cancelled")
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        await self._pull.close()

    async def _send_back(self, messages: list[JsMessage], why: str) -> None:
        for message in messages:
            try:
                await message.nak(timeout=self._tasks.settle_timeout)
            except (BusUnavailable, BusTimeout, JetStreamError) as exc:
                log.debug("%s %r not sent back (%s); it returns after ack_wait", why, message, exc)

    # ------------------------------------------------------------------ internals

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop_task = loop.create_task(self._fetch_loop(), name=f"flockrt-durable-{self.task_type}")
        self._loop_task.add_done_callback(self._loop_ended)
        self._ticker = loop.create_task(self._keep_alive(), name=f"flockrt-progress-{self.task_type}")
        self._ticker.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            name = task.get_name()
            log.error("durable consumer of %s: %s stopped by an error", self.task_type, name, exc_info=exc)

    async def _keep_alive(self) -> None:
        """Every ack_wait / 3: an in-progress ack for every task held here (prefetched or
        running, until settled), so the server never redelivers a task that is not stuck."""
        interval = self._tasks.ack_wait / 3
        while True:
            await asyncio.sleep(interval)
            for message in [*self._held, *self._running.values()]:
                try:
                    await message.in_progress()
                except BusUnavailable as exc:
                    log.debug("progress of %r not sent: %s", message, exc)
                    break
                except FlockError as exc:  # (JetStreamError: its consumer went away) the next one may go
                    log.debug("progress of %r not sent: %s", message, exc)

    async def _fetch_loop(self) -> None:
        failures = 0
        while True:
            want = self._capacity() + self._prefetch - len(self._in_hand) - len(self._held)
            free = min(want, _MAX_BATCH)
            if free <= 0:
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_CAPACITY_RECHECK):
                        await self._room.wait()
                continue
            try:
                messages = await self._pull.fetch(free, self._tasks.fetch_timeout)
            except BusUnavailable as exc:  # the connection is closed: nothing more will come
                log.info("durable consumer of %s ends: %s", self.task_type, exc)
                return
            except JetStreamError as exc:
                failures += 1
                pause = _RETRY_PAUSE.delay(failures)
                log.warning("durable consumer of %s: %s; retrying in %.1f s", self.task_type, exc, pause)
                # The stream may be missing (NATS was down when setup() was due, or someone
                # deleted it): setting it up again is idempotent, and heals that case.
                try:
                    await self._tasks.setup()
                except (BusUnavailable, BusTimeout, JetStreamError) as setup_exc:
                    log.debug("setting up stream %s again: %s", self._tasks.stream, setup_exc)
                await asyncio.sleep(pause)
                continue
            failures = 0
            self._held.extend(messages)
            self._start_held()

    def _start_held(self) -> None:
        """Start held messages while the agents have free slots."""
        if self._stopped:
            return
        capacity = self._capacity()
        loop = asyncio.get_running_loop()
        while self._held and len(self._in_hand) < capacity:
            message = self._held.popleft()
            self._in_hand.add(message)
            job = loop.create_task(self._handle(message))
            self._running[job] = message
            job.add_done_callback(self._handled)

    def _handled(self, job: asyncio.Task[None]) -> None:
        self._running.pop(job, None)
        self._room.set()
        if not job.cancelled() and (exc := job.exception()) is not None:
            log.error("durable task handling on %s failed", self.task_type, exc_info=exc)

    async def _handle(self, message: JsMessage) -> None:
        tasks = self._tasks
        tasks.stats.received += 1
        task: TaskMessage | None = None
        error: str | None = None
        try:
            try:
                decoded = tasks.codec.decode(
                    message.subject, message.data, TaskMessage, message.headers.get("Content-Type")
                )
            except InvalidMessage as exc:
                tasks.stats.invalid += 1
                error = str(exc)
            else:
                task = decoded
                if message.num_delivered > tasks.max_deliver:
                    # Its last allowed attempt never settled: it crashed, hung, or its process died.
                    error = f"no outcome after {tasks.max_deliver} deliveries (crashed or lost its process)"
                else:
                    try:
                        result = await self._run(decoded)
                    except Exception as exc:  # isolation boundary: a failing task must not stop the consumer
                        error = f"handler raised {exc!r}"
                    else:
                        if result.status != "ok":
                            error = result.error or "handler returned an error result"
                    if error is not None and message.num_delivered >= tasks.max_deliver:
                        error = f"failed {message.num_delivered} times; last: {error}"
        finally:
            # The slot is free once the handler is done: settling is not work, and an outcome
            # held up by an outage must not keep the process from running other tasks.
            self._in_hand.discard(message)
            self._room.set()
            self._start_held()
        if error is None:
            if await tasks._settle(message, "ack", lambda: message.ack(tasks.settle_timeout)):
                tasks.stats.acked += 1
        elif task is None or message.num_delivered >= tasks.max_deliver:
            await tasks._dead_letter(message, task, error)
        else:
            await self._retry(message, task, error)

    async def _retry(self, message: JsMessage, task: TaskMessage, reason: str) -> None:
        tasks = self._tasks
        delivery = message.num_delivered
        delay = tasks._retry_delay(delivery)
        if await tasks._settle(message, "nak", lambda: message.nak(delay, tasks.settle_timeout)):
            tasks.stats.redelivered += 1
        log.info(
            "task %s on %s failed on delivery %d of %d (%s); redelivering in %.2f s",
            task.id,
            message.subject,
            delivery,
            tasks.max_deliver,
            reason,
            delay,
        )


def _consumer_name(task_type: str) -> str:
    """The durable consumer's name for a task type, the same in every process.

    Consumer names cannot hold some characters that task types may (``/``, ``\\``); such a
    type gets a name from its hash instead.
    """
    if any(c in "/\\" for c in task_type):
        return "tasks-" + hashlib.sha256(task_type.encode()).hexdigest()[:16]
    return f"tasks-{task_type}"


def _matches(pattern: str, subject: str) -> bool:
    """Whether NATS subject ``pattern`` (with ``*`` and ``>``) matches ``subject``."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)
