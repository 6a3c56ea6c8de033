"""The fast path's driver of handlers that never wait (``agents/running.py``, ``_drive``): a
handler that raises, or that waits after all, fails its task alone, and the agent's next
tasks run as before, over NATS (``Dispatcher.run_task_now``) and in process (``run_now``)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest

from flockrt import ActorSystem
from flockrt.agents.agent import Agent, handles_task
from flockrt.bus.embedded import EmbeddedNats
from flockrt.flock.local import LocalFlock
from flockrt.wire.schema import TaskMessage, TaskResult
from tests.conftest import wait_for
from tests.test_bus_flock import Node

closed: list[str] = []  # the tasks whose handler that waited was closed


class Result:
    """A handler's value that a test can watch for (weakly)."""

    def __init__(self, n: int) -> None:
        self.n = n


class Quick(Agent):
    """A handler that never waits; one instance's is replaced by one that does ("sneaky")."""

    def __init__(self, agent_id: str, **options: Any) -> None:
        super().__init__(agent_id, **options)
        if agent_id == "sneaky":
            self.quick = self._waits  # type: ignore[method-assign]

    @handles_task("quick")
    async def quick(self, task: TaskMessage) -> int:
        if task.data == "fail":
            raise ValueError("cannot do this one")
        return int(task.data) * 2

    async def _waits(self, task: TaskMessage) -> int:
        try:
            await asyncio.sleep(0)
            return 0
        finally:
            closed.append(task.id)


@pytest.fixture
async def flock() -> AsyncIterator[LocalFlock]:
    async with ActorSystem("driver", shutdown_timeout=2.0) as system:
        yield LocalFlock(system, node="node-a", heartbeat_interval=60)


def test_quick_runs_inline() -> None:
    assert Quick._flockrt_inline == frozenset({"quick"})


async def test_a_failing_handler_fails_its_task_only(flock: LocalFlock) -> None:
    await flock.system.spawn(Quick, "quick-1")
    results: list[TaskResult] = []
    flock.on_result(results.append)
    for data in ("1", "fail", "2", "fail", "fail", "3"):
        flock.dispatcher.dispatch_task(flock.new_task("quick", data))
    await wait_for(lambda: len(results) == 6)
    assert [(r.status, r.result) for r in results] == [
        ("ok", 2),
        ("error", None),
        ("ok", 4),
        ("error", None),
        ("error", None),
        ("ok", 6),
    ]
    assert results[1].error_type == "ValueError" and "cannot do this one" in (results[1].error or "")


async def test_a_handler_that_waits_after_all_fails_its_task_and_is_closed(flock: LocalFlock) -> None:
    await flock.system.spawn(Quick, "sneaky")
    results: list[TaskResult] = []
    flock.on_result(results.append)
    first, second = flock.new_task("quick", "1"), flock.new_task("quick", "2")
    flock.dispatcher.dispatch_task(first)
    flock.dispatcher.dispatch_task(second)
    await wait_for(lambda: len(results) == 2)
    assert [r.status for r in results] == ["error", "error"]
    assert all("tried to wait" in (r.error or "") for r in results)
    assert closed[-2:] == [first.id, second.id]  # each closed at once, not left suspended


async def test_the_driver_keeps_no_value_between_tasks(flock: LocalFlock) -> None:
    class Keeps(Quick):
        @handles_task("keeps")
        async def keeps(self, task: TaskMessage) -> Any:
            value = Result(int(task.data))
            seen.append(weakref.ref(value))
            return value

    seen: list[weakref.ref[Result]] = []
    await flock.system.spawn(Keeps, "keeps-1")
    results: list[TaskResult] = []
    flock.on_result(results.append)
    flock.dispatcher.dispatch_task(flock.new_task("keeps", "5"))
    await wait_for(lambda: len(results) == 1)
    assert results[0].status == "ok"
    results.clear()
    gc.collect()
    assert seen[0]() is None


async def test_over_nats_a_failing_or_waiting_handler_costs_the_next_tasks_nothing(
    nats_server: EmbeddedNats,
) -> None:
    async with Node(nats_server.url, "producer") as producer, Node(nats_server.url, "worker") as worker:
        quick = await worker.system.spawn(Quick, "quick-1")
        await worker.flock.flush()
        lane = worker.flock.intake.lanes["quick"]
        submit = producer.flock.submit
        outcomes = [await submit("quick", data, wait=True, timeout=5) for data in ("1", "fail", "2")]
        assert [(o.status, o.result) for o in outcomes] == [("ok", 2), ("error", None), ("ok", 4)]
        assert outcomes[1].error_type == "ValueError"
        assert lane.stats.taken == 3 and lane.running == 0
        await quick.stop()
        await worker.system.spawn(Quick, "sneaky")
        await worker.flock.flush()
        waited = await submit("quick", "3", wait=True, timeout=5)
        assert waited.status == "error" and "tried to wait" in (waited.error or "")
        assert closed[-1] == waited.task_id and lane.running == 0
