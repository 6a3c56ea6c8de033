"""The actor kernel: refs, asks, mailboxes, lifecycle, watch, timers, dead letters, shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

import flockrt
from flockrt import Actor, ActorSystem, Terminated
from tests.conftest import wait_for


class Counter(Actor[Any]):
    def __init__(self) -> None:
        self.count = 0

    def receive(self, message: Any) -> Any:
        if message == "get":
            return self.count
        if message == "boom":
            raise RuntimeError("boom")
        self.count += 1
        return None


class AsyncRecorder(Actor[Any]):
    """Records messages; 'wait' blocks on a gate so tests control when a handler ends."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.seen: list[Any] = []
        self.gate = gate

    async def receive(self, message: Any) -> Any:
        if message == "wait":
            assert self.gate is not None
            await self.gate.wait()
            return "waited"
        if message == "seen":
            return list(self.seen)
        self.seen.append(message)
        return message


async def test_tell_then_ask_sees_every_message_in_order(system: ActorSystem) -> None:
    ref = await system.spawn(AsyncRecorder)
    for i in range(500):  # more than one turn's batch
        ref.tell(i)
    assert await ref.ask("seen") == list(range(500))


async def test_sync_and_async_handlers_answer_asks(system: ActorSystem) -> None:
    sync_ref = await system.spawn(Counter)
    async_ref = await system.spawn(AsyncRecorder)
    sync_ref.tell("inc")
    assert await sync_ref.ask("get") == 1
    assert await async_ref.ask("hello") == "hello"


async def test_messages_from_each_sender_arrive_in_order(system: ActorSystem) -> None:
    ref = await system.spawn(AsyncRecorder)

    async def sender(tag: str) -> None:
        for i in range(200):
            await ref.send((tag, i))
            if i % 17 == 0:
                await asyncio.sleep(0)  # interleave the senders

    await asyncio.gather(sender("a"), sender("b"), sender("c"))
    seen = await ref.ask("seen")
    for tag in "abc":
        assert [i for t, i in seen if t == tag] == list(range(200))


async def test_idle_actor_owns_no_task(system: ActorSystem) -> None:
    before = len(asyncio.all_tasks())
    refs = [await system.spawn(AsyncRecorder) for _ in range(50)]
    for ref in refs:
        assert await ref.ask("x") == "x"
    await wait_for(lambda: all(ref._cell._task is None for ref in refs))
    assert len(asyncio.all_tasks()) == before


async def test_a_turn_is_bounded_so_actors_share_the_loop() -> None:
    order: list[str] = []

    class Tagger(Actor[str]):
        def receive(self, message: str) -> None:
            order.append(message)

    async with ActorSystem(throughput=4) as system:
        a = await system.spawn(Tagger)
        b = await system.spawn(Tagger)
        for _ in range(12):
            a.tell("a")
        for _ in range(12):
            b.tell("b")
        await wait_for(lambda: len(order) == 24)
    # With a batch of 4 per turn, b is served long before a has drained its 12 messages.
    assert order.index("b") == 4
    assert order[:12] != ["a"] * 12


async def test_mailbox_full_raises_and_send_waits_for_room(system: ActorSystem) -> None:
    gate = asyncio.Event()
    ref = await system.spawn(AsyncRecorder, gate, mailbox_capacity=3)
    ref.tell("wait")  # taken out of the mailbox, then the handler blocks on the gate
    await wait_for(lambda: ref._cell._mailbox is None or len(ref._cell._mailbox) == 0)
    for i in range(3):
        ref.tell(i)
    with pytest.raises(flockrt.MailboxFull) as info:
        ref.tell("overflow")
    assert info.value.capacity == 3
    assert system.stats().mailbox_overflows == 1

    sent = asyncio.ensure_future(ref.send("late"))
    await asyncio.sleep(0)
    assert not sent.done()  # backpressure: no room yet
    gate.set()
    await asyncio.wait_for(sent, 2)
    assert await ref.ask("seen") == [0, 1, 2, "late"]


