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
import dis
import inspect
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from flockrt.actors.actor import Actor
from flockrt.actors.correlation import correlation_id, current_agent
from flockrt.errors import NoCapableAgent, WorkFailed
from flockrt.wire.schema import AgentEvent, Broadcast, DirectMessage, Heartbeat
from flockrt.wire.subjects import check_token

__all__ = ["Agent", "AgentCard", "AgentPort", "ProgressCallback", "Work", "capability", "handles_task"]

log = logging.getLogger("flockrt.agent")

F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])

ProgressCallback = Callable[[float, float | None, str | None], None]
"""``progress(done, total, message)``: how far a piece of work has come (MCP's progress
notification: ``done`` only grows; ``total`` is None when unknown). Called on the event loop;
it must not block and should not raise (an exception is logged and ignored)."""

_CAPABILITY = "__flockrt_capability__"
_TASK_TYPE = "__flockrt_task_type__"


def capability(name: str) -> Callable[[F], F]:
    """Mark an ``async def`` method as the agent's handler of capability ``name``.

    A request's parameters are passed as keyword arguments when they are a JSON object, else
    as the one positional argument; the return value is the answer.
    """
    return _skill_marker("capability", name, _CAPABILITY)


def handles_task(task_type: str) -> Callable[[F], F]:
    """Mark an ``async def`` method as the agent's handler of tasks of ``task_type``.

    The method receives the :class:`~flockrt.wire.schema.TaskMessage`; its return value becomes
    the ``result`` of the TaskResult.
    """
    return _skill_marker("task type", task_type, _TASK_TYPE)


def _skill_marker(kind: str, key: str, attribute: str) -> Callable[[F], F]:
    """The decorator behind capability/handles_task: checks the name, tags the method."""
    check_token(kind, key)
    decorator = "capability" if attribute == _CAPABILITY else "handles_task"

    def mark(method: F) -> F:
        if not inspect.iscoroutinefunction(method):
            raise TypeError(f"@{decorator}({key!r}) needs an async def method, got {method!r}")
        setattr(method, attribute, key)
        return method

    return mark


WorkDone = Callable[["Work", Any, "WorkFailed | None"], object]
"""The flock's hook on a finished piece of work: ``(work, value, None)`` or ``(work, None, error)``."""

TaskDone = Callable[["Work", int, "list[Any]", "list[float]", "dict[int, WorkFailed]"], object]
"""The flock's hook on tasks of bulk work that finished: ``(work, start, values, finished,
failures)`` for ``work.payload[start : start + len(values)]``: their handlers' return values
(None for those that failed), when each one finished (``time.monotonic()``), and the failures
by index in ``work.payload``."""


@dataclass(eq=False, slots=True)
class Work:
    """One piece of work a flock hands to an agent: a capability call or a task.

    Attributes:
        kind: "capability" or "task".
        key: The capability name or the task type.
        payload: The request's parameters, or the TaskMessage.
        future: A waiting requester's future, or None: gets the handler's return value or a
            WorkFailed. A requester that gives up cancels it, and work not started yet is
            then skipped.
        priority: 0 (high), 1 (medium) or 2 (low): lower runs first.
        on_done: Called once, synchronously, when the work has finished (after ``future``);
            how tasks get their TaskResult without a future and a loop turn each.
        each: Set on *bulk* work: several tasks of one type handed over as one unit that
            occupies one slot. ``payload`` is then a list of TaskMessages, run one after the
            other (each with its own correlation id, each failing alone), and ``each`` gets
            their outcomes (:data:`TaskDone`): all at once when the handler never waits,
            else each as it finishes. ``on_done`` follows once, at the end, when ``cursor``
            says how many were started (an agent that stops hands back the rest).
    """

    kind: Literal["capability", "task"]
    key: str
    payload: Any
    future: asyncio.Future[Any] | None = None
    priority: int = 1
    enqueued: float = field(default_factory=time.monotonic)
    agent_id: str = ""
    """Who it was handed to (set by the flock)."""
    correlation_id: str | None = None
    """The correlation id of the request, set again while the agent's handler runs."""
    progress: ProgressCallback | None = None
    """Where the handler's :meth:`Agent.report_progress` goes (None: nobody listens)."""
    on_done: WorkDone | None = None
    each: TaskDone | None = None
    cursor: int = 0
    """Bulk work: how many of its tasks were started (the rest were never begun)."""

    @property
    def abandoned(self) -> bool:
        """Its requester gave up waiting (there is no point in starting it)."""
        return self.future is not None and self.future.done()

    def finish(self, value: Any, error: WorkFailed | None = None) -> None:
        """Deliver the outcome to the requester's future and the flock's hook."""
        future = self.future
        if future is not None and not future.done():
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)
        if self.on_done is not None:
            try:
                self.on_done(self, value, error)
            except Exception:  # a bug in the flock's hook must not cost the agent its slot
                context = {"agent": self.agent_id or None, "correlation_id": self.correlation_id}
                log.exception("%s %s: the hook on its outcome failed", self.kind, self.key, extra=context)


