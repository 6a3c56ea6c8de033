"""``[nats] max_held``: a core-mode lane holds at most ``prefetch + max_held`` tasks waiting for
a slot; one more is refused at once with a ``FlockSaturated`` error result, counted and logged,
and the process goes on taking tasks once its backlog drains."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import nats
import pytest

from flockrt import metrics
from flockrt.agents.agent import Agent, handles_task
from flockrt.bus.embedded import EmbeddedNats
from flockrt.config import ConfigError, FlockConfig, NatsConfig, RuntimeConfig, load_config
from flockrt.runtime import Flock
from flockrt.wire.schema import TaskMessage
from tests.conftest import wait_for
from tests.intake_support import TASK_TYPE, collect_results, publish_tasks, wait_keeper
from tests.test_metrics import value


class Gated(Agent):
    """Handles ``work`` tasks, each waiting until the test opens ``gate``."""

    def __init__(self, agent_id: str, *, gate: asyncio.Event, started: list[str]) -> None:
        super().__init__(agent_id, max_concurrent_tasks=1)
        self.gate = gate
        self.started = started

    @handles_task(TASK_TYPE)
    async def work(self, task: TaskMessage) -> str:
        self.started.append(task.id)
        await self.gate.wait()
        return task.id


async def test_a_saturated_lane_refuses_beyond_max_held_at_once_and_takes_tasks_again_after(
    nats_server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flockrt.intake")
    client = await nats.connect(nats_server.url, allow_reconnect=False)
    results = await collect_results(client)
    gate = asyncio.Event()
    started: list[str] = []
    config = FlockConfig(
        runtime=RuntimeConfig(name="solo"), nats=NatsConfig(url=nats_server.url, prefetch=0, max_held=5)
    )
    try:
        async with Flock(config) as flock:
            await flock.spawn_pool(Gated, 1, gate=gate, started=started)
            await wait_keeper(client, "solo")
            with metrics.instrument(flock.system, flock=flock.running, bus=flock.bus):
                ids = [f"t{i:02d}" for i in range(20)]
                await publish_tasks(client, ids, durable=False)
                # 1 runs and 5 wait; the other 14 are answered while the first still runs.
                await wait_for(lambda: len(results.errors()) == 14 and len(started) == 1, timeout=10)
                assert not gate.is_set()
                lane = flock.running.intake.lanes[TASK_TYPE]  # type: ignore[attr-defined]
                assert lane.running == 1 and len(lane.held) == 5
                refused = results.errors()
                # (Not in publish order: a credit subscription opened before the lane became
                # keeper may deliver one of them after others.)
                assert len({error["taskId"] for error in refused}) == 14
                assert {error["errorType"] for error in refused} == {"FlockSaturated"}
                assert "raise [nats] max_held" in refused[0]["error"]
                assert "durable mode" in refused[0]["error"]
                assert value("flockrt_intake_tasks_total", event="saturated", system="solo") == 14
                assert value("flockrt_intake_tasks_total", event="taken", system="solo") == 20
                warnings = [r.getMessage() for r in caplog.records if "saturated" in r.getMessage()]
                assert len(warnings) == 1, warnings  # one line for the burst, the rest counted
                assert "FlockSaturated" in warnings[0] and "max_held 5" in warnings[0]

                gate.set()  # the backlog drains: the 6 taken ones complete
                taken = set(ids) - {error["taskId"] for error in refused}
                await wait_for(lambda: results.ok() == taken, timeout=10)
                assert len(taken) == 6 and started[0] in taken
                await publish_tasks(client, ["after1", "after2"], durable=False)
                await wait_for(lambda: results.ok() == {*taken, "after1", "after2"}, timeout=10)
                assert len(results.errors()) == 14
                assert value("flockrt_intake_tasks_total", event="saturated", system="solo") == 14
    finally:
        await client.close()
    # When the lane closes, the burst's count is logged in one more line.
    counted = [r.getMessage() for r in caplog.records if "13 more like it" in r.getMessage()]
    assert len(counted) == 1, [r.getMessage() for r in caplog.records]


def test_max_held_from_toml_and_env(tmp_path: Path) -> None:
    path = tmp_path / "flock.toml"
    path.write_text("[nats]\nmax_held = 7\n")
    assert NatsConfig().max_held == 10000
    config = load_config(path, env={})
    assert config.nats is not None and config.nats.max_held == 7
    config = load_config(path, env={"NATS_MAX_HELD": "0"})
    assert config.nats is not None and config.nats.max_held == 0
    with pytest.raises(ConfigError, match=r"NATS_MAX_HELD: expected an integer \(a count\), got 'many'"):
        load_config(path, env={"NATS_MAX_HELD": "many"})


def test_a_negative_max_held_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "flock.toml"
    path.write_text("[nats]\nmax_held = -1\n")
    with pytest.raises(ConfigError, match=r"nats.max_held: expected >= 0, got -1"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match=r"nats.max_held: expected >= 0, got -3"):
        load_config(tmp_path / "flock.toml", env={"NATS_MAX_HELD": "-3"})
