"""Ask deadlines of actors with a plain ``def receive``: found by the sweeps in the mailbox.

An ask to such an actor is not appended to ``AskDeadlines.entered``: the actor answers it in
the turn that takes it from the mailbox, so the sweeps find its unanswered asks there
(``AskDeadlines.watch``). These tests hold it to the same bounds as the lists' asks: never early,
at most the sweep's delay and a millisecond late; and they cover the hand-over to the lists when
a watched actor begins to run an ``async def receive``, and an ask that waits for mailbox room.
"""

from __future__ import annotations

import asyncio
import gc
import math
import weakref
from typing import Any

import pytest

import flockrt
from flockrt import Actor, ActorSystem
from flockrt.actors.context import ActorContext
from tests.conftest import wait_for


class Gated(Actor[Any]):
    """A ``def receive`` that takes no message until its ``on_start`` is let through."""

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate

    async def on_start(self) -> None:
        await self.gate.wait()

    def receive(self, message: Any) -> Any:
        return message


class Echo(Actor[Any]):
    def receive(self, message: Any) -> Any:
        return message


async def gated(system: ActorSystem, name: str, capacity: int | None = None) -> tuple[Any, asyncio.Event]:
    """A started-but-not-running ``Gated`` actor (its asks wait in its mailbox) and its gate."""
    gate = asyncio.Event()
    spawning = asyncio.ensure_future(system.spawn(Gated, gate, name=name, mailbox_capacity=capacity))
    await wait_for(lambda: system.lookup(name) is not None)
    ref = system.lookup(name)
    assert ref is not None and not spawning.done()
    gate.spawning = spawning  # type: ignore[attr-defined]  (kept alive with the gate)
    return ref, gate


def slot_of(system: ActorSystem, future: asyncio.Future[Any]) -> int | None:
    """The key (ms) of the deadline slot that holds ``future``, if any."""
    for key, slot in system._ask_deadlines._slots.items():
        if future in slot:
            return key
    return None


async def timed_ask(ref: Any, message: Any, timeout: float) -> float:
    """Seconds from the ask to its AskTimeout (read just before the ask is made)."""
    loop = asyncio.get_running_loop()
    asked = loop.time()
    with pytest.raises(flockrt.AskTimeout):
        await ref.ask(message, timeout=timeout)
    return loop.time() - asked


async def test_a_def_receive_actor_asks_are_watched_not_entered(system: ActorSystem) -> None:
    ref = await system.spawn(Echo)
    assert ref._cell._taken is None
    assert await ref.ask("a", timeout=60) == "a"
    assert ref._cell in system._ask_deadlines._cells and ref._cell._taken is not None
    assert not system._ask_deadlines.entered  # no list holds the answered ask
    # A sweep that finds the mailbox empty stops watching it; the next ask watches it again.
    await wait_for(lambda: ref._cell._taken is None and not system._ask_deadlines._cells)
    assert await ref.ask("b", timeout=60) == "b" and ref._cell._taken is not None
    assert await ref.ask("c", timeout=None) == "c"  # no deadline: nothing to watch


async def test_a_watched_ask_deadline_is_never_early_and_late_by_at_most_the_sweep_and_a_millisecond(
    system: ActorSystem,
) -> None:
    ref, gate = await gated(system, "gated")
    cell: ActorContext[Any] = ref._cell
    loop = asyncio.get_running_loop()
    for number, timeout in enumerate((0.03, 0.25), 1):
        asked = loop.time()
        ask = asyncio.ensure_future(ref.ask("never answered", timeout=timeout))
        await wait_for(lambda n=number: len(cell._mailbox or ()) == n)  # (a timed-out ask stays)
        assert cell._taken is not None and not system._ask_deadlines.entered
        future = cell._mailbox[-1][2]  # type: ignore[index]
        await wait_for(lambda f=future: slot_of(system, f) is not None)
        swept_at = loop.time()
        key = slot_of(system, future)
        assert key is not None
        # Its slot's millisecond is never before the ask's deadline, and at most the sweep's
        # delay plus the rounding's millisecond after it.
        assert asked + timeout <= key / 1000 <= swept_at + timeout + 0.001
        assert swept_at - asked < 0.5  # (the sweeps came after SWEEP, not at some later time)
        with pytest.raises(flockrt.AskTimeout):
            await ask
        assert loop.time() - asked >= timeout
    assert await timed_ask(ref, "zero", 0.0) >= 0.0
    gate.set()


