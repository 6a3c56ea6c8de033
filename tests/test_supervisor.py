"""Supervision trees: strategies, restart types, intensity, escalation, order, introspection."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import random
from typing import Any

import pytest

import flockrt
from flockrt import (
    Actor,
    ActorSystem,
    Backoff,
    ChildSpec,
    DynamicSupervisor,
    RestartIntensityExceeded,
    Supervisor,
)
from tests.conftest import wait_for


class Journal:
    """What happened to every worker, in order: ('start'|'restart'|'stop', id)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def starts(self, worker_id: str) -> int:
        return sum(1 for kind, who in self.events if who == worker_id and kind in ("start", "restart"))


class Worker(Actor[Any]):
    def __init__(self, journal: Journal, worker_id: str) -> None:
        self.journal = journal
        self.id = worker_id
        self.handled: list[Any] = []

    def on_start(self) -> None:
        self.journal.events.append(("start", self.id))

    def on_restart(self, error: BaseException) -> None:
        self.journal.events.append(("restart", self.id))

    def on_stop(self) -> None:
        self.journal.events.append(("stop", self.id))

    def receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError(f"{self.id} crashed")
        if message == "quit":
            self.context.stop()
            return None
        self.handled.append(message)
        return (self.id, list(self.handled))


def worker(journal: Journal, worker_id: str, **options: Any) -> ChildSpec:
    return ChildSpec(id=worker_id, factory=Worker, args=(journal, worker_id), **options)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def child_ref(system: ActorSystem, path: str) -> flockrt.ActorRef[Any]:
    ref = system.lookup(path)
    assert ref is not None, f"no live actor at {path}"
    return ref


async def crash(ref: flockrt.ActorRef[Any]) -> None:
    with pytest.raises(flockrt.ActorFailed):
        await ref.ask("crash")


async def settled(sup: flockrt.ActorRef[Any]) -> list[flockrt.ChildInfo]:
    """which_children is an ask, handled after the supervisor's pending system messages."""
    return await Supervisor.which_children(sup)


async def test_children_start_in_order_and_stop_in_reverse(system: ActorSystem) -> None:
    journal = Journal()
    specs = [worker(journal, name) for name in ("a", "b", "c")]
    sup = await system.spawn(Supervisor, specs, name="sup")
    assert journal.events == [("start", "a"), ("start", "b"), ("start", "c")]
    await sup.stop()
    assert journal.events[3:] == [("stop", "c"), ("stop", "b"), ("stop", "a")]


async def test_one_for_one_restarts_only_the_failed_child_keeping_ref_and_mailbox(
    system: ActorSystem,
) -> None:
    journal = Journal()
    sup = await system.spawn(Supervisor, [worker(journal, "a"), worker(journal, "b")], name="sup")
    a = child_ref(system, "/sup/a")
    a.tell("before")
    a.tell("crash")
    a.tell("queued after the crash")
    reply = await a.ask("probe")
    # The restarted instance kept the ref and handled the messages queued behind the crash.
    assert reply == ("a", ["queued after the crash", "probe"])
    assert system.lookup("/sup/a") is a
    assert journal.starts("a") == 2 and journal.starts("b") == 1
    children = await settled(sup)
    assert [(c.id, c.restarts, c.state) for c in children] == [("a", 1, "running"), ("b", 0, "running")]
    assert system.stats().restarts == 1


async def test_one_for_all_restarts_every_child(system: ActorSystem) -> None:
    journal = Journal()
    specs = [worker(journal, name) for name in ("a", "b", "c")]
    sup = await system.spawn(functools.partial(Supervisor, specs, strategy="one_for_all"), name="sup")
    journal.events.clear()
    await crash(child_ref(system, "/sup/b"))
    await settled(sup)
    # All stop in reverse order (the failed b too), then all start in order (b via on_restart).
    assert journal.events == [
        ("stop", "c"),
        ("stop", "b"),
        ("stop", "a"),
        ("start", "a"),
        ("restart", "b"),
        ("start", "c"),
    ]


