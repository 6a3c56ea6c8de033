"""The benchmark suite still runs (tiny sizes; the figures themselves are not checked here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_kernel_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.kernel", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "| 1 tell, 1 actor" in result.stdout
    assert json.loads(out.read_text())


def test_quick_bus_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "bus.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bus", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "| 1 fan-out " in result.stdout
    assert "| 3 capability, 100 requesters" in result.stdout
    assert json.loads(out.read_text())["rows"]
