"""Agents in one process: skills, routing, capacity, priority, messages, restarts (LocalFlock)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import multiprocessing
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest

from flockrt import ActorSystem, ChildSpec, Supervisor
from flockrt.actors.correlation import (
    correlation,
    correlation_id,
    current_agent,
    new_correlation_id,
    unique_id,
)
from flockrt.agents.agent import Agent, capability, handles_task
from flockrt.errors import InvalidParameters, NoCapableAgent, UnknownAgent, WorkFailed, WorkTimeout
from flockrt.flock.batches import Batch, _task_batch
from flockrt.flock.local import LocalFlock, WorkStats
from flockrt.logs import ContextFilter
from flockrt.wire.schema import Broadcast, DirectMessage, TaskMessage, TaskResult
from tests.conftest import wait_for


class Analyst(Agent):
    """Counts words; answers text-analysis requests and 'analysis' tasks."""

    max_concurrent_tasks = 2

    @capability("text-analysis")
    async def analyze(self, text: str) -> dict[str, int]:
        return {"words": len(text.split())}

    @handles_task("analysis")
    async def on_task(self, task: TaskMessage) -> dict[str, int]:
        if task.data == "fail":
            raise ValueError("cannot analyse this")
        return await self.analyze(str(task.data))

    async def on_message(self, message: DirectMessage) -> Any:
        if message.message == "crash":
            raise RuntimeError("crash requested")
        if message.type == "query":
            return f"{self.agent_id} heard {message.message}"
        return None


class Gated(Agent):
    """Its work waits for a gate, so tests control when capacity frees up."""

    def __init__(
        self, agent_id: str, gate: asyncio.Event, log: list[Any], drain_timeout: float = 5.0, **options: Any
    ) -> None:
        super().__init__(agent_id, **options)
        self.drain_timeout = drain_timeout
        self.gate = gate
        self.log = log
        self.broadcasts: list[Broadcast] = []

    @handles_task("slow")
    async def slow(self, task: TaskMessage) -> Any:
        self.log.append(("start", self.agent_id, task.data))
        await self.gate.wait()
        self.log.append(("end", self.agent_id, task.data))
        return task.data

    @capability("wait")
    async def wait(self) -> str:
        await self.gate.wait()
        return "done"

    async def on_broadcast(self, message: Broadcast) -> None:
        self.broadcasts.append(message)


@pytest.fixture
async def flock() -> AsyncIterator[LocalFlock]:
    async with ActorSystem("agents", shutdown_timeout=2.0) as system:
        yield LocalFlock(system, node="node-a", heartbeat_interval=60)


def running(log: list[Any]) -> int:
    starts = sum(1 for event in log if event[0] == "start")
    ends = sum(1 for event in log if event[0] == "end")
    return starts - ends


async def test_capability_request_and_directory(flock: LocalFlock) -> None:
    await flock.system.spawn(Analyst, "analyst-1", name="analyst-1")
    assert await flock.request_capability("text-analysis", {"text": "a flock of agents"}) == {"words": 4}
    assert await flock.request_capability("text-analysis", "two words") == {"words": 2}
    [info] = flock.list_agents(status="online", capability="text-analysis")
    assert (info.id, info.capabilities, info.node, info.max_concurrent_tasks) == (
        "analyst-1",
        ("text-analysis",),
        "node-a",
        2,
    )
    assert flock.get_agent("analyst-1") == info
    assert flock.list_agents(capability="nope") == []


async def test_tasks_return_results_to_the_submitter_and_listeners(flock: LocalFlock) -> None:
    await flock.system.spawn(Analyst, "analyst-1")
    results: list[TaskResult] = []
    flock.on_result(results.append)
    result = await flock.submit("analysis", "many words here", wait=True)
    assert isinstance(result, TaskResult)
    assert (result.status, result.result, result.processed_by) == ("ok", {"words": 3}, "analyst-1")
    task_id = await flock.submit("analysis", "fail", task_id="t-fail")
    assert task_id == "t-fail"
    await wait_for(lambda: len(results) == 2)
    failed = results[1]
    assert (failed.task_id, failed.status, failed.processed_by) == ("t-fail", "error", "analyst-1")
    assert "cannot analyse this" in (failed.error or "")
    assert flock.tasks_finished == {"ok": 1, "error": 1}


class Chain(Agent):
    """A task handler that never waits, and hands the flock the next task of the chain."""

    flock: LocalFlock

    @handles_task("chain")
    async def link(self, task: TaskMessage) -> int:
        if task.data < 3000:  # deeper than the recursion limit, if dispatch recursed
            self.flock.dispatcher.dispatch_task(self.flock.new_task("chain", task.data + 1))
        return int(task.data)

    @handles_task("wait-then-link")
    async def waits(self, task: TaskMessage) -> int:
        await asyncio.sleep(0)
        return int(task.data)


async def test_a_failing_result_hook_costs_the_agent_nothing(flock: LocalFlock) -> None:
    await flock.system.spawn(Analyst, "analyst-1")

    def broken(result: TaskResult) -> None:
        raise RuntimeError("a bug in the hook")

    for _ in range(Analyst.max_concurrent_tasks):  # a runner each (the handler awaits)
        flock.dispatcher.dispatch_task(flock.new_task("analysis", "one two"), broken)
    outcome = await flock.submit("analysis", "still works", wait=True, timeout=5)
    assert isinstance(outcome, TaskResult) and outcome.result == {"words": 2}
    assert await flock.request_capability("text-analysis", "inline too") == {"words": 2}


def test_handlers_that_never_wait_are_run_inline() -> None:
    assert Chain._flockrt_inline == frozenset({"link"})
    assert Analyst._flockrt_inline == frozenset({"analyze"})  # on_task awaits analyze


async def test_inline_work_does_not_recurse_through_the_dispatcher(flock: LocalFlock) -> None:
    Chain.flock = flock
    await flock.system.spawn(Chain, "chain-1")
    results: list[TaskResult] = []
    flock.on_result(results.append)
    flock.dispatcher.dispatch_task(flock.new_task("chain", 0))
    await wait_for(lambda: len(results) == 3001)
    assert [r.result for r in results] == list(range(3001))  # in order, each once
    outcome = await flock.submit("wait-then-link", 7, wait=True)  # a Task of the agent's runs it
    assert isinstance(outcome, TaskResult) and outcome.result == 7


class Relay(Agent):
    """Inline handlers of two task types; a "first" task dispatches a "second" one to the flock
    while it runs, and each task records how many handlers of this agent were running."""

    flock: LocalFlock
    seen: list[tuple[str, str, int]]

    def __init__(self, agent_id: str) -> None:
        super().__init__(agent_id)
        self.inside = 0

    def _enter(self, task: TaskMessage) -> None:
        self.inside += 1
        self.seen.append((task.type, self.agent_id, self.inside))

    @handles_task("first")
    async def first(self, task: TaskMessage) -> str:
        self._enter(task)
        self.flock.dispatcher.dispatch_task(self.flock.new_task("second", task.data))
        self.inside -= 1
        return "first done"

    @handles_task("second")
    async def second(self, task: TaskMessage) -> str:
        self._enter(task)
        self.inside -= 1
        if task.data == "fail":
            raise ValueError("second failed")
        return "second done"


async def test_inline_tasks_spread_over_the_free_agents(flock: LocalFlock) -> None:
    Relay.flock, Relay.seen = flock, []
    for i in range(4):
        await flock.system.spawn(Relay, f"relay-{i}")
    results: list[TaskResult] = []
    flock.on_result(results.append)
    for _ in range(40):
        flock.dispatcher.dispatch_task(flock.new_task("second", "x"))
    assert len(results) == 40  # each ran within its dispatch (no Task, no loop turn)
    counts = {
        agent: sum(1 for r in results if r.processed_by == agent)
        for agent in ("relay-0", "relay-1", "relay-2", "relay-3")
    }
    assert counts == {"relay-0": 10, "relay-1": 10, "relay-2": 10, "relay-3": 10}
    assert [r.processed_by for r in results[:5]] == ["relay-0", "relay-1", "relay-2", "relay-3", "relay-0"]


async def test_work_dispatched_by_an_inline_handler_waits_for_a_free_agent(flock: LocalFlock) -> None:
    """The only agent is busy while its handler runs: the task it dispatches meanwhile waits
    in the queue and runs once the agent is free, never two at once."""
    Relay.flock, Relay.seen = flock, []
    await flock.system.spawn(Relay, "relay-0")
    results: list[TaskResult] = []
    flock.on_result(results.append)
    flock.dispatcher.dispatch_task(flock.new_task("first", "ok"))
    assert [(r.result, r.processed_by) for r in results] == [
        ("first done", "relay-0"),
        ("second done", "relay-0"),
    ]
    assert [inside for _, _, inside in Relay.seen] == [1, 1]
    # And the agent is still offered for both types afterwards, failures included.
    flock.dispatcher.dispatch_task(flock.new_task("first", "fail"))
    assert [(r.status, r.processed_by) for r in results[2:]] == [("ok", "relay-0"), ("error", "relay-0")]
    assert "second failed" in (results[3].error or "")
    outcome = await flock.submit("second", "ok", wait=True, timeout=5)
    assert isinstance(outcome, TaskResult) and (outcome.result, outcome.processed_by) == (
        "second done",
        "relay-0",
    )
    assert [inside for _, _, inside in Relay.seen] == [1, 1, 1, 1, 1]
    assert flock.tasks_finished == {"ok": 4, "error": 1}


user_var: contextvars.ContextVar[str] = contextvars.ContextVar("user_var", default="unset")


class Nesting(Agent):
    """Two inline task types on one agent with two slots: "outer" dispatches an "inner" task,
    which this same agent (it has a free slot) runs within the outer handler."""

    max_concurrent_tasks = 2
    flock: LocalFlock
    seen: list[tuple[str, str | None, str | None, str]]

    def _see(self, task: TaskMessage) -> None:
        self.seen.append((task.type, current_agent.get(), correlation_id.get(), user_var.get()))
        user_var.set(f"set by {task.type}")  # must not leak into whoever called the handler

    @handles_task("outer")
    async def outer(self, task: TaskMessage) -> str:
        self._see(task)
        self.flock.dispatcher.dispatch_task(self.flock.new_task("inner", None, task_id="inner-1"))
        self._see(task)  # its context is its own again after the inner handler
        return "outer"

    @handles_task("inner")
    async def inner(self, task: TaskMessage) -> str:
        self._see(task)
        return "inner"


async def test_inline_handlers_run_in_the_agents_context_even_when_nested(flock: LocalFlock) -> None:
    Nesting.flock, Nesting.seen = flock, []
    await flock.system.spawn(Nesting, "nesting-1")
    results: list[TaskResult] = []
    flock.on_result(results.append)
    reports: list[Any] = []  # a progress listener: the outer task goes the Work path (a handover)
    user_var.set("the caller's")  # not carried into the handlers (the agent's context)
    flock.dispatcher.start_task(
        flock.new_task("outer", None, task_id="outer-1"), progress=lambda *a: reports.append(a)
    )
    assert [(r.task_id, r.result, r.processed_by) for r in results] == [
        ("inner-1", "inner", "nesting-1"),
        ("outer-1", "outer", "nesting-1"),
    ]
    assert Nesting.seen == [
        ("outer", "nesting-1", "outer-1", "unset"),
        ("inner", "nesting-1", "outer-1", "set by outer"),  # a copy of the outer's context; its id travels on
        ("outer", "nesting-1", "outer-1", "set by outer"),
    ]
    assert (user_var.get(), current_agent.get(), correlation_id.get()) == ("the caller's", None, None)
    flock.dispatcher.dispatch_task(flock.new_task("inner", None, task_id="inner-2"))  # the fast path
    assert Nesting.seen[-1] == ("inner", "nesting-1", "inner-2", "unset")  # the outer ran in a copy
    assert (user_var.get(), current_agent.get(), correlation_id.get()) == ("the caller's", None, None)


class Caller(Agent):
    """Two slots; its capability dispatches a task only a Callee handles."""

    max_concurrent_tasks = 2
    flock: LocalFlock
    seen: list[tuple[str, str | None]]

    @capability("start")
    async def start(self) -> str:
        self.seen.append(("start", current_agent.get()))
        self.flock.dispatcher.dispatch_task(self.flock.new_task("there"))
        return "started"

    @handles_task("back")
    async def back(self, task: TaskMessage) -> str:
        self.seen.append(("back", current_agent.get()))
        return "back"


class Callee(Agent):
    flock: LocalFlock

    @handles_task("there")
    async def there(self, task: TaskMessage) -> str:
        Caller.seen.append(("there", current_agent.get()))
        self.flock.dispatcher.dispatch_task(self.flock.new_task("back"))  # the caller has a slot free
        return "there"


async def test_an_inline_handler_reached_through_another_agent_runs_as_its_own_agent(
    flock: LocalFlock,
) -> None:
    """caller-1's capability runs inline, its task runs inline on callee-1, whose task runs
    inline on caller-1 again (its second slot): in a copy of callee-1's context, which must
    say caller-1."""
    Caller.flock = Callee.flock = flock
    Caller.seen = []
    await flock.system.spawn(Caller, "caller-1")
    await flock.system.spawn(Callee, "callee-1")
    assert await flock.request_capability("start", timeout=5) == "started"
    assert Caller.seen == [("start", "caller-1"), ("there", "callee-1"), ("back", "caller-1")]


async def test_a_failing_hook_on_the_fast_path_costs_nothing_else(
    flock: LocalFlock, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``then`` that raises (a reply that cannot be published, say) is logged; the work the
    handler queued meanwhile still runs."""
    Relay.flock, Relay.seen = flock, []
    await flock.system.spawn(Relay, "relay-0")
    results: list[TaskResult] = []
    flock.on_result(results.append)

    def broken(result: TaskResult) -> None:
        raise TypeError("cannot encode the result")

    flock.dispatcher.dispatch_task(flock.new_task("first", "ok", task_id="first-1"), broken)
    assert [r.result for r in results] == ["first done", "second done"]
    assert flock.queued_work == 0
    assert "task first-1: the hook on its result failed" in caplog.text


