"""Histogram: a latency histogram cheap enough for the ask path, read by the metrics layer.

prometheus-client's Histogram takes a lock and walks its buckets on every ``observe`` (about
0.6 us); on the event loop thread nothing else can touch the counts between two statements, so
a list of counts indexed by ``bisect`` does the same work in about a fifth of the time. The
metrics layer turns it into a Prometheus histogram at scrape time; the kernel never imports
prometheus.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left
from collections.abc import Sequence

__all__ = ["ASK_BUCKETS", "WORK_BUCKETS", "Histogram"]

ASK_BUCKETS: tuple[float, ...] = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Seconds; an ask to an idle actor on the same loop takes about 10 us, a timed-out one 5 s."""

WORK_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
"""Seconds; tasks and capability requests range from local text work (under 1 ms) to model
calls (tens of seconds)."""


class Histogram:
    """Counts of observations per bucket, and their sum; for one event loop thread only.

    Args:
        bounds: Upper bounds of the buckets in seconds, increasing; an implicit +Inf bucket
            follows the last.

    Example::

        h = Histogram((0.001, 0.01))
        h.observe(0.005)
        h.cumulative()  # [(0.001, 0), (0.01, 1), (inf, 1)]
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = ASK_BUCKETS) -> None:
        bounds = tuple(float(b) for b in bounds)
        if not bounds or any(b >= c for b, c in itertools.pairwise(bounds)):
            raise ValueError(f"bucket bounds must be non-empty and increasing, got {bounds!r}")
        if math.isinf(bounds[-1]):
            bounds = bounds[:-1]  # +Inf is always there
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        """Observations per bucket (not cumulative); the last is the +Inf bucket."""
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (a bucket holds the values <= its bound, as in Prometheus)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """How many observations so far."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound) per bucket, ending with (inf, count)."""
        total = 0
        out = []
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out
