"""The NATS bus benchmark suite: flockrt's NatsFlock against bare nats-py, in one run.

    python -m benchmarks.bus [--loop asyncio|uvloop] [--quick] [--json PATH]

It starts its own nats-server (EmbeddedNats: loopback, free port, temporary store) and runs
each workload twice, with the same function names, in ``_bus_flockrt`` (NatsFlock nodes, public
API) and ``_bus_bare`` (plain nats-py connections and queue-group subscriptions), all in this
process. Rates are the best of ``reps`` runs, each on a fresh event loop with fresh
connections; latencies pool the samples of all runs. Progress goes to stderr, the table to
stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks import _bus_bare, _bus_flockrt, _harness
from benchmarks._table import Row, render, write_json
from benchmarks.kernel import Suite, describe, say
from flockrt.bus.embedded import EmbeddedNats, find_nats_server


@dataclasses.dataclass(frozen=True)
class Sizes:
    tasks: int
    window: int
    batch: int
    agents: int
    nodes: int
    requests: int
    requesters: int
    requests_per_requester: int
    worker_tasks: int
    reps: int


FULL = Sizes(
    tasks=20_000,
    window=1_000,
    batch=100,
    agents=100,
    nodes=2,
    requests=5_000,
    requesters=100,
    requests_per_requester=100,
    worker_tasks=50_000,
    reps=3,
)
QUICK = Sizes(
    tasks=2_000,
    window=1_000,
    batch=100,
    agents=100,
    nodes=2,
    requests=500,
    requesters=100,
    requests_per_requester=10,
    worker_tasks=2_000,
    reps=1,
)


@contextlib.contextmanager
def embedded_nats() -> Iterator[str]:
    """A nats-server for the whole run; yields its URL.

    Its supervising event loop runs in a thread of its own, so that the server outlives the
    fresh event loop of every measured run (asyncio kills a child process whose loop closes).
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="nats-server", daemon=True)
    thread.start()
    server = EmbeddedNats()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=60)
        yield server.url
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def nats_server_version() -> str:
    try:
        out = subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    return out.stdout.strip() or out.stderr.strip()


