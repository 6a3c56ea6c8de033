"""The dispatcher's fast path for a task whose caller takes its TaskResult itself:
:class:`TaskFastPath`, a part of :class:`~flockrt.flock.dispatcher.Dispatcher`.

A task from NATS (``bus/lanes.py``) that finds a free agent whose handler never waits runs
within the callback that received it: :meth:`TaskFastPath.run_task_now` is
:meth:`Dispatcher.run_now <flockrt.flock.dispatcher.Dispatcher.run_now>` with the delivery of
the task's outcome in its own frame, with no origin, no delivery callback and no ``then`` per
task: the caller gets the TaskResult back and answers the request itself. Choosing and running
the agent is ``Dispatcher._run_inline_now``, the same as for every piece of work on the fast
path (inlining its heap bookkeeping here saved 2 % of a worker's instructions per task: not
worth a second copy of it).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from flockrt.errors import WorkFailed
from flockrt.flock.skills import Member, Skill
from flockrt.flock.stats import WorkStats
from flockrt.wire.schema import TaskMessage, TaskResult

__all__ = ["TaskFastPath"]


class TaskFastPath:
    """The part of :class:`~flockrt.flock.dispatcher.Dispatcher` that runs a task on its fast
    path for a caller that takes the TaskResult (a base of Dispatcher only: it works on the
    dispatcher's fields)."""

    work_stats: WorkStats | None
    tasks_finished: dict[str, int]
    _task_skills: dict[str, Skill]

    if TYPE_CHECKING:

        def task_result(
            self, task: TaskMessage, agent_id: str, seconds: float, value: Any, error: WorkFailed | None
        ) -> TaskResult: ...

        def pump(self, skill: Skill) -> None: ...

        def report(self, outcome: TaskResult, publish: bool, correlation: str | None) -> None: ...

        def _run_inline_now(
            self, skill: Skill, payload: Any, correlation: str | None
        ) -> tuple[Member, Any, WorkFailed | None] | None: ...

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
        started = time.monotonic()
        ran = self._run_inline_now(skill, task, correlation)
        if ran is None:
            return None
        member, value, error = ran
        card = member.card
        seconds = time.monotonic() - started
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
        self.report(result, True, correlation)
        for other in member.skills:  # (Dispatcher.pump_skills_of, inlined)
            if other.waiting:
                self.pump(other)
        return result
