"""The benchmark suites still run (tiny sizes; the figures themselves are not checked here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("suite", "rows"),
    [
        ("kernel", ["| 1 tell, 1 actor"]),
        ("bus", ["| 1 fan-out ", "| 2b batched, results batched", "| 3 capability, 100 requesters"]),
    ],
)
def test_quick_benchmark_runs(tmp_path: Path, suite: str, rows: list[str]) -> None:
    out = tmp_path / f"{suite}.json"
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{suite}", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    for row in rows:
        assert row in result.stdout
    assert json.loads(out.read_text())
