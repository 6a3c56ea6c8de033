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
from flockrt.agents.here import HereSet
from flockrt.agents.params import Parameters
from flockrt.agents.ports import AgentCard, Membership, WorkSource
from flockrt.agents.running import WorkRunner
from flockrt.agents.work import (
    ProgressCallback,
    Work,
    current_work,
)
from flockrt.errors import NoCapableAgent
from flockrt.wire.schema import AgentEvent, Broadcast, CapabilitySchema, DirectMessage, Heartbeat
from flockrt.wire.subjects import check_token

__all__ = ["Agent", "AgentCard", "AgentPort", "ProgressCallback", "Work", "capability", "handles_task"]

log = logging.getLogger("flockrt.agent")

AgentPort = Membership
"""Deprecated name of :class:`~flockrt.agents.ports.Membership` (AgentPort was a base class)."""


class _Beat:
    """Timer message: time to heartbeat."""


_BEAT = _Beat()


class Agent(Actor[Any], WorkRunner):
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
        self._here = HereSet()  # work running in its submitters' Tasks (see run_here)
        self._drained: asyncio.Future[None] | None = None  # a stop waits for _here (see run_here)
        self._handoff: Work | None = None  # see _runner
        # Where handlers that never wait run (see _step): a context of the agent's own.
        self._inline_context = contextvars.Context()
        self._inline_context.run(current_agent.set, self.agent_id)
        self._stepping = 0
        self._inline_tasks = {}  # (bound as it joins its flock: see _bind_inline_tasks)

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
        return (len(self._running) + len(self._here)) / self.max_concurrent_tasks

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
            run_here=self.run_here,
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
            status="busy" if len(self._running) + len(self._here) >= self.max_concurrent_tasks else "online",
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
        self._bind_inline_tasks()
        self._source = flock.agent_started(self.card())
        self.context.send_periodic(flock.heartbeat_interval, _BEAT, initial_delay=0)

    async def on_stop(self) -> None:
        if self._flock is not None:
            self._flock.agent_stopped(self.agent_id)  # from here on, no new work comes
        running = self._running.take()
        try:
            if (running or self._here) and self.context.state == "stopping" and self.drain_timeout > 0:
                # A graceful stop (SIGTERM, a supervisor's terminate): the work in flight ends
                # with its result rather than "agent stopped"; that includes work running in
                # its submitters' Tasks (see run_here).
                waiting: set[asyncio.Future[Any]] = set(running)
                if self._here:
                    waiting.add(self._here_drained())
                _, late = await asyncio.wait(waiting, timeout=self.drain_timeout)
                if late:
                    log.warning(
                        "agent %s: %d pieces of work still running after %g s are cancelled",
                        self.agent_id,
                        len(late & running) + len(self._here),
                        self.drain_timeout,
                    )
        finally:
            self._interrupt_here()
            await TaskOwner.cancel(running)
            if self._here:  # interrupted: they end with "agent stopped" in their submitters' Tasks
                await self._here_drained()
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
