"""The pieces of work a flock hands to an agent: a capability call, a task run, a task batch.

Each is its own type, with the fields that kind of work has: a capability call carries its
parameters and perhaps a waiting requester's future, a task run its TaskMessage, a task batch
the tasks it runs one after the other and how far it got. What they share (the skill they are
for, priority, correlation id, who runs them, the progress listener and the hook that hears the
outcome) is on :class:`Work`.

The flock creates them and the agent runs them; the outcome reaches the flock through
``on_done`` (and a batch's tasks through ``each``), called synchronously where the work ends,
so a task's result needs neither a future nor a loop turn of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from flockrt.errors import WorkFailed, WorkTimeout

if TYPE_CHECKING:
    from flockrt.wire.schema import TaskMessage

__all__ = [
    "CapabilityCall",
    "Follow",
    "ProgressCallback",
    "TaskBatch",
    "TaskDone",
    "TaskRun",
    "Work",
    "WorkDone",
    "follow_requester",
]

log = logging.getLogger("flockrt.agent")

ProgressCallback = Callable[[float, float | None, str | None], None]
"""``progress(done, total, message)``: how far a piece of work has come (MCP's progress
notification: ``done`` only grows; ``total`` is None when unknown). Called on the event loop;
it must not block and should not raise (an exception is logged and ignored)."""

WorkDone = Callable[[Any, Any, "WorkFailed | None"], object]
"""The flock's hook on a finished piece of work: ``(work, value, None)`` or ``(work, None, error)``."""

TaskDone = Callable[["TaskBatch", int, "list[Any]", "list[float]", "dict[int, WorkFailed]"], object]
"""The flock's hook on tasks of a batch that finished: ``(batch, start, values, finished,
failures)`` for ``batch.tasks[start : start + len(values)]``: their handlers' return values
(None for those that failed), when each one finished (``time.monotonic()``), and the failures
by index in ``batch.tasks``."""


@dataclass(eq=False, slots=True, kw_only=True)
class Work:
    """What every piece of work has.

    Attributes:
        key: The capability name or the task type.
        priority: 0 (high), 1 (medium) or 2 (low): lower runs first.
        enqueued: When the flock took it (``time.monotonic()``): durations count from here.
        agent_id: Who it was handed to (set by the flock).
        correlation_id: The correlation id of the request, set again while the handler runs.
        progress: Where the handler's :meth:`Agent.report_progress` goes (None: nobody listens).
        on_done: Called once, synchronously, when the work has finished.
    """

    kind: ClassVar[Literal["capability", "task"]]

    key: str
    priority: int = 1
    enqueued: float = field(default_factory=time.monotonic)
    agent_id: str = ""
    correlation_id: str | None = None
    progress: ProgressCallback | None = None
    on_done: WorkDone | None = None

    @property
    def abandoned(self) -> bool:
        """Its requester gave up waiting (there is no point in starting it)."""
        return False

    def outcome(self) -> Any:
        """What a submitter that ran it gets once it finished (see
        :class:`~flockrt.agents.here.Here`): None here; a task's TaskResult, a capability's
        value (or its failure, raised)."""
        return None

    def finish(self, value: Any, error: WorkFailed | None = None) -> None:
        """Deliver the outcome to the flock's hook."""
        if self.on_done is not None:
            try:
                self.on_done(self, value, error)
            except Exception:  # a bug in the flock's hook must not cost the agent its slot
                context = {"agent": self.agent_id or None, "correlation_id": self.correlation_id}
                log.exception("%s %s: the hook on its outcome failed", self.kind, self.key, extra=context)


@dataclass(eq=False, slots=True, kw_only=True)
class CapabilityCall(Work):
    """A capability request: its handler gets ``parameters`` (keyword arguments when they are a
    JSON object, else one argument, or none).

    Attributes:
        future: A waiting requester's future, or None: gets the handler's return value or a
            WorkFailed. A requester that gives up cancels it: work not started yet is then
            skipped, and work running is cancelled.
    """

    kind: ClassVar[Literal["capability"]] = "capability"

    parameters: Any = None
    future: asyncio.Future[Any] | None = None
    value: Any = None
    """The handler's return value, once it finished (for a requester with no ``future``)."""
    error: WorkFailed | None = None
    """Its failure, if it failed (for a requester with no ``future``)."""

    @property
    def abandoned(self) -> bool:
        return self.future is not None and self.future.done()

    def outcome(self) -> Any:
        """The handler's value, or its failure raised (for a requester with no ``future``)."""
        if self.error is not None:
            raise self.error
        return self.value

    def finish(self, value: Any, error: WorkFailed | None = None) -> None:
        """Deliver the outcome to the requester's future (or keep it here when there is
        none), then the flock's hook."""
        future = self.future
        if future is None:
            self.value, self.error = value, error
        elif not future.done():
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)
        Work.finish(self, value, error)


