"""The kernel workloads on Pykka (``ThreadingActor``: one thread per actor, blocking asks)."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka


class Counter(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def on_receive(self, message: Any) -> int:
        self.count += 1
        return self.count


class Echo(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def tell_rate(n: int) -> float:
    ref = Counter.start()
    try:
        start = time.perf_counter()
        for i in range(n):
            ref.tell(i)
        count = ref.ask(None)
        elapsed = time.perf_counter() - start
    finally:
        ref.stop()
    assert count == n + 1, count
    return n / elapsed


def ask_rate(n: int) -> float:
    ref = Echo.start()
    try:
        start = time.perf_counter()
        for i in range(n):
            ref.ask(i)
        return n / (time.perf_counter() - start)
    finally:
        ref.stop()


def concurrent_ask_rate(askers: int, per_asker: int) -> float:
    """``askers`` threads, started before the clock starts, each asking sequentially."""
    ref = Echo.start()
    go = threading.Barrier(askers + 1)

    def asker() -> None:
        go.wait()
        for i in range(per_asker):
            ref.ask(i)

    threads = [threading.Thread(target=asker) for _ in range(askers)]
    try:
        for thread in threads:
            thread.start()
        go.wait()
        start = time.perf_counter()
        for thread in threads:
            thread.join()
        return askers * per_asker / (time.perf_counter() - start)
    finally:
        ref.stop()


def spawn_rate(n: int) -> float:
    gc.collect()
    try:
        start = time.perf_counter()
        for _ in range(n):
            Echo.start()
        return n / (time.perf_counter() - start)
    finally:
        pykka.ActorRegistry.stop_all()


def idle_actor_bytes(n: int, measure: Callable[[], int]) -> float:
    try:
        Echo.start()
        gc.collect()
        before = measure()
        for _ in range(n):
            Echo.start()  # the registry keeps the refs
        gc.collect()
        return (measure() - before) / n
    finally:
        pykka.ActorRegistry.stop_all()
