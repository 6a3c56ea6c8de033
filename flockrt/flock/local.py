"""LocalFlock: the flock within one process, with no NATS at all.

It is a real mode, not a stand-in: embedding code uses it directly. It implements the Flock
interface (:class:`~flockrt.flock.api.FlockAPI`) in one process: it HAS a
:class:`~flockrt.flock.dispatcher.Dispatcher` that hands work to its agents and a
:class:`~flockrt.flock.directory.Directory` of them, and it is the agents'
:class:`~flockrt.agents.ports.Membership`. The NATS flock has one of these as its core.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Literal, overload

from flockrt.actors.correlation import correlation_id, new_correlation_id, unique_id
from flockrt.actors.ref import ActorRef
from flockrt.actors.system import ActorSystem
from flockrt.agents.agent import Agent
from flockrt.agents.ports import AgentCard, Membership, WorkSource
from flockrt.agents.work import ProgressCallback
from flockrt.errors import ActorStopped, AskTimeout, MailboxFull, UnknownAgent, WorkFailed
from flockrt.flock import batches, waiting
from flockrt.flock.directory import AgentInfo, Directory, StatusFilter
from flockrt.flock.dispatcher import Dispatcher
from flockrt.flock.stats import WorkStats
from flockrt.supervisor.spec import ChildSpec, Restart
from flockrt.supervisor.supervisor import Supervisor
from flockrt.wire.schema import (
    AgentAnnouncement,
    Broadcast,
    CapabilityResponse,
    DirectMessage,
    Heartbeat,
    Priority,
    TaskMessage,
    TaskResult,
)

__all__ = ["LocalFlock", "WorkStats"]

log = logging.getLogger("flockrt.flock")


async def _deferred_answer(
    answer: asyncio.Future[Any], deadline: float | None, ref: ActorRef[Any], timeout: float | None
) -> Any:
    """Wait for an answer an agent gives later (a Task it owns) within the asker's own
    timeout; an asker that gives up (timeout, cancellation) cancels it."""
    try:
        async with asyncio.timeout_at(deadline):
            await asyncio.wait((answer,))
    except TimeoutError:
        raise AskTimeout(ref, timeout if timeout is not None else 0.0) from None
    finally:
        if not answer.done():
            answer.cancel()
    if answer.cancelled():
        raise ActorStopped(ref, "stopped before answering")
    return answer.result()


class LocalFlock:
    """Agents of one process, their directory, and a priority dispatcher.

    Creating it registers it as the system's :class:`~flockrt.agents.ports.Membership`, so
    agents spawned afterwards join it (unless ``register`` is False: a NATS flock registers
    itself and hands its agents' comings and goings on to this core).

    Args:
        system: The actor system the agents live in.
        node: This process's name in the directory.
        heartbeat_interval: Seconds between agent heartbeats.
        directory: Shared with the NATS flock, which feeds it remote agents too.
        register: Register as the system's Membership.
    """

    def __init__(
        self,
        system: ActorSystem,
        *,
        node: str = "local",
        heartbeat_interval: float = 30.0,
        directory: Directory | None = None,
        register: bool = True,
    ) -> None:
        if heartbeat_interval <= 0:
            raise ValueError(f"heartbeat_interval must be > 0 seconds, got {heartbeat_interval!r}")
        self.system = system
        self.node = node
        self.heartbeat_interval = heartbeat_interval
        self.directory = directory if directory is not None else Directory(heartbeat_interval)
        self.dispatcher = Dispatcher(node=node)
        """Hands this process's work to its agents: the low-level in-process API
        (``dispatch_task``, ``start_task``, ``dispatch_tasks``)."""
        self.invalid_messages: Counter[str] = Counter()
        """Rejected inbound messages by subject: nothing arrives from outside in one process."""
        if register:
            system.register_extension(Membership, self)  # type: ignore[type-abstract]  # a key

    # ------------------------------------------------------------------ Membership

    def agent_started(self, card: AgentCard) -> WorkSource:
        self.dispatcher.join(card)
        self.directory.on_announcement(
            AgentAnnouncement(
                id=card.id,
                name=card.name,
                capabilities=list(card.capabilities),
                max_concurrent_tasks=card.max_concurrent_tasks,
                node=self.node,
                capability_schemas=card.capability_schemas,
            )
        )
        return self.dispatcher

    def agent_heartbeat(self, heartbeat: Heartbeat) -> None:
        self.directory.on_heartbeat(heartbeat)

    def agent_stopped(self, agent_id: str) -> None:
        if self.dispatcher.leave(agent_id):
            self.directory.mark_offline(agent_id)

    # ------------------------------------------------------------------ counters

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

    def durable_counts(self) -> dict[str, int]:
        """Durable tasks run through JetStream only: none in one process."""
        return {}

    def has_skill(self, kind: str, key: str) -> bool:
        """Whether an agent of this process offers this capability ("capability") or task type ("task")."""
        return self.dispatcher.has_skill(kind, key)

    def is_local(self, agent_id: str) -> bool:
        """Whether ``agent_id`` is an agent of this process."""
        return self.dispatcher.is_local(agent_id)

    # ------------------------------------------------------------------ producers

    async def request_capability(
        self,
        capability: str,
        parameters: Any = None,
        *,
        timeout: float = 30.0,
        progress: ProgressCallback | None = None,
    ) -> Any:
        """Have a capable agent do ``capability`` and return its answer (see
        :meth:`Dispatcher.request_capability <flockrt.flock.dispatcher.Dispatcher.request_capability>`)."""
        dispatcher = self.dispatcher
        here = waiting.capability_here(dispatcher, capability, parameters, timeout, progress)
        if here is not None:  # (Dispatcher.request_capability, without its frame)
            return await here
        return await dispatcher.request_capability(capability, parameters, timeout=timeout, progress=progress)

    async def request_capability_response(
        self,
        capability: str,
        parameters: Any = None,
        *,
        timeout: float = 30.0,
        progress: ProgressCallback | None = None,
    ) -> CapabilityResponse:
        """:meth:`request_capability`, answered with who did it."""
        return await self.dispatcher.request_capability_response(
            capability, parameters, timeout=timeout, progress=progress
        )

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
        check: bool = False,
    ) -> TaskResult | str:
        """Submit a task; returns its id, or with ``wait=True`` its TaskResult.

        A failed task is a TaskResult with ``status="error"``, not an exception: results are
        data that also goes to every result listener (``task.result``). In one process a task
        nobody handles is always refused, so ``check`` changes nothing (it is there for the
        flock interface).

        With ``wait=True`` the submitter owns its task (see :meth:`Dispatcher.run_task
        <flockrt.flock.dispatcher.Dispatcher.run_task>`): the handler runs in the
        submitter's own Task when an agent is free, and a submitter that is cancelled, or
        whose ``timeout`` passes, cancels the task (its result is an error, "cancelled").
        Without ``wait`` the task is detached: it runs in a Task of its agent's, whatever
        becomes of the submitter.

        Raises:
            NoCapableAgent: no agent of this process handles ``task_type``.
            WorkTimeout: ``wait`` and no result within ``timeout`` seconds.
        """
        # (through self.new_task: a call more, but a stack slot less in every in-flight submit's
        # frame, 8 bytes: a bound method takes 6 arguments where batches.new_task takes 7)
        task = self.new_task(
            task_type, data, priority=priority, task_id=task_id, timeout=timeout, metadata=metadata
        )
        if not wait:
            self.dispatcher.dispatch_task(task)
            return task.id
        # (run_task, without its frame when an agent runs it in this Task; no local more: each
        # costs 8 bytes of every in-flight submit's frame)
        return await (
            waiting.task_here(self.dispatcher, task, timeout)
            or waiting.run_task(self.dispatcher, task, timeout, None)
        )

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
        """One task per item of ``items``, dispatched as one batch (see
        :meth:`Dispatcher.dispatch_tasks <flockrt.flock.dispatcher.Dispatcher.dispatch_tasks>`).

        Returns the task ids in order (``results="each"``), or with ``results="batch"`` their
        TaskResults in order once all are in.

        Raises:
            NoCapableAgent: no agent of this process handles ``task_type``.
            WorkTimeout: ``results="batch"`` and not all results within ``timeout`` seconds.
        """
        tasks = self.new_tasks(task_type, items, priority=priority, metadata=metadata, timeout=timeout)
        if results == "each":
            self.dispatcher.dispatch_tasks(tasks)
            return [task.id for task in tasks]
        done: asyncio.Future[list[TaskResult]] = asyncio.get_running_loop().create_future()

        def then(outcomes: list[TaskResult]) -> None:
            if not done.done():
                done.set_result(outcomes)

        self.dispatcher.dispatch_tasks(tasks, then)
        limit = timeout if timeout is not None else 30.0
        outcomes: list[TaskResult] = await self.dispatcher.wait(done, "task", task_type, limit)
        return outcomes

    def new_task(
        self,
        task_type: str,
        data: Any = None,
        *,
        priority: Priority = "medium",
        task_id: str | None = None,
        timeout: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> TaskMessage:
        """A TaskMessage from this node (see :func:`flockrt.flock.batches.new_task`)."""
        return batches.new_task(
            self.node, task_type, data, priority=priority, task_id=task_id, timeout=timeout, metadata=metadata
        )

    def new_tasks(
        self,
        task_type: str,
        items: Iterable[Any],
        *,
        priority: Priority = "medium",
        timeout: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> list[TaskMessage]:
        """A TaskMessage per item (see :func:`flockrt.flock.batches.new_tasks`)."""
        return batches.new_tasks(
            self.node, task_type, items, priority=priority, timeout=timeout, metadata=metadata
        )

    def on_result(self, listener: Callable[[TaskResult], None]) -> Callable[[], None]:
        """Call ``listener`` with every TaskResult of this process; returns an unsubscribe."""
        return self.dispatcher.on_result(listener)

    # ------------------------------------------------------------------ messages

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
        """Send a direct message to agent ``to``; a ``query`` returns the agent's answer.

        Raises:
            UnknownAgent: no such agent in this process.
            MailboxFull: the agent's mailbox is full (for a command).
            AskTimeout: a query got no answer within ``timeout`` seconds.
            WorkFailed: the agent answered the query with a failure.
        """
        card = self.dispatcher.member(to)
        if card is None:
            raise UnknownAgent(to)
        direct = DirectMessage(
            id=unique_id(),
            sender=sender,
            to=to,
            message=message,
            type=type,
            metadata=metadata,
            # A query's answer is matched by it; any message carries the current one on.
            correlation_id=new_correlation_id() if type == "query" else correlation_id.get(),
        )
        if type == "query":
            ref = card.ref
            deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
            answer = await ref.ask(direct, timeout=timeout)
            if isinstance(answer, asyncio.Future):  # answered later (see Agent.on_message)
                answer = await _deferred_answer(answer, deadline, ref, timeout)
            if isinstance(answer, WorkFailed):  # the agent could not answer (see Agent.on_message)
                raise answer
            return answer
        card.ref.tell(direct)
        return None

    async def send(
        self,
        to: str,
        message: Any,
        *,
        type: str = "command",
        sender: str = "flock",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Deliver a direct message (not a query) to agent ``to`` (see :class:`FlockAPI`)."""
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
        """Ask agent ``to`` and return its answer (see :class:`FlockAPI`)."""
        return await self.send_message(
            to, message, type="query", sender=sender, timeout=timeout, metadata=metadata
        )

    async def broadcast(self, type: str, message: Any = None, data: Any = None) -> None:
        """Tell every agent of the flock: in one process, every local agent."""
        self.deliver_broadcast(Broadcast(type=type, message=message, data=data))

    def deliver_broadcast(self, broadcast: Broadcast) -> int:
        """Tell every local agent; returns how many got it (full mailboxes are logged)."""
        delivered = 0
        for card in self.dispatcher.members():
            try:
                card.ref.tell(broadcast)
                delivered += 1
            except MailboxFull:
                log.warning("broadcast %r not delivered to %s: mailbox full", broadcast.type, card.id)
        return delivered

    # ------------------------------------------------------------------ agents and lifecycle

    def list_agents(self, status: StatusFilter = "online", capability: str | None = None) -> list[AgentInfo]:
        """Agents by status (online, offline, all) and capability."""
        return self.directory.list(status, capability)

    def get_agent(self, agent_id: str) -> AgentInfo | None:
        """One agent's info, or None."""
        return self.directory.get(agent_id)

    async def wait_for_agents(
        self, count: int, *, capability: str | None = None, timeout: float = 10.0
    ) -> list[AgentInfo]:
        """Wait until at least ``count`` agents (with ``capability``, if given) are online.

        Agents in other processes are known once their announcement or heartbeat arrived, so
        a process that has just joined a flock calls this before relying on them.

        Returns:
            The online agents (with ``capability``) at that moment.

        Raises:
            TimeoutError: fewer than ``count`` after ``timeout`` seconds; the message says how
                many there were.
        """
        enough = asyncio.Event()

        def check(*_: Any) -> None:
            if len(self.list_agents("online", capability)) >= count:
                enough.set()

        unsubscribe = self.directory.subscribe(check)
        try:
            check()
            async with asyncio.timeout(timeout):
                await enough.wait()
        except TimeoutError:
            having = len(self.list_agents("online", capability))
            what = f"agents with {capability!r}" if capability else "agents"
            raise TimeoutError(f"{having} of {count} {what} online after {timeout} s") from None
        finally:
            unsubscribe()
        return self.list_agents("online", capability)

    async def spawn_pool(
        self,
        agent_class: type[Agent],
        count: int,
        *,
        id_prefix: str | None = None,
        restart: Restart = "permanent",
        **options: Any,
    ) -> ActorRef[Any]:
        """Start ``count`` agents of ``agent_class`` under a new supervisor and return its ref.

        The agents are ``<prefix>-1`` .. ``<prefix>-<count>`` (prefix: the class name in lower
        case), restarted per ``restart``; ``options`` go to every agent's constructor. The
        supervisor (one_for_one, named ``<prefix>-pool``) is a top-level actor of the system.
        """
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count!r}")
        prefix = id_prefix or agent_class.__name__.lower()
        factory = functools.partial(agent_class, **options) if options else agent_class
        specs = [
            ChildSpec(id=f"{prefix}-{i}", factory=factory, args=(f"{prefix}-{i}",), restart=restart)
            for i in range(1, count + 1)
        ]
        return await self.system.spawn(Supervisor, specs, name=f"{prefix}-pool")

    async def start(self) -> None:
        """Nothing to start in one process (the FlockAPI's lifecycle)."""

    async def close(self) -> None:
        """Nothing to stop in one process: the agents stop with their actor system."""

    async def flush(self) -> None:
        """Nothing is queued to go out in one process."""
