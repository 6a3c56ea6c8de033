"""Every Python example in the guides under docs/ runs as written and prints what the guide shows.

A ```python block is run on its own in a fresh interpreter from the repository root. When the
next block is a ```text block, that block is the example's expected standard output, compared
exactly. docs/benchmarks.md is left out: its figures depend on the machine.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SKIPPED = {"benchmarks.md"}
GUIDES = [
    "getting-started.md",
    "actors.md",
    "supervision.md",
    "configuration.md",
    "flock.md",
    "gateway.md",
    "claude.md",
    "client.md",
    "a2a.md",
]

# A python block, then optionally (after blank lines only) the text block that shows its output.
EXAMPLE = re.compile(r"^```python\n(?P<code>.*?)^```\n(?:\n*^```text\n(?P<output>.*?)^```$)?", re.M | re.S)


class Example(NamedTuple):
    where: str
    code: str
    output: str | None


def examples() -> list[Example]:
    found = []
    for path in sorted(DOCS.glob("*.md")):
        if path.name in SKIPPED:
            continue
        text = path.read_text()
        for match in EXAMPLE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(Example(f"{path.name}:{line}", match["code"], match["output"]))
    return found


@pytest.mark.parametrize("example", examples(), ids=lambda example: example.where)
def test_example_runs_and_prints_what_the_guide_shows(example: Example) -> None:
    result = subprocess.run(
        [sys.executable, "-c", example.code], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert result.returncode == 0, f"{example.where} failed:\n{result.stderr}"
    if example.output is not None:
        assert result.stdout == example.output, f"{example.where} printed something else"


@pytest.mark.parametrize("guide", GUIDES)
def test_each_guide_has_examples_with_their_output(guide: str) -> None:
    # Guards the extraction itself: a fence typo would otherwise silently test nothing.
    found = [example for example in examples() if example.where.startswith(f"{guide}:")]
    assert found, f"docs/{guide} has no python example"
    assert any(example.output is not None for example in found), f"docs/{guide} shows no output"


def test_fences_are_balanced_and_named() -> None:
    for path in sorted(DOCS.glob("*.md")):
        if path.name in SKIPPED:
            continue
        fences = re.findall(r"^```(\S*)$", path.read_text(), re.M)
        assert len(fences) % 2 == 0, f"{path.name} has an unclosed code block"
        openers = fences[::2]
        assert all(openers), f"{path.name} has a code block without a language"
        assert set(openers) <= {"python", "text", "toml", "sh", "ts"}, f"{path.name}: {sorted(set(openers))}"
