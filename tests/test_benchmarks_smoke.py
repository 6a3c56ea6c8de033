"""The benchmark suites still run, through ``flockrt bench`` (tiny sizes; the figures themselves
are not checked here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("suite", "rows"),
    [
        (
            "kernel",
            ["| 1 tell, 1 actor", "| 1L tell, async def receive", "| 3L ask, 100 askers, def receive"],
        ),
        (
            "agents",
            [
                "| 1 in process, submit, 200: rate",
                "| 2 in process, request_capability, 200: memory per in-flight task",
                "| 3 over NATS, submit, 200: CPU per task",
                "| 4 over NATS, request_capability, 200: full GC collections",
            ],
        ),
        (
            "bus",
            [
                "| 1 fan-out ",
                "| 1w worker CPU per task",
                "| 2b batched, results batched",
                "| 3 capability, 100 requesters",
            ],
        ),
        ("metrics", ["| 1 tell, 1 actor", "| 3 ask, 100 askers", "| observe 20 us"]),
        (
            "gateway",
            [
                "| 1 WebSocket tool call p50",
                "| 3 calls/s, 100 clients, HTTP",
                "| 5 A2A SendMessage, capability p50",
                "| 4 WebSocket connections held",
            ],
        ),
        (
            "startup",
            [
                "| a python -c pass, median",
                "| b import flockrt.actors, median",
                "| d flockrt --help, import cost",
            ],
        ),
    ],
)
def test_quick_benchmark_runs(tmp_path: Path, suite: str, rows: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flockrt", "bench", suite, "--quick", "--json", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # bench finds the checkout from the package, not the current directory
    )
    assert result.returncode == 0, result.stderr
    assert f"benchmarks.{suite} --quick" in result.stderr  # the progress line
    for row in rows:
        assert row in result.stdout
    assert json.loads((tmp_path / f"{suite}.json").read_text())


def test_bench_names_an_unknown_suite() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flockrt", "bench", "kernal"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    expected = "kernel, bus, agents, gateway, metrics, startup, cluster"
    assert f"unknown suite 'kernal'; expected {expected}" in result.stderr


def test_collector_comparison_runs() -> None:
    # benchmarks/collector.py: the "with the collector off" figures of docs/benchmarks.md.
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.collector", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    for line in (
        "objects the collector tracks per submit in flight",
        "collections of generations 0/1/2 in one run, collector on: bare ",
        "submit, collector on ",
        "submit rate, collector off: flockrt",
        "100 askers, collector off",
    ):
        assert line in result.stdout
