"""Running and measuring: event loops, fresh processes, memory, failure logging."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import resource
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

LOOPS = ("asyncio", "uvloop")


class Probe:
    """Where a restarted actor reports that it is ready (restart-latency workload)."""

    __slots__ = ("at", "ready")

    def __init__(self) -> None:
        self.ready: asyncio.Future[None] | None = None
        self.at = 0.0

    def report(self) -> None:
        self.at = time.perf_counter()
        if self.ready is not None:
            self.ready.set_result(None)


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(loop: str, main: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``main(*args)`` on a fresh event loop of the given kind."""
    gc.collect()  # garbage of the previous measurement is not charged to this one
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(main(*args))  # type: ignore[arg-type]


def isolated(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a fresh interpreter: memory deltas start from a clean heap."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def traced_bytes() -> int:
    return tracemalloc.get_traced_memory()[0]


def memory_probe(method: str) -> Callable[[], int]:
    """``tracemalloc`` (Python allocations, exact) or ``rss`` (what the OS sees)."""
    if method == "tracemalloc":
        tracemalloc.start()
        return traced_bytes
    return rss_bytes


def idle_actor_bytes(impl: str, loop: str, n: int, method: str) -> float:
    """Child-process entry: bytes per idle actor of ``impl`` (flockrt, bare, pykka)."""
    from benchmarks import _bare, _flockrt, _pykka

    measure = memory_probe(method)
    if impl == "pykka":
        return _pykka.idle_actor_bytes(n, measure)
    if impl == "flockrt":
        return run(loop, _flockrt.idle_actor_bytes, n, measure)
    return run(loop, _bare.idle_actor_bytes, n, measure)


def many_actors(loop: str, n: int) -> dict[str, float]:
    """Child-process entry: spawn ``n`` flockrt actors; times and RSS growth."""
    from benchmarks import _flockrt

    return run(loop, _flockrt.many_actors, n, rss_bytes)


@contextlib.contextmanager
def failure_logging(enabled: bool, loggers: tuple[str, ...] = ("flockrt", "benchmarks")) -> Iterator[None]:
    """Actor failures are logged with their traceback (by flockrt, and by the bare baseline).

    Disabled: those loggers are silenced. Enabled: records are formatted and written to
    /dev/null, which costs what a real handler costs without flooding the terminal.
    """
    saved = [(logger, logger.level, logger.propagate) for logger in map(logging.getLogger, loggers)]
    with open(os.devnull, "w") as sink:
        handler = logging.StreamHandler(sink)
        for logger, _, _ in saved:
            logger.propagate = False
            logger.setLevel(logging.ERROR if enabled else logging.CRITICAL + 1)
            logger.addHandler(handler)
        try:
            yield
        finally:
            for logger, level, propagate in saved:
                logger.removeHandler(handler)
                logger.setLevel(level)
                logger.propagate = propagate


# ---------------------------------------------------------------------- NATS bus workloads

TASK_TYPE = "general"
CAPABILITY = "text-analysis"
TEXT = "a flock of agents shares one nats server on loopback"
"""Every task's data and every capability request's parameters: ``{"text": TEXT}``."""


class Flight:
    """The producer's side of a fan-out run: when each task left and when its result came back.

    At most ``window`` tasks are in flight: the producer awaits :meth:`room` before it submits
    more, so that per-task latency measures the system at full load rather than the length of
    a queue of every task of the run. :attr:`done` resolves when the ``n``-th result arrives.
    """

    def __init__(self, n: int, window: int) -> None:
        self.n = n
        self.window = window
        self.sent: dict[str, float] = {}
        self.received: dict[str, float] = {}
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._room = asyncio.Event()

    async def room(self, needed: int = 1) -> None:
        """Wait until ``needed`` more tasks fit in the window."""
        while len(self.sent) + needed - len(self.received) > self.window:
            self._room.clear()
            await self._room.wait()

    def arrived(self, task_id: str) -> None:
        """A result for ``task_id`` reached the producer."""
        self.received[task_id] = time.perf_counter()
        self._room.set()
        if len(self.received) == self.n and not self.done.done():
            self.done.set_result(None)

    def outcome(self) -> dict[str, Any]:
        """Tasks/s from the first submit to the last result, and every task's latency in seconds."""
        assert len(self.received) == self.n == len(self.sent), (len(self.sent), len(self.received))
        first, last = min(self.sent.values()), max(self.received.values())
        latencies = [self.received[task_id] - at for task_id, at in self.sent.items()]
        return {"rate": self.n / (last - first), "latencies": latencies}


async def cpu_per_message(
    flush: Callable[[], Awaitable[Any]], deliver: Callable[[Any], Awaitable[None]], messages: list[Any]
) -> float:
    """Process time per message of ``deliver``ing each of ``messages``, in microseconds (what
    is published meanwhile goes out every 1,000 messages, as nats-py's flusher would)."""
    gc.collect()
    started = time.process_time()
    for i, message in enumerate(messages):
        await deliver(message)
        if i % 1000 == 999:
            await flush()
    await flush()
    return (time.process_time() - started) / len(messages) * 1e6