async def test_ask_timeout(system: ActorSystem) -> None:
    gate = asyncio.Event()
    ref = await system.spawn(AsyncRecorder, gate)
    with pytest.raises(flockrt.AskTimeout) as info:
        await ref.ask("wait", timeout=0.01)
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout == 0.01
    gate.set()
    assert await ref.ask("after") == "after"  # the actor is fine


async def test_ask_failure_carries_the_cause_and_unsupervised_actor_stops(
    system: ActorSystem, caplog: pytest.LogCaptureFixture
) -> None:
    ref = await system.spawn(Counter)
    with caplog.at_level(logging.ERROR, logger="flockrt.actor"), pytest.raises(flockrt.ActorFailed) as info:
        await ref.ask("boom")
    assert isinstance(info.value.cause, RuntimeError)
    assert info.value.__cause__ is info.value.cause
    assert any(r.exc_info and "boom" in r.getMessage() for r in caplog.records)  # with traceback
    assert isinstance(await ref.wait_stopped(), RuntimeError)
    assert system.stats().failures == 1
    with pytest.raises(flockrt.ActorStopped):
        await ref.ask("get")


async def test_ask_to_stopped_actor_fails_fast_and_tell_goes_to_dead_letters(system: ActorSystem) -> None:
    ref = await system.spawn(Counter)
    assert await ref.stop() == "normal"
    assert not ref.is_alive
    with pytest.raises(flockrt.ActorStopped):
        await ref.ask("get", timeout=None)
    before = system.dead_letters
    ref.tell("lost")
    await ref.send("lost too")
    assert system.dead_letters == before + 2


async def test_stop_drains_queued_messages_then_closes(system: ActorSystem) -> None:
    gate = asyncio.Event()
    ref = await system.spawn(AsyncRecorder, gate)
    in_flight = asyncio.ensure_future(ref.ask("wait"))
    await wait_for(lambda: ref._cell._task is not None and not ref._cell._mailbox)
    ref.tell("queued 1")
    queued_ask = asyncio.ensure_future(ref.ask("queued ask"))
    await asyncio.sleep(0)
    stopped = ref.stop()
    assert not ref.is_alive
    ref.tell("after stop")  # closed: a dead letter
    with pytest.raises(flockrt.ActorStopped):
        await ref.ask("after stop")
    gate.set()
    assert await in_flight == "waited"
    assert await queued_ask == "queued ask"  # queued before the stop: still answered
    assert await stopped == "normal"
    assert system.dead_letters == 1


async def test_killed_actor_sends_its_queue_to_dead_letters(system: ActorSystem) -> None:
    gate = asyncio.Event()
    ref = await system.spawn(AsyncRecorder, gate, shutdown_timeout=0.01)
    in_flight = asyncio.ensure_future(ref.ask("wait"))
    await wait_for(lambda: ref._cell._task is not None and not ref._cell._mailbox)
    ref.tell("queued")
    queued_ask = asyncio.ensure_future(ref.ask("queued ask"))
    await asyncio.sleep(0)
    await ref._cell._stop_and_wait("shutdown", 0.01)  # what a parent does on shutdown
    assert await ref.wait_stopped() == "killed"
    with pytest.raises(flockrt.ActorStopped, match="while handling"):
        await in_flight
    with pytest.raises(flockrt.ActorStopped, match="before answering"):
        await queued_ask
    assert system.dead_letters == 1


async def test_names_are_unique_and_looked_up(system: ActorSystem) -> None:
    ref = await system.spawn(Counter, name="counter")
    assert ref.name == "counter" and ref.path == "/counter"
    assert system.lookup("counter") is ref
    assert system.lookup("/counter") is ref
    with pytest.raises(flockrt.ActorNameTaken):
        await system.spawn(Counter, name="counter")
    with pytest.raises(ValueError, match="invalid actor name"):
        await system.spawn(Counter, name="a/b")
    await ref.stop()
    assert system.lookup("counter") is None
    again = await system.spawn(Counter, name="counter")  # the name is free again
    assert again != ref