@dataclass(eq=False, slots=True, kw_only=True)
class TaskRun(Work):
    """One task: its handler gets the TaskMessage; the return value becomes the result."""

    kind: ClassVar[Literal["task"]] = "task"

    task: TaskMessage
    then: Callable[[Any], None] | None = None
    """The flock's hook on the task's TaskResult (after ``on_done`` built it), if any."""
    waiter: asyncio.Future[Any] | None = None
    """The future a waiting submitter awaits (the TaskResult goes there), if any: on the work
    itself, so that waiting costs no closure per task."""
    owned: bool = False
    """Whether the submitter waiting on ``waiter`` owns the task: if it gives up (``waiter``
    cancelled: the submitter was cancelled, or its timeout passed), the task is cancelled
    (see :class:`Follow`), as one running in the submitter's own Task would be. False for
    a waiter that only hears the result (:meth:`Dispatcher.start_task`)."""
    result: Any = None
    """The TaskResult the flock made of it once it finished (for a submitter that ran it)."""

    def outcome(self) -> Any:
        """Its TaskResult (set by the flock's hook)."""
        return self.result


@dataclass(eq=False, slots=True, kw_only=True)
class TaskBatch(Work):
    """Several tasks of one type handed over as one unit that occupies one slot: run one after
    the other, each with its own correlation id (the batch's, else the task's id), each failing
    alone. ``each`` hears their outcomes: all at once when the handler never waits, else each as
    it finishes; ``on_done`` follows once, at the end, when ``cursor`` says how many were
    started (an agent that stops hands back the rest)."""

    kind: ClassVar[Literal["task"]] = "task"

    tasks: Sequence[TaskMessage]
    each: TaskDone
    cursor: int = 0
    """How many of its tasks were started (the rest were never begun)."""


current_work: contextvars.ContextVar[Work | None] = contextvars.ContextVar("flockrt_work", default=None)
"""The Work a handler is running, in the context the handler runs in (its runner Task's, or a
copy of the agent's own for an inline handler whose progress someone listens to), so
report_progress finds its requester."""


def report_tasks(
    batch: TaskBatch, start: int, values: list[Any], finished: list[float], failures: dict[int, WorkFailed]
) -> None:
    """Tasks of a batch finished: tell the flock (a bug in its hook costs nothing else)."""
    try:
        batch.each(batch, start, values, finished, failures)
    except Exception:
        log.exception("task %s: the hook on its batch's outcomes failed", batch.key)


class Follow:
    """While a runner Task runs a piece of work, a requester that cancels its wait (an MCP
    client's notifications/cancelled, a caller cancelled itself, a timeout: its future is
    cancelled, or failed with WorkTimeout) cancels the Task:
    nobody wants the result any more. :meth:`stop` ends this when the work is over (the Task
    may go on with other work); :attr:`cancelled` says whether it fired (or whether the
    requester had given up before the work started: then the Task is not cancelled, and the
    work must not start)."""

    __slots__ = ("_future", "_task", "cancelled")

    def __init__(self, future: asyncio.Future[Any] | None, task: asyncio.Task[Any] | None) -> None:
        self._future = future
        self._task = task
        self.cancelled = False
        if future is not None and task is not None:
            if future.done():  # given up before the work started
                self.cancelled = future.cancelled() or isinstance(future.exception(), WorkTimeout)
                self._task = None
            else:
                future.add_done_callback(self._abandoned)

    def _abandoned(self, done: asyncio.Future[Any]) -> None:
        # Cancelled, or failed with WorkTimeout by the requester's deadline (see
        # Dispatcher._answer): the requester stopped waiting.
        if self._task is not None and (done.cancelled() or isinstance(done.exception(), WorkTimeout)):
            self.cancelled = True
            self._task.cancel()

    def stop(self) -> None:
        if self._future is not None and self._task is not None:
            self._future.remove_done_callback(self._abandoned)
        self._task = None


def follow_requester(work: Work) -> Follow | None:
    """A :class:`Follow` of ``work``'s requester by the current Task (a runner's), or None
    when no requester owns the work through a future of the work's own (a capability call's
    ``future``, an owned task's ``waiter``)."""
    if type(work) is CapabilityCall:
        future = work.future
    elif type(work) is TaskRun and work.owned:
        future = work.waiter
    else:
        return None
    if future is None:
        return None
    return Follow(future, asyncio.current_task())
