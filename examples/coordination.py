"""AI Flock scenario 2, coordination: a coordinator lists the workers of the flock, tells each
by direct message how many tasks to expect, deals the tasks out over NATS (each worker gets
exactly its share, as a direct request to it) and collects every result; each worker's own
count then matches what it was told.

Two flockrt nodes share one NATS server, as two processes on two machines would: a worker node
with a pool of agents, and a coordinator node with none (so every task crosses NATS). Run it
with ``python examples/coordination.py``; it starts an embedded nats-server on a free port, or
uses ``NATS_URL`` if set.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import flockrt
from flockrt.config import FlockConfig, NatsConfig, RuntimeConfig
from flockrt.runtime import Flock

TASKS = 60


class Worker(flockrt.Agent):
    """Squares numbers (``square`` tasks); keeps count of what it was told to expect."""

    max_concurrent_tasks = 4

    def __init__(self, agent_id: str, **options: Any) -> None:
        super().__init__(agent_id, **options)
        self.expected = 0
        self.handled = 0

    @flockrt.capability("squaring")
    async def square(self, n: int) -> int:
        return n * n

    async def on_message(self, message: flockrt.DirectMessage) -> Any:
        body = message.message
        if message.type == "command" and isinstance(body, dict) and "expect" in body:
            self.expected = int(body["expect"])
            return None
        if message.type == "query" and isinstance(body, dict) and "square" in body:
            self.handled += 1
            return {"n": body["square"], "square": await self.square(body["square"])}
        if message.type == "query" and body == "progress":
            return {"expected": self.expected, "handled": self.handled}
        return await super().on_message(message)


def node_config(name: str, url: str) -> FlockConfig:
    return FlockConfig(runtime=RuntimeConfig(name=name), nats=NatsConfig(url=url, port=0))


async def coordinate(coordinator: Flock, tasks: int = TASKS) -> dict[str, Any]:
    """List the workers, tell each its share, deal the tasks out, collect every result."""
    flock = coordinator.running  # the Flock interface: here a NatsFlock
    workers = sorted(agent.id for agent in flock.list_agents("online", capability="squaring"))
    if not workers:
        raise flockrt.NoCapableAgent("capability", "squaring")
    # Task n goes to worker n mod len(workers): the shares the workers are told.
    shares = {worker: list(range(i, tasks, len(workers))) for i, worker in enumerate(workers)}
    for worker, numbers in shares.items():
        await flock.send(worker, {"expect": len(numbers)}, sender="coordinator")

    # Each query is a NATS request to one worker's own subject; the answers come back to us.
    results = await asyncio.gather(
        *(
            flock.query(worker, {"square": n}, sender="coordinator", timeout=30)
            for worker, numbers in shares.items()
            for n in numbers
        )
    )
    progress = {w: await flock.query(w, "progress", sender="coordinator") for w in workers}
    squares = sorted(result["square"] for result in results)
    return {"workers": workers, "results": len(results), "squares": squares, "progress": progress}


async def main(nats_url: str | None = None) -> dict[str, Any]:
    url = nats_url or os.environ.get("NATS_URL") or "embedded"
    async with Flock(node_config("workers", url)) as workers:
        assert workers.flock is not None and workers.nats_url is not None
        await workers.flock.spawn_pool(Worker, 3)
        async with Flock(node_config("coordinator", workers.nats_url)) as coordinator:
            assert coordinator.flock is not None
            await coordinator.flock.wait_for_agents(3, capability="squaring")
            summary = await coordinate(coordinator)
    for worker, seen in summary["progress"].items():
        print(f"{worker}: told to expect {seen['expected']}, handled {seen['handled']}")
    print(f"{summary['results']} results collected from {len(summary['workers'])} workers")
    return summary


if __name__ == "__main__":
    asyncio.run(main())
