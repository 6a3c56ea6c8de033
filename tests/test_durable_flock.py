"""Durable mode of the flock: tasks survive failing handlers and a killed-and-restarted server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats
from nats.aio.msg import Msg

from flockrt import ActorSystem
from flockrt.agents.agent import Agent, handles_task
from flockrt.bus.connection import NatsConnection
from flockrt.bus.durable import DurableTasks
from flockrt.bus.embedded import EmbeddedNats
from flockrt.bus.flock import NatsFlock
from flockrt.wire.schema import Codec, TaskMessage, TaskResult
from tests.conftest import wait_for


class Flaky(Agent):
    """Fails the first attempt of every task whose number is even; gated by the test."""

    max_concurrent_tasks = 4

    def __init__(self, agent_id: str, attempts: dict[str, int], gate: asyncio.Event) -> None:
        super().__init__(agent_id)
        self.attempts = attempts
        self.gate = gate

    @handles_task("durable")
    async def run(self, task: TaskMessage) -> Any:
        await self.gate.wait()
        self.attempts[task.id] = self.attempts.get(task.id, 0) + 1
        if task.data % 2 == 0 and self.attempts[task.id] == 1:
            raise RuntimeError("first attempt fails")
        return task.data * 10


class Results:
    def __init__(self) -> None:
        self.ok: dict[str, Any] = {}

    async def handle(self, msg: Msg) -> None:
        result = json.loads(msg.data)
        if result["status"] == "ok":
            self.ok[result["taskId"]] = result["result"]


async def durable_node(url: str, name: str, attempts: dict[str, int], gate: asyncio.Event):  # type: ignore[no-untyped-def]
    bus = NatsConnection(url, name=name, reconnect_wait=0.05, max_backoff=0.1)
    await bus.start()
    system = ActorSystem(name)
    tasks = DurableTasks(bus, Codec(), backoff=(0.01, 0.02), ack_wait=2.0, fetch_timeout=0.2)
    flock = NatsFlock(system, bus, node=name, durable=tasks)
    await flock.start()
    await system.spawn(Flaky, f"{name}-agent", attempts, gate)
    await flock.flush()
    return system, bus, flock


async def stop_node(system: ActorSystem, bus: NatsConnection, flock: NatsFlock) -> None:
    await system.shutdown()
    await flock.close()
    await bus.close()


async def test_failed_attempts_are_retried_until_every_task_succeeds(nats_server: EmbeddedNats) -> None:
    attempts: dict[str, int] = {}
    gate = asyncio.Event()
    gate.set()
    results = Results()
    plain = await nats.connect(nats_server.url, allow_reconnect=False)
    await plain.subscribe("task.result", cb=results.handle)
    system, bus, flock = await durable_node(nats_server.url, "node-a", attempts, gate)
    try:
        ids = [await flock.submit("durable", i) for i in range(20)]
        await wait_for(lambda: len(results.ok) == 20, timeout=20)
        assert {results.ok[task_id] for task_id in ids} == {i * 10 for i in range(20)}
        assert flock.durable is not None and flock.durable.stats.redelivered >= 10
        waited = await flock.submit("durable", 7, wait=True, timeout=10)
        assert isinstance(waited, TaskResult) and waited.result == 70
    finally:
        await stop_node(system, bus, flock)
        await plain.close()


async def test_a_killed_and_restarted_server_loses_no_task(nats_server: EmbeddedNats) -> None:
    attempts: dict[str, int] = {}
    gate = asyncio.Event()  # closed: the agents hold their first tasks while the server dies
    system, bus, flock = await durable_node(nats_server.url, "node-a", attempts, gate)
    try:
        ids = [await flock.submit("durable", i) for i in range(12)]
        await wait_for(
            lambda: flock.intake._consumers["durable"].running == 4
        )  # in hand, waiting at the gate
        await nats_server.kill()
        await nats_server.restart()
        await bus.wait_connected(timeout=10)
        gate.set()
        await wait_for(lambda: all(attempts.get(task_id, 0) >= 1 for task_id in ids), timeout=20)
        # Every even task failed once and had to come back from the stream after the restart.
        await wait_for(
            lambda: all(attempts[t] >= 2 for t, i in zip(ids, range(12), strict=True) if i % 2 == 0),
            timeout=20,
        )
    finally:
        await stop_node(system, bus, flock)
    assert sorted(attempts) == sorted(ids)  # none lost (a task in hand at the kill may run twice)


async def test_the_config_switch_turns_durable_mode_on(tmp_path: Any) -> None:
    from flockrt.config import load_config
    from flockrt.runtime import Flock

    path = tmp_path / "flock.toml"
    path.write_text('[nats]\nport = 0\ndurable = true\n[[agents]]\nid = "echo"\nclass = "echo"\n')
    async with Flock(load_config(path)) as running:
        flock = running.flock
        assert isinstance(flock, NatsFlock) and flock.durable is not None
        result = await flock.submit("general", "stored first", wait=True, timeout=10)
        assert isinstance(result, TaskResult) and result.result == "stored first"
        durable = flock.durable
        await wait_for(lambda: durable.stats.acked == 1)  # acked right after the result went out