async def test_refs_are_hashable_comparable_and_not_constructible(system: ActorSystem) -> None:
    a = await system.spawn(Counter, name="a")
    b = await system.spawn(Counter, name="b")
    assert len({a, b, a}) == 2
    assert sorted([b, a]) == [a, b]
    assert repr(a) == "<ActorRef /a>"
    with pytest.raises(TypeError):
        flockrt.ActorRef()
    with pytest.raises(TypeError):
        flockrt.ActorContext()


async def test_lifecycle_hooks_sync_and_async(system: ActorSystem) -> None:
    events: list[str] = []

    class Hooks(Actor[Any]):
        async def on_start(self) -> None:
            await asyncio.sleep(0)
            events.append(f"start {self.context.path}")

        def receive(self, message: Any) -> Any:
            events.append(f"got {message}")

        async def on_stop(self) -> None:
            await asyncio.sleep(0)
            events.append("stop")

    ref = await system.spawn(Hooks, name="hooks")
    assert events == ["start /hooks"]  # spawn returns after on_start
    ref.tell(1)
    await ref.stop()
    assert events == ["start /hooks", "got 1", "stop"]


async def test_failing_on_start_makes_spawn_raise_and_leaves_nothing(system: ActorSystem) -> None:
    class Broken(Actor[Any]):
        def on_start(self) -> None:
            raise ValueError("no config")

    with pytest.raises(flockrt.ActorStartFailed) as info:
        await system.spawn(Broken, name="broken")
    assert isinstance(info.value.cause, ValueError)
    assert system.lookup("broken") is None
    assert system.stats().live == 0


async def test_context_is_not_available_in_init(system: ActorSystem) -> None:
    class Early(Actor[Any]):
        def __init__(self) -> None:
            self.context.ref  # noqa: B018

    with pytest.raises(flockrt.ActorStartFailed, match="available from on_start"):
        await system.spawn(Early)


async def test_factory_must_return_an_actor(system: ActorSystem) -> None:
    with pytest.raises(flockrt.ActorStartFailed, match="not an Actor"):
        await system.spawn(lambda: object())  # type: ignore[arg-type, return-value]


async def test_children_stop_before_their_parent_in_reverse_order(system: ActorSystem) -> None:
    stopped: list[str] = []

    class Node(Actor[Any]):
        def __init__(self, label: str, kids: int = 0) -> None:
            self.label = label
            self.kids = kids

        async def on_start(self) -> None:
            for i in range(self.kids):
                await self.context.spawn(Node, f"{self.label}.{i}", name=str(i))

        def receive(self, message: Any) -> Any:
            return self.context.children

        def on_stop(self) -> None:
            stopped.append(self.label)

    root = await system.spawn(Node, "root", 3, name="root")
    children = await root.ask("children")
    assert [c.path for c in children] == ["/root/0", "/root/1", "/root/2"]
    await root.stop()
    assert stopped == ["root.2", "root.1", "root.0", "root"]
    assert all(not c.is_alive for c in children)


async def test_watch_delivers_terminated_also_for_already_dead(system: ActorSystem) -> None:
    got: asyncio.Queue[Terminated] = asyncio.Queue()

    class Watcher(Actor[Any]):
        def receive(self, message: Any) -> Any:
            if isinstance(message, Terminated):
                got.put_nowait(message)
            else:
                self.context.watch(message)

    watcher = await system.spawn(Watcher)
    live = await system.spawn(Counter)
    watcher.tell(live)
    await wait_for(lambda: live._cell._watchers is not None)
    await live.stop()
    first = await asyncio.wait_for(got.get(), 2)
    assert first.ref is live and first.reason == "normal" and not first.failed

    dead = await system.spawn(Counter)
    await dead.stop()
    watcher.tell(dead)
    second = await asyncio.wait_for(got.get(), 2)
    assert second.ref is dead

    crashing = await system.spawn(Counter)
    watcher.tell(crashing)
    await wait_for(lambda: crashing._cell._watchers is not None)
    crashing.tell("boom")
    third = await asyncio.wait_for(got.get(), 2)
    assert third.failed and isinstance(third.reason, RuntimeError)


