"""The AI Flock scenarios in examples/, run against a real nats-server, and standalone."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from flockrt.bus.embedded import EmbeddedNats

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


async def test_coordination_collects_every_result(nats_server: EmbeddedNats) -> None:
    summary = await load("coordination").main(nats_server.url)
    assert summary["workers"] == ["worker-1", "worker-2", "worker-3"]
    assert summary["results"] == 60
    assert summary["squares"] == [n * n for n in range(60)]
    progress = summary["progress"]
    assert sorted(seen["expected"] for seen in progress.values()) == [20, 20, 20]  # each was told its share
    assert sum(seen["handled"] for seen in progress.values()) == 60  # and all were handled, once


async def test_health_monitoring_reports_the_stopped_agent(nats_server: EmbeddedNats) -> None:
    reports = await load("health_monitoring").main(nats_server.url)
    offline = [line for line in reports if line.startswith("service-2 is offline")]
    assert len(offline) == 1
    assert not any(line.startswith(("service-1", "service-3")) for line in reports)


@pytest.mark.parametrize("example", ["coordination", "health_monitoring"])
def test_examples_run_standalone_on_an_embedded_server(example: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{example}.py")], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "the example printed nothing"
