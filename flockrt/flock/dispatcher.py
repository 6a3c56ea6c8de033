"""Dispatcher: hands the work of one process to its free local agents.

Work (capability requests and tasks) waits in one priority queue per skill and is handed to the
least-loaded local agent that has a free slot (``max_concurrent_tasks``), so higher-priority
work waiting in this process runs first and no agent is given more than it can run.

There is ONE fast path, for tasks and capability requests alike (:meth:`Dispatcher.run_now`,
in :mod:`flockrt.flock.inline`): when nothing of a skill waits and the best free agent's handler
never waits, the agent runs the work then and there, with no :class:`~flockrt.agents.work.Work`,
no handover and no Task. A task from NATS takes it with its caller taking the TaskResult, with
no delivery callback (:meth:`run_task_now`).

Both flocks have a dispatcher (composition): :class:`~flockrt.flock.local.LocalFlock` in one
process, and :class:`~flockrt.bus.flock.NatsFlock`, which feeds it the tasks and capability
requests that arrive over NATS. Finished tasks leave through one :data:`ResultSink`, which gets
each TaskResult with the correlation id of its own work (over NATS: the ``task.result``
publisher), and then go to every result listener.

Batches of tasks (:meth:`Dispatcher.dispatch_tasks`) are in :mod:`flockrt.flock.batches`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from flockrt.actors.correlation import correlation_id
from flockrt.actors.deadlines import AskDeadlines
from flockrt.agents.ports import AgentCard
from flockrt.agents.work import CapabilityCall, ProgressCallback, TaskBatch, TaskRun, Work
from flockrt.errors import MailboxFull, NoCapableAgent, WorkFailed, WorkTimeout
from flockrt.flock import batches, requests, waiting
from flockrt.flock.batches import PRIORITIES
from flockrt.flock.inline import Deliver, FastPath
from flockrt.flock.skills import Member, Skill, push_lowered
from flockrt.flock.stats import WorkStats
from flockrt.wire.schema import CapabilityResponse, TaskMessage, TaskResult

__all__ = ["PRIORITIES", "CapabilityFallback", "Deliver", "Dispatcher", "ResultSink"]

log = logging.getLogger("flockrt.flock")

ResultSink = Callable[[TaskResult, "str | None"], None]
"""Where a finished task's result goes before the result listeners: ``sink(result,
correlation)``, the correlation id being that of the task's own work. Over NATS it publishes on
``task.result``; in one process there is none."""

CapabilityFallback = Callable[..., Awaitable[CapabilityResponse]]
"""Where a capability request goes that no local agent offers (over NATS: another process);
called like :meth:`Dispatcher.request_capability_response`."""


class Dispatcher(FastPath):
    """The skills of one process's agents, who of them is free, and the work waiting for them.

    It is the agents' :class:`~flockrt.agents.ports.WorkSource`: a flock calls :meth:`join`
    and :meth:`leave` as its agents start and stop, and hands the dispatcher to each agent.

    Args:
        node: This process's name (``requester`` of the tasks it builds).
        sink: Where finished tasks' results go first (see :data:`ResultSink`).
        fallback: Where capability requests go that no local agent offers.
    """

    def __init__(
        self, *, node: str, sink: ResultSink | None = None, fallback: CapabilityFallback | None = None
    ) -> None:
        self.node = node
        self.sink = sink
        self.fallback = fallback
        self._members: dict[str, Member] = {}
        self._skills: dict[tuple[str, str], Skill] = {}  # by (kind, name)
        self._task_skills: dict[str, Skill] = {}  # the task types among them, by name
        # The free heaps of the skills (Skill.free) are keyed by the fair choice (fair_key, then
        # the id): least loaded, then handed least of the skill so far, then the smallest id. Entries
        # are not updated in place: a member whose key falls (a slot given back) gets a new
        # version and a new entry (pushed when its skill next looks: Skill.lowered), and
        # entries whose version is not the member's current one are dropped when they
        # surface; a key that rises (a slot taken) leaves its entries as they are, and the one
        # that surfaces is brought up to date then (free_member). So picking an agent costs
        # O(log agents), and "nobody is free" is O(1) once the full ones' entries have
        # surfaced. (One more exception: the fast path, see _run_inline_now.)
        self._versions = itertools.count(1)
        self._heap_changes = 0  # grows whenever a free heap changes (see _run_inline_now)
        self.order = itertools.count()
        """Ties in a queue go to the oldest piece of work (a sequence number per piece)."""
        self._result_listeners: list[Callable[[TaskResult], None]] = []
        self.work_stats: WorkStats | None = None
        """Set (by the metrics layer) to count tasks and capability requests by outcome and
        time them; None costs one attribute check."""
        self.tasks_finished: dict[str, int] = {"ok": 0, "error": 0}
        """Tasks run by this process's agents, by outcome: always counted, at the cost of a dict
        increment (the metrics layer's per-type series come from ``work_stats``)."""
        self._task_hook = self._on_task_done  # bound once: every TaskRun's on_done
        self.deadlines: AskDeadlines | None = None
        """Of capability requests (see :func:`flockrt.flock.requests.answer`), once one is made."""
        self.here_deadlines: AskDeadlines | None = None
        """Of work run in its submitters' Tasks (see :mod:`flockrt.flock.waiting`), once one has one."""

    # ------------------------------------------------------------------ members

    def join(self, card: AgentCard) -> None:
        """A local agent is ready for work (also after a restart)."""
        self.leave(card.id)  # (a restart: out of the skills it had, which may not all be its now)
        skills = tuple(self._skill("capability", c) for c in card.capabilities) + tuple(
            self._skill("task", t) for t in card.task_types
        )
        member = self._members[card.id] = Member(card, skills)
        for skill in skills:
            skill.agents.add(card.id)
            inline = card.inline_task_types if skill.kind == "task" else card.inline_capabilities
            if skill.name in inline:
                skill.inline.add(card.id)
            else:
                skill.inline.discard(card.id)
        self.offer(member)
        for skill in skills:
            self.pump(skill)

    def leave(self, agent_id: str) -> bool:
        """A local agent takes no more work; False if it was not a member."""
        member = self._members.pop(agent_id, None)
        if member is None:
            return False
        for skill in member.skills:
            skill.agents.discard(agent_id)
            skill.inline.discard(agent_id)
        return True

    def work_done(self, agent_id: str) -> None:
        member = self._members.get(agent_id)
        if member is None:
            return
        running = member.running = member.running - 1 if member.running > 0 else 0
        member.version = next(self._versions)  # (offer, inlined: once per piece of work)
        self._heap_changes += 1
        free = running < member.card.max_concurrent_tasks
        for skill in member.skills:
            if free:
                skill.lowered[agent_id] = member
            if skill.waiting:
                self.pump(skill)

    def member(self, agent_id: str) -> AgentCard | None:
        """The card of local agent ``agent_id``, or None."""
        member = self._members.get(agent_id)
        return None if member is None else member.card

    def members(self) -> list[AgentCard]:
        """The cards of the local agents."""
        return [member.card for member in self._members.values()]

    def has_skill(self, kind: str, key: str) -> bool:
        """Whether an agent of this process offers this capability ("capability") or task type ("task")."""
        skill = self._skills.get((kind, key))
        return skill is not None and bool(skill.agents)

    def is_local(self, agent_id: str) -> bool:
        """Whether ``agent_id`` is an agent of this process."""
        return agent_id in self._members

    def capacity(self, kind: str, key: str) -> int:
        """Slots of the local agents that offer this skill (free or not)."""
        skill = self._skills.get((kind, key))
        if skill is None:
            return 0
        return sum(self._members[agent_id].card.max_concurrent_tasks for agent_id in skill.agents)

    def handles_tasks(self) -> bool:
        """Whether a local agent handles any task type."""
        return any(skill.agents for skill in self._task_skills.values())

    @property
    def queued_work(self) -> int:
        """Tasks and capability requests waiting for a free local agent."""
        return sum(len(skill.waiting) for skill in self._skills.values())

    @property
    def has_listeners(self) -> bool:
        """Whether anyone listens for task results (see :meth:`on_result`)."""
        return bool(self._result_listeners)

    def on_result(self, listener: Callable[[TaskResult], None]) -> Callable[[], None]:
        """Call ``listener`` with every TaskResult of this process; returns an unsubscribe."""
        # Copy on write: a listener may unsubscribe while results are being delivered.
        self._result_listeners = [*self._result_listeners, listener]

        def unsubscribe() -> None:
            self._result_listeners = [other for other in self._result_listeners if other is not listener]

        return unsubscribe

    # ------------------------------------------------------------------ capability requests

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

        A capability no local agent offers goes to the dispatcher's ``fallback`` (over NATS:
        another process), if it has one.

        Raises:
            NoCapableAgent: no agent offers it.
            WorkTimeout: no answer within ``timeout`` seconds.
            WorkFailed: the agent's handler raised (the cause is attached).
        """
        if self.fallback is not None and not self.has_skill("capability", capability):
            response = await self.fallback(capability, parameters, timeout=timeout, progress=progress)
            return response.result
        here = waiting.capability_here(self, capability, parameters, timeout, progress)
        if here is not None:
            return await here
        return await requests.answer(
            self, requests.call_capability(self, capability, parameters, progress), timeout
        )

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
        if self.fallback is not None and not self.has_skill("capability", capability):
            return await self.fallback(capability, parameters, timeout=timeout, progress=progress)
        here = waiting.here(self, capability, parameters, progress, timeout)
        if here is not None:
            stats = self.work_stats
            result = await (here if stats is None else waiting.counted(here, stats, capability))
            work: CapabilityCall = here  # (a CapabilityHere: the work itself)
        else:
            work = requests.call_capability(self, capability, parameters, progress)
            result = await requests.answer(self, work, timeout)
        return CapabilityResponse(correlation_id=work.correlation_id, result=result, agent_id=work.agent_id)

    # ------------------------------------------------------------------ tasks

    def start_task(
        self, task: TaskMessage, *, progress: ProgressCallback | None = None
    ) -> asyncio.Future[TaskResult]:
        """Queue ``task`` for a local agent; the future gets its TaskResult (never an exception).

        ``progress`` gets what the agent reports while it works (see :meth:`request_capability`).

        Raises:
            NoCapableAgent: no agent of this process handles the task's type.
        """
        result: asyncio.Future[TaskResult] = asyncio.get_running_loop().create_future()
        correlation = correlation_id.get() or task.id  # as task.result has it
        if progress is None:  # (the fast path, as in dispatch_task)
            skill = self._task_skills.get(task.type)
            origin = (task, None, correlation, result)
            if skill is not None and self.run_now(skill, task, correlation, self._deliver_task, origin):
                return result
        self.dispatch(self.task_run(task, None, progress, correlation, result))
        return result

    async def run_task(
        self, task: TaskMessage, *, timeout: float | None = None, progress: ProgressCallback | None = None
    ) -> TaskResult:
        """Run ``task`` on a local agent for a submitter that waits for it, and return its
        TaskResult: the submitter owns the task (see :func:`flockrt.flock.waiting.run_task`).

        Raises:
            NoCapableAgent: no agent of this process handles the task's type.
            WorkTimeout: no result within ``timeout`` seconds (the task was cancelled).
        """
        return await waiting.run_task(self, task, timeout, progress)

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
        correlation = correlation or correlation_id.get() or task.id  # as task.result has it
        if progress is None:
            skill = self._task_skills.get(task.type)
            origin = (task, then, correlation, None)
            if skill is not None and self.run_now(skill, task, correlation, self._deliver_task, origin):
                return
        self.dispatch(self.task_run(task, then, progress, correlation, None))

    def task_run(
        self,
        task: TaskMessage,
        then: Callable[[TaskResult], None] | None,
        progress: ProgressCallback | None,
        correlation: str,
        waiter: asyncio.Future[TaskResult] | None,
    ) -> TaskRun:
        """``task`` as a :class:`TaskRun` that carries its ``then`` and ``waiter`` (one hook for
        every task, :meth:`_on_task_done`: no closure per task)."""
        return TaskRun(
            key=task.type,
            task=task,
            priority=PRIORITIES[task.priority],
            on_done=self._task_hook,
            progress=progress,
            correlation_id=correlation,
            then=then,
            waiter=waiter,
        )

    def _on_task_done(self, work: TaskRun, value: Any, error: WorkFailed | None) -> None:
        """Every TaskRun's ``on_done``: its TaskResult, counted, timed and reported, kept on
        the work (for a submitter that ran it), then to its ``then`` and its ``waiter``."""
        outcome = work.result = self.finish_task(work.task, work, value, error, True)
        then, waiter = work.then, work.waiter
        if then is not None:
            then(outcome)  # (a failure is logged by Work.finish, as for any hook)
        if waiter is not None and not waiter.done():  # (done: its submitter gave up)
            waiter.set_result(outcome)

    def dispatch_tasks(
        self,
        tasks: Sequence[TaskMessage],
        then: Callable[[list[TaskResult]], None] | None = None,
        *,
        publish: bool = True,
    ) -> None:
        """Queue many tasks at once (a batch): as :meth:`dispatch_task` for each of them, at a
        fraction of the cost per task (see :mod:`flockrt.flock.batches`).

        Each TaskResult goes to the sink (unless ``publish`` is False) and the result listeners
        as its task finishes; ``then`` gets all of them, in the order of ``tasks``, once the
        last one is in.

        Raises:
            NoCapableAgent: no local agent handles the type of one of the tasks (and none of
                them was queued).
        """
        batches.dispatch_tasks(self, tasks, then, publish=publish)

    # ------------------------------------------------------------------ skills

    def skill(self, kind: Literal["capability", "task"], name: str) -> Skill | None:
        """The skill ``kind``/``name`` if a local agent ever offered it (for :meth:`run_now`)."""
        return self._task_skills.get(name) if kind == "task" else self._skills.get((kind, name))

    # ------------------------------------------------------------------ dispatching

    def _skill(self, kind: Literal["capability", "task"], name: str) -> Skill:
        """The skill ``kind``/``name``, created the first time an agent offers it."""
        skill = self._skills.get((kind, name))
        if skill is None:
            skill = self._skills[kind, name] = Skill(kind, name)
            if kind == "task":
                self._task_skills[name] = skill
        return skill

    def dispatch(self, work: Work) -> None:
        """Hand ``work`` to the best free agent of its skill, or queue it by priority.

        Raises:
            NoCapableAgent: no local agent offers the skill.
        """
        skill = self._skills.get((work.kind, work.key))
        if skill is None or not skill.agents:
            raise NoCapableAgent(work.kind, work.key)
        queue = skill.waiting
        if queue or skill.pumping:
            heapq.heappush(queue, (work.priority, next(self.order), work))
            self.pump(skill)
            return
        # Nothing waits: straight to the best free agent, if there is one (no queue to order).
        skill.pumping = True
        try:
            member = self.free_member(skill)
            if member is None or not self.hand_over(member, skill, work):
                heapq.heappush(queue, (work.priority, next(self.order), work))
        finally:
            skill.pumping = False
        if queue:  # work queued while an inline handler ran, or the work above
            self.pump(skill)

    def unhand(self, agent_id: str, skill: Skill, count: int) -> None:
        """``count`` tasks of ``skill`` handed to ``agent_id`` came back unstarted: they no
        longer count toward its share."""
        member = self._members.get(agent_id)
        if member is not None:
            member.handed[skill] = member.handed.get(skill, 0) - count
            self.offer(member)  # its key fell

    def enqueue(self, skill: Skill, work: Work) -> None:
        """Queue ``work`` for ``skill`` (by priority, then age) without pumping."""
        heapq.heappush(skill.waiting, (work.priority, next(self.order), work))

    def pump(self, skill: Skill) -> None:
        """Hand queued work to free agents, highest priority first, least loaded agent first.

        Invariant: while work waits in a skill's queue, no agent of that skill has a free slot
        (every slot that frees up calls work_done, which pumps). So the agent that just
        finished is the one that gets the next piece, which lets its runner go on with it.

        Work whose handler never waits runs inside ``take_work`` and calls work_done, which
        pumps again: that inner call returns at once (``Skill.pumping``) and this loop goes on,
        so draining a long queue does not recurse.
        """
        queue = skill.waiting
        if not queue or skill.pumping:
            return
        skill.pumping = True
        try:
            while queue:
                member = self.free_member(skill)
                if member is None:
                    return
                entry = heapq.heappop(queue)
                if entry[2].abandoned:  # its requester gave up
                    continue
                if not self.hand_over(member, skill, entry[2]):
                    heapq.heappush(queue, entry)
                    return  # the agent will pull again when it finishes something
        finally:
            skill.pumping = False

    def hand_over(self, member: Member, skill: Skill, work: Work) -> bool:
        """Give ``work`` (of ``skill``) to ``member``: directly, or through its mailbox while it
        cannot take work (restarting, say). False if its mailbox is full."""
        work.agent_id = member.card.id
        member.running += 1  # before the handover: inline work finishes within it
        pieces = len(work.tasks) if type(work) is TaskBatch else 1
        member.handed[skill] = member.handed.get(skill, 0) + pieces  # (its entries: see free_member)
        take_work = member.card.take_work
        if take_work is None or not take_work(work):
            try:
                member.card.ref.tell(work)
            except MailboxFull:
                member.running -= 1
                member.handed[skill] -= pieces
                self.offer(member)
                return False
        return True

    def free_member(self, skill: Skill) -> Member | None:
        """The least loaded agent with a free slot; ties go to the one handed least of this
        skill so far, then to the smallest id (``fair_key``): fair and deterministic. Its
        current entry is then at the top of the skill's free heap.

        Taking a slot (:meth:`hand_over`) only raises the member's key: its entries stay, each
        a lower bound of its key, and the top one is brought up to date here when it surfaces
        (one sift, in this skill's heap only) or dropped if the member is full. Only a key that
        falls (a slot given back: :meth:`offer`) needs new entries."""
        if skill.lowered:
            push_lowered(skill, self._members)
            self._heap_changes += 1
        heap = skill.free
        members = self._members
        while heap:
            _, agent_id, version, running = heap[0]
            member = members.get(agent_id)
            if (
                member is not None
                and member.version == version
                and member.card.ref.is_alive
                and member.running < member.card.max_concurrent_tasks
            ):
                if member.running == running:  # its key is the entry's (see Skill.free)
                    return member
                heapq.heapreplace(heap, member.entry(skill))  # it took work since
                self._heap_changes += 1
                continue
            heapq.heappop(heap)  # stale: the member changed, is full, left, or is stopping
            self._heap_changes += 1
        return None

    def offer(self, member: Member) -> None:
        """``member``'s key fell (work done, arrival, a handover taken back): its entries in
        the free heaps are replaced by one current entry per skill, if it has a free slot,
        pushed when the skill next looks for a free member (:meth:`free_member`). (A key that
        rises needs no new entries: see there.)"""
        member.version = next(self._versions)
        if member.running < member.card.max_concurrent_tasks:
            agent_id = member.card.id
            for skill in member.skills:
                skill.lowered[agent_id] = member
        self._heap_changes += 1

    async def wait(self, future: asyncio.Future[Any], kind: str, key: str, timeout: float | None) -> Any:
        """Await ``future`` (of work ``kind``/``key``) for at most ``timeout`` seconds.

        Raises:
            WorkTimeout: it did not finish in time.
        """
        # Capability requests are counted and timed here, where every one of them is awaited:
        # a done-callback would cost a loop turn per request. asyncio.timeout, not wait_for:
        # on 3.11, wait_for returns the result instead of raising when a cancellation arrives
        # just as the future completes, and the caller's cancellation would be lost.
        stats = self.work_stats if kind == "capability" else None
        if stats is None:
            if timeout is None:  # no timeout context at all: it would cost a Timeout per wait
                return await future
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

    # ------------------------------------------------------------------ results

    def finish_task(
        self, task: TaskMessage, work: Work, value: Any, error: WorkFailed | None, publish: bool
    ) -> TaskResult:
        """``task`` (of ``work``) finished: its TaskResult, counted, timed and reported (to the
        sink only if ``publish``) with the work's correlation id."""
        seconds = time.monotonic() - work.enqueued
        outcome = self.task_result(task, work.agent_id, seconds, value, error)
        stats = self.work_stats
        if stats is not None:
            stats.record("task", task.type, outcome.status, seconds)
        self.report(outcome, publish, work.correlation_id or task.id)
        return outcome

    def task_result(
        self, task: TaskMessage, agent_id: str, seconds: float, value: Any, error: WorkFailed | None
    ) -> TaskResult:
        """A finished task's TaskResult, counted in ``tasks_finished`` (the caller times it)."""
        duration_ms = seconds * 1000
        if error is None:
            self.tasks_finished["ok"] += 1
            return TaskResult(task_id=task.id, result=value, processed_by=agent_id, duration_ms=duration_ms)
        self.tasks_finished["error"] += 1
        return TaskResult(
            task_id=task.id,
            processed_by=error.agent_id,
            status="error",
            error=error.reason,
            duration_ms=duration_ms,
            error_type=error.error_type,
        )

    def report(self, outcome: TaskResult, publish: bool, correlation: str | None) -> None:
        """Hand a TaskResult to the sink (if ``publish``), with the correlation id of its work,
        then to every listener."""
        sink = self.sink
        if publish and sink is not None:
            try:
                sink(outcome, correlation)
            except Exception:  # as for a listener: the others still get the result
                log.exception("task result of %s not published", outcome.task_id)
        for listener in self._result_listeners:
            try:
                listener(outcome)
            except Exception:  # one listener's bug must not cost the others their result
                log.exception("task result listener %r failed", listener)
