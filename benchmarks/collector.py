"""What the garbage collector costs on two of issue 15's paths: the figures docs/benchmarks.md
quotes "with the collector off".

    python -m benchmarks.collector [--rounds N]

- ``submit``: CPU per task of 10,000 ``submit(wait=True)`` at once in one process (each
  awaiting a 50 ms model call, as ``benchmarks.agents`` row 1), beside the same coroutines
  under bare ``asyncio.gather``, with the collector on and off (least of the rounds).
- ``floor``: the same 10,000 through the least a submit with flockrt's documented guarantees
  can be (``benchmarks/_floor.py``: its own context per handler, a correlation id per task,
  a TaskMessage and a TaskResult; no agent choice, hooks or counts): its rate against bare
  asyncio beside flockrt's (as ``benchmarks.agents`` measures it: the best round), with the
  collector on and off, the objects the collector tracks per task in flight, and the
  collections of one run of each.
- ``ask``: 100 concurrent askers of one actor (kernel row 3L, ``def receive``) with the default
  ask timeout and with ``timeout=None``, against the deque + call_soon limit, with the
  collector on and off (best of the rounds): what an ask's deadline costs, and how much of
  that is collections.

Each figure is of one process, implementations taking turns; the machine's noise moves them,
so read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable, Coroutine
from typing import Any

from benchmarks import _agents, _floor, _limit
from benchmarks._flockrt import ECHOES
from flockrt.actors.system import ActorSystem

ASKERS, PER_ASKER, TASKS = 100, 2_000, 10_000


async def _askers(timeout: str) -> float:
    async with ActorSystem() as system:
        ref = await system.spawn(ECHOES["sync"])

        async def asker() -> None:
            if timeout == "default":
                for i in range(PER_ASKER):
                    await ref.ask(i)
            else:
                for i in range(PER_ASKER):
                    await ref.ask(i, timeout=None)

        started = time.perf_counter()
        await asyncio.gather(*(asker() for _ in range(ASKERS)))
        return ASKERS * PER_ASKER / (time.perf_counter() - started)


def _cpu_per_task(run: Callable[[int, bool], Coroutine[Any, Any, Any]]) -> float:
    started = time.process_time()
    asyncio.run(run(TASKS, False))
    return (time.process_time() - started) / TASKS * 1e6


def _with_collector(on: bool, fn: Callable[[], float]) -> float:
    (gc.enable if on else gc.disable)()
    gc.collect()
    try:
        return fn()
    finally:
        gc.enable()


def _best(on: bool, rounds: int, runs: dict[str, Callable[[], float]], pick: Any) -> dict[str, float]:
    """Each of ``runs`` ``rounds`` times, taking turns, the collector ``on`` or off: the best
    figure of each (``pick``: min or max)."""
    results: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(rounds):
        for label, fn in runs.items():
            results[label].append(_with_collector(on, fn))
    return {label: pick(figures) for label, figures in results.items()}


def _rate(run: Callable[[int, bool], Coroutine[Any, Any, dict[str, Any]]]) -> float:
    outcome = asyncio.run(run(TASKS, False))
    return float(TASKS / outcome["wall"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    rounds = parser.parse_args().rounds
    submits: dict[str, Callable[[], float]] = {
        "flockrt": lambda: _cpu_per_task(_agents.local_submit),
        "bare": lambda: _cpu_per_task(_agents.bare_asyncio),
    }
    rates: dict[str, Callable[[], float]] = {
        "flockrt": lambda: _rate(_agents.local_submit),
        "floor": lambda: _rate(_floor.floor_submit),
        "bare": lambda: _rate(_agents.bare_asyncio),
    }
    tracked = {
        implementation: asyncio.run(_floor.tracked_per_task(TASKS, implementation))
        for implementation in ("bare", "floor", "flockrt")
    }
    print(
        "objects the collector tracks per submit in flight (gc.get_objects() at the peak, "
        f"{TASKS:,} at once): bare {tracked['bare']:.1f}, floor {tracked['floor']:.1f}, "
        f"flockrt {tracked['flockrt']:.1f}"
    )
    collections = {
        label: "/".join(str(n) for n in asyncio.run(run(TASKS, False))["gc"])
        for label, run in (
            ("bare", _agents.bare_asyncio),
            ("floor", _floor.floor_submit),
            ("flockrt", _agents.local_submit),
        )
    }
    print(
        "collections of generations 0/1/2 in one run, collector on: "
        + ", ".join(f"{label} {counts}" for label, counts in collections.items())
    )
    asks: dict[str, Callable[[], float]] = {
        "limit": lambda: asyncio.run(_limit.concurrent_ask_rate(ASKERS, PER_ASKER, "sync")),
        "default": lambda: asyncio.run(_askers("default")),
        "none": lambda: asyncio.run(_askers("none")),
    }
    for on in (True, False):
        label = "collector on " if on else "collector off"
        cpu = _best(on, rounds, submits, min)
        print(
            f"submit, {label}: {cpu['flockrt']:.1f} us of CPU per task against bare asyncio's "
            f"{cpu['bare']:.1f} ({cpu['flockrt'] / cpu['bare']:.2f}x; set-up included)"
        )
        best = _best(on, rounds, rates, max)
        print(
            f"submit rate, {label}: flockrt {best['flockrt'] / best['bare']:.2f}x bare asyncio, "
            f"the floor {best['floor'] / best['bare']:.2f}x ({best['bare'] / 1000:.1f}k tasks/s bare)"
        )
        rate = _best(on, rounds, asks, max)
        print(
            f"100 askers, {label}: default timeout {rate['default'] / rate['limit']:.2f}x the limit, "
            f"timeout=None {rate['none'] / rate['limit']:.2f}x ({rate['limit'] / 1000:.0f}k asks/s)"
        )


if __name__ == "__main__":
    main()