async def test_rest_for_one_restarts_the_failed_child_and_later_ones(system: ActorSystem) -> None:
    journal = Journal()
    specs = [worker(journal, name) for name in ("a", "b", "c")]
    sup = await system.spawn(functools.partial(Supervisor, specs, strategy="rest_for_one"), name="sup")
    journal.events.clear()
    await crash(child_ref(system, "/sup/b"))
    await settled(sup)
    assert journal.events == [("stop", "c"), ("stop", "b"), ("restart", "b"), ("start", "c")]


async def test_restart_types(system: ActorSystem) -> None:
    journal = Journal()
    specs = [
        worker(journal, "perm", restart="permanent"),
        worker(journal, "trans", restart="transient"),
        worker(journal, "temp", restart="temporary"),
        worker(journal, "trans_ok", restart="transient"),
        worker(journal, "perm_ok", restart="permanent"),
    ]
    sup = await system.spawn(functools.partial(Supervisor, specs, max_restarts=10), name="sup")
    for name in ("perm", "trans", "temp"):
        await crash(child_ref(system, f"/sup/{name}"))
    trans_ok = child_ref(system, "/sup/trans_ok")
    trans_ok.tell("quit")
    assert await trans_ok.wait_stopped() == "normal"
    perm_ok = child_ref(system, "/sup/perm_ok")
    perm_ok.tell("quit")
    await perm_ok.wait_stopped()

    children = {c.id: c for c in await settled(sup)}
    assert children["perm"].state == "running" and children["perm"].restarts == 1
    assert children["trans"].state == "running" and children["trans"].restarts == 1
    assert "temp" not in children  # temporary: never restarted, spec forgotten
    assert children["trans_ok"].state == "terminated"  # transient normal exit: not restarted
    assert children["perm_ok"].state == "running"  # permanent normal exit: started afresh
    assert children["perm_ok"].ref is not perm_ok  # ... as a new actor
    assert system.lookup("/sup/perm_ok") is children["perm_ok"].ref
    counts = await Supervisor.count_children(sup)
    assert (counts.specs, counts.active, counts.workers, counts.supervisors) == (4, 3, 4, 0)


async def test_intensity_exceeded_stops_children_in_reverse_and_fails_the_root() -> None:
    journal = Journal()
    clock = FakeClock()
    specs = [worker(journal, name) for name in ("a", "b", "c")]
    make_root = functools.partial(Supervisor, specs, max_restarts=2, max_seconds=5, clock=clock)
    system = ActorSystem()

    async def run() -> None:
        async with system:
            sup = await system.spawn(make_root, name="root")
            a = child_ref(system, "/root/a")
            await crash(a)
            clock.now = 4.0
            await crash(a)
            await settled(sup)
            assert system.failure is None  # two restarts within 5 s: allowed
            journal.events.clear()
            clock.now = 5.0
            await crash(a)  # the third within the window
            await system.wait()

    with pytest.raises(RestartIntensityExceeded) as info:
        await run()
    assert info.value.max_restarts == 2
    assert isinstance(info.value.__cause__, RuntimeError)
    assert system.failure is info.value
    assert journal.events == [("stop", "c"), ("stop", "b"), ("stop", "a")]
    assert system.stats().live == 0


async def test_restarts_outside_the_window_do_not_count(system: ActorSystem) -> None:
    journal = Journal()
    clock = FakeClock()
    sup = await system.spawn(
        functools.partial(Supervisor, [worker(journal, "a")], max_restarts=1, max_seconds=1, clock=clock),
        name="sup",
    )
    a = child_ref(system, "/sup/a")
    for step in range(5):
        clock.now = step * 1.5  # each restart is alone in its 1 s window
        await crash(a)
        await settled(sup)
    assert system.failure is None
    assert (await settled(sup))[0].restarts == 5


