"""The actor-kernel benchmark suite: flockrt against bare asyncio and Pykka, in one run.

    python -m benchmarks.kernel [--loop asyncio|uvloop] [--quick] [--json PATH]

Each workload is implemented three times, with the same function names, in ``_flockrt``,
``_bare`` (the simplest correct asyncio code: a Queue drained by a Task, futures for asks) and
``_pykka`` (``ThreadingActor``). Rows 1L-3L compare flockrt with the true limit instead,
``_limit`` (the fastest bare actor: a deque drained in ``call_soon`` turns, the handler called,
or its coroutine driven, right there), with a plain and with an ``async def`` handler, the two
taking turns run by run. Every row's note says which baseline its ratio uses.
Rates are the best of ``reps`` runs (noise only slows a run
down); memory is the median of ``reps`` fresh processes; latencies pool the samples of all runs.
Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import _bare, _flockrt, _harness, _limit, _pykka
from benchmarks._table import Row, render, write_json
from flockrt import ActorSystem


@dataclasses.dataclass(frozen=True)
class Sizes:
    tells: int
    asks: int
    askers: int
    asks_per_asker: int
    spawns: int
    idle: int
    crashes: int
    million: int | None
    reps: int
    # Pykka runs one thread per actor and blocks a thread per ask: smaller N, same rates.
    pykka_tells: int
    pykka_asks: int
    pykka_asks_per_asker: int
    pykka_spawns: int
    pykka_idle: int


FULL = Sizes(
    tells=1_000_000,
    asks=100_000,
    askers=100,
    asks_per_asker=2_000,
    spawns=100_000,
    idle=100_000,
    crashes=2_000,
    million=1_000_000,
    reps=3,
    pykka_tells=200_000,
    pykka_asks=20_000,
    pykka_asks_per_asker=100,
    pykka_spawns=1_000,
    pykka_idle=1_000,
)
QUICK = Sizes(
    tells=100_000,
    asks=10_000,
    askers=100,
    asks_per_asker=100,
    spawns=10_000,
    idle=10_000,
    crashes=200,
    million=None,
    reps=1,
    pykka_tells=20_000,
    pykka_asks=2_000,
    pykka_asks_per_asker=20,
    pykka_spawns=200,
    pykka_idle=200,
)


QUEUE_TASK = "bare: Queue + Task"
"""The baseline of rows 1-5: the simplest correct asyncio actor."""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Suite:
    def __init__(self, loop: str, sizes: Sizes) -> None:
        self.loop = loop
        self.sizes = sizes

    # ------------------------------------------------------------------ helpers

    def repeat(self, label: str, fn: Callable[..., Any], *args: Any) -> list[Any]:
        results = []
        for rep in range(1, self.sizes.reps + 1):
            say(f"    {label} ({rep}/{self.sizes.reps})")
            results.append(fn(*args))
        return results

    def on_loop(self, label: str, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """``repeat`` for a coroutine function, each run on a fresh event loop."""
        return self.repeat(label, _harness.run, self.loop, fn, *args)

    def rates(self, name: str, args: tuple[int, ...], pykka_args: tuple[int, ...]) -> tuple[float, ...]:
        """Best rate of the workload ``name`` on flockrt, bare asyncio and Pykka."""
        return (
            max(self.on_loop("flockrt", getattr(_flockrt, name), *args)),
            max(self.on_loop("bare asyncio", getattr(_bare, name), *args)),
            max(self.repeat("pykka", getattr(_pykka, name), *pykka_args)),
        )

    def bytes_per_actor(self, impl: str, n: int, method: str) -> float:
        """Median over fresh processes of the memory growth per idle actor."""
        runs: list[float] = self.repeat(
            f"{impl}, {method}", _harness.isolated, _harness.idle_actor_bytes, impl, self.loop, n, method
        )
        return statistics.median(runs)

    # ------------------------------------------------------------------ workloads

    def tell(self) -> list[Row]:
        """tell throughput to one actor"""
        s = self.sizes
        flockrt, bare, pykka = self.rates("tell_rate", (s.tells,), (s.pykka_tells,))
        note = f"{QUEUE_TASK}; N={s.tells:,} (pykka {s.pykka_tells:,}); send() when the mailbox is full"
        return [Row("1 tell, 1 actor", "msg/s", flockrt, bare, pykka, ">= 1.5M", flockrt >= 1.5e6, note)]

    def ask(self) -> list[Row]:
        """sequential ask rate"""
        s = self.sizes
        flockrt, bare, pykka = self.rates("ask_rate", (s.asks,), (s.pykka_asks,))
        note = f"{QUEUE_TASK}; N={s.asks:,} (pykka {s.pykka_asks:,}); flockrt's default 5 s ask timeout"
        return [Row("2 ask, 1 asker", "ask/s", flockrt, bare, pykka, ">= 70k", flockrt >= 70e3, note)]

    def concurrent_ask(self) -> list[Row]:
        """ask rate with concurrent askers"""
        s = self.sizes
        flockrt, bare, pykka = self.rates(
            "concurrent_ask_rate", (s.askers, s.asks_per_asker), (s.askers, s.pykka_asks_per_asker)
        )
        note = (
            f"{QUEUE_TASK}; {s.askers} tasks x {s.asks_per_asker:,} asks "
            f"(pykka: threads x {s.pykka_asks_per_asker})"
        )
        name = f"3 ask, {s.askers} askers"
        return [Row(name, "ask/s", flockrt, bare, pykka, ">= 300k", flockrt >= 300e3, note)]

    def limit(self) -> list[Row]:
        """tell and ask against the limit: a deque drained in call_soon turns"""
        s = self.sizes
        rows = []
        for name, workload, args, unit in (
            ("1L tell", "tell_rate", (s.tells,), "msg/s"),
            ("2L ask, 1 asker", "ask_rate", (s.asks,), "ask/s"),
            (f"3L ask, {s.askers} askers", "concurrent_ask_rate", (s.askers, s.asks_per_asker), "ask/s"),
        ):
            for handler in ("sync", "async"):
                best = {"flockrt": 0.0, "limit": 0.0}
                for rep in range(1, s.reps + 1):
                    for impl, module in (("flockrt", _flockrt), ("limit", _limit)):
                        say(f"    {impl}, {handler} handler ({rep}/{s.reps})")
                        fn = getattr(module, workload)
                        if impl == "flockrt":
                            rate = _harness.run(self.loop, fn, *args, ActorSystem, handler)
                        else:
                            rate = _harness.run(self.loop, fn, *args, handler)
                        best[impl] = max(best[impl], rate)
                flockrt, bare = best["flockrt"], best["limit"]
                receive = "def receive" if handler == "sync" else "async def receive"
                note = f"bare: deque + call_soon, {handler} handler (the limit); runs alternate"
                rows.append(
                    Row(
                        f"{name}, {receive}",
                        unit,
                        flockrt,
                        bare,
                        None,
                        ">= 0.8x bare",
                        flockrt >= 0.8 * bare,
                        note,
                    )
                )
        return rows

    def spawn(self) -> list[Row]:
        """spawn rate"""
        s = self.sizes
        flockrt, bare, pykka = self.rates("spawn_rate", (s.spawns,), (s.pykka_spawns,))
        note = f"{QUEUE_TASK}, run to its first await; N={s.spawns:,} (pykka {s.pykka_spawns:,})"
        return [Row("4 spawn", "actor/s", flockrt, bare, pykka, ">= 200k", flockrt >= 200e3, note)]

    def idle_memory(self) -> list[Row]:
        """bytes per idle actor (fresh processes)"""
        s = self.sizes
        rows = []
        for method, how in (("tracemalloc", "Python heap only, no thread stacks"), ("rss", "RSS delta / N")):
            flockrt = self.bytes_per_actor("flockrt", s.idle, method)
            bare = self.bytes_per_actor("bare", s.idle, method)
            pykka = self.bytes_per_actor("pykka", s.pykka_idle, method)
            note = f"{QUEUE_TASK}; N={s.idle:,} (pykka {s.pykka_idle:,}); {how}"
            rows.append(
                Row(f"5 idle actor, {method}", "B", flockrt, bare, pykka, "<= 1536", flockrt <= 1536, note)
            )
        return rows

    def million(self) -> list[Row]:
        """one million actors in one process (fresh process)"""
        n = self.sizes.million
        if n is None:
            say("    skipped (--quick)")
            return []
        say(f"    flockrt, {n:,} actors")
        result = _harness.isolated(_harness.many_actors, self.loop, n)
        works = result["live"] == n + 1
        spawn_s, grown = result["spawn_s"], result["rss_bytes"]
        spawn_note = f"{n / spawn_s / 1e3:,.0f}k actors/s; shutdown of all {result['shutdown_s']:.1f} s"
        memory_note = f"RSS delta / N; {grown / 2**20:,.0f} MiB in all"
        return [
            Row(f"6 {n:,} actors: spawn", "s", spawn_s, None, None, "works", works, spawn_note),
            Row(f"6 {n:,} actors: memory", "B", grown / n, None, None, "works", works, memory_note),
        ]

    def restart(self) -> list[Row]:
        """restart latency of a crashed child under a supervisor"""
        n = self.sizes.crashes
        us: dict[tuple[str, bool], list[float]] = {}
        for logged in (False, True):
            with _harness.failure_logging(logged):
                for impl, module in (("flockrt", _flockrt), ("bare", _bare)):
                    label = f"{impl}{', tracebacks logged' if logged else ''}"
                    runs = self.on_loop(label, module.restart_latencies, n)
                    us[impl, logged] = [seconds * 1e6 for run in runs for seconds in run]
        median = {key: statistics.median(samples) for key, samples in us.items()}
        p99 = {key: statistics.quantiles(samples, n=100)[98] for key, samples in us.items()}
        flockrt, bare = median["flockrt", False], median["bare", False]
        crashes = f"bare: a Task restarted by its done-callback; {n:,} crashes x {self.sizes.reps}"
        how_logged = "bare: as above; failure traceback formatted by a logging handler (to /dev/null)"
        return [
            Row("7 restart, median", "us", flockrt, bare, None, "<= 50", flockrt <= 50, crashes),
            Row("7 restart, p99", "us", p99["flockrt", False], p99["bare", False], None, "", None, crashes),
            Row(
                "7 restart, median, logged",
                "us",
                median["flockrt", True],
                median["bare", True],
                None,
                note=how_logged,
            ),
        ]


def describe(loop: str, quick: bool) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loop": loop,
        "quick": quick,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernel", description=__doc__.split("\n")[0])
    parser.add_argument("--loop", choices=_harness.LOOPS, default="asyncio", help="default: asyncio")
    parser.add_argument("--quick", action="store_true", help="small N, one run each: a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    suite = Suite(args.loop, sizes)
    workloads = [
        suite.tell,
        suite.ask,
        suite.concurrent_ask,
        suite.limit,
        suite.spawn,
        suite.idle_memory,
        suite.million,
        suite.restart,
    ]
    info = describe(args.loop, args.quick)
    rows: list[Row] = []
    with _harness.failure_logging(False):  # the crash workload would flood stderr otherwise
        for number, workload in enumerate(workloads, 1):
            say(f"[{number}/{len(workloads)}] {workload.__doc__}")
            rows += workload()

    print(
        f"flockrt kernel benchmarks, {info['date']}: loop={args.loop}, {info['implementation']} "
        f"{info['python']}, {info['cpus']} CPUs{', --quick' if args.quick else ''}"
    )
    print(render(rows))
    if args.json is not None:
        write_json(args.json, info, sizes, rows, say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
