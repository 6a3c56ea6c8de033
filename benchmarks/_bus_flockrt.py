"""The NATS bus workloads on flockrt: agents in NatsFlock nodes, a producer node submitting.

Every "node" is what one flockrt process would run: an ActorSystem, its own NatsConnection and a
NatsFlock. The producer is a node without agents; the agents are spread over worker nodes. All
of them live in this process and share its event loop (as do the bare baseline's connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.msg import Msg

from benchmarks._harness import CAPABILITY, TASK_TYPE, TEXT, Flight, cpu_per_message
from flockrt import ActorSystem, Agent, TaskMessage, TaskResult, capability, handles_task
from flockrt.bus.connection import Message, NatsConnection
from flockrt.bus.flock import NatsFlock
from flockrt.wire.schema import CapabilityRequest, Codec

_CODEC = Codec()


class Worker(Agent):
    """Counts the words of a text: as a task and as a capability."""

    @handles_task(TASK_TYPE)
    async def count(self, task: TaskMessage) -> dict[str, int]:
        return {"words": len(task.data["text"].split())}

    @capability(CAPABILITY)
    async def analyze(self, text: str) -> dict[str, int]:
        return {"words": len(text.split())}


def task_payload(task_id: str) -> bytes:
    """A task as flockrt's producer publishes it (for the payload-size check)."""
    task = TaskMessage(id=task_id, type=TASK_TYPE, data={"text": TEXT}, requester="producer")
    return _CODEC.encode(task)


def request_payload(correlation_id: str) -> bytes:
    request = CapabilityRequest(
        capability=CAPABILITY,
        parameters={"text": TEXT},
        requester="producer",
        timeout=30000,
        correlation_id=correlation_id,
    )
    return _CODEC.encode(request)


class Node:
    """One flockrt 'process': an actor system, a NATS connection and a NatsFlock."""

    def __init__(self, url: str, name: str, batch_max: int) -> None:
        self.name = name
        self.system = ActorSystem(name, shutdown_timeout=5.0)
        self.bus = NatsConnection(url, name=name)
        self.flock = NatsFlock(
            self.system, self.bus, node=name, heartbeat_interval=600.0, batch_max=batch_max
        )

    async def start(self) -> None:
        await self.system.__aenter__()
        await self.bus.start()
        await self.bus.wait_connected(10)
        await self.flock.start()

    async def stop(self) -> None:
        await self.system.shutdown()
        await self.flock.close()
        await self.bus.close()


@contextlib.asynccontextmanager
async def _flock(url: str, agents: int, nodes: int, batch_max: int = 100) -> AsyncIterator[Node]:
    """A producer node and ``agents`` Workers over ``nodes`` worker nodes; yields the producer
    once it has heard every agent announce itself (announced means subscribed: a node
    subscribes to an agent's subjects before it announces the agent)."""
    producer = Node(url, "producer", batch_max)
    workers = [Node(url, f"worker-{n}", batch_max) for n in range(nodes)]
    started: list[Node] = []
    try:
        for node in [producer, *workers]:
            await node.start()
            started.append(node)
        everyone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def heard(agent_id: str, info: Any) -> None:
            if len(producer.flock.list_agents("online")) == agents and not everyone.done():
                everyone.set_result(None)

        unsubscribe = producer.flock.directory.subscribe(heard)
        for i in range(agents):
            await workers[i % nodes].system.spawn(Worker, f"agent-{i:03d}")
        async with asyncio.timeout(30):
            await everyone
        unsubscribe()
        yield producer
    finally:
        for node in reversed(started):
            await node.stop()


async def _results(producer: Node, flight: Flight) -> None:
    """Count the TaskResults on task.result, decoded as flockrt decodes them. The handler is
    a plain function, which flockrt's subscriptions take (nats-py's callbacks must be
    coroutine functions, so the bare baseline's is one)."""
    codec = producer.flock.codec

    def on_result(message: Message) -> None:
        result = codec.decode(message.subject, message.data, TaskResult)
        flight.arrived(result.task_id)

    await producer.bus.subscribe("task.result", on_result)


async def fanout(url: str, n: int, agents: int, nodes: int, window: int) -> dict[str, Any]:
    """``submit`` ``n`` tasks one by one (at most ``window`` in flight); count the results."""
    async with _flock(url, agents, nodes) as producer:
        flock = producer.flock
        flight = Flight(n, window)
        await _results(producer, flight)
        data = {"text": TEXT}
        async with asyncio.timeout(120):
            for _ in range(n):
                await flight.room()
                at = time.perf_counter()
                task_id = await flock.submit(TASK_TYPE, data)
                assert isinstance(task_id, str)
                flight.sent[task_id] = at
            await producer.bus.flush()
            await flight.done
        return flight.outcome()


