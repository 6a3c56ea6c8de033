"""The I/O-bound agents suite: many tasks at once, each awaiting a 50 ms model call.

    python -m benchmarks.agents [--loop asyncio|uvloop] [--quick] [--json PATH]

What AI agents do most is wait for a model. Here ``n`` tasks (1,000 and 10,000) each await a
simulated model call (``asyncio.sleep(0.05)``) at once, through the API a user calls
(``flock.submit(..., wait=True)`` and ``flock.request_capability``), in one process
(LocalFlock) and over NATS (NatsFlock nodes on a nats-server this suite starts), beside the
same coroutines on bare asyncio (``asyncio.gather``) and behind a bare nats-py queue-group
worker (request/reply). The implementations take turns round by round; each figure is of
the round with the best rate (CPU: the least), and memory comes from one more round per
implementation under ``tracemalloc`` (see ``benchmarks/_agents.py``).

Rows per workload: tasks/s; overhead per task (wall time minus the 50 ms, divided by ``n``);
CPU per task; Python heap per in-flight task; full (generation 2) garbage collections, with
all collections and the share of the run they took in the note. Progress goes to stderr, the
table to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from benchmarks import _agents, _harness
from benchmarks._table import Row, render, write_json
from benchmarks.bus import embedded_nats, nats_server_version
from benchmarks.kernel import describe, say


@dataclasses.dataclass(frozen=True)
class Sizes:
    concurrency: tuple[int, ...]
    reps: int


FULL = Sizes(concurrency=(1_000, 10_000), reps=3)
QUICK = Sizes(concurrency=(200,), reps=1)

TARGETS: dict[tuple[str, int], tuple[float, float | None]] = {
    # (where, n): (rate ratio to bare, bytes per in-flight task)
    ("in process", 10_000): (0.7, 2560.0),
    ("over NATS", 10_000): (0.85, None),
}
"""The targets of issue 15, by workload."""


def interleaved(loop: str, reps: int, runs: dict[str, tuple[Any, tuple[Any, ...]]]) -> dict[str, list[Any]]:
    """Each of ``runs`` ``reps`` times, taking turns, each on a fresh event loop."""
    results: dict[str, list[Any]] = {label: [] for label in runs}
    for rep in range(1, reps + 1):
        for label, (fn, args) in runs.items():
            say(f"    {label} ({rep}/{reps})")
            results[label].append(_harness.run(loop, fn, *args, False))
    return results


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the best rate, with the least CPU of all rounds."""
    fastest = min(runs, key=lambda run: run["wall"])
    return {**fastest, "cpu": min(run["cpu"] for run in runs)}


def rows_for(
    name: str, where: str, n: int, ours: dict[str, Any], bare: dict[str, Any], baseline: str
) -> list[Row]:
    rate_target, bytes_target = TARGETS.get((where, n), (None, None))
    rate, bare_rate = n / ours["wall"], n / bare["wall"]
    met = None if rate_target is None else rate >= rate_target * bare_rate
    head = f"bare: {baseline}; N={n:,} at once, each awaiting {_agents.DELAY * 1e3:.0f} ms"

    def gc_note(run: dict[str, Any]) -> str:
        young, middle, full = run["gc"]
        return f"{young}/{middle}/{full} gen 0/1/2, {run['gc_seconds'] / run['wall'] * 100:.0f} % of the run"

    memory_met = None if bytes_target is None else ours["bytes_per_task"] <= bytes_target
    in_flight = f"at most {ours['in_flight']:,} in flight (bare {bare['in_flight']:,})"
    return [
        Row(
            f"{name}: rate",
            "task/s",
            rate,
            bare_rate,
            None,
            f">= {rate_target}x bare" if rate_target else "",
            met,
            head,
        ),
        Row(f"{name}: overhead per task", "us", _overhead(ours), _overhead(bare), None, note=head),
        Row(
            f"{name}: CPU per task",
            "us",
            ours["cpu"] / n * 1e6,
            bare["cpu"] / n * 1e6,
            None,
            note="time.process_time, least of the rounds",
        ),
        Row(
            f"{name}: memory per in-flight task",
            "B",
            ours["bytes_per_task"],
            bare["bytes_per_task"],
            None,
            f"<= {bytes_target:,.0f}" if bytes_target else "",
            memory_met,
            f"tracemalloc: heap growth at the peak / tasks in flight; {in_flight}",
        ),
        Row(
            f"{name}: full GC collections",
            "",
            float(ours["gc"][2]),
            float(bare["gc"][2]),
            None,
            note=f"flockrt {gc_note(ours)}; bare {gc_note(bare)}",
        ),
    ]


