"""What the Containerfile relies on, and the event-loop option, checked without a container engine."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from flockrt.errors import FlockError
from flockrt.loop import loop_factory, run

ROOT = Path(__file__).resolve().parent.parent


def test_containerfile_copies_existing_paths_and_runs_the_shipped_config() -> None:
    text = (ROOT / "Containerfile").read_text()
    copied = [p for line in re.findall(r"^COPY (.+)$", text, re.M) for p in line.split()[:-1]]
    assert copied
    for path in copied:
        assert (ROOT / path).exists(), f"Containerfile copies missing {path}"
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert cmd == ["flockrt", "run", "configs/flock.toml"]  # tested in test_cli.py
    assert re.search(r"^USER (?!root)", text, re.M), "the image must not run as root"


async def _loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_run_on_uvloop_and_default_loop() -> None:
    pytest.importorskip("uvloop")
    assert run(_loop_name(), "uvloop").startswith("uvloop")
    assert run(_loop_name(), "asyncio").startswith("asyncio")


def test_unknown_loop_is_refused() -> None:
    with pytest.raises(ValueError, match="asyncio or uvloop"):
        loop_factory("trio")  # type: ignore[arg-type]
    assert loop_factory("asyncio") is None


def test_missing_uvloop_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(FlockError, match="pip install 'flockrt\\[uvloop\\]'"):
        loop_factory("uvloop")
