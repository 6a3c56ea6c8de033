"""Batches: many tasks dispatched at once (what a ``batch.messages`` message brings), at a
fraction of the cost per task of dispatching them one by one.

A batch goes to an agent whose handler never waits as ONE :class:`~flockrt.agents.work.TaskBatch`:
one slot, one handover, its tasks run in one loop. The rules of the one-by-one path hold per
task (see :func:`_dispatch_group`). Also here: how a node builds the TaskMessages it submits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from flockrt.actors.correlation import correlation_id, unique_id
from flockrt.agents.work import TaskBatch, TaskRun, Work
from flockrt.errors import NoCapableAgent, WorkFailed
from flockrt.wire.schema import Priority, TaskMessage, TaskResult

if TYPE_CHECKING:
    from flockrt.flock.dispatcher import Dispatcher
    from flockrt.flock.skills import Skill

__all__ = ["PRIORITIES", "dispatch_tasks", "new_task", "new_tasks"]

PRIORITIES: dict[str, int] = {"high": 0, "medium": 1, "low": 2}

_HEX = tuple(f"{i:x}" for i in range(1024))
"""Id suffixes of the tasks of a batch (formatting a number costs more than the task)."""


def new_task(
    node: str,
    task_type: str,
    data: Any = None,
    *,
    priority: Priority = "medium",
    task_id: str | None = None,
    timeout: float | None = None,
    metadata: dict[str, Any] | None = None,
) -> TaskMessage:
    """A TaskMessage from ``node`` (a fresh id unless given; ``timeout`` in seconds)."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of high, medium, low, got {priority!r}")
    return TaskMessage(
        id=task_id or unique_id(),
        type=task_type,
        data=data,
        priority=priority,
        requester=node,
        timeout=int(timeout * 1000) if timeout is not None else None,
        metadata=metadata,
    )


def new_tasks(
    node: str,
    task_type: str,
    items: Iterable[Any],
    *,
    priority: Priority = "medium",
    timeout: float | None = None,
    metadata: dict[str, Any] | None = None,
) -> list[TaskMessage]:
    """A TaskMessage per item of ``items`` (its data), as :func:`new_task` builds them, with
    what they share checked once (a batch's worth costs half as much).

    Their ids share one :func:`~flockrt.actors.correlation.unique_id`: ``<id>-<i>`` for the
    i-th item (hex), never equal to an id of :func:`new_task` (a bare ``<id>``).
    """
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of high, medium, low, got {priority!r}")
    prefix = f"{unique_id()}-"
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


class Batch:
    """Tasks dispatched together (:func:`dispatch_tasks`): where their results go.

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


def dispatch_tasks(
    dispatcher: Dispatcher,
    tasks: Sequence[TaskMessage],
    then: Callable[[list[TaskResult]], None] | None,
    *,
    publish: bool,
) -> None:
    """:meth:`Dispatcher.dispatch_tasks`; ``publish=False``: the results do not go to the
    dispatcher's sink (they go back together, through ``then``)."""
    batch = Batch(len(tasks), then, publish)
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
    skills = {}
    for key in groups:
        skill = dispatcher.skill("task", key)
        if skill is None or not skill.agents:
            raise NoCapableAgent("task", key)
        skills[key] = skill
    correlation = correlation_id.get()
    for key, (indices, ordered) in groups.items():
        _dispatch_group(dispatcher, skills[key], indices, ordered, batch, correlation)