# The Work a handler is running, in the context the handler runs in (its runner Task's, or a
# copy of the agent's own for an inline handler whose progress someone listens to), so
# report_progress finds its requester.
_current_work: contextvars.ContextVar[Work | None] = contextvars.ContextVar("flockrt_work", default=None)


@dataclass(frozen=True, slots=True)
class AgentCard:
    """What a flock knows of a local agent: identity, skills, capacity and its ref."""

    id: str
    name: str
    capabilities: tuple[str, ...]
    task_types: tuple[str, ...]
    max_concurrent_tasks: int
    ref: Any  # ActorRef[Any]; Any keeps this module free of a ref import cycle
    take_work: Callable[[Work], bool] | None = None
    """Hands work to the agent directly, bypassing its mailbox (see :meth:`Agent.take_work`)."""
    run_now: Callable[[str, str, Any, str | None], tuple[Any, WorkFailed | None] | None] | None = None
    """Runs a task or a capability request whose handler never waits here and now, with no
    Work (``Agent._run_now``)."""
    inline_task_types: frozenset[str] = frozenset()
    """Task types whose handler never waits: the flock may hand it many of those tasks as one
    piece of bulk work (see :attr:`Work.each`), which it runs in one go."""
    inline_capabilities: frozenset[str] = frozenset()
    """Capabilities whose handler never waits."""