async def test_watched_ask_timeouts_under_load_all_fire_none_early(system: ActorSystem) -> None:
    ref, gate = await gated(system, "gated")
    echo = await system.spawn(Echo)
    timed = [asyncio.ensure_future(timed_ask(ref, i, 0.05)) for i in range(300)]

    async def busy() -> int:  # asks answered meanwhile, in many sweeps
        answered = 0
        while not all(ask.done() for ask in timed):
            answered += await echo.ask(answered, timeout=60) == answered
        return answered

    assert await asyncio.wait_for(busy(), 10) > 0
    elapsed = await asyncio.gather(*timed)
    assert min(elapsed) >= 0.05  # none early
    assert system._ask_deadlines.expired == 300
    gate.set()
    assert await ref.ask("after", timeout=60) == "after"  # the gate opened: it answers


async def test_answered_watched_asks_are_garbage_at_once(system: ActorSystem) -> None:
    class Big:
        pass

    class Maker(Actor[Any]):
        def receive(self, message: Any) -> Any:
            return Big() if message == "big" else None

    ref = await system.spawn(Maker)
    answers = [weakref.ref(await ref.ask("big", timeout=60)) for _ in range(50)]
    assert await ref.ask("small", timeout=60) is None  # (the loop's last wake-up held the last)
    gc.collect()
    assert all(answer() is None for answer in answers)  # no sweep needed


async def test_an_infinite_timeout_waits_as_none_does_when_watched(system: ActorSystem) -> None:
    ref, gate = await gated(system, "gated")
    forever = asyncio.ensure_future(ref.ask("forever", timeout=math.inf))
    soon = asyncio.ensure_future(ref.ask("soon", timeout=0.02))
    with pytest.raises(flockrt.AskTimeout):
        await soon
    await wait_for(lambda: not system._ask_deadlines._slots)  # and forever is in none
    assert not forever.done()
    gate.set()
    assert await forever == "forever"


async def test_an_ask_waiting_for_room_times_out_never_early(system: ActorSystem) -> None:
    ref, gate = await gated(system, "gated", capacity=1)
    queued = asyncio.ensure_future(timed_ask(ref, "queued", 0.05))
    await wait_for(lambda: bool(ref._cell._mailbox))
    waits = asyncio.ensure_future(timed_ask(ref, "waits for room", 0.05))  # the mailbox holds 1
    assert min(await asyncio.gather(queued, waits)) >= 0.05
    gate.set()


async def test_a_watched_actor_that_starts_an_async_receive_hands_its_asks_to_the_lists(
    system: ActorSystem,
) -> None:
    ref, gate = await gated(system, "gated")
    cell: ActorContext[Any] = ref._cell
    deadlines = system._ask_deadlines
    seen = [asyncio.ensure_future(timed_ask(ref, i, 0.05)) for i in range(3)]
    await wait_for(lambda: len(cell._mailbox or ()) == 3)
    marks = deadlines._cells[cell]
    await wait_for(lambda: marks[1] == 3)  # a sweep has seen these three...
    first = list(cell._mailbox)  # type: ignore[arg-type]
    unseen = [asyncio.ensure_future(timed_ask(ref, i, 0.05)) for i in range(3, 5)]
    untimed = asyncio.ensure_future(ref.ask("no deadline", timeout=None))
    await wait_for(lambda: len(cell._mailbox or ()) == 6)  # ...and maybe not these (see below)
    # What an actor's drain does when it begins to run an `async def receive`:
    deadlines.unwatch(cell)
    assert cell._taken is None and cell not in deadlines._cells
    waiting = [e[1] for e in deadlines._waiting]
    entered = [e[1] for e in deadlines.entered]
    if marks[1] == 3:  # no sweep came between the two groups: the exact hand-over
        assert waiting == [0, 1, 2]  # timed from the last sweep
        assert entered == [3, 4]  # timed from the next one
    else:  # (a loop late by a sweep): the first three are in slots already, the others waiting
        assert all(slot_of(system, e[2]) is not None for e in first) and waiting == [3, 4]
    assert "no deadline" not in waiting + entered
    assert min(await asyncio.gather(*seen, *unseen)) >= 0.05
    gate.set()
    assert await untimed == "no deadline"


