"""How an agent runs the work its flock hands it: :class:`WorkRunner`, a part of
:class:`~flockrt.agents.agent.Agent`.

Work whose handler never waits (:func:`~flockrt.agents.decorators.never_waits`) runs inline,
here and now, with no Task: the flock's fast path (:meth:`WorkRunner._run_now`) and handed-over
work alike. Work whose submitter waits for it, and which finds the agent free, runs in the
submitter's own Task (:meth:`WorkRunner.run_here`): the agent still owns it (it is in the
agent's work set: a graceful stop waits for it, a stop interrupts it), but it costs no Task.
Any other work runs in a runner Task of the agent's, which goes on with each piece
the flock hands over as its slot frees up, so that under load one Task runs many pieces in a
row; a piece runs in the runner's own frame, with no coroutine, closure or done-callback of
its own. A handler that raises fails its piece of work only; the agent goes on.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import types
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, ClassVar

from flockrt.actors.correlation import correlation_id, current_agent
from flockrt.actors.tasks import TaskOwner
from flockrt.agents.here import STOPPED, Here, HereSet
from flockrt.agents.ports import WorkSource
from flockrt.agents.work import (
    CapabilityCall,
    Follow,
    TaskBatch,
    TaskRun,
    Work,
    current_work,
    follow_requester,
    report_tasks,
)
from flockrt.errors import InvalidParameters, WorkFailed

if TYPE_CHECKING:
    from flockrt.actors.context import ActorContext
    from flockrt.agents.params import Parameters

__all__ = ["WorkRunner"]

log = logging.getLogger("flockrt.agent")

_set_correlation = correlation_id.set  # (bound once: see WorkRunner._run_now)

_RUNS_PER_TURN = 64
"""Pieces of work a runner does in a row before it yields to the loop (as an actor's turn)."""


@types.coroutine
def _drive() -> Generator[Any, Any, None]:
    """The driver of an agent's handlers that never wait (``WorkRunner._run_now``): each
    ``send(handler)`` runs a handler's coroutine to its end and returns its value.

    ``yield from`` takes a coroutine's return value without the StopIteration its own
    ``send`` raises, which costs as much as the rest of the handler's step. A handler that
    raises ends its driver (the agent makes a new one); one that waits after all leaves the
    driver inside it (``gi_yieldfrom``), and the agent closes both."""
    handler = yield
    while True:  # (its value is not kept in a local: the driver holds nothing between handlers)
        handler = yield (yield from handler)


class _Waiting:
    """``Agent._handoff`` while a runner reports its free slot: it takes the next piece."""


_WAITING: Any = _Waiting()


class WorkRunner:
    """The part of :class:`~flockrt.agents.agent.Agent` that runs its work (a base of Agent
    only: it works on the agent's fields, which :meth:`Agent.__init__` sets)."""

    agent_id: str
    tasks_processed: int
    _flockrt_capabilities: ClassVar[dict[str, str]]
    _flockrt_task_types: ClassVar[dict[str, str]]
    _flockrt_inline: ClassVar[frozenset[str]]
    _source: WorkSource | None
    _running: TaskOwner
    _here: HereSet
    _drained: asyncio.Future[None] | None
    _handoff: Work | None
    _inline_context: contextvars.Context
    _stepping: int
    _inline_tasks: dict[str, Callable[[Any], Coroutine[Any, Any, Any]]]
    """The handlers of its task types that never wait, bound (:meth:`_bind_inline_tasks`)."""
    _drive_send: Callable[[Any], Any] | None = None
    """The ``send`` of the driver that runs its handlers that never wait on the fast path (see
    :func:`_drive`; the driver is its ``__self__``), bound once: made at first use."""

    if TYPE_CHECKING:
        _context: ActorContext[Any]

        @property
        def context(self) -> ActorContext[Any]: ...

        def _parameters(self, method_name: str, method: Callable[..., Any]) -> Parameters: ...

    def take_work(self, work: Work) -> bool:
        """Start ``work`` now, bypassing the mailbox; the flock's way to hand work over.

        Returns False, taking nothing, when this instance cannot take work right now (it is
        starting, failed, restarting or stopping): the flock then sends the work through the
        mailbox, where a restarted instance finds it.
        """
        if not self._context.runs(self):  # type: ignore[arg-type]  # (self is an Agent)
            return False
        table = self._flockrt_capabilities if work.kind == "capability" else self._flockrt_task_types
        method_name = table.get(work.key)
        if method_name in self._flockrt_inline:
            if type(work) is TaskBatch:
                self._run_inline_batch(work, method_name)
            else:
                self._run_inline(work, method_name)
        elif self._handoff is _WAITING:
            self._handoff = work  # a runner that just freed its slot goes on with it
        else:
            self._start_work(work)
        return True

    def _bind_inline_tasks(self) -> None:
        """Bind the handlers of its task types that never wait, for :meth:`_run_now`: once,
        as it joins its flock (a handler replaced on the instance before then is the one that
        runs), not with a ``getattr`` per task."""
        self._inline_tasks = {
            task_type: getattr(self, method_name)
            for task_type, method_name in self._flockrt_task_types.items()
            if method_name in self._flockrt_inline
        }

    def _run_now(
        self, kind: str, key: str, payload: Any, correlation: str | None
    ) -> tuple[Any, WorkFailed | None] | None:
        """Run a task (``payload``: the TaskMessage) or a capability request (``payload``: its
        parameters) whose handler never waits (``AgentCard.inline_task_types``,
        ``inline_capabilities``) here and now: the flock's fast path for work that finds a free
        agent, with no :class:`Work` and no handover (the flock keeps the agent's slot count).

        This is :meth:`_step` in one frame, for the usual case (no handler of this agent's
        running further up the stack): the correlation id is set in the agent's context and
        the handler run there by the agent's driver (:func:`_drive`: its value comes back
        without a StopIteration), both as calls of ``Context.run`` (no Python frame of their
        own) with callables bound once (``correlation_id.set``, the driver's ``send``, the
        handler: :meth:`_bind_inline_tasks`; binding them per task cost 2.7 % of a bus
        worker's instructions); a nested call takes :meth:`_step`, which copies the context.

        Returns:
            ``(value, None)``, or ``(None, failure)`` when the handler raised; None, having
            run nothing, when this instance cannot take work right now (see :meth:`take_work`).
        """
        if not self._context.runs(self):  # type: ignore[arg-type]  # (self is an Agent)
            return None
        self.tasks_processed += 1
        try:
            if kind == "task":
                handler: Coroutine[Any, Any, Any] = self._inline_tasks[key](payload)
            else:
                handler = self._handler(kind, self._flockrt_capabilities[key], payload)
            if self._stepping:  # within one of its own handlers: a copy of that context
                return self._step(handler, correlation), None
            send = self._drive_send
            if send is None:
                driver = _drive()
                driver.send(None)
                send = self._drive_send = driver.send
            context = self._inline_context
            context.run(_set_correlation, correlation)
            self._stepping = 1
            try:
                value = context.run(send, handler)
            except BaseException:
                self._drive_send = None  # the handler's exception ended its driver
                raise
            finally:
                self._stepping = 0
            driver = send.__self__  # type: ignore[attr-defined]
            if driver.gi_yieldfrom is not None:  # it waited after all
                self._drive_send = None
                driver.close()  # (and the handler with it)
                raise RuntimeError("an inline handler tried to wait")
            return value, None
        except (Exception, asyncio.CancelledError) as exc:  # its own exception (see _step)
            return None, self._task_failed(kind, key, exc, correlation)

    def _run_inline(self, work: Work, method_name: str) -> None:
        """Run work whose handler never waits, here and now (see :meth:`_step`)."""
        if work.abandoned:
            self._finished()
            return
        # The work itself only matters to report_progress, so only when someone listens.
        listened = work if work.progress is not None else None
        try:
            value = self._step(self._call(work, method_name), work.correlation_id, listened)
        except (Exception, asyncio.CancelledError) as exc:  # its own exception (see _step)
            self._failed(work, exc, work.correlation_id)
        else:
            self.tasks_processed += 1
            work.finish(value)
        self._finished()

    def _step(
        self, handler: Coroutine[Any, Any, Any], correlation: str | None, work: Work | None = None
    ) -> Any:
        """Run the coroutine of a handler that never waits to its end and return its value (or
        raise its exception): it has no suspension point, so one ``send`` runs it through, and
        no Task (nor loop turn) is needed.

        A Task would add nothing but its cost: the handler cannot be cancelled half-way, and it
        cannot keep ``asyncio.current_task()`` for later (it has no later). So no cancellation
        can be under way in it either: a CancelledError it raises is its own exception, which
        fails the work like any other.

        It runs in a context of the agent's own (see :meth:`_start_work`): the agent's id is
        set there once, the correlation id per piece of work, and nothing the handler sets in
        it leaks into the caller's context (a NATS callback, the code that dispatched the
        work). Entering that context costs less than setting and resetting both ids in the
        caller's.

        Copies serve the rarer cases: ``work`` whose progress someone listens to (it is set in
        a copy of the agent's context for report_progress, and must not stay behind for the
        next piece of work), and an inline handler reached from another one (through a
        dispatch), which runs in a copy of the context it was reached from, with its own
        agent's id set (a context cannot be entered twice).
        """
        if self._stepping:
            context = contextvars.copy_context()
        elif work is not None:
            context = self._inline_context.copy()
        else:
            context = self._inline_context
        return context.run(self._send, handler, correlation, work)

    def _send(self, handler: Coroutine[Any, Any, Any], correlation: str | None, work: Work | None) -> Any:
        """:meth:`_step` within the context it chose."""
        correlation_id.set(correlation)
        if work is not None or self._stepping:  # a copy, of another handler's context maybe
            current_agent.set(self.agent_id)
            current_work.set(work)
        self._stepping += 1
        try:
            handler.send(None)
            handler.close()  # it waited after all (a method replaced on the instance?)
        except StopIteration as returned:
            return returned.value
        finally:
            self._stepping -= 1
        raise RuntimeError("an inline handler tried to wait")

    def _run_inline_batch(self, work: TaskBatch, method_name: str) -> None:
        """Run a :class:`TaskBatch` whose handler never waits, in
        one tight loop: as :meth:`_run_inline` per task, with what can be shared set once, and
        the outcomes handed to the flock together at the end.

        Each task gets its own correlation id (the work's, else the task's id) and fails alone.
        No task can be left unstarted: nothing in the loop can suspend, so nothing can stop the
        agent half-way (and reporting at the end delays no result: nobody else runs meanwhile).
        """
        values: list[Any] = []
        finished: list[float] = []
        failures: dict[int, WorkFailed] = {}
        # A copy of the agent's context (see _step): the work is set there for report_progress.
        context = contextvars.copy_context() if self._stepping else self._inline_context.copy()
        try:
            context.run(self._send_each, work, getattr(self, method_name), values, finished, failures)
        finally:
            self.tasks_processed += len(values)
            work.cursor = len(values)
        report_tasks(work, 0, values, finished, failures)
        work.finish(None)
        self._finished()

    def _send_each(
        self,
        work: TaskBatch,
        method: Callable[[Any], Coroutine[Any, Any, Any]],
        values: list[Any],
        finished: list[float],
        failures: dict[int, WorkFailed],
    ) -> None:
        """:meth:`_run_inline_batch`'s loop, within the context it chose: each task's value (None
        if it failed), when it finished, and its failure by index."""
        shared_correlation = work.correlation_id
        current_agent.set(self.agent_id)
        correlation_id.set(shared_correlation)
        current_work.set(work)
        keep, stamp, now = values.append, finished.append, time.monotonic
        self._stepping += 1
        try:
            for index, task in enumerate(work.tasks):
                if shared_correlation is None:
                    correlation_id.set(task.id)
                try:
                    step = method(task)
                    step.send(None)
                    step.close()  # it waited after all (a method replaced on the instance?)
                    raise RuntimeError("an inline handler tried to wait")
                except StopIteration as returned:
                    keep(returned.value)
                except (Exception, asyncio.CancelledError) as exc:  # its own exception (see _step)
                    keep(None)
                    failures[index] = self._task_failed(work.kind, work.key, exc)
                stamp(now())
        finally:
            self._stepping -= 1

    def _start_work(self, work: Work) -> None:
        """Run ``work`` in a runner Task of the agent's (see :meth:`_runner`).

        Like handlers that never wait (:meth:`_step`), the runner works in a context of the
        agent's own (a copy of it), not in a copy of whatever context dispatched the work: a
        handler sees the correlation and agent ids flockrt sets, not other context variables
        of the code that submitted the work, and the same ones whichever way it runs.
        """
        self._running.start(self._runner(work), context=self._inline_context.copy())

    async def _runner(self, work: Work) -> None:
        """Run ``work``, then each piece the flock hands over as its slot frees up.

        Under load the flock's queue is rarely empty, so one runner Task does many pieces of
        work in a row instead of one Task (and its scheduling) per piece. The handover is
        synchronous: ``_finished`` reports the free slot, the flock's dispatcher calls
        :meth:`take_work` within that call, and ``_handoff`` carries the piece back here.

        A piece of work runs in this coroutine, not in one of its own, and the runner leaves
        its owner itself (:meth:`TaskOwner.start`): the Task costs no more than it must.
        """
        owner, task = self._running, asyncio.current_task()
        in_a_row = 0
        error: Exception | None = None
        try:
            while True:
                try:
                    if not work.abandoned:
                        table = (
                            self._flockrt_capabilities
                            if work.kind == "capability"
                            else self._flockrt_task_types
                        )
                        method_name = table.get(work.key)
                        if method_name is None or type(work) is TaskBatch:
                            await self._run_other(work, method_name)
                        elif (follow := self._begin(work)) is not None and follow.cancelled:
                            work.finish(None, self._gave_up(work))  # given up before it started
                        else:
                            try:
                                result = await self._call(work, method_name)
                            except asyncio.CancelledError:
                                gave_up = follow is not None and follow.cancelled  # its requester did
                                work.finish(None, self._gave_up(work) if gave_up else self._stopped(work))
                                raise
                            except Exception as exc:  # the work failed, not the agent
                                self._failed(work, exc)
                            else:
                                self.tasks_processed += 1
                                work.finish(result)
                            finally:
                                if follow is not None:
                                    follow.stop()
                except asyncio.CancelledError:  # the agent stops (or the requester gave up)
                    self._finished()
                    raise
                self._handoff = _WAITING
                try:
                    self._finished()
                finally:
                    handed, self._handoff = self._handoff, None
                if handed is _WAITING or handed is None:
                    return
                work = handed
                in_a_row += 1
                if in_a_row % _RUNS_PER_TURN == 0:  # handlers that never wait must not hog the loop
                    try:
                        await asyncio.sleep(0)
                    except asyncio.CancelledError:
                        work.finish(None, self._stopped(work))
                        self._finished()
                        raise
        except Exception as exc:  # a bug: logged, as the owner of a Task would log it
            error = exc
        finally:
            owner.ended(task, error)

    def run_here(self, work: Work) -> Here | None:
        """``work`` (a :class:`~flockrt.agents.here.Here`: a TaskHere or a CapabilityHere)
        to run in the current Task, its submitter's, which waits for it: the flock's path
        for a submitter that waits (``submit(..., wait=True)``, ``request_capability``) when
        this agent is free, with no runner Task. The submitter must await it at once: that
        runs the handler and gives the work's outcome; the slot the flock took for it is
        given back at its end, as a runner gives it back.

        The agent still owns the work: it is in the agent's work set while it runs, so a
        graceful stop waits for it, and an agent that stops (or restarts) interrupts it (see
        :class:`~flockrt.agents.here.Here`): the work ends with "agent stopped", which the
        submitter gets. A submitter that is cancelled cancels its work: "cancelled".

        The handler runs in a context of the agent's own (a copy, as in a runner Task: see
        :meth:`_start_work`), each of its steps entered there: it sees the ids flockrt sets,
        not the submitter's context variables, and what it sets does not leak back.

        Returns:
            None, having done nothing, when this instance cannot take work right now (see
            :meth:`take_work`) or the work is not for this path (not a Here, a skill it does
            not offer): the flock then takes the usual path. Else ``work`` itself.
        """
        if not isinstance(work, Here) or not self._context.runs(self):  # type: ignore[arg-type]
            return None  # (self is an Agent)
        table = self._flockrt_capabilities if work.kind == "capability" else self._flockrt_task_types
        if work.key not in table:
            return None
        work.runner = self
        # (as in _start_work; the work's ids are set at its first step)
        work.context = self._inline_context.copy()
        self._here.add(work)
        return work

    def _here_ended(self, here: Here) -> None:
        """A :class:`Here` ended: out of the work set, and its slot back to the flock."""
        running = self._here
        running.remove(here)
        if not running and self._drained is not None:
            self._drained.set_result(None)
            self._drained = None
        if self._source is not None:  # (_finished, inlined)
            self._source.work_done(self.agent_id)

    def _interrupt_here(self) -> None:
        """Interrupt the work running in its submitters' Tasks (see :meth:`run_here`)."""
        for here in self._here:
            here.interrupt(STOPPED)

    def _here_drained(self) -> asyncio.Future[None]:
        """A future done once no work runs in a submitter's Task (see :meth:`run_here`)."""
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        return self._drained

    def _begin(self, work: Work) -> Follow | None:
        """Set the runner's context for one piece of work (a copy of the agent's, where its id
        is set; the next piece overwrites it); its :class:`Follow`, if a requester waits.
        The work itself matters only to report_progress, so it is set only when someone
        listens (or a piece before did)."""
        correlation_id.set(work.correlation_id)
        if work.progress is not None or current_work.get() is not None:
            current_work.set(work)
        return follow_requester(work)

    async def _run_other(self, work: Work, method_name: str | None) -> None:
        """What :meth:`_runner` does not run itself: a batch, or work the agent does not offer."""
        if method_name is None:
            work.finish(None, WorkFailed(self.agent_id, work.kind, work.key, LookupError("not offered")))
        else:
            assert type(work) is TaskBatch
            await self._run_batch(work, method_name)

    async def _run_batch(self, work: TaskBatch, method_name: str) -> None:
        """Run a batch's tasks one after the other in this runner Task (as :meth:`_run` per
        task); each outcome goes to ``work.each``, then ``work.finish`` follows.

        An agent stopping half-way fails the task it was running (as for a single piece of
        work) and hands back the ones not started: ``work.cursor`` tells the flock where to
        pick up.
        """
        method: Callable[[Any], Coroutine[Any, Any, Any]] = getattr(self, method_name)
        current_agent.set(self.agent_id)
        current_work.set(work)
        tasks = work.tasks
        while work.cursor < len(tasks):
            index = work.cursor
            task = tasks[index]
            work.cursor = index + 1
            correlation_id.set(work.correlation_id or task.id)
            error: WorkFailed | None = None
            try:
                value = await method(task)
            except asyncio.CancelledError:  # the agent stops: this task fails, the rest go back
                report_tasks(work, index, [None], [time.monotonic()], {index: self._stopped(work)})
                work.finish(None)
                raise
            except Exception as exc:  # the task failed, not the agent
                value, error = None, self._task_failed(work.kind, work.key, exc)
            self.tasks_processed += 1
            report_tasks(work, index, [value], [time.monotonic()], {index: error} if error else {})
        work.finish(None)

    def _call(self, work: Work, method_name: str) -> Coroutine[Any, Any, Any]:
        """The coroutine of handler ``method_name`` for ``work``, not started."""
        if type(work) is TaskRun:
            return self._handler("task", method_name, work.task)
        assert type(work) is CapabilityCall
        return self._handler("capability", method_name, work.parameters)

    def _handler(self, kind: str, method_name: str, payload: Any) -> Coroutine[Any, Any, Any]:
        """The coroutine of handler ``method_name`` for a task (``payload``: the TaskMessage)
        or a capability request (its parameters, checked first: see :class:`Parameters`), not
        started. Raises InvalidParameters when they do not fit the handler (it did not run)."""
        method: Callable[..., Coroutine[Any, Any, Any]] = getattr(self, method_name)
        if kind == "task":
            return method(payload)
        return self._parameters(method_name, method).call(method, payload)

    def _failed(self, work: Work, exc: BaseException, correlation: str | None = None) -> None:
        """The work failed, not the agent: its requester gets the error."""
        self.tasks_processed += 1
        work.finish(None, self._task_failed(work.kind, work.key, exc, correlation))

    def _task_failed(
        self, kind: str, key: str, exc: BaseException, correlation: str | None = None
    ) -> WorkFailed:
        """Log a handler's exception (with the agent's and the ``correlation`` id, for when it
        is logged outside the handler's context); the WorkFailed its requester gets."""
        context = {"agent": self.agent_id, "correlation_id": correlation}
        failed = WorkFailed(self.agent_id, kind, key, exc)
        level = logging.INFO if isinstance(exc, InvalidParameters) else logging.WARNING  # the asker's
        self.context.system.failure_log.log(  # a storm of identical failures: counted, not repeated
            log,
            level,
            (kind, key, failed.reason),
            "agent %s: %s %s failed: %s",
            self.agent_id,
            kind,
            key,
            failed.reason,
            extra=context,
        )
        return failed

    def _stopped(self, work: Work) -> WorkFailed:
        return WorkFailed(self.agent_id, work.kind, work.key, RuntimeError("agent stopped"))

    def _gave_up(self, work: Work) -> WorkFailed:
        return WorkFailed(self.agent_id, work.kind, work.key, RuntimeError("cancelled"))

    def _finished(self) -> None:
        if self._source is not None:
            self._source.work_done(self.agent_id)