async def test_escalation_through_two_levels() -> None:
    journal = Journal()
    clock = FakeClock()
    inner = functools.partial(Supervisor, [worker(journal, "w")], max_restarts=0, clock=clock)
    middle_specs = [ChildSpec(id="inner", factory=inner, type="supervisor", shutdown=math.inf)]
    middle = functools.partial(Supervisor, middle_specs, max_restarts=0, clock=clock)
    top_specs = [
        worker(journal, "sibling"),
        ChildSpec(id="middle", factory=middle, type="supervisor", shutdown=math.inf),
    ]
    top = functools.partial(Supervisor, top_specs, max_restarts=1, clock=clock)
    system = ActorSystem()
    async with system:
        root = await system.spawn(top, name="top")
        w = child_ref(system, "/top/middle/inner/w")
        middle_ref = child_ref(system, "/top/middle")
        await crash(w)  # inner gives up (0 restarts) -> middle gives up -> top restarts middle
        await wait_for(lambda: system.lookup("/top/middle/inner/w") not in (None, w))
        children = {c.id: c for c in await settled(root)}
        assert children["middle"].restarts == 1
        assert children["middle"].ref is middle_ref  # restarted in place
        new_w = child_ref(system, "/top/middle/inner/w")
        assert new_w is not w  # a fresh subtree below the restarted supervisor
        assert await new_w.ask("ping") == ("w", ["ping"])
        assert journal.starts("sibling") == 1  # one_for_one at the top
        assert system.failure is None


async def test_shutdown_timeout_cancels_a_stuck_child(system: ActorSystem) -> None:
    cancelled = asyncio.Event()

    class Stuck(Actor[Any]):
        async def receive(self, message: Any) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

    specs = [ChildSpec(id="stuck", factory=Stuck, shutdown=0.02)]
    sup = await system.spawn(Supervisor, specs, name="sup")
    stuck = child_ref(system, "/sup/stuck")
    stuck.tell("hang")
    await wait_for(lambda: stuck._cell._task is not None and not stuck._cell._mailbox)
    await Supervisor.terminate_child(sup, "stuck")
    assert cancelled.is_set()
    assert await stuck.wait_stopped() == "killed"
    children = await settled(sup)
    assert children[0].state == "terminated"
    restarted = await Supervisor.restart_child(sup, "stuck")
    assert restarted.is_alive
    await Supervisor.terminate_child(sup, "stuck")
    await Supervisor.delete_child(sup, "stuck")
    assert await settled(sup) == []


async def test_brutal_kill_with_zero_shutdown(system: ActorSystem) -> None:
    journal = Journal()
    sup = await system.spawn(Supervisor, [worker(journal, "a", shutdown=0)], name="sup")
    a = child_ref(system, "/sup/a")
    await Supervisor.terminate_child(sup, "a")
    assert await a.wait_stopped() == "killed"
    assert ("stop", "a") not in journal.events  # brutal kill: no on_stop


async def test_start_child_at_run_time_and_errors(system: ActorSystem) -> None:
    journal = Journal()
    sup = await system.spawn(Supervisor, [worker(journal, "a")], name="sup")
    b = await Supervisor.start_child(sup, worker(journal, "b"))
    assert b.path == "/sup/b"
    with pytest.raises(ValueError, match="already exists"):
        await Supervisor.start_child(sup, worker(journal, "b"))
    with pytest.raises(KeyError, match="nope"):
        await Supervisor.terminate_child(sup, "nope")
    with pytest.raises(ValueError, match="is running"):
        await Supervisor.delete_child(sup, "a")
    assert [c.id for c in await settled(sup)] == ["a", "b"]
    assert sup.is_alive  # bad calls never hurt the supervisor