def percentiles_ms(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 of latencies in seconds, in milliseconds."""
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1e3, cuts[98] * 1e3


class BusSuite(Suite):
    """The kernel suite's runner (``repeat``, ``on_loop``) with the bus workloads."""

    def __init__(self, loop: str, sizes: Sizes, url: str) -> None:
        super().__init__(loop, sizes)  # type: ignore[arg-type]  # only .reps is read
        self.bus_sizes = sizes
        self.url = url
        self.bare_rate: float | None = None
        some_id = "0" * 32  # as long as a uuid4().hex
        task_bytes = {len(side.task_payload(some_id)) for side in (_bus_flockrt, _bus_bare)}
        request_bytes = {len(side.request_payload(some_id)) for side in (_bus_flockrt, _bus_bare)}
        assert len(task_bytes) == len(request_bytes) == 1, "both sides must send the same payloads"
        self.task_bytes, self.request_bytes = task_bytes.pop(), request_bytes.pop()
        self.topology = f"{sizes.agents} agents on {sizes.nodes} worker nodes + 1 producer node"

    def interleaved(
        self, runs: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]
    ) -> dict[str, list[Any]]:
        """Each workload of ``runs`` ``reps`` times, taking turns (flockrt, bare, flockrt, ...),
        so that a change in the machine's load (it is shared) weighs on all of them alike."""
        results: dict[str, list[Any]] = {label: [] for label in runs}
        reps = self.bus_sizes.reps
        for rep in range(1, reps + 1):
            for label, (fn, args) in runs.items():
                say(f"    {label} ({rep}/{reps})")
                results[label].append(_harness.run(self.loop, fn, *args))
        return results

    def fanout(self) -> list[Row]:
        """task fan-out: submit -> agents -> task.result, one task per message"""
        s = self.bus_sizes
        args = (self.url, s.tasks, s.agents, s.nodes, s.window)
        runs = self.interleaved(
            {"flockrt": (_bus_flockrt.fanout, args), "bare nats-py": (_bus_bare.fanout, args)}
        )
        runs["bare"] = runs.pop("bare nats-py")
        rate = {impl: max(run["rate"] for run in results) for impl, results in runs.items()}
        latency = {
            impl: percentiles_ms([x for run in results for x in run["latencies"]])
            for impl, results in runs.items()
        }
        self.bare_rate = rate["bare"]
        ratio = rate["flockrt"] / rate["bare"]
        note = f"N={s.tasks:,} tasks of {self.task_bytes} B JSON; {self.topology}"
        in_flight = f"submit -> its TaskResult at the producer; <= {s.window:,} in flight"
        return [
            Row(
                "1 fan-out",
                "task/s",
                rate["flockrt"],
                rate["bare"],
                None,
                ">= 0.70x bare",
                ratio >= 0.7,
                note,
            ),
            Row(
                "1 fan-out latency p50", "ms", latency["flockrt"][0], latency["bare"][0], None, note=in_flight
            ),
            Row(
                "1 fan-out latency p99", "ms", latency["flockrt"][1], latency["bare"][1], None, note=in_flight
            ),
        ]

    def worker(self) -> list[Row]:
        """a worker's CPU per task, without the transport"""
        s = self.bus_sizes
        per_node = s.agents // s.nodes
        args = (self.url, s.worker_tasks, per_node)
        runs = self.interleaved(
            {"flockrt": (_bus_flockrt.worker_cpu, args), "bare nats-py": (_bus_bare.worker_cpu, args)}
        )
        flockrt, bare = (min(cpu) for cpu in runs.values())
        note = (
            f"N={s.worker_tasks:,}: each task message handed to the node's subscription callback "
            f"({per_node} agents), its result published; no socket read or parse"
        )
        return [Row("1w worker CPU per task", "us", flockrt, bare, None, note=note)]

    def batched(self) -> list[Row]:
        """batched fan-out: submit_many on batch.messages, results each and batched"""
        s = self.bus_sizes
        args = (self.url, s.tasks, s.agents, s.nodes, s.window, s.batch)
        runs = self.interleaved(
            {
                "flockrt": (_bus_flockrt.batched_fanout, args),
                'flockrt, results="batch"': (_bus_flockrt.batched_results_fanout, args),
                "bare nats-py, unbatched": (_bus_bare.fanout, args[:-1]),
            }
        )
        # The reference: the best bare unbatched rate of this run (rows 1 and 2 together).
        bare = max([run["rate"] for run in runs["bare nats-py, unbatched"]] + [self.bare_rate or 0.0])
        rows = []
        for label, name, what, flight in (
            (
                "flockrt",
                "2 batched",
                f"submit_many({s.batch}) per call, batch_max {s.batch}, a TaskResult per task on task.result",
                "submit_many -> each TaskResult",
            ),
            (
                'flockrt, results="batch"',
                "2b batched, results batched",
                f'submit_many({s.batch}, results="batch"): one message of {s.batch} results per batch',
                f"submit_many -> its {s.batch} results",
            ),
        ):
            rate = max(run["rate"] for run in runs[label])
            p50, p99 = percentiles_ms([x for run in runs[label] for x in run["latencies"]])
            note = f"{what}; bare: best unbatched rate of rows 1-2"
            in_flight = f"{flight}; <= {s.window:,} in flight"
            rows += [
                Row(
                    f"{name} fan-out" if name == "2 batched" else name,
                    "task/s",
                    rate,
                    bare,
                    None,
                    ">= 3x bare",
                    rate >= 3 * bare,
                    note,
                ),
                Row(f"{name.split(',')[0]} latency p50", "ms", p50, None, None, note=in_flight),
                Row(f"{name.split(',')[0]} latency p99", "ms", p99, None, None, note=in_flight),
            ]
        return rows

    def capability(self) -> list[Row]:
        """capability requests across NATS, sequential and concurrent"""
        s = self.bus_sizes
        rows = []
        for requesters, each, name in (
            (1, s.requests, "3 capability, 1 requester"),
            (s.requesters, s.requests_per_requester, f"3 capability, {s.requesters} requesters"),
        ):
            args = (self.url, requesters, each, s.agents, s.nodes)
            runs = self.interleaved(
                {
                    f"flockrt, {requesters} requester(s)": (_bus_flockrt.request_rate, args),
                    f"bare nats-py, {requesters} requester(s)": (_bus_bare.request_rate, args),
                }
            )
            flockrt, bare = (max(rates) for rates in runs.values())
            note = f"{requesters} x {each:,} requests of {self.request_bytes} B; producer node has no agent"
            rows.append(Row(name, "req/s", flockrt, bare, None, note=note))
        return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bus", description=__doc__.split("\n")[0])
    parser.add_argument("--loop", choices=_harness.LOOPS, default="asyncio", help="default: asyncio")
    parser.add_argument("--quick", action="store_true", help="small N, one run each: a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--only",
        metavar="ROWS",
        help="a comma-separated subset of fanout, worker, batched, capability (default: all)",
    )
    args = parser.parse_args(argv)
    only = {name.strip() for name in args.only.split(",")} if args.only else None
    unknown = (only or set()) - {"fanout", "worker", "batched", "capability"}
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; expected fanout, worker, batched, capability")

    sizes = QUICK if args.quick else FULL
    info = {**describe(args.loop, args.quick), "nats_server": nats_server_version()}
    rows: list[Row] = []
    with embedded_nats() as url:
        say(f"{info['nats_server']} at {url}")
        suite = BusSuite(args.loop, sizes, url)
        workloads = [suite.fanout, suite.worker, suite.batched, suite.capability]
        workloads = [w for w in workloads if only is None or w.__name__ in only]
        for number, workload in enumerate(workloads, 1):
            say(f"[{number}/{len(workloads)}] {workload.__doc__}")
            rows += workload()

    print(
        f"flockrt NATS bus benchmarks, {info['date']}: loop={args.loop}, {info['implementation']} "
        f"{info['python']}, {info['cpus']} CPUs, {info['nats_server']}{', --quick' if args.quick else ''}"
    )
    print(render(rows, bare="bare nats-py", pykka=False))
    if args.json is not None:
        payload_bytes = {"task": suite.task_bytes, "capability_request": suite.request_bytes}
        write_json(args.json, info, sizes, rows, say, payload_bytes=payload_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
