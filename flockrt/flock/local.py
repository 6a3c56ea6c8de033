"""LocalFlock: the flock within one process, with no NATS at all.

It is a real mode, not a stand-in: embedding code uses it directly, and the NATS flock builds on
it (local agents first, the bus for the rest) and falls back to it while NATS is unreachable.

Work (capability requests and tasks) waits in one priority queue per skill and is handed to the
least-loaded local agent that has a free slot (``max_concurrent_tasks``), so higher-priority
work waiting in this process runs first and no agent is given more than it can run.

A batch of tasks (:meth:`LocalFlock.dispatch_tasks`, what a ``batch.messages`` message brings)
goes to an agent whose handler never waits as ONE piece of work: one slot, one handover, its
tasks run in one loop. That is what makes a batch cheaper per task than tasks one by one; the
rules above hold per task (see :meth:`LocalFlock._dispatch_group`).
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from flockrt.actors.correlation import correlation_id, new_correlation_id, unique_id
from flockrt.actors.ref import ActorRef
from flockrt.actors.system import ActorSystem
from flockrt.agents.agent import Agent, AgentCard, AgentPort, ProgressCallback, Work, WorkDone
from flockrt.errors import (
    ActorStopped,
    AskTimeout,
    MailboxFull,
    NoCapableAgent,
    UnknownAgent,
    WorkFailed,
    WorkTimeout,
)
from flockrt.flock.directory import AgentInfo, Directory, StatusFilter
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

__all__ = ["PRIORITIES", "LocalFlock", "WorkStats"]

log = logging.getLogger("flockrt.flock")

PRIORITIES: dict[str, int] = {"high": 0, "medium": 1, "low": 2}

_HEAP_SLACK = 4
"""A free heap is compacted when it holds this many entries per agent (plus 64): stale ones."""

_HEX = tuple(f"{i:x}" for i in range(1024))
"""Id suffixes of the tasks of a batch (formatting a number costs more than the task)."""


@dataclass(eq=False, slots=True)
class _Skill:
    """A capability or a task type offered in this process: who offers it, who of them has a
    free slot, and the work waiting for one. Work is dispatched per skill."""

    kind: Literal["capability", "task"]
    name: str
    agents: set[str] = field(default_factory=set)
    """The local agents that offer it (ids)."""
    free: list[tuple[float, int, str, int]] = field(default_factory=list)
    """Those with a free slot, as a heap keyed like the fair choice (see LocalFlock._offer)."""
    waiting: list[tuple[int, int, Work]] = field(default_factory=list)
    """Work waiting for a free agent, as a heap: highest priority (lowest number) first, then
    the oldest."""
    pumping: bool = False
    """Whether LocalFlock._pump (or a dispatch) is handing out its work right now."""


@dataclass(eq=False, slots=True)
class _Member:
    card: AgentCard
    skills: tuple[_Skill, ...] = ()
    running: int = 0
    handed: dict[_Skill, int] = field(default_factory=dict)
    """Pieces of work of each skill handed to it so far (a task of bulk work counts as one):
    the fair choice's tie-break, so each kind of work spreads over the agents that do it."""
    version: int = 0
    """Which of its entries in the free heaps is current (see LocalFlock._offer); 0: none."""

    @property
    def free(self) -> bool:
        return self.running < self.card.max_concurrent_tasks

    @property
    def load(self) -> float:
        return self.running / self.card.max_concurrent_tasks


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


