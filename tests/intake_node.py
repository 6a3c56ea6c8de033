"""A flockrt node in its own process, for the capacity-aware intake and graceful-stop tests.

    python -m tests.intake_node NATS_URL NODE_NAME SLOTS SECONDS core|durable [ACK_WAIT]

One agent with ``SLOTS`` slots handles ``work`` tasks, each taking ``SECONDS`` (asyncio.sleep).
It prints ``ready`` once serving, ``start <task id>`` as each task starts, and on SIGTERM stops
as the runtime does (intake first, then the agents, within 10 s), printing ``stopped`` with
the intake's counters as JSON.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

from flockrt import ActorSystem
from flockrt.agents.agent import Agent, handles_task
from flockrt.bus.connection import NatsConnection
from flockrt.bus.flock import NatsFlock
from flockrt.wire.schema import TaskMessage

SHUTDOWN_TIMEOUT = 10.0


class Worker(Agent):
    def __init__(self, agent_id: str, slots: int, seconds: float) -> None:
        super().__init__(agent_id, max_concurrent_tasks=slots)
        self.seconds = seconds

    @handles_task("work")
    async def work(self, task: TaskMessage) -> dict[str, Any]:
        print("start", task.id, flush=True)
        await asyncio.sleep(self.seconds)
        return {"done": task.id}


async def main(url: str, node: str, slots: int, seconds: float, mode: str, ack_wait: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bus = NatsConnection(url, name=node)
    await bus.start()
    async with ActorSystem(node) as system:
        flock = NatsFlock(system, bus, node=node, durable=mode == "durable", ack_wait=ack_wait)
        await flock.start()
        await system.spawn(Worker, f"{node}-worker", slots, seconds)
        await flock.flush()
        print("ready", flush=True)
        await stop.wait()
        await flock.stop_intake(SHUTDOWN_TIMEOUT)
        await system.shutdown(timeout=SHUTDOWN_TIMEOUT)
        stats = flock.intake.stats
        counts = {"taken": stats.taken, "handed_back": stats.handed_back, "refused": stats.refused}
        await flock.close()
    await bus.close()
    print("stopped", json.dumps(counts | flock.durable_counts()), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(
        main(
            args[0], args[1], int(args[2]), float(args[3]), args[4], float(args[5]) if len(args) > 5 else 10.0
        )
    )
