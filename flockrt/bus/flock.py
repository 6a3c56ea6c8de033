"""NatsFlock: the flock across processes, speaking the AI Flock JSON messages over NATS.

It implements the Flock interface (:class:`~flockrt.flock.api.FlockAPI`) by composition:

- a :class:`~flockrt.flock.local.LocalFlock` core: the local agents, the directory, and the
  dispatcher that hands them work;
- an :class:`~flockrt.bus.outlet.Outlet`: decoding (bad messages are counted in
  :attr:`invalid_messages` and logged, never raised), publishing, the outbox, and the sink of
  finished tasks' results, which carries each result's own correlation id in the
  ``Correlation-Id`` header when it differs from the ``taskId``;
- an :class:`~flockrt.bus.intake.Intake`: the queue groups on ``tasks.<type>``,
  ``capability.<name>`` and ``batch.messages`` through which NATS work reaches local agents;
- a :class:`~flockrt.bus.presence.Presence`: announcements, heartbeats, discovery and the
  persisted directory;
- a :class:`~flockrt.bus.batcher.Batcher` for outgoing ``batch.messages``.

The flock itself delivers ``agent.<id>.inbox`` (direct messages; a query is answered on the
reply subject, or on the sender's inbox as a ``response``), ``agent.<id>.events`` and
``broadcast`` to local agents, and is what producers call: tasks are published so the queue
groups spread them; capability requests go to a local agent first and across NATS otherwise.
While NATS is unreachable the flock keeps working in-process (the connection buffers what it
publishes).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, cast, overload

from flockrt._version import __version__
from flockrt.actors.correlation import correlation_id as current_correlation
from flockrt.actors.ref import ActorRef
from flockrt.actors.system import ActorSystem
from flockrt.agents.agent import Agent
from flockrt.agents.ports import AgentCard, Membership, WorkSource
from flockrt.agents.work import ProgressCallback
from flockrt.bus import remote
from flockrt.bus.batcher import Batcher
from flockrt.bus.connection import Message, NatsConnection, Subscription
from flockrt.bus.direct import send_checked
from flockrt.bus.durable import DurableTasks
from flockrt.bus.inboxes import Inboxes
from flockrt.bus.intake import Intake
from flockrt.bus.outlet import Outlet
from flockrt.bus.presence import Presence
from flockrt.bus.remote import CORRELATION_HEADER
from flockrt.bus.results import ResultWaiters
from flockrt.config import NatsLimits
from flockrt.errors import BusUnavailable, NoCapableAgent, NoResponders
from flockrt.flock import batches
from flockrt.flock.api import FlockAPI
from flockrt.flock.directory import AgentInfo, Directory, StatusFilter
from flockrt.flock.local import LocalFlock
from flockrt.flock.stats import WorkStats
from flockrt.supervisor.spec import Restart
from flockrt.wire import subjects
from flockrt.wire.schema import (
    AgentAnnouncement,
    BatchItem,
    Broadcast,
    CapabilityResponse,
    Codec,
    Heartbeat,
    Priority,
    TaskMessage,
    TaskResult,
)

__all__ = ["CORRELATION_HEADER", "ORIGIN_HEADER", "NatsFlock"]

ORIGIN_HEADER = "Flock-Origin"
"""On a broadcast published while NATS was unreachable: the process that already delivered it
to its own agents (a flockrt addition; other peers ignore it)."""

log = logging.getLogger("flockrt.flock")


class NatsFlock:
    """A flock whose agents work together with every other process on the same NATS.

    It HAS a :class:`~flockrt.flock.local.LocalFlock` (its agents, directory and dispatcher in
    this process) and feeds the dispatcher what arrives over NATS; results leave through the
    dispatcher's sink (:meth:`Outlet.publish_result <flockrt.bus.outlet.Outlet.publish_result>`).

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
        limits: What this process accepts from others over NATS: id lengths, the directory's
            size and eviction times, the discovery answer rate (docs/flock.md, "Limits");
            ``[nats]``'s defaults if None. Ignored for the directory if ``directory`` is given.
        prefetch: Tasks of a type taken beyond the free slots of its local agents
            (docs/flock.md, "Capacity-aware intake").
        max_held: Core mode: tasks of a type held beyond ``prefetch`` before more are refused.
        ack_wait: Seconds of a durable task without news before JetStream redelivers it.
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
        limits: NatsLimits | None = None,
        prefetch: int = 1,
        ack_wait: float = 10.0,
        max_held: int = 10000,
    ) -> None:
        limits = limits or NatsLimits()
        if directory is None:
            directory = Directory(
                heartbeat_interval,
                max_agents=limits.directory_max_agents,
                unannounced_ttl=limits.unannounced_ttl,
                offline_ttl=limits.offline_ttl,
            )
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
        self.bus = bus
        self.codec = codec or Codec()
        self.outlet = Outlet(bus, self.codec, self.node)
        """How this flock talks on the bus (and the sink of its tasks' results)."""
        self.invalid_messages = self.outlet.invalid
        """Rejected messages by subject."""
        self.dispatcher.sink = self.outlet.publish_result
        self.dispatcher.fallback = self._request_remote
        self._subscriptions: list[Subscription] = []
        self.batcher = Batcher(self.outlet, window=batch_window, max_items=batch_max)
        """Outgoing ``batch.messages`` (``submit(..., batch=True)``, ``submit_many``)."""
        if durable is True:
            durable = DurableTasks(bus, self.codec, ack_wait=ack_wait)
        self.durable: DurableTasks | None = durable or None
        self.intake = Intake(
            self.outlet,
            self.dispatcher,
            node=self.node,
            version=__version__,
            durable=self.durable,
            prefetch=prefetch,
            max_held=max_held,
        )
        """What this process takes from NATS for its agents."""
        self.presence = Presence(
            self.outlet,
            self.directory,
            self.dispatcher,
            node=self.node,
            heartbeat_interval=heartbeat_interval,
            persist=persist_directory,
            limits=limits,
        )
        """How its agents are known across the flock, and others' here."""
        self.inboxes = Inboxes(self.outlet, self.local)
        """Direct messages and events for its agents."""
        self.results = ResultWaiters(self.outlet, self.dispatcher.wait, ok_only=self.durable is not None)
        """Submits waiting for their task's result (a reply, or one on ``task.result``)."""
        self._task_subjects: dict[str, str] = {}  # task type -> its checked subject
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
        return self.dispatcher.queued_work + self.intake.held

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
        return {} if self.durable is None else self.durable.counts()

    async def start(self) -> None:
        """Subscribe to the flock-wide subjects; local agents may be spawned before or after."""
        self.outlet.start()
        self._subscriptions.append(await self.bus.subscribe(subjects.BROADCAST, self._on_broadcast))
        await self.intake.start()
        await self.presence.start()  # the agents that started before this process re-announce
        if self.durable is not None:
            try:
                await self.durable.setup()
            except BusUnavailable:
                log.warning("NATS unreachable: the durable task stream is set up once it is back")

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
        await self.outlet.drain()
        await self.bus.flush()

    async def stop_intake(self, timeout: float) -> None:
        """The first step of a graceful stop (before the agents stop): take no more tasks, hand
        back those that never started, let running ones finish (up to ``timeout`` seconds)."""
        self.batcher.flush()
        await self.intake.stop(timeout)
        await self.outlet.drain()  # their results are out

    async def close(self) -> None:
        """Stop taking messages from NATS; what was queued to publish is sent first."""
        self.batcher.flush()
        await self.outlet.drain()
        await self.results.close()
        await self.presence.close()
        await self.intake.stop(
            0.0
        )  # (a no-op after stop_intake) the keeper role and the unstarted tasks go back
        await self.intake.close()
        await self.inboxes.close()
        subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            await subscription.unsubscribe()
        await self.outlet.close()

    # ------------------------------------------------------------------ Membership (local agents)

    def agent_started(self, card: AgentCard) -> WorkSource:
        source = self.local.agent_started(card)
        announcement = AgentAnnouncement(
            id=card.id,
            name=card.name,
            capabilities=list(card.capabilities),
            max_concurrent_tasks=card.max_concurrent_tasks,
            node=self.node,
            capability_schemas=card.capability_schemas,
        )
        self.outlet.later(lambda: self._join(card, announcement))
        return source

    def agent_heartbeat(self, heartbeat: Heartbeat) -> None:
        self.local.agent_heartbeat(heartbeat)
        self.presence.heartbeat(heartbeat)

    def agent_stopped(self, agent_id: str) -> None:
        self.local.agent_stopped(agent_id)
        self.outlet.later(lambda: self._leave(agent_id))

    async def _join(self, card: AgentCard, announcement: AgentAnnouncement) -> None:
        await self.inboxes.join(card.id)
        await self.intake.join(card)
        await self.presence.announce(announcement)

    async def _leave(self, agent_id: str) -> None:
        gone = not self.is_local(agent_id)  # (a restarted instance may be back already)
        if gone:
            await self.inboxes.leave(agent_id)
        await self.intake.leave()
        await self.presence.goodbye(agent_id, gone=gone)

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
        check: bool = False,
    ) -> TaskResult | str:
        """Publish a task on ``tasks.<type>``; one agent somewhere in the flock handles it.

        With ``wait``, returns its TaskResult (a request on that subject). With ``batch`` (and
        no ``wait``), the task joins the next ``batch.messages`` message, which leaves after
        ``batch_window`` seconds or ``batch_max`` tasks. While NATS is unreachable the task runs
        on a local agent if this process has one.

        Without ``wait`` nobody checks that anyone takes the task (the fast path); with
        ``check``, NATS says in one round trip whether any process consumes ``tasks.<type>``
        (``batch`` is then ignored; in durable mode the stream keeps the task until one does).

        Raises:
            NoCapableAgent: nobody handles ``task_type`` (no responders, none local), with
                ``wait`` or ``check``.
            BusUnavailable: ``check`` while NATS is unreachable and no local agent handles it.
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
        if check and not wait:
            try:
                await self.bus.publish_checked(subject, self.codec.encode(task), headers=headers)
            except NoResponders:
                raise NoCapableAgent("task", task_type) from None
            return task.id
        if batch and not wait:
            self.batcher.add(BatchItem(subject=subject, message=task))
            return task.id
        if not wait:
            await self.bus.publish(subject, self.codec.encode(task), headers=headers)
            return task.id
        # The reply, or the result on task.result (the AI Flock seed's agents send only that).
        limit = timeout if timeout is not None else 30.0
        return await self.results.ask(subject, task, self.codec.encode(task), headers, limit)

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

        async def store() -> None:
            assert self.durable is not None
            await self.durable.submit(task, headers={CORRELATION_HEADER: task.id})

        return await self.results.until_result(task, store, timeout if timeout is not None else 30.0)

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
        for batch in self.batcher.split(subject, tasks):
            await self.batcher.publish(batch)
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
        batches = self.batcher.split(subject, tasks)
        if len(batches) == 1:  # no Task for gather to wrap it in
            return await self.batcher.request(batches[0], task_type, limit)
        replies = await asyncio.gather(*(self.batcher.request(batch, task_type, limit) for batch in batches))
        return [result for reply in replies for result in reply]

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
        if self.dispatcher.has_skill("capability", capability):
            return await self.dispatcher.request_capability_response(
                capability, parameters, timeout=timeout, progress=progress
            )
        # Straight across NATS (not through the dispatcher's fallback: one coroutine less).
        return await remote.request_capability_response(
            self.bus, self.codec, capability, parameters, requester=self.node, timeout=timeout
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
        if self.dispatcher.has_skill("capability", capability):
            response = await self.dispatcher.request_capability_response(
                capability, parameters, timeout=timeout, progress=progress
            )
        else:  # (not through request_capability_response: one coroutine less per request)
            response = await remote.request_capability_response(
                self.bus, self.codec, capability, parameters, requester=self.node, timeout=timeout
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
        """The dispatcher's fallback (what a local agent's request_capability reaches): a
        capability no local agent offers, across NATS."""
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
        """Send a direct message to agent ``to``, here or in another process.

        A message that is not a query, for an agent neither here nor in the directory, is
        published so that NATS says whether anybody listens on ``agent.<to>.inbox`` (the
        directory may not know an agent that started a moment ago); nobody: UnknownAgent.

        Raises:
            UnknownAgent: no such agent here, in the directory or listening on NATS.
            WorkTimeout: a query got no answer within ``timeout`` seconds.
            BusUnavailable: NATS is unreachable (a query, or a message for an unknown agent).
        """
        if self.is_local(to):
            return await self.local.send_message(
                to, message, type=type, sender=sender, timeout=timeout, metadata=metadata
            )
        if type != "query" and to not in self.directory:
            await send_checked(self.bus, self.codec, to, message, type=type, sender=sender, metadata=metadata)
            return None
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

    # ------------------------------------------------------------------ inbound

    async def _on_broadcast(self, message: Message) -> None:
        if message.headers.get(ORIGIN_HEADER) == self._origin:
            return  # delivered here already, when it was sent while NATS was away
        broadcast = self.outlet.decode(message, Broadcast)
        if broadcast is not None:
            self.local.deliver_broadcast(broadcast)


if TYPE_CHECKING:  # both flocks satisfy the one interface (mypy checks it here)
    _nats: FlockAPI = cast(NatsFlock, None)
    _local: FlockAPI = cast(LocalFlock, None)