async def test_handlers_see_the_agents_context_whichever_way_they_run(flock: LocalFlock) -> None:
    """An inline task, a task whose handler waits and a batch: none sees a context variable
    the submitter set, and nothing a handler sets leaks back to the submitter."""
    seen: list[tuple[str, str]] = []

    class Mixed(Agent):
        @handles_task("inline")
        async def inline(self, task: TaskMessage) -> None:
            seen.append(("inline", user_var.get()))
            user_var.set("set by a handler")

        @handles_task("waits")
        async def waits(self, task: TaskMessage) -> None:
            await asyncio.sleep(0)
            seen.append(("waits", user_var.get()))
            user_var.set("set by a handler")

    await flock.system.spawn(Mixed, "mixed-1")
    user_var.set("the submitter's")
    await flock.submit("inline", wait=True, timeout=5)
    await flock.submit("waits", wait=True, timeout=5)
    finished: list[list[TaskResult]] = []
    flock.dispatcher.dispatch_tasks(flock.new_tasks("inline", [1]), finished.append)
    assert len(finished) == 1
    assert [where for where, _ in seen] == ["inline", "waits", "inline"]
    assert all(value != "the submitter's" for _, value in seen), seen
    assert user_var.get() == "the submitter's"


async def test_a_failing_inline_handler_is_logged_with_its_agent_and_correlation_id(
    flock: LocalFlock,
) -> None:
    records: list[tuple[str | None, str | None]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "failed" in record.getMessage():
                records.append((record.agent, record.correlation_id))  # type: ignore[attr-defined]

    handler = Collect()
    handler.addFilter(ContextFilter())
    logging.getLogger("flockrt").addHandler(handler)
    flock.system.failure_log.window = 0  # each identical failure written (not counted), for its ids
    try:
        await flock.system.spawn(Reporter, "reporter-1")
        flock.dispatcher.dispatch_task(flock.new_task("write", "fail", task_id="t-1"))  # the fast path
        flock.dispatcher.start_task(flock.new_task("write", "fail", task_id="t-2"), progress=lambda *a: None)
    finally:
        logging.getLogger("flockrt").removeHandler(handler)
    assert records == [("reporter-1", "t-1"), ("reporter-1", "t-2")]


class Reporter(Agent):
    @capability("write")
    async def write(self, pages: int) -> int:
        for page in range(1, pages + 1):
            self.report_progress(page, pages)
        return pages

    @handles_task("write")
    async def write_task(self, task: TaskMessage) -> int:
        if task.data == "fail":
            raise ValueError("cannot write")
        self.report_progress(1, 1)
        return 1


async def test_progress_reaches_only_the_listener_of_its_own_work(flock: LocalFlock) -> None:
    await flock.system.spawn(Reporter, "reporter-1")
    heard: list[tuple[float, float | None]] = []
    assert await flock.request_capability("write", 2, progress=lambda d, t, m: heard.append((d, t))) == 2
    assert heard == [(1, 2), (2, 2)]
    assert await flock.request_capability("write", 3) == 3  # nobody listens: nothing reaches the old one
    flock.dispatcher.dispatch_task(flock.new_task("write"))  # the fast path, in the agent's own context
    assert heard == [(1, 2), (2, 2)]


async def test_nothing_capable_and_bad_input_are_clear_errors(flock: LocalFlock) -> None:
    await flock.system.spawn(Analyst, "analyst-1")
    with pytest.raises(NoCapableAgent, match="no agent offers capability 'translation'"):
        await flock.request_capability("translation", {})
    with pytest.raises(NoCapableAgent, match="handles task type 'painting'"):
        await flock.submit("painting", {})
    with pytest.raises(WorkFailed) as info:
        await flock.request_capability("text-analysis", {"wrong": "argument"})
    assert isinstance(info.value.cause, InvalidParameters)  # checked before the handler ran
    with pytest.raises(ValueError, match="priority"):
        await flock.submit("analysis", "x", priority="urgent")  # type: ignore[arg-type]
    assert await flock.request_capability("text-analysis", "still fine") == {"words": 2}


async def test_capability_timeout(flock: LocalFlock) -> None:
    gate = asyncio.Event()
    await flock.system.spawn(Gated, "gated-1", gate, [])
    with pytest.raises(WorkTimeout, match="did not finish within"):
        await flock.request_capability("wait", timeout=0.01)
    gate.set()
    assert await flock.request_capability("wait", timeout=5) == "done"


async def test_a_capability_request_past_its_timeout_stops_its_work(flock: LocalFlock) -> None:
    started: list[int] = []
    stopped: list[int] = []

    class Stubborn(Agent):
        @capability("hang")
        async def hang(self, n: int) -> None:
            started.append(n)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                stopped.append(n)
                raise

    await flock.system.spawn(Stubborn, "stubborn-1")  # one slot
    with pytest.raises(WorkTimeout, match="did not finish within"):
        await flock.request_capability("hang", 1, timeout=0.01)
    await wait_for(lambda: stopped == [1])  # its deadline stopped the work, and freed the slot
    requester = asyncio.ensure_future(flock.request_capability("hang", 2, timeout=60))
    await wait_for(lambda: started == [1, 2])
    with pytest.raises(WorkTimeout):
        await flock.request_capability("hang", 3, timeout=0.01)  # queued behind 2, then skipped
    requester.cancel()  # a requester that gives up stops its work too
    await wait_for(lambda: stopped == [1, 2])
    assert started == [1, 2]
    with pytest.raises(asyncio.CancelledError):
        await requester


async def test_an_agent_runs_at_most_max_concurrent_tasks(flock: LocalFlock) -> None:
    gate, log = asyncio.Event(), []
    await flock.system.spawn(functools.partial(Gated, "gated-1", gate, log, max_concurrent_tasks=2))
    ids = [await flock.submit("slow", i) for i in range(5)]
    await wait_for(lambda: running(log) == 2)
    assert running(log) == 2  # the other three wait in the flock's queue
    peak = 0

    def watch() -> bool:
        nonlocal peak
        peak = max(peak, running(log))
        return sum(1 for event in log if event[0] == "end") == 5

    gate.set()
    await wait_for(watch)
    assert peak <= 2
    assert len(ids) == 5


async def test_higher_priority_work_waiting_runs_first(flock: LocalFlock) -> None:
    gate, log = asyncio.Event(), []
    await flock.system.spawn(Gated, "gated-1", gate, log)
    await flock.submit("slow", "first")
    await wait_for(lambda: running(log) == 1)
    for name, priority in [("low", "low"), ("medium", "medium"), ("high", "high"), ("high-2", "high")]:
        await flock.submit("slow", name, priority=priority)  # type: ignore[arg-type]
    gate.set()
    await wait_for(lambda: sum(1 for event in log if event[0] == "end") == 5)
    order = [data for kind, _, data in log if kind == "start"]
    assert order == ["first", "high", "high-2", "medium", "low"]


async def test_work_goes_to_the_least_loaded_agent(flock: LocalFlock) -> None:
    gate, log = asyncio.Event(), []
    for i in range(2):
        await flock.system.spawn(Gated, f"gated-{i}", gate, log)
    await flock.submit("slow", "a")
    await flock.submit("slow", "b")
    await wait_for(lambda: running(log) == 2)
    assert {agent for _, agent, _ in log} == {"gated-0", "gated-1"}
    gate.set()


class TwoSkills(Agent):
    """A task type and a capability, both logged and held at a gate."""

    def __init__(self, agent_id: str, gate: asyncio.Event, log: list[Any]) -> None:
        super().__init__(agent_id, max_concurrent_tasks=2)
        self.gate = gate
        self.log = log

    @handles_task("slow")
    async def slow(self, task: TaskMessage) -> Any:
        self.log.append(("start", self.agent_id, task.data))
        await self.gate.wait()
        self.log.append(("end", self.agent_id, task.data))
        return task.data

    @capability("hold")
    async def hold(self) -> str:
        self.log.append(("start", self.agent_id, "hold"))
        await self.gate.wait()
        self.log.append(("end", self.agent_id, "hold"))
        return self.agent_id


async def test_a_slot_taken_through_one_skill_counts_in_the_others_choice(flock: LocalFlock) -> None:
    # The free heaps keep an agent's entries when it takes a slot (they only become lower
    # bounds of its key): the task heap must still see the slot the capability took.
    gate, log = asyncio.Event(), []
    for i in range(2):
        await flock.system.spawn(TwoSkills, f"two-{i}", gate, log)
    held = asyncio.create_task(flock.request_capability("hold"))
    await wait_for(lambda: running(log) == 1)
    assert log[0][1] == "two-0"  # both idle: the smallest id
    await flock.submit("slow", "a")
    await wait_for(lambda: running(log) == 2)
    assert log[1] == ("start", "two-1", "a")  # two-0 is half full
    await flock.submit("slow", "b")  # both half full: two-0 was handed fewer tasks
    await wait_for(lambda: running(log) == 3)
    assert log[2] == ("start", "two-0", "b")
    await flock.submit("slow", "c")  # two-0 is full: two-1 has the last free slot
    await wait_for(lambda: running(log) == 4)
    assert log[3] == ("start", "two-1", "c")
    waiting = asyncio.create_task(flock.submit("slow", "d", wait=True))  # nobody free: it waits
    gate.set()
    assert await held == "two-0"
    result = await waiting
    assert result.status == "ok" and result.result == "d"  # type: ignore[union-attr]
    await wait_for(lambda: running(log) == 0 and len(log) == 10)


async def test_direct_messages_and_broadcasts(flock: LocalFlock) -> None:
    gate = asyncio.Event()
    await flock.system.spawn(Analyst, "analyst-1")
    gated = [await flock.system.spawn(Gated, f"gated-{i}", gate, []) for i in range(2)]
    answer = await flock.send_message("analyst-1", "ping", type="query", sender="tester")
    assert answer == "analyst-1 heard ping"
    assert await flock.send_message("analyst-1", "do it", type="command") is None
    with pytest.raises(UnknownAgent, match="nobody"):
        await flock.send_message("nobody", "hi")
    assert flock.deliver_broadcast(Broadcast(type="notice", message="hello all")) == 3
    await flock.broadcast("notice", "and again")  # the FlockAPI's: flock-wide, here every agent
    assert await flock.query("analyst-1", "ping") == "analyst-1 heard ping"
    await flock.send("analyst-1", "do it")
    with pytest.raises(ValueError, match="query"):
        await flock.send("analyst-1", "ping", type="query")
    for ref in gated:
        await wait_for(lambda ref=ref: len(ref._cell._actor.broadcasts) == 2)  # type: ignore[union-attr, misc]


async def test_heartbeats_reach_the_directory() -> None:
    async with ActorSystem() as system:
        flock = LocalFlock(system, heartbeat_interval=0.01)
        await system.spawn(Analyst, "analyst-1")
        await flock.request_capability("text-analysis", "one")
        await wait_for(
            lambda: (info := flock.get_agent("analyst-1")) is not None and info.tasks_processed == 1
        )


async def test_a_crashing_agent_is_restarted_and_rejoins(flock: LocalFlock) -> None:
    spec = ChildSpec(id="analyst", factory=Analyst, args=("analyst-1",))
    sup = await flock.system.spawn(Supervisor, [spec], name="agents")
    await flock.send_message("analyst-1", "crash")
    await wait_for(lambda: flock.system.stats().restarts == 1)
    children = await Supervisor.which_children(sup)
    assert children[0].state == "running"
    assert await flock.request_capability("text-analysis", "back again") == {"words": 2}
    info = flock.get_agent("analyst-1")
    assert info is not None and info.status == "online"


async def test_a_stopped_agent_goes_offline_and_takes_no_work(flock: LocalFlock) -> None:
    ref = await flock.system.spawn(Analyst, "analyst-1")
    await ref.stop()
    info = flock.get_agent("analyst-1")
    assert info is not None and info.status == "offline"
    assert flock.list_agents(status="online") == []
    with pytest.raises(NoCapableAgent):
        await flock.request_capability("text-analysis", "x")


async def test_a_graceful_stop_lets_running_work_finish(flock: LocalFlock) -> None:
    gate = asyncio.Event()
    ref = await flock.system.spawn(Gated, "gated-1", gate, [])
    pending = asyncio.ensure_future(flock.request_capability("wait", timeout=5))
    await wait_for(lambda: ref._cell._actor is not None and ref._cell._actor.load > 0)  # type: ignore[attr-defined]
    stopping = asyncio.ensure_future(ref.stop())
    await wait_for(lambda: flock.list_agents() == [])  # it left the flock: no new work comes
    assert not pending.done()
    gate.set()
    assert await pending == "done"  # the work in flight ended with its result
    await stopping


async def test_work_still_running_after_the_drain_timeout_fails(flock: LocalFlock) -> None:
    gate = asyncio.Event()
    ref = await flock.system.spawn(functools.partial(Gated, drain_timeout=0.01), "gated-1", gate, [])
    pending = asyncio.ensure_future(flock.request_capability("wait", timeout=5))
    await wait_for(lambda: ref._cell._actor is not None and ref._cell._actor.load > 0)  # type: ignore[attr-defined]
    await ref.stop()
    with pytest.raises(WorkFailed, match="agent stopped"):
        await pending


def test_skills_must_be_async_and_ids_must_be_subject_tokens() -> None:
    with pytest.raises(TypeError, match="async def"):

        class Bad(Agent):
            @capability("x")  # type: ignore[type-var]
            def sync(self) -> None:
                pass

    with pytest.raises(ValueError, match="cannot be part of a NATS subject"):
        capability("has space")
    with pytest.raises(ValueError, match="agent id"):
        Analyst("a.b")
    with pytest.raises(ValueError, match="max_concurrent_tasks"):
        Analyst("a", max_concurrent_tasks=0)
    assert Analyst._flockrt_capabilities == {"text-analysis": "analyze"}
    assert Analyst._flockrt_task_types == {"analysis": "on_task"}


async def test_spawn_pool_starts_supervised_agents(flock: LocalFlock) -> None:
    pool = await flock.spawn_pool(Analyst, 3, max_concurrent_tasks=1)
    assert pool.path == "/analyst-pool"
    assert [a.id for a in flock.list_agents()] == ["analyst-1", "analyst-2", "analyst-3"]
    assert all(a.max_concurrent_tasks == 1 for a in flock.list_agents())
    await flock.send_message("analyst-2", "crash")
    await wait_for(lambda: flock.system.stats().restarts == 1)
    assert await flock.request_capability("text-analysis", "still three") == {"words": 2}
    assert len(flock.list_agents(status="online")) == 3
    with pytest.raises(ValueError, match="count"):
        await flock.spawn_pool(Analyst, 0)


# ---------------------------------------------------------------------- batches (dispatch_tasks)


class Counter(Agent):
    """A task handler that never waits: a batch of its tasks is one unit of work."""

    seen: list[tuple[str, str | None, str | None, Any]]

    @handles_task("count")
    async def count(self, task: TaskMessage) -> int:
        self.seen.append((self.agent_id, correlation_id.get(), current_agent.get(), task.data))
        if task.data == "fail":
            raise ValueError("cannot count this")
        return len(str(task.data))


async def test_a_batch_runs_as_one_unit_of_work_with_everything_per_task(flock: LocalFlock) -> None:
    Counter.seen = []
    for i in range(3):
        await flock.system.spawn(Counter, f"counter-{i}")
    flock.work_stats = WorkStats()
    listened: list[TaskResult] = []
    flock.on_result(listened.append)
    tasks = flock.new_tasks("count", ["a", "bb", "fail", "dddd"])
    assert len({task.id for task in tasks}) == 4 and all(task.requester == "node-a" for task in tasks)
    answers: list[list[TaskResult]] = []
    flock.dispatcher.dispatch_tasks(tasks, answers.append)
    [results] = answers  # at once: the handler never waits
    assert [r.task_id for r in results] == [t.id for t in tasks]
    assert [(r.status, r.result) for r in results] == [("ok", 1), ("ok", 2), ("error", None), ("ok", 4)]
    assert "cannot count this" in (results[2].error or "")  # a failing task fails alone
    assert len({r.processed_by for r in results}) == 1  # one agent, one slot, one unit of work
    assert listened == results  # every result also goes to the listeners
    # Each task ran with its own correlation id (its id) and the agent as current agent.
    assert [(c, a) for _, c, a, _ in Counter.seen] == [(t.id, results[0].processed_by) for t in tasks]
    assert flock.tasks_finished == {"ok": 3, "error": 1}
    assert flock.work_stats.outcomes == {("task", "count", "ok"): 3, ("task", "count", "error"): 1}
    assert flock.get_agent(results[0].processed_by) is not None
    # The next batch goes to an agent that did less so far (tasks count, not units of work).
    flock.dispatcher.dispatch_tasks(flock.new_tasks("count", ["x"]), answers.append)
    assert answers[1][0].processed_by != results[0].processed_by


async def test_a_batch_runs_highest_priority_first_with_the_callers_correlation_id(flock: LocalFlock) -> None:
    Counter.seen = []
    await flock.system.spawn(Counter, "counter-1")
    tasks = [
        *flock.new_tasks("count", ["low-1"], priority="low"),
        *flock.new_tasks("count", ["medium"]),
        *flock.new_tasks("count", ["high-1", "high-2"], priority="high"),
        *flock.new_tasks("count", ["low-2"], priority="low"),
    ]
    answers: list[list[TaskResult]] = []
    with correlation("req-7"):
        flock.dispatcher.dispatch_tasks(tasks, answers.append)
    assert [data for *_, data in Counter.seen] == ["high-1", "high-2", "medium", "low-1", "low-2"]
    assert {c for _, c, _, _ in Counter.seen} == {"req-7"}
    assert [r.task_id for r in answers[0]] == [t.id for t in tasks]  # results in the batch's order
    with pytest.raises(NoCapableAgent, match="painting"):  # nothing of a batch runs then
        flock.dispatcher.dispatch_tasks([*flock.new_tasks("count", ["y"]), *flock.new_tasks("painting", [1])])
    assert len(Counter.seen) == 5
    flock.dispatcher.dispatch_tasks([], answers.append)
    assert answers[-1] == []


async def test_a_batch_for_agents_that_wait_keeps_to_their_slots_and_queues_the_rest(
    flock: LocalFlock,
) -> None:
    gate, log = asyncio.Event(), []
    await flock.system.spawn(functools.partial(Gated, "gated-1", gate, log, max_concurrent_tasks=2))
    await flock.submit("slow", "before")  # one slot taken, the other free
    await wait_for(lambda: running(log) == 1)
    answers: list[list[TaskResult]] = []
    tasks = [*flock.new_tasks("slow", ["low"], priority="low"), *flock.new_tasks("slow", ["a", "b"])]
    flock.dispatcher.dispatch_tasks(tasks, answers.append)
    await wait_for(lambda: running(log) == 2)
    assert flock.queued_work == 2  # a task per free slot, the others wait in the queue
    flock.dispatcher.dispatch_tasks(
        flock.new_tasks("slow", ["urgent"], priority="high")
    )  # queued too, by priority
    peak = 0

    def watch() -> bool:
        nonlocal peak
        peak = max(peak, running(log))
        return sum(1 for event in log if event[0] == "end") == 5

    gate.set()
    await wait_for(watch)
    assert peak <= 2
    starts = [data for kind, _, data in log if kind == "start"]
    assert starts[:2] == ["before", "a"] and starts[2:] == ["urgent", "b", "low"]
    await wait_for(lambda: answers != [])
    assert [(r.task_id, r.result) for r in answers[0]] == [(t.id, t.data) for t in tasks]


async def test_an_agent_stopping_in_bulk_work_fails_its_task_and_hands_back_the_rest(
    flock: LocalFlock,
) -> None:
    """Bulk work that reaches an agent through its mailbox (while it could not take work
    directly) runs in its runner, task by task; if the agent stops, the tasks not begun go back
    to the flock's queue and another agent runs them."""
    gate, log = asyncio.Event(), []
    # drain_timeout 0: the stop cancels the work in flight at once (Gated's default waits 5 s)
    first = await flock.system.spawn(functools.partial(Gated, "gated-1", gate, log, drain_timeout=0.0))
    answers: list[list[TaskResult]] = []
    tasks = flock.new_tasks("slow", ["one", "two", "three"])
    skill = flock.dispatcher._task_skills["slow"]
    work = _task_batch(flock.dispatcher, skill, range(3), tasks, 0, Batch(3, answers.append, True), None)
    work.agent_id = "gated-1"
    flock.dispatcher._members["gated-1"].running += 1
    first.tell(work)  # what _hand_over does when the agent's take_work refuses
    await wait_for(lambda: running(log) == 1)
    await flock.system.spawn(Gated, "gated-2", gate, log)
    await first.stop()
    assert work.cursor == 1
    gate.set()
    await wait_for(lambda: answers != [])
    [results] = answers
    assert [r.task_id for r in results] == [t.id for t in tasks]
    assert results[0].status == "error" and "agent stopped" in (results[0].error or "")
    assert [(r.status, r.result, r.processed_by) for r in results[1:]] == [
        ("ok", "two", "gated-2"),
        ("ok", "three", "gated-2"),
    ]


def _child_ids(queue: Any) -> None:
    queue.put([unique_id() for _ in range(3)])


def test_unique_ids_are_unique_here_and_in_a_forked_child() -> None:
    ids = [unique_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    with correlation() as fresh:
        assert new_correlation_id() == fresh  # the current one travels on
    assert new_correlation_id() != new_correlation_id()
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork here")
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_ids, args=(queue,))
    with warnings.catch_warnings():  # (Python 3.12 warns of forking a process with threads)
        warnings.simplefilter("ignore", DeprecationWarning)
        child.start()
    theirs = queue.get(timeout=30)
    child.join(timeout=30)
    mine = [unique_id() for _ in range(3)]
    assert not set(theirs) & set(mine)  # the child drew a prefix of its own
    assert theirs[0][:16] != mine[0][:16]


async def test_a_capability_added_again_replaces_its_handler_and_no_other(flock: LocalFlock) -> None:
    class Added(Agent):
        def __init__(self, agent_id: str) -> None:
            super().__init__(agent_id)

            async def first() -> str:
                return "a, first"

            async def second() -> str:
                return "a, second"

            async def other() -> str:
                return "b"

            self.add_capability("a", first)
            self.add_capability("a", second)  # replaces a's handler
            self.add_capability("b", other)  # and b's does not replace it in turn

    await flock.system.spawn(Added, "added-1")
    assert await flock.request_capability("a", timeout=5) == "a, second"
    assert await flock.request_capability("b", timeout=5) == "b"


def test_the_fair_key_orders_as_load_then_handed_then_id() -> None:
    # fair_key packs (running / capacity, handed) into one int, the id next to it in a heap
    # entry: their order must be the tuple's, loads of different capacities included.
    import random

    from flockrt.flock.skills import fair_key

    rng = random.Random(15)
    keys = []
    for _ in range(3000):
        capacity = rng.choice([1, 2, 3, 7, 10, 64, 1000, 3**15])
        running, handed, agent_id = rng.randrange(capacity), rng.randrange(50), f"a{rng.randrange(40)}"
        keys.append(((running / capacity, handed, agent_id), (fair_key(running, capacity, handed), agent_id)))
    by_tuple = sorted(keys, key=lambda pair: pair[0])
    by_key = sorted(keys, key=lambda pair: pair[1])
    assert [pair[0] for pair in by_key] == [pair[0] for pair in by_tuple]


class _Alive:
    is_alive = True


def test_an_agent_with_a_smaller_id_that_joins_later_is_chosen_first() -> None:
    # The last tie-break is the id, whatever the order the agents joined in.
    from flockrt.agents.ports import AgentCard
    from flockrt.flock.dispatcher import Dispatcher

    dispatcher = Dispatcher(node="n")

    def card(agent_id: str, capacity: int = 1) -> AgentCard:
        return AgentCard(agent_id, agent_id, (), ("t",), capacity, _Alive())

    for agent_id in ("b", "d"):
        dispatcher.join(card(agent_id))
    skill = dispatcher.skill("task", "t")
    assert skill is not None
    chosen = dispatcher.free_member(skill)
    assert chosen is not None and chosen.card.id == "b"
    dispatcher.join(card("a"))
    dispatcher.join(card("c", capacity=2))
    chosen = dispatcher.free_member(skill)
    assert chosen is not None and chosen.card.id == "a"
    chosen.handed[skill] = 1  # as a handover, with the slot given back (work_done)
    chosen.running += 1
    dispatcher.work_done("a")
    chosen = dispatcher.free_member(skill)
    assert chosen is not None and chosen.card.id == "b"  # the same load, handed least
    chosen.running += 1  # a slot taken: b is full, c (capacity 2) is the next at load 0
    chosen.handed[skill] = 1
    ids = []
    for _ in range(2):
        member = dispatcher.free_member(skill)
        assert member is not None
        ids.append(member.card.id)
        member.running += 1
        member.handed[skill] = member.handed.get(skill, 0) + 1
    assert ids == ["c", "d"]  # load 0, handed none: c (the smaller id), then d (c half loaded)


def test_an_agent_that_rejoins_with_fewer_skills_leaves_the_ones_it_no_longer_has() -> None:
    # A restart joins again without leaving first: the skills it dropped must forget it.
    from flockrt.agents.ports import AgentCard
    from flockrt.flock.dispatcher import Dispatcher

    dispatcher = Dispatcher(node="n")
    dispatcher.join(AgentCard("a", "a", ("c",), ("t", "u"), 1, _Alive()))
    dispatcher.join(AgentCard("a", "a", (), ("t",), 1, _Alive()))
    task_skill, dropped, capability = (
        dispatcher.skill("task", "t"),
        dispatcher.skill("task", "u"),
        dispatcher.skill("capability", "c"),
    )
    assert task_skill is not None and dropped is not None and capability is not None
    assert task_skill.agents == {"a"}
    assert dropped.agents == set() and capability.agents == set()
    assert not dispatcher.has_skill("task", "u") and dispatcher.has_skill("task", "t")
