"""The kernel's hot paths: ask envelopes, deadline slots, and the async drain's Task."""

from __future__ import annotations

import asyncio
import gc
import math
import weakref
from typing import Any

import pytest

import flockrt
from flockrt import Actor, ActorSystem
from flockrt.actors.deadlines import AskDeadlines
from tests.conftest import wait_for


def held(system: ActorSystem) -> int:
    """Asks whose deadline ``system`` holds: entered, waiting for a second sweep, or in a slot."""
    deadlines = system._ask_deadlines
    slotted = sum(len(slot) for slot in deadlines._slots.values())
    return len(deadlines.entered) + len(deadlines._waiting) + slotted


def swept(system: ActorSystem) -> bool:
    """The asks entered so far went through both sweeps (the unanswered ones are in slots)."""
    return not system._ask_deadlines.entered and not system._ask_deadlines._waiting


class Recorder(Actor[Any]):
    """Answers every message with itself, so tuples come back as they were told."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def receive(self, message: Any) -> Any:
        if message == "seen":
            return list(self.seen)
        if message == "boom":
            raise RuntimeError("boom")
        self.seen.append(message)
        return message


class TaskAware(Actor[Any]):
    """An async handler that uses its Task: current_task(), and asyncio.timeout around a wait."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def receive(self, message: Any) -> Any:
        task = asyncio.current_task()
        assert task is not None
        if message == "task":  # never waits
            return task
        if message == "timeout":
            try:
                async with asyncio.timeout(0.01):
                    await self.gate.wait()  # never set: the timeout ends the wait
            except TimeoutError:
                return "timed out", task
            return "not timed out", task
        if message == "waits":
            await asyncio.sleep(0)
            return task
        return message


async def test_tuples_are_messages_not_asks(system: ActorSystem) -> None:
    ref = await system.spawn(Recorder)
    messages: list[Any] = [(), ("x",), (None, 1, 2, 3), ((), ())]
    for message in messages:
        ref.tell(message)
    assert await ref.ask("seen") == messages
    assert await ref.ask(()) == ()
    assert await ref.ask((1, 2, 3, 4)) == (1, 2, 3, 4)


async def test_an_async_handler_has_its_task_whether_or_not_it_waits(system: ActorSystem) -> None:
    ref = await system.spawn(TaskAware)
    first = await ref.ask("task")
    assert isinstance(first, asyncio.Task) and first is not asyncio.current_task()
    outcome, task = await ref.ask("timeout", timeout=2)
    assert outcome == "timed out" and isinstance(task, asyncio.Task)
    assert isinstance(await ref.ask("waits"), asyncio.Task)
    assert await ref.ask("after") == "after"  # the timeout inside the handler harmed nothing


async def test_sequential_asks_to_an_async_handler_share_one_task(system: ActorSystem) -> None:
    ref = await system.spawn(TaskAware)
    tasks = [await ref.ask("task") for _ in range(5)]
    assert all(task is tasks[0] for task in tasks)  # the drain Task went on, none was started
    await wait_for(lambda: ref._cell._task is None)  # and an idle actor still owns no Task
    assert await ref.ask("task") is not tasks[0]


async def test_every_way_an_ask_ends_leaves_its_deadline_slot(system: ActorSystem) -> None:
    ref = await system.spawn(Recorder)
    assert await ref.ask("a", timeout=60) == "a"
    with pytest.raises(flockrt.ActorFailed):  # the handler raised (the actor stops)
        await ref.ask("boom", timeout=60)
    await wait_for(lambda: held(system) == 0)  # the sweep dropped both: they were settled

    gate = asyncio.Event()

    class Slow(Actor[Any]):
        async def receive(self, message: Any) -> Any:
            await gate.wait()
            return message

    slow = await system.spawn(Slow, mailbox_capacity=2)
    first = asyncio.ensure_future(slow.ask("first", timeout=60))
    await wait_for(lambda: slow._cell._task is not None and not slow._cell._mailbox)
    queued = asyncio.ensure_future(slow.ask("queued", timeout=60))
    abandoned = asyncio.ensure_future(slow.ask("abandoned", timeout=60))
    full = asyncio.ensure_future(slow.ask("waits for room", timeout=60))  # the mailbox holds 2
    await wait_for(lambda: held(system) == 4 and swept(system))  # all four wait in slots
    abandoned.cancel()
    full.cancel()
    await asyncio.wait((abandoned, full))
    # The one waiting for room and the abandoned one (still queued) left their slots.
    await wait_for(lambda: held(system) == 2)
    gate.set()
    assert await first == "first" and await queued == "queued"
    await wait_for(lambda: held(system) == 0)

    gate.clear()
    stuck = asyncio.ensure_future(slow.ask("stuck", timeout=60))
    await wait_for(lambda: slow._cell._task is not None and not slow._cell._mailbox)
    behind = asyncio.ensure_future(slow.ask("behind", timeout=60))
    await wait_for(lambda: held(system) == 2 and swept(system))
    await slow._cell._stop_and_wait("shutdown", 0)  # killed while handling, one queued
    for ask in (stuck, behind):
        with pytest.raises(flockrt.ActorStopped):
            await ask
    await wait_for(lambda: held(system) == 0)


