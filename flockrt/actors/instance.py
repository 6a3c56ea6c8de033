"""An actor's instance inside its context: the first start, and the restart that replaces it.

A context outlives its instances (see :mod:`flockrt.actors.context`): the actor system starts
the first instance when it spawns the actor, and a supervisor replaces a failed one in three
steps, which it runs for a whole group under ``one_for_all`` and ``rest_for_one``: quiesce (take
no more messages, let the one in flight finish), tear down (children, timers, ``on_stop``), then
start a fresh instance with ``on_restart(error)``. The mailbox, the ref and the watchers stay.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from flockrt.actors.actor import Actor
from flockrt.actors.context import RUNNING, STOPPING, SUSPENDED, ActorContext
from flockrt.actors.timers import cancel_timers

__all__ = ["quiesce", "restart_instance", "start_instance", "teardown"]

log = logging.getLogger("flockrt.actor")


async def start_instance(cell: ActorContext[Any], error: BaseException | None) -> None:
    """Create a fresh actor instance and run on_start (or on_restart(error))."""
    actor = cell._factory(*cell._args)
    if not isinstance(actor, Actor):
        raise TypeError(f"factory {cell._factory!r} returned {actor!r}, not an Actor")
    actor._context = cell
    cell._actor = actor
    cell._is_async = type(actor)._flockrt_async_receive
    pending = actor.on_start() if error is None else actor.on_restart(error)
    if pending is not None:
        await pending
    if cell._state < STOPPING:
        cell._set_state(RUNNING)
        if (cell._mailbox or cell._sysq) and not cell._scheduled:
            cell._activate()
        elif cell._closed:
            cell._begin_termination(cell._reason)  # stop was requested during on_start


async def quiesce(cell: ActorContext[Any], timeout: float | None) -> None:
    """Stop taking messages (they stay queued); let the one in flight finish or cancel it."""
    if cell._state == RUNNING:
        cell._set_state(SUSPENDED)
    task = cell._task
    if task is None or task is asyncio.current_task():
        return
    if timeout is None or timeout > 0:
        finished, _ = await asyncio.wait((task,), timeout=timeout)
        if finished:
            return
    task.cancel()
    await asyncio.wait((task,))


async def teardown(cell: ActorContext[Any], timeout: float | None) -> None:
    """End the current instance before a restart: children, timers, then on_stop."""
    cancel_timers(cell)
    actor = cell._actor
    if actor is None:
        return
    if not cell._children and actor._flockrt_plain_stop:
        cell._actor = None  # nothing to wait for: skip the timeout machinery (restart latency)
        return
    try:
        async with asyncio.timeout(timeout):
            if cell._children:
                await actor._flockrt_stop_children()
            await cell._call_hook(actor.on_stop, "on_stop")
    except TimeoutError:
        log.warning("actor %s did not finish on_stop within %g s before restart", cell.path, timeout)
    if cell._children:
        for child in reversed(list(cell._children)):
            child._kill("killed")
    cell._actor = None


async def restart_instance(cell: ActorContext[Any], error: BaseException | None) -> None:
    """Replace the instance by a fresh one, keeping the context, its ref and its mailbox."""
    await quiesce(cell, cell._shutdown_timeout)
    await teardown(cell, cell._shutdown_timeout)
    if cell._state >= STOPPING:
        return
    cell._set_state(SUSPENDED)
    cell._restarts += 1
    await start_instance(cell, error)
