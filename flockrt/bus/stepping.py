"""Finishing a coroutine that was stepped by hand.

:meth:`NatsConnection.publish_nowait <flockrt.bus.connection.NatsConnection.publish_nowait>`
drives nats-py's publish coroutine with ``send(None)`` so that the usual case costs no Task and
no loop turn; in the rare case that the coroutine then waits (nats-py's pending buffer is over
its limit), :func:`resume` lets a Task finish it from where it stopped.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["resume"]


async def resume(coroutine: Coroutine[Any, Any, None], waiting_for: Any) -> None:
    """Finish ``coroutine``, which was stepped by hand and is waiting for ``waiting_for``.

    A Task running this passes on what ``coroutine`` yields (the future it waits for), and
    what the Task sends or throws in (a result, a cancellation) goes back to ``coroutine``.
    """
    await _Resumed(coroutine, waiting_for)


class _Resumed:
    __slots__ = ("coroutine", "waiting_for")

    def __init__(self, coroutine: Coroutine[Any, Any, None], waiting_for: Any) -> None:
        self.coroutine = coroutine
        self.waiting_for = waiting_for

    def __await__(self) -> Generator[Any, Any, None]:
        coroutine, waiting_for = self.coroutine, self.waiting_for
        while True:
            try:
                sent = yield waiting_for
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # a cancellation, say: passed on to the coroutine
                try:
                    waiting_for = coroutine.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting_for = coroutine.send(sent)
                except StopIteration:
                    return
