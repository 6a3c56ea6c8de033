"""The kernel workloads on bare asyncio: the simplest correct implementation, no framework.

An actor is an ``asyncio.Queue`` drained by a Task; an ask sends a future along with the
message; a supervisor is a done-callback that starts a new Task on the same queue.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from benchmarks._harness import Probe

log = logging.getLogger("benchmarks.bare")


async def _count(queue: asyncio.Queue[Any]) -> None:
    count = 0
    while True:
        message = await queue.get()
        count += 1
        if isinstance(message, asyncio.Future):
            message.set_result(count)


async def _echo(queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]]]) -> None:
    while True:
        message, reply = await queue.get()
        if not reply.done():
            reply.set_result(message)


async def _stop(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def tell_rate(n: int) -> float:
    queue: asyncio.Queue[Any] = asyncio.Queue(1000)  # flockrt's default mailbox bound
    task = asyncio.create_task(_count(queue))
    start = time.perf_counter()
    for i in range(n):
        try:
            queue.put_nowait(i)
        except asyncio.QueueFull:
            await queue.put(i)
    done = asyncio.get_running_loop().create_future()
    await queue.put(done)
    count = await done
    elapsed = time.perf_counter() - start
    await _stop(task)
    assert count == n + 1, count
    return n / elapsed


async def ask_rate(n: int) -> float:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] = asyncio.Queue()
    task = asyncio.create_task(_echo(queue))
    start = time.perf_counter()
    for i in range(n):
        reply = loop.create_future()
        queue.put_nowait((i, reply))
        await reply
    elapsed = time.perf_counter() - start
    await _stop(task)
    return n / elapsed


async def concurrent_ask_rate(askers: int, per_asker: int) -> float:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] = asyncio.Queue()
    task = asyncio.create_task(_echo(queue))

    async def asker() -> None:
        for i in range(per_asker):
            reply = loop.create_future()
            queue.put_nowait((i, reply))
            await reply

    start = time.perf_counter()
    await asyncio.gather(*(asker() for _ in range(askers)))
    elapsed = time.perf_counter() - start
    await _stop(task)
    return askers * per_asker / elapsed


def _spawn(n: int, queues: list[Any], tasks: list[asyncio.Task[None]]) -> None:
    # asyncio keeps only weak references to tasks, so the "system" keeps them, and the queues
    # are the handles to send to.
    for _ in range(n):
        queue: asyncio.Queue[Any] = asyncio.Queue()
        queues.append(queue)
        tasks.append(asyncio.create_task(_echo(queue)))


async def spawn_rate(n: int) -> float:
    queues: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    _spawn(n, queues, tasks)
    await asyncio.sleep(0)  # every task runs to its first await: started and parked
    elapsed = time.perf_counter() - start
    await _stop(*tasks)
    return n / elapsed


async def idle_actor_bytes(n: int, measure: Callable[[], int]) -> float:
    queues: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    _spawn(1, [], tasks)
    await asyncio.sleep(0)
    gc.collect()
    before = measure()
    _spawn(n, queues, tasks)
    await asyncio.sleep(0)
    gc.collect()
    grown = measure() - before
    await _stop(*tasks)
    return grown / n


async def _crasher(queue: asyncio.Queue[Any], probe: Probe | None) -> None:
    if probe is not None:
        probe.report()
    await queue.get()
    raise RuntimeError("crash requested")


class _Supervised:
    """A worker Task restarted by its done-callback when it fails; the queue outlives it."""

    def __init__(self, probe: Probe) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.probe = probe
        self.task = self._start(None)

    def _start(self, probe: Probe | None) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(_crasher(self.queue, probe))
        task.add_done_callback(self._on_done)
        return task

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("worker failed: %r", error, exc_info=error)
            self.task = self._start(self.probe)


async def restart_latencies(n: int, warmup: int = 100) -> list[float]:
    probe = Probe()
    loop = asyncio.get_running_loop()
    worker = _Supervised(probe)
    await asyncio.sleep(0)
    latencies = []
    for i in range(warmup + n):
        probe.ready = loop.create_future()
        start = time.perf_counter()
        worker.queue.put_nowait("crash")
        await probe.ready
        if i >= warmup:
            latencies.append(probe.at - start)
    await _stop(worker.task)
    return latencies