def _dispatch_group(
    dispatcher: Dispatcher,
    skill: Skill,
    indices: Sequence[int],
    tasks: Sequence[TaskMessage],
    batch: Batch,
    correlation: str | None,
) -> None:
    """Hand tasks of one type (``indices``: their places in the batch) to free agents.

    A free agent whose handler for the type never waits takes all the tasks left as ONE
    :class:`TaskBatch`, run in one tight loop within the handover. This keeps every rule of the
    one-by-one path:

    - it occupies one slot, so max_concurrent_tasks holds;
    - a TaskBatch is handed over only when nothing of this skill waits in the queue (else
      every task joins the queue, by priority), and its tasks run highest priority first;
      nothing can be dispatched while the loop runs (it never suspends), so no other work
      can wait behind it;
    - one agent doing them all instead of one agent each delays none of them: inline work
      runs one piece after another either way, inside this call;
    - the agent's ``handed`` count grows by the number of tasks, so the fair choice
      spreads the next batches.

    Tasks for agents whose handler waits are handed over one per free slot, as by
    :meth:`Dispatcher.dispatch_task`, and the rest wait in the queue: a chunk handed to one of
    those would run its tasks one after another while other agents might sit idle.
    """
    queue = skill.waiting
    start, count = 0, len(tasks)
    if not queue and not skill.pumping:
        skill.pumping = True
        try:
            while start < count:
                member = dispatcher.free_member(skill)
                if member is None:
                    break
                work: Work
                if skill.name in member.card.inline_task_types:
                    work = _task_batch(dispatcher, skill, indices, tasks, start, batch, correlation)
                    taken = count - start
                else:
                    work = _batch_task(dispatcher, indices[start], tasks[start], batch, correlation)
                    taken = 1
                if not dispatcher.hand_over(member, skill, work):
                    break
                start += taken
        finally:
            skill.pumping = False
    for position in range(start, count):
        dispatcher.enqueue(
            skill, _batch_task(dispatcher, indices[position], tasks[position], batch, correlation)
        )
    if queue:
        dispatcher.pump(skill)


def _task_batch(
    dispatcher: Dispatcher,
    skill: Skill,
    indices: Sequence[int],
    tasks: Sequence[TaskMessage],
    start: int,
    batch: Batch,
    correlation: str | None,
) -> TaskBatch:
    """``tasks[start:]`` as one :class:`TaskBatch`; each outcome becomes a TaskResult."""
    chunk = tasks[start:] if start else tasks
    places = indices[start:] if start else indices

    def each(
        work: TaskBatch, first: int, values: list[Any], finished: list[float], failures: dict[int, WorkFailed]
    ) -> None:
        count = len(values)
        done = chunk if first == 0 and count == len(chunk) else chunk[first : first + count]
        stats = dispatcher.work_stats
        if failures or stats is not None or dispatcher.has_listeners or batch.publish:
            enqueued, agent_id = work.enqueued, work.agent_id
            outcomes = []
            for i, (task, value, at) in enumerate(zip(done, values, finished, strict=True)):
                outcome = dispatcher.task_result(
                    task, agent_id, at - enqueued, value, failures.get(first + i)
                )
                if stats is not None:
                    stats.record("task", task.type, outcome.status, at - enqueued)
                dispatcher.report(outcome, batch.publish, correlation or task.id)
                outcomes.append(outcome)
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
            dispatcher.tasks_finished["ok"] += count
        batch.fill(places, first, outcomes)

    def on_done(work: TaskBatch, value: Any, error: WorkFailed | None) -> None:
        # The tasks an agent that stopped never began go back to the queue (and no longer
        # count toward its share).
        if work.cursor < len(chunk):
            dispatcher.unhand(work.agent_id, skill, len(chunk) - work.cursor)
            for position in range(work.cursor, len(chunk)):
                again = _batch_task(dispatcher, places[position], chunk[position], batch, correlation)
                dispatcher.enqueue(skill, again)
            dispatcher.pump(skill)

    return TaskBatch(
        key=skill.name,
        tasks=chunk,
        each=each,
        on_done=on_done,
        priority=PRIORITIES[chunk[0].priority],
        correlation_id=correlation,  # None: each task's own id (see Agent._run_inline_batch)
    )


def _batch_task(
    dispatcher: Dispatcher, place: int, task: TaskMessage, batch: Batch, correlation: str | None
) -> TaskRun:
    """One task of a batch as a :class:`TaskRun` of its own (see :meth:`Dispatcher.dispatch_task`)."""
    finish = dispatcher.finish_task

    def on_done(work: TaskRun, value: Any, error: WorkFailed | None) -> None:
        batch.fill((place,), 0, [finish(task, work, value, error, batch.publish)])

    return TaskRun(
        key=task.type,
        task=task,
        priority=PRIORITIES[task.priority],
        on_done=on_done,
        correlation_id=correlation or task.id,
    )
