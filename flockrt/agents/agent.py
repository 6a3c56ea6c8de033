"""Agent: an actor with an identity and skills that a flock routes work to.

An agent declares what it can do on its class: ``@capability("text-analysis")`` on an async
method makes it answer capability requests, ``@handles_task("analysis")`` makes it handle tasks
of that type. The flock it lives in (an :class:`AgentPort`, registered as an extension of the
actor system: in-process, or over NATS) learns of it when it starts, hears its heartbeats, and
hands it at most ``max_concurrent_tasks`` pieces of work at a time.

Work runs in asyncio tasks owned by the agent, so several pieces of work may run at once (up to
``max_concurrent_tasks``); messages (direct messages, broadcasts, events) are still handled one
at a time by ``receive``. A capability or task handler that raises fails that piece of work
only; the agent goes on. An agent that fails in ``receive`` is restarted by its supervisor like
any actor and announces itself again.

Long work can report progress: a handler calls :meth:`Agent.report_progress`, which reaches the
``progress`` callback its requester attached to the :class:`Work` (an MCP gateway turns it into
``notifications/progress``). An agent that delegates with :meth:`Agent.request_capability`
forwards the progress of the delegated work to its own requester.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, ClassVar

from flockrt.actors.actor import Actor
from flockrt.actors.correlation import correlation_id, current_agent
from flockrt.actors.tasks import TaskOwner
from flockrt.agents.decorators import CAPABILITY, TASK_TYPE, capability, handles_task, never_waits
from flockrt.agents.params import Parameters
from flockrt.agents.ports import AgentCard, Membership, WorkSource
from flockrt.agents.work import (
    CapabilityCall,
    Follow,
    ProgressCallback,
    TaskBatch,
    TaskRun,
    Work,
    current_work,
    follow_requester,
    report_tasks,
)
from flockrt.errors import InvalidParameters, NoCapableAgent, WorkFailed
from flockrt.wire.schema import AgentEvent, Broadcast, CapabilitySchema, DirectMessage, Heartbeat
from flockrt.wire.subjects import check_token

__all__ = ["Agent", "AgentCard", "AgentPort", "ProgressCallback", "Work", "capability", "handles_task"]

log = logging.getLogger("flockrt.agent")

AgentPort = Membership
"""Deprecated name of :class:`~flockrt.agents.ports.Membership` (AgentPort was a base class)."""


class _Beat:
    """Timer message: time to heartbeat."""


_BEAT = _Beat()


class Agent(Actor[Any]):
    """Base class of agents.

    Subclass it, declare skills with :func:`capability` and :func:`handles_task`, and override
    the hooks you need: :meth:`setup` / :meth:`teardown` (instead of on_start / on_stop, which the
    agent uses to join and leave its flock), :meth:`on_message` for direct messages (a query's
    return value is the answer), :meth:`on_broadcast`, :meth:`on_event`.

    Args:
        agent_id: Unique in the whole flock (across processes); a NATS subject token.
        name: Human-readable name (default: the id).
        max_concurrent_tasks: Pieces of work run at once (default: the class attribute).
    """

    max_concurrent_tasks: int = 1
    drain_timeout: float = 5.0
    """Seconds a graceful stop waits for the work in flight to finish before cancelling it
    (the actor's own shutdown timeout still bounds the whole stop). A restart after a failure
    does not wait."""
    _flockrt_capabilities: ClassVar[dict[str, str]] = {}
    _flockrt_task_types: ClassVar[dict[str, str]] = {}
    _flockrt_parameters: ClassVar[dict[str, Parameters]] = {}
    """The capability handlers' :class:`Parameters`, by method name, built on first use."""
    _flockrt_inline: ClassVar[frozenset[str]] = frozenset()
    """Skill methods that never wait (see :func:`_never_waits`): run inline, without a Task."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        capabilities: dict[str, str] = {}
        task_types: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                if (name := getattr(value, CAPABILITY, None)) is not None:
                    capabilities[name] = attr
                if (task_type := getattr(value, TASK_TYPE, None)) is not None:
                    task_types[task_type] = attr
        cls._flockrt_capabilities = capabilities
        cls._flockrt_task_types = task_types
        cls._flockrt_parameters = {}
        methods = {*capabilities.values(), *task_types.values()}
        cls._flockrt_inline = frozenset(m for m in methods if never_waits(getattr(cls, m)))

    def __init__(
        self, agent_id: str, *, name: str | None = None, max_concurrent_tasks: int | None = None
    ) -> None:
        self.agent_id = check_token("agent id", agent_id)
        self.agent_name = name or agent_id
        if max_concurrent_tasks is not None:
            self.max_concurrent_tasks = max_concurrent_tasks
        if self.max_concurrent_tasks < 1:
            raise ValueError(f"max_concurrent_tasks must be >= 1, got {self.max_concurrent_tasks!r}")
        self.tasks_processed = 0
        self._started = time.monotonic()
        self._flock: Membership | None = None
        self._source: WorkSource | None = None  # the dispatcher, once the agent joined its flock
        self._running = TaskOwner(f"agent {agent_id}", log)
        self._handoff: Work | None = None  # see _runner
        # Where handlers that never wait run (see _step): a context of the agent's own.
        self._inline_context = contextvars.Context()
        self._inline_context.run(current_agent.set, self.agent_id)
        self._stepping = 0

    # ------------------------------------------------------------------ identity

    @property
    def capabilities(self) -> tuple[str, ...]:
        """The capability names this agent answers."""
        return tuple(self._flockrt_capabilities)

    @property
    def task_types(self) -> tuple[str, ...]:
        """The task types this agent handles."""
        return tuple(self._flockrt_task_types)

    @property
    def load(self) -> float:
        """Running work / max_concurrent_tasks."""
        return len(self._running) / self.max_concurrent_tasks

    def card(self) -> AgentCard:
        """The agent as its flock sees it."""
        return AgentCard(
            id=self.agent_id,
            name=self.agent_name,
            capabilities=self.capabilities,
            capability_schemas=self.capability_schemas(),
            task_types=self.task_types,
            max_concurrent_tasks=self.max_concurrent_tasks,
            ref=self.context.ref,
            take_work=self.take_work,
            run_now=self._run_now,
            inline_task_types=frozenset(
                task_type
                for task_type, method_name in self._flockrt_task_types.items()
                if method_name in self._flockrt_inline
            ),
            inline_capabilities=frozenset(
                name
                for name, method_name in self._flockrt_capabilities.items()
                if method_name in self._flockrt_inline
            ),
        )

    def heartbeat(self) -> Heartbeat:
        """The heartbeat this agent would send now."""
        return Heartbeat(
            agent_id=self.agent_id,
            status="busy" if len(self._running) >= self.max_concurrent_tasks else "online",
            uptime=int((time.monotonic() - self._started) * 1000),
            tasks_processed=self.tasks_processed,
            load=self.load,
        )

    def add_capability(self, name: str, handler: Callable[..., Coroutine[Any, Any, Any]]) -> None:
        """Offer capability ``name``, done by ``handler``, besides those the class declares.

        For agents whose skills are known only at run time (an outside agent behind the MCP
        gateway). Call it before the agent starts (in ``__init__``): its flock learns what an
        agent offers when it starts. ``handler`` is called like a :func:`capability` method.

        Raises:
            ValueError: ``name`` cannot be part of a NATS subject.
        """
        check_token("capability", name)
        attribute = f"_flockrt_added_capability:{name}"  # adding a name again replaces its handler
        # Instance attributes shadow the class's table: other instances keep theirs.
        vars(self)[attribute] = handler
        vars(self)["_flockrt_capabilities"] = {**self._flockrt_capabilities, name: attribute}
        vars(self)["_flockrt_parameters"] = {}  # its handler is this agent's own

    def offer_only(self, names: Iterable[str]) -> None:
        """Offer only these of the class's capabilities (a config's ``capabilities = [...]``):
        the others are neither announced nor answered. Call it before the agent starts.

        Raises:
            ValueError: a name the class does not offer.
        """
        wanted = list(names)
        unknown = [name for name in wanted if name not in self._flockrt_capabilities]
        if unknown:
            offered = ", ".join(self._flockrt_capabilities) or "none"
            raise ValueError(
                f"{type(self).__name__} does not offer {', '.join(unknown)} (it offers {offered})"
            )
        vars(self)["_flockrt_capabilities"] = {name: self._flockrt_capabilities[name] for name in wanted}

    # ------------------------------------------------------------------ hooks for subclasses

    async def setup(self) -> None:
        """Called on every (re)start before the agent joins its flock."""

    async def teardown(self) -> None:
        """Called when the agent stops or before a restart, after its work was cancelled."""

    async def on_message(self, message: DirectMessage) -> Any:
        """A direct message; for a ``query`` the return value is the answer.

        To fail a query without failing the agent (raising here would), return a
        :class:`~flockrt.errors.WorkFailed`: the asker gets it raised.

        To answer a query later without holding up the mailbox (heartbeats, further
        messages), return an :class:`asyncio.Task` the agent owns (cancelled and awaited in
        :meth:`teardown`): its result is the answer. The asker waits for it within its own
        timeout and cancels it when it gives up.
        """
        log.info("agent %s: unhandled %s message from %s", self.agent_id, message.type, message.sender)
        return None

    async def on_broadcast(self, message: Broadcast) -> None:
        """A broadcast to every agent."""

    async def on_event(self, event: AgentEvent) -> None:
        """An event addressed to this agent."""

    # ------------------------------------------------------------------ helpers for handlers

    def report_progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """Tell whoever waits for the current piece of work how far it has come.

        Call it from a capability or task handler (or anything it awaits); elsewhere, or when
        the requester attached no ``progress`` callback to the work, it does nothing.

        Args:
            done: Progress so far; it should only grow.
            total: What ``done`` reaches at the end, if known.
            message: A short human-readable status.
        """
        work = current_work.get()
        if work is None or work.progress is None:
            return
        try:
            work.progress(done, total, message)
        except Exception:  # the listener's bug must not fail the work it listens to
            log.exception("agent %s: progress callback %r failed", self.agent_id, work.progress)

    @property
    def progress_listener(self) -> ProgressCallback | None:
        """The progress callback of the piece of work being handled (None outside one)."""
        work = current_work.get()
        return None if work is None else work.progress

    async def request_capability(
        self,
        capability: str,
        parameters: Any = None,
        *,
        timeout: float = 30.0,
        progress: ProgressCallback | None = None,
    ) -> Any:
        """Have another agent of the flock (in this process or, over NATS, another one) do
        ``capability``, and return its answer.

        Called from a handler, the progress the other agent reports is forwarded to this
        handler's requester unless ``progress`` is given.

        Raises:
            NoCapableAgent: no agent offers ``capability`` (or this agent is in no flock).
            WorkTimeout: no answer within ``timeout`` seconds.
            WorkFailed: the other agent's handler raised.
        """
        if self._source is None:
            raise NoCapableAgent("capability", capability)
        return await self._source.request_capability(
            capability, parameters, timeout=timeout, progress=progress or self.progress_listener
        )

    # ------------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        await self.setup()
        flock = self.context.system.extension(Membership)  # type: ignore[type-abstract]  # a key
        self._flock = flock
        if flock is None:
            log.debug("agent %s runs without a flock (no Membership registered)", self.agent_id)
            return
        self._source = flock.agent_started(self.card())
        self.context.send_periodic(flock.heartbeat_interval, _BEAT, initial_delay=0)

    async def on_stop(self) -> None:
        if self._flock is not None:
            self._flock.agent_stopped(self.agent_id)  # from here on, no new work comes
        running = self._running.take()
        try:
            if running and self.context.state == "stopping" and self.drain_timeout > 0:
                # A graceful stop (SIGTERM, a supervisor's terminate): the work in flight ends
                # with its result rather than "agent stopped".
                _, late = await asyncio.wait(running, timeout=self.drain_timeout)
                if late:
                    log.warning(
                        "agent %s: %d pieces of work still running after %g s are cancelled",
                        self.agent_id,
                        len(late),
                        self.drain_timeout,
                    )
        finally:
            await TaskOwner.cancel(running)
        await self.teardown()

    # ------------------------------------------------------------------ messages

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Work):  # handed over while this instance could not take it directly
            self._start_work(message)
        elif message is _BEAT:
            if self._flock is not None:
                self._flock.agent_heartbeat(self.heartbeat())
        elif isinstance(message, DirectMessage):
            # The receive loop's context outlives this message: set, then reset.
            agent = current_agent.set(self.agent_id)
            correlation = correlation_id.set(message.correlation_id)
            try:
                return await self.on_message(message)
            finally:
                correlation_id.reset(correlation)
                current_agent.reset(agent)
        elif isinstance(message, Broadcast):
            await self.on_broadcast(message)
        elif isinstance(message, AgentEvent):
            await self.on_event(message)
        else:
            log.warning("agent %s ignores unexpected message %r", self.agent_id, message)
        return None

    def take_work(self, work: Work) -> bool:
        """Start ``work`` now, bypassing the mailbox; the flock's way to hand work over.

        Returns False, taking nothing, when this instance cannot take work right now (it is
        starting, failed, restarting or stopping): the flock then sends the work through the
        mailbox, where a restarted instance finds it.
        """
        if not self._context.runs(self):
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

    def _run_now(
        self, kind: str, key: str, payload: Any, correlation: str | None
    ) -> tuple[Any, WorkFailed | None] | None:
        """Run a task (``payload``: the TaskMessage) or a capability request (``payload``: its
        parameters) whose handler never waits (``AgentCard.inline_task_types``,
        ``inline_capabilities``) here and now: the flock's fast path for work that finds a free
        agent, with no :class:`Work` and no handover (the flock keeps the agent's slot count).

        Returns:
            ``(value, None)``, or ``(None, failure)`` when the handler raised; None, having
            run nothing, when this instance cannot take work right now (see :meth:`take_work`).
        """
        if not self._context.runs(self):
            return None
        table = self._flockrt_capabilities if kind == "capability" else self._flockrt_task_types
        self.tasks_processed += 1
        try:
            return self._step(self._handler(kind, table[key], payload), correlation), None
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
                        else:
                            follow = self._begin(work)
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

    def _parameters(self, method_name: str, method: Callable[..., Any]) -> Parameters:
        check = self._flockrt_parameters.get(method_name)
        if check is None:  # built once per class and handler (an added handler: per agent)
            names = {attribute: name for name, attribute in self._flockrt_capabilities.items()}
            check = Parameters(names.get(method_name, method_name), method)
            self._flockrt_parameters[method_name] = check
        return check

    def capability_schemas(self) -> dict[str, CapabilitySchema]:
        """What each capability of the class takes, returns and does (its handler's hints and
        docstring), as the agent announces it; an added one is not described."""
        schemas = {}
        for name, attribute in self._flockrt_capabilities.items():
            if not attribute.startswith("_flockrt_added_capability:"):
                method = getattr(self, attribute)
                check = self._parameters(attribute, method)
                schemas[name] = CapabilitySchema(
                    description=inspect.getdoc(method),
                    input_schema=check.input_schema(),
                    output_schema=check.output_schema(method),
                )
        return schemas

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


_RUNS_PER_TURN = 64
"""Pieces of work a runner does in a row before it yields to the loop (as an actor's turn)."""


class _Waiting:
    """``Agent._handoff`` while a runner reports its free slot: it takes the next piece."""


_WAITING: Any = _Waiting()
