"""Counts and timings of the work a process's agents do, kept as plain numbers for the
metrics layer to read at scrape time."""

from __future__ import annotations

from collections import Counter

from flockrt.actors.histogram import WORK_BUCKETS, Histogram

__all__ = ["WorkStats"]


class WorkStats:
    """Outcomes and durations of the work this process's agents did, for the metrics layer.

    Keys are ``(kind, key)``: ``("task", task_type)`` or ``("capability", name)``; only skills
    a local agent offers get here, so the set of keys stays as small as the flock's skills.

    Attributes:
        outcomes: Finished work per ``(kind, key, outcome)``; outcome is ``ok``, ``error`` (the
            handler raised), ``timeout`` (a capability request's requester stopped waiting) or
            ``cancelled`` (the requester went away, or a task was cancelled).
        durations: Seconds from submission to outcome (queueing included) per ``(kind, key)``.
    """

    __slots__ = ("bounds", "durations", "outcomes")

    def __init__(self, bounds: tuple[float, ...] = WORK_BUCKETS) -> None:
        self.bounds = bounds
        self.outcomes: Counter[tuple[str, str, str]] = Counter()
        self.durations: dict[tuple[str, str], Histogram] = {}

    def record(self, kind: str, key: str, outcome: str, seconds: float) -> None:
        """Count one finished piece of work."""
        self.outcomes[kind, key, outcome] += 1
        histogram = self.durations.get((kind, key))
        if histogram is None:
            histogram = self.durations[kind, key] = Histogram(self.bounds)
        histogram.observe(seconds)
