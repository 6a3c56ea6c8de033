"""The dispatcher's fast path (``flock/inline.py``) at its edges: the fair choice it takes
without ``free_member`` when the free heap's top entry is current, and an agent that has begun
stopping (its cell closed, not yet out of the flock) at the top of that heap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from flockrt import ActorSystem, ChildSpec, Supervisor
from flockrt.agents.agent import Agent, handles_task
from flockrt.flock.local import LocalFlock
from flockrt.wire.schema import DirectMessage, TaskMessage, TaskResult
from tests.conftest import wait_for


class Busy(Agent):
    """A handler that never waits; a direct message keeps it busy until its gate opens."""

    def __init__(self, agent_id: str, gate: asyncio.Event) -> None:
        super().__init__(agent_id)
        self.gate = gate
        self.in_message = False

    @handles_task("quick")
    async def quick(self, task: TaskMessage) -> str:
        return self.agent_id

    async def on_message(self, message: DirectMessage) -> Any:
        if message.message == "crash":
            raise RuntimeError("crash requested")
        self.in_message = True
        await self.gate.wait()
        return None


@pytest.fixture
async def flock() -> AsyncIterator[LocalFlock]:
    async with ActorSystem("fast-path", shutdown_timeout=2.0) as system:
        yield LocalFlock(system, node="node-a", heartbeat_interval=60)


async def test_an_agent_that_began_stopping_gets_no_work_from_the_fast_path(flock: LocalFlock) -> None:
    gate = asyncio.Event()
    first = await flock.system.spawn(Busy, "a-1", gate)  # the smaller id: the heap's top
    await flock.system.spawn(Busy, "a-2", gate)
    agent = first._cell._actor  # type: ignore[attr-defined]
    assert isinstance(agent, Busy)
    dispatcher = flock.dispatcher
    warm = [dispatcher.run_task_now(flock.new_task("quick", task_id=f"w-{i}"), f"w-{i}") for i in range(2)]
    assert [r.processed_by if r else None for r in warm] == ["a-1", "a-2"]  # a-1's entry: the top
    first.tell(DirectMessage(id="m-1", sender="test", to="a-1"))
    await wait_for(lambda: agent.in_message)
    stopping = asyncio.ensure_future(first.stop())  # it drains its mailbox before on_stop
    await wait_for(lambda: not first.is_alive)
    assert dispatcher.is_local("a-1")  # closed, still a member: its entry tops the free heap
    results: list[TaskResult] = []
    flock.on_result(results.append)

    def start(task_id: str) -> TaskResult | None:
        # As a lane starts a task: the fast path, else the usual path (which reports the result).
        task = flock.new_task("quick", task_id=task_id)
        result = dispatcher.run_task_now(task, task_id)
        if result is None:
            dispatcher.dispatch_task(task)
        return result

    ran = [start(f"t-{i}") for i in range(5)]
    assert all(r is None or r.processed_by == "a-2" for r in ran)
    assert ran[-1] is not None  # (once the usual path dropped a-1's entry, if it had to)
    await wait_for(lambda: len(results) == 5)
    assert [(r.task_id, r.status, r.processed_by) for r in results] == [
        (f"t-{i}", "ok", "a-2") for i in range(5)
    ]
    assert agent.tasks_processed == 1

    gate.set()
    await stopping
    assert not dispatcher.is_local("a-1")


async def test_the_fast_path_takes_the_fair_choice_as_free_member_would(flock: LocalFlock) -> None:
    # The fast path's own look at the heap's top, free_member when that entry is stale (a slot
    # taken since) and when a member gave a slot back (Skill.lowered): the same order.
    gate = asyncio.Event()
    for agent_id in ("c", "b", "a"):
        await flock.system.spawn(Busy, agent_id, gate)
    dispatcher = flock.dispatcher

    def run(i: int) -> str:
        result = dispatcher.run_task_now(flock.new_task("quick", task_id=f"t-{i}"), f"t-{i}")
        assert result is not None and result.status == "ok"
        return result.processed_by

    assert [run(i) for i in range(9)] == ["a", "b", "c"] * 3  # handed least, then the smallest id
    skill = dispatcher.skill("task", "quick")
    assert skill is not None
    member = dispatcher.free_member(skill)
    assert member is not None and member.card.id == "a"
    member.running += 1  # its one slot taken (as a handover does): its entry is stale
    member.handed[skill] += 1
    assert run(9) == "b"
    dispatcher.work_done("a")  # the slot given back
    assert [run(i) for i in range(10, 13)] == ["c", "a", "b"]  # handed a 4, b 4, c 3; then ties


async def test_a_restarted_agent_runs_its_fast_path_tasks_with_its_own_handlers(flock: LocalFlock) -> None:
    # The handlers that never wait are bound as an agent joins its flock: a restart (a new
    # instance) joins again, and its tasks run on the new instance.
    gate = asyncio.Event()
    spec = ChildSpec(id="busy", factory=Busy, args=("busy-1", gate))
    await flock.system.spawn(Supervisor, [spec], name="agents")
    dispatcher = flock.dispatcher
    before = dispatcher.run_task_now(flock.new_task("quick", task_id="t-0"), "t-0")
    assert before is not None and before.status == "ok"
    card = dispatcher.member("busy-1")
    await flock.send_message("busy-1", "crash")
    await wait_for(lambda: dispatcher.member("busy-1") not in (None, card))  # the new instance's
    after = dispatcher.run_task_now(flock.new_task("quick", task_id="t-1"), "t-1")
    assert after is not None and (after.status, after.result) == ("ok", "busy-1")