async def batched_fanout(
    url: str, n: int, agents: int, nodes: int, window: int, batch: int
) -> dict[str, Any]:
    """``submit_many`` ``batch`` tasks at a time (batch_max = ``batch``); count the results."""
    async with _flock(url, agents, nodes, batch_max=batch) as producer:
        flock = producer.flock
        flight = Flight(n, window)
        await _results(producer, flight)
        items = [{"text": TEXT}] * batch
        async with asyncio.timeout(120):
            for start in range(0, n, batch):
                size = min(batch, n - start)
                await flight.room(size)
                at = time.perf_counter()
                for task_id in await flock.submit_many(TASK_TYPE, items[:size]):
                    flight.sent[task_id] = at
            await producer.bus.flush()
            await flight.done
        return flight.outcome()


async def batched_results_fanout(
    url: str, n: int, agents: int, nodes: int, window: int, batch: int
) -> dict[str, Any]:
    """``submit_many(..., results="batch")``: ``batch`` tasks per request, whose results come
    back as one message; ``window // batch`` requests in flight at once."""
    async with _flock(url, agents, nodes, batch_max=batch) as producer:
        flock = producer.flock
        flight = Flight(n, window)
        items = [{"text": TEXT}] * batch
        starts = list(range(0, n, batch))

        async def requester(mine: list[int]) -> None:
            for start in mine:
                size = min(batch, n - start)
                await flight.room(size)
                at = time.perf_counter()
                results = await flock.submit_many(TASK_TYPE, items[:size], results="batch", timeout=60)
                for result in results:
                    assert result.status == "ok", result
                    flight.sent[result.task_id] = at
                    flight.arrived(result.task_id)

        in_flight = max(1, window // batch)
        async with asyncio.timeout(120):
            await asyncio.gather(*(requester(starts[i::in_flight]) for i in range(in_flight)))
            await flight.done
        return flight.outcome()


async def request_rate(url: str, requesters: int, per_requester: int, agents: int, nodes: int) -> float:
    """Requests/s of ``requesters`` concurrent loops of ``per_requester`` sequential
    ``request_capability`` calls; the producer node has no agent, so each one crosses NATS."""
    async with _flock(url, agents, nodes) as producer:
        flock = producer.flock
        assert not flock.has_skill("capability", CAPABILITY)
        answers: list[Any] = []
        parameters = {"text": TEXT}

        async def requester() -> None:
            for _ in range(per_requester):
                answers.append(await flock.request_capability(CAPABILITY, parameters, timeout=30))

        await flock.request_capability(CAPABILITY, parameters, timeout=30)  # nats-py's response subscription
        async with asyncio.timeout(120):
            start = time.perf_counter()
            await asyncio.gather(*(requester() for _ in range(requesters)))
            elapsed = time.perf_counter() - start
    assert len(answers) == requesters * per_requester and answers[-1] == {"words": len(TEXT.split())}
    return requesters * per_requester / elapsed


async def worker_cpu(url: str, n: int, agents: int) -> float:
    """CPU microseconds per task of one worker node: ``n`` task messages handed to what nats-py
    calls for each message on the node's tasks subscription, each answered with a TaskResult
    published on task.result (to a real nats-server; nobody listens). No socket read, no
    parsing: what is left is the node's own work per task, without the rate's noise."""
    node = Node(url, "worker", batch_max=100)
    await node.start()
    try:
        for i in range(agents):
            await node.system.spawn(Worker, f"agent-{i:03d}")
        await node.flock.flush()  # the agents' subscriptions are live
        # The callback nats-py calls per message: flockrt's own, around NatsFlock._on_task
        # (reached through private attributes, for this measurement only).
        subscription = node.flock.intake.lanes[TASK_TYPE]._keeper._sub  # type: ignore[union-attr]
        assert subscription is not None
        deliver = subscription._cb
        assert deliver is not None
        nc = subscription._conn
        messages = [Msg(nc, subject=f"tasks.{TASK_TYPE}", data=task_payload(f"{i:032x}")) for i in range(n)]
        return await cpu_per_message(node.bus.flush, deliver, messages)
    finally:
        await node.stop()
