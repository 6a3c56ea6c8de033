"""The cluster benchmark suite: ``flockrt run`` processes on a 3-node NATS cluster (issue 11).

    python -m benchmarks.cluster [--quick] [--json PATH]

Each measurement gets a fresh cluster (tests/nats_cluster.py: three nats-servers n1..n3 with
routes and JetStream, on loopback) and fresh ``python -m flockrt run`` processes, one per NATS
node, whose agents record every execution (tests/cluster_agent.py). A plain nats-py client in
this process publishes ``work`` tasks and collects ``task.result``:

1. tasks/s with 1, 2 and 3 processes (4 one-slot agents each), core and durable mode
   (``replicas = 3``), in one run, taking turns so that the machine's load weighs on all alike;
   the reference column is the 1-process rate of the same mode;
2. uneven capacity, core and durable mode: a 1-slot and an 8-slot process, 64 tasks of
   0.1-0.25 s published at once (longest first); the makespan (first start to last end, as the
   agents recorded them) against the ideal: the best schedule of those tasks on 9 slots (in core
   mode on a cluster each process gets an equal share and the hand-off moves what waits);
3. kill-to-redelivery: durable mode, ``kill -9`` of a process running tasks; the time until the
   last of its unfinished tasks has an ok result from another process (``ack_wait`` 10 s, the
   default);
4. ``kill -9`` of the nats-server that leads the R3 task stream under a steady stream of
   JetStream publishes: the longest time without a stored task.

Rates are the best of ``reps`` runs, times the median. Progress goes to stderr, the table to
stdout. The processes come and go, so the rates include nothing of their start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import _harness
from benchmarks._table import Row, render, write_json
from benchmarks.bus import nats_server_version
from benchmarks.kernel import describe, say
from tests.cluster_agent import read_record
from tests.nats_cluster import (
    FlockProcess,
    NatsCluster,
    Tally,
    best_schedule,
    flock_config,
    start_all,
    stop_all,
    uneven_tasks,
    wait_until,
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    core_tasks: int
    durable_tasks: int
    reps: int
    ack_wait_ms: int


FULL = Sizes(core_tasks=10_000, durable_tasks=3_000, reps=3, ack_wait_ms=10_000)
QUICK = Sizes(core_tasks=500, durable_tasks=200, reps=1, ack_wait_ms=2_000)
SLOTS = 4
"""One-slot agents per process in the scaling and kill measurements."""


class Run:
    """A fresh cluster and flockrt processes in a temporary directory, stopped on exit."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="flockrt-cluster-bench-")
        self.root = Path(self._dir.name)
        self.cluster = NatsCluster(self.root)
        self.processes: list[FlockProcess] = []
        self.tally = Tally()

    async def __aenter__(self) -> Run:
        await self.cluster.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.tally.close()
        await stop_all(self.processes, self.cluster, grace=5)
        self._dir.cleanup()

    def process(self, name: str, server: str, *, slots: int = SLOTS, **nats: Any) -> FlockProcess:
        first = self.cluster[server]
        url = ",".join([first.url, *(n.url for n in self.cluster.nodes if n is not first)])
        durable = bool(nats.pop("durable", False))
        config = flock_config(name, url, self.root / "record", slots=slots, durable=durable, nats=nats)
        process = FlockProcess(name, self.root, config)
        self.processes.append(process)
        return process

    def record(self) -> Any:
        return read_record(self.root / "record")


async def scaling(processes: int, durable: bool, tasks: int) -> tuple[float, int]:
    """Tasks/s from the first publish to the last ok result, ``processes`` processes; and how
    many tasks had no ok result 30 s after the last one was published (lost: counted, not
    waited for)."""
    async with Run() as run:
        keys: dict[str, Any] = {"durable": True, "replicas": 3} if durable else {}
        await start_all([run.process(f"p{i}", f"n{i}", **keys) for i in range(1, processes + 1)])
        await run.tally.connect(run.cluster.urls)
        started = time.monotonic()
        window = 1000
        for start in range(0, tasks, window):
            await run.tally.publish_many(durable, [0.0] * min(window, tasks - start), at_once=100)
            # At most two windows in flight: wait for the results of the previous ones.
            done = start - 10  # (a lost task must not stall the run)
            await wait_until(lambda: len(run.tally.first_ok) >= done, 60, "results", 0.005)  # noqa: B023
        with contextlib.suppress(AssertionError):
            await run.tally.wait_all_ok(30)
        received = len(run.tally.first_ok)
        return received / (max(run.tally.first_ok.values()) - started), tasks - received


