"""The NATS bus workloads on bare nats-py: the simplest correct code, no framework.

An "agent" is a queue-group subscription whose callback decodes the task's JSON, builds the
result's JSON and publishes it; the producer is a plain connection. The JSON has the same fields
(and so the same size) as flockrt's TaskMessage / TaskResult / CapabilityRequest /
CapabilityResponse, and is encoded and decoded with msgspec (untyped) like flockrt's, so the
difference measured is the runtime, not the JSON library. No headers are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from benchmarks._harness import CAPABILITY, TASK_TYPE, TEXT, Flight, cpu_per_message

TASKS = f"tasks.{TASK_TYPE}"
RESULTS = "task.result"
REQUESTS = f"capability.{CAPABILITY}"

_encode = msgspec.json.encode
_decode = msgspec.json.decode


def task_payload(task_id: str) -> bytes:
    """A task as the producer publishes it (the fields of flockrt's TaskMessage)."""
    return _encode(
        {
            "id": task_id,
            "type": TASK_TYPE,
            "data": {"text": TEXT},
            "priority": "medium",
            "requester": "producer",
            "timeout": None,
            "metadata": None,
        }
    )


def request_payload(correlation_id: str) -> bytes:
    """A capability request (the fields of flockrt's CapabilityRequest)."""
    return _encode(
        {
            "capability": CAPABILITY,
            "parameters": {"text": TEXT},
            "requester": "producer",
            "timeout": 30000,
            "correlationId": correlation_id,
        }
    )


def _task_id(i: int) -> str:
    return f"{i:032x}"  # as long as a uuid4().hex


class _Agent:
    """One subscriber of each queue group, named like an agent."""

    def __init__(self, nc: Client, agent_id: str) -> None:
        self.nc = nc
        self.agent_id = agent_id

    async def on_task(self, msg: Msg) -> None:
        started = time.perf_counter()
        task = _decode(msg.data)
        result = {
            "taskId": task["id"],
            "result": {"words": len(task["data"]["text"].split())},
            "processedBy": self.agent_id,
            "status": "ok",
            "error": None,
            "durationMs": (time.perf_counter() - started) * 1000,
        }
        await self.nc.publish(RESULTS, _encode(result))

    async def on_request(self, msg: Msg) -> None:
        request = _decode(msg.data)
        response = {
            "correlationId": request["correlationId"],
            "result": {"words": len(request["parameters"]["text"].split())},
            "agentId": self.agent_id,
            "error": None,
        }
        await msg.respond(_encode(response))


@contextlib.asynccontextmanager
async def _flock(url: str, agents: int, nodes: int) -> AsyncIterator[Client]:
    """``agents`` subscribers spread over ``nodes`` connections; yields the producer's connection."""
    producer = await nats.connect(url, name="producer")
    workers = [await nats.connect(url, name=f"worker-{n}") for n in range(nodes)]
    try:
        for i in range(agents):
            nc = workers[i % nodes]
            agent = _Agent(nc, f"agent-{i:03d}")
            await nc.subscribe(TASKS, queue=TASKS, cb=agent.on_task)
            await nc.subscribe(REQUESTS, queue=REQUESTS, cb=agent.on_request)
        for nc in workers:
            await nc.flush()
        yield producer
    finally:
        for nc in [producer, *workers]:
            await nc.close()


async def fanout(url: str, n: int, agents: int, nodes: int, window: int) -> dict[str, Any]:
    """Publish ``n`` tasks on tasks.general (at most ``window`` in flight); count the results."""
    async with _flock(url, agents, nodes) as producer:
        flight = Flight(n, window)

        async def on_result(msg: Msg) -> None:
            flight.arrived(_decode(msg.data)["taskId"])

        await producer.subscribe(RESULTS, cb=on_result)
        await producer.flush()
        async with asyncio.timeout(120):
            for i in range(n):
                await flight.room()
                task_id = _task_id(i)
                flight.sent[task_id] = time.perf_counter()
                await producer.publish(TASKS, task_payload(task_id))
            await producer.flush()
            await flight.done
        return flight.outcome()


async def request_rate(url: str, requesters: int, per_requester: int, agents: int, nodes: int) -> float:
    """Requests/s of ``requesters`` concurrent loops of ``per_requester`` sequential requests."""
    async with _flock(url, agents, nodes) as producer:
        answers: list[Any] = []
        ids = itertools.count()

        async def request() -> Any:
            reply = await producer.request(REQUESTS, request_payload(_task_id(next(ids))), timeout=30)
            return _decode(reply.data)["result"]

        async def requester() -> None:
            for _ in range(per_requester):
                answers.append(await request())

        await request()  # sets up nats-py's shared response subscription
        async with asyncio.timeout(120):
            start = time.perf_counter()
            await asyncio.gather(*(requester() for _ in range(requesters)))
            elapsed = time.perf_counter() - start
    assert len(answers) == requesters * per_requester and answers[-1] == {"words": len(TEXT.split())}
    return requesters * per_requester / elapsed


async def worker_cpu(url: str, n: int, agents: int) -> float:
    """CPU microseconds per task of a worker: ``n`` task messages handed to an agent's
    subscription callback, each answered with a result published on task.result (see
    ``_bus_flockrt.worker_cpu``; which of the group's subscribers gets one costs nothing)."""
    nc = await nats.connect(url, name="worker")
    try:
        agent = _Agent(nc, "agent-000")
        messages = [Msg(nc, subject=TASKS, data=task_payload(_task_id(i))) for i in range(n)]
        return await cpu_per_message(nc.flush, agent.on_task, messages)
    finally:
        await nc.close()
