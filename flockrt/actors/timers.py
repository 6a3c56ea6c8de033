"""Timers of an actor: ``send_after`` and ``send_periodic`` (see :class:`ActorContext`).

A timer is a ``loop.call_at`` handle that tells its message to the actor. Timers belong to
their actor: they are cancelled when it fails, restarts or stops, and a tick that finds the
mailbox full is dropped (counted as a mailbox overflow, sent to dead letters) rather than
blocking the loop or growing the mailbox past its capacity.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from flockrt.errors import ActorStopped

if TYPE_CHECKING:
    from flockrt.actors.context import ActorContext

__all__ = ["Timer", "cancel_timers", "start_timer"]

log = logging.getLogger("flockrt.actor")


class Timer:
    """A pending ``send_after`` or ``send_periodic``; :meth:`cancel` stops it.

    Timers belong to their actor: they are cancelled when it fails, restarts or stops.
    """

    __slots__ = ("_context", "_handle", "_interval", "_message", "_when")

    def __init__(self, context: ActorContext[Any], message: Any, interval: float | None) -> None:
        self._context = context
        self._message = message
        self._interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self._when = 0.0

    @property
    def active(self) -> bool:
        """True until the timer fired for the last time or was cancelled."""
        return self._handle is not None

    def cancel(self) -> None:
        """Stop the timer; a message it already delivered stays delivered."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            timers = self._context._timers
            if timers is not None:
                timers.discard(self)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._when = when
        self._handle = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        context = self._context
        if self._interval is None:
            self._handle = None
            if context._timers is not None:
                context._timers.discard(self)
        else:
            # Re-arm from the planned time, not from now, so periodic timers do not drift; if
            # the loop fell behind by more than an interval, skip the missed ticks.
            loop = context._system._loop
            when = max(self._when + self._interval, loop.time())
            self._arm(loop, when)
        message = self._message
        if context._closed:
            context._system._dead_letter(context, message)
            return
        q = context._mailbox
        if q is not None and len(q) >= context._capacity:
            context._system._mailbox_overflows += 1
            log.warning("timer message for %s dropped: mailbox full (%d)", context.path, context._capacity)
            context._system._dead_letter(context, message)
            return
        context._enqueue_unbounded(message)


def start_timer(context: ActorContext[Any], delay: float, message: Any, interval: float | None) -> Timer:
    """Tell ``message`` to the actor of ``context`` after ``delay`` seconds, then every
    ``interval`` seconds (None: once).

    Raises:
        ValueError: ``delay`` is negative.
        ActorStopped: the actor is stopping.
    """
    if delay < 0:
        raise ValueError(f"delay must be >= 0, got {delay!r}")
    if context._closed:
        raise ActorStopped(context._ref, "is stopping; no timers can be started")
    timer = Timer(context, message, interval)
    loop = context._system._loop
    timer._arm(loop, loop.time() + delay)
    if context._timers is None:
        context._timers = set()
    context._timers.add(timer)
    return timer


def cancel_timers(context: ActorContext[Any]) -> None:
    """Cancel every timer of the actor of ``context`` (it failed, restarts or stops)."""
    timers, context._timers = context._timers, None
    if timers:
        for timer in timers:
            if timer._handle is not None:
                timer._handle.cancel()
                timer._handle = None