async def test_a_child_failing_to_start_fails_the_supervisor_start(system: ActorSystem) -> None:
    journal = Journal()

    class Broken(Actor[Any]):
        def on_start(self) -> None:
            raise OSError("port in use")

    specs = [worker(journal, "a"), ChildSpec(id="broken", factory=Broken), worker(journal, "c")]
    with pytest.raises(flockrt.ActorStartFailed) as info:
        await system.spawn(Supervisor, specs, name="sup")
    assert journal.events == [("start", "a"), ("stop", "a")]  # started ones are stopped again
    assert system.lookup("sup") is None
    assert "port in use" in str(info.value)


async def test_backoff_delays_the_restart_and_keeps_the_mailbox(system: ActorSystem) -> None:
    journal = Journal()
    backoff = Backoff(initial=0.02, maximum=0.02, jitter=0)
    sup = await system.spawn(
        functools.partial(Supervisor, [worker(journal, "a")], backoff=backoff), name="sup"
    )
    a = child_ref(system, "/sup/a")
    loop = asyncio.get_running_loop()
    crashed_at = loop.time()
    await crash(a)
    a.tell("waiting in the mailbox")
    children = await settled(sup)
    assert children[0].state == "restarting"
    reply = await a.ask("probe")
    assert loop.time() - crashed_at >= 0.02
    assert reply == ("a", ["waiting in the mailbox", "probe"])


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, multiplier=2, jitter=0.1)
    rng = random.Random(7)
    for attempt, base in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (9, 1.0)]:
        delay = backoff.delay(attempt, rng)
        assert base * 0.9 <= delay <= base * 1.1
    with pytest.raises(ValueError, match="initial <= maximum"):
        Backoff(initial=2, maximum=1)


async def test_dynamic_supervisor_pool(system: ActorSystem) -> None:
    journal = Journal()
    template = ChildSpec(id="agent", factory=Worker, args=(journal,), restart="transient")
    pool = await system.spawn(functools.partial(DynamicSupervisor, template, max_children=3), name="pool")
    refs = [await DynamicSupervisor.start_child(pool, f"agent-{i}") for i in range(3)]
    with pytest.raises(ValueError, match="max_children"):
        await DynamicSupervisor.start_child(pool, "agent-3")
    await crash(refs[1])
    assert await refs[1].ask("hi") == ("agent-1", ["hi"])  # restarted in place
    await DynamicSupervisor.terminate_child(pool, refs[0])
    assert not refs[0].is_alive
    counts = await DynamicSupervisor.count_children(pool)
    assert (counts.specs, counts.active) == (2, 2)
    named = await DynamicSupervisor.start_child(pool, "agent-x", name="x")
    assert named.path == "/pool/x"
    with pytest.raises(KeyError):
        await DynamicSupervisor.terminate_child(pool, refs[0])


async def test_snapshot_is_json_and_describes_the_tree(system: ActorSystem) -> None:
    journal = Journal()
    inner = functools.partial(Supervisor, [worker(journal, "w")])
    specs = [worker(journal, "a"), ChildSpec(id="inner", factory=inner, type="supervisor")]
    sup = await system.spawn(functools.partial(Supervisor, specs, strategy="rest_for_one"), name="root")
    await crash(child_ref(system, "/root/a"))
    await settled(sup)
    tree = json.loads(json.dumps(system.snapshot()))
    root = tree["children"][0]
    assert root["path"] == "/root"
    assert root["supervisor"] == {"strategy": "rest_for_one", "max_restarts": 3, "max_seconds": 5.0}
    a, inner_node = root["children"]
    assert (a["id"], a["restart"], a["type"], a["restarts"], a["state"]) == (
        "a",
        "permanent",
        "worker",
        1,
        "running",
    )
    assert inner_node["type"] == "supervisor" and inner_node["restarts"] == 1  # rest_for_one
    assert inner_node["children"][0]["path"] == "/root/inner/w"


