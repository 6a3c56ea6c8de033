"""A flockrt node in its own process, for tests that need two real processes.

    python -m tests.flock_node NATS_URL NODE_NAME AGENT_ID [AGENT_ID ...]

Prints ``ready`` once its agents are announced and serving, and runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from flockrt import ActorSystem
from flockrt.agents.agent import Agent, capability, handles_task
from flockrt.bus.connection import NatsConnection
from flockrt.bus.flock import NatsFlock
from flockrt.wire.schema import TaskMessage


class Worker(Agent):
    max_concurrent_tasks = 8

    @handles_task("general")
    async def general(self, task: TaskMessage) -> dict[str, Any]:
        return {"echo": task.data}

    @capability("text-analysis")
    async def analyze(self, text: str) -> dict[str, int]:
        return {"words": len(text.split())}


async def main(url: str, node: str, agent_ids: list[str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bus = NatsConnection(url, name=node)
    await bus.start()
    async with ActorSystem(node) as system:
        flock = NatsFlock(system, bus, node=node)
        await flock.start()
        for agent_id in agent_ids:
            await system.spawn(Worker, agent_id)
        await flock.flush()
        print("ready", flush=True)
        await stop.wait()
        await system.shutdown()
        await flock.close()
    await bus.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
