"""Repeated identical failure lines, rate-limited with a count: a crash storm writes a few lines
a window, not one per crash.

The first failure of a kind (the same actor class, exception type and message, say) is logged
as usual, traceback included. The identical ones that follow within :data:`WINDOW` seconds are
counted instead, and when the window ends one line says how many there were, in the words of
the first:

    actor /user/pool/worker-3 failed: RuntimeError('boom') (and 1,234 more like it in the last 10 s)

Nothing is dropped silently: each failure is either logged or in a count that is logged at the
end of its window (or when the actor system shuts down, whichever comes first). The next
failure of that kind after the window is logged in full again. Different kinds never hide each
other; past :data:`MAX_KINDS` kinds at once, new ones are logged without a window.

The kernel's failure lines go through it (an actor's failure, a failed restart), and so do an
agent's failed pieces of work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from typing import Any

__all__ = ["MAX_KINDS", "WINDOW", "RepeatedLines"]

WINDOW = 10.0
"""Seconds during which identical failure lines after the first are counted, not written."""

MAX_KINDS = 1000
"""Kinds of line watched at once; beyond them a new kind is logged every time (memory stays
bounded even when every failure's message is different)."""


class _Kind:
    __slots__ = ("args", "count", "extra", "level", "logger", "message", "timer")

    def __init__(
        self, logger: logging.Logger, level: int, message: str, args: tuple[Any, ...], extra: Any
    ) -> None:
        self.logger = logger
        self.level = level
        self.message = message
        self.args = args
        self.extra = extra
        self.count = 0
        self.timer: asyncio.TimerHandle | None = None


class RepeatedLines:
    """The failure lines of one actor system, each kind logged at most once per window with a
    count of the rest (see the module's docstring).

    Attributes:
        window: Seconds of a window (0 or less: every line is written).
        suppressed: Lines counted instead of written so far (each in a logged count).
    """

    __slots__ = ("_kinds", "max_kinds", "suppressed", "window")

    def __init__(self, window: float = WINDOW, *, max_kinds: int = MAX_KINDS) -> None:
        self.window = window
        self.max_kinds = max_kinds
        self.suppressed = 0
        self._kinds: dict[Hashable, _Kind] = {}

    def log(
        self,
        logger: logging.Logger,
        level: int,
        key: Hashable,
        message: str,
        *args: Any,
        exc_info: BaseException | None = None,
        extra: Any = None,
    ) -> None:
        """Log ``message % args`` unless a line of kind ``key`` was logged within the window:
        then count it, for the line that ends the window."""
        kind = self._kinds.get(key)
        if kind is not None:
            kind.count += 1
            self.suppressed += 1
            return
        logger.log(level, message, *args, exc_info=exc_info, extra=extra, stacklevel=2)  # the caller's line
        if self.window <= 0 or len(self._kinds) >= self.max_kinds:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to end a window on: nothing is held back
            return
        kind = self._kinds[key] = _Kind(logger, level, message, args, extra)
        kind.timer = loop.call_later(self.window, self._end, key)

    def flush(self) -> None:
        """End every window now, logging the counts (the actor system calls it as it stops)."""
        for key in list(self._kinds):
            self._end(key)

    def _end(self, key: Hashable) -> None:
        kind = self._kinds.pop(key, None)
        if kind is None:
            return
        if kind.timer is not None:
            kind.timer.cancel()
        if kind.count:
            kind.logger.log(
                kind.level,
                f"{kind.message} (and %s more like it in the last %g s)",
                *kind.args,
                f"{kind.count:,}",
                self.window,
                extra=kind.extra,
            )
