"""Capability requests in one process: how the dispatcher's ``request_capability`` builds a
request and awaits its answer (see :meth:`flockrt.flock.dispatcher.Dispatcher.request_capability`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from flockrt.actors.correlation import correlation_id
from flockrt.actors.deadlines import AskDeadlines
from flockrt.agents.work import CapabilityCall, ProgressCallback
from flockrt.errors import WorkTimeout
from flockrt.flock.batches import PRIORITIES
from flockrt.flock.waiting import counted

if TYPE_CHECKING:
    from flockrt.flock.dispatcher import Dispatcher

__all__ = ["answer", "call_capability"]


def _capability_timeout(capability: str, timeout: float) -> WorkTimeout:
    return WorkTimeout("capability", capability, timeout)


def call_capability(
    dispatcher: Dispatcher, capability: str, parameters: Any, progress: ProgressCallback | None
) -> CapabilityCall:
    """A capability request, dispatched (see :meth:`Dispatcher.dispatch`); its ``future`` gets
    the answer."""
    work = CapabilityCall(
        key=capability,
        parameters=parameters,
        future=asyncio.get_running_loop().create_future(),
        priority=PRIORITIES["medium"],
        progress=progress,
        correlation_id=correlation_id.get(),
    )
    dispatcher.dispatch(work)
    return work


async def answer(dispatcher: Dispatcher, work: CapabilityCall, timeout: float | None) -> Any:
    """The answer to ``work`` (its future's result) within ``timeout`` seconds, counted and
    timed in the dispatcher's ``work_stats``.

    The timeout is a deadline shared by every request that ends in the same millisecond
    (:class:`~flockrt.actors.deadlines.AskDeadlines`): no timer, Task or timeout context
    per request. A request past its deadline has its future failed with WorkTimeout, which
    its agent's runner hears too (:class:`~flockrt.agents.work.Follow`): the work stops.

    Raises:
        WorkTimeout: no answer within ``timeout`` seconds.
    """
    future = work.future
    assert future is not None
    deadlines = dispatcher.deadlines
    if deadlines is None:
        deadlines = dispatcher.deadlines = AskDeadlines(asyncio.get_running_loop(), _capability_timeout)
    key = deadlines.add(future, work.key, timeout) if timeout is not None else 0
    stats = dispatcher.work_stats
    try:
        return await (future if stats is None else counted(future, stats, work.key))
    finally:
        if timeout is not None:
            deadlines.discard(key, future)
