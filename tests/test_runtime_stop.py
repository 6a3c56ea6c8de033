"""A flock's stop keeps to its one budget, and start-up errors name the right key."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import nats
import pytest

from flockrt.agents.agent import Agent, handles_task
from flockrt.bus.embedded import EmbeddedNats
from flockrt.config import ConfigError, FlockConfig, McpConfig, NatsConfig, RuntimeConfig, load_config
from flockrt.errors import NatsServerError
from flockrt.runtime import Flock
from flockrt.wire.schema import TaskMessage
from tests.conftest import wait_for
from tests.intake_support import TASK_TYPE, publish_tasks, wait_keeper


class Stuck(Agent):
    """Handles ``work`` tasks that never end by themselves."""

    def __init__(self, agent_id: str, *, started: list[str]) -> None:
        super().__init__(agent_id, max_concurrent_tasks=1)
        self.started = started

    @handles_task(TASK_TYPE)
    async def work(self, task: TaskMessage) -> str:
        self.started.append(task.id)
        await asyncio.Event().wait()
        return task.id


async def test_a_stop_with_work_that_never_ends_keeps_to_its_budget(nats_server: EmbeddedNats) -> None:
    """Gateway drain, intake stop and the actors' stop share one deadline (they once took a
    budget each: 2.5 times the configured one)."""
    client = await nats.connect(nats_server.url, allow_reconnect=False)
    started: list[str] = []
    config = FlockConfig(
        runtime=RuntimeConfig(name="stuck"),
        nats=NatsConfig(url=nats_server.url, prefetch=0),
        mcp=McpConfig(port=0),
    )
    try:
        flock = Flock(config)
        await flock.start()
        try:
            await flock.spawn_pool(Stuck, 1, started=started)
            await wait_keeper(client, "stuck")
            await publish_tasks(client, ["t1", "t2"], durable=False)
            await wait_for(lambda: started == ["t1"], timeout=10)
        finally:
            begun = time.monotonic()
            await flock.stop(timeout=2.0)
            took = time.monotonic() - begun
    finally:
        await client.close()
    # The budget, plus what closing the connections takes (well under a second here).
    assert 1.9 <= took < 3.5, took


async def test_a_taken_monitoring_port_is_named_as_such(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = FlockConfig(nats=NatsConfig(port=0, monitor_port=port, store_dir=str(tmp_path)))
        with pytest.raises(NatsServerError, match=r"monitoring on 127\.0\.0\.1:\d+.*monitor_port"):
            async with Flock(config):
                pass


@pytest.mark.parametrize(
    ("line", "env", "message"),
    [
        ("prefetch = -1", {}, r"nats.prefetch: expected >= 0, got -1"),
        ("ack_wait = 0", {}, r"nats.ack_wait: expected 1..1000000000, got 0"),
        ("", {"NATS_PREFETCH": "-2"}, r"nats.prefetch: expected >= 0, got -2"),
        ("", {"NATS_ACK_WAIT": "soon"}, r"NATS_ACK_WAIT: expected an integer \(milliseconds\), got 'soon'"),
    ],
)
def test_intake_keys_out_of_range_are_config_errors(
    tmp_path: Path, line: str, env: dict[str, str], message: str
) -> None:
    path = tmp_path / "flock.toml"
    path.write_text(f"[nats]\n{line}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path, env=env)


@pytest.mark.parametrize("durable", [False, True])
async def test_an_agent_that_joins_during_the_stop_takes_no_tasks(
    nats_server: EmbeddedNats, durable: bool
) -> None:
    """A supervisor restarting an agent after intake stopped must not open intake again (in
    durable mode its fetches would be cut off by the agents' stop and run twice elsewhere)."""
    started: list[str] = []
    config = FlockConfig(
        runtime=RuntimeConfig(name="late"), nats=NatsConfig(url=nats_server.url, durable=durable)
    )
    async with Flock(config) as flock:
        intake = flock.running.intake  # type: ignore[attr-defined]
        await flock.running.stop_intake(0.0)  # type: ignore[attr-defined]
        await flock.spawn_pool(Stuck, 1, started=started)  # joins: a restart during the stop looks so
        assert intake.lanes == {} and intake._consumers == {}
        assert intake._batch_subscription is None
