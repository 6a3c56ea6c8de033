"""ActorSystem: owns the event-loop side of every actor, names, dead letters and shutdown."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from flockrt.actors.actor import Actor
from flockrt.actors.context import RUNNING, STATE_NAMES, ActorContext
from flockrt.actors.deadlines import AskDeadlines
from flockrt.actors.histogram import Histogram
from flockrt.actors.instance import start_instance
from flockrt.actors.ref import ActorRef
from flockrt.actors.repeats import RepeatedLines
from flockrt.errors import ActorNameTaken, ActorStartFailed, ActorStopped, SystemStopped

__all__ = ["ActorSystem", "SystemStats"]

M = TypeVar("M")
E = TypeVar("E")

log = logging.getLogger("flockrt.system")
dead_letter_log = logging.getLogger("flockrt.dead_letters")


@dataclass(frozen=True, slots=True)
class SystemStats:
    """Counters of an actor system since it started (cheap to read, never reset).

    Attributes:
        live: Actors spawned and not yet stopped.
        processed: Messages handled.
        failures: Handler failures (each also logged with its traceback).
        restarts: Actor restarts made by supervisors.
        dead_letters: Messages that could not be delivered (also logged at debug level).
        mailbox_overflows: ``tell`` calls refused with MailboxFull, plus dropped timer ticks.
        ask_timeouts: Asks that failed with AskTimeout.
        starting: Live actors running ``on_start`` (or ``on_restart``).
        running: Live actors taking messages.
        suspended: Live actors that failed and wait for their supervisor, or are restarting.
        stopping: Live actors on their way out (draining, ``on_stop``).
        stopped: Actors that have ended, in all.
    """

    live: int
    processed: int
    failures: int
    restarts: int
    dead_letters: int
    mailbox_overflows: int
    ask_timeouts: int = 0
    starting: int = 0
    running: int = 0
    suspended: int = 0
    stopping: int = 0
    stopped: int = 0

    def by_state(self) -> dict[str, int]:
        """Live actors per state name (starting, running, suspended, stopping)."""
        return {
            "starting": self.starting,
            "running": self.running,
            "suspended": self.suspended,
            "stopping": self.stopping,
        }


class _Guardian(Actor[Any]):
    """The root actor: parent of every top-level actor. It never receives user messages."""

    def receive(self, message: Any) -> None:
        self.context._system._dead_letter(self.context, message)


def _check_timeout(what: str, value: float | None) -> float | None:
    """Public timeouts use math.inf for 'forever'; internally that is None."""
    if value is None or math.isinf(value):
        return None
    if value < 0 or math.isnan(value):
        raise ValueError(f"{what} must be >= 0 seconds, got {value!r}")
    return value


class ActorSystem:
    """A tree of actors on one event loop.

    Use it as an async context manager: leaving the block shuts every actor down, top-level
    actors in reverse spawn order (children before parents), each within its shutdown timeout.
    If a top-level supervisor gives up (restart intensity exceeded), the system stops and the
    error is raised from :meth:`wait` and when the ``async with`` block ends.

    Args:
        name: Used in logs.
        mailbox_capacity: Default bound of every mailbox (``tell`` raises MailboxFull past it).
        throughput: Messages an actor handles per turn before yielding to the others.
        shutdown_timeout: Default seconds an actor may take to stop before it is cancelled.

    Example::

        async with ActorSystem() as system:
            ref = await system.spawn(Counter)
            ref.tell("inc")
            print(await ref.ask("get", timeout=1))
    """

    def __init__(
        self,
        name: str = "flockrt",
        *,
        mailbox_capacity: int = 1000,
        throughput: int = 64,
        shutdown_timeout: float = 5.0,
    ) -> None:
        if mailbox_capacity < 1:
            raise ValueError(f"mailbox_capacity must be >= 1, got {mailbox_capacity!r}")
        if throughput < 1:
            raise ValueError(f"throughput must be >= 1, got {throughput!r}")
        self.name = name
        self._mailbox_capacity = mailbox_capacity
        self._throughput = throughput
        self._shutdown_timeout = _check_timeout("shutdown_timeout", shutdown_timeout)
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._ask_deadlines: AskDeadlines = None  # type: ignore[assignment]
        self._asks_entered: list[tuple[Any, ...]] = []  # its `entered`, for ActorRef.ask
        self._guardian: ActorContext[Any] | None = None
        self._registry: dict[str, ActorContext[Any]] = {}
        self._uids = itertools.count(1)
        self._stopping = False
        self._failure: BaseException | None = None
        self._shutdown_task: asyncio.Task[None] | None = None
        # Counters, read by stats() and the metrics layer; plain ints keep the hot path cheap.
        self._live = 0
        self._processed = 0
        self._failures = 0
        self._restarts = 0
        self._dead_letters = 0
        self._mailbox_overflows = 0
        self.failure_log = RepeatedLines()
        """Where the kernel's failure lines go: identical ones within a window (10 s) are
        counted and logged once with their count (see :mod:`flockrt.actors.repeats`)."""
        # Actors per state (indexed like STATE_NAMES), kept by ActorContext._set_state; the
        # guardian is in them too and taken out by stats().
        self._states = [0] * len(STATE_NAMES)
        self.ask_latency: Histogram | None = None
        """When set (the metrics layer does), ask durations are observed here, timeouts and
        failures included: one ask in :attr:`ask_sampling` (the first, the ninth...). None (the
        default) costs the ask path one attribute check."""
        self.ask_sampling = 8
        """Time one ask in this many (1: every ask). Timing costs two clock reads and a bisect,
        about 0.3 us, 13% of the CPU time of 100 concurrent askers; a 1-in-8 sample keeps the
        quantiles at a fraction of that."""
        self._ask_countdown = 1
        self._extensions: dict[type[Any], Any] = {}
        self.failure_listener: Callable[[str, BaseException], None] | None = None
        """Called with an actor's path and error on each failure (the live view sets it); it
        must not raise. None (the default) costs a failure one attribute check."""

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ActorSystem:
        self._ensure_started()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()
        if exc_type is None and self._failure is not None:
            raise self._failure

    def _ensure_started(self) -> ActorContext[Any]:
        guardian = self._guardian
        if guardian is None:
            if self._stopping:
                raise SystemStopped(f"actor system {self.name!r} is stopped")
            self._loop = asyncio.get_running_loop()
            self._ask_deadlines = AskDeadlines(self._loop)
            self._asks_entered = self._ask_deadlines.entered
            guardian = ActorContext._create(self, None, None, 0, _Guardian, (), 1, None)
            guardian._actor = _Guardian()
            guardian._actor._context = guardian
            guardian._set_state(RUNNING)
            self._guardian = guardian
        return guardian

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop every actor, children before parents, top-level actors in reverse spawn order.

        Each actor gets its own shutdown timeout; ``timeout`` bounds the whole shutdown, after
        which whatever is left is cancelled. Safe to call more than once.
        """
        if self._guardian is None:
            self._stopping = True
            return
        if self._shutdown_task is None:
            self._shutdown_task = self._loop.create_task(self._shutdown(_check_timeout("timeout", timeout)))
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self, timeout: float | None) -> None:
        self._stopping = True
        guardian = self._guardian
        assert guardian is not None
        guardian._closed = True
        try:
            async with asyncio.timeout(timeout):
                await guardian._stop_children_in_reverse()
        except TimeoutError:
            log.warning("system %s: shutdown took longer than %g s; cancelling the rest", self.name, timeout)
        guardian._kill("shutdown")
        self.failure_log.flush()  # the counts of the windows still open

    async def wait(self) -> None:
        """Wait until the system has stopped; raise the root failure if that is why it stopped."""
        guardian = self._ensure_started() if not self._stopping else self._guardian
        if guardian is not None:
            await asyncio.shield(guardian._termination())
        if self._shutdown_task is not None:
            await asyncio.shield(self._shutdown_task)
        if self._failure is not None:
            raise self._failure

    @property
    def failure(self) -> BaseException | None:
        """The error that stopped the system, if a top-level supervisor gave up."""
        return self._failure

    def _root_failed(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
            log.critical("system %s: a top-level supervisor failed; stopping: %r", self.name, error)
        if self._shutdown_task is None:
            self._shutdown_task = self._loop.create_task(self._shutdown(None))

    # ------------------------------------------------------------------ actors

    async def spawn(
        self,
        factory: Callable[..., Actor[M]],
        *args: Any,
        name: str | None = None,
        mailbox_capacity: int | None = None,
        shutdown_timeout: float | None = None,
    ) -> ActorRef[M]:
        """Start a top-level actor and return its ref once its ``on_start`` has completed.

        Args:
            factory: An Actor subclass or any callable returning an Actor; called with ``args``
                (use functools.partial for keyword arguments).
            name: Unique among live siblings; makes the actor reachable by :meth:`lookup`.
            mailbox_capacity: Bound of this actor's mailbox (default: the system's).
            shutdown_timeout: Seconds it may take to stop (default: the system's; math.inf
                waits forever; 0 cancels at once).

        Raises:
            ActorNameTaken: a live sibling has this name.
            ActorStartFailed: the factory or ``on_start`` raised.
            SystemStopped: the system is shutting down.
        """
        return await self._spawn(
            self._ensure_started(), factory, args, name, mailbox_capacity, shutdown_timeout
        )

    async def _spawn(
        self,
        parent: ActorContext[Any],
        factory: Callable[..., Actor[M]],
        args: tuple[Any, ...],
        name: str | None,
        mailbox_capacity: int | None,
        shutdown_timeout: float | None,
    ) -> ActorRef[M]:
        if self._stopping:
            raise SystemStopped(f"actor system {self.name!r} is shutting down; cannot spawn")
        if parent._closed:
            raise ActorStopped(parent._ref, "is stopping; it cannot spawn children")
        if mailbox_capacity is None:
            mailbox_capacity = self._mailbox_capacity
        elif mailbox_capacity < 1:
            raise ValueError(f"mailbox_capacity must be >= 1, got {mailbox_capacity!r}")
        timeout = (
            self._shutdown_timeout
            if shutdown_timeout is None
            else _check_timeout("shutdown_timeout", shutdown_timeout)
        )
        cell = ActorContext._create(
            self, parent, name, next(self._uids), factory, args, mailbox_capacity, timeout
        )
        if name is not None:
            if not name or "/" in name or name.startswith("$"):
                raise ValueError(f"invalid actor name {name!r}: non-empty, no '/', not starting with '$'")
            path = cell.path
            if path in self._registry:
                raise ActorNameTaken(path)
            self._registry[path] = cell
        children = parent._children
        if children is None:
            children = parent._children = {}
        children[cell] = None
        self._live += 1
        try:
            await start_instance(cell, None)
        except BaseException as exc:
            # Never started: undo quietly (the parent is told through this exception, not
            # through a child-exit message), stopping any children on_start had spawned.
            self._unregister(cell)
            children.pop(cell, None)
            cell._kill(exc, notify_parent=False)
            if isinstance(exc, Exception):
                raise ActorStartFailed(_path_of(parent, name, cell._uid), exc) from exc
            raise
        return cell._ref

    def register_extension(self, kind: type[E], value: E) -> None:
        """Make ``value`` reachable by every actor of this system as ``extension(kind)``.

        This is how layers above the kernel (the flock, with its directory and task bus) reach
        the actors they serve without the kernel knowing about them.
        """
        if not isinstance(value, kind):
            raise TypeError(f"{value!r} is not a {kind.__name__}")
        self._extensions[kind] = value

    def extension(self, kind: type[E]) -> E | None:
        """The value registered for ``kind``, or None."""
        value: E | None = self._extensions.get(kind)
        return value

    def lookup(self, name: str) -> ActorRef[Any] | None:
        """The live actor with this name (top level) or path (``/sup/worker``), else None."""
        path = name if name.startswith("/") else f"/{name}"
        cell = self._registry.get(path)
        return cell._ref if cell is not None else None

    def _unregister(self, cell: ActorContext[Any]) -> None:
        if cell._name is not None and cell._parent is not None:
            path = cell.path
            if self._registry.get(path) is cell:
                del self._registry[path]

    def _dead_letter(self, cell: ActorContext[Any], message: Any) -> None:
        self._dead_letters += 1
        if dead_letter_log.isEnabledFor(logging.DEBUG):
            dead_letter_log.debug("dead letter to %s: %r", cell.path, message)

    # ------------------------------------------------------------------ introspection

    @property
    def dead_letters(self) -> int:
        """How many messages could not be delivered so far."""
        return self._dead_letters

    def stats(self) -> SystemStats:
        """A snapshot of the system's counters (O(1): nothing walks the tree)."""
        states = list(self._states)
        if self._guardian is not None:
            states[self._guardian._state] -= 1  # the root actor is not one of the user's
        starting, running, suspended, stopping, stopped = states
        deadlines = self._ask_deadlines
        return SystemStats(
            live=self._live,
            processed=self._processed,
            failures=self._failures,
            restarts=self._restarts,
            dead_letters=self._dead_letters,
            mailbox_overflows=self._mailbox_overflows,
            ask_timeouts=deadlines.expired if deadlines is not None else 0,
            starting=starting,
            running=running,
            suspended=suspended,
            stopping=stopping,
            stopped=stopped,
        )

    def snapshot(self) -> dict[str, Any]:
        """The whole tree as JSON-able dicts: name, path, actor class, state, restarts, children.

        Supervisors add their strategy and, per child, its id, restart type and kind.
        """
        guardian = self._guardian
        if guardian is None:
            return {"name": "/", "path": "/", "actor": None, "state": "stopped", "children": []}
        return guardian._snapshot()


def _path_of(parent: ActorContext[Any], name: str | None, uid: int) -> str:
    segment = name if name is not None else f"${uid}"
    prefix = parent.path
    return f"/{segment}" if prefix == "/" else f"{prefix}/{segment}"
