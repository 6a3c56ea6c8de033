"""Ask deadlines grouped by millisecond, so an ask costs a list append, not a loop timer.

A ``loop.call_later`` per ask (armed, then cancelled when the reply comes) was a third of the
time of 100 concurrent askers. Here deadlines wait in *slots*, one per millisecond in which a
deadline falls, and one loop timer at most is armed, for the earliest slot that still holds
something: a timer per slot (one per millisecond under steady asking, each living as long as
the timeout) cost more than the asks it served when asks were few per millisecond. The slots'
keys wait in a heap of ints; a slot that empties before its deadline is dropped when the timer
comes by.

An actor's ask does not even enter a slot at first (:meth:`AskDeadlines.enter`): its envelope
is appended to a list that a *sweep* goes through every :data:`SWEEP` seconds while asks wait.
A clock read, a slot's dict insert and its removal per ask were 4.0k of the 5.8k instructions
an ask cost more than the bare limit's with 100 askers; almost every ask is answered within a
sweep or two, and the sweeps drop it then. What is still unanswered at the first sweep after
its ask is timed from that sweep; what is still unanswered at the second goes into the slot of
its deadline and leaves it when done (the slot is its future's done callback), so an answered
ask is released within about two sweeps, never kept until its deadline. A deadline is therefore
never early and at most about 2 ms late: up to :data:`SWEEP` from the ask to the first sweep
and up to 1 ms from the slot's rounding, more only when the loop itself is late (a callback that
blocks it delays every timer). What its settler removes itself (:meth:`~AskDeadlines.hold`,
:meth:`~AskDeadlines.add`) enters its slot at once, from its own clock read: at most 1 ms late.

An ask to an actor with a plain ``def receive`` is not even appended (:meth:`AskDeadlines.watch`):
such an actor answers an ask in the same turn that takes it from the mailbox, so an unanswered
ask of its is always in its mailbox, and the mailbox is first in, first out. The sweep then needs
no list of the asks, only two counts per *watched* actor: how many messages its turns took
(``ActorContext._taken``, added once per turn) and how many its mailbox had held when the last
sweep came. The messages still queued that the last sweep saw are the ones that waited a sweep
or more: the asks among them go into the slot of their deadline, timed from that sweep, exactly
as :attr:`AskDeadlines.entered`'s do at their second sweep; the rest waits for the next sweep.
So the same bounds hold (never early, at most about 2 ms late), the ask's cost is a look at
``_is_async`` and ``_taken``, and an answered ask is garbage at once instead of at the next
sweep. A watched actor whose mailbox is empty at a sweep, or holds nothing the sweeps have not
dealt with, is no longer watched (its next ask watches it again; a stuck actor does not keep
the sweeps going); one that begins to run an ``async def receive`` (its drain Task can wait with
an ask taken out of the mailbox) hands its queued asks over to the lists
(:meth:`AskDeadlines.unwatch`).
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Callable
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol

from flockrt.actors.messages import ASK
from flockrt.errors import AskTimeout

if TYPE_CHECKING:
    from flockrt.actors.context import ActorContext
    from flockrt.actors.ref import ActorRef

__all__ = ["SWEEP", "AskDeadlines", "Expiring", "Slot"]

SWEEP = 0.001
"""Seconds from an ask's :meth:`AskDeadlines.enter` to the sweep that puts it, if still
unanswered, into a deadline slot (the sweep serves every ask made in between)."""


class Expiring(Protocol):
    """What a deadline fails: a future, or anything that ends the same way (the flock's work
    run in its submitter's Task, ``flockrt.agents.here.Here``)."""

    def done(self) -> bool: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class Slot(dict[Expiring, tuple[Any, float]]):
    """What has its deadline in one millisecond, with what its error is built from.

    Calling a slot with what it holds removes that: a slot is the done callback of the futures
    a sweep put there."""

    __slots__ = ()

    def __call__(self, done: Expiring, /) -> None:
        self.pop(done, None)


_NEVER = math.inf


def _ask_timeout(ref: Any, timeout: float) -> BaseException:
    return AskTimeout(ref, timeout)


class AskDeadlines:
    """Expires ask futures with AskTimeout; one per actor system.

    Args:
        loop: The loop whose clock and timers it uses.
        error: Builds the exception an expired future gets from what :meth:`add` was given
            (default: ``AskTimeout(ref, timeout)``; the flock's capability requests use one
            for WorkTimeout).
    """

    __slots__ = (
        "_armed",
        "_cells",
        "_error",
        "_keys",
        "_loop",
        "_slots",
        "_sweep_armed",
        "_time",
        "_timer",
        "_waiting",
        "_waiting_since",
        "entered",
        "expired",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, error: Callable[[Any, float], BaseException] = _ask_timeout
    ) -> None:
        self._loop = loop
        # asyncio's own loops tell time.monotonic(): read it without their method's frame.
        self._time = time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        self._error = error
        self._slots: dict[int, Slot] = {}
        self._keys: list[int] = []  # a heap of the keys of _slots
        self._timer: asyncio.TimerHandle | None = None
        self._armed: float = _NEVER  # the key the timer is armed for
        self.expired = 0
        """Futures failed so far."""
        self.entered: list[tuple[Any, ...]] = []
        """The asks' envelopes entered since the last sweep (see :meth:`enter`)."""
        self._waiting: list[tuple[Any, ...]] = []  # unanswered at the last sweep...
        self._waiting_since = 0.0  # ...which came at this time
        self._sweep_armed = False
        # The watched actors: [taken + queued when it was first watched or at the sweep before
        # the last (what lies below was put into slots or was never watched), taken + queued at
        # the last sweep]; counted in messages taken from its mailbox since it was watched.
        self._cells: dict[ActorContext[Any], list[int]] = {}

    def enter(self, envelope: tuple[Any, ...]) -> None:
        """Give an actor's ask its deadline: ``envelope`` is ``(ASK, message, future, ref,
        timeout)`` (:data:`flockrt.actors.messages.ASK`). Nobody needs to remove it: the sweeps
        drop it once the future is done, and a future that waits longer leaves its slot itself
        when done. The hot path (``ActorRef.ask``) inlines this method: it appends to
        :attr:`entered` and calls :meth:`sweep_later` when the list was empty."""
        entered = self.entered
        if not entered:
            self.sweep_later()
        entered.append(envelope)

    def watch(self, cell: ActorContext[Any]) -> None:
        """Give the asks to ``cell`` (an actor with a plain ``def receive``, whose next ask is
        about to be appended to its mailbox) their deadlines from the sweeps' look at its
        mailbox, until a sweep finds the mailbox empty; see the module's docstring.
        ``ActorRef.ask`` calls this when ``cell._taken`` is None, and the mailbox's turns add
        what they take to ``cell._taken`` while it is not."""
        q = cell._mailbox
        queued = len(q) if q is not None else 0  # queued before the watch: not this one's
        cell._taken = 0
        self._cells[cell] = [queued, queued]
        if not self._sweep_armed:
            self.sweep_later()

    def unwatch(self, cell: ActorContext[Any]) -> None:
        """``cell`` begins to run an ``async def receive``: the asks in its mailbox get their
        deadlines from the lists from now on, with the same bounds (those the last sweep saw
        are timed from it, the others from the next sweep)."""
        taken, cell._taken = cell._taken, None
        marks = self._cells.pop(cell, None)
        q = cell._mailbox
        if marks is None or taken is None or not q:
            return
        seen = marks[1] - taken  # the queued messages the last sweep saw
        start = max(marks[0] - taken, 0)  # before it: put into slots already
        for index, envelope in enumerate(islice(q, start, None), start):
            if type(envelope) is tuple and envelope and envelope[0] is ASK and envelope[4] is not None:
                (self._waiting if index < seen else self.entered).append(envelope)
        if self._waiting or self.entered:
            self.sweep_later()

    def sweep_later(self) -> None:
        """Arm the sweep, :data:`SWEEP` seconds from now, unless it is armed."""
        if not self._sweep_armed:
            self._sweep_armed = True
            self._loop.call_later(SWEEP, self._sweep)

    def _sweep(self) -> None:
        """Every :data:`SWEEP` seconds while asks wait: the asks entered since the last sweep
        that are still unanswered wait one more sweep, timed from now; those still unanswered
        after it (they waited a millisecond or more) go into the slot of their deadline.

        Two sweeps, not one: with 100 askers a round of asks takes about 0.4 ms, so two in five
        asks are still unanswered at the first sweep, and a slot's insert and done callback
        cost more than the ask. Almost none is still unanswered at the second."""
        waiting, since = self._waiting, self._waiting_since
        now = self._time()
        try:
            if waiting:
                slots = self._slots
                for envelope in waiting:
                    future = envelope[2]
                    if not future.done():
                        timeout = envelope[4]
                        deadline = (since + timeout) * 1000.0
                        if deadline == _NEVER:  # an infinite timeout: it waits as without one
                            continue
                        key = math.ceil(deadline)
                        slot = slots.get(key)
                        if slot is None:
                            slot = self._open(key)
                        slot[future] = (envelope[3], timeout)
                        future.add_done_callback(slot)
                waiting.clear()
            entered = self.entered
            for envelope in entered:
                if not envelope[2].done():
                    waiting.append(envelope)
            entered.clear()
            if self._cells:
                self._sweep_cells(since)
        finally:
            self._waiting_since = now
            if waiting or self.entered or self._cells:  # (else: an error stopped the loop)
                self._loop.call_later(SWEEP, self._sweep)
            else:
                self._sweep_armed = False

    def _sweep_cells(self, since: float) -> None:
        """The watched actors' part of a sweep: the queued asks the last sweep (at ``since``)
        saw go into the slot of their deadline, timed from it."""
        cells = self._cells
        for cell in list(cells):
            q, taken = cell._mailbox, cell._taken
            if not q or taken is None:  # nothing queued: no unanswered ask
                del cells[cell]
                cell._taken = None
                continue
            marks = cells[cell]
            start, seen = max(marks[0], taken), marks[1]
            if start < seen:
                for envelope in islice(q, start - taken, seen - taken):
                    if (
                        type(envelope) is tuple
                        and envelope
                        and envelope[0] is ASK
                        and envelope[4] is not None
                        and not envelope[2].done()
                    ):
                        self._slot(envelope, since)
            marks[0] = max(seen, taken)
            marks[1] = taken + len(q)
            if marks[0] >= marks[1]:  # nothing came since the last sweep: all queued are slotted
                del cells[cell]
                cell._taken = None

    def _slot(self, envelope: tuple[Any, ...], since: float) -> None:
        """An ask unanswered since the sweep at ``since`` (or longer) waits in the slot of its
        deadline, counted from that sweep, and leaves it when done."""
        future = envelope[2]
        timeout = envelope[4]
        deadline = (since + timeout) * 1000.0
        if deadline == _NEVER:  # an infinite timeout: it waits as without one
            return
        key = math.ceil(deadline)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._open(key)
        slot[future] = (envelope[3], timeout)
        future.add_done_callback(slot)

    def add(self, future: asyncio.Future[Any], ref: ActorRef[Any] | Any, timeout: float) -> int:
        """Fail ``future`` (with AskTimeout, or the ``error`` given) after ``timeout`` s unless
        it is done; returns a key for :meth:`discard`."""
        key = math.ceil((self._time() + timeout) * 1000.0)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._open(key)
        slot[future] = (ref, timeout)
        return key

    def hold(self, future: Expiring, ref: ActorRef[Any] | Any, timeout: float) -> Slot:
        """As :meth:`add`, returning the slot itself: whoever settles ``future`` removes it
        with ``slot.pop(future, None)`` (the flock's work run in its submitter's Task does)."""
        key = math.ceil((self._time() + timeout) * 1000.0)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._open(key)
        slot[future] = (ref, timeout)
        return slot

    def discard(self, key: int, future: asyncio.Future[Any]) -> None:
        """The ask is over (answered, failed or cancelled): forget its deadline."""
        slot = self._slots.get(key)
        if slot is not None:
            slot.pop(future, None)

    def _open(self, key: int) -> Slot:
        slot = Slot()
        self._slots[key] = slot
        heapq.heappush(self._keys, key)
        if key < self._armed:  # the earliest deadline now: the timer comes for it
            if self._timer is not None:
                self._timer.cancel()
            self._arm(key)
        return slot

    def _arm(self, key: int) -> None:
        self._armed = key
        self._timer = self._loop.call_at(key / 1000.0, self._expire)

    def _expire(self) -> None:
        """The timer: fail what is due, drop the empty slots up to the next non-empty one and
        arm for it."""
        due = max(self._armed, self._time() * 1000.0)  # the loop fired it: its key is due
        self._timer = None
        self._armed = _NEVER
        keys, slots = self._keys, self._slots
        try:
            while keys:
                key = keys[0]
                slot = slots[key]
                if key <= due:
                    heapq.heappop(keys)
                    del slots[key]
                    for future, (ref, timeout) in slot.items():
                        if not future.done():
                            self.expired += 1
                            future.set_exception(self._error(ref, timeout))
                elif not slot:
                    heapq.heappop(keys)  # every ask in it was settled (a new one opens it again)
                    del slots[key]
                else:
                    break
        finally:  # (even if an error could not be built: the other deadlines still come)
            if keys and self._timer is None:
                self._arm(keys[0])
