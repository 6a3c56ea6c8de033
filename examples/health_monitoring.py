"""AI Flock scenario 3, health monitoring: heartbeats plus periodic health-check queries; an agent
that stops is reported.

A monitor on its own node watches the flock two ways: the directory (fed by announcements and
heartbeats: an agent that says goodbye, or misses three heartbeats, goes offline) and a health
query sent to every online agent each round. Midway, one agent is stopped; the monitor reports
it. Run it with ``python examples/health_monitoring.py`` (embedded nats-server, or ``NATS_URL``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import flockrt
from flockrt.config import FlockConfig, NatsConfig, RuntimeConfig
from flockrt.runtime import Flock


class Service(flockrt.Agent):
    """An agent that answers ``health`` queries with how it is doing."""

    @flockrt.capability("service")
    async def serve(self, request: Any = None) -> str:
        return "served"

    async def on_message(self, message: flockrt.DirectMessage) -> Any:
        if message.type == "query" and message.message == "health":
            heartbeat = self.heartbeat()
            return {
                "status": "healthy",
                "uptimeMs": heartbeat.uptime,
                "tasksProcessed": heartbeat.tasks_processed,
            }
        return await super().on_message(message)


@dataclass
class HealthMonitor:
    """Checks every agent of the flock each round and reports what changed.

    Attributes:
        flock: The monitor's flock (its directory is fed by heartbeats).
        timeout: Seconds a health query may take before the agent counts as not answering.
        reports: One line per finding, in order.
    """

    flock: flockrt.LocalFlock
    timeout: float = 2.0
    reports: list[str] = field(default_factory=list)
    rounds: int = 0
    _offline: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.changed = asyncio.Event()
        self._unsubscribe = self.flock.directory.subscribe(self._on_directory)

    def close(self) -> None:
        self._unsubscribe()

    def _on_directory(self, agent_id: str, info: Any) -> None:
        if info is not None and info.status == "offline" and agent_id not in self._offline:
            self._offline.add(agent_id)
            self.report(f"{agent_id} is offline (last seen {info.last_seen:%H:%M:%S.%f})")
        elif info is not None and info.status == "online":
            self._offline.discard(agent_id)

    def report(self, line: str) -> None:
        self.reports.append(line)
        self.changed.set()
        print(line)

    async def check_once(self) -> dict[str, Any]:
        """Query every online agent for its health; return the answers by agent id."""
        agents = self.flock.list_agents("online")
        answers = await asyncio.gather(*(self._query(agent.id) for agent in agents))
        return dict(zip((agent.id for agent in agents), answers, strict=True))

    async def _query(self, agent_id: str) -> Any:
        try:
            return await self.flock.send_message(
                agent_id, "health", type="query", sender="monitor", timeout=self.timeout
            )
        except (flockrt.UnknownAgent, flockrt.WorkTimeout) as exc:
            self.report(f"{agent_id} does not answer its health check: {exc}")
            return None

    async def run(self, interval: float) -> None:
        """Check every ``interval`` seconds until cancelled; ``rounds`` counts the checks."""
        while True:
            answers = await self.check_once()
            self.rounds += 1
            healthy = sorted(agent for agent, answer in answers.items() if answer is not None)
            print(f"round {self.rounds}: healthy {healthy}")
            self.changed.set()
            await asyncio.sleep(interval)


def node_config(name: str, url: str) -> FlockConfig:
    # Heartbeats every 200 ms, so a silent agent is offline after 0.6 s.
    return FlockConfig(
        runtime=RuntimeConfig(name=name), nats=NatsConfig(url=url, port=0, heartbeat_interval=200)
    )


async def until(monitor: HealthMonitor, condition: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            monitor.changed.clear()
            await monitor.changed.wait()


async def main(nats_url: str | None = None) -> list[str]:
    url = nats_url or os.environ.get("NATS_URL") or "embedded"
    async with Flock(node_config("services", url)) as services:
        assert services.flock is not None and services.nats_url is not None
        pool = await services.flock.spawn_pool(Service, 3)
        async with Flock(node_config("monitor", services.nats_url)) as node:
            assert node.flock is not None
            monitor = HealthMonitor(node.flock)
            await node.flock.wait_for_agents(3, capability="service")
            checks = asyncio.create_task(monitor.run(interval=0.2))
            try:
                await until(monitor, lambda: monitor.rounds >= 1)
                await flockrt.Supervisor.terminate_child(pool, "service-2")  # it says goodbye on NATS
                await until(monitor, lambda: any("service-2" in line for line in monitor.reports))
                rounds = monitor.rounds
                await until(monitor, lambda: monitor.rounds > rounds)  # a full round without it
            finally:
                checks.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await checks
                monitor.close()
    return monitor.reports


if __name__ == "__main__":
    asyncio.run(main())
