"""Ask deadlines grouped by millisecond, so an ask costs a dict insert, not a loop timer.

A ``loop.call_later`` per ask (armed, then cancelled when the reply comes) was a third of the
time of 100 concurrent askers. Here every ask whose deadline falls in the same millisecond
shares one slot; answered asks leave their slot at once, so nothing is kept alive until the
deadline. A timeout therefore fires up to one millisecond late, never early.

One loop timer at most is armed, for the earliest slot that still holds an ask: a timer per
slot (one per millisecond under steady asking, each living as long as the timeout) cost more
than the asks it served when asks were few per millisecond. The slots' keys wait in a heap of
ints; a slot that empties before its deadline is dropped when the timer comes by.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from flockrt.errors import AskTimeout

if TYPE_CHECKING:
    from flockrt.actors.ref import ActorRef

__all__ = ["AskDeadlines", "Expiring", "Slot"]


class Expiring(Protocol):
    """What a deadline fails: a future, or anything that ends the same way (the flock's work
    run in its submitter's Task, ``flockrt.agents.here.Here``)."""

    def done(self) -> bool: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


Slot = dict[Expiring, tuple[Any, float]]
"""What has its deadline in one millisecond, with what its error is built from."""

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

    __slots__ = ("_armed", "_error", "_keys", "_loop", "_slots", "_time", "_timer", "expired")

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
        with ``slot.pop(future, None)`` (an actor's mailbox does, for the asks it answers)."""
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
        slot: Slot = {}
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
