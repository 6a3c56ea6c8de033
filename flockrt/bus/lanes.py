"""Capacity-aware intake of core-mode tasks: one :class:`CoreLane` per task type a process runs.

Core NATS hands each message of a queue group to one member at once, whatever that member's
load, and drops a message nobody is interested in. So a process bounds what it takes by what
it subscribes for:

- A **bounded** process holds queue subscriptions on ``tasks.<type>`` that the server itself
  ends after a number of messages (``UNSUB <sid> <max>``): their sum never exceeds the free
  slots of its agents for the type plus ``prefetch``. When a task finishes, the freed credit
  opens a new subscription. What it does not take goes to the other members of the queue group.
- One process per task type is the **keeper**: its subscription has no limit, so the type keeps
  an interested subscriber while every bounded process is saturated, and a publish never
  vanishes for want of one. The keeper holds the flock's overflow in memory (core NATS stores
  nothing), up to ``max_held`` tasks beyond ``prefetch``: a task past that bound is refused at
  once with an error result (``FlockSaturated``), counted and logged. The keeper is the
  process with the most slots for the type (ties: the greater node name): a process that is
  not keeper asks ``flockrt.intake.<type>.keeper`` at start, when its capacity changes and
  every ``keeper_check`` seconds; with no answer, or a weaker keeper's, it becomes keeper and
  announces it there, and weaker keepers step down. A keeper that stops hands over to another
  process (``flockrt.intake.<type>.standby``) before it drains.

**On a NATS cluster** (the server's INFO names a cluster or other servers) none of this
holds: when a queue member withdraws its interest, a server that routed a message to it before
it heard loses the message on arrival, silently (docs/flock.md, "Capacity-aware intake"), and
credit subscriptions withdraw interest all the time. There a lane is **shared**: one unbounded
queue subscription for the type, never withdrawn while it runs, so each process takes an equal
share; what exceeds its free slots waits here, up to ``prefetch + max_held`` tasks, and one
more is refused (``FlockSaturated``). Its :class:`~flockrt.bus.handoff.HandOff` then offers
what waits to processes with a free slot (request/reply, confirmed), which makes the flock
capacity-aware without changing any interest on ``tasks.<type>``.

A task is started (handed to the dispatcher) only while fewer than the type's slots run;
the rest wait here, so a graceful stop (:meth:`CoreLane.stop_taking`) knows exactly which tasks
never started: it hands them back to ``tasks.<type>`` when another process has the type, else
answers each with an error result on ``task.result`` (and the reply subject), counted in
:class:`IntakeStats` and logged. What may be lost is in docs/flock.md, "Capacity-aware intake".
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import msgspec
from nats.aio.msg import Msg

from flockrt.actors.repeats import RepeatedLines
from flockrt.actors.tasks import TaskOwner
from flockrt.bus.connection import Message, NatsConnection, Subscription, _wrap
from flockrt.bus.handoff import HandOff
from flockrt.bus.outlet import Outlet, unsendable_result
from flockrt.bus.remote import CORRELATION_HEADER
from flockrt.errors import BusTimeout, BusUnavailable, NoCapableAgent, NoResponders
from flockrt.flock.batches import PRIORITIES
from flockrt.flock.dispatcher import Dispatcher
from flockrt.wire import subjects
from flockrt.wire.keeper import KeeperClaim, keeper_subject, standby_subject
from flockrt.wire.schema import TaskMessage, TaskResult

__all__ = ["CoreLane", "Held", "IntakeStats", "failed_task"]

log = logging.getLogger("flockrt.intake")

_PROBE_TIMEOUT = 0.5
"""Seconds a probe waits for the keeper's answer; a keeper that does not answer in time is
taken for gone (two keepers for a while are safe: one steps down)."""
_HANDOVER_TIMEOUT = 2.0
"""Seconds a stopping keeper waits for another process to take its role over."""
Held = tuple[int, int, TaskMessage, Message]
"""A task waiting for a slot: its priority rank, its arrival number, the task, its message."""
_CLAIMS = msgspec.json.Encoder()
_CLAIM = msgspec.json.Decoder(KeeperClaim)


@dataclass(slots=True)
class IntakeStats:
    """Counters of one process's core-mode intake since start, over every task type."""

    taken: int = 0
    """Tasks received on ``tasks.<type>`` (core mode, not in batches)."""
    handed_back: int = 0
    """Tasks that never started, republished on ``tasks.<type>`` by a graceful stop."""
    refused: int = 0
    """Tasks that never started and that no other process could take at a stop: each got an
    error result (``NodeStopping``)."""
    keeper_changes: int = 0
    """Times this process became keeper of a task type or stepped down."""
    saturated: int = 0
    """Tasks refused on arrival because their lane already held ``prefetch + max_held`` tasks
    waiting for a slot: each got an error result (``FlockSaturated``)."""
    handed_off: int = 0
    """Tasks that waited here for a slot and that another process took (on a NATS cluster:
    :mod:`flockrt.bus.handoff`)."""
    handed_in: int = 0
    """Tasks another process offered and this one took and started (on a NATS cluster)."""