async def test_unwatch_stops_notifications(system: ActorSystem) -> None:
    class Watcher(Actor[Any]):
        def __init__(self) -> None:
            self.terminated: list[Terminated] = []

        def receive(self, message: Any) -> Any:
            if isinstance(message, Terminated):
                self.terminated.append(message)
            elif message == "count":
                return len(self.terminated)
            else:
                op, ref = message
                getattr(self.context, op)(ref)
            return None

    watcher = await system.spawn(Watcher)
    target = await system.spawn(Counter)
    watcher.tell(("watch", target))
    watcher.tell(("unwatch", target))
    assert await watcher.ask("count") == 0
    await target.stop()
    assert await watcher.ask("count") == 0


async def test_timers_once_periodic_and_cancelled_on_stop(system: ActorSystem) -> None:
    ticks: list[str] = []
    done = asyncio.Event()

    class Ticker(Actor[str]):
        def on_start(self) -> None:
            self.context.send_after(0.001, "once")
            self.periodic = self.context.send_periodic(0.001, "tick")

        def receive(self, message: str) -> None:
            ticks.append(message)
            if ticks.count("tick") == 3:
                self.periodic.cancel()
                self.context.send_after(0.001, "after-cancel")
            if message == "after-cancel":
                done.set()

    ref = await system.spawn(Ticker)
    await asyncio.wait_for(done.wait(), 2)
    assert ticks.count("once") == 1
    assert ticks.count("tick") == 3  # cancelled after the third tick
    timer_owner = ref._cell
    late = timer_owner.send_after(60, "never")
    assert late.active
    await ref.stop()
    assert not late.active  # timers die with their actor


async def test_invalid_timer_arguments(system: ActorSystem) -> None:
    class Idle(Actor[Any]):
        def receive(self, message: Any) -> None:
            pass

    ref = await system.spawn(Idle)
    with pytest.raises(ValueError, match="interval"):
        ref._cell.send_periodic(0, "x")
    with pytest.raises(ValueError, match="delay"):
        ref._cell.send_after(-1, "x")


async def test_shutdown_stops_top_level_actors_in_reverse_spawn_order() -> None:
    stopped: list[str] = []

    class Named(Actor[Any]):
        def __init__(self, label: str) -> None:
            self.label = label

        def receive(self, message: Any) -> None:
            pass

        def on_stop(self) -> None:
            stopped.append(self.label)

    async with ActorSystem() as system:
        for label in "abc":
            await system.spawn(Named, label)
    assert stopped == ["c", "b", "a"]
    with pytest.raises(flockrt.SystemStopped):
        await system.spawn(Named, "late")


async def test_shutdown_timeout_cancels_a_stuck_actor(caplog: pytest.LogCaptureFixture) -> None:
    cancelled = asyncio.Event()

    class Stuck(Actor[Any]):
        async def receive(self, message: Any) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

    async with ActorSystem() as system:
        ref = await system.spawn(Stuck, shutdown_timeout=0.02)
        asker = asyncio.ensure_future(ref.ask("hang", timeout=None))
        await wait_for(lambda: ref._cell._task is not None and not ref._cell._mailbox)
        with caplog.at_level(logging.WARNING):
            await system.shutdown()
        assert cancelled.is_set()
        assert await ref.wait_stopped() == "killed"
        with pytest.raises(flockrt.ActorStopped, match="while handling"):
            await asker
    assert "did not stop within" in caplog.text