async def uneven(durable: bool) -> tuple[float, float, dict[str, int]]:
    """The makespan of 64 tasks on a 1-slot and an 8-slot process (the first start to the last
    end, as the agents recorded them); the ideal; the split."""
    seconds = uneven_tasks()
    async with Run() as run:
        keys: dict[str, Any] = {"durable": True} if durable else {}
        await start_all(
            [run.process("small", "n1", slots=1, **keys), run.process("big", "n2", slots=8, **keys)]
        )
        await run.tally.connect(run.cluster.urls, dont_randomize=True)
        await run.tally.publish_many(durable, seconds)
        await run.tally.wait_all_ok(60)
        record = run.record()
        split = {name: record.by_node(name) for name in ("small", "big")}
        return record.makespan, best_schedule(seconds, 9), split


async def kill_to_redelivery(ack_wait_ms: int) -> tuple[float, int]:
    """Seconds from a ``kill -9`` to the last of the victim's unfinished tasks done elsewhere."""
    async with Run() as run:
        keys = {"durable": True, "ack_wait": ack_wait_ms}
        victim = run.process("p1", "n1", **keys)
        await start_all([victim, run.process("p2", "n2", **keys), run.process("p3", "n3", **keys)])
        await run.tally.connect(run.cluster.urls)
        await run.tally.publish_many(True, [0.5] * 60)
        await wait_until(lambda: run.record().by_node("p1") >= 2, 30, "p1 running tasks")
        await victim.kill()
        killed = time.monotonic()
        record = run.record()
        held = [t for t, a in record.agents.items() if a[0].startswith("p1-") and not record.finished[t]]
        await run.tally.wait_all_ok(ack_wait_ms / 1000 + 30)
        return max(run.tally.first_ok[t] for t in held) - killed, len(held)


async def leader_kill() -> tuple[float, int, int]:
    """The longest time without a stored task around a ``kill -9`` of the R3 stream's leader;
    refused publishes; tasks without an ok result at the end (lost)."""
    async with Run() as run:
        keys = {"durable": True, "replicas": 3}
        await start_all([run.process(f"p{i}", f"n{i}", **keys) for i in (1, 2, 3)])
        leader = await run.cluster.stream_leader("FLOCK_TASKS")
        await run.tally.connect([n.url for n in run.cluster.nodes if n.name != leader])
        acked: list[float] = []
        stop = asyncio.Event()

        async def produce() -> None:
            while not stop.is_set():
                await run.tally.js_publish(0.02)
                acked.append(time.monotonic())
                await asyncio.sleep(0.01)

        producer = asyncio.create_task(produce())
        await wait_until(lambda: len(acked) >= 50, 30, "tasks stored before the kill")
        await run.cluster.kill(leader)
        killed = time.monotonic()
        await wait_until(lambda: sum(a > killed + 1 for a in acked) >= 100, 60, "intake after the kill")
        stop.set()
        await producer
        await run.tally.wait_all_ok(60)
        gap = max(b - a for a, b in itertools.pairwise(acked))
        return gap, run.tally.refused, len(run.tally.missing())


