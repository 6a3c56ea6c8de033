"""The kernel workloads on the fastest bare actor asyncio allows: the true limit.

An actor is a ``collections.deque`` drained in ``loop.call_soon`` turns: a send appends and,
if the actor is idle, schedules one turn; a turn handles what the deque holds (at most
``THROUGHPUT`` messages, then it yields to the loop, like flockrt's actors) by calling the
handler, or, for an ``async def`` handler, by awaiting each message's coroutine in a drain
coroutine that the turn drives with ``send(None)``. A turn whose handler does wait is finished
by a Task, and the next turn comes after it. An actor stays scheduled for one turn after its
deque empties (what flockrt's actors do too): a message sent meanwhile, such as the next ask
of an asker that was just answered, is handled in that turn, without an activation of its own
and a loop iteration more.
There is no Task per actor, no Queue and no lock: what is left is the handler's call, the
deque and the loop's own scheduling, which no actor runtime on asyncio can do without.

An ask sends a future along with the message. ``handler`` picks a plain function (``"sync"``)
or an ``async def`` (``"async"``) as the actor's handler.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Literal

THROUGHPUT = 64
"""Messages per turn (flockrt's default ``throughput``)."""

BOUND = 1000
"""A teller waits a loop turn when this many messages are queued (flockrt's default mailbox
bound, where ``tell`` raises MailboxFull and a teller ``send``s)."""

Handler = Literal["sync", "async"]


class _Resume:
    """Awaitable that yields what a suspended coroutine yielded, to its Task."""

    __slots__ = ("yielded",)

    def __init__(self, yielded: Any) -> None:
        self.yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield self.yielded)


async def _finish(coroutine: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """Run a coroutine that waited (it yielded ``yielded``) to its end, in a Task."""
    while True:
        try:
            sent = await _Resume(yielded)
        except BaseException as exc:  # thrown into the coroutine, as a Task would
            try:
                yielded = coroutine.throw(exc)
            except StopIteration as returned:
                return returned.value
        else:
            try:
                yielded = coroutine.send(sent)
            except StopIteration as returned:
                return returned.value


class Actor:
    """A deque, a handler, and call_soon turns."""

    __slots__ = ("_async", "_loop", "_queue", "_scheduled", "handler")

    def __init__(self, handler: Callable[[Any], Any], is_async: bool) -> None:
        self.handler = handler
        self._async = is_async
        self._queue: deque[Any] = deque()
        self._scheduled = False
        self._loop = asyncio.get_running_loop()

    def tell(self, message: Any) -> None:
        self._queue.append(message)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._turn)

    def ask(self, message: Any) -> asyncio.Future[Any]:
        reply = self._loop.create_future()
        self.tell((message, reply))
        return reply

    def _turn(self) -> None:
        if not self._queue:  # nothing came in the turn after the last message: idle again
            self._scheduled = False
            return
        if self._async:
            drain = self._drain_async()
            try:
                yielded = drain.send(None)  # one coroutine per turn, not one per message
            except StopIteration:
                return
            # A handler waits: a Task finishes the turn, and the next turn comes after it.
            self._loop.create_task(_finish(drain, yielded))
            return
        queue, handler = self._queue, self.handler
        budget = THROUGHPUT
        while budget and queue:
            budget -= 1
            message = queue.popleft()
            if type(message) is tuple:
                message, reply = message
                value = handler(message)
                if not reply.done():
                    reply.set_result(value)
            else:
                handler(message)
        self._next_turn()

    async def _drain_async(self) -> None:
        """An async handler's turn: each message's coroutine awaited in a row."""
        queue, handler = self._queue, self.handler
        budget = THROUGHPUT
        while budget and queue:
            budget -= 1
            message = queue.popleft()
            if type(message) is tuple:
                message, reply = message
                value = await handler(message)
                if not reply.done():
                    reply.set_result(value)
            else:
                await handler(message)
        self._next_turn()

    def _next_turn(self) -> None:
        # One more turn even when the deque is empty: an asker that just got its answer usually
        # asks again before that turn, which then handles it in the same loop iteration (the
        # ask does not wait for a turn of its own, scheduled by its append, in the next one).
        self._loop.call_soon(self._turn)


def _counter(handler: Handler) -> tuple[Callable[[Any], Any], list[int]]:
    count = [0]
    if handler == "sync":

        def receive(message: Any) -> int:
            count[0] += 1
            return count[0]

        return receive, count

    async def receive_async(message: Any) -> int:
        count[0] += 1
        return count[0]

    return receive_async, count


def _echo(handler: Handler) -> Callable[[Any], Any]:
    if handler == "sync":
        return lambda message: message

    async def echo(message: Any) -> Any:
        return message

    return echo


async def tell_rate(n: int, handler: Handler = "sync") -> float:
    """Tell ``n`` messages to one actor; msgs/s until all are handled (a final ask confirms)."""
    receive, count = _counter(handler)
    actor = Actor(receive, handler == "async")
    start = time.perf_counter()
    queue = actor._queue
    for i in range(n):
        if len(queue) >= BOUND:
            await asyncio.sleep(0)  # the actor's turn makes room
        actor.tell(i)
    last = await actor.ask(None)
    elapsed = time.perf_counter() - start
    assert last == count[0] == n + 1, (last, count)
    return n / elapsed


async def ask_rate(n: int, handler: Handler = "sync") -> float:
    actor = Actor(_echo(handler), handler == "async")
    start = time.perf_counter()
    for i in range(n):
        await actor.ask(i)
    return n / (time.perf_counter() - start)


async def concurrent_ask_rate(askers: int, per_asker: int, handler: Handler = "sync") -> float:
    actor = Actor(_echo(handler), handler == "async")

    async def asker() -> None:
        for i in range(per_asker):
            await actor.ask(i)

    start = time.perf_counter()
    await asyncio.gather(*(asker() for _ in range(askers)))
    return askers * per_asker / (time.perf_counter() - start)
