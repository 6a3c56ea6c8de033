"""ActorContext: the runtime side of one actor (its mailbox, scheduling and lifecycle).

One context exists per spawned actor and lives as long as the actor: across restarts the
context, its ref and its mailbox stay, only the :class:`~flockrt.Actor` instance is replaced.
That is why messages queued when an actor fails are handled by the restarted instance.

Scheduling. An idle actor owns no asyncio Task. When its mailbox becomes non-empty it is
*activated*: an actor with a plain ``def receive`` gets a ``loop.call_soon`` turn, one with
``async def receive`` gets a Task that lives until the mailbox is empty. A turn handles at most
``throughput`` messages, then yields to the loop (fairness). System messages (children failing
or ending) are handled before user messages at every turn. The turns are in
:mod:`flockrt.actors.mailbox` (with why an activation lasts one loop turn past an empty mailbox).

States: starting -> running <-> suspended (failed, awaiting its supervisor; or paused for a
restart) -> stopping -> stopped. Messages sent while starting or suspended stay queued.

Stopping is graceful: once a stop is requested the actor is *closed* (new messages go to dead
letters, new asks fail with ActorStopped) but a running actor first handles what its mailbox
already holds, then stops its children, then runs ``on_stop``. A failed actor, or one that
overruns its shutdown timeout and is killed, sends what is left to dead letters instead.

Starting and restarting the instance is in :mod:`flockrt.actors.instance`, timers in
:mod:`flockrt.actors.timers`; both work on the context's fields directly, as this module does.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from flockrt.actors.actor import Actor
from flockrt.actors.mailbox import drain, turn
from flockrt.actors.messages import StopReason, Terminated, _ChildExited, _ChildFailed, is_ask, settle_ask
from flockrt.actors.ref import ActorRef
from flockrt.actors.timers import Timer, cancel_timers, start_timer
from flockrt.errors import ActorFailed, ActorStopped, RestartIntensityExceeded

if TYPE_CHECKING:
    from flockrt.actors.system import ActorSystem

__all__ = ["ActorContext", "Timer"]

M = TypeVar("M")

log = logging.getLogger("flockrt.actor")

STARTING, RUNNING, SUSPENDED, STOPPING, STOPPED = range(5)
STATE_NAMES = ("starting", "running", "suspended", "stopping", "stopped")


class _ActorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every record with the actor's path and exposes it as ``record.actor``."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        actor = self.extra["actor"] if self.extra else "?"
        kwargs.setdefault("extra", {})["actor"] = actor
        return f"[{actor}] {msg}", kwargs


class ActorContext(Generic[M]):
    """The runtime side of one actor, available as ``self.context`` inside the actor.

    It gives the actor its own :attr:`ref`, :meth:`spawn` for children, :meth:`watch` /
    :meth:`unwatch`, timers (:meth:`send_after`, :meth:`send_periodic`), :meth:`stop` and a
    :attr:`log`. Contexts are created by the runtime, never by users.
    """

    __slots__ = (
        "_actor",
        "_args",
        "_capacity",
        "_children",
        "_closed",
        "_done",
        "_factory",
        "_is_async",
        "_mailbox",
        "_name",
        "_parent",
        "_reason",
        "_ref",
        "_restarts",
        "_room_waiters",
        "_running",
        "_scheduled",
        "_shutdown_timeout",
        "_state",
        "_stop_task",
        "_sysq",
        "_system",
        "_taken",
        "_task",
        "_timers",
        "_uid",
        "_watchers",
        "_watching",
    )

    _system: ActorSystem
    _parent: ActorContext[Any] | None
    _name: str | None
    _uid: int
    _factory: Callable[..., Actor[M]]
    _args: tuple[Any, ...]
    _ref: ActorRef[M]
    _capacity: int
    _shutdown_timeout: float | None
    _scheduled: bool
    _state: int
    _running: bool  # _state == RUNNING, for the mailbox drain
    _closed: bool
    _is_async: bool
    _reason: StopReason
    _restarts: int
    _actor: Actor[M] | None
    _mailbox: deque[Any] | None
    _sysq: deque[_ChildFailed | _ChildExited] | None
    _taken: int | None  # messages taken from the mailbox while AskDeadlines watches it, or None
    _children: dict[ActorContext[Any], None] | None
    _watchers: set[ActorContext[Any]] | None
    _watching: set[ActorContext[Any]] | None
    _timers: set[Timer] | None
    _room_waiters: deque[asyncio.Future[None]] | None
    _done: asyncio.Future[StopReason] | None
    _task: asyncio.Task[None] | None
    _stop_task: asyncio.Task[None] | None

    def __init__(self) -> None:
        raise TypeError("ActorContext is created by the runtime; spawn an actor instead")

    @classmethod
    def _create(
        cls,
        system: ActorSystem,
        parent: ActorContext[Any] | None,
        name: str | None,
        uid: int,
        factory: Callable[..., Actor[M]],
        args: tuple[Any, ...],
        capacity: int,
        shutdown_timeout: float | None,
    ) -> ActorContext[M]:
        self = object.__new__(cls)
        self._system = system
        self._parent = parent
        self._name = name
        self._uid = uid
        self._factory = factory
        self._args = args
        self._capacity = capacity
        self._shutdown_timeout = shutdown_timeout
        self._actor = None
        self._is_async = False
        self._mailbox = None
        self._sysq = None
        self._taken = None
        self._scheduled = False
        self._state = STARTING
        self._running = False
        system._states[STARTING] += 1
        self._closed = False
        self._task = None
        self._stop_task = None
        self._children = None
        self._watchers = None
        self._watching = None
        self._timers = None
        self._room_waiters = None
        self._done = None
        self._reason = "normal"
        self._restarts = 0
        self._ref = ActorRef._create(self)
        return self

    # ------------------------------------------------------------------ public API

    @property
    def ref(self) -> ActorRef[M]:
        """This actor's ref."""
        return self._ref

    @property
    def name(self) -> str:
        """The actor's name: the one it was spawned with, or ``$<number>`` if unnamed."""
        if self._name is not None:
            return self._name
        return f"${self._uid}" if self._parent is not None else "/"

    @property
    def path(self) -> str:
        """The actor's path from the root, such as ``/pipeline/worker-1``."""
        parent = self._parent
        if parent is None:
            return "/"
        prefix = parent.path
        return f"{prefix}{self.name}" if prefix == "/" else f"{prefix}/{self.name}"

    @property
    def system(self) -> ActorSystem:
        """The actor system this actor lives in."""
        return self._system

    @property
    def parent(self) -> ActorRef[Any] | None:
        """The parent's ref (None only for the system's root)."""
        return self._parent._ref if self._parent is not None else None

    @property
    def children(self) -> list[ActorRef[Any]]:
        """Refs of the live children, in start order."""
        return [child._ref for child in self._children] if self._children else []

    @property
    def state(self) -> str:
        """One of starting, running, suspended, stopping, stopped."""
        return STATE_NAMES[self._state]

    def runs(self, actor: Actor[Any]) -> bool:
        """Whether ``actor`` is this context's current instance and it is running: started,
        not failed or restarting, not stopping."""
        return self._actor is actor and self._state == RUNNING and not self._closed

    @property
    def restarts(self) -> int:
        """How many times a supervisor restarted this actor."""
        return self._restarts

    @property
    def log(self) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        """A logger whose records carry this actor's path."""
        return _ActorLog(log, {"actor": self.path})

    async def spawn(
        self,
        factory: Callable[..., Actor[Any]],
        *args: Any,
        name: str | None = None,
        mailbox_capacity: int | None = None,
        shutdown_timeout: float | None = None,
    ) -> ActorRef[Any]:
        """Spawn a child of this actor; see :meth:`flockrt.ActorSystem.spawn`.

        Children stop before their parent (in reverse start order). A child of a plain actor
        that fails is stopped; use a :class:`~flockrt.Supervisor` to restart children.
        """
        return await self._system._spawn(self, factory, args, name, mailbox_capacity, shutdown_timeout)

    def watch(self, ref: ActorRef[Any]) -> None:
        """Deliver ``Terminated(ref, reason)`` to this actor when ``ref``'s actor ends.

        Watching an actor that has already ended delivers ``Terminated`` at once.
        """
        target = ref._cell
        if target is self:
            raise ValueError("an actor cannot watch itself")
        if target._state == STOPPED:
            self._enqueue_unbounded(Terminated(target._ref, target._reason))
            return
        if target._watchers is None:
            target._watchers = set()
        target._watchers.add(self)
        if self._watching is None:
            self._watching = set()
        self._watching.add(target)

    def unwatch(self, ref: ActorRef[Any]) -> None:
        """Stop watching ``ref`` (a ``Terminated`` already queued stays queued)."""
        target = ref._cell
        if target._watchers is not None:
            target._watchers.discard(self)
        if self._watching is not None:
            self._watching.discard(target)

    def send_after(self, delay: float, message: M) -> Timer:
        """Tell ``message`` to this actor once, ``delay`` seconds from now."""
        return start_timer(self, delay, message, None)

    def send_periodic(self, interval: float, message: M, *, initial_delay: float | None = None) -> Timer:
        """Tell ``message`` to this actor every ``interval`` seconds until cancelled.

        The first tick comes after ``initial_delay`` (default: ``interval``).
        """
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        return start_timer(self, interval if initial_delay is None else initial_delay, message, interval)

    def stop(self, ref: ActorRef[Any] | None = None) -> asyncio.Future[StopReason]:
        """Stop this actor (or another, such as a child) gracefully; see ActorRef.stop.

        Returns a future with the stop reason (do not await your own stop from a handler:
        the actor stops only after that handler returns)."""
        target = self if ref is None else ref._cell
        return target._request_stop("normal")

    # ------------------------------------------------------------------ delivery

    def _activate(self) -> None:
        self._scheduled = True
        if self._is_async:
            self._task = self._system._loop.create_task(drain(self))
        else:
            self._system._loop.call_soon(turn, self)

    def _enqueue_unbounded(self, message: Any) -> None:
        """Enqueue a runtime message (Terminated, timer ticks are bounded) ignoring capacity."""
        if self._closed:
            self._system._dead_letter(self, message)
            return
        q = self._mailbox
        if q is None:
            q = self._mailbox = deque()
        q.append(message)
        if not self._scheduled:
            self._activate()

    def _post_system(self, message: _ChildFailed | _ChildExited) -> None:
        if self._state == STOPPED:
            return
        q = self._sysq
        if q is None:
            q = self._sysq = deque()
        q.append(message)
        if not self._scheduled:
            self._activate()

    async def _wait_for_room(self) -> None:
        waiters = self._room_waiters
        if waiters is None:
            waiters = self._room_waiters = deque()
        fut: asyncio.Future[None] = self._system._loop.create_future()
        waiters.append(fut)
        try:
            await fut
        finally:
            if not fut.done() or fut.cancelled():
                with contextlib.suppress(ValueError):  # already popped by _wake_senders
                    waiters.remove(fut)

    def _wake_senders(self) -> None:
        waiters = self._room_waiters
        if not waiters:
            return
        q = self._mailbox
        room = self._capacity - (len(q) if q is not None else 0)
        while waiters and room > 0:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                room -= 1

    # ------------------------------------------------------------------ failure and stop

    def _on_failure(self, error: BaseException, envelope: Any) -> None:
        """A handler (or a supervision decision) raised: report, then let the parent decide."""
        system = self._system
        system._failures += 1
        if system.failure_listener is not None:
            system.failure_listener(self.path, error)
        if is_ask(envelope):
            settle_ask(envelope, ActorFailed(self._ref, error))
        if log.isEnabledFor(logging.ERROR):  # identical failures within a window: one line, counted
            kind = (type(self._actor), type(error), str(error))
            system.failure_log.log(
                log, logging.ERROR, kind, "actor %s failed: %r", self.path, error, exc_info=error
            )
        if self._state >= STOPPING:
            return
        if self._closed:  # asked to stop while draining: stop now, with the error as reason
            self._begin_termination(error)
            return
        self._set_state(SUSPENDED)
        cancel_timers(self)
        parent = self._parent
        if parent is None:
            system._root_failed(error)
        elif parent._actor is not None and parent._actor._flockrt_supervises and not parent._closed:
            parent._post_system(_ChildFailed(self, error))
        else:
            self._request_stop(error)

    def _termination(self) -> asyncio.Future[StopReason]:
        done = self._done
        if done is None:
            done = self._done = self._system._loop.create_future()
            if self._state == STOPPED:
                done.set_result(self._reason)
        return done

    def _request_stop(self, reason: StopReason) -> asyncio.Future[StopReason]:
        """Close the actor and stop it once its queue is handled (idempotent).

        A running actor drains its mailbox first; a starting one stops right after on_start;
        a suspended (failed or restarting) one stops at once.
        """
        if not self._closed:
            self._closed = True
            self._reason = reason
            state = self._state
            if not (state == STARTING or (state == RUNNING and (self._mailbox or self._scheduled))):
                self._begin_termination(reason)
        return self._termination()

    def _begin_termination(self, reason: StopReason) -> None:
        """Stop for good: children (reverse order), then on_stop, then finalize."""
        if self._state >= STOPPING:
            return
        self._set_state(STOPPING)
        self._closed = True
        actor = self._actor
        if (
            not self._scheduled
            and not self._children
            and self._task is None
            and (actor is None or actor._flockrt_plain_stop)
        ):
            self._finalize(reason)  # nothing in flight and nothing to clean up
        else:
            self._stop_task = self._system._loop.create_task(self._terminate(reason))

    async def _terminate(self, reason: StopReason) -> None:
        try:
            task = self._task
            if task is not None and task is not asyncio.current_task():
                await asyncio.wait((task,))  # the message in flight completes first
            actor = self._actor
            if actor is not None:
                if self._children:
                    await actor._flockrt_stop_children()
                await self._call_hook(actor.on_stop, "on_stop")
        finally:
            self._stop_task = None
            self._finalize(reason)

    async def _call_hook(self, hook: Callable[[], Awaitable[None] | None], what: str) -> None:
        """Run a lifecycle hook whose failure must not stop the shutdown: log it and go on."""
        try:
            pending = hook()
            if pending is not None and inspect.isawaitable(pending):
                await pending
        except Exception:
            log.exception("actor %s: %s raised", self.path, what)

    async def _stop_and_wait(self, reason: StopReason, timeout: float | None) -> None:
        """Stop this actor and wait up to ``timeout`` (None: forever); then kill it."""
        if self._state == STOPPED:
            return
        if timeout is not None and timeout <= 0:
            self._kill("killed")
            return
        done = self._request_stop(reason)
        if done.done():
            return
        finished, _ = await asyncio.wait((done,), timeout=timeout)
        if not finished:
            log.warning("actor %s did not stop within %g s; cancelling it", self.path, timeout)
            self._kill("killed")

    async def _stop_children_in_reverse(self) -> None:
        children = self._children
        if children:
            for child in reversed(list(children)):
                await child._stop_and_wait("shutdown", child._shutdown_timeout)

    def _kill(self, reason: StopReason, *, notify_parent: bool = True) -> None:
        """Brutal stop: cancel whatever runs for this actor and finalize at once."""
        if self._state == STOPPED:
            return
        self._set_state(STOPPING)
        self._closed = True
        current = asyncio.current_task()
        for task in (self._task, self._stop_task):
            if task is not None and task is not current:
                task.cancel()
        self._finalize(reason, notify_parent=notify_parent)

    def _finalize(self, reason: StopReason, *, notify_parent: bool = True) -> None:
        """The actor is gone: release everything, tell watchers and the parent. Idempotent."""
        if self._state == STOPPED:
            return
        self._set_state(STOPPED)
        self._closed = True
        self._reason = reason
        system = self._system
        if self._parent is not None:
            system._live -= 1
        cancel_timers(self)
        actor = self._actor
        # A supervisor that ended with an error, or any actor that failed because an escalation
        # reached it: its parent (if not a supervisor) fails in turn, up to the root.
        escalated = isinstance(reason, RestartIntensityExceeded) or (
            isinstance(reason, BaseException) and actor is not None and actor._flockrt_supervises
        )
        self._actor = None
        if self._children:
            for child in reversed(list(self._children)):
                child._kill("killed")
        q, self._mailbox = self._mailbox, None
        if q:
            for message in q:
                if is_ask(message):
                    settle_ask(message, ActorStopped(self._ref, "stopped before answering"))
                else:
                    system._dead_letter(self, message)
        waiters, self._room_waiters = self._room_waiters, None
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)  # the sender wakes, sees the actor stopped
        if self._watching:
            for target in self._watching:
                if target._watchers is not None:
                    target._watchers.discard(self)
            self._watching = None
        system._unregister(self)
        watchers, self._watchers = self._watchers, None
        if watchers:
            terminated = Terminated(self._ref, reason)
            for watcher in watchers:
                watcher._enqueue_unbounded(terminated)
        parent = self._parent
        if parent is not None:
            if parent._children is not None:
                parent._children.pop(self, None)
            if notify_parent and not parent._closed:
                parent._post_system(_ChildExited(self, reason, escalated))
        if self._done is not None and not self._done.done():
            self._done.set_result(reason)
        if isinstance(reason, BaseException) or reason == "killed":
            log.info("actor %s stopped: %r", self.path, reason)

    def _set_state(self, state: int) -> None:
        """Change state, keeping the system's actors-by-state counts (read by metrics) exact."""
        states = self._system._states
        states[self._state] -= 1
        states[state] += 1
        self._state = state
        self._running = state == RUNNING

    # ------------------------------------------------------------------ introspection

    def _snapshot(self) -> dict[str, Any]:
        actor = self._actor
        node: dict[str, Any] = {
            "name": self.name,
            "path": self.path,
            "actor": type(actor).__name__ if actor is not None else None,
            "state": STATE_NAMES[self._state],
            "restarts": self._restarts,
            "mailbox": len(self._mailbox) if self._mailbox is not None else 0,
        }
        describe = getattr(actor, "_flockrt_describe", None)
        if describe is not None:
            node.update(describe())
        else:
            node["children"] = [child._snapshot() for child in self._children or ()]
        return node

    def __repr__(self) -> str:
        return f"<ActorContext {self.path} {STATE_NAMES[self._state]}>"
