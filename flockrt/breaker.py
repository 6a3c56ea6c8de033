"""A circuit breaker: stop calling a service that keeps failing, and try it again later.

States (the classic three):

- **closed**: calls go through; ``failure_threshold`` consecutive failures open the breaker.
- **open**: calls fail fast with :class:`~flockrt.errors.CircuitOpen` for ``reset_timeout``
  seconds, so callers neither wait on a dead service nor pile load on a struggling one.
- **half-open**: after ``reset_timeout``, one trial call is let through at a time; its success
  closes the breaker, its failure opens it again for another ``reset_timeout``.

The breaker knows nothing of what it guards; the caller says what counts as a failure (a lost
connection does, a business error from a healthy service does not). Time comes from an
injectable clock, so tests can move it without sleeping.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from flockrt.errors import CircuitOpen

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(enum.StrEnum):
    """Where a :class:`CircuitBreaker` stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive failures of a service and fails calls fast while it is considered down.

    Use :meth:`check` before a call (it raises while open, and admits one trial while
    half-open), then :meth:`record_success` or :meth:`record_failure` after it. A trial admitted
    by :meth:`check` must be followed by one of them, or the breaker stays half-open and
    refuses further trials (use :meth:`release` when the call was abandoned for a reason that
    says nothing about the service).

    Args:
        name: What the breaker guards, for error messages.
        failure_threshold: Consecutive failures that open the breaker (>= 1).
        reset_timeout: Seconds the breaker stays open before a trial call (> 0).
        clock: Monotonic seconds; ``time.monotonic`` unless a test injects its own.
    """

    def __init__(
        self,
        name: str = "service",
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(failure_threshold, int) or failure_threshold < 1:
            raise ValueError(f"failure_threshold must be an int >= 1, got {failure_threshold!r}")
        if not reset_timeout > 0:
            raise ValueError(f"reset_timeout must be > 0 seconds, got {reset_timeout!r}")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False  # a half-open trial call is in flight

    @property
    def state(self) -> BreakerState:
        """closed, open, or half-open (open and ``reset_timeout`` has passed)."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.reset_timeout:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def failures(self) -> int:
        """Consecutive failures recorded since the last success."""
        return self._failures

    def allows(self) -> bool:
        """Whether :meth:`check` would let a call through now (without admitting a trial)."""
        state = self.state
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self._trial)

    def check(self) -> bool:
        """Let a call through, or raise.

        While half-open, the first caller is admitted as the trial; others are refused until
        the trial's outcome is recorded.

        Returns:
            Whether this call is the half-open trial: pass it to :meth:`release` if the call
            ends without a verdict.

        Raises:
            CircuitOpen: the breaker is open (or half-open with a trial already in flight).
        """
        state = self.state
        if state is BreakerState.CLOSED:
            return False
        if state is BreakerState.HALF_OPEN and not self._trial:
            self._trial = True
            return True
        assert self._opened_at is not None
        raise CircuitOpen(self.name, self._opened_at + self.reset_timeout - self._clock())

    def record_success(self) -> None:
        """The service answered: close the breaker and forget past failures."""
        self._failures = 0
        self._opened_at = None
        self._trial = False

    def record_failure(self) -> bool:
        """The service failed: count it; open the breaker at the threshold (or on a failed trial).

        Returns:
            True when this failure opened the breaker (to log or count it once).
        """
        self._failures += 1
        opens = self._trial or self._failures >= self.failure_threshold
        newly = opens and (self._trial or self._opened_at is None)
        if opens:
            self._opened_at = self._clock()
        self._trial = False
        return newly

    def release(self, trial: bool) -> None:
        """A call ended without a verdict (it was cancelled, say); ``trial`` is what
        :meth:`check` returned for it. Only the trial's own release lets another trial through:
        a call admitted while the breaker was closed has no say in the trial."""
        if trial:
            self._trial = False

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name} {self.state} failures={self._failures}>"
