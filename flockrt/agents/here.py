"""Work run in its submitter's Task: :class:`Here`.

A submitter that waits for its work (``submit(..., wait=True)``, ``request_capability``)
already has a Task: when an agent is free, the handler runs there, in that Task, instead of in
a runner Task of the agent's (see :meth:`WorkRunner.run_here
<flockrt.agents.running.WorkRunner.run_here>`). The agent still owns the work: it keeps the
:class:`Here` in its work set, so a graceful stop waits for it and a stop interrupts it.

A Here is what the submitter awaits, and it is the whole of what running there costs: not a
coroutine (a frame of its own), but an awaitable iterator that drives the handler's coroutine
one step at a time, each step in a context of the agent's own, and turns the end of the
handler into the work's outcome.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, NoReturn

from flockrt.agents.work import TaskRun, Work
from flockrt.errors import WorkTimeout

if TYPE_CHECKING:
    from flockrt.actors.deadlines import Slot
    from flockrt.agents.running import WorkRunner

__all__ = ["STOPPED", "Here", "here_timeout"]

STOPPED = "agent stopped"
""":attr:`Here.interrupted` when the agent that runs the work stopped (or restarts)."""


def here_timeout(work: Work, timeout: float) -> WorkTimeout:
    """The error of a :class:`Here` past its deadline (the ``error`` of its AskDeadlines)."""
    return WorkTimeout(work.kind, work.key, timeout)


class Here:
    """One piece of work run by an agent in its submitter's Task: awaiting it (at once, in
    the Task that got it) runs the handler to its end and gives the work's outcome
    (:meth:`Work.outcome <flockrt.agents.work.Work.outcome>`: a task's TaskResult, a
    capability's value, or its WorkFailed raised).

    Whatever way the handler ends, the outcome goes to ``work.finish`` (the flock's hook
    publishes a task's result there) and the agent's slot is given back, as a runner does.
    Two cancellations reach the handler:

    - the submitter's own (it was cancelled): the work ends with "cancelled" and the
      cancellation goes on up: a submitter that gives up stops the work it owns;
    - an interruption (:meth:`interrupt`), marked in :attr:`interrupted`: the agent stopped
      (the work ends with "agent stopped", the submitter's outcome), or the request's
      deadline passed (the work ends with "cancelled", the submitter gets WorkTimeout). The
      cancellation is taken back (``Task.uncancel``, as ``asyncio.timeout`` does), unless
      the submitter's Task was cancelled from elsewhere as well.
    """

    __slots__ = (
        "_cancelling",
        "_context",
        "_coroutine",
        "_runner",
        "_slot",
        "index",
        "interrupted",
        "task",
        "work",
    )

    def __init__(self, runner: WorkRunner, work: Work, context: contextvars.Context, index: int) -> None:
        self._runner = runner
        self.work = work
        self._context = context
        self.index = index
        """Where it is in its agent's work set (a list: see WorkRunner.run_here)."""
        self._coroutine: Coroutine[Any, Any, Any] | None = None  # made at the first step
        self.task: asyncio.Task[Any] | None = None
        """The submitter's Task, while the handler runs in it."""
        self._cancelling = 0
        self._slot: Slot | None = None  # its deadline's (AskDeadlines.hold, see here_timeout)
        self.interrupted: str | WorkTimeout | None = None
        """Why it was interrupted: :data:`STOPPED`, or the WorkTimeout of its deadline."""

    def __await__(self) -> Here:
        return self

    def __iter__(self) -> Here:
        return self

    def __next__(self) -> Any:  # (send(None), without a call more per step)
        coroutine = self._coroutine
        if coroutine is None:
            coroutine = self._begin()
        try:
            return self._context.run(coroutine.send, None)
        except BaseException as ended:
            self._end(ended)

    def send(self, value: Any) -> Any:
        """One step of the handler, in the agent's context (what the Task sends in)."""
        coroutine = self._coroutine
        if coroutine is None:
            coroutine = self._begin()
        try:
            return self._context.run(coroutine.send, value)
        except BaseException as ended:
            self._end(ended)

    def throw(self, kind: Any, value: Any = None, traceback: Any = None) -> Any:
        """What the Task throws in (a cancellation) goes to the handler, in the agent's context."""
        error = kind if isinstance(kind, BaseException) else kind() if value is None else value
        coroutine = self._coroutine
        if coroutine is None:
            coroutine = self._begin()
        try:
            return self._context.run(coroutine.throw, error)
        except BaseException as ended:
            self._end(ended)

    def close(self) -> None:
        """The submitter was closed before the work ended (its coroutine was dropped
        unfinished): the handler is closed too, and the work ends with "cancelled"."""
        if self.task is None and self._coroutine is not None:
            return  # it ended already
        runner, work = self._runner, self.work
        try:
            if self._coroutine is not None:
                self._context.run(self._coroutine.close)
            work.finish(None, runner._gave_up(work))
        finally:
            self._release()

    def interrupt(self, why: str | WorkTimeout) -> None:
        """Stop the handler: cancel the submitter's Task, marked as this one's doing."""
        task = self.task
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

    def _begin(self) -> Coroutine[Any, Any, Any]:
        """The first step: the handler's coroutine, in the submitter's Task."""
        task = self.task = asyncio.current_task()
        if task is None:  # (asyncio awaits in Tasks only)
            self._end(RuntimeError("work run by its submitter must be awaited in a Task"))
        self._cancelling = task.cancelling()
        runner, work = self._runner, self.work
        table = runner._flockrt_capabilities if work.kind == "capability" else runner._flockrt_task_types
        coroutine: Coroutine[Any, Any, Any]
        try:
            if type(work) is TaskRun:  # (runner._call, without its two calls)
                coroutine = getattr(runner, table[work.key])(work.task)
            else:
                coroutine = runner._call(work, table[work.key])
            self._coroutine = coroutine
        except BaseException as refused:  # the parameters do not fit the handler
            self._end(refused)
        return coroutine

    def _end(self, ended: BaseException) -> NoReturn:
        """The handler ended with ``ended`` (StopIteration: it returned): the work's outcome to
        ``work.finish``, the slot back to the flock, and the outcome to the submitter."""
        runner, work, task = self._runner, self.work, self.task
        why = self.interrupted
        try:
            if type(ended) is StopIteration:
                if why is not None and task is not None:  # the handler swallowed the cancellation
                    task.uncancel()
                runner.tasks_processed += 1
                work.finish(ended.value)
            elif isinstance(ended, asyncio.CancelledError):
                if why is None or task is None:  # the submitter's own: the work stops with it
                    work.finish(None, runner._gave_up(work))
                    raise ended
                work.finish(None, runner._stopped(work) if why == STOPPED else runner._gave_up(work))
                if task.uncancel() > self._cancelling:  # cancelled from elsewhere as well
                    raise ended
                if isinstance(why, WorkTimeout):
                    raise why
            elif isinstance(ended, Exception):  # the work failed, not the agent
                runner._failed(work, ended)
                if why is not None and task is not None:  # the handler turned it into this
                    task.uncancel()
            else:  # (SystemExit, KeyboardInterrupt, GeneratorExit: not the work's own)
                work.finish(None, runner._gave_up(work))
                raise ended
        finally:
            self.task = None  # (see _release: inlined, a call less per piece of work)
            slot = self._slot
            if slot is not None:
                slot.pop(self, None)
            runner._here_ended(self)
        raise StopIteration(work.result if type(work) is TaskRun else work.outcome())

    def _release(self) -> None:
        """Out of the agent's work set and its deadline; the agent's slot back to the flock."""
        self.task = None
        slot = self._slot
        if slot is not None:
            slot.pop(self, None)
        self._runner._here_ended(self)
