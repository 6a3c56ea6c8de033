"""The README's embedding example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_python_example_runs() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README.md has no python example"
    for block in blocks:
        result = subprocess.run(
            [sys.executable, "-c", block], capture_output=True, text=True, timeout=30, cwd=ROOT
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "3"


def test_readme_shows_the_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "pip install -e . && flockrt run configs/flock.toml" in text
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = "pip install -e '.[dev]' && pytest"
    assert test_command in text
    assert "python -m pip install -e '.[dev]' && python -m pytest" in ci
