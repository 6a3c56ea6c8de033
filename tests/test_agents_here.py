"""Work run in its waiting submitter's own Task (agents/here.py): where it runs, who owns it,
what stops it, and what each side sees then."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from flockrt import ActorSystem, ChildSpec, Supervisor
from flockrt.actors.correlation import correlation, correlation_id, current_agent
from flockrt.agents.agent import Agent, capability, handles_task
from flockrt.errors import WorkFailed, WorkTimeout
from flockrt.flock.local import LocalFlock
from flockrt.logs import ContextFilter
from flockrt.wire.schema import DirectMessage, TaskMessage, TaskResult
from tests.conftest import wait_for


class Holder(Agent):
    """Each piece of work waits for its own gate (``gates[n]``), logging where it ran."""

    max_concurrent_tasks = 4

    def __init__(
        self, agent_id: str, gates: dict[Any, asyncio.Event], log: list[Any], **options: Any
    ) -> None:
        drain_timeout = options.pop("drain_timeout", 5.0)
        super().__init__(agent_id, **options)
        self.drain_timeout = drain_timeout
        self.gates = gates
        self.log = log

    async def _hold(self, n: Any) -> Any:
        self.log.append(("start", n, asyncio.current_task(), correlation_id.get(), current_agent.get()))
        try:
            await self.gates.setdefault(n, asyncio.Event()).wait()
        except asyncio.CancelledError:
            self.log.append(("cancelled", n))
            raise
        self.log.append(("end", n))
        return n

    @handles_task("hold")
    async def hold(self, task: TaskMessage) -> Any:
        return await self._hold(task.data)

    @capability("hold")
    async def hold_capability(self, n: int) -> Any:
        return await self._hold(n)

    @handles_task("outer")
    async def outer(self, task: TaskMessage) -> Any:
        """Waits for an inner task of this same agent, run in the same Task."""
        flock: LocalFlock = self.gates["flock"]  # type: ignore[assignment]
        inner = await flock.submit("hold", task.data, wait=True)
        assert isinstance(inner, TaskResult)
        self.log.append(("inner", task.data, inner.status, inner.error))
        return inner.result

    async def on_message(self, message: DirectMessage) -> Any:
        raise RuntimeError("crash requested")


@pytest.fixture
async def flock() -> AsyncIterator[LocalFlock]:
    async with ActorSystem("here", shutdown_timeout=2.0) as system:
        yield LocalFlock(system, node="node-a", heartbeat_interval=60)


def events(log: list[Any], kind: str) -> list[Any]:
    return [event[1] for event in log if event[0] == kind]


async def test_a_waiting_submitter_runs_the_handler_in_its_own_task(flock: LocalFlock) -> None:
    gates: dict[Any, asyncio.Event] = {}
    log: list[Any] = []
    await flock.system.spawn(Holder, "holder-1", gates, log)
    tasks_before = len(asyncio.all_tasks())
    submitter = asyncio.ensure_future(flock.submit("hold", 1, wait=True, task_id="t-1"))
    requester = asyncio.ensure_future(flock.request_capability("hold", {"n": 2}))
    await wait_for(lambda: len(events(log, "start")) == 2)
    [(_, _, task_1, correlation_1, agent_1), (_, _, task_2, _, agent_2)] = log
    assert (task_1, task_2) == (submitter, requester)  # no runner Task of the agent's
    assert len(asyncio.all_tasks()) == tasks_before + 2
    assert (correlation_1, agent_1, agent_2) == ("t-1", "holder-1", "holder-1")
    gates[1].set()
    gates[2].set()
    result = await submitter
    assert isinstance(result, TaskResult) and (result.status, result.result) == ("ok", 1)
    assert await requester == 2
    assert (correlation_id.get(), current_agent.get()) == (None, None)  # the caller's context is its own
    with correlation("mine"):
        gates[3] = asyncio.Event()
        gates[3].set()
        assert (await flock.request_capability("hold", {"n": 3})) == 3
        assert log[-2][3] == "mine"  # the request's correlation id reached the handler
        assert correlation_id.get() == "mine"
    assert flock.tasks_finished == {"ok": 1, "error": 0}


async def test_a_cancelled_submitter_cancels_the_work_it_waits_for(flock: LocalFlock) -> None:
    gates: dict[Any, asyncio.Event] = {}
    log: list[Any] = []
    await flock.system.spawn(functools.partial(Holder, max_concurrent_tasks=1), "holder-1", gates, log)
    results: list[TaskResult] = []
    flock.on_result(results.append)
    submitter = asyncio.ensure_future(flock.submit("hold", 1, wait=True, task_id="t-1"))
    await wait_for(lambda: events(log, "start") == [1])
    submitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await submitter
    assert events(log, "cancelled") == [1]
    [result] = results  # the task's result says so, for every listener
    assert (result.task_id, result.status, result.error) == ("t-1", "error", "RuntimeError: cancelled")
    requester = asyncio.ensure_future(flock.request_capability("hold", {"n": 2}))  # its slot is free again
    await wait_for(lambda: events(log, "start") == [1, 2])
    requester.cancel()
    with pytest.raises(asyncio.CancelledError):
        await requester
    assert events(log, "cancelled") == [1, 2]
    gates[3] = asyncio.Event()
    gates[3].set()
    assert await flock.request_capability("hold", {"n": 3}) == 3


async def test_a_task_submitted_without_waiting_is_detached_from_its_submitter(flock: LocalFlock) -> None:
    gates: dict[Any, asyncio.Event] = {}
    log: list[Any] = []
    await flock.system.spawn(Holder, "holder-1", gates, log)
    results: list[TaskResult] = []
    flock.on_result(results.append)

    async def submit_then_wait() -> None:
        await flock.submit("hold", 1, task_id="t-1")
        await asyncio.Event().wait()

    submitter = asyncio.ensure_future(submit_then_wait())
    await wait_for(lambda: events(log, "start") == [1])
    assert log[0][2] is not submitter  # an agent's runner Task runs it
    submitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await submitter
    gates[1].set()
    await wait_for(lambda: len(results) == 1)
    assert (results[0].status, results[0].result) == ("ok", 1)
    assert events(log, "cancelled") == []


async def test_a_submitter_whose_timeout_passes_cancels_its_task(flock: LocalFlock) -> None:
    gates: dict[Any, asyncio.Event] = {}
    log: list[Any] = []
    await flock.system.spawn(functools.partial(Holder, max_concurrent_tasks=1), "holder-1", gates, log)
    results: list[TaskResult] = []
    flock.on_result(results.append)
    with pytest.raises(WorkTimeout, match="did not finish within"):
        await flock.submit("hold", 1, wait=True, timeout=0.01)
    assert events(log, "cancelled") == [1]
    assert [(r.status, r.error) for r in results] == [("error", "RuntimeError: cancelled")]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]  # the deadline's was taken back
    gates[2] = asyncio.Event()
    gates[2].set()
    done = await flock.submit("hold", 2, wait=True, timeout=5)  # the slot is free, the deadline gone
    assert isinstance(done, TaskResult) and done.result == 2


async def test_a_waiting_task_queued_for_an_agent_is_still_owned_by_its_submitter(flock: LocalFlock) -> None:
    gates: dict[Any, asyncio.Event] = {}
    log: list[Any] = []
    await flock.system.spawn(functools.partial(Holder, max_concurrent_tasks=1), "holder-1", gates, log)
    results: list[TaskResult] = []
    flock.on_result(results.append)
    await flock.submit("hold", 1, task_id="t-1")  # takes the only slot
    await wait_for(lambda: events(log, "start") == [1])
    given_up = asyncio.ensure_future(flock.submit("hold", 2, wait=True, task_id="t-2"))
    started = asyncio.ensure_future(flock.submit("hold", 3, wait=True, task_id="t-3"))
    await wait_for(lambda: flock.queued_work == 2)
    given_up.cancel()  # before its task started: it never starts
    with pytest.raises(asyncio.CancelledError):
        await given_up
    gates[1].set()
    await wait_for(lambda: events(log, "start") == [1, 3])  # (a runner Task runs it: it waited)
    started.cancel()  # while its task runs: it is cancelled
    with pytest.raises(asyncio.CancelledError):
        await started
    await wait_for(lambda: len(results) == 3)
    assert events(log, "cancelled") == [3]
    assert sorted((r.task_id, r.status, r.error) for r in results) == [
        ("t-1", "ok", None),
        ("t-2", "error", "RuntimeError: cancelled"),
        ("t-3", "error", "RuntimeError: cancelled"),
    ]


async def test_an_agent_that_stops_interrupts_work_in_its_submitters_tasks(flock: LocalFlock) -> None:
    gates: dict[Any, asyncio.Event] = {}
    log: list[Any] = []
    ref = await flock.system.spawn(functools.partial(Holder, drain_timeout=0), "holder-1", gates, log)

    async def submit_and_go_on() -> tuple[Any, int, bool]:
        result = await flock.submit("hold", 1, wait=True)
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(0)  # the submitter goes on: it was not cancelled
        return result, task.cancelling(), task.cancelled()

    submitter = asyncio.ensure_future(submit_and_go_on())
    requester = asyncio.ensure_future(flock.request_capability("hold", {"n": 2}))
    await wait_for(lambda: len(events(log, "start")) == 2)
    await ref.stop()
    result, cancelling, cancelled = await submitter
    assert isinstance(result, TaskResult)
    assert (result.status, result.error, cancelling, cancelled) == (
        "error",
        "RuntimeError: agent stopped",
        0,
        False,
    )
    with pytest.raises(WorkFailed, match="RuntimeError: agent stopped"):
        await requester
    assert sorted(events(log, "cancelled")) == [1, 2]
    assert flock.tasks_finished == {"ok": 0, "error": 1}


async def test_a_restart_interrupts_work_in_its_submitters_tasks_and_cancels_nothing_else(
    flock: LocalFlock,
) -> None:
    gates: dict[Any, asyncio.Event] = {}
    log: list[Any] = []
    spec = ChildSpec(id="holder", factory=Holder, args=("holder-1", gates, log))
    await flock.system.spawn(Supervisor, [spec], name="holders")
    gates["flock"] = flock  # type: ignore[assignment]  # (for Holder.outer)
    # Two pieces of work of the same agent in one Task (an outer task waits for an inner one):
    # a restart interrupts both, the inner's interruption reaching the outer as a cancellation.
    submitter = asyncio.ensure_future(flock.submit("outer", 1, wait=True))
    await wait_for(lambda: events(log, "start") == [1])
    assert log[0][2] is submitter
    await flock.send_message("holder-1", "crash")
    result = await submitter
    assert isinstance(result, TaskResult) and (result.status, result.error) == (
        "error",
        "RuntimeError: agent stopped",
    )
    await wait_for(lambda: flock.system.stats().restarts == 1)
    assert events(log, "cancelled") == [1]
    assert events(log, "inner") == []  # the outer handler was interrupted too, not handed a result
    gates[2] = asyncio.Event()
    gates[2].set()
    again = await flock.submit("hold", 2, wait=True)  # the restarted agent takes work again
    assert isinstance(again, TaskResult) and again.result == 2


async def test_a_graceful_stop_waits_for_work_in_its_submitters_tasks(
    flock: LocalFlock, caplog: pytest.LogCaptureFixture
) -> None:
    gates: dict[Any, asyncio.Event] = {}
    log: list[Any] = []
    ref = await flock.system.spawn(Holder, "holder-1", gates, log)
    submitter = asyncio.ensure_future(flock.submit("hold", 1, wait=True))
    await wait_for(lambda: events(log, "start") == [1])
    stopping = asyncio.ensure_future(ref.stop())
    await wait_for(lambda: flock.list_agents() == [])  # it left the flock: no new work comes
    assert not stopping.done()
    gates[1].set()
    result = await submitter
    assert isinstance(result, TaskResult) and (result.status, result.result) == ("ok", 1)
    await stopping

    late = await flock.system.spawn(functools.partial(Holder, drain_timeout=0.01), "holder-2", gates, log)
    submitter = asyncio.ensure_future(flock.submit("hold", 2, wait=True))
    await wait_for(lambda: events(log, "start") == [1, 2])
    with caplog.at_level(logging.WARNING, logger="flockrt.agent"):
        await late.stop()
    result = await submitter
    assert isinstance(result, TaskResult) and (result.status, result.error) == (
        "error",
        "RuntimeError: agent stopped",
    )
    assert "holder-2: 1 pieces of work still running after 0.01 s are cancelled" in caplog.text


_mark: contextvars.ContextVar[str | None] = contextvars.ContextVar("test_here_mark", default=None)


class Marker(Agent):
    """Each piece of work reports what its context holds, sets a variable of its own there,
    logs a line, and waits for its gate."""

    max_concurrent_tasks = 4

    def __init__(self, agent_id: str, gates: dict[Any, asyncio.Event], log: list[Any]) -> None:
        super().__init__(agent_id)
        self.gates = gates
        self.log = log

    async def _mark_and_wait(self, n: Any) -> Any:
        self.log.append(("start", n, _mark.get(), correlation_id.get(), current_agent.get()))
        _mark.set(f"set by {n}")
        logging.getLogger("tests.here").info("work %s", n)
        await self.gates.setdefault(n, asyncio.Event()).wait()
        self.log.append(("end", n, _mark.get(), correlation_id.get()))
        return n

    @handles_task("mark")
    async def mark(self, task: TaskMessage) -> Any:
        return await self._mark_and_wait(task.data)

    @capability("mark")
    async def mark_capability(self, n: int) -> Any:
        return await self._mark_and_wait(n)


async def test_work_in_its_submitters_task_has_a_context_of_its_own(
    flock: LocalFlock, caplog: pytest.LogCaptureFixture
) -> None:
    """The ids are set where the handler runs (from its first step on), its own variables stay
    its own: not the submitter's, not the next piece of work's, even in the same Task."""
    gates: dict[Any, asyncio.Event] = {}
    log: list[Any] = []
    await flock.system.spawn(Marker, "marker-1", gates, log)
    _mark.set("the submitter's")
    caplog.set_level(logging.INFO, logger="tests.here")
    caplog.handler.addFilter(ContextFilter())  # (as flockrt.logs.setup attaches it)
    first = asyncio.ensure_future(flock.submit("mark", 1, wait=True, task_id="t-1"))
    second = asyncio.ensure_future(flock.request_capability("mark", {"n": 2}))
    await wait_for(lambda: len(events(log, "start")) == 2)
    gates[1].set()
    gates[2].set()
    result = await first
    assert isinstance(result, TaskResult) and result.result == 1
    assert await second == 2
    gates[3] = asyncio.Event()
    gates[3].set()
    with correlation("mine"):
        again = await flock.submit("mark", 3, wait=True, task_id="t-3")  # in this same Task
    assert isinstance(again, TaskResult) and again.result == 3
    starts = sorted(event for event in log if event[0] == "start")
    assert [event[2] for event in starts] == [None, None, None]  # nothing of the submitter's
    assert [(event[3], event[4]) for event in starts] == [
        ("t-1", "marker-1"),
        (None, "marker-1"),
        ("mine", "marker-1"),
    ]
    ends = sorted(event for event in log if event[0] == "end")
    assert [(event[2], event[3]) for event in ends] == [
        ("set by 1", "t-1"),
        ("set by 2", None),
        ("set by 3", "mine"),
    ]
    assert _mark.get() == "the submitter's"  # nothing leaked back
    assert correlation_id.get() is None
    records = {record.getMessage(): getattr(record, "correlation_id", None) for record in caplog.records}
    assert records == {"work 1": "t-1", "work 2": None, "work 3": "mine"}
    assert {getattr(record, "agent", None) for record in caplog.records} == {"marker-1"}
