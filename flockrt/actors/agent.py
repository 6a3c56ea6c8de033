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
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from flockrt.actors.actor import Actor
from flockrt.actors.correlation import correlation_id, current_agent
from flockrt.bus.schema import AgentEvent, Broadcast, DirectMessage, Heartbeat
from flockrt.bus.subjects import check_token
from flockrt.errors import NoCapableAgent, WorkFailed

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

    The method receives the :class:`~flockrt.bus.schema.TaskMessage`; its return value becomes
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


@dataclass(eq=False, slots=True)
class Work:
    """One piece of work a flock hands to an agent: a capability call or a task.

    Attributes:
        kind: "capability" or "task".
        key: The capability name or the task type.
        payload: The request's parameters, or the TaskMessage.
        future: Receives the handler's return value or a WorkFailed.
        priority: 0 (high), 1 (medium) or 2 (low): lower runs first.
    """

    kind: Literal["capability", "task"]
    key: str
    payload: Any
    future: asyncio.Future[Any]
    priority: int = 1
    enqueued: float = field(default_factory=time.monotonic)
    agent_id: str = ""
    """Who it was handed to (set by the flock)."""
    correlation_id: str | None = None
    """The correlation id of the request, set again while the agent's handler runs."""
    progress: ProgressCallback | None = None
    """Where the handler's :meth:`Agent.report_progress` goes (None: nobody listens)."""


# The Work a handler is running: each piece of work runs in its own asyncio task, so a context
# variable set there is seen by that handler (and what it awaits) only.
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


class AgentPort:
    """What an agent needs from the flock it lives in.

    Implemented in-process by :class:`flockrt.local.LocalFlock` (and over NATS on top of it).
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
    _flockrt_capabilities: ClassVar[dict[str, str]] = {}
    _flockrt_task_types: ClassVar[dict[str, str]] = {}

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
        attribute = f"_flockrt_added_capability_{len(self._flockrt_capabilities)}"
        # Instance attributes shadow the class's table: other instances keep theirs.
        vars(self)[attribute] = handler
        vars(self)["_flockrt_capabilities"] = {**self._flockrt_capabilities, name: attribute}

    # ------------------------------------------------------------------ hooks for subclasses

    async def setup(self) -> None:
        """Called on every (re)start before the agent joins its flock."""

    async def teardown(self) -> None:
        """Called when the agent stops or before a restart, after its work was cancelled."""

    async def on_message(self, message: DirectMessage) -> Any:
        """A direct message; for a ``query`` the return value is the answer.

        To fail a query without failing the agent (raising here would), return a
        :class:`~flockrt.errors.WorkFailed`: the asker gets it raised.
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
            self._port.agent_stopped(self.agent_id)
        running, self._running = self._running, set()
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        await self.teardown()

    # ------------------------------------------------------------------ messages

    async def receive(self, message: Any) -> Any:
        if type(message) is Work:
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

    def _start_work(self, work: Work) -> None:
        if work.future.done():  # the requester gave up while it waited in the queue
            self._finished()
            return
        table = self._flockrt_capabilities if work.kind == "capability" else self._flockrt_task_types
        method_name = table.get(work.key)
        if method_name is None:
            work.future.set_exception(
                WorkFailed(self.agent_id, work.kind, work.key, LookupError("not offered"))
            )
            self._finished()
            return
        task = asyncio.get_running_loop().create_task(self._run(work, getattr(self, method_name)))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, work: Work, method: Callable[..., Coroutine[Any, Any, Any]]) -> None:
        # Its own task, so its own context: no reset needed.
        current_agent.set(self.agent_id)
        correlation_id.set(work.correlation_id)
        _current_work.set(work)  # this task's own context: seen by this handler only
        unfollow = _follow_requester(work)
        try:
            if work.kind == "task":
                result = await method(work.payload)
            elif isinstance(work.payload, dict):
                result = await method(**work.payload)
            elif work.payload is None:
                result = await method()
            else:
                result = await method(work.payload)
        except asyncio.CancelledError:
            if not work.future.done():
                work.future.set_exception(
                    WorkFailed(self.agent_id, work.kind, work.key, RuntimeError("agent stopped"))
                )
            raise
        except Exception as exc:  # the work failed, not the agent: its requester gets the error
            self.tasks_processed += 1
            log.warning("agent %s: %s %s failed: %r", self.agent_id, work.kind, work.key, exc)
            if not work.future.done():
                work.future.set_exception(WorkFailed(self.agent_id, work.kind, work.key, exc))
        else:
            self.tasks_processed += 1
            if not work.future.done():
                work.future.set_result(result)
        finally:
            unfollow()
            self._finished()

    def _finished(self) -> None:
        if self._port is not None:
            self._port.work_done(self.agent_id)


def _follow_requester(work: Work) -> Callable[[], None]:
    """While the current task runs ``work``, a requester that cancels its wait (an MCP client's
    notifications/cancelled, a caller cancelled itself, a timeout) cancels it: nobody wants the
    result any more. Returns the function that ends this, to call when the work is over (the
    task may go on with other work)."""
    future: asyncio.Future[Any] | None = work.future  # None: no requester waits for it
    task = asyncio.current_task()
    if future is None or task is None:
        return _nothing
    running = True

    def abandoned(done: asyncio.Future[Any]) -> None:
        if running and done.cancelled():
            task.cancel()

    def unfollow() -> None:
        nonlocal running
        running = False
        future.remove_done_callback(abandoned)

    future.add_done_callback(abandoned)
    return unfollow


def _nothing() -> None:
    pass