class AgentPort:
    """What an agent needs from the flock it lives in.

    Implemented in-process by :class:`flockrt.flock.local.LocalFlock` (and over NATS on top of it).
    Registered with ``system.register_extension(AgentPort, port)``.
    """

    heartbeat_interval: float = 30.0
    """Seconds between heartbeats (HEARTBEAT_INTERVAL is in milliseconds)."""

    def agent_started(self, card: AgentCard) -> None:
        """The agent is ready for work (also after a restart)."""
        raise NotImplementedError

    def agent_heartbeat(self, heartbeat: Heartbeat) -> None:
        """A sign of life with the agent's counters."""
        raise NotImplementedError

    def agent_stopped(self, agent_id: str) -> None:
        """The agent takes no more work (it is stopping or restarting)."""
        raise NotImplementedError

    def work_done(self, agent_id: str) -> None:
        """One piece of work the flock handed to the agent has finished: capacity is free."""
        raise NotImplementedError

    async def request_capability(
        self,
        capability: str,
        parameters: Any = None,
        *,
        timeout: float = 30.0,
        progress: ProgressCallback | None = None,
    ) -> Any:
        """Have an agent of the flock that offers ``capability`` do it; return its answer."""
        raise NotImplementedError


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
    _flockrt_inline: ClassVar[frozenset[str]] = frozenset()
    """Skill methods that never wait (see :func:`_never_waits`): run inline, without a Task."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        capabilities: dict[str, str] = {}
        task_types: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                if (name := getattr(value, _CAPABILITY, None)) is not None:
                    capabilities[name] = attr
                if (task_type := getattr(value, _TASK_TYPE, None)) is not None:
                    task_types[task_type] = attr
        cls._flockrt_capabilities = capabilities
        cls._flockrt_task_types = task_types
        methods = {*capabilities.values(), *task_types.values()}
        cls._flockrt_inline = frozenset(m for m in methods if _never_waits(getattr(cls, m)))

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
        self._port: AgentPort | None = None
        self._running: set[asyncio.Task[None]] = set()
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
        work = _current_work.get()
        if work is None or work.progress is None:
            return
        try:
            work.progress(done, total, message)
        except Exception:  # the listener's bug must not fail the work it listens to
            log.exception("agent %s: progress callback %r failed", self.agent_id, work.progress)

    @property
    def progress_listener(self) -> ProgressCallback | None:
        """The progress callback of the piece of work being handled (None outside one)."""
        work = _current_work.get()
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
        if self._port is None:
            raise NoCapableAgent("capability", capability)
        return await self._port.request_capability(
            capability, parameters, timeout=timeout, progress=progress or self.progress_listener
        )

    # ------------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        await self.setup()
        port = self.context.system.extension(AgentPort)
        self._port = port
        if port is None:
            log.debug("agent %s runs without a flock (no AgentPort registered)", self.agent_id)
            return
        port.agent_started(self.card())
        self.context.send_periodic(port.heartbeat_interval, _BEAT, initial_delay=0)

    async def on_stop(self) -> None:
        if self._port is not None:
            self._port.agent_stopped(self.agent_id)  # from here on, no new work comes
        running, self._running = self._running, set()
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
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        await self.teardown()

    # ------------------------------------------------------------------ messages

    async def receive(self, message: Any) -> Any:
        if type(message) is Work:  # handed over while this instance could not take it directly
            self._start_work(message)
        elif message is _BEAT:
            if self._port is not None:
                self._port.agent_heartbeat(self.heartbeat())
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
            if work.each is None:
                self._run_inline(work, method_name)
            else:
                self._run_inline_bulk(work, method_name)
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
            _current_work.set(work)
        self._stepping += 1
        try:
            handler.send(None)
            handler.close()  # it waited after all (a method replaced on the instance?)
        except StopIteration as returned:
            return returned.value
        finally:
            self._stepping -= 1
        raise RuntimeError("an inline handler tried to wait")

    def _run_inline_bulk(self, work: Work, method_name: str) -> None:
        """Run bulk work (a list of tasks, see :attr:`Work.each`) whose handler never waits, in
        one tight loop: as :meth:`_run_inline` per task, with what can be shared set once, and
        the outcomes handed to the flock together at the end.

        Each task gets its own correlation id (the work's, else the task's id) and fails alone.
        No task can be left unstarted: nothing in the loop can suspend, so nothing can stop the
        agent half-way (and reporting at the end delays no result: nobody else runs meanwhile).
        """
        each = work.each
        assert each is not None
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
        _report_tasks(work, each, 0, values, finished, failures)
        work.finish(None)
        self._finished()

    def _send_each(
        self,
        work: Work,
        method: Callable[[Any], Coroutine[Any, Any, Any]],
        values: list[Any],
        finished: list[float],
        failures: dict[int, WorkFailed],
    ) -> None:
        """:meth:`_run_inline_bulk`'s loop, within the context it chose: each task's value (None
        if it failed), when it finished, and its failure by index."""
        shared_correlation = work.correlation_id
        current_agent.set(self.agent_id)
        correlation_id.set(shared_correlation)
        _current_work.set(work)
        keep, stamp, now = values.append, finished.append, time.monotonic
        self._stepping += 1
        try:
            for index, task in enumerate(work.payload):
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
        task = asyncio.get_running_loop().create_task(self._runner(work), context=self._inline_context.copy())
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _runner(self, work: Work) -> None:
        """Run ``work``, then each piece the flock hands over as its slot frees up.

        Under load the flock's queue is rarely empty, so one runner Task does many pieces of
        work in a row instead of one Task (and its scheduling) per piece. The handover is
        synchronous: ``_finished`` reports the free slot, the flock's dispatcher calls
        :meth:`take_work` within that call, and ``_handoff`` carries the piece back here.
        """
        in_a_row = 0
        while True:
            try:
                if not work.abandoned:
                    await self._run(work)
            except asyncio.CancelledError:  # the agent stops; nothing more for this runner
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

    async def _run(self, work: Work) -> None:
        """Run one piece of work; its outcome goes to ``work.finish`` (never raised, except
        the cancellation of a stopping agent)."""
        table = self._flockrt_capabilities if work.kind == "capability" else self._flockrt_task_types
        method_name = table.get(work.key)
        if method_name is None:
            work.finish(None, WorkFailed(self.agent_id, work.kind, work.key, LookupError("not offered")))
            return
        if work.each is not None:
            await self._run_bulk(work, method_name)
            return
        # The runner Task's own context: set for this piece, overwritten by the next one.
        current_agent.set(self.agent_id)
        correlation_id.set(work.correlation_id)
        _current_work.set(work)  # a runner's context: no reset, and the next piece replaces it
        follow = _follow_requester(work)
        try:
            result = await self._call(work, method_name)
        except asyncio.CancelledError:
            if follow.cancelled:  # its requester gave up (the runner stops, its slot is freed)
                work.finish(None, WorkFailed(self.agent_id, work.kind, work.key, RuntimeError("cancelled")))
            else:
                work.finish(None, self._stopped(work))
            raise
        except Exception as exc:  # the work failed, not the agent: its requester gets the error
            self._failed(work, exc)
        else:
            self.tasks_processed += 1
            work.finish(result)
        finally:
            follow.stop()

    async def _run_bulk(self, work: Work, method_name: str) -> None:
        """Run bulk work's tasks one after the other in this runner Task (as :meth:`_run` per
        task); each outcome goes to ``work.each``, then ``work.finish`` follows.

        An agent stopping half-way fails the task it was running (as for a single piece of
        work) and hands back the ones not started: ``work.cursor`` tells the flock where to
        pick up (see :attr:`Work.each`).
        """
        each = work.each
        assert each is not None
        method: Callable[[Any], Coroutine[Any, Any, Any]] = getattr(self, method_name)
        current_agent.set(self.agent_id)
        _current_work.set(work)
        tasks = work.payload
        while work.cursor < len(tasks):
            index = work.cursor
            task = tasks[index]
            work.cursor = index + 1
            correlation_id.set(work.correlation_id or task.id)
            error: WorkFailed | None = None
            try:
                value = await method(task)
            except asyncio.CancelledError:  # the agent stops: this task fails, the rest go back
                _report_tasks(work, each, index, [None], [time.monotonic()], {index: self._stopped(work)})
                work.finish(None)
                raise
            except Exception as exc:  # the task failed, not the agent
                value, error = None, self._task_failed(work.kind, work.key, exc)
            self.tasks_processed += 1
            _report_tasks(work, each, index, [value], [time.monotonic()], {index: error} if error else {})
        work.finish(None)

    def _call(self, work: Work, method_name: str) -> Coroutine[Any, Any, Any]:
        """The coroutine of handler ``method_name`` for ``work``, not started."""
        return self._handler(work.kind, method_name, work.payload)

    def _handler(self, kind: str, method_name: str, payload: Any) -> Coroutine[Any, Any, Any]:
        """The coroutine of handler ``method_name`` for a task (``payload``: the TaskMessage)
        or a capability request (its parameters: keyword arguments when they are a JSON
        object, else one argument, or none), not started."""
        method: Callable[..., Coroutine[Any, Any, Any]] = getattr(self, method_name)
        if kind == "task":
            return method(payload)
        if isinstance(payload, dict):
            return method(**payload)
        if payload is None:
            return method()
        return method(payload)

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
        log.warning("agent %s: %s %s failed: %r", self.agent_id, kind, key, exc, extra=context)
        return WorkFailed(self.agent_id, kind, key, exc)

    def _stopped(self, work: Work) -> WorkFailed:
        return WorkFailed(self.agent_id, work.kind, work.key, RuntimeError("agent stopped"))

    def _finished(self) -> None:
        if self._port is not None:
            self._port.work_done(self.agent_id)


def _report_tasks(
    work: Work,
    each: TaskDone,
    start: int,
    values: list[Any],
    finished: list[float],
    failures: dict[int, WorkFailed],
) -> None:
    """Tasks of bulk work finished: tell the flock (a bug in its hook costs nothing else)."""
    try:
        each(work, start, values, finished, failures)
    except Exception:
        log.exception("%s %s: the hook on its tasks' outcomes failed", work.kind, work.key)


class _Follow:
    """While a runner Task runs a piece of work, a requester that cancels its wait (an MCP
    client's notifications/cancelled, a caller cancelled itself, a timeout) cancels the Task:
    nobody wants the result any more. :meth:`stop` ends this when the work is over (the Task
    may go on with other work); :attr:`cancelled` says whether it fired."""

    __slots__ = ("_future", "_task", "cancelled")

    def __init__(self, future: asyncio.Future[Any] | None, task: asyncio.Task[Any] | None) -> None:
        self._future = future
        self._task = task
        self.cancelled = False
        if future is not None and task is not None:
            future.add_done_callback(self._abandoned)

    def _abandoned(self, done: asyncio.Future[Any]) -> None:
        if done.cancelled() and self._task is not None:
            self.cancelled = True
            self._task.cancel()

    def stop(self) -> None:
        if self._future is not None and self._task is not None:
            self._future.remove_done_callback(self._abandoned)
        self._task = None


def _follow_requester(work: Work) -> _Follow:
    return _Follow(work.future, asyncio.current_task())


_WAIT_OPCODES = frozenset(
    dis.opmap[name]
    for name in ("GET_AWAITABLE", "GET_AITER", "GET_ANEXT", "BEFORE_ASYNC_WITH", "YIELD_VALUE")
    if name in dis.opmap
)


def _never_waits(method: Any) -> bool:
    """Whether ``method`` is an ``async def`` with no await, ``async for`` or ``async with``
    in its body: its coroutine then finishes in its first step, whatever it calls."""
    code = getattr(method, "__code__", None)
    if code is None or not inspect.iscoroutinefunction(method):
        return False
    return not any(instruction.opcode in _WAIT_OPCODES for instruction in dis.get_instructions(code))


_RUNS_PER_TURN = 64
"""Pieces of work a runner does in a row before it yields to the loop (as an actor's turn)."""


class _Waiting:
    """``Agent._handoff`` while a runner reports its free slot: it takes the next piece."""


_WAITING: Any = _Waiting()
