"""Instructions per task: the bus workloads counted by valgrind's callgrind, not timed.

    python -m benchmarks.instructions [--against DIR] [--workloads worker,fanout,...]

On a shared machine a rate moves 10-30 % with the neighbours' load, which hides a change of a
few percent. An instruction count does not move: callgrind counts what the Python process
executes, whatever else runs. Each workload runs twice in a fresh interpreter under callgrind,
with ``small`` and ``large`` units of work; the difference of the two counts divided by the
difference of the sizes is the instructions per unit, free of start-up and import costs. The
nats-server is a child process, which callgrind does not follow: the count is flockrt's own
work plus nats-py's, on both ends of each message when producer and workers share the process.

``--against DIR`` counts another checkout (an older commit, say) the same way, and prints the
change. Needs valgrind (Debian's package ``valgrind``); slow (a few minutes), so not part of
``flockrt bench``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKLOADS: dict[str, tuple[str, int, int, str]] = {
    # name: (call, small, large, unit); `n` is the number of units, `url` the server's
    "worker": ("_bus_flockrt.worker_cpu(url, n, 4)", 4_000, 12_000, "task"),
    "fanout": ("_bus_flockrt.fanout(url, n, 4, 1, 1_000)", 3_000, 9_000, "task"),
    "batched": ("_bus_flockrt.batched_fanout(url, n, 4, 1, 1_000, 100)", 6_000, 18_000, "task"),
    "capability": ("_bus_flockrt.request_rate(url, 100, n // 100, 4, 1)", 3_000, 9_000, "request"),
}
"""What each workload runs (the functions of the bus suite, benchmarks/_bus_flockrt.py)."""

_SCRIPT = """
import asyncio, sys
sys.path.insert(0, {root!r})
import flockrt
assert flockrt.__file__.startswith({root!r}), flockrt.__file__
from benchmarks import _bus_flockrt
from flockrt.bus.embedded import EmbeddedNats

async def main() -> None:
    async with EmbeddedNats() as server:
        url, n = server.url, {n}
        await {call}

asyncio.run(main())
"""


def count(root: Path, call: str, n: int, template: str = _SCRIPT) -> int:
    """Instructions callgrind counted for ``call`` with ``n`` units, in checkout ``root``."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        script = template.format(root=str(root), n=n, call=call)
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", script],
            capture_output=True,
            text=True,
            cwd=root,
        )
        match = re.search(r"Collected : (\d+)", result.stderr)
        if result.returncode != 0 or match is None:
            raise RuntimeError(f"callgrind run failed in {root}:\n{result.stderr[-2000:]}")
        return int(match.group(1))


def per_unit(root: Path, workload: str) -> float:
    call, small, large, _ = WORKLOADS[workload]
    return (count(root, call, large) - count(root, call, small)) / (large - small)


# ---------------------------------------------------------------------- kernel workloads

KERNEL_WORKLOADS: dict[str, tuple[str, int, int, str]] = {
    # name: (call, with `{h}` for the handler argument(s), small, large, unit)
    "tell": ("tell_rate(n, {h})", 30_000, 90_000, "message"),
    "ask": ("ask_rate(n, {h})", 10_000, 30_000, "ask"),
    "askers": ("concurrent_ask_rate(100, n // 100, {h})", 10_000, 30_000, "ask"),
}
"""The kernel suite's rows 1L-3L: benchmarks/_flockrt.py against benchmarks/_limit.py."""

_KERNEL_SCRIPT = """
import asyncio, sys
sys.path.insert(0, {root!r})
import flockrt
assert flockrt.__file__.startswith({root!r}), flockrt.__file__
from benchmarks import _flockrt, _limit
n = {n}
asyncio.run({call})
"""


def kernel_per_unit(root: Path, workload: str, impl: str, handler: str) -> float:
    """Instructions per message or ask of a kernel row on ``impl`` ("flockrt" or "limit")."""
    call, small, large, _ = KERNEL_WORKLOADS[workload]
    h = f"flockrt.ActorSystem, {handler!r}" if impl == "flockrt" else repr(handler)
    call = f"_{impl}." + call.format(h=h)
    small_count = count(root, call, small, _KERNEL_SCRIPT)
    return (count(root, call, large, _KERNEL_SCRIPT) - small_count) / (large - small)


def kernel_main(args: argparse.Namespace) -> int:
    """``--kernel``: rows 1L-3L, flockrt and the limit, each handler kind."""
    header = "| workload | flockrt | limit | limit / flockrt |"
    header += " flockrt against | change |" if args.against else ""
    print(header)
    print("|---|---|---|---|" + ("---|---|" if args.against else ""))
    for name, (_, _, _, unit) in KERNEL_WORKLOADS.items():
        for handler in ("sync", "async"):
            ours = kernel_per_unit(ROOT, name, "flockrt", handler)
            limit = kernel_per_unit(ROOT, name, "limit", handler)
            receive = "def receive" if handler == "sync" else "async def receive"
            line = f"| {name}, {receive} | {ours:,.0f} per {unit} | {limit:,.0f} | {limit / ours:.2f} |"
            if args.against:
                theirs = kernel_per_unit(args.against.resolve(), name, "flockrt", handler)
                line += f" {theirs:,.0f} | {(ours / theirs - 1) * 100:+.1f} % |"
            print(line, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, help="another checkout to count the same way")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"of {', '.join(WORKLOADS)}")
    parser.add_argument(
        "--kernel", action="store_true", help="the kernel's rows 1L-3L (flockrt and the limit)"
    )
    args = parser.parse_args(argv)
    if args.kernel:
        return kernel_main(args)
    names = [name.strip() for name in args.workloads.split(",") if name.strip()]
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload {unknown[0]!r}; expected {', '.join(WORKLOADS)}")
    header = "| workload | instructions per unit |" + (" against | change |" if args.against else "")
    print(header)
    print("|---|---|" + ("---|---|" if args.against else ""))
    for name in names:
        unit = WORKLOADS[name][3]
        ours = per_unit(ROOT, name)
        line = f"| {name} | {ours:,.0f} per {unit} |"
        if args.against:
            theirs = per_unit(args.against.resolve(), name)
            line += f" {theirs:,.0f} | {(ours / theirs - 1) * 100:+.1f} % |"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
