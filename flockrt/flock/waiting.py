"""Work whose submitter waits for it: ``submit(..., wait=True)`` and ``request_capability`` in
the process of the agents (see :class:`~flockrt.flock.dispatcher.Dispatcher`).

The submitter owns such work. When nothing of its skill waits and an agent is free, the agent
runs it in the submitter's own Task (:meth:`Agent.run_here <flockrt.agents.running.WorkRunner.run_here>`,
:class:`~flockrt.agents.here.Here`): no runner Task, no future, no frame of the flock's in
between; the submitter awaits the Here at once. Otherwise it waits in the skill's queue like
any work, and a submitter that gives up still stops it (a task's waiter is followed:
``TaskRun.owned``; a capability request's future, as ever).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from flockrt.actors.correlation import correlation_id
from flockrt.actors.deadlines import AskDeadlines
from flockrt.agents.here import CapabilityHere, Here, TaskHere, here_timeout
from flockrt.agents.work import ProgressCallback
from flockrt.errors import WorkFailed, WorkTimeout
from flockrt.flock.batches import PRIORITIES

if TYPE_CHECKING:
    from flockrt.flock.dispatcher import Dispatcher
    from flockrt.flock.skills import Member, Skill
    from flockrt.flock.stats import WorkStats
    from flockrt.wire.schema import TaskMessage, TaskResult

H = TypeVar("H", bound=Here)

__all__ = ["capability_here", "counted", "free_here", "hand_here", "here", "run_task", "task_here"]


async def run_task(
    dispatcher: Dispatcher, task: TaskMessage, timeout: float | None, progress: ProgressCallback | None
) -> TaskResult:
    """Run ``task`` on a local agent for a submitter that waits for it; its TaskResult.

    The submitter owns the task: when an agent is free, the handler runs in the submitter's
    own Task (:func:`task_here`), and when it had to wait for one, a submitter that gives up
    still stops it. So a submitter that is cancelled, or whose ``timeout`` passes, cancels
    its task, whose result is then an error ("cancelled"). The agent owns it too: an agent
    that stops interrupts it, and the submitter gets its "agent stopped" result. A handler
    that never waits runs on the dispatcher's fast path, right here.

    Raises:
        NoCapableAgent: no agent of this process handles the task's type.
        WorkTimeout: no result within ``timeout`` seconds (the task was cancelled).
    """
    running = task_here(dispatcher, task, timeout, progress)
    if running is not None:
        result: TaskResult = await running
        return result
    correlation = correlation_id.get() or task.id  # as task.result has it
    skill = dispatcher.skill("task", task.type)
    if progress is None and skill is not None and skill.inline:  # (the fast path, as in dispatch_task)
        origin: list[Any] = [dispatcher, task, correlation, None]
        if dispatcher.run_now(skill, task, correlation, _keep_task_result, origin):
            result = origin[3]
            return result
    waiter: asyncio.Future[TaskResult] = asyncio.get_running_loop().create_future()
    work = dispatcher.task_run(task, None, progress, correlation, waiter)
    work.owned = True
    dispatcher.dispatch(work)
    if timeout is None:
        return await waiter
    outcome: TaskResult = await dispatcher.wait(waiter, "task", task.type, timeout)
    return outcome


def task_here(
    dispatcher: Dispatcher, task: TaskMessage, timeout: float | None, progress: ProgressCallback | None = None
) -> Here | None:
    """:func:`run_task`'s way when nothing of the task's type waits and a free agent's
    handler for it waits: the agent runs it in the current Task. The Here must be awaited at
    once, in this Task (the agent's slot is taken for it now); it gives the TaskResult. None,
    having done nothing, otherwise."""
    skill = dispatcher.skill("task", task.type)
    if skill is None or skill.inline or skill.pumping or skill.waiting:  # (free_here, inlined)
        return None  # (an inline skill: the fast path, in run_task)
    member = dispatcher.free_member(skill)
    if member is None or member.card.run_here is None:
        return None
    work = TaskHere(  # (as Dispatcher.task_run makes a TaskRun: one hook for every task)
        key=task.type,
        task=task,
        priority=PRIORITIES[task.priority],
        on_done=dispatcher._task_hook,
        progress=progress,
        correlation_id=correlation_id.get() or task.id,
    )
    return hand_here(dispatcher, member, skill, work, timeout)


def _keep_task_result(
    origin: list[Any], agent_id: str, value: Any, error: WorkFailed | None, seconds: float
) -> None:
    """A task of :func:`run_task` ran on the fast path: its TaskResult to the sink and the
    listeners, and into ``origin`` (``[dispatcher, task, correlation, result]``)."""
    dispatcher, task, correlation = origin[0], origin[1], origin[2]
    origin[3] = result = dispatcher.task_result(task, agent_id, seconds, value, error)
    dispatcher.report(result, True, correlation)


def capability_here(
    dispatcher: Dispatcher,
    capability: str,
    parameters: Any,
    timeout: float | None,
    progress: ProgressCallback | None = None,
) -> Awaitable[Any] | None:
    """A capability request run by a free local agent in the current Task (see :func:`here`),
    counted and timed in the dispatcher's ``work_stats`` if it has them. What this returns
    must be awaited at once, in this Task; it gives the answer. None, having done nothing,
    when nothing of it waits and no agent is free: the request then waits for one."""
    running = here(dispatcher, capability, parameters, progress, timeout)
    stats = dispatcher.work_stats
    if running is None or stats is None:
        return running
    return counted(running, stats, capability)


def here(
    dispatcher: Dispatcher,
    capability: str,
    parameters: Any,
    progress: ProgressCallback | None,
    timeout: float | None,
) -> CapabilityHere | None:
    """A capability request run by a free local agent in the requester's own Task, to be
    awaited at once (see :func:`hand_here`); None when nothing of it waits and no agent is
    free."""
    skill = dispatcher.skill("capability", capability)
    if skill is None:
        return None
    member = free_here(dispatcher, skill)
    if member is None:
        return None
    work = CapabilityHere(
        key=capability,
        parameters=parameters,
        priority=PRIORITIES["medium"],
        progress=progress,
        correlation_id=correlation_id.get(),
    )
    return hand_here(dispatcher, member, skill, work, timeout)


async def counted(answer: Awaitable[Any], stats: WorkStats, capability: str) -> Any:
    """Await ``answer`` (to a request for ``capability``: a :func:`here`, or a queued request's
    future, see :func:`flockrt.flock.requests.answer`), counted and timed in ``stats`` by
    outcome: ``ok``, ``error``, ``timeout`` (WorkTimeout) or ``cancelled``."""
    started = time.monotonic()
    outcome = "error"
    try:
        value = await answer
        outcome = "ok"
        return value
    except WorkTimeout:
        outcome = "timeout"
        raise
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        stats.record("capability", capability, outcome, time.monotonic() - started)


def free_here(dispatcher: Dispatcher, skill: Skill) -> Member | None:
    """The agent that would get work of ``skill`` now, if nothing of it waits and the agent
    can run work in its submitter's Task (see :func:`hand_here`); else None."""
    if skill.pumping or skill.waiting:
        return None
    member = dispatcher.free_member(skill)
    if member is None or member.card.run_here is None:
        return None
    return member


def hand_here(
    dispatcher: Dispatcher, member: Member, skill: Skill, work: H, timeout: float | None
) -> H | None:
    """Have ``member`` (of :func:`free_here`) run ``work`` in the current Task, its
    submitter's, which awaits the Here at once (``Agent.run_here``): the agent's slot is
    taken as for a handover (:meth:`Dispatcher.hand_over`), and the agent gives it back at
    the end, as its runner would. Past ``timeout`` seconds (if any) the work is interrupted
    and its submitter gets WorkTimeout. None, having done nothing, when the agent cannot take
    it now."""
    work.agent_id = member.card.id
    member.running += 1
    handed = member.handed
    handed[skill] = handed.get(skill, 0) + 1  # (its free entries: see Dispatcher.free_member)
    run_here = member.card.run_here
    if run_here is None or run_here(work) is None:
        member.running -= 1
        handed[skill] -= 1
        dispatcher.offer(member)
        return None
    if timeout is not None:
        deadlines = dispatcher.here_deadlines
        if deadlines is None:
            deadlines = dispatcher.here_deadlines = AskDeadlines(asyncio.get_running_loop(), here_timeout)
        work.deadline = deadlines.hold(work, work, timeout)
    return work