def test_child_spec_validation() -> None:
    with pytest.raises(ValueError, match="restart must be one of permanent, transient, temporary"):
        ChildSpec(id="x", factory=Worker, restart="always")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="child id"):
        ChildSpec(id="a/b", factory=Worker)
    with pytest.raises(ValueError, match="shutdown"):
        ChildSpec(id="x", factory=Worker, shutdown=-1)
    with pytest.raises(ValueError, match="duplicate child ids: x"):
        Supervisor([ChildSpec(id="x", factory=Worker), ChildSpec(id="x", factory=Worker)])
    with pytest.raises(ValueError, match="strategy must be one of"):
        Supervisor([], strategy="one_for_some")
    with pytest.raises(ValueError, match="max_restarts"):
        Supervisor([], max_restarts=-1)


async def test_unexpected_message_to_a_supervisor_is_a_dead_letter(system: ActorSystem) -> None:
    sup = await system.spawn(Supervisor, [], name="sup")
    assert await sup.ask("hello") is None
    assert system.dead_letters == 1
    assert sup.is_alive


async def test_wrongly_typed_calls_fail_the_caller_not_the_supervisor(system: ActorSystem) -> None:
    journal = Journal()
    template = ChildSpec(id="agent", factory=Worker, args=(journal,))
    pool = await system.spawn(DynamicSupervisor, template, name="pool")
    static = await system.spawn(Supervisor, [worker(journal, "a")], name="static")
    with pytest.raises(ValueError, match="no operation"):
        await Supervisor.terminate_child(pool, "agent")  # a static call to a dynamic supervisor
    with pytest.raises(TypeError, match="needs a ChildSpec"):
        await Supervisor.start_child(static, "not a spec")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="child's ActorRef"):
        await DynamicSupervisor.terminate_child(pool, "agent")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no operation"):
        await DynamicSupervisor.start_child(static, "x")
    assert pool.is_alive and static.is_alive
    assert system.failure is None


async def test_dynamic_supervisor_forgets_children_that_end_for_good(system: ActorSystem) -> None:
    journal = Journal()
    template = ChildSpec(id="agent", factory=Worker, args=(journal,), restart="transient")
    pool = await system.spawn(functools.partial(DynamicSupervisor, template, max_children=1), name="pool")
    first = await DynamicSupervisor.start_child(pool, "first")
    first.tell("quit")  # a normal stop: transient, so not restarted, and not kept either
    await first.wait_stopped()
    assert await DynamicSupervisor.which_children(pool) == []
    second = await DynamicSupervisor.start_child(pool, "second")  # room again under max_children
    assert second.is_alive


async def test_temporary_siblings_are_not_restarted_by_the_strategy(system: ActorSystem) -> None:
    journal = Journal()
    specs = [worker(journal, "a"), worker(journal, "temp", restart="temporary")]
    sup = await system.spawn(functools.partial(Supervisor, specs, strategy="one_for_all"), name="sup")
    temp = child_ref(system, "/sup/temp")
    await crash(child_ref(system, "/sup/a"))
    children = await settled(sup)
    assert [(c.id, c.state, c.restarts) for c in children] == [("a", "running", 1)]
    assert not temp.is_alive


async def test_escalation_through_a_plain_top_level_actor_stops_the_system() -> None:
    journal = Journal()

    class Owner(Actor[Any]):
        async def on_start(self) -> None:
            await self.context.spawn(
                functools.partial(Supervisor, [worker(journal, "w")], max_restarts=0), name="sup"
            )

        def receive(self, message: Any) -> None:
            pass

    system = ActorSystem()
    owners: list[flockrt.ActorRef[Any]] = []

    async def run() -> None:
        async with system:
            owners.append(await system.spawn(Owner, name="owner"))
            await crash(child_ref(system, "/owner/sup/w"))
            await system.wait()

    with pytest.raises(RestartIntensityExceeded):
        await run()
    # Like a linked process: the plain parent failed with the supervisor's error, then the root.
    assert isinstance(await owners[0].wait_stopped(), RestartIntensityExceeded)
    assert system.stats().live == 0
