"""The dispatcher's fast path: :class:`FastPath`, a part of
:class:`~flockrt.flock.dispatcher.Dispatcher`.

When nothing of a skill waits and the best free agent's handler never waits, the agent runs
the work (a task, or a capability request's parameters) then and there, with no
:class:`~flockrt.agents.work.Work`, no handover and no Task: :meth:`FastPath.run_now`, which
hands the outcome to a ``deliver`` callback, and :meth:`FastPath.run_task_now`, for a caller
that takes a task's TaskResult itself. A task from NATS (``bus/lanes.py``) takes the latter,
within the callback that received it, with no origin, no delivery callback and no ``then`` per
task: the caller gets the TaskResult back and answers the request itself. Choosing and running
the agent is :meth:`FastPath._run_inline_now` for both.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any

from flockrt.errors import WorkFailed
from flockrt.flock.skills import HANDED_ONE, Member, Skill
from flockrt.flock.stats import WorkStats
from flockrt.wire.schema import TaskMessage, TaskResult

__all__ = ["Deliver", "FastPath"]

log = logging.getLogger("flockrt.flock")

Deliver = Callable[[Any, str, Any, "WorkFailed | None", float], None]
"""How the fast path hands over an outcome: ``deliver(origin, agent_id, value, error, seconds)``,
``origin`` being what the caller passed to :meth:`FastPath.run_now` (no closure per piece)."""


class FastPath:
    """The part of :class:`~flockrt.flock.dispatcher.Dispatcher` that runs work on its fast
    path (a base of Dispatcher only: it works on the dispatcher's fields)."""

    work_stats: WorkStats | None
    tasks_finished: dict[str, int]
    sink: Callable[[TaskResult, str | None], None] | None
    _result_listeners: list[Callable[[TaskResult], None]]
    _task_skills: dict[str, Skill]
    _members: dict[str, Member]
    _heap_changes: int

    if TYPE_CHECKING:

        def task_result(
            self, task: TaskMessage, agent_id: str, seconds: float, value: Any, error: WorkFailed | None
        ) -> TaskResult: ...

        def free_member(self, skill: Skill) -> Member | None: ...

        def offer(self, member: Member) -> None: ...

        def pump(self, skill: Skill) -> None: ...

        def report(self, outcome: TaskResult, publish: bool, correlation: str | None) -> None: ...

    def run_now(
        self, skill: Skill, payload: Any, correlation: str | None, deliver: Deliver, origin: Any
    ) -> bool:
        """THE fast path, for tasks (``payload``: the TaskMessage) and capability requests (their
        parameters) alike: when nothing of ``skill`` waits and the best free agent's handler
        never waits, run the work here and now (see :meth:`_run_inline_now`), count and time it
        in ``work_stats``, hand the outcome to ``deliver(origin, agent_id, value, error,
        seconds)``, then hand out what was queued meanwhile. True once done; False, having done
        nothing, when the work must take the usual path. A ``deliver`` that raises is logged
        and costs nobody else anything."""
        started = monotonic()
        ran = self._run_inline_now(skill, payload, correlation)
        if ran is None:
            return False
        member, value, error = ran
        seconds = monotonic() - started
        stats = self.work_stats
        if stats is not None:
            stats.record(skill.kind, skill.name, "ok" if error is None else "error", seconds)
        try:
            deliver(origin, member.card.id, value, error, seconds)
        except Exception:  # as Work.finish does with a failing hook
            log.exception("%s %s: the delivery of its outcome failed", skill.kind, skill.name)
        self.pump_skills_of(member)
        return True

    def _deliver_task(
        self,
        origin: tuple[
            TaskMessage, Callable[[TaskResult], None] | None, str, asyncio.Future[TaskResult] | None
        ],
        agent_id: str,
        value: Any,
        error: WorkFailed | None,
        seconds: float,
    ) -> None:
        """A task ran on the fast path: its TaskResult to the sink and the listeners, then to
        its ``then`` and its ``waiter``."""
        task, then, correlation, waiter = origin
        result = self.task_result(task, agent_id, seconds, value, error)
        self.report(result, True, correlation)
        if then is not None:
            try:
                then(result)
            except Exception:  # as Work.finish does with a failing hook
                log.exception("task %s: the hook on its result failed", task.id)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

    def _run_inline_now(
        self, skill: Skill, payload: Any, correlation: str | None
    ) -> tuple[Member, Any, WorkFailed | None] | None:
        """When nothing of ``skill`` waits and the best free agent's handler for it never
        waits, that agent runs the work (a TaskMessage, or a capability request's parameters)
        here and now (``Agent._run_now``), with no :class:`Work`, no handover and no second
        look at the free heaps: the agent, and the handler's value or failure. None, having
        done nothing, when the work must take the usual path.

        The rules of the usual path hold: the agent is the fair choice (:meth:`free_member`);
        it is busy while the handler runs (a slot taken, and all its free entries stale, so
        that work dispatched meanwhile, by the handler itself, goes to other agents or waits,
        even when the agent has more slots). :meth:`run_now` then hands the outcome over and
        calls :meth:`pump_skills_of`: work queued meanwhile goes out once the agent is free again.

        The choice's usual case is taken here, without :meth:`free_member`'s frame: no member
        waits to be pushed (``Skill.lowered``) and the top entry of the free heap is current
        (its member's version and running count, see ``Skill.free``), so it is that member's
        key, and the member has a free slot (an entry is only ever made for a member with
        one). Whether the agent runs, its ``run_now`` says (``ActorContext.runs``: not
        stopping, not restarting): one check where free_member's ``ActorRef.is_alive`` would
        be a second. So a member that has begun stopping but not yet left (its cell closed)
        makes the work take the usual path once, whose free_member drops its entry: the work
        goes to the agent that free_member chose before, by the usual path.
        """
        if skill.pumping or skill.waiting or not skill.inline:
            return None
        heap = skill.free
        member = None
        if heap and not skill.lowered:
            entry = heap[0]
            member = self._members.get(entry[1])
            if member is not None and (member.version != entry[2] or member.running != entry[3]):
                member = None
        if member is None:
            member = self.free_member(skill)  # (it drops or updates the top entry)
            if member is None:
                return None
            heap = skill.free  # (it may have rebuilt it)
            entry = heap[0]  # the member's current entry (see free_member)
        card = member.card
        if card.run_now is None or card.id not in skill.inline:  # (its card's inline ones)
            return None
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
                member.version = entry[2]
                if ran is not None:
                    heapq.heapreplace(heap, (entry[0] + HANDED_ONE, entry[1], entry[2], entry[3]))
            else:  # work was dispatched while it ran (its handler did that): a full re-offer
                self.offer(member)
        if ran is None:  # it cannot take work right now (restarting, say): the usual path
            return None
        return member, ran[0], ran[1]

    def pump_skills_of(self, member: Member) -> None:
        """Hand out work queued for ``member``'s skills while it ran inline work."""
        for skill in member.skills:
            if skill.waiting:
                self.pump(skill)

    def run_task_now(self, task: TaskMessage, correlation: str) -> TaskResult | None:
        """Run ``task`` here and now if nothing of its type waits and the best free agent's
        handler never waits (the rules of ``Dispatcher._run_inline_now``), count and time it,
        hand its TaskResult to the sink (with ``correlation``, the id of its work) and the
        result listeners, hand out what was queued meanwhile, and return it: what
        ``dispatch_task(task, then)`` does on its fast path, ``then`` being the caller's own
        code after the call. None, having done nothing, when the task must take the usual
        path (``dispatch_task``, or ``dispatch`` of a ``task_run``)."""
        skill = self._task_skills.get(task.type)
        if skill is None:
            return None
        started = monotonic()
        ran = self._run_inline_now(skill, task, correlation)
        if ran is None:
            return None
        member, value, error = ran
        card = member.card
        seconds = monotonic() - started
        if error is None:  # (task_result, inlined for the usual outcome)
            self.tasks_finished["ok"] += 1
            result = TaskResult(
                task_id=task.id, result=value, processed_by=card.id, duration_ms=seconds * 1000
            )
        else:
            result = self.task_result(task, card.id, seconds, None, error)
        stats = self.work_stats
        if stats is not None:
            stats.record("task", skill.name, result.status, seconds)
        sink = self.sink
        if sink is not None and not self._result_listeners:  # (report's usual case, inlined)
            try:
                sink(result, correlation)
            except Exception:  # (as report does)
                log.exception("task result of %s not published", result.task_id)
        else:
            self.report(result, True, correlation)
        for other in member.skills:  # (Dispatcher.pump_skills_of, inlined)
            if other.waiting:
                self.pump(other)
        return result
