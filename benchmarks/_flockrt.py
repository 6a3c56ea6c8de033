"""The kernel workloads on flockrt, through its public API only."""

from __future__ import annotations

import asyncio
import functools
import gc
import time
from collections.abc import Callable
from typing import Any

from benchmarks._harness import Probe
from flockrt import Actor, ActorSystem, ChildSpec, MailboxFull, Supervisor


class Counter(Actor[Any]):
    """Counts messages; answers with the count."""

    def __init__(self) -> None:
        self.count = 0

    def receive(self, message: Any) -> int:
        self.count += 1
        return self.count


class Echo(Actor[Any]):
    def receive(self, message: Any) -> Any:
        return message


class AsyncCounter(Actor[Any]):
    """Counter with an ``async def receive`` (it never waits)."""

    def __init__(self) -> None:
        self.count = 0

    async def receive(self, message: Any) -> int:
        self.count += 1
        return self.count


class AsyncEcho(Actor[Any]):
    async def receive(self, message: Any) -> Any:
        return message


COUNTERS: dict[str, type[Actor[Any]]] = {"sync": Counter, "async": AsyncCounter}
ECHOES: dict[str, type[Actor[Any]]] = {"sync": Echo, "async": AsyncEcho}
"""The actors of each kind of handler (the limit suite's ``handler`` argument)."""


class Crasher(Actor[Any]):
    """Fails on every message; its restarted instances report to the probe."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    def receive(self, message: Any) -> None:
        raise RuntimeError("crash requested")

    def on_restart(self, error: BaseException) -> None:
        self.probe.report()


async def tell_rate(n: int, system_class: type[ActorSystem] = ActorSystem, handler: str = "sync") -> float:
    """Tell ``n`` messages to one actor (``send`` when the mailbox is full); msgs/s until
    all are handled, which the final ask confirms.

    ``system_class`` (here and below) lets the metrics suite run the same workload on an
    instrumented system."""
    async with system_class() as system:
        ref = await system.spawn(COUNTERS[handler])
        start = time.perf_counter()
        for i in range(n):
            try:
                ref.tell(i)
            except MailboxFull:
                await ref.send(i)
        count = await ref.ask(None)
        elapsed = time.perf_counter() - start
    assert count == n + 1, count
    return n / elapsed


async def ask_rate(n: int, system_class: type[ActorSystem] = ActorSystem, handler: str = "sync") -> float:
    async with system_class() as system:
        ref = await system.spawn(ECHOES[handler])
        start = time.perf_counter()
        for i in range(n):
            await ref.ask(i)
        return n / (time.perf_counter() - start)


async def concurrent_ask_rate(
    askers: int, per_asker: int, system_class: type[ActorSystem] = ActorSystem, handler: str = "sync"
) -> float:
    async with system_class() as system:
        ref = await system.spawn(ECHOES[handler])

        async def asker() -> None:
            for i in range(per_asker):
                await ref.ask(i)

        start = time.perf_counter()
        await asyncio.gather(*(asker() for _ in range(askers)))
        return askers * per_asker / (time.perf_counter() - start)


async def spawn_rate(n: int, system_class: type[ActorSystem] = ActorSystem) -> float:
    async with system_class() as system:
        start = time.perf_counter()
        for _ in range(n):
            await system.spawn(Echo)
        return n / (time.perf_counter() - start)


async def idle_actor_bytes(n: int, measure: Callable[[], int]) -> float:
    async with ActorSystem() as system:
        await system.spawn(Echo)  # the first spawn pays for the root actor
        gc.collect()
        before = measure()
        for _ in range(n):
            await system.spawn(Echo)  # the system holds the actors; we keep no refs
        gc.collect()
        return (measure() - before) / n


async def many_actors(n: int, measure: Callable[[], int]) -> dict[str, float]:
    """Spawn ``n`` idle actors, then shut them all down."""
    system = ActorSystem()
    await system.spawn(Echo)
    gc.collect()
    before = measure()
    start = time.perf_counter()
    for _ in range(n):
        await system.spawn(Echo)
    spawned = time.perf_counter()
    live = system.stats().live
    gc.collect()
    grown = measure() - before
    stopping = time.perf_counter()
    await system.shutdown()
    return {
        "n": n,
        "live": live,
        "spawn_s": spawned - start,
        "rss_bytes": grown,
        "shutdown_s": time.perf_counter() - stopping,
    }


async def restart_latencies(
    n: int, warmup: int = 100, system_class: type[ActorSystem] = ActorSystem
) -> list[float]:
    """Seconds from telling the crashing message to the restarted instance being ready."""
    probe = Probe()
    spec = ChildSpec(id="crasher", factory=Crasher, args=(probe,))
    supervisor = functools.partial(Supervisor, [spec], max_restarts=10**9, max_seconds=1.0)
    loop = asyncio.get_running_loop()
    latencies = []
    async with system_class() as system:
        await system.spawn(supervisor, name="sup")
        ref = system.lookup("/sup/crasher")
        assert ref is not None
        for i in range(warmup + n):
            probe.ready = loop.create_future()
            start = time.perf_counter()
            ref.tell("crash")
            await probe.ready
            if i >= warmup:
                latencies.append(probe.at - start)
        assert system.stats().restarts == warmup + n
    return latencies
