"""Work run in its submitter's Task: :class:`Here`, and its two kinds, :class:`TaskHere` and
:class:`CapabilityHere`.

A submitter that waits for its work (``submit(..., wait=True)``, ``request_capability``)
already has a Task: when an agent is free, the handler runs there, in that Task, instead of in
a runner Task of the agent's (see :meth:`WorkRunner.run_here
<flockrt.agents.running.WorkRunner.run_here>`). The agent still owns the work: it keeps it in
its work set, so a graceful stop waits for it and a stop interrupts it.

Such work is one object: the record of the work (a :class:`~flockrt.agents.work.TaskRun` or
a :class:`~flockrt.agents.work.CapabilityCall`, which the flock's hooks get) and what the
submitter awaits. That is the whole of what running there costs: not a coroutine (a frame of
its own), but an awaitable iterator that drives the handler's coroutine one step at a time,
each step in a context of the agent's own, and turns the end of the handler into the work's
outcome. (One object, not a work and a Here beside it: 40 bytes and a garbage-collected object
less per piece of work in flight.)
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NoReturn

from flockrt.actors.correlation import correlation_id
from flockrt.agents.work import CapabilityCall, Work, current_work
from flockrt.errors import WorkTimeout

if TYPE_CHECKING:
    from flockrt.actors.deadlines import Slot
    from flockrt.agents.running import WorkRunner
    from flockrt.wire.schema import TaskMessage, TaskResult

__all__ = ["STOPPED", "CapabilityHere", "Here", "HereSet", "TaskHere", "here_timeout"]

STOPPED = "agent stopped"
""":attr:`Here.interrupted` when the agent that runs the work stopped (or restarts)."""


def here_timeout(work: Work, timeout: float) -> WorkTimeout:
    """The error of a :class:`Here` past its deadline (the ``error`` of its AskDeadlines)."""
    return WorkTimeout(work.kind, work.key, timeout)


class Here(Work):
    """One piece of work run by an agent in its submitter's Task: awaiting it (at once, in
    the Task that got it) runs the handler to its end and gives the work's outcome
    (:meth:`Work.outcome <flockrt.agents.work.Work.outcome>`: a task's TaskResult, a
    capability's value, or its WorkFailed raised).

    Whatever way the handler ends, the outcome goes to :meth:`finish` (the flock's hook
    publishes a task's result there) and the agent's slot is given back, as a runner does.
    Two cancellations reach the handler:

    - the submitter's own (it was cancelled): the work ends with "cancelled" and the
      cancellation goes on up: a submitter that gives up stops the work it owns;
    - an interruption (:meth:`interrupt`), marked in :attr:`interrupted`: the agent stopped
      (the work ends with "agent stopped", the submitter's outcome), or the request's
      deadline passed (the work ends with "cancelled", the submitter gets WorkTimeout). The
      cancellation is taken back (``Task.uncancel``, as ``asyncio.timeout`` does), unless
      the submitter's Task was cancelled from elsewhere as well.

    The base of :class:`TaskHere` and :class:`CapabilityHere`, which hold its fields (a class
    with fields of its own could not be a base beside CapabilityCall).
    """

    if not TYPE_CHECKING:  # (mypy would have the fields of its kinds in these slots)
        __slots__ = ()

    if TYPE_CHECKING:  # (the fields of TaskHere and CapabilityHere)
        runner: WorkRunner
        """The agent that runs it (set by ``run_here``)."""
        context: contextvars.Context
        """The agent's context its handler's steps run in (set by ``run_here``)."""
        before: Here | None
        """Its neighbours in its agent's work set (a :class:`HereSet`)."""
        after: Here | None
        coroutine: Coroutine[Any, Any, Any] | None
        submitter: asyncio.Task[Any] | None
        cancelling: int
        deadline: Slot | None
        interrupted: str | WorkTimeout | None

    def __await__(self) -> Here:
        return self

    def __iter__(self) -> Here:
        return self

    def __next__(self) -> Any:  # (send(None), without a call more per step)
        coroutine = self.coroutine
        try:
            if coroutine is None:
                return self.context.run(self._start, None, None)
            return self.context.run(coroutine.send, None)
        except BaseException as ended:
            self._end(ended)

    def send(self, value: Any) -> Any:
        """One step of the handler, in the agent's context (what the Task sends in)."""
        coroutine = self.coroutine
        try:
            if coroutine is None:
                return self.context.run(self._start, value, None)
            return self.context.run(coroutine.send, value)
        except BaseException as ended:
            self._end(ended)

    def throw(self, kind: Any, value: Any = None, traceback: Any = None) -> Any:
        """What the Task throws in (a cancellation) goes to the handler, in the agent's context."""
        error = kind if isinstance(kind, BaseException) else kind() if value is None else value
        coroutine = self.coroutine
        try:
            if coroutine is None:
                return self.context.run(self._start, None, error)
            return self.context.run(coroutine.throw, error)
        except BaseException as ended:
            self._end(ended)

    def close(self) -> None:
        """The submitter was closed before the work ended (its coroutine was dropped
        unfinished): the handler is closed too, and the work ends with "cancelled"."""
        if self.submitter is None and self.coroutine is not None:
            return  # it ended already
        try:
            if self.coroutine is not None:
                self.context.run(self.coroutine.close)
            self.finish(None, self.runner._gave_up(self))
        finally:
            self._release()

    def interrupt(self, why: str | WorkTimeout) -> None:
        """Stop the handler: cancel the submitter's Task, marked as this one's doing."""
        task = self.submitter
        if task is not None and self.interrupted is None:
            self.interrupted = why
            task.cancel()

    def done(self) -> bool:
        """Whether a deadline has nothing more to do here (it was interrupted already)."""
        return self.interrupted is not None

    def set_exception(self, exception: BaseException, /) -> None:
        """Its deadline passed (an :class:`~flockrt.actors.deadlines.AskDeadlines` of
        :func:`here_timeout`): interrupt it with the WorkTimeout its submitter gets."""
        assert isinstance(exception, WorkTimeout)
        self.interrupt(exception)

    def _start(self, value: Any, error: BaseException | None) -> Any:
        """The first step, in the agent's context (a copy, see WorkRunner.run_here), in the
        submitter's Task: the work's ids set there (one entry of the context, not one more
        ``Context.run``), the handler's coroutine made and sent ``value`` (or thrown
        ``error``). Whatever this raises ends the work (:meth:`_end`): the handler's first
        step, or the refusal of parameters that do not fit the handler."""
        correlation_id.set(self.correlation_id)
        if self.progress is not None:  # for report_progress
            current_work.set(self)
        task = self.submitter = asyncio.current_task()
        if task is None:  # (asyncio awaits in Tasks only)
            raise RuntimeError("work run by its submitter must be awaited in a Task")
        self.cancelling = task.cancelling()
        runner = self.runner
        coroutine: Coroutine[Any, Any, Any]
        if isinstance(self, TaskHere):  # (runner._call, without its two calls)
            coroutine = getattr(runner, runner._flockrt_task_types[self.key])(self.task)
        else:
            assert isinstance(self, CapabilityCall)
            name = runner._flockrt_capabilities[self.key]
            coroutine = runner._handler("capability", name, self.parameters)
        self.coroutine = coroutine
        return coroutine.send(value) if error is None else coroutine.throw(error)

    def _end(self, ended: BaseException) -> NoReturn:
        """The handler ended with ``ended`` (StopIteration: it returned): the work's outcome to
        :meth:`finish`, the slot back to the flock, and the outcome to the submitter."""
        runner, task = self.runner, self.submitter
        why = self.interrupted
        try:
            if type(ended) is StopIteration:
                if why is not None and task is not None:  # the handler swallowed the cancellation
                    task.uncancel()
                runner.tasks_processed += 1
                self.finish(ended.value)
            elif isinstance(ended, asyncio.CancelledError):
                if why is None or task is None:  # the submitter's own: the work stops with it
                    self.finish(None, runner._gave_up(self))
                    raise ended
                self.finish(None, runner._stopped(self) if why == STOPPED else runner._gave_up(self))
                if task.uncancel() > self.cancelling:  # cancelled from elsewhere as well
                    raise ended
                if isinstance(why, WorkTimeout):
                    raise why
            elif isinstance(ended, Exception):  # the work failed, not the agent
                runner._failed(self, ended)
                if why is not None and task is not None:  # the handler turned it into this
                    task.uncancel()
            else:  # (SystemExit, KeyboardInterrupt, GeneratorExit: not the work's own)
                self.finish(None, runner._gave_up(self))
                raise ended
        finally:
            self.submitter = None  # (see _release: inlined, a call less per piece of work)
            deadline = self.deadline
            if deadline is not None:
                deadline.pop(self, None)
            runner._here_ended(self)
        raise StopIteration(self.outcome())

    def _release(self) -> None:
        """Out of the agent's work set and its deadline; the agent's slot back to the flock."""
        self.submitter = None
        deadline = self.deadline
        if deadline is not None:
            deadline.pop(self, None)
        self.runner._here_ended(self)


# The fields of a Here, on each of its kinds (the same in both; see Here for what they are).
# Those without a default are set by WorkRunner.run_here, which hands the work to its agent.


@dataclass(eq=False, slots=True, kw_only=True)
class TaskHere(Here):
    """A task run in its submitter's Task (``submit(..., wait=True)``): what a
    :class:`~flockrt.agents.work.TaskRun` has that such a task uses, and its :class:`Here`,
    in one. Not a TaskRun: it has no ``then`` and no ``waiter`` of its own (its submitter is
    the one waiting: 24 bytes less); the flock's hook on tasks reads them as None."""

    kind: ClassVar[Literal["task"]] = "task"
    then: ClassVar[None] = None
    waiter: ClassVar[None] = None

    task: TaskMessage
    result: TaskResult | None = None
    """The TaskResult the flock made of it once it finished (by its hook)."""
    runner: WorkRunner = field(init=False, repr=False)
    context: contextvars.Context = field(init=False, repr=False)
    coroutine: Coroutine[Any, Any, Any] | None = field(default=None, init=False, repr=False)
    submitter: asyncio.Task[Any] | None = field(default=None, init=False, repr=False)
    cancelling: int = field(default=0, init=False, repr=False)
    deadline: Slot | None = field(default=None, init=False, repr=False)
    interrupted: str | WorkTimeout | None = field(default=None, init=False)
    before: Here | None = field(default=None, init=False, repr=False)
    after: Here | None = field(default=None, init=False, repr=False)

    def outcome(self) -> Any:
        """Its TaskResult (set by the flock's hook)."""
        return self.result


@dataclass(eq=False, slots=True, kw_only=True)
class CapabilityHere(CapabilityCall, Here):
    """A capability request run in its requester's Task (``request_capability``): a
    :class:`~flockrt.agents.work.CapabilityCall` (with no future: the value, or the failure,
    is the outcome) and its :class:`Here` in one."""

    runner: WorkRunner = field(init=False, repr=False)
    context: contextvars.Context = field(init=False, repr=False)
    coroutine: Coroutine[Any, Any, Any] | None = field(default=None, init=False, repr=False)
    submitter: asyncio.Task[Any] | None = field(default=None, init=False, repr=False)
    cancelling: int = field(default=0, init=False, repr=False)
    deadline: Slot | None = field(default=None, init=False, repr=False)
    interrupted: str | WorkTimeout | None = field(default=None, init=False)
    before: Here | None = field(default=None, init=False, repr=False)
    after: Here | None = field(default=None, init=False, repr=False)


class HereSet:
    """An agent's work set of :class:`Here`: a list linked through the Heres themselves
    (``before``, ``after``), so that joining and leaving it cost no allocation (a list with
    each Here knowing its index cost an int object per Here once the index was 256 or more,
    and the list's slot: 30 bytes; a set about 60)."""

    __slots__ = ("_count", "_first")

    def __init__(self) -> None:
        self._first: Here | None = None
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Here]:
        """Its members as they are now (a snapshot: what it yields may leave it meanwhile)."""
        members = []
        here = self._first
        while here is not None:
            members.append(here)
            here = here.after
        return iter(members)

    def add(self, here: Here) -> None:
        first = here.after = self._first
        if first is not None:
            first.before = here
        self._first = here
        self._count += 1

    def remove(self, here: Here) -> None:
        """Take ``here`` (a member) out."""
        before, after = here.before, here.after
        if before is None:
            self._first = after
        else:
            before.after = after
        if after is not None:
            after.before = before
        here.before = here.after = None
        self._count -= 1
