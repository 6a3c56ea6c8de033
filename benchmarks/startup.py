"""The start-up benchmark suite: what a fresh interpreter pays to import flockrt, against ``python -c pass``.

    python -m benchmarks.startup [--quick] [--json PATH] [--flockrt DIR] [--bytecode env|cached]

Four commands, each started ``runs`` times as a fresh process with ``subprocess`` (wall time
from just before the start to its exit, output to /dev/null): (a) ``python -c pass``, the
baseline; (b) ``python -c "import flockrt.actors"``; (c) ``python -c "import flockrt"``;
(d) ``python -m flockrt --help``. The commands take turns (a, b, c, d, then b, c, d, a, ...),
after one untimed start of each, so that a change in the load of the shared machine weighs on
all of them alike; each gets its median and its best. The import cost is a command's figure
minus the baseline's. A separate, untimed start of (b)-(d) reports which of the heavy packages
(msgspec, nats, aiohttp, prometheus_client, jwt, anthropic) the command left in ``sys.modules``
and from where it imported flockrt.

The children import the flockrt of ``--flockrt DIR`` (default: the checkout holding this
``benchmarks/``): they run in DIR with DIR first on ``PYTHONPATH``, so that the suite can time
another checkout, an older commit say, with the same harness. ``--bytecode env`` (default)
starts them with the environment as it is: with ``PYTHONDONTWRITEBYTECODE`` set and no
``__pycache__`` in the checkout, every start compiles flockrt's sources anew.
``--bytecode cached`` gives them a bytecode cache of their own (``PYTHONPYCACHEPREFIX``, a
temporary directory, written by the untimed starts), as an installed wheel would have.
Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._table import Row, render, write_json
from benchmarks.kernel import describe, say

HEAVY = ("msgspec", "nats", "aiohttp", "prometheus_client", "jwt", "anthropic")
"""Third-party packages that plain actors should not pay for (issue 10)."""


@dataclasses.dataclass(frozen=True)
class Command:
    key: str
    title: str
    args: tuple[str, ...]
    target: str = ""
    limit_ms: float | None = None


COMMANDS = (
    Command("a", "python -c pass", ("-c", "pass")),
    Command("b", "import flockrt.actors", ("-c", "import flockrt.actors"), "< 100", 100.0),
    Command("c", "import flockrt", ("-c", "import flockrt")),
    Command("d", "flockrt --help", ("-m", "flockrt", "--help"), "< 300", 300.0),
)
BASELINE = COMMANDS[0]


@dataclasses.dataclass(frozen=True)
class Sizes:
    runs: int


FULL = Sizes(runs=15)
QUICK = Sizes(runs=3)

# Run in the child in place of the command, for the untimed probe: the command runs as it would
# (``-c`` source as __main__, ``-m`` through runpy like the interpreter does), and at exit,
# however it exits (``--help`` raises SystemExit), the heavy packages in sys.modules go to a file.
PROBE = """\
import atexit, sys
def _report():
    modules = len(sys.modules)
    import json
    flockrt = sys.modules.get("flockrt")
    with open({path!r}, "w") as out:
        json.dump({{
            "heavy": [name for name in {heavy!r} if name in sys.modules],
            "modules": modules,
            "flockrt": getattr(flockrt, "__file__", None),
        }}, out)
