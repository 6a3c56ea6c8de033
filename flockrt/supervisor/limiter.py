"""Restart intensity: at most ``max_restarts`` restarts within a sliding ``max_seconds``."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

__all__ = ["RestartLimiter"]


class RestartLimiter:
    """Sliding-window restart counter, as OTP's supervisor intensity/period.

    A restart at time ``t`` still counts at time ``now`` while ``now - t <= max_seconds``.
    Recording a restart that makes the count exceed ``max_restarts`` reports the limit as
    exceeded; the supervisor then gives up.

    Args:
        max_restarts: Restarts allowed within the window (0: the first failure gives up).
        max_seconds: Length of the window.
        clock: Monotonic seconds; injectable so tests control time.
    """

    __slots__ = ("_clock", "_times", "max_restarts", "max_seconds")

    def __init__(
        self, max_restarts: int = 3, max_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts!r}")
        if not max_seconds > 0 or math.isinf(max_seconds):
            raise ValueError(f"max_seconds must be a positive number of seconds, got {max_seconds!r}")
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self._clock = clock
        self._times: deque[float] = deque()

    def record(self) -> bool:
        """Count one restart now. Returns False when that exceeds the intensity."""
        now = self._clock()
        times = self._times
        times.append(now)
        while now - times[0] > self.max_seconds:
            times.popleft()
        return len(times) <= self.max_restarts

    @property
    def recent(self) -> int:
        """Restarts within the window as of the last :meth:`record`."""
        return len(self._times)