async def test_stop_inside_a_handler_handles_the_queue_then_stops(system: ActorSystem) -> None:
    handled: list[int] = []

    class Quitter(Actor[int]):
        def receive(self, message: int) -> None:
            handled.append(message)
            if message == 1:
                self.context.stop()

    ref = await system.spawn(Quitter)
    for i in range(4):
        ref.tell(i)
    assert await ref.wait_stopped() == "normal"
    assert handled == [0, 1, 2, 3]
    ref.tell(4)
    assert system.dead_letters == 1


async def test_stats_count_processed_messages(system: ActorSystem) -> None:
    ref = await system.spawn(Counter)
    for _ in range(100):
        ref.tell("inc")
    assert await ref.ask("get") == 100
    stats = system.stats()
    assert stats.processed == 101
    assert stats.live == 1


async def test_many_idle_actors_cost_little_memory(system: ActorSystem) -> None:
    import tracemalloc

    class Idle(Actor[Any]):
        def receive(self, message: Any) -> None:
            pass

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    refs = [await system.spawn(Idle) for _ in range(5000)]
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    per_actor = used / len(refs)
    assert per_actor < 1500, f"{per_actor:.0f} bytes per idle actor"


async def test_ask_waits_for_room_within_its_timeout(system: ActorSystem) -> None:
    gate = asyncio.Event()
    ref = await system.spawn(AsyncRecorder, gate, mailbox_capacity=1)
    ref.tell("wait")
    await wait_for(lambda: ref._cell._task is not None and not ref._cell._mailbox)
    ref.tell("fills the mailbox")
    with pytest.raises(flockrt.AskTimeout):
        await ref.ask("no room", timeout=0.01)
    answer = asyncio.ensure_future(ref.ask("room later"))
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.wait_for(answer, 2) == "room later"


async def test_a_sender_waiting_for_room_sees_the_actor_stop(system: ActorSystem) -> None:
    gate = asyncio.Event()
    ref = await system.spawn(AsyncRecorder, gate, mailbox_capacity=1, shutdown_timeout=0.01)
    ref.tell("wait")
    await wait_for(lambda: ref._cell._task is not None and not ref._cell._mailbox)
    ref.tell("fills the mailbox")
    blocked = asyncio.ensure_future(ref.send("blocked"))
    await asyncio.sleep(0)
    assert not blocked.done()
    await ref._cell._stop_and_wait("shutdown", 0)  # killed: the waiting sender must wake
    await asyncio.wait_for(blocked, 2)
    assert system.dead_letters == 2  # the queued message and the blocked one


async def test_cancelled_sender_does_not_block_the_next_one(system: ActorSystem) -> None:
    gate = asyncio.Event()
    ref = await system.spawn(AsyncRecorder, gate, mailbox_capacity=1)
    ref.tell("wait")
    await wait_for(lambda: ref._cell._task is not None and not ref._cell._mailbox)
    ref.tell("fills the mailbox")
    first = asyncio.ensure_future(ref.send("first"))
    second = asyncio.ensure_future(ref.send("second"))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    await asyncio.wait_for(second, 2)
    assert await ref.ask("seen") == ["fills the mailbox", "second"]


async def test_ask_timeout_is_never_early_and_answered_asks_keep_nothing(system: ActorSystem) -> None:
    gate = asyncio.Event()
    ref = await system.spawn(AsyncRecorder, gate)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(flockrt.AskTimeout):
        await ref.ask("wait", timeout=0.02)
    assert loop.time() - started >= 0.02
    gate.set()
    for i in range(100):
        assert await ref.ask(i, timeout=60) == i
    # Answered asks left their deadline slots at once: nothing is held until the deadline.
    assert sum(len(slot) for slot in system._ask_deadlines._slots.values()) == 0


async def test_ask_rejects_a_negative_timeout(system: ActorSystem) -> None:
    ref = await system.spawn(Counter)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="ask timeout"):
            await ref.ask("get", timeout=bad)
    assert await ref.ask("get", timeout=0.5) == 0
