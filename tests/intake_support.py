"""Helpers of the capacity-aware intake and graceful-stop tests: flockrt nodes in this process
and in processes of their own (tests/intake_node.py), and a plain client's view of the results."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg

from flockrt import ActorSystem
from flockrt.agents.agent import Agent, handles_task
from flockrt.bus.connection import NatsConnection
from flockrt.bus.flock import NatsFlock
from flockrt.bus.lanes import CoreLane
from flockrt.wire.schema import TaskMessage

ROOT = Path(__file__).resolve().parent.parent
TASK_TYPE = "work"


class Slow(Agent):
    """Handles ``work`` tasks, each taking ``seconds``; records the ids it started."""

    def __init__(self, agent_id: str, slots: int, seconds: float, started: list[str]) -> None:
        super().__init__(agent_id, max_concurrent_tasks=slots)
        self.seconds = seconds
        self.started = started

    @handles_task(TASK_TYPE)
    async def work(self, task: TaskMessage) -> str:
        self.started.append(task.id)
        await asyncio.sleep(self.seconds)
        return task.id


class Node:
    """A flockrt node in this process with one Slow agent of ``slots`` slots."""

    def __init__(self, url: str, name: str, slots: int, seconds: float, **options: Any) -> None:
        self.name = name
        self.slots = slots
        self.seconds = seconds
        self.started: list[str] = []
        self.system = ActorSystem(name, shutdown_timeout=2.0)
        self.bus = NatsConnection(url, name=name)
        self.options = options
        self.flock: NatsFlock

    async def __aenter__(self) -> Node:
        await self.system.__aenter__()
        await self.bus.start()
        self.flock = NatsFlock(self.system, self.bus, node=self.name, **self.options)
        await self.flock.start()
        await self.system.spawn(Slow, f"{self.name}-agent", self.slots, self.seconds, self.started)
        await self.flock.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.system.shutdown()
        await self.flock.close()
        await self.bus.close()

    @property
    def lane(self) -> CoreLane:
        return self.flock.intake.lanes[TASK_TYPE]


class Results:
    """``task.result`` as a plain client sees it: results by task id, in arrival order."""

    def __init__(self) -> None:
        self.by_task: dict[str, list[dict[str, Any]]] = {}
        self.count = 0
        self.last_at = 0.0

    async def handle(self, msg: Msg) -> None:
        result = json.loads(msg.data)
        self.by_task.setdefault(result["taskId"], []).append(result)
        self.count += 1
        self.last_at = asyncio.get_running_loop().time()

    def ok(self) -> set[str]:
        return {task for task, results in self.by_task.items() if any(r["status"] == "ok" for r in results)}

    def errors(self) -> list[dict[str, Any]]:
        return [r for results in self.by_task.values() for r in results if r["status"] == "error"]


async def collect_results(client: nats.NATS) -> Results:
    results = Results()
    await client.subscribe("task.result", cb=results.handle)
    await client.flush()
    return results


def task_payload(task_id: str) -> bytes:
    return json.dumps({"id": task_id, "type": TASK_TYPE, "data": task_id}).encode()


async def publish_tasks(client: nats.NATS, ids: list[str], *, durable: bool) -> None:
    """Publish tasks as a plain AI Flock client does (core), or store them in FLOCK_TASKS."""
    if durable:
        js = client.jetstream()
        for task_id in ids:
            await js.publish(f"tasks.{TASK_TYPE}", task_payload(task_id), headers={"Nats-Msg-Id": task_id})
    else:
        for task_id in ids:
            await client.publish(f"tasks.{TASK_TYPE}", task_payload(task_id))
        await client.flush()


async def keeper_of(client: nats.NATS) -> str | None:
    """The node that answers as keeper of the ``work`` tasks, or None."""
    try:
        answer = await client.request(
            f"flockrt.intake.{TASK_TYPE}.keeper", b'{"node": "", "capacity": 0}', timeout=0.5
        )
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return None
    node: str = json.loads(answer.data)["node"]
    return node


async def wait_keeper(client: nats.NATS, node: str, timeout: float = 10.0) -> None:
    """Wait until ``node`` is the keeper of the ``work`` tasks (each probe is a round trip)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (keeper := await keeper_of(client)) != node:
        if loop.time() > deadline:
            raise AssertionError(f"{node} is not the keeper after {timeout} s (the keeper is {keeper})")


class Process:
    """tests/intake_node.py in a process of its own; its ``start <id>`` lines are collected."""

    def __init__(
        self, url: str, name: str, slots: int, seconds: float, mode: str, ack_wait: float = 10.0
    ) -> None:
        self.args = [url, name, str(slots), str(seconds), mode, str(ack_wait)]
        self.name = name
        self.started: list[str] = []
        self.stopped: dict[str, int] | None = None
        self.first_start = asyncio.Event()
        self._ready = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Process:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.intake_node",
            *self.args,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())
        async with asyncio.timeout(20):
            await self._ready.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc = self._proc
        assert proc is not None
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        if self._reader is not None:
            await self._reader

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for raw in self._proc.stdout:
            line = raw.decode().strip()
            if line == "ready":
                self._ready.set()
            elif line.startswith("start "):
                self.started.append(line[len("start ") :])
                self.first_start.set()
            elif line.startswith("stopped "):
                self.stopped = json.loads(line[len("stopped ") :])

    def kill(self) -> None:
        """kill -9."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)

    async def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, and wait for the process to end; its exit code."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout):
            code = await self._proc.wait()
            if self._reader is not None:
                await self._reader
        return code


def starts(*processes: Process | Node) -> Counter[str]:
    """How many times each task id started, over the given nodes."""
    return Counter(task for process in processes for task in process.started)