def _overhead(run: dict[str, Any]) -> float:
    """Microseconds per task of the run's wall time beyond the model call's own."""
    return (run["wall"] - _agents.DELAY) / run["n"] * 1e6


def in_process(loop: str, sizes: Sizes) -> list[Row]:
    rows = []
    for n in sizes.concurrency:
        say(f"  in process, N={n:,}")
        runs = {
            "bare asyncio": (_agents.bare_asyncio, (n,)),
            "flockrt submit": (_agents.local_submit, (n,)),
            "flockrt request_capability": (_agents.local_capability, (n,)),
        }
        results = {label: best(rounds) for label, rounds in interleaved(loop, sizes.reps, runs).items()}
        for label, (fn, args) in runs.items():
            say(f"    {label}, memory")
            results[label].update(bytes_per_task=_harness.run(loop, fn, *args, True)["bytes_per_task"])
        bare = results["bare asyncio"]
        rows += rows_for(
            f"1 in process, submit, {n:,}", "in process", n, results["flockrt submit"], bare, "asyncio.gather"
        )
        rows += rows_for(
            f"2 in process, request_capability, {n:,}",
            "in process",
            n,
            results["flockrt request_capability"],
            bare,
            "asyncio.gather",
        )
    return rows


def over_nats(loop: str, sizes: Sizes, url: str) -> list[Row]:
    rows = []
    for n in sizes.concurrency:
        say(f"  over NATS, N={n:,}")
        runs = {
            "bare nats-py": (_agents.bare_nats, (url, n)),
            "flockrt submit": (_agents.nats_submit, (url, n)),
            "flockrt request_capability": (_agents.nats_capability, (url, n)),
        }
        results = {label: best(rounds) for label, rounds in interleaved(loop, sizes.reps, runs).items()}
        for label, (fn, args) in runs.items():
            say(f"    {label}, memory")
            results[label].update(bytes_per_task=_harness.run(loop, fn, *args, True)["bytes_per_task"])
        bare = results["bare nats-py"]
        baseline = "nats-py queue-group worker, request/reply"
        rows += rows_for(
            f"3 over NATS, submit, {n:,}", "over NATS", n, results["flockrt submit"], bare, baseline
        )
        rows += rows_for(
            f"4 over NATS, request_capability, {n:,}",
            "over NATS",
            n,
            results["flockrt request_capability"],
            bare,
            baseline,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.agents", description=__doc__.split("\n")[0])
    parser.add_argument("--loop", choices=_harness.LOOPS, default="asyncio", help="default: asyncio")
    parser.add_argument("--quick", action="store_true", help="small N, one round each: a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--only", choices=("process", "nats"), help="run one half of the suite")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    info = {**describe(args.loop, args.quick), "nats_server": nats_server_version()}
    rows: list[Row] = []
    if args.only != "nats":
        say("[1/2] I/O-bound agents in process")
        rows += in_process(args.loop, sizes)
    if args.only != "process":
        with embedded_nats() as url:
            say(f"[2/2] I/O-bound agents over NATS ({info['nats_server']} at {url})")
            rows += over_nats(args.loop, sizes, url)

    print(
        f"flockrt I/O-bound agents benchmarks, {info['date']}: loop={args.loop}, {info['implementation']} "
        f"{info['python']}, {info['cpus']} CPUs, {info['nats_server']}{', --quick' if args.quick else ''}"
    )
    print(render(rows, bare="bare", pykka=False))
    if args.json is not None:
        write_json(args.json, info, sizes, rows, say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
