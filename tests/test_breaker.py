"""The circuit breaker: opens after N consecutive failures, half-opens after the reset timeout."""

from __future__ import annotations

import pytest

from flockrt import BreakerState, CircuitBreaker, CircuitOpen


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_the_threshold_of_consecutive_failures() -> None:
    clock = Clock()
    breaker = CircuitBreaker("gw", failure_threshold=3, reset_timeout=10, clock=clock)
    for _ in range(2):
        breaker.check()
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.check()
    assert breaker.record_failure() is True  # this one opened it
    assert breaker.state is BreakerState.OPEN
    assert breaker.record_failure() is False  # a late failure of a call admitted before: still open
    assert not breaker.allows()
    clock.now += 4
    with pytest.raises(CircuitOpen, match=r"circuit breaker for gw is open; next trial in 6\.0 s") as info:
        breaker.check()
    assert info.value.retry_after == pytest.approx(6)
    assert isinstance(info.value, ConnectionError)


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2, clock=Clock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failures == 1


def test_half_open_admits_one_trial_whose_outcome_decides() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=60, clock=clock)
    breaker.record_failure()
    clock.now += 59.9
    assert breaker.state is BreakerState.OPEN
    clock.now += 0.1
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.check()  # the trial
    with pytest.raises(CircuitOpen):
        breaker.check()  # a second caller while the trial is out
    assert breaker.record_failure() is True  # the trial failed: open for another full period
    assert breaker.state is BreakerState.OPEN
    clock.now += 60
    breaker.check()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    breaker.check()
    breaker.check()


def test_a_released_trial_lets_the_next_caller_try() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1, clock=clock)
    breaker.record_failure()
    clock.now += 1
    assert breaker.check() is True  # the trial
    assert not breaker.allows()
    breaker.release(True)
    assert breaker.allows()
    assert breaker.check() is True


def test_defaults_are_five_failures_and_sixty_seconds() -> None:
    breaker = CircuitBreaker()
    assert (breaker.failure_threshold, breaker.reset_timeout) == (5, 60.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_threshold": 0}, "failure_threshold must be an int >= 1, got 0"),
        ({"failure_threshold": 2.5}, "failure_threshold must be an int >= 1, got 2.5"),
        ({"reset_timeout": 0}, "reset_timeout must be > 0 seconds, got 0"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]


def test_only_the_trial_releases_the_trial() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=1, clock=clock)
    old = breaker.check()  # admitted while closed: not a trial
    assert old is False
    breaker.record_failure()
    breaker.record_failure()  # opens
    clock.now += 1
    assert breaker.check() is True  # the half-open trial
    breaker.release(old)  # the old call is cancelled: no say in the trial
    with pytest.raises(CircuitOpen):
        breaker.check()  # still one trial at a time