async def measure(sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    say("[1/4] tasks/s with 1, 2 and 3 processes, core and durable (R3)")
    rates: dict[tuple[bool, int], list[float]] = {}
    lost: dict[tuple[bool, int], int] = {}
    for rep in range(1, sizes.reps + 1):
        for durable in (False, True):
            tasks = sizes.durable_tasks if durable else sizes.core_tasks
            for n in (1, 2, 3):
                say(f"    {'durable' if durable else 'core'}, {n} process(es) ({rep}/{sizes.reps})")
                rate, missing = await scaling(n, durable, tasks)
                rates.setdefault((durable, n), []).append(rate)
                lost[(durable, n)] = lost.get((durable, n), 0) + missing
                if missing:
                    say(f"    {missing} of {tasks} tasks never got an ok result")
    for durable in (False, True):
        mode = "durable R3" if durable else "core"
        one = max(rates[(durable, 1)])
        tasks = sizes.durable_tasks if durable else sizes.core_tasks
        for n in (1, 2, 3):
            rows.append(
                Row(
                    f"1 {mode}, {n} process{'es' if n > 1 else ''}",
                    "task/s",
                    max(rates[(durable, n)]),
                    one if n > 1 else None,
                    None,
                    "0 lost",
                    lost[(durable, n)] == 0,
                    f"N={tasks:,} tasks of 0 s x {sizes.reps} runs, {lost[(durable, n)]} lost; <= 2,000 "
                    f"in flight, {SLOTS} slots per process; reference: 1 process",
                )
            )

    say("[2/4] uneven capacity: 1 slot and 8 slots, 64 tasks of 0.1-0.25 s")
    for durable in (False, True):
        times, splits = [], []
        ideal = 0.0
        for rep in range(1, sizes.reps + 1):
            say(f"    {'durable' if durable else 'core'} ({rep}/{sizes.reps})")
            elapsed, ideal, split = await uneven(durable)
            times.append(elapsed)
            splits.append(f"{split['small']}/{split['big']}")
        median = statistics.median(times)
        rows.append(
            Row(
                f"2 uneven capacity, {'durable' if durable else 'core'}",
                "s",
                median,
                ideal,
                None,
                "<= 1.20x ideal",
                median <= 1.2 * ideal,
                f"median of {len(times)} ({min(times):.2f}-{max(times):.2f} s, "
                f"{median / (sum(uneven_tasks()) / 9):.2f}x the work / 9 slots); split 1-slot/8-slot "
                f"{', '.join(splits)}; reference: the best schedule on 9 slots",
            )
        )

    say(f"[3/4] kill -9 of a process, durable, ack_wait {sizes.ack_wait_ms / 1000:g} s")
    back, held = await kill_to_redelivery(sizes.ack_wait_ms)
    rows.append(
        Row(
            "3 kill -9 to redelivery, durable",
            "s",
            back,
            sizes.ack_wait_ms / 1000,
            None,
            "<= ~10 s",
            back <= 10.5,
            f"the last of the {held} tasks the victim was running, done elsewhere; reference: ack_wait",
        )
    )

    say("[4/4] kill -9 of the stream leader (R3) under a stream of publishes")
    gap, refused, lost = await leader_kill()
    rows.append(
        Row(
            "4 stream leader kill: intake gap",
            "s",
            gap,
            None,
            None,
            "a few s, 0 lost",
            gap <= 5 and lost == 0,
            f"longest time without a stored task; {refused} publishes refused (retried), {lost} lost",
        )
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--loop", choices=_harness.LOOPS, default="asyncio", help="the producer's loop (default: asyncio)"
    )
    parser.add_argument("--quick", action="store_true", help="small N, one run each: a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    info = {**describe(args.loop, args.quick), "nats_server": nats_server_version()}
    with asyncio.Runner(loop_factory=_harness.loop_factory(args.loop)) as runner:
        rows = runner.run(measure(sizes))
    print(
        f"flockrt cluster benchmarks, {info['date']}: 3-node NATS cluster on loopback, "
        f"{info['implementation']} {info['python']}, {info['cpus']} CPUs, {info['nats_server']}"
        f"{', --quick' if args.quick else ''}"
    )
    print(render(rows, bare="reference", pykka=False, ratio="ratio"))
    if args.json is not None:
        write_json(args.json, info, sizes, rows, say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