class LocalFlock(AgentPort):
    """Agents of one process, their directory, and a priority dispatcher.

    Creating it registers it as the system's AgentPort, so agents spawned afterwards join it.

    Args:
        system: The actor system the agents live in.
        node: This process's name in the directory.
        heartbeat_interval: Seconds between agent heartbeats.
        directory: Shared with the NATS flock, which feeds it remote agents too.
    """

    def __init__(
        self,
        system: ActorSystem,
        *,
        node: str = "local",
        heartbeat_interval: float = 30.0,
        directory: Directory | None = None,
    ) -> None:
        if heartbeat_interval <= 0:
            raise ValueError(f"heartbeat_interval must be > 0 seconds, got {heartbeat_interval!r}")
        self.system = system
        self.node = node
        self.heartbeat_interval = heartbeat_interval
        self.directory = directory if directory is not None else Directory(heartbeat_interval)
        self._members: dict[str, _Member] = {}
        self._skills: dict[tuple[str, str], _Skill] = {}  # by (kind, name)
        self._task_skills: dict[str, _Skill] = {}  # the task types among them, by name
        # The free heaps of the skills (_Skill.free) are keyed like the fair choice: the least
        # loaded, then the one handed least of the skill so far, then the smallest id. Entries
        # are not updated in place: a member's change pushes a new entry with a new version,
        # and entries whose version is not the member's current one are dropped when they
        # surface. So picking an agent costs O(log agents), and "nobody is free" is O(1).
        # (The one exception is the fast path, see _run_inline_now.)
        self._versions = itertools.count(1)
        self._heap_changes = 0  # grows whenever a free heap changes (see _run_inline_now)
        self._order = itertools.count()
        self._result_listeners: list[Callable[[TaskResult], None]] = []
        self.work_stats: WorkStats | None = None
        """Set (by the metrics layer) to count tasks and capability requests by outcome and
        time them; None costs the dispatcher one attribute check."""
        self.invalid_messages: Counter[str] = Counter()
        """Rejected inbound messages by subject: nothing arrives from outside in one process."""
        self.tasks_finished: dict[str, int] = {"ok": 0, "error": 0}
        """Tasks run by this process's agents, by outcome: always counted, at the cost of a dict
        increment (the metrics layer's per-type series come from ``work_stats``)."""
        system.register_extension(AgentPort, self)

    # ------------------------------------------------------------------ AgentPort

    def agent_started(self, card: AgentCard) -> None:
        skills = tuple(self._skill("capability", c) for c in card.capabilities) + tuple(
            self._skill("task", t) for t in card.task_types
        )
        member = self._members[card.id] = _Member(card, skills)
        for skill in skills:
            skill.agents.add(card.id)
        self._offer(member)
        self.directory.on_announcement(
            AgentAnnouncement(
                id=card.id,
                name=card.name,
                capabilities=list(card.capabilities),
                max_concurrent_tasks=card.max_concurrent_tasks,
                node=self.node,
            )
        )
        for skill in skills:
            self._pump(skill)

    def agent_heartbeat(self, heartbeat: Heartbeat) -> None:
        self.directory.on_heartbeat(heartbeat)

    def agent_stopped(self, agent_id: str) -> None:
        member = self._members.pop(agent_id, None)
        if member is None:
            return
        for skill in member.skills:
            skill.agents.discard(agent_id)
        self.directory.mark_offline(agent_id)

    def work_done(self, agent_id: str) -> None:
        member = self._members.get(agent_id)
        if member is None:
            return
        member.running = max(member.running - 1, 0)
        self._offer(member)
        for skill in member.skills:
            self._pump(skill)

    # ------------------------------------------------------------------ producers

    async def request_capability(
        self,
        capability: str,
        parameters: Any = None,
        *,
        timeout: float = 30.0,
        progress: ProgressCallback | None = None,
    ) -> Any:
        """Have a capable agent do ``capability`` and return its answer.

        ``progress(done, total, message)`` is called with what the agent reports while it
        works (:meth:`~flockrt.Agent.report_progress`); an MCP gateway passes one that sends
        ``notifications/progress``.

        Raises:
            NoCapableAgent: no agent of this process offers it.
            WorkTimeout: no answer within ``timeout`` seconds.
            WorkFailed: the agent's handler raised (the cause is attached).
        """
        response = await self.request_capability_response(
            capability, parameters, timeout=timeout, progress=progress
        )
        return response.result

    async def request_capability_response(
        self,
        capability: str,
        parameters: Any = None,
        *,
        timeout: float = 30.0,
        progress: ProgressCallback | None = None,
    ) -> CapabilityResponse:
        """:meth:`request_capability`, answered with who did it: the result, the agent's id
        and the correlation id, as a :class:`~flockrt.wire.schema.CapabilityResponse`."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        work = Work("capability", capability, parameters, future, PRIORITIES["medium"], progress=progress)
        work.correlation_id = correlation_id.get()
        self._dispatch(work)
        result = await self._wait(future, "capability", capability, timeout)
        return CapabilityResponse(correlation_id=work.correlation_id, result=result, agent_id=work.agent_id)

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
    ) -> TaskResult | str:
        """Submit a task; returns its id, or with ``wait=True`` its TaskResult.

        A failed task is a TaskResult with ``status="error"``, not an exception: results are
        data that also goes to every result listener (``task.result``).

        Raises:
            NoCapableAgent: no agent of this process handles ``task_type``.
            WorkTimeout: ``wait`` and no result within ``timeout`` seconds.
        """
        task = self.new_task(
            task_type, data, priority=priority, task_id=task_id, timeout=timeout, metadata=metadata
        )
        return await self.run_task(task, wait=wait, timeout=timeout)

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
        """A TaskMessage from this node (a fresh id unless given; ``timeout`` in seconds)."""
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of high, medium, low, got {priority!r}")
        return TaskMessage(
            id=task_id or unique_id(),
            type=task_type,
            data=data,
            priority=priority,
            requester=self.node,
            timeout=int(timeout * 1000) if timeout is not None else None,
            metadata=metadata,
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
        """A TaskMessage per item of ``items`` (its data), as :meth:`new_task` builds them, with
        what they share checked once (a batch's worth costs half as much).

        Their ids share one :func:`~flockrt.actors.correlation.unique_id`: ``<id>-<i>`` for the
        i-th item (hex), never equal to an id of :meth:`new_task` (a bare ``<id>``).
        """
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of high, medium, low, got {priority!r}")
        prefix, node = f"{unique_id()}-", self.node
        milliseconds = int(timeout * 1000) if timeout is not None else None
        return [
            TaskMessage(
                id=prefix + (_HEX[index] if index < len(_HEX) else f"{index:x}"),
                type=task_type,
                data=data,
                priority=priority,
                requester=node,
                timeout=milliseconds,
                metadata=metadata,
            )
            for index, data in enumerate(items)
        ]

    async def run_task(
        self, task: TaskMessage, *, wait: bool = False, timeout: float | None = None
    ) -> TaskResult | str:
        """Run an already built TaskMessage (as it arrived from NATS, say); see :meth:`submit`."""
        result = self.start_task(task)
        if not wait:
            return task.id
        outcome: TaskResult = await self._wait(result, "task", task.type, timeout)
        return outcome

    def start_task(
        self, task: TaskMessage, *, progress: ProgressCallback | None = None
    ) -> asyncio.Future[TaskResult]:
        """Queue ``task`` for a local agent; the future gets its TaskResult (never an exception).

        ``progress`` gets what the agent reports while it works (see :meth:`request_capability`).

        Raises:
            NoCapableAgent: no agent of this process handles the task's type.
        """
        result: asyncio.Future[TaskResult] = asyncio.get_running_loop().create_future()

        def then(outcome: TaskResult) -> None:
            if not result.done():
                result.set_result(outcome)

        self.dispatch_task(task, then, progress=progress)
        return result

    @property
    def queued_work(self) -> int:
        """Tasks and capability requests waiting for a free local agent."""
        return sum(len(skill.waiting) for skill in self._skills.values())

    def dispatch_task(
        self,
        task: TaskMessage,
        then: Callable[[TaskResult], None] | None = None,
        *,
        progress: ProgressCallback | None = None,
        correlation: str | None = None,
    ) -> None:
        """Queue ``task`` for a local agent; its TaskResult goes to the result listeners, then
        to ``then``. No future and no loop turn of its own: the path of tasks from NATS. The
        ``correlation`` id (default: the current one, else the task's id) goes with it.

        Raises:
            NoCapableAgent: no agent of this process handles the task's type.
        """
        if progress is None and self._run_now(task, then, correlation):
            return
        self._dispatch_task_work(task, then, progress, correlation)

    def _dispatch_task_work(
        self,
        task: TaskMessage,
        then: Callable[[TaskResult], None] | None,
        progress: ProgressCallback | None,
        correlation: str | None,
    ) -> None:
        """:meth:`dispatch_task`'s usual path: the task as a piece of :class:`Work`."""
        if then is None:
            on_done: WorkDone = self._task_done
        else:

            def on_done(work: Work, value: Any, error: WorkFailed | None) -> None:
                then(self._task_done(work, value, error))

        work = Work(
            "task", task.type, task, None, PRIORITIES[task.priority], on_done=on_done, progress=progress
        )
        work.correlation_id = correlation or correlation_id.get() or task.id  # as task.result has it
        self._dispatch(work)

    def _run_now(
        self, task: TaskMessage, then: Callable[[TaskResult], None] | None, correlation: str | None
    ) -> bool:
        """The fast path of :meth:`dispatch_task` (see :meth:`_run_inline_now`): True once the
        task ran and its result went out; False, having done nothing, when it must take the
        usual path. A ``then`` that raises is logged and costs nobody else anything."""
        skill = self._task_skills.get(task.type)
        if skill is None:
            return False
        started = time.monotonic()
        ran = self._run_inline_now(skill, task, correlation or correlation_id.get() or task.id)
        if ran is None:
            return False
        member, value, error = ran
        result = self._task_result(task, member.card.id, time.monotonic() - started, value, error)
        self._report(result, True)
        if then is not None:
            try:
                then(result)
            except Exception:  # as Work.finish does with a failing hook
                log.exception("task %s: the hook on its result failed", task.id)
        self._pump_skills_of(member)
        return True

    def _run_inline_now(
        self, skill: _Skill, payload: Any, correlation: str | None
    ) -> tuple[_Member, Any, WorkFailed | None] | None:
        """When nothing of ``skill`` waits and the best free agent's handler for it never
        waits, that agent runs the work (a TaskMessage, or a capability request's parameters)
        here and now (``Agent._run_now``), with no :class:`Work`, no handover and no second
        look at the free heaps: the agent, and the handler's value or failure. None, having
        done nothing, when the work must take the usual path.

        The rules of the usual path hold: the agent is the fair choice (:meth:`_free_member`);
        it is busy while the handler runs (a slot taken, and all its free entries stale, so
        that work dispatched meanwhile, by the handler itself, goes to other agents or waits,
        even when the agent has more slots). The caller reports the outcome, then calls
        :meth:`_pump_skills_of`: work queued meanwhile goes out once the agent is free again.
        """
        if skill.pumping or skill.waiting:
            return None
        member = self._free_member(skill)
        if member is None:
            return None
        card = member.card
        inline = card.inline_task_types if skill.kind == "task" else card.inline_capabilities
        if card.run_now is None or skill.name not in inline:
            return None
        heap = skill.free
        entry = heap[0]  # the member's current entry (see _free_member)
        changes = self._heap_changes
        member.version = 0  # its free entries are stale while it runs (it may be at capacity)
        member.running += 1
        skill.pumping = True
        ran = None
        try:
            ran = card.run_now(skill.kind, skill.name, payload, correlation)
        finally:  # (even for a BaseException: the agent must not drop out of the free heaps)
            skill.pumping = False
            member.running -= 1
            if ran is not None:
                member.handed[skill] = member.handed.get(skill, 0) + 1
            if self._heap_changes == changes:
                # No free heap changed while it ran, so its entries are all still in place,
                # and only its key in this skill's heap moves (one more handed): one sift, no
                # stale entries left behind. Its load is what it was.
                member.version = entry[3]
                if ran is not None:
                    heapq.heapreplace(heap, (entry[0], member.handed[skill], entry[2], entry[3]))
            else:  # work was dispatched while it ran (its handler did that): a full re-offer
                self._offer(member)
        if ran is None:  # it cannot take work right now (restarting, say): the usual path
            return None
        return member, ran[0], ran[1]

    def _pump_skills_of(self, member: _Member) -> None:
        """Hand out work queued for ``member``'s skills while it ran inline work."""
        for skill in member.skills:
            if skill.waiting:
                self._pump(skill)

    def dispatch_tasks(
        self, tasks: Sequence[TaskMessage], then: Callable[[list[TaskResult]], None] | None = None
    ) -> None:
        """Queue many tasks at once (a batch): as :meth:`dispatch_task` for each of them, at a
        fraction of the cost per task.

        Each TaskResult goes to the result listeners as its task finishes; ``then`` gets all of
        them, in the order of ``tasks``, once the last one is in. Tasks of a type whose handler
        never waits are handed to an agent as one unit of work (see :meth:`_dispatch_group`).

        Raises:
            NoCapableAgent: no agent of this process handles the type of one of the tasks (and
                none of them was queued).
        """
        self._dispatch_tasks(tasks, then, publish=True)

    def _dispatch_tasks(
        self,
        tasks: Sequence[TaskMessage],
        then: Callable[[list[TaskResult]], None] | None,
        *,
        publish: bool,
    ) -> None:
        """:meth:`dispatch_tasks`; ``publish=False``: the results do not go to
        :meth:`_publish_result` (they go back together, through ``then``)."""
        batch = _Batch(len(tasks), then, publish)
        if not tasks:
            batch.complete()
            return
        first = tasks[0]
        task_type, priority = first.type, first.priority
        groups: dict[str, tuple[Sequence[int], Sequence[TaskMessage]]]
        if all(task.type == task_type and task.priority == priority for task in tasks):
            groups = {task_type: (range(len(tasks)), tasks)}  # the usual batch: as it is
        else:  # by type; highest priority first within each (a stable sort keeps the order)
            positions: dict[str, list[int]] = {}
            for index, task in enumerate(tasks):
                positions.setdefault(task.type, []).append(index)
            groups = {}
            for key, places in positions.items():
                places.sort(key=lambda index: PRIORITIES[tasks[index].priority])
                groups[key] = (places, [tasks[index] for index in places])
        for key in groups:
            if not self.has_skill("task", key):
                raise NoCapableAgent("task", key)
        correlation = correlation_id.get()
        for key, (indices, ordered) in groups.items():
            self._dispatch_group(self._task_skills[key], indices, ordered, batch, correlation)

    def _dispatch_group(
        self,
        skill: _Skill,
        indices: Sequence[int],
        tasks: Sequence[TaskMessage],
        batch: _Batch,
        correlation: str | None,
    ) -> None:
        """Hand tasks of one type (``indices``: their places in the batch) to free agents.

        A free agent whose handler for the type never waits takes all the tasks left as ONE
        piece of bulk work (:attr:`Work.each`), run in one tight loop within the handover. This
        keeps every rule of the one-by-one path:

        - it occupies one slot, so max_concurrent_tasks holds;
        - bulk work is handed over only when nothing of this skill waits in the queue (else
          every task joins the queue, by priority), and its tasks run highest priority first;
          nothing can be dispatched while the loop runs (it never suspends), so no other work
          can wait behind it;
        - one agent doing them all instead of one agent each delays none of them: inline work
          runs one piece after another either way, inside this call;
        - the agent's ``handed`` count grows by the number of tasks, so the fair choice
          spreads the next batches.

        Tasks for agents whose handler waits are handed over one per free slot, as by
        :meth:`dispatch_task`, and the rest wait in the queue: a chunk handed to one of those
        would run its tasks one after another while other agents might sit idle.
        """
        queue = skill.waiting
        start, count = 0, len(tasks)
        if not queue and not skill.pumping:
            skill.pumping = True
            try:
                while start < count:
                    member = self._free_member(skill)
                    if member is None:
                        break
                    if skill.name in member.card.inline_task_types:
                        work = self._bulk_work(skill, indices, tasks, start, batch, correlation)
                        taken = count - start
                    else:
                        work = self._batch_work(indices[start], tasks[start], batch, correlation)
                        taken = 1
                    if not self._hand_over(member, skill, work):
                        break
                    start += taken
            finally:
                skill.pumping = False
        for position in range(start, count):
            task = tasks[position]
            work = self._batch_work(indices[position], task, batch, correlation)
            heapq.heappush(queue, (work.priority, next(self._order), work))
        if queue:
            self._pump(skill)

    def _bulk_work(
        self,
        skill: _Skill,
        indices: Sequence[int],
        tasks: Sequence[TaskMessage],
        start: int,
        batch: _Batch,
        correlation: str | None,
    ) -> Work:
        """``tasks[start:]`` as one piece of bulk work; each outcome becomes a TaskResult."""
        chunk = tasks[start:] if start else tasks
        places = indices[start:] if start else indices

        def each(
            work: Work, first: int, values: list[Any], finished: list[float], failures: dict[int, WorkFailed]
        ) -> None:
            count = len(values)
            done = chunk if first == 0 and count == len(chunk) else chunk[first : first + count]
            if failures or self.work_stats is not None or self._result_listeners or batch.publish:
                enqueued = work.enqueued
                outcomes = [
                    self._task_result(task, work.agent_id, at - enqueued, value, failures.get(first + i))
                    for i, (task, value, at) in enumerate(zip(done, values, finished, strict=True))
                ]
                for outcome in outcomes:
                    self._report(outcome, batch.publish)
            else:  # the usual case, where a TaskResult each is all there is to do: in one pass
                agent_id, enqueued = work.agent_id, work.enqueued
                outcomes = [
                    TaskResult(
                        task_id=task.id,
                        result=value,
                        processed_by=agent_id,
                        duration_ms=(at - enqueued) * 1000,
                    )
                    for task, value, at in zip(done, values, finished, strict=True)
                ]
                self.tasks_finished["ok"] += count
            batch.fill(places, first, outcomes)

        def on_done(work: Work, value: Any, error: WorkFailed | None) -> None:
            # The tasks an agent that stopped never began go back to the queue (and no longer
            # count toward its share).
            if work.cursor < len(chunk):
                member = self._members.get(work.agent_id)
                if member is not None:
                    member.handed[skill] = member.handed.get(skill, 0) - (len(chunk) - work.cursor)
                queue = skill.waiting
                for position in range(work.cursor, len(chunk)):
                    again = self._batch_work(places[position], chunk[position], batch, correlation)
                    heapq.heappush(queue, (again.priority, next(self._order), again))
                self._pump(skill)

        work = Work(
            "task", skill.name, chunk, None, PRIORITIES[chunk[0].priority], on_done=on_done, each=each
        )
        work.correlation_id = correlation  # None: each task's own id (see Agent._run_inline_bulk)
        return work

    def _batch_work(self, place: int, task: TaskMessage, batch: _Batch, correlation: str | None) -> Work:
        """One task of a batch as a piece of work of its own (see :meth:`dispatch_task`)."""
        finish = self._finish_task

        def on_done(work: Work, value: Any, error: WorkFailed | None) -> None:
            batch.fill((place,), 0, [finish(task, work, value, error, batch.publish)])

        work = Work("task", task.type, task, None, PRIORITIES[task.priority], on_done=on_done)
        work.correlation_id = correlation or task.id
        return work

    def has_skill(self, kind: str, key: str) -> bool:
        """Whether an agent of this process offers this capability ("capability") or task type ("task")."""
        skill = self._skills.get((kind, key))
        return skill is not None and bool(skill.agents)

    def is_local(self, agent_id: str) -> bool:
        """Whether ``agent_id`` is an agent of this process."""
        return agent_id in self._members

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
        member = self._members.get(to)
        if member is None:
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
            ref = member.card.ref
            deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
            answer = await ref.ask(direct, timeout=timeout)
            if isinstance(answer, asyncio.Future):  # answered later (see Agent.on_message)
                answer = await _deferred_answer(answer, deadline, ref, timeout)
            if isinstance(answer, WorkFailed):  # the agent could not answer (see Agent.on_message)
                raise answer
            return answer
        member.card.ref.tell(direct)
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
        for member in list(self._members.values()):
            try:
                member.card.ref.tell(broadcast)
                delivered += 1
            except MailboxFull:
                log.warning("broadcast %r not delivered to %s: mailbox full", broadcast.type, member.card.id)
        return delivered

    async def start(self) -> None:
        """Nothing to start in one process (the FlockAPI's lifecycle)."""

    async def close(self) -> None:
        """Nothing to stop in one process: the agents stop with their actor system."""

    async def flush(self) -> None:
        """Nothing is queued to go out in one process."""

    def durable_counts(self) -> dict[str, int]:
        """Durable tasks run through JetStream only: none in one process."""
        return {}

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

    def on_result(self, listener: Callable[[TaskResult], None]) -> Callable[[], None]:
        """Call ``listener`` with every TaskResult of this process; returns an unsubscribe."""
        # Copy on write: a listener may unsubscribe while results are being delivered.
        self._result_listeners = [*self._result_listeners, listener]

        def unsubscribe() -> None:
            self._result_listeners = [other for other in self._result_listeners if other is not listener]

        return unsubscribe

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

    # ------------------------------------------------------------------ dispatching

    def _skill(self, kind: Literal["capability", "task"], name: str) -> _Skill:
        """The skill ``kind``/``name``, created the first time an agent offers it."""
        skill = self._skills.get((kind, name))
        if skill is None:
            skill = self._skills[kind, name] = _Skill(kind, name)
            if kind == "task":
                self._task_skills[name] = skill
        return skill

    def _dispatch(self, work: Work) -> None:
        skill = self._skills.get((work.kind, work.key))
        if skill is None or not skill.agents:
            raise NoCapableAgent(work.kind, work.key)
        queue = skill.waiting
        if queue or skill.pumping:
            heapq.heappush(queue, (work.priority, next(self._order), work))
            self._pump(skill)
            return
        # Nothing waits: straight to the best free agent, if there is one (no queue to order).
        skill.pumping = True
        try:
            member = self._free_member(skill)
            if member is None or not self._hand_over(member, skill, work):
                heapq.heappush(queue, (work.priority, next(self._order), work))
        finally:
            skill.pumping = False
        if queue:  # work queued while an inline handler ran, or the work above
            self._pump(skill)

    def _pump(self, skill: _Skill) -> None:
        """Hand queued work to free agents, highest priority first, least loaded agent first.

        Invariant: while work waits in a skill's queue, no agent of that skill has a free slot
        (every slot that frees up calls work_done, which pumps). So the agent that just
        finished is the one that gets the next piece, which lets its runner go on with it.

        Work whose handler never waits runs inside ``take_work`` and calls work_done, which
        pumps again: that inner call returns at once (``_Skill.pumping``) and this loop goes on,
        so draining a long queue does not recurse.
        """
        queue = skill.waiting
        if not queue or skill.pumping:
            return
        skill.pumping = True
        try:
            while queue:
                member = self._free_member(skill)
                if member is None:
                    return
                entry = heapq.heappop(queue)
                if entry[2].abandoned:  # its requester gave up
                    continue
                if not self._hand_over(member, skill, entry[2]):
                    heapq.heappush(queue, entry)
                    return  # the agent will pull again when it finishes something
        finally:
            skill.pumping = False

    def _hand_over(self, member: _Member, skill: _Skill, work: Work) -> bool:
        """Give ``work`` (of ``skill``) to ``member``: directly, or through its mailbox while it
        cannot take work (restarting, say). False if its mailbox is full."""
        work.agent_id = member.card.id
        member.running += 1  # before the handover: inline work finishes within it
        pieces = 1 if work.each is None else len(work.payload)
        member.handed[skill] = member.handed.get(skill, 0) + pieces
        self._offer(member)
        take_work = member.card.take_work
        if take_work is None or not take_work(work):
            try:
                member.card.ref.tell(work)
            except MailboxFull:
                member.running -= 1
                member.handed[skill] -= pieces
                self._offer(member)
                return False
        return True

    def _free_member(self, skill: _Skill) -> _Member | None:
        """The least loaded agent with a free slot; ties go to the one handed least of this
        skill so far, then to the smallest id, so the choice is fair and deterministic. Its
        current entry is then at the top of the skill's free heap."""
        heap = skill.free
        while heap:
            _, _, agent_id, version = heap[0]
            member = self._members.get(agent_id)
            if member is not None and member.version == version and member.card.ref.is_alive:
                return member
            heapq.heappop(heap)  # stale: the member changed, left, or is stopping
            self._heap_changes += 1
        return None

    def _offer(self, member: _Member) -> None:
        """``member`` changed (load, work done, arrival): its entries in the free heaps are
        replaced by one current entry per skill, if it has a free slot."""
        member.version = version = next(self._versions)
        capacity = member.card.max_concurrent_tasks
        if member.running < capacity:
            load, agent_id, handed = member.running / capacity, member.card.id, member.handed
            for skill in member.skills:
                heap = skill.free
                heapq.heappush(heap, (load, handed.get(skill, 0), agent_id, version))
                if len(heap) > _HEAP_SLACK * len(skill.agents) + 64:
                    self._compact(skill)
            self._heap_changes += 1

    def _compact(self, skill: _Skill) -> None:
        """Drop the stale entries of a free heap (they pile up when no work is dispatched)."""
        current = []
        for agent_id in skill.agents:
            member = self._members[agent_id]
            if member.free:
                current.append((member.load, member.handed.get(skill, 0), agent_id, member.version))
        heapq.heapify(current)
        skill.free = current
        self._heap_changes += 1

    async def _wait(self, future: asyncio.Future[Any], kind: str, key: str, timeout: float | None) -> Any:
        # Capability requests are counted and timed here, where every one of them is awaited:
        # a done-callback would cost a loop turn per request. asyncio.timeout, not wait_for:
        # on 3.11, wait_for returns the result instead of raising when a cancellation arrives
        # just as the future completes, and the caller's cancellation would be lost.
        stats = self.work_stats if kind == "capability" else None
        if stats is None:
            try:
                async with asyncio.timeout(timeout):
                    return await future
            except TimeoutError:
                raise WorkTimeout(kind, key, timeout or 0.0) from None
        started = time.monotonic()
        outcome = "error"
        try:
            async with asyncio.timeout(timeout):
                result = await future
            outcome = "ok"
            return result
        except TimeoutError:
            outcome = "timeout"
            raise WorkTimeout(kind, key, timeout or 0.0) from None
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            stats.record(kind, key, outcome, time.monotonic() - started)

    def _task_done(self, work: Work, value: Any, error: WorkFailed | None) -> TaskResult:
        """A task's work finished: its TaskResult goes to every result listener."""
        outcome = self._task_result(
            work.payload, work.agent_id, time.monotonic() - work.enqueued, value, error
        )
        self._report(outcome, True)
        return outcome

    def _publish_result(self, result: TaskResult) -> None:
        """Where a finished task's result goes before the result listeners: nowhere in one
        process; a NatsFlock publishes it on ``task.result``."""

    def _finish_task(
        self, task: TaskMessage, work: Work, value: Any, error: WorkFailed | None, publish: bool
    ) -> TaskResult:
        """``task`` (of ``work``) finished: its TaskResult, counted, timed and reported."""
        outcome = self._task_result(task, work.agent_id, time.monotonic() - work.enqueued, value, error)
        self._report(outcome, publish)
        return outcome

    def _task_result(
        self, task: TaskMessage, agent_id: str, seconds: float, value: Any, error: WorkFailed | None
    ) -> TaskResult:
        """A finished task's TaskResult, counted (``tasks_finished``, ``work_stats``)."""
        duration_ms = seconds * 1000
        if error is None:
            self.tasks_finished["ok"] += 1
            outcome = TaskResult(
                task_id=task.id, result=value, processed_by=agent_id, duration_ms=duration_ms
            )
        else:
            self.tasks_finished["error"] += 1
            outcome = TaskResult(
                task_id=task.id,
                processed_by=error.agent_id,
                status="error",
                error=repr(error.cause),
                duration_ms=duration_ms,
            )
        stats = self.work_stats
        if stats is not None:
            stats.record("task", task.type, outcome.status, seconds)
        return outcome

    def _report(self, outcome: TaskResult, publish: bool) -> None:
        """Hand a TaskResult to :meth:`_publish_result` (if ``publish``) and every listener."""
        if publish:
            try:
                self._publish_result(outcome)
            except Exception:  # as for a listener: the others still get the result
                log.exception("task result of %s not published", outcome.task_id)
        for listener in self._result_listeners:
            try:
                listener(outcome)
            except Exception:  # one listener's bug must not cost the others their result
                log.exception("task result listener %r failed", listener)


class _Batch:
    """Tasks dispatched together (:meth:`LocalFlock.dispatch_tasks`): where their results go.

    ``results`` (None when nobody waits for them all) fills in as tasks finish, at their
    places in the batch; ``then`` gets it once ``missing`` reaches 0.
    """

    __slots__ = ("missing", "publish", "results", "then")

    def __init__(self, size: int, then: Callable[[list[TaskResult]], None] | None, publish: bool) -> None:
        self.missing = size
        self.then = then
        self.publish = publish
        self.results: list[TaskResult] | None = [_PENDING] * size if then is not None else None

    def fill(self, places: Sequence[int], first: int, outcomes: list[TaskResult]) -> None:
        """``outcomes`` are the results of the tasks at ``places[first:]`` in the batch."""
        results = self.results
        if results is None:
            return
        if type(places) is range and places.step == 1:  # the usual batch: a slice at once
            at = places.start + first
            results[at : at + len(outcomes)] = outcomes
        else:
            for place, outcome in zip(places[first:], outcomes, strict=False):
                results[place] = outcome
        self.missing -= len(outcomes)
        if self.missing == 0:
            self.complete()

    def complete(self) -> None:
        if self.then is not None and self.results is not None:
            self.then(self.results)


_PENDING = TaskResult(task_id="", processed_by="", status="error", error="pending")
"""A place in a batch's results that its task has not filled yet."""
