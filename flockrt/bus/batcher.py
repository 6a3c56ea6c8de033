"""Batcher: many small messages in few NATS messages (the AI Flock's MessageBatcher).

Tasks travel in ``batch.messages`` messages (an array of ``{subject, message}`` items): a
``submit(..., batch=True)`` waits up to ``window`` seconds for company, and ``submit_many`` sends
its tasks ``max_items`` at a time. A batch over NATS's payload limit is halved until each part
fits. The process that takes a batch (see :mod:`flockrt.bus.intake`) runs the tasks it can and
republishes the others on their own subjects.
"""

from __future__ import annotations

import asyncio

from flockrt.bus.outlet import Outlet
from flockrt.errors import BusTimeout, NoCapableAgent, NoResponders, WorkTimeout
from flockrt.wire import subjects
from flockrt.wire.schema import BatchItem, InvalidMessage, TaskMessage, TaskResult

__all__ = ["Batcher"]


class Batcher:
    """Outgoing batches of one NATS flock.

    Args:
        outlet: How the flock talks on the bus.
        window: Seconds a batched task waits for company before its batch goes out.
        max_items: Messages per batch at most (the payload limit also applies).
    """

    def __init__(self, outlet: Outlet, *, window: float, max_items: int) -> None:
        self.outlet = outlet
        self.window = window
        self.max_items = max_items
        self._pending: list[BatchItem] = []
        self._timer: asyncio.TimerHandle | None = None

    def add(self, item: BatchItem) -> None:
        """Send ``item`` with the next batch: when it is full, or ``window`` seconds from now."""
        self._pending.append(item)
        if len(self._pending) >= self.max_items:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.window, self.flush)

    def flush(self) -> None:
        """Send what waits now (through the outbox, in order with the flock's other work)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, self._pending = self._pending, []
        if items:
            self.outlet.later(lambda: self.publish(items))

    def split(self, subject: str, tasks: list[TaskMessage]) -> list[list[BatchItem]]:
        """``tasks`` (all for ``subject``) as batches of at most ``max_items``."""
        step = self.max_items
        return [
            [BatchItem(subject=subject, message=task) for task in tasks[start : start + step]]
            for start in range(0, len(tasks), step)
        ]

    async def publish(self, items: list[BatchItem]) -> None:
        """Publish ``items`` on ``batch.messages``, halved until each part fits."""
        codec = self.outlet.codec
        data = codec.encode(items)
        if len(data) > codec.max_bytes and len(items) > 1:  # over the payload limit: halve
            middle = len(items) // 2
            await self.publish(items[:middle])
            await self.publish(items[middle:])
            return
        await self.outlet.bus.publish(subjects.BATCH, data)

    async def request(self, items: list[BatchItem], task_type: str, timeout: float) -> list[TaskResult]:
        """Send ``items`` as a request: the process that takes the batch answers with the array
        of their TaskResults, in order (a flockrt extension; see ``submit_many``)."""
        codec = self.outlet.codec
        data = codec.encode(items)
        if len(data) > codec.max_bytes and len(items) > 1:  # over the payload limit: halve
            middle = len(items) // 2
            return [
                *await self.request(items[:middle], task_type, timeout),
                *await self.request(items[middle:], task_type, timeout),
            ]
        try:
            reply = await self.outlet.bus.request(subjects.BATCH, data, timeout=timeout)
        except NoResponders:
            raise NoCapableAgent("task", task_type) from None
        except BusTimeout:
            raise WorkTimeout("task", task_type, timeout) from None
        results = codec.decode(reply.subject, reply.data, list[TaskResult], reply.headers.get("Content-Type"))
        if len(results) != len(items):
            raise InvalidMessage(
                reply.subject, None, f"{len(results)} results for a batch of {len(items)} tasks"
            )
        return results