def _as_message(message: Message | Msg) -> Message:
    """A task's message as the lane keeps it (held, handed off, answered with an error)."""
    return message if isinstance(message, Message) else _wrap(message)


def failed_task(task: TaskMessage, exc: Exception) -> TaskResult:
    """The error result of ``task`` that ``exc`` kept from running: its sentence, and its type."""
    return TaskResult(
        task_id=task.id, processed_by="", status="error", error=str(exc), error_type=type(exc).__name__
    )


class _Credit:
    """One bounded subscription: the server sends it at most ``limit`` tasks."""

    __slots__ = ("limit", "received", "subscription")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.received = 0
        self.subscription: Subscription | None = None


class CoreLane:
    """The core-mode intake of one task type in one process.

    Args:
        task_type: The type.
        outlet: How the flock talks on the bus (decoding, results).
        dispatcher: Hands started tasks to local agents; its capacity for the type is the
            number of tasks run at once.
        node: This process's name (its rank's tie-break).
        prefetch: Tasks taken beyond the free slots (started as slots free up).
        max_held: Tasks held beyond ``prefetch`` waiting for a slot (the keeper's overflow);
            one more is refused at once with an error result (``FlockSaturated``).
        stats: Where the lane counts (shared by the lanes of a process).
        keeper_check: Seconds between a non-keeper's checks that a keeper exists.
    """

    kept_before = False
    """Whether this lane has been keeper (its first time, alone at start, is logged at DEBUG)."""
    handoff: HandOff | None = None
    """A shared lane's hand-off of waiting tasks to processes with room (set at :meth:`start`
    on a cluster; a class attribute until then, so that a lane's instance attributes stay few
    enough for CPython to share their keys: one more measured +0.4 % instructions per task on
    a single server)."""

    def __init__(
        self,
        task_type: str,
        outlet: Outlet,
        dispatcher: Dispatcher,
        *,
        node: str,
        prefetch: int,
        stats: IntakeStats,
        max_held: int = 10000,
        keeper_check: float = 1.0,
    ) -> None:
        self.task_type = task_type
        self.subject = subjects.tasks(task_type)
        self.outlet = outlet
        # Outlet.decode's usual case (no headers, JSON), inlined in on_message:
        self._decode = outlet.codec.json_decoder(TaskMessage).decode
        self._max_bytes = outlet.codec.max_bytes
        self.dispatcher = dispatcher
        self.node = node
        self.prefetch = prefetch
        self.max_held = max_held
        self.stats = stats
        self.keeper_check = keeper_check
        self.capacity = 0
        """Slots of the local agents for the type (refreshed by :meth:`refresh`)."""
        self.running = 0
        """Tasks started (handed to the dispatcher) and not finished."""
        self.held: list[Held] = []
        """Tasks taken and not started: a heap, highest priority first, then the oldest."""
        self._order = itertools.count()
        self._credits: list[_Credit] = []
        self._keeper: Subscription | None = None  # the unbounded one: the keeper's, or a shared lane's
        self._claims: Subscription | None = None  # the keeper subject, while keeper
        self._standby: Subscription | None = None
        self._tasks = TaskOwner(f"intake of {self.subject}", log)
        self._probe_now = asyncio.Event()
        self._arming: asyncio.Task[None] | None = None
        self._other: bool | None = None  # once stopped: whether another process takes the type
        self._pumping = False
        self._stopping = False
        self._idle: asyncio.Future[None] | None = None  # wait_idle's, while it waits
        self._warnings = RepeatedLines()  # a burst of refusals: one line, then one with the count
        self.shared = False
        """Whether the lane takes an equal share (its server is one of a cluster, seen at
        :meth:`start`): one unbounded subscription, never withdrawn while it runs."""

    @property
    def bus(self) -> NatsConnection:
        """The process's NATS connection (the outlet's)."""
        return self.outlet.bus

    @property
    def keeper(self) -> bool:
        """Whether this process keeps the type's queue group open (unbounded subscription)
        as the keeper of a single server's flock (never in a shared lane)."""
        return self._keeper is not None and not self.shared

    @property
    def claim(self) -> KeeperClaim:
        return KeeperClaim(node=self.node, capacity=self.capacity)

    @property
    def outstanding(self) -> int:
        """Tasks the live bounded subscriptions may still bring."""
        return sum(credit.limit - credit.received for credit in self._credits)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Take the type's tasks: on a cluster, subscribe once for good (a shared lane); on a
        single server, find the keeper (or become it), then open credit."""
        self.shared = self.bus.clustered
        if self.shared:
            self.refresh()
            # Others ask here at their stop whether another process takes the type.
            self._claims = await self.bus.subscribe(keeper_subject(self.task_type), self._on_claim)
            self._keeper = await self.bus.subscribe(
                self.subject, self.on_message, queue=self.subject, raw=True
            )
            self.handoff = HandOff(self)
            await self.handoff.start()
            log.debug("%s takes an equal share of %s, handed on when it has no room", self.node, self.subject)
            return
        self.refresh()
        self._standby = await self.bus.subscribe(
            standby_subject(self.task_type), self._on_standby, queue=standby_subject(self.task_type)
        )
        await self._probe()
        self._tasks.spawn(self._probe_loop(), name=f"flockrt-keeper-{self.task_type}")
        self._arm_soon()

    def refresh(self) -> None:
        """The local agents for the type changed: new capacity, start what now fits."""
        capacity = self.dispatcher.capacity("task", self.task_type)
        if capacity != self.capacity:
            self.capacity = capacity
            self._probe_now.set()  # a stronger rank may make this process the keeper
            if self.handoff is not None:
                self.handoff.changed()
        self._pump()
        self._arm_soon()

    async def stop_taking(self) -> None:
        """Take nothing more: hand the keeper role over, drain the subscriptions (what the
        server sent before it heard is still taken), then hand back or refuse every task that
        never started. Running tasks go on; :meth:`wait_idle` waits for them.

        On a cluster, another server may still route a task to this one in the instant it
        withdraws its interest: that task is lost at the NATS server, unseen by flockrt
        (docs/flock.md, "Delivery guarantees"); draining keeps the window to that instant."""
        if self._stopping:
            return
        self._stopping = True
        if self._arming is not None:  # let it finish: its subscription is drained below
            await asyncio.gather(self._arming, return_exceptions=True)
        await self._tasks.close()
        if self._standby is not None:
            await self._standby.unsubscribe()
            self._standby = None
        if self.shared:
            if self._claims is not None:
                await self._claims.unsubscribe()
                self._claims = None
            shared, self._keeper = self._keeper, None
            if shared is not None:
                await shared.drain()
            if self.handoff is not None:  # what waits goes to processes with room first
                await self.handoff.stop()
            other = await self._other_keeper()
        elif self._keeper is not None:
            other = await self._hand_over()
            if self._claims is not None:
                await self._claims.unsubscribe()
                self._claims = None
            keeper, self._keeper = self._keeper, None
            await keeper.drain()
        else:
            other = await self._other_keeper()
        credits, self._credits = self._credits, []
        for credit in credits:
            if credit.subscription is not None:
                await credit.subscription.drain()
        self._other = other
        await self._give_back(other)

    async def wait_idle(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds until no started task runs; whether none does."""
        if self.running > 0:
            self._idle = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._idle
            self._idle = None
        return self.running == 0

    async def close(self) -> None:
        """Stop at once (after :meth:`stop_taking`, or instead of it): unsubscribe; tasks that
        never started get an error result."""
        self._stopping = True
        await self._tasks.close()
        if self.handoff is not None:
            await self.handoff.close()
        subscriptions = [self._standby, self._claims, self._keeper]
        subscriptions += [credit.subscription for credit in self._credits]
        self._standby = self._claims = self._keeper = None
        self._credits = []
        for subscription in subscriptions:
            if subscription is not None:
                await subscription.unsubscribe()
        await self._give_back(bool(self._other))  # stragglers after a stop go where its hand-back went
        self._warnings.flush()  # the count of the last burst of refusals

    # ------------------------------------------------------------------ tasks

    def on_message(self, message: Message | Msg) -> None:
        """A task from ``tasks.<type>`` (nats-py's ``Msg`` as it came: no :class:`Message` is
        built for a task that starts at once): start it if a slot is free, else hold it."""
        data = message.data
        task: TaskMessage | None
        try:  # Outlet.decode's usual case (JSON, no headers) here; any other, or a failure, there
            task = self._decode(data) if not message.headers and len(data) <= self._max_bytes else None
        except Exception:  # (Outlet.decode says why)
            task = None
        if task is None:
            message = _as_message(message)
            task = self.outlet.decode(message, TaskMessage)
            if task is None:  # counted and logged by decode
                if message.reply:
                    reason = self.outlet.why_invalid(message, TaskMessage)
                    error = TaskResult(task_id="", processed_by="", status="error", error=reason)
                    self.outlet.publish_nowait(message.reply, error, message.headers)
                return
        self.stats.taken += 1
        if self.running < self.capacity and not self.held and not self._stopping:
            # (_start, inlined: a frame less for every task that starts at once)
            self.running += 1
            headers = message.headers
            correlation = (headers.get(CORRELATION_HEADER) if headers else None) or task.id
            result = self.dispatcher.run_task_now(task, correlation)
            if result is None:
                self._dispatch(task, message, correlation)
                return
            self._finished()
            if message.reply:
                self.outlet.answer_task(message.reply, result, headers)
            return
        message = _as_message(message)
        handoff = self.handoff
        offered = handoff.offering if handoff is not None else 0  # out of the queue, still ours
        if len(self.held) + offered >= self.prefetch + self.max_held and not self._stopping:
            self._refuse(task, message)
            return
        heapq.heappush(self.held, (PRIORITIES.get(task.priority, 1), next(self._order), task, message))
        if handoff is not None:
            handoff.holding()
        if self._other is not None:  # a straggler after the stop's hand-back: back it goes too
            self._tasks.spawn(self._give_back(self._other))

    def _on_bounded(self, credit: _Credit, message: Message | Msg) -> None:
        credit.received += 1
        if credit.received >= credit.limit:  # the server dropped the interest with this one
            with contextlib.suppress(ValueError):  # (gone already if the lane stopped)
                self._credits.remove(credit)
            if credit.subscription is not None:
                self._tasks.spawn(credit.subscription.unsubscribe())  # the client's bookkeeping
        self.on_message(message)

    def _refuse(self, task: TaskMessage, message: Message) -> None:
        """The lane holds all it may: answer the task with an error result at once."""
        self.stats.saturated += 1
        held = len(self.held)
        self._answer(
            task,
            message,
            f"node {self.node} refused it: {held} tasks of {self.subject} already wait there for a "
            f"slot ([nats] prefetch {self.prefetch} + max_held {self.max_held}); raise [nats] max_held, "
            "add agents or processes for this type, or use durable mode ([nats] durable = true)",
            "FlockSaturated",
        )
        self._warnings.log(
            log,
            logging.WARNING,
            self.subject,
            "%s saturated on %s: %d tasks wait for a slot ([nats] prefetch %d + max_held %d); tasks "
            "beyond get an error result (FlockSaturated, %d so far in this process); raise [nats] "
            "max_held, add agents or processes, or use durable mode",
            self.subject,
            self.node,
            held,
            self.prefetch,
            self.max_held,
            self.stats.saturated,
        )

    def _answer(self, task: TaskMessage, message: Message, error: str, error_type: str) -> None:
        """An error result for a task that will not run here, on ``task.result`` and its reply subject."""
        result = TaskResult(
            task_id=task.id, processed_by="", status="error", error=error, error_type=error_type
        )
        self.outlet.publish_result(result, None)
        if message.reply:
            self.outlet.publish_nowait(message.reply, result, dict(message.headers), unsendable_result)

    def _start(self, task: TaskMessage, message: Message | Msg) -> None:
        """Start a task now: it counts as running until its result is in (``on_message`` has
        these lines inlined for a task that starts as it arrives)."""
        self.running += 1
        headers = message.headers
        # The correlation id goes with the work (to its handler and logs) as an argument:
        # setting the context variable here would cost a set and a reset per task.
        correlation = (headers.get(CORRELATION_HEADER) if headers else None) or task.id
        # The dispatcher's fast path first (a free agent whose handler never waits): the
        # result comes back here, and this is its ``then``.
        result = self.dispatcher.run_task_now(task, correlation)
        if result is None:
            self._dispatch(task, message, correlation)
            return
        self._finished()
        if message.reply:
            self.outlet.answer_task(message.reply, result, headers)

    def _dispatch(self, task: TaskMessage, message: Message | Msg, correlation: str) -> None:
        """A started task that the dispatcher's fast path did not run: its usual path."""
        headers = message.headers
        reply = message.reply
        then: Callable[[TaskResult], None] = self._done  # (no closure per task without a reply)
        if reply:

            def then(result: TaskResult) -> None:
                self._finished()
                self.outlet.answer_task(reply, result, headers)

        dispatcher = self.dispatcher
        try:  # the usual path (dispatch_task's, after its fast path)
            dispatcher.dispatch(dispatcher.task_run(task, then, None, correlation, None))
        except NoCapableAgent as exc:  # our last agent for this type left a moment ago
            self._finished()
            self._answer(task, _as_message(message), str(exc), type(exc).__name__)

    def _done(self, result: TaskResult) -> None:
        self._finished()

    def _finished(self) -> None:
        # Per task: only what the usual case needs (a keeper with nothing held does two checks).
        self.running -= 1
        if self.held:
            self._pump()
        if self._keeper is None:
            self._arm_soon()
        elif self.handoff is not None:
            self.handoff.finished()
        if self._idle is not None and self.running == 0 and not self._idle.done():
            self._idle.set_result(None)

    def _pump(self) -> None:
        """Start held tasks while slots are free (once, however deep inline work nests)."""
        if self._pumping or self._stopping:
            return
        self._pumping = True
        try:
            while self.held and self.running < self.capacity:
                _, _, task, message = heapq.heappop(self.held)
                self._start(task, message)
        finally:
            self._pumping = False

    # ------------------------------------------------------------------ the hand-off (on a cluster)

    @property
    def room(self) -> int:
        """Tasks this lane could start now: its free slots if nothing waits here, else 0 (and
        0 while it stops)."""
        if self.held or self._stopping:
            return 0
        return max(0, self.capacity - self.running)

    def take_handed(self, task: TaskMessage, message: Message) -> None:
        """Start a task another process offered (the caller checked :attr:`room`)."""
        self.stats.handed_in += 1
        self._start(task, message)

    def offer_next(self) -> Held:
        """The next waiting task, out of the queue while it is offered to another process."""
        return heapq.heappop(self.held)

    def keep(self, entry: Held) -> None:
        """An offered task nobody took: back in its place in the queue (and started if a slot
        freed up meanwhile)."""
        heapq.heappush(self.held, entry)
        self._pump()

    async def _give_back(self, other: bool) -> None:
        """The tasks that never started: republished if another process has the type (the
        keeper's subscription takes what no bounded one does), else an error result each."""
        held, self.held = sorted(self.held), []
        if not held:
            return
        for _, _, task, message in held:
            if other:
                try:
                    headers = dict(message.headers) if message.headers else None
                    await self.bus.publish(
                        message.subject, message.data, headers=headers, reply=message.reply
                    )
                    self.stats.handed_back += 1
                    continue
                except BusUnavailable:
                    pass
            self.stats.refused += 1
            error = f"node {self.node} stopped before running it; no other process takes {self.subject}"
            self._answer(task, message, error, "NodeStopping")
        if other:
            log.info(
                "stop: %d tasks of %s that never started handed back to the flock", len(held), self.subject
            )
        else:
            log.warning(
                "stop: %d tasks of %s that never started got an error result: no other process takes %s",
                len(held),
                self.subject,
                self.subject,
            )

    # ------------------------------------------------------------------ credit

    def _arm_soon(self) -> None:
        """Open a bounded subscription if credit is free (none while keeper or stopping)."""
        if self._arming is not None or self._stopping or self._keeper is not None or self.capacity <= 0:
            return
        if self.shared:  # a shared lane takes what the server sends it: no credit
            return
        credit = self.capacity + self.prefetch - self.running - len(self.held) - self.outstanding
        # A second subscription only for much credit: each costs a round trip to open.
        if credit > 0 and (not self._credits or credit >= max(1, (self.capacity + self.prefetch) // 2)):
            self._arming = self._tasks.spawn(self._arm(credit), name=f"flockrt-credit-{self.task_type}")

    async def _arm(self, limit: int) -> None:
        credit = _Credit(limit)
        self._credits.append(credit)  # before: tasks may arrive while subscribe() waits
        try:
            credit.subscription = await self.bus.subscribe(
                self.subject, partial(self._on_bounded, credit), queue=self.subject, max_msgs=limit, raw=True
            )
        except BusUnavailable:
            with contextlib.suppress(ValueError):
                self._credits.remove(credit)
        finally:
            self._arming = None
        if credit.received >= credit.limit and credit.subscription is not None:
            await credit.subscription.unsubscribe()  # all came while subscribe() waited
        self._arm_soon()

    # ------------------------------------------------------------------ the keeper

    async def _probe_loop(self) -> None:
        while True:
            self._probe_now.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.keeper_check):
                    await self._probe_now.wait()
            try:
                await self._probe()
            except Exception as exc:  # e.g. a subscribe refused while becoming keeper: try again next time
                log.warning("%s: looking for the keeper of %s failed: %r", self.node, self.subject, exc)

    async def _probe(self) -> None:
        """Become keeper if there is none, or only a weaker one."""
        if self._keeper is not None or self._stopping or self.capacity <= 0 or self.shared:
            return
        try:
            answer = await self.bus.request(
                keeper_subject(self.task_type), _CLAIMS.encode(self.claim), timeout=_PROBE_TIMEOUT
            )
        except BusUnavailable:
            return  # degraded: nothing reaches anyone now
        except (NoResponders, BusTimeout):
            await self._become_keeper("none answered")
            return
        try:
            claim = _CLAIM.decode(answer.data)
        except msgspec.DecodeError:
            return
        if claim.node != self.node and claim.rank < self.claim.rank:
            await self._become_keeper(f"{claim.node} has {claim.capacity} slots")

    async def _become_keeper(self, why: str) -> None:
        if self._keeper is not None or self._stopping:
            return
        self._claims = await self.bus.subscribe(keeper_subject(self.task_type), self._on_claim)
        self._keeper = await self.bus.subscribe(self.subject, self.on_message, queue=self.subject, raw=True)
        # A process alone with its task type is keeper from the start: news only when it takes over.
        quiet = not self.kept_before and why == "none answered"
        self.kept_before = True
        self.stats.keeper_changes += 1
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "%s keeps %s with %d slots (%s)",
            self.node,
            self.subject,
            self.capacity,
            why,
        )
        await self.bus.publish(keeper_subject(self.task_type), _CLAIMS.encode(self.claim))

    async def _step_down(self, claim: KeeperClaim) -> None:
        if self._keeper is None or self._stopping:
            return
        claims, self._claims = self._claims, None
        keeper, self._keeper = self._keeper, None
        if claims is not None:
            await claims.unsubscribe()
        await keeper.drain()
        self.stats.keeper_changes += 1
        log.info("%s leaves %s to %s (%d slots)", self.node, self.subject, claim.node, claim.capacity)
        self._arm_soon()

    def _on_claim(self, message: Message) -> None:
        """On the keeper subject: a probe (answer it) or another keeper's announcement."""
        try:
            claim = _CLAIM.decode(message.data)
        except msgspec.DecodeError:
            self.outlet.reject(message.subject, "not a keeper claim")
            return
        if claim.node == self.node or self._keeper is None or self._stopping:
            return  # (a stopping keeper lets the one it handed over to keep the type)
        if message.reply:
            self.outlet.send(message.reply, _CLAIMS.encode(self.claim), None)
        elif self.shared:  # (a shared lane never steps down)
            return
        elif claim.rank > self.claim.rank:
            self._tasks.spawn(self._step_down(claim))
        else:  # a weaker keeper: tell it
            self.outlet.send(message.subject, _CLAIMS.encode(self.claim), None)

    async def _on_standby(self, message: Message) -> None:
        """A stopping keeper hands its role over: take it, then say so."""
        if self._stopping or self.capacity <= 0:
            return  # no answer: the keeper asks another or gives up
        await self._become_keeper("the keeper stops")
        if message.reply:
            await self.bus.publish(message.reply, _CLAIMS.encode(self.claim))

    async def _hand_over(self) -> bool:
        """Whether another process took the keeper role over."""
        try:
            await self.bus.request(
                standby_subject(self.task_type), _CLAIMS.encode(self.claim), timeout=_HANDOVER_TIMEOUT
            )
        except (NoResponders, BusTimeout, BusUnavailable):
            return False
        return True

    async def _other_keeper(self) -> bool:
        """Whether another process takes the type: its keeper, or a shared lane, answers now."""
        try:
            await self.bus.request(
                keeper_subject(self.task_type), _CLAIMS.encode(self.claim), timeout=_PROBE_TIMEOUT
            )
        except (NoResponders, BusTimeout, BusUnavailable):
            return False
        return True
