"""Running a coroutine on the configured event loop: the default asyncio loop or uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from flockrt.errors import FlockError

__all__ = ["LoopName", "loop_factory", "run"]

T = TypeVar("T")
LoopName = Literal["asyncio", "uvloop"]


def loop_factory(name: LoopName) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for ``asyncio.Runner``; None means asyncio's default loop.

    Raises:
        FlockError: uvloop was asked for but is not installed.
    """
    if name == "asyncio":
        return None
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise FlockError("uvloop is not installed: pip install 'flockrt[uvloop]'") from None
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    raise ValueError(f"event loop must be asyncio or uvloop, got {name!r}")


def run(main: Coroutine[Any, Any, T], loop: LoopName = "asyncio") -> T:
    """Like ``asyncio.run(main)``, on the named event loop."""
    factory = loop_factory(loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