async def test_asks_queued_while_a_def_receive_restarts_as_an_async_one_keep_their_deadlines(
    system: ActorSystem,
) -> None:
    """The hand-over through the real drain: a child with a ``def receive`` fails, its asks
    queue (watched) while its ``on_stop`` holds the restart, and the instance that replaces it
    has an ``async def receive`` that never answers: every ask times out, none early."""
    stopping, release, never = asyncio.Event(), asyncio.Event(), asyncio.Event()

    class Plain(Actor[Any]):
        def receive(self, message: Any) -> Any:
            raise RuntimeError("boom")

        async def on_stop(self) -> None:
            stopping.set()
            await release.wait()

    class Waits(Actor[Any]):
        async def receive(self, message: Any) -> Any:
            await never.wait()
            return message

    made: list[type[Actor[Any]]] = []

    def factory() -> Actor[Any]:
        made.append(Plain if not made else Waits)
        return made[-1]()

    await system.spawn(flockrt.Supervisor, [flockrt.ChildSpec(id="w", factory=factory)], name="sup")
    ref = system.lookup("/sup/w")
    assert ref is not None
    cell: ActorContext[Any] = ref._cell
    ref.tell("fail")
    await stopping.wait()  # suspended, its restart held by on_stop
    asks = [asyncio.ensure_future(timed_ask(ref, i, 0.05)) for i in range(5)]
    await wait_for(lambda: len(cell._mailbox or ()) == 5)
    assert cell._taken is not None and cell in system._ask_deadlines._cells  # watched
    await wait_for(lambda: system._ask_deadlines._cells[cell][1] == 5)  # a sweep saw them
    release.set()  # the async instance starts: its drain hands the asks to the lists
    assert min(await asyncio.gather(*asks)) >= 0.05
    assert made == [Plain, Waits] and cell._taken is None
    never.set()


async def test_a_stuck_actor_does_not_keep_the_sweeps_going(system: ActorSystem) -> None:
    ref, gate = await gated(system, "gated")
    deadlines = system._ask_deadlines
    ask = asyncio.ensure_future(ref.ask("waits", timeout=60))
    await wait_for(lambda: bool(ref._cell._mailbox))
    future = ref._cell._mailbox[0][2]  # type: ignore[index]
    # Two sweeps put it into its slot; the next finds nothing new queued: no longer watched,
    # and with nothing else to sweep, the sweeps stop (the slot's timer stays for its deadline).
    await wait_for(lambda: not deadlines._sweep_armed)
    assert ref._cell._taken is None and not deadlines._cells
    assert slot_of(system, future) is not None and not ask.done()
    gate.set()
    assert await ask == "waits"
    await wait_for(lambda: slot_of(system, future) is None)  # it left its slot when answered


async def test_a_handler_raising_a_base_exception_keeps_the_count_exact(system: ActorSystem) -> None:
    """The loop's exception handler gets it (the actor is wedged, as before); the messages its
    turn took are counted all the same, so the sweeps never misplace the asks still queued."""

    class Odd(BaseException):
        pass

    class Raises(Actor[Any]):
        def receive(self, message: Any) -> Any:
            if message == "odd":
                raise Odd
            return message

    ref = await system.spawn(Raises)
    cell: ActorContext[Any] = ref._cell
    loop = asyncio.get_running_loop()
    counted: list[int | None] = []
    loop.set_exception_handler(lambda _, context: counted.append(cell._taken))
    try:
        system._ask_deadlines.watch(cell)
        for message in ("a", "b", "odd", "never"):
            ref.tell(message)
        await wait_for(lambda: bool(counted))
    finally:
        loop.set_exception_handler(None)
    assert counted == [3]  # a, b and the odd one; "never" is still queued
    cell._scheduled = False  # (unwedge it, so that the system can stop)
