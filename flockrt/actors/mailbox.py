"""The mailbox drain: the turns in which an actor handles what its mailbox holds.

An idle actor owns no Task (see :mod:`flockrt.actors.context`). When its mailbox becomes
non-empty it is activated: one with a plain ``def receive`` gets :func:`turn` as a
``loop.call_soon`` callback, one with ``async def receive`` gets a Task running :func:`drain`.
A turn handles at most ``throughput`` messages, then yields to the loop (fairness); system
messages (children failing or ending) come before user messages at every turn.

An activation lasts one loop turn longer than the mailbox holds messages: an asker that just
got its answer usually asks again within that turn, and the same activation handles it (for
``async def receive``, the same Task) instead of a new one being started for every ask; the
mailbox's deque is kept meanwhile. A handler needs
its Task even when it never waits (``asyncio.current_task()``, ``asyncio.timeout``), so a
coroutine cannot simply be driven from a ``call_soon`` turn as the bare limit does.

These functions work on the context's fields directly, as :mod:`flockrt.actors.instance`
does; ``cell._running`` is the context's ``state == "running"``, kept by ``_set_state``.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Generator
from typing import TYPE_CHECKING, Any

from flockrt.actors.messages import ASK, _ChildExited, _ChildFailed, settle_ask
from flockrt.errors import ActorStopped

if TYPE_CHECKING:
    from flockrt.actors.context import ActorContext

__all__ = ["drain", "turn"]


@types.coroutine
def _next_loop_turn() -> Generator[None, None, None]:
    """``await asyncio.sleep(0)`` without its extra frame."""
    yield


def turn(cell: ActorContext[Any]) -> None:
    """One scheduling turn of an actor with a synchronous ``receive``."""
    if cell._sysq:
        try:
            run_system_sync(cell)
        except Exception as exc:
            cell._scheduled = False
            cell._on_failure(exc, None)
            return
    q = cell._mailbox
    if not cell._running or not q:
        cell._scheduled = False
        if q is not None and not q:
            cell._mailbox = None
        if cell._closed and cell._running:
            cell._begin_termination(cell._reason)
        return
    receive = cell._actor.receive  # type: ignore[union-attr]
    system = cell._system
    throughput = budget = system._throughput
    envelope: Any = None
    try:
        while budget and q and cell._running:
            budget -= 1
            envelope = q.popleft()
            if type(envelope) is tuple and envelope and envelope[0] is ASK:
                future = envelope[2]
                reply = receive(envelope[1])
                if not future.done():
                    future.set_result(reply)
            else:
                receive(envelope)
    except (Exception, asyncio.CancelledError) as exc:
        system._processed += throughput - budget
        if cell._taken is not None:
            cell._taken += throughput - budget
        cell._scheduled = False
        cell._on_failure(exc, envelope)
        return
    except BaseException:  # (KeyboardInterrupt and the like go to the loop) keep the count exact
        if cell._taken is not None:
            cell._taken += throughput - budget
        raise
    system._processed += throughput - budget
    if cell._taken is not None:  # its asks' deadlines are watched (AskDeadlines.watch)
        cell._taken += throughput - budget
    if cell._room_waiters:
        cell._wake_senders()
    if cell._sysq or (cell._running and not (cell._closed and not q)):
        # More to do, or the mailbox is empty: then one more turn, which ends the activation
        # if nothing came meanwhile (an asker that just got its answer usually asks again).
        system._loop.call_soon(turn, cell)
    else:
        cell._scheduled = False
        if not q and cell._mailbox is q:
            cell._mailbox = None
        if cell._closed and cell._running:
            cell._begin_termination(cell._reason)  # a requested stop: the queue is drained


async def drain(cell: ActorContext[Any]) -> None:
    """The Task of an actor with an ``async def receive``; ends when the mailbox stays empty."""
    failure: BaseException | None = None
    envelope: Any = None
    processed = 0  # messages handled in the turns before this one
    system = cell._system
    if cell._taken is not None:  # asked before it started: the lists time its asks from now
        system._ask_deadlines.unwatch(cell)
    throughput = budget = system._throughput
    try:
        while True:
            if cell._sysq:
                await run_system_async(cell)
            q = cell._mailbox
            if not cell._running or not q:
                break
            receive = cell._actor.receive  # type: ignore[union-attr]
            budget = throughput
            # The state is looked at after every message: one whose handler waited may
            # find the actor suspended for a restart (quiesce), which takes no more.
            while budget and q and cell._running:
                budget -= 1
                envelope = q.popleft()
                if type(envelope) is tuple and envelope and envelope[0] is ASK:
                    future = envelope[2]
                    reply = await receive(envelope[1])
                    if not future.done():
                        future.set_result(reply)
                else:
                    await receive(envelope)
            processed += throughput - budget  # counted per turn, not per message
            budget = throughput
            envelope = None
            if cell._room_waiters:
                cell._wake_senders()
            if not cell._running:  # (a handler that waited may find it changed: mypy cannot)
                break  # type: ignore[unreachable]
            # Let other actors have a turn; with the mailbox empty, wait that one turn for more.
            await _next_loop_turn()
            if not (cell._sysq or cell._mailbox):
                break
    except asyncio.CancelledError:
        # Killed (shutdown timeout) or interrupted for a restart: the asker learns it stopped.
        if type(envelope) is tuple and envelope and envelope[0] is ASK:
            settle_ask(envelope, ActorStopped(cell._ref, "was stopped while handling the message"))
        raise
    except Exception as exc:
        failure = exc
    finally:
        # A turn cut short (a failure, a cancellation) counts the messages it finished.
        system._processed += processed + max(throughput - budget - 1, 0)
        cell._task = None
        cell._scheduled = False
        if cell._mailbox is not None and not cell._mailbox:
            cell._mailbox = None
    if failure is not None:
        cell._on_failure(failure, envelope)
    elif (cell._sysq or (cell._mailbox and cell._running)) and not cell._scheduled:
        cell._activate()
    elif cell._closed and cell._running and not cell._scheduled:
        cell._begin_termination(cell._reason)  # a requested stop: the queue is drained


# ---------------------------------------------------------------------- system messages


def run_system_sync(cell: ActorContext[Any]) -> None:
    sysq = cell._sysq
    while sysq:
        pending = handle_system(cell, sysq.popleft())
        if pending is not None:
            raise TypeError(f"{type(cell._actor).__name__}: supervising actors need an async receive")
    cell._sysq = None


async def run_system_async(cell: ActorContext[Any]) -> None:
    sysq = cell._sysq
    while sysq:
        pending = handle_system(cell, sysq.popleft())
        if pending is not None:
            await pending
    if cell._sysq is sysq:
        cell._sysq = None


def handle_system(cell: ActorContext[Any], message: _ChildFailed | _ChildExited) -> Awaitable[None] | None:
    actor = cell._actor
    if type(message) is _ChildFailed:
        if cell._closed or actor is None or not actor._flockrt_supervises:
            message.child._request_stop(message.error)
            return None
        return actor._flockrt_child_failed(message.child, message.error)
    assert type(message) is _ChildExited
    if cell._closed or actor is None:
        return None
    pending = actor._flockrt_child_exited(message.child, message.reason)
    if pending is None and message.escalated and not actor._flockrt_supervises:
        # A child supervisor gave up or failed: like a linked process in OTP, its plain
        # parent fails with the same error (the root then stops the whole system).
        assert isinstance(message.reason, BaseException)
        raise message.reason
    return pending
