"""ActorRef: the handle through which everything talks to an actor."""

from __future__ import annotations

import asyncio
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from flockrt.actors.messages import ASK, StopReason
from flockrt.errors import ActorStopped, MailboxFull

if TYPE_CHECKING:
    from flockrt.actors.context import ActorContext

__all__ = ["ActorRef"]

M = TypeVar("M")

DEFAULT_ASK_TIMEOUT = 5.0


class ActorRef(Generic[M]):
    """A handle to an actor, valid for its whole life (restarts included).

    Refs come from ``spawn``; they are hashable, compare equal only to themselves and sort by
    path. Every method is meant for the event loop thread of the actor's system.
    """

    __slots__ = ("_cell",)

    _cell: ActorContext[M]

    def __init__(self) -> None:
        raise TypeError("ActorRef is not constructed directly; spawn an actor to get one")

    @classmethod
    def _create(cls, cell: ActorContext[M]) -> ActorRef[M]:
        ref = object.__new__(cls)
        ref._cell = cell
        return ref

    @property
    def name(self) -> str:
        """The actor's name (``$<number>`` when it was spawned without one)."""
        return self._cell.name

    @property
    def path(self) -> str:
        """The actor's path, such as ``/pipeline/worker-1``."""
        return self._cell.path

    @property
    def is_alive(self) -> bool:
        """False once the actor has begun stopping."""
        return not self._cell._closed

    def tell(self, message: M) -> None:
        """Enqueue ``message`` and return at once; never blocks.

        A message to a stopped actor goes to dead letters (counted and logged).

        Raises:
            MailboxFull: the bounded mailbox is full; nothing was enqueued.
        """
        cell = self._cell
        if cell._closed:
            cell._system._dead_letter(cell, message)
            return
        q = cell._mailbox
        if q is None:
            q = cell._mailbox = deque()
        elif len(q) >= cell._capacity:
            cell._system._mailbox_overflows += 1
            raise MailboxFull(self, cell._capacity)
        q.append(message)
        if not cell._scheduled:
            cell._activate()

    async def send(self, message: M) -> None:
        """Enqueue ``message``, waiting while the mailbox is full (backpressure).

        A message to a stopped actor (also one that stops while we wait) goes to dead letters.
        """
        cell = self._cell
        while True:
            if cell._closed:
                cell._system._dead_letter(cell, message)
                return
            q = cell._mailbox
            if q is None:
                q = cell._mailbox = deque()
            if len(q) < cell._capacity:
                q.append(message)
                if not cell._scheduled:
                    cell._activate()
                return
            await cell._wait_for_room()

    async def ask(self, message: M, timeout: float | None = DEFAULT_ASK_TIMEOUT) -> Any:
        """Send ``message`` and wait for the handler's return value.

        Waits for mailbox room if needed (within the same timeout).

        Args:
            message: The message for ``receive``.
            timeout: Seconds to wait for the reply; None waits forever.

        Raises:
            AskTimeout: no reply within ``timeout`` (the message may still be handled later).
            ActorFailed: the handler raised; the cause is attached.
            ActorStopped: the actor is stopped, or stopped before answering.
        """
        cell = self._cell
        if cell._closed:
            raise ActorStopped(self)
        system = cell._system
        future: asyncio.Future[Any] = system._loop.create_future()
        envelope = (ASK, message, future, self, timeout)
        if timeout is not None:
            # (0.0, not 0: a float against a float is the interpreter's fast comparison)
            if not timeout >= 0.0:  # negative or NaN
                raise ValueError(f"ask timeout must be >= 0 seconds or None, got {timeout!r}")
            if cell._is_async:
                # AskDeadlines.enter, inlined: nobody has to take the ask out again.
                entered = system._asks_entered
                if not entered:
                    system._ask_deadlines.sweep_later()
                entered.append(envelope)
            elif cell._taken is None:  # (an int: its mailbox is watched already)
                # A `def receive` answers an ask in the turn that takes it: the sweeps find
                # its unanswered asks in its mailbox.
                system._ask_deadlines.watch(cell)
        latency = system.ask_latency
        if latency is not None:
            # Metrics on: time one ask in ask_sampling; timing them all (two clock reads and a
            # bisect) cost 13% of the CPU time of 100 concurrent askers.
            countdown = system._ask_countdown - 1
            if countdown:
                system._ask_countdown = countdown
            else:
                system._ask_countdown = system.ask_sampling
                started = perf_counter()
                try:
                    return await self._deliver_ask(envelope)
                finally:
                    latency.observe(perf_counter() - started)
        q = cell._mailbox
        if q is None:
            q = cell._mailbox = deque()
        elif len(q) >= cell._capacity:
            return await self._deliver_ask(envelope)
        q.append(envelope)
        if not cell._scheduled:
            cell._activate()
        return await future

    async def _deliver_ask(self, envelope: tuple[Any, ...]) -> Any:
        """An ask's way when it is timed or the mailbox is full: wait for room (within the
        ask's deadline), enqueue, wait for the answer."""
        cell = self._cell
        future: asyncio.Future[Any] = envelope[2]
        if envelope[4] is not None and not cell._is_async:
            # Not in the mailbox while it waits for room: its deadline runs from the lists.
            cell._system._ask_deadlines.enter(envelope)
        try:
            while True:
                q = cell._mailbox
                if q is None:
                    q = cell._mailbox = deque()
                if len(q) < cell._capacity:
                    break
                waiting = asyncio.ensure_future(cell._wait_for_room())
                try:
                    await asyncio.wait((waiting, future), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiting.cancel()
                if future.done():  # timed out while waiting for room
                    return future.result()
                if cell._closed:
                    raise ActorStopped(self)
        except BaseException:
            future.cancel()  # never enqueued: its deadline has nothing more to do
            raise
        q.append(envelope)
        if not cell._scheduled:
            cell._activate()
        return await future

    def stop(self) -> asyncio.Future[StopReason]:
        """Ask the actor to stop gracefully.

        From now on new messages go to dead letters and new asks fail with ActorStopped; the
        messages already queued are still handled, then its children stop (reverse start
        order), then ``on_stop`` runs. Returns a future with the stop reason:
        ``await ref.stop()`` waits until the actor has stopped.
        """
        return self._cell._request_stop("normal")

    def wait_stopped(self) -> asyncio.Future[StopReason]:
        """A future that completes with the stop reason once the actor has ended."""
        return self._cell._termination()

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, ActorRef):
            return NotImplemented
        return (self.path, self._cell._uid) < (other.path, other._cell._uid)

    def __repr__(self) -> str:
        return f"<ActorRef {self.path}>"