class Silent(Actor[Any]):
    """Never answers an ask (its handler waits for a gate that opens only at the end)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def receive(self, message: Any) -> Any:
        await self.gate.wait()
        return message


async def test_an_ask_deadline_is_never_early_and_late_by_at_most_the_sweep_and_a_millisecond(
    system: ActorSystem,
) -> None:
    ref = await system.spawn(Silent)
    loop = asyncio.get_running_loop()
    deadlines = system._ask_deadlines
    for timeout in (0.0, 0.03, 0.25):
        asked = loop.time()
        ask = asyncio.ensure_future(ref.ask("never answered", timeout=timeout))
        await wait_for(lambda: bool(deadlines.entered))
        future = deadlines.entered[-1][2]
        await wait_for(lambda: swept(system))
        swept_at = loop.time()
        (key,) = [k for k, slot in deadlines._slots.items() if future in slot]
        # Its slot's millisecond is never before the ask's deadline, and at most the sweep's
        # delay plus the rounding's millisecond after it.
        assert asked + timeout <= key / 1000 <= swept_at + timeout + 0.001
        assert swept_at - asked < 0.5  # (the sweep came after SWEEP, not at some later time)
        with pytest.raises(flockrt.AskTimeout):
            await ask
        assert loop.time() - asked >= timeout
    ref._cell._actor.gate.set()  # type: ignore[union-attr]


async def test_an_infinite_ask_timeout_waits_as_none_does(system: ActorSystem) -> None:
    ref = await system.spawn(Silent)
    ask = asyncio.ensure_future(ref.ask("answered late", timeout=math.inf))
    await wait_for(lambda: bool(system._ask_deadlines.entered))
    await wait_for(lambda: swept(system))
    assert held(system) == 0 and not ask.done()  # no deadline slot: it has no deadline
    ref._cell._actor.gate.set()  # type: ignore[union-attr]
    assert await ask == "answered late"


async def test_ask_timeouts_under_load_all_fire_none_early(system: ActorSystem) -> None:
    silent = await system.spawn(Silent)
    echo = await system.spawn(Recorder)
    loop = asyncio.get_running_loop()
    started = loop.time()
    timed = [asyncio.ensure_future(silent.ask(i, timeout=0.05)) for i in range(300)]

    async def busy() -> int:  # asks answered meanwhile, in many sweeps
        answered = 0
        while not all(ask.done() for ask in timed):
            answered += await echo.ask(answered, timeout=60) == answered
        return answered

    answered = await asyncio.wait_for(busy(), 10)
    assert answered > 0
    outcomes = await asyncio.gather(*timed, return_exceptions=True)
    assert all(isinstance(outcome, flockrt.AskTimeout) for outcome in outcomes)
    assert loop.time() - started >= 0.05 and system._ask_deadlines.expired == 300
    silent._cell._actor.gate.set()  # type: ignore[union-attr]


async def test_settled_asks_release_their_memory(system: ActorSystem) -> None:
    class Big:
        pass

    class Maker(Actor[Any]):
        async def receive(self, message: Any) -> Any:
            if message == "slow":
                await asyncio.sleep(0.01)  # still unanswered at the sweep: it enters a slot
            return Big()

    ref = await system.spawn(Maker)
    answers = [weakref.ref(await ref.ask("fast", timeout=60)) for _ in range(50)]
    answers += [weakref.ref(await ref.ask("slow", timeout=60)) for _ in range(3)]
    # Nothing keeps an answered ask until its 60 s deadline: the sweep drops the fast ones,
    # and the slow ones left their slot when answered.
    await wait_for(lambda: held(system) == 0)
    gc.collect()
    assert all(answer() is None for answer in answers)


def timed_out(key: Any, timeout: float) -> BaseException:
    return TimeoutError(f"{key} after {timeout} s")


async def test_a_shorter_timeout_than_every_pending_one_is_not_late() -> None:
    loop = asyncio.get_running_loop()
    deadlines = AskDeadlines(loop, timed_out)
    late, soon = loop.create_future(), loop.create_future()
    deadlines.add(late, "late", 60)
    started = loop.time()
    deadlines.add(soon, "soon", 0.02)  # earlier than the armed timer: it is armed again
    with pytest.raises(TimeoutError, match=r"soon after 0\.02 s"):
        await asyncio.wait_for(soon, 2)
    assert 0.02 <= loop.time() - started < 1.0
    assert not late.done() and deadlines.expired == 1


async def test_deadline_slots_that_empty_are_dropped_when_the_timer_passes() -> None:
    loop = asyncio.get_running_loop()
    deadlines = AskDeadlines(loop, timed_out)
    answered = []
    for _ in range(3):  # asks in three different milliseconds, all settled at once
        future = loop.create_future()
        slot = deadlines.hold(future, "answered", 0.01)
        future.set_result(None)
        slot.pop(future)
        answered.append(future)
        await asyncio.sleep(0.002)
    last = loop.create_future()
    deadlines.add(last, "last", 0.05)
    await wait_for(lambda: len(deadlines._slots) == 1, timeout=2)  # the empty ones went
    with pytest.raises(TimeoutError, match=r"last after 0\.05 s"):
        await asyncio.wait_for(last, 2)
    assert deadlines._slots == {} and deadlines._keys == [] and deadlines.expired == 1
