"""NatsFlock: the flock across processes, speaking the AI Flock JSON messages over NATS.

It is a :class:`~flockrt.flock.local.LocalFlock` (local agents, directory, priority dispatcher) whose
agents are also reachable through NATS, and which reaches agents of other processes:

- agents announce on ``agent.announce`` and heartbeat on ``agent.<id>.heartbeat``; every
  process builds its directory from what it hears;
- for every task type a local agent handles, the process consumes ``tasks.<type>`` in the queue
  group ``tasks.<type>``, so each task is handled once across the flock; results go to
  ``task.result`` and to the reply subject of a request;
- for every capability a local agent offers, the process answers ``capability.<name>``
  requests (queue group ``capability.<name>``);
- each local agent receives ``agent.<id>.inbox`` (direct messages; a query is answered on the
  reply subject, or on the sender's inbox as a ``response``), ``agent.<id>.events`` and
  ``broadcast``.

Producers submit through NATS, so the queue groups spread the work; capability requests go to
a local agent first and across NATS otherwise. While NATS is unreachable the flock keeps working
in-process (the connection buffers what it publishes).

Malformed messages on any subject are counted in :attr:`invalid_messages` and logged with the
subject and the field; nothing crashes and every subscription lives on. Correlation ids travel
in the ``Correlation-Id`` header when they differ from the id the message already carries: a
task's correlation id is its id unless the header says otherwise, and a TaskResult carries in
the header the correlation id its task came with (none: it is the ``taskId``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

import msgspec

from flockrt._version import __version__
from flockrt.actors.correlation import correlation_id as current_correlation
from flockrt.actors.correlation import unique_id
from flockrt.actors.ref import ActorRef
from flockrt.actors.system import ActorSystem
from flockrt.actors.tasks import TaskOwner
from flockrt.agents.agent import Agent
from flockrt.agents.ports import AgentCard, Membership, WorkSource
from flockrt.agents.work import CapabilityCall, ProgressCallback
from flockrt.bus import remote
from flockrt.bus.connection import BusService, Message, NatsConnection, Subscription
from flockrt.bus.durable import DurableTasks, TaskConsumer
from flockrt.bus.remote import CORRELATION_HEADER
from flockrt.errors import (
    BusTimeout,
    BusUnavailable,
    FlockError,
    JetStreamError,
    NoCapableAgent,
    NoResponders,
    WorkFailed,
    WorkTimeout,
)
from flockrt.flock import batches
from flockrt.flock.api import FlockAPI
from flockrt.flock.batches import PRIORITIES
from flockrt.flock.directory import AgentInfo, Directory, StatusFilter
from flockrt.flock.local import LocalFlock
from flockrt.flock.stats import WorkStats
from flockrt.supervisor.spec import Restart
from flockrt.wire import subjects
from flockrt.wire.schema import (
    MSGPACK,
    AgentAnnouncement,
    AgentEvent,
    BatchItem,
    Broadcast,
    CapabilityRequest,
    CapabilityResponse,
    Codec,
    DirectMessage,
    DiscoveryRequest,
    Heartbeat,
    InvalidMessage,
    Priority,
    TaskBatchItem,
    TaskMessage,
    TaskResult,
)

__all__ = ["CORRELATION_HEADER", "ORIGIN_HEADER", "NatsFlock"]

ORIGIN_HEADER = "Flock-Origin"
"""On a broadcast published while NATS was unreachable: the process that already delivered it
to its own agents (a flockrt addition; other peers ignore it)."""

log = logging.getLogger("flockrt.flock")


_KV_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")  # what a key-value key may contain
_SUBJECT = re.compile(r"^[^\s*>]+$")  # a publishable subject: no whitespace, no wildcards

T = TypeVar("T")


class NatsFlock:
    """A flock whose agents work together with every other process on the same NATS.

    It HAS a :class:`~flockrt.flock.local.LocalFlock` (its agents, directory and dispatcher in
    this process) and feeds the dispatcher what arrives over NATS; results leave through the
    dispatcher's sink (:meth:`_publish_result`), with the correlation id of their own work.

    Args:
        system: The actor system the local agents live in.
        bus: The process's NATS connection (started or not; it may be degraded).
        node: This process's name, unique in the flock.
        heartbeat_interval: Seconds between heartbeats.
        codec: Shared encoders/decoders (and the payload size limit).
        batch_window: Seconds a ``submit(..., batch=True)`` waits for company before its batch
            goes out (the AI Flock batcher's window).
        batch_max: Messages per batch at most (the batcher's size cap; the payload limit also
            applies).
        durable: Run tasks through a JetStream work-queue stream (True for the defaults, or a
            configured DurableTasks): acked after success, redelivered with backoff after a
            failure or crash, dead-lettered after max deliveries. Every process of a flock must
            agree on this.
        persist_directory: Keep this process's agents in the JetStream key-value bucket
            FLOCK_AGENTS (entries expire after three missed heartbeats), and load it at start,
            so a new process sees the flock at once instead of after the next heartbeats.
    """

    def __init__(
        self,
        system: ActorSystem,
        bus: NatsConnection,
        *,
        node: str | None = None,
        heartbeat_interval: float = 30.0,
        directory: Directory | None = None,
        codec: Codec | None = None,
        batch_window: float = 0.005,
        batch_max: int = 100,
        durable: DurableTasks | bool = False,
        persist_directory: bool = False,
    ) -> None:
        self.local = LocalFlock(
            system,
            node=node or f"node-{uuid.uuid4().hex[:8]}",
            heartbeat_interval=heartbeat_interval,
            directory=directory,
            register=False,
        )
        self.system = system
        self.node = self.local.node
        self.heartbeat_interval = heartbeat_interval
        self.directory = self.local.directory
        self.dispatcher = self.local.dispatcher
        self.dispatcher.sink = self._publish_result
        self.dispatcher.fallback = self._request_remote
        self.bus = bus
        self.codec = codec or Codec()
        self.invalid_messages: Counter[str] = Counter()
        """Rejected messages by subject."""
        self._skill_subscriptions: dict[tuple[str, str], Subscription] = {}
        self._agent_subscriptions: dict[str, list[Subscription]] = {}
        self._subscriptions: list[Subscription] = []
        self._outbox: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._inflight = TaskOwner(f"NATS flock {self.node}", log)
        self._sweeper: asyncio.TimerHandle | None = None
        self.batch_window = batch_window
        self.batch_max = batch_max
        self._batch: list[BatchItem] = []
        self._batch_timer: asyncio.TimerHandle | None = None
        if durable is True:
            durable = DurableTasks(bus, self.codec)
        self.durable: DurableTasks | None = durable or None
        self._consumers: dict[str, TaskConsumer] = {}
        self._service: BusService | None = None
        self._served: set[str] = set()  # capabilities this process serves as service endpoints
        # Joined only while local agents handle tasks: a producer-only node taking batches
        # would just republish their tasks one by one.
        self._batch_subscription: Subscription | None = None
        self.persist_directory = persist_directory
        self._announcements: dict[str, AgentAnnouncement] = {}  # local agents, for the bucket
        self._result_waiters: dict[str, asyncio.Future[TaskResult]] = {}
        self._task_subjects: dict[str, str] = {}  # task type -> its checked subject
        self._results_subscription: Subscription | None = None
        self._discovered_at = -math.inf  # when this process last asked agents to re-announce
        self._origin = f"{self.node}-{uuid.uuid4().hex[:8]}"  # this process, in ORIGIN_HEADER
        system.register_extension(Membership, self)  # type: ignore[type-abstract]  # a key

    # ------------------------------------------------------------------ the local core

    @property
    def work_stats(self) -> WorkStats | None:
        """Counts and times work by outcome once the metrics layer sets it (None: off)."""
        return self.dispatcher.work_stats

    @work_stats.setter
    def work_stats(self, stats: WorkStats | None) -> None:
        self.dispatcher.work_stats = stats

    @property
    def tasks_finished(self) -> dict[str, int]:
        """Tasks run by this process's agents, by outcome."""
        return self.dispatcher.tasks_finished

    @property
    def queued_work(self) -> int:
        """Tasks and capability requests waiting for a free local agent."""
        return self.dispatcher.queued_work

    def has_skill(self, kind: str, key: str) -> bool:
        """Whether an agent of this process offers this capability or task type."""
        return self.dispatcher.has_skill(kind, key)

    def is_local(self, agent_id: str) -> bool:
        """Whether ``agent_id`` is an agent of this process."""
        return self.dispatcher.is_local(agent_id)

    def list_agents(self, status: StatusFilter = "online", capability: str | None = None) -> list[AgentInfo]:
        """Agents of the whole flock this process knows of, by status and capability."""
        return self.directory.list(status, capability)

    def get_agent(self, agent_id: str) -> AgentInfo | None:
        """One agent's info, or None."""
        return self.directory.get(agent_id)

    async def wait_for_agents(
        self, count: int, *, capability: str | None = None, timeout: float = 10.0
    ) -> list[AgentInfo]:
        """Wait until at least ``count`` agents (with ``capability``) are online anywhere (see
        :meth:`LocalFlock.wait_for_agents <flockrt.flock.local.LocalFlock.wait_for_agents>`)."""
        return await self.local.wait_for_agents(count, capability=capability, timeout=timeout)

    def on_result(self, listener: Callable[[TaskResult], None]) -> Callable[[], None]:
        """Call ``listener`` with the TaskResult of every task this process's agents run."""
        return self.dispatcher.on_result(listener)

    def new_task(self, task_type: str, data: Any = None, **options: Any) -> TaskMessage:
        """A TaskMessage from this node (see :func:`flockrt.flock.batches.new_task`)."""
        return batches.new_task(self.node, task_type, data, **options)

    def new_tasks(self, task_type: str, items: Iterable[Any], **options: Any) -> list[TaskMessage]:
        """A TaskMessage per item (see :func:`flockrt.flock.batches.new_tasks`)."""
        return batches.new_tasks(self.node, task_type, items, **options)

    async def send(
        self,
        to: str,
        message: Any,
        *,
        type: str = "command",
        sender: str = "flock",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Deliver a direct message (not a query) to agent ``to``, here or in another process."""
        if type == "query":
            raise ValueError("a query waits for its answer: use query()")
        await self.send_message(to, message, type=type, sender=sender, metadata=metadata)

    async def query(
        self,
        to: str,
        message: Any,
        *,
        sender: str = "flock",
        timeout: float = 30.0,
        metadata: dict[str, Any] | None = None,
    ) -> Any:
        """Ask agent ``to``, here or in another process, and return its answer."""
        return await self.send_message(
            to, message, type="query", sender=sender, timeout=timeout, metadata=metadata
        )

    # ------------------------------------------------------------------ lifecycle

    def durable_counts(self) -> dict[str, int]:
        """Durable-task events of this process, by event (empty unless durable)."""
        if self.durable is None:
            return {}
        events = self.durable.stats
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

    async def start(self) -> None:
        """Subscribe to the flock-wide subjects; local agents may be spawned before or after."""
        self._worker = asyncio.get_running_loop().create_task(self._work_outbox())
        self._subscriptions += [
            await self.bus.subscribe(subjects.ANNOUNCE, self._on_announce),
            await self.bus.subscribe("agent.*.heartbeat", self._on_heartbeat),
            await self.bus.subscribe(subjects.BROADCAST, self._on_broadcast),
            await self.bus.subscribe(subjects.DISCOVER, self._on_discover),
        ]
        # The NATS service API: `nats micro ls/info/stats` list this process's capabilities.
        self._service = await self.bus.add_service(
            "flockrt",
            __version__,
            description="flockrt agents; one endpoint per capability they offer",
            metadata={"node": self.node},
        )
        if self.persist_directory:
            await self._load_directory()
        await self._discover()  # the agents that started before this process re-announce
        if self.durable is not None:
            try:
                await self.durable.setup()
            except BusUnavailable:
                log.warning("NATS unreachable: the durable task stream is set up once it is back")
        self._schedule_sweep()

    async def spawn_pool(
        self,
        agent_class: type[Agent],
        count: int,
        *,
        id_prefix: str | None = None,
        restart: Restart = "permanent",
        **options: Any,
    ) -> ActorRef[Any]:
        """:meth:`LocalFlock.spawn_pool`, returning once the agents are subscribed and announced
        on NATS, so that work submitted right after (from any process) finds them."""
        pool = await self.local.spawn_pool(
            agent_class, count, id_prefix=id_prefix, restart=restart, **options
        )
        await self.flush()
        return pool

    async def flush(self) -> None:
        """Wait until what this flock queued for NATS (announcements, subscriptions of newly
        started agents, results) has gone out and the server has seen it.

        Useful right after spawning agents, before other processes are told to use them.
        """
        if self._worker is not None:
            await self._outbox.join()
        await self.bus.flush()

    async def close(self) -> None:
        """Stop taking messages from NATS; what was queued to publish is sent first."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._flush_batch()
        if self._worker is not None:
            await self._outbox.join()
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self._service is not None:
            await self._service.stop()
        for consumer in self._consumers.values():
            await consumer.stop()
        self._consumers.clear()
        subscriptions = self._subscriptions + list(self._skill_subscriptions.values())
        if self._results_subscription is not None:
            subscriptions.append(self._results_subscription)
        if self._batch_subscription is not None:
            subscriptions.append(self._batch_subscription)
            self._batch_subscription = None
        subscriptions += [s for subs in self._agent_subscriptions.values() for s in subs]
        for subscription in subscriptions:
            await subscription.unsubscribe()
        await self._inflight.close()

    def _schedule_sweep(self) -> None:
        # Offline detection is lazy in the directory; a periodic sweep makes transitions show up
        # (and notify subscribers) even when nobody asks.
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(self.heartbeat_interval, self._sweep)

    def _sweep(self) -> None:
        self.directory.sweep()
        self._schedule_sweep()

    # ------------------------------------------------------------------ AgentPort (local agents)

    def agent_started(self, card: AgentCard) -> WorkSource:
        source = self.local.agent_started(card)
        announcement = AgentAnnouncement(
            id=card.id,
            name=card.name,
            capabilities=list(card.capabilities),
            max_concurrent_tasks=card.max_concurrent_tasks,
            node=self.node,
        )
        self._later(lambda: self._join(card, announcement))
        return source

    def agent_heartbeat(self, heartbeat: Heartbeat) -> None:
        self.local.agent_heartbeat(heartbeat)
        self._later(lambda: self._publish(subjects.heartbeat(heartbeat.agent_id), heartbeat))
        announcement = self._announcements.get(heartbeat.agent_id)
        if announcement is not None and self.persist_directory:
            self._later(lambda: self._persist(announcement))  # keeps its entry from expiring

    def agent_stopped(self, agent_id: str) -> None:
        self.local.agent_stopped(agent_id)
        goodbye = Heartbeat(agent_id=agent_id, status="offline")
        self._later(lambda: self._leave(agent_id, goodbye))

    async def _join(self, card: AgentCard, announcement: AgentAnnouncement) -> None:
        agent_id = card.id
        if agent_id not in self._agent_subscriptions:
            self._agent_subscriptions[agent_id] = [
                await self.bus.subscribe(subjects.inbox(agent_id), self._on_inbox),
                await self.bus.subscribe(subjects.events(agent_id), self._on_event),
            ]
        for capability in card.capabilities:
            await self._serve_capability(capability)
        if card.task_types and self._batch_subscription is None:
            self._batch_subscription = await self.bus.subscribe(
                subjects.BATCH, self._on_batch, queue=subjects.BATCH
            )
        for task_type in card.task_types:
            if self.durable is not None:
                await self._consume_durably(task_type)
            else:
                await self._serve(("task", task_type), subjects.tasks(task_type), self._on_task)
        await self._publish(subjects.ANNOUNCE, announcement)
        self._announcements[agent_id] = announcement
        if self.persist_directory:
            await self._persist(announcement)

    # ------------------------------------------------------------------ persisted directory

    DIRECTORY_BUCKET = "FLOCK_AGENTS"

    @property
    def _directory_ttl(self) -> float:
        return max(3 * self.heartbeat_interval, 1.0)

    async def _persist(self, announcement: AgentAnnouncement) -> None:
        if not _KV_KEY.match(announcement.id):
            log.debug("agent id %r cannot be a key-value key; not persisted", announcement.id)
            return
        try:
            await self.bus.kv_put(
                self.DIRECTORY_BUCKET,
                announcement.id,
                self.codec.encode(announcement),
                ttl=self._directory_ttl,
            )
        except (BusUnavailable, BusTimeout, JetStreamError) as exc:  # best effort: heartbeats still work
            log.debug("directory entry for %s not persisted: %s", announcement.id, exc)

    async def _forget_persisted(self, agent_id: str) -> None:
        if self.persist_directory and _KV_KEY.match(agent_id):
            try:
                await self.bus.kv_delete(self.DIRECTORY_BUCKET, agent_id, ttl=self._directory_ttl)
            except (BusUnavailable, BusTimeout, JetStreamError) as exc:
                log.debug("directory entry for %s not removed: %s", agent_id, exc)

    async def _load_directory(self) -> None:
        try:
            entries = await self.bus.kv_items(self.DIRECTORY_BUCKET, ttl=self._directory_ttl)
        except (BusUnavailable, BusTimeout, JetStreamError) as exc:
            log.warning("persisted directory not loaded (%s); it fills from heartbeats instead", exc)
            return
        loaded = 0
        for key, data in entries.items():
            announcement = self._decode(
                Message(f"$KV.{self.DIRECTORY_BUCKET}.{key}", data, {}, ""), AgentAnnouncement
            )
            if announcement is not None and not self.is_local(announcement.id):
                self.directory.on_announcement(announcement)
                loaded += 1
        log.info("loaded %d agents from the persisted directory", loaded)

    async def _serve_capability(self, capability: str) -> None:
        """Answer capability.<name> in its queue group, as an endpoint of the process's service."""
        if capability in self._served or not self.has_skill("capability", capability):
            return
        assert self._service is not None, "start() the flock before its agents join"
        subject = subjects.capability(capability)
        await self._service.add_endpoint(
            _endpoint_name(capability),
            subject,
            self._on_capability,
            queue=subject,
            metadata={"capability": capability},
        )
        self._served.add(capability)

    async def _consume_durably(self, task_type: str) -> None:
        assert self.durable is not None
        consumer = self._consumers.get(task_type)
        if consumer is not None:
            consumer.wake()  # more capacity for this type
            return
        if self.has_skill("task", task_type):
            self._consumers[task_type] = await self.durable.consume(
                task_type,
                self._run_durable_task,
                capacity=lambda: self.dispatcher.capacity("task", task_type),
            )

    async def _run_durable_task(self, task: TaskMessage) -> TaskResult:
        # NoCapableAgent (our last agent for the type just left) raises: the task is retried.
        result = self.dispatcher.start_task(task)
        async with asyncio.timeout(task.timeout / 1000 if task.timeout is not None else None):
            return await result

    async def _serve(
        self, skill: tuple[str, str], subject: str, handler: Callable[[Message], Awaitable[None] | None]
    ) -> None:
        if skill not in self._skill_subscriptions and self.has_skill(*skill):
            self._skill_subscriptions[skill] = await self.bus.subscribe(subject, handler, queue=subject)

    async def _leave(self, agent_id: str, goodbye: Heartbeat) -> None:
        if not self.is_local(agent_id):
            for subscription in self._agent_subscriptions.pop(agent_id, []):
                await subscription.unsubscribe()
            self._announcements.pop(agent_id, None)
            await self._forget_persisted(agent_id)
        for skill, subscription in list(self._skill_subscriptions.items()):
            if not self.has_skill(*skill):  # its last local agent is gone: let others take it
                del self._skill_subscriptions[skill]
                await subscription.unsubscribe()
        for capability in list(self._served):
            if not self.has_skill("capability", capability) and self._service is not None:
                self._served.discard(capability)
                await self._service.remove_endpoint(_endpoint_name(capability))
        if self._batch_subscription is not None and not self.dispatcher.handles_tasks():
            subscription, self._batch_subscription = self._batch_subscription, None
            await subscription.unsubscribe()
        for task_type, consumer in list(self._consumers.items()):
            if not self.has_skill("task", task_type):
                del self._consumers[task_type]
                await consumer.stop()
        await self._publish(subjects.heartbeat(agent_id), goodbye)

    # ------------------------------------------------------------------ producers (flock-wide)

    async def submit(
        self,
        task_type: str,
        data: Any = None,
        *,
        priority: Priority = "medium",
        task_id: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        metadata: dict[str, Any] | None = None,
        batch: bool = False,
    ) -> TaskResult | str:
        """Publish a task on ``tasks.<type>``; one agent somewhere in the flock handles it.

        With ``wait``, returns its TaskResult (a request on that subject). With ``batch`` (and
        no ``wait``), the task joins the next ``batch.messages`` message, which leaves after
        ``batch_window`` seconds or ``batch_max`` tasks. While NATS is unreachable the task runs
        on a local agent if this process has one.

        Raises:
            NoCapableAgent: nobody handles ``task_type`` (no responders, none local).
            WorkTimeout: ``wait`` and no result within ``timeout`` seconds (default 30).
        """
        task = self.new_task(
            task_type, data, priority=priority, task_id=task_id, timeout=timeout, metadata=metadata
        )
        subject = self._task_subjects.get(task_type) or self._task_subject(task_type)
        # A Correlation-Id header only for a correlation id other than the task's own id
        # (receivers fall back to that; a header costs microseconds to build and to parse).
        current = current_correlation.get()
        headers = {CORRELATION_HEADER: current} if current and current != task.id else None
        if self.durable is not None:
            return await self._submit_durably(task, wait=wait, timeout=timeout)
        if not self.bus.connected and self.has_skill("task", task_type):
            return await self._run_here(task, wait=wait, timeout=timeout)
        if batch and not wait:
            self._add_to_batch(BatchItem(subject=subject, message=task))
            return task.id
        if not wait:
            await self.bus.publish(subject, self.codec.encode(task), headers=headers)
            return task.id
        limit = timeout if timeout is not None else 30.0
        reply = await self._request(subject, task, "task", task_type, limit, headers)
        return self.codec.decode(reply.subject, reply.data, TaskResult, reply.headers.get("Content-Type"))

    def _task_subject(self, task_type: str) -> str:
        subject = subjects.tasks(task_type)  # checks the type
        if len(self._task_subjects) < 1024:
            self._task_subjects[task_type] = subject
        return subject

    async def _submit_durably(
        self, task: TaskMessage, *, wait: bool, timeout: float | None
    ) -> TaskResult | str:
        """Store the task in the stream (never buffered: BusUnavailable while degraded).

        With ``wait``, the first ``ok`` TaskResult for it on ``task.result`` is returned; a
        failed attempt that will be retried is not the end, so error results are not awaited.
        """
        assert self.durable is not None
        if not wait:
            await self.durable.submit(task, headers={CORRELATION_HEADER: task.id})
            return task.id
        await self._watch_results()
        waiter: asyncio.Future[TaskResult] = asyncio.get_running_loop().create_future()
        self._result_waiters[task.id] = waiter
        try:
            await self.durable.submit(task, headers={CORRELATION_HEADER: task.id})
            outcome: TaskResult = await self.dispatcher.wait(
                waiter, "task", task.type, timeout if timeout is not None else 30.0
            )
            return outcome
        finally:
            self._result_waiters.pop(task.id, None)

    async def _watch_results(self) -> None:
        if self._results_subscription is None:
            self._results_subscription = await self.bus.subscribe(
                subjects.TASK_RESULT, self._on_result_message
            )

    async def _on_result_message(self, message: Message) -> None:
        if not self._result_waiters:
            return
        result = self._decode(message, TaskResult)
        if result is not None and result.status == "ok":
            waiter = self._result_waiters.get(result.task_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(result)

    @overload
    async def submit_many(
        self,
        task_type: str,
        items: Iterable[Any],
        *,
        priority: Priority = "medium",
        metadata: dict[str, Any] | None = None,
        results: Literal["each"] = "each",
        timeout: float | None = None,
    ) -> list[str]: ...

    @overload
    async def submit_many(
        self,
        task_type: str,
        items: Iterable[Any],
        *,
        priority: Priority = "medium",
        metadata: dict[str, Any] | None = None,
        results: Literal["batch"],
        timeout: float | None = None,
    ) -> list[TaskResult]: ...

    async def submit_many(
        self,
        task_type: str,
        items: Iterable[Any],
        *,
        priority: Priority = "medium",
        metadata: dict[str, Any] | None = None,
        results: Literal["each", "batch"] = "each",
        timeout: float | None = None,
    ) -> list[str] | list[TaskResult]:
        """Submit one task per item of ``items`` in as few NATS messages as the caps allow.

        The tasks travel in ``batch.messages`` messages; the process that takes a batch (queue
        group) runs the tasks it can and republishes the others on their own subjects, so each
        task is still handled once.

        ``results`` says how the results come back:

        - ``"each"`` (default): one TaskResult per task on ``task.result``, as for tasks
          submitted one by one; every AI Flock peer understands it. Returns the task ids, in
          order.
        - ``"batch"``: the batcher applied to results. Each batch message is a request, and the
          process that takes it answers with ONE message: the array of the batch's TaskResults,
          in order, on this process's reply subject (nothing on ``task.result``). Returns the
          TaskResults, in order, once all have come back. A flockrt extension: the process
          taking the batch must be a flockrt process.

        Raises:
            NoCapableAgent: with ``results="batch"``, no process takes batches.
            WorkTimeout: with ``results="batch"``, the results did not all come back within
                ``timeout`` seconds (default 30).
            ValueError: ``results="batch"`` in durable mode (tasks are stored one by one).
        """
        subject = self._task_subjects.get(task_type) or self._task_subject(task_type)
        tasks = self.new_tasks(task_type, items, priority=priority, metadata=metadata, timeout=timeout)
        if results == "batch":
            return await self._submit_batch_for_results(task_type, tasks, timeout)
        if self.durable is not None:  # each task is stored on its own (dedup by id)
            for task in tasks:
                await self.durable.submit(task, headers={CORRELATION_HEADER: task.id})
            return [task.id for task in tasks]
        if not self.bus.connected and self.has_skill("task", task_type):
            self.dispatcher.dispatch_tasks(tasks)
            return [task.id for task in tasks]
        batch = [BatchItem(subject=subject, message=task) for task in tasks]
        for start in range(0, len(batch), self.batch_max):
            await self._publish_batch(batch[start : start + self.batch_max])
        return [task.id for task in tasks]

    async def _submit_batch_for_results(
        self, task_type: str, tasks: list[TaskMessage], timeout: float | None
    ) -> list[TaskResult]:
        if self.durable is not None:
            raise ValueError('results="batch" is not available in durable mode: tasks are stored one by one')
        limit = timeout if timeout is not None else 30.0
        if not self.bus.connected and self.has_skill("task", task_type):
            futures = [self.dispatcher.start_task(task) for task in tasks]
            return list(await self.dispatcher.wait(asyncio.gather(*futures), "task", task_type, limit))
        subject = self._task_subjects.get(task_type) or self._task_subject(task_type)
        batches = [
            [BatchItem(subject=subject, message=task) for task in tasks[start : start + self.batch_max]]
            for start in range(0, len(tasks), self.batch_max)
        ]
        if len(batches) == 1:  # no Task for gather to wrap it in
            return await self._request_batch(batches[0], task_type, limit)
        replies = await asyncio.gather(*(self._request_batch(batch, task_type, limit) for batch in batches))
        return [result for reply in replies for result in reply]

    async def _request_batch(
        self, items: list[BatchItem], task_type: str, timeout: float
    ) -> list[TaskResult]:
        data = self.codec.encode(items)
        if len(data) > self.codec.max_bytes and len(items) > 1:  # over the payload limit: halve
            middle = len(items) // 2
            return [
                *await self._request_batch(items[:middle], task_type, timeout),
                *await self._request_batch(items[middle:], task_type, timeout),
            ]
        try:
            reply = await self.bus.request(subjects.BATCH, data, timeout=timeout)
        except NoResponders:
            raise NoCapableAgent("task", task_type) from None
        except BusTimeout:
            raise WorkTimeout("task", task_type, timeout) from None
        results = self.codec.decode(
            reply.subject, reply.data, list[TaskResult], reply.headers.get("Content-Type")
        )
        if len(results) != len(items):
            raise InvalidMessage(
                reply.subject, None, f"{len(results)} results for a batch of {len(items)} tasks"
            )
        return results

    async def _publish_batch(self, items: list[BatchItem]) -> None:
        data = self.codec.encode(items)
        if len(data) > self.codec.max_bytes and len(items) > 1:  # over the payload limit: halve
            middle = len(items) // 2
            await self._publish_batch(items[:middle])
            await self._publish_batch(items[middle:])
            return
        await self.bus.publish(subjects.BATCH, data)

    def _add_to_batch(self, item: BatchItem) -> None:
        self._batch.append(item)
        if len(self._batch) >= self.batch_max:
            self._flush_batch()
        elif self._batch_timer is None:
            self._batch_timer = asyncio.get_running_loop().call_later(self.batch_window, self._flush_batch)

    def _flush_batch(self) -> None:
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        items, self._batch = self._batch, []
        if items:
            self._later(lambda: self._publish_batch(items))

    async def request_capability_response(
        self,
        capability: str,
        parameters: Any = None,
        *,
        timeout: float = 30.0,
        progress: ProgressCallback | None = None,
    ) -> CapabilityResponse:
        """Have a capable agent do ``capability``: a local one if there is one, else across NATS
        (:meth:`request_capability` is this answer's result).

        ``progress`` hears what a local agent reports while it works; the wire contract has no
        progress messages, so an agent in another process reports none.

        Raises:
            NoCapableAgent: no agent anywhere offers it.
            WorkTimeout: no answer within ``timeout`` seconds.
            WorkFailed: the agent's handler raised.
        """
        return await self.dispatcher.request_capability_response(
            capability, parameters, timeout=timeout, progress=progress
        )

    async def request_capability(
        self,
        capability: str,
        parameters: Any = None,
        *,
        timeout: float = 30.0,
        progress: ProgressCallback | None = None,
    ) -> Any:
        """Have a capable agent do ``capability`` (see :meth:`request_capability_response`)."""
        response = await self.request_capability_response(
            capability, parameters, timeout=timeout, progress=progress
        )
        return response.result

    async def _request_remote(
        self,
        capability: str,
        parameters: Any = None,
        *,
        timeout: float = 30.0,
        progress: ProgressCallback | None = None,
    ) -> CapabilityResponse:
        """The dispatcher's fallback: a capability no local agent offers, across NATS."""
        return await remote.request_capability_response(
            self.bus, self.codec, capability, parameters, requester=self.node, timeout=timeout
        )

    async def _run_here(self, task: TaskMessage, *, wait: bool, timeout: float | None) -> TaskResult | str:
        """Run ``task`` on a local agent (while NATS is unreachable)."""
        if not wait:
            self.dispatcher.dispatch_task(task)
            return task.id
        outcome: TaskResult = await self.dispatcher.wait(
            self.dispatcher.start_task(task), "task", task.type, timeout
        )
        return outcome

    async def send_message(
        self,
        to: str,
        message: Any,
        *,
        type: str = "command",
        sender: str = "flock",
        timeout: float = 30.0,
        metadata: dict[str, Any] | None = None,
    ) -> Any:
        """Send a direct message to agent ``to``, here or in another process."""
        if self.is_local(to):
            return await self.local.send_message(
                to, message, type=type, sender=sender, timeout=timeout, metadata=metadata
            )
        answer = await remote.send_direct(
            self.bus, self.codec, to, message, type=type, sender=sender, timeout=timeout, metadata=metadata
        )
        return answer.message if answer is not None else None

    async def broadcast_all(self, type: str, message: Any = None, data: Any = None) -> None:
        """Deprecated: :meth:`broadcast` is flock-wide now."""
        warnings.warn("NatsFlock.broadcast_all is now broadcast", DeprecationWarning, stacklevel=2)
        await self.broadcast(type, message, data)

    async def broadcast(self, type: str, message: Any = None, data: Any = None) -> None:
        """Broadcast to every agent of the flock (local ones get it through NATS too)."""
        payload = Broadcast(type=type, message=message, data=data)
        headers = None
        if not self.bus.connected:
            # Degraded: local agents get it now; the buffered copy goes out on reconnect,
            # marked so that this process does not deliver it a second time.
            self.local.deliver_broadcast(payload)
            headers = {ORIGIN_HEADER: self._origin}
        await self.bus.publish(subjects.BROADCAST, self.codec.encode(payload), headers=headers)

    async def _request(
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

    # ------------------------------------------------------------------ inbound

    def _decode(self, message: Message, type: type[T]) -> T | None:
        headers = message.headers
        try:
            content_type = headers.get("Content-Type") if headers else None  # most have no headers
            return self.codec.decode(message.subject, message.data, type, content_type)
        except InvalidMessage as exc:
            self.invalid_messages[message.subject] += 1
            log.warning(
                "%s (rejected %d on this subject so far)", exc, self.invalid_messages[message.subject]
            )
            return None

    async def _on_announce(self, message: Message) -> None:
        announcement = self._decode(message, AgentAnnouncement)
        if announcement is not None and not self.is_local(announcement.id):
            self.directory.on_announcement(announcement)

    async def _on_heartbeat(self, message: Message) -> None:
        heartbeat = self._decode(message, Heartbeat)
        if heartbeat is None or self.is_local(heartbeat.agent_id):
            return
        if heartbeat.status == "offline":
            self.directory.mark_offline(heartbeat.agent_id)
            return
        if self.directory.get(heartbeat.agent_id) is None:
            # Heard of only now, by a heartbeat: its announcement went by before we listened
            # (or while NATS was away). Ask for announcements, at most once per interval.
            now = time.monotonic()
            if now - self._discovered_at >= self.heartbeat_interval:
                self._later(self._discover)
        self.directory.on_heartbeat(heartbeat)

    async def _discover(self) -> None:
        self._discovered_at = time.monotonic()
        await self._publish(subjects.DISCOVER, DiscoveryRequest(requester=self.node))

    async def _on_discover(self, message: Message) -> None:
        request = self._decode(message, DiscoveryRequest)
        if request is None or request.requester == self.node:
            return
        for announcement in list(self._announcements.values()):
            await self._publish(subjects.ANNOUNCE, announcement)

    async def _on_batch(self, message: Message) -> None:
        items: Sequence[TaskBatchItem | BatchItem] | None
        try:  # a batch of tasks only (as submit_many sends) decodes in one pass
            items = self.codec.decode(
                message.subject, message.data, list[TaskBatchItem], message.headers.get("Content-Type")
            )
        except InvalidMessage:  # anything else, item by item (naming the bad ones)
            items = self._decode(message, list[BatchItem])
        if items is None:
            if message.reply:
                await self._publish(message.reply, [], message.headers)
            return
        if message.reply:  # submit_many(..., results="batch"): one array of results back
            if items:
                self._answer_batch(message, items)
            else:
                await self._publish(message.reply, [], message.headers)
            return
        tasks: list[TaskMessage] = []
        foreign: list[BatchItem | TaskBatchItem] = []
        runnable: dict[str, bool] = {}  # subject -> self._runs_here(subject), per batch
        for item in items:
            runs = runnable.get(item.subject)
            if runs is None:
                runs = runnable[item.subject] = self._runs_here(item.subject)
            if runs:
                try:
                    task = _as_task(item)
                except msgspec.ValidationError as exc:
                    self.invalid_messages[message.subject] += 1
                    log.warning("invalid task in a batch for %s: %s", item.subject, exc)
                    continue
                if self.has_skill("task", task.type):
                    tasks.append(task)
                else:  # on our subject, of a type nobody here handles: as _on_task answers it
                    self._publish_result(_no_agent(task), None)
            elif _SUBJECT.match(item.subject) and item.subject != subjects.BATCH:
                foreign.append(item)
            else:
                self.invalid_messages[message.subject] += 1
                log.warning("batch item with an unusable subject %r dropped", item.subject)
        # Ours, in a few units of work (results each on task.result, as for tasks one by one).
        self.dispatcher.dispatch_tasks(tasks)
        for item in foreign:  # not ours to run: send each on by itself, to whoever takes it
            await self._publish(item.subject, item.message)

    def _runs_here(self, subject: str) -> bool:
        """Whether a local agent runs tasks published on ``subject``."""
        return subject.startswith("tasks.") and self.has_skill("task", subject[len("tasks.") :])

    def _answer_batch(self, message: Message, items: Sequence[TaskBatchItem | BatchItem]) -> None:
        """Run a batch's tasks and answer its request with one array of their TaskResults, in
        order, once the last one is in. Those results do not go to ``task.result``."""
        reply, headers = message.reply, _outgoing_headers(message.headers)

        def answer(results: list[TaskResult]) -> None:
            try:
                self.bus.publish_nowait(reply, self.codec.encode(results), headers=headers)
            except BusUnavailable as exc:
                log.debug("batch results not published: %s", exc)

        subject = items[0].subject
        if type(items[0]) is TaskBatchItem and self._runs_here(subject):  # all are TaskBatchItems
            same = [item.message for item in items if item.subject == subject]
            if len(same) == len(items):  # the usual batch: all ours, their results the answer
                try:
                    self.dispatcher.dispatch_tasks(same, answer, publish=False)
                    return
                except NoCapableAgent:  # a task's type is not its subject's: nothing was queued
                    pass
        tasks: list[TaskMessage] = []
        places: list[int] = []  # where each of `tasks` is in the batch
        others: list[tuple[int, TaskResult | tuple[str, TaskMessage]]] = []  # done, or to forward
        runnable: dict[str, bool] = {}  # subject -> self._runs_here(subject), per batch
        for index, item in enumerate(items):
            try:
                task = _as_task(item)
            except msgspec.ValidationError as exc:
                self.invalid_messages[message.subject] += 1
                log.warning("invalid task in a batch for %s: %s", item.subject, exc)
                error = f"invalid task: {exc}"
                others.append((index, TaskResult(task_id="", processed_by="", status="error", error=error)))
                continue
            runs = runnable.get(item.subject)
            if runs is None:
                runs = runnable[item.subject] = self._runs_here(item.subject)
            if runs and self.has_skill("task", task.type):
                tasks.append(task)
                places.append(index)
            elif runs:  # on our subject, of a type nobody here handles: as _on_task answers it
                others.append((index, _no_agent(task)))
            elif _SUBJECT.match(item.subject) and item.subject != subjects.BATCH:
                others.append((index, (item.subject, task)))
            else:
                self.invalid_messages[message.subject] += 1
                log.warning("batch item with an unusable subject %r", item.subject)
                error = f"unusable subject {item.subject!r}"
                failed = TaskResult(task_id=task.id, processed_by="", status="error", error=error)
                others.append((index, failed))
        if not others:
            self.dispatcher.dispatch_tasks(tasks, answer, publish=False)
            return
        results: list[TaskResult | None] = [None] * len(items)
        missing = len(items)

        def settle(index: int, result: TaskResult) -> None:
            nonlocal missing
            results[index] = result
            missing -= 1
            if missing == 0:
                answer(results)  # type: ignore[arg-type]  # no None is left

        def ours(outcomes: list[TaskResult]) -> None:
            for index, result in zip(places, outcomes, strict=True):
                settle(index, result)

        if tasks:
            self.dispatcher.dispatch_tasks(tasks, ours, publish=False)
        foreign: list[tuple[int, str, TaskMessage]] = []
        for index, other in others:
            if isinstance(other, TaskResult):
                settle(index, other)
            else:
                foreign.append((index, *other))
        if foreign:  # not ours to run: ask whoever takes their subjects, one by one
            self._spawn(self._forward_batch_items(foreign, settle))

    async def _forward_batch_items(
        self, items: list[tuple[int, str, TaskMessage]], settle: Callable[[int, TaskResult], None]
    ) -> None:
        async def forward(index: int, subject: str, task: TaskMessage) -> None:
            timeout = task.timeout / 1000 if task.timeout else 30.0
            try:
                reply = await self._request(subject, task, "task", task.type, timeout, None)
                result = self.codec.decode(
                    reply.subject, reply.data, TaskResult, reply.headers.get("Content-Type")
                )
            except (FlockError, ValueError) as exc:
                result = TaskResult(task_id=task.id, processed_by="", status="error", error=str(exc))
            settle(index, result)

        await asyncio.gather(*(forward(*item) for item in items))

    async def _on_broadcast(self, message: Message) -> None:
        if message.headers.get(ORIGIN_HEADER) == self._origin:
            return  # delivered here already, when it was sent while NATS was away
        broadcast = self._decode(message, Broadcast)
        if broadcast is not None:
            self.local.deliver_broadcast(broadcast)

    def _on_task(self, message: Message) -> None:
        # Synchronous, like everything on a task's way to its agent: a subscription calls a
        # plain function without a coroutine of its own.
        task = self._decode(message, TaskMessage)
        if task is None:
            if message.reply:
                error = TaskResult(task_id="", processed_by="", status="error", error="invalid task message")
                self._publish_nowait(message.reply, error)
            return
        correlation = message.headers.get(CORRELATION_HEADER) if message.headers else None
        then: Callable[[TaskResult], None] | None = None
        if message.reply:
            reply, headers = message.reply, dict(message.headers)

            def then(result: TaskResult) -> None:
                self._publish_nowait(reply, result, headers)

        try:
            # The correlation id goes with the work (to its handler and logs) as an argument:
            # setting the context variable here would cost a set and a reset per task. The
            # fast path of dispatch_task first, without the detour.
            self.dispatcher.dispatch_task(task, then, correlation=correlation or task.id)
        except NoCapableAgent as exc:  # our last agent for this type left a moment ago
            failed = TaskResult(task_id=task.id, processed_by="", status="error", error=str(exc))
            self._publish_result(failed, None)
            if then is not None:
                then(failed)

    def _on_capability(self, message: Message) -> None:
        """Answer a capability request when its work finishes: at once on the dispatcher's fast
        path (a handler that never waits: no Work, no Task, no timer), else from the agent's
        runner or at the deadline."""
        request = self._decode(message, CapabilityRequest)
        if request is None:
            if message.reply:
                self._publish_nowait(message.reply, CapabilityResponse(error="invalid capability request"))
            return
        reply, headers, correlation_id = message.reply, message.headers, request.correlation_id
        # The id the requester's logs know it by reaches the agent's work and its logs.
        work_correlation = (headers.get(CORRELATION_HEADER) if headers else None) or correlation_id
        skill = self.dispatcher.skill("capability", request.capability)
        if skill is not None and self.dispatcher.run_now(
            skill,
            request.parameters,
            work_correlation,
            self._deliver_answer,
            (correlation_id, reply, headers),
        ):
            return
        answered = False
        timer: asyncio.TimerHandle | None = None
        stats_key = request.capability

        def answer(response: CapabilityResponse, outcome: str) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            if timer is not None:
                timer.cancel()
            if reply:
                self._send_answer(reply, response, headers)
            stats = self.dispatcher.work_stats
            if stats is not None:
                stats.record("capability", stats_key, outcome, time.monotonic() - work.enqueued)

        def on_done(work: CapabilityCall, value: Any, error: WorkFailed | None) -> None:
            response = _capability_response(correlation_id, work.agent_id, value, error)
            answer(response, "ok" if error is None else "error")

        work = CapabilityCall(
            key=request.capability,
            parameters=request.parameters,
            priority=PRIORITIES["medium"],
            on_done=on_done,
            correlation_id=work_correlation,
        )
        try:
            self.dispatcher.dispatch(work)
        except FlockError as exc:
            answer(CapabilityResponse(correlation_id=correlation_id, error=str(exc)), "error")
            return
        if not answered:  # it runs (or waits for an agent) for a while: answer by the deadline
            timeout = request.timeout / 1000
            # A requester's future, cancelled at the deadline: work that has not started by then
            # is skipped.
            work.future = asyncio.get_running_loop().create_future()

            def expire() -> None:
                assert work.future is not None
                work.future.cancel()
                late = WorkTimeout("capability", request.capability, timeout)
                answer(CapabilityResponse(correlation_id=correlation_id, error=str(late)), "timeout")

            timer = asyncio.get_running_loop().call_later(timeout, expire)

    def _deliver_answer(
        self,
        origin: tuple[str | None, str, Mapping[str, str]],
        agent_id: str,
        value: Any,
        error: WorkFailed | None,
        seconds: float,
    ) -> None:
        """A capability request ran on the dispatcher's fast path: answer it."""
        correlation_id, reply, headers = origin
        if reply:
            self._send_answer(reply, _capability_response(correlation_id, agent_id, value, error), headers)

    def _send_answer(self, reply: str, response: CapabilityResponse, headers: Mapping[str, str]) -> None:
        """Publish the answer to a capability request. One that cannot be sent (a result that
        does not encode as JSON or msgpack, or is over NATS's size limit) is replaced by an
        answer that says so: the requester hears of it rather than waiting in vain."""
        try:
            self._publish_nowait(reply, response, headers)
            return
        except Exception as exc:
            problem = exc
        log.warning("the answer of %s could not be sent: %r", response.agent_id or "the flock", problem)
        failed = CapabilityResponse(
            correlation_id=response.correlation_id,
            agent_id=response.agent_id,
            error=f"the answer could not be sent: {problem!r}",
        )
        try:
            self._publish_nowait(reply, failed, headers)
        except Exception:
            log.exception("nor could the error answer")

    async def _on_inbox(self, message: Message) -> None:
        direct = self._decode(message, DirectMessage)
        if direct is None:
            return
        if direct.type != "query":
            try:
                await self.local.send_message(
                    direct.to,
                    direct.message,
                    type=direct.type,
                    sender=direct.sender,
                    metadata=direct.metadata,
                )
            except FlockError as exc:
                log.warning("direct message %s for %s not delivered: %s", direct.id, direct.to, exc)
            return
        self._spawn(self._answer_query(message, direct))

    async def _answer_query(self, message: Message, query: DirectMessage) -> None:
        answer: Any = None
        error: str | None = None
        try:
            answer = await self.local.send_message(
                query.to, query.message, type="query", sender=query.sender, metadata=query.metadata
            )
        except FlockError as exc:
            error = str(exc)
        response = DirectMessage(
            id=unique_id(),
            sender=query.to,
            to=query.sender,
            message=answer,
            type="response",
            correlation_id=query.correlation_id,
            metadata={"error": error} if error else None,
        )
        if message.reply:
            await self._publish(message.reply, response, message.headers)
        else:
            try:
                await self._publish(subjects.inbox(query.sender), response, message.headers)
            except ValueError as exc:  # the sender's name cannot be a subject: nowhere to answer
                log.warning("query %s: cannot answer %r: %s", query.id, query.sender, exc)

    async def _on_event(self, message: Message) -> None:
        event = self._decode(message, AgentEvent)
        agent_id = message.subject.split(".")[1]
        if event is not None and self.is_local(agent_id):
            try:
                card = self.dispatcher.member(agent_id)
                if card is not None:
                    card.ref.tell(event)
            except FlockError as exc:
                log.warning("event for %s not delivered: %s", agent_id, exc)

    # ------------------------------------------------------------------ plumbing

    def _publish_result(self, result: TaskResult, correlation: str | None) -> None:
        """The dispatcher's sink: a finished task's result on ``task.result``.

        The correlation id of the task's work travels on, in the header, unless it is the
        task's id, which the result carries as taskId anyway (a header repeating it would cost
        about 7 us a result to build and parse, a fifth of a fan-out task's whole cost)."""
        headers = {CORRELATION_HEADER: correlation} if correlation and correlation != result.task_id else None
        try:
            self.bus.publish_nowait(subjects.TASK_RESULT, self.codec.encode(result), headers=headers)
        except BusUnavailable as exc:  # closing: nothing more goes out
            log.debug("result of %s not published: %s", result.task_id, exc)

    def _publish_nowait(self, subject: str, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        """Publish from synchronous code (a finished task's result), without an outbox turn."""
        msgpack = headers is not None and headers.get("Content-Type") == MSGPACK
        try:
            self.bus.publish_nowait(
                subject, self.codec.encode(payload, msgpack=msgpack), headers=_outgoing_headers(headers)
            )
        except BusUnavailable as exc:  # closing: nothing more goes out
            log.debug("not published to %s: %s", subject, exc)

    async def _publish(self, subject: str, payload: Any, headers: dict[str, str] | Any = None) -> None:
        msgpack = bool(headers) and headers.get("Content-Type") == MSGPACK
        try:
            await self.bus.publish(
                subject, self.codec.encode(payload, msgpack=msgpack), headers=_outgoing_headers(headers)
            )
        except BusUnavailable as exc:  # closing: nothing more goes out
            log.debug("not published to %s: %s", subject, exc)

    def _later(self, job: Callable[[], Awaitable[None]]) -> None:
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

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._inflight.spawn(coroutine)


def _capability_response(
    correlation_id: str | None, agent_id: str, value: Any, error: WorkFailed | None
) -> CapabilityResponse:
    """The answer to a capability request whose work finished."""
    if error is None:
        return CapabilityResponse(correlation_id=correlation_id, result=value, agent_id=agent_id)
    return CapabilityResponse(correlation_id=correlation_id, agent_id=error.agent_id, error=repr(error.cause))


def _no_agent(task: TaskMessage) -> TaskResult:
    """The error result of a task no local agent can run."""
    error = str(NoCapableAgent("task", task.type))
    return TaskResult(task_id=task.id, processed_by="", status="error", error=error)


def _as_task(item: TaskBatchItem | BatchItem) -> TaskMessage:
    """The task a batch item carries (raises msgspec.ValidationError if it is not one)."""
    if isinstance(item.message, TaskMessage):
        return item.message
    return msgspec.convert(item.message, TaskMessage)


def _outgoing_headers(headers: Mapping[str, str] | None) -> dict[str, str] | None:
    """Of an incoming message's headers, those an answer carries on (or None)."""
    if not headers:
        return None
    kept = {k: v for k, v in headers.items() if k in (CORRELATION_HEADER, "Content-Type")}
    return kept or None


def _endpoint_name(capability: str) -> str:
    """Service API endpoint names allow letters, digits, '-' and '_' only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", capability)


if TYPE_CHECKING:  # both flocks satisfy the one interface (mypy checks it here)
    _nats: FlockAPI = cast(NatsFlock, None)
    _local: FlockAPI = cast(LocalFlock, None)