atexit.register(_report)
{run}
"""


def probe_source(command: Command, path: str) -> str:
    if command.args[0] == "-c":
        run = f"exec(compile({command.args[1]!r}, '<string>', 'exec'), {{'__name__': '__main__'}})"
    else:
        module, *argv = command.args[1:]
        run = (
            f"import runpy; sys.argv[1:] = {argv!r}; "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
        )
    return PROBE.format(path=path, heavy=HEAVY, run=run)


class Suite:
    def __init__(self, sizes: Sizes, checkout: Path, bytecode: str, cache: str | None) -> None:
        self.sizes = sizes
        self.checkout = checkout
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))
        if bytecode == "cached":
            assert cache is not None
            self.env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.env["PYTHONPYCACHEPREFIX"] = cache

    def start(self, args: tuple[str, ...] | list[str]) -> float:
        """Wall time of one fresh interpreter running ``args``, in seconds."""
        began = time.perf_counter()
        done = subprocess.run(
            [sys.executable, *args],
            cwd=self.checkout,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        took = time.perf_counter() - began
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed (exit {done.returncode}): {done.stderr.decode()}")
        return took

    def times(self) -> dict[str, list[float]]:
        """Wall times in ms per command, the commands taking turns."""
        say("    one untimed start of each")
        for command in COMMANDS:
            self.start(command.args)
        samples: dict[str, list[float]] = {command.key: [] for command in COMMANDS}
        for turn in range(self.sizes.runs):
            say(f"    round {turn + 1}/{self.sizes.runs}")
            shift = turn % len(COMMANDS)
            for command in COMMANDS[shift:] + COMMANDS[:shift]:
                samples[command.key].append(self.start(command.args) * 1e3)
        return samples

    def modules(self, command: Command) -> dict[str, Any]:
        """What one untimed start of ``command`` left in sys.modules."""
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "modules.json")
            self.start(["-c", probe_source(command, path)])
            with open(path) as report:
                found: dict[str, Any] = json.load(report)
        origin = found["flockrt"]
        if origin is None or not Path(origin).resolve().is_relative_to(self.checkout):
            raise RuntimeError(f"{command.title} imported flockrt from {origin}, not from {self.checkout}")
        return found


def rows_of(samples: dict[str, list[float]], loaded: dict[str, dict[str, Any]], runs: int) -> list[Row]:
    median = {key: statistics.median(values) for key, values in samples.items()}
    best = {key: min(values) for key, values in samples.items()}
    base = BASELINE.key
    rows = [
        Row(f"{base} {BASELINE.title}, median", "ms", median[base], None, None, note=f"{runs} runs"),
        Row(f"{base} {BASELINE.title}, best", "ms", best[base], None, None, note=f"{runs} runs"),
    ]
    for command in COMMANDS[1:]:
        key, name = command.key, f"{command.key} {command.title}"
        found = loaded[key]
        heavy = ", ".join(found["heavy"]) or "none"
        met = None if command.limit_ms is None else median[key] < command.limit_ms
        rows += [
            Row(
                f"{name}, median",
                "ms",
                median[key],
                median[base],
                None,
                command.target,
                met,
                f"heavy packages loaded: {heavy}; {found['modules']} modules in sys.modules",
            ),
            Row(f"{name}, best", "ms", best[key], best[base], None),
            Row(
                f"{name}, import cost",
                "ms",
                median[key] - median[base],
                None,
                None,
                note=f"median - median of ({base}); best - best: {best[key] - best[base]:.1f} ms",
            ),
        ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.runs} runs each: a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--flockrt",
        type=Path,
        metavar="DIR",
        default=Path(__file__).resolve().parent.parent,
        help="the checkout whose flockrt the children import (default: this one)",
    )
    parser.add_argument(
        "--bytecode",
        choices=("env", "cached"),
        default="env",
        help="env: as the environment has it (default); cached: a bytecode cache of their own",
    )
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    checkout = args.flockrt.resolve()
    info = {
        **describe("n/a", args.quick),
        "checkout": str(checkout),
        "bytecode": args.bytecode,
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
        "flockrt_pycache": (checkout / "flockrt" / "__pycache__").is_dir(),
    }
    del info["loop"]
    with tempfile.TemporaryDirectory(prefix="flockrt-pycache-") as cache:
        suite = Suite(sizes, checkout, args.bytecode, cache)
        say(f"[1/2] which heavy packages each command loads (flockrt from {checkout})")
        loaded = {command.key: suite.modules(command) for command in COMMANDS[1:]}
        say(f"[2/2] wall time of a fresh interpreter, {sizes.runs} runs of each command, taking turns")
        samples = suite.times()
    rows = rows_of(samples, loaded, sizes.runs)

    print(
        f"flockrt start-up benchmarks, {info['date']}: {info['implementation']} {info['python']}, "
        f"{info['cpus']} CPUs, bytecode={args.bytecode}{', --quick' if args.quick else ''}"
    )
    print(render(rows, bare="python -c pass", pykka=False, ours="command", ratio="command/bare"))
    if args.json is not None:
        commands = {
            c.key: {"title": c.title, "args": list(c.args), **loaded.get(c.key, {})} for c in COMMANDS
        }
        write_json(args.json, info, sizes, rows, say, commands=commands, samples_ms=samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
