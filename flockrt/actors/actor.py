"""The :class:`Actor` base class: what a user subclasses to write an actor."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

if TYPE_CHECKING:
    from flockrt.actors.context import ActorContext
    from flockrt.actors.messages import StopReason
    from flockrt.actors.ref import ActorRef

__all__ = ["Actor"]

M = TypeVar("M")


class Actor(Generic[M]):
    """Base class of every actor.

    An actor handles one message at a time, in arrival order per sender. Override
    :meth:`receive` (plain ``def`` or ``async def``); its return value answers an ``ask``.
    Raising from it fails the actor: the asker gets :class:`~flockrt.errors.ActorFailed` and the
    actor's supervisor decides what happens next (an unsupervised actor stops).

    Lifecycle hooks, each sync or async: :meth:`on_start` runs before the first message,
    :meth:`on_stop` after the last one, :meth:`on_restart` on the fresh instance a supervisor
    creates after a failure. :attr:`context` (the actor's own ref, spawning children, watches,
    timers, a logger) is available from ``on_start`` on.

    Actors are never called directly: spawn them (``await system.spawn(MyActor)``) and talk to
    them through the returned :class:`~flockrt.ActorRef`.
    """

    __slots__ = ("__weakref__", "_context")

    _context: ActorContext[M]

    # Filled in per class by __init_subclass__ so the hot path reads a flag, not inspect.
    _flockrt_async_receive: ClassVar[bool] = False
    _flockrt_plain_stop: ClassVar[bool] = True
    # Supervisors set this: their failed children wait for a decision instead of stopping.
    _flockrt_supervises: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._flockrt_async_receive = inspect.iscoroutinefunction(cls.receive)
        cls._flockrt_plain_stop = cls.on_stop is Actor.on_stop

    def receive(self, message: M) -> Any:
        """Handle one message; the return value is the reply to an ``ask``.

        May be ``async def``. Messages are never handled concurrently within one actor.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define receive()")

    def on_start(self) -> Awaitable[None] | None:
        """Called once before the first message; ``spawn`` returns after it. May be async.

        Raising here makes ``spawn`` raise :class:`~flockrt.errors.ActorStartFailed`.
        """
        return None

    def on_stop(self) -> Awaitable[None] | None:
        """Called once after the last message, when the actor stops or before a restart.

        May be async. It runs within the actor's shutdown timeout; past it the actor is cancelled.
        """
        return None

    def on_restart(self, error: BaseException) -> Awaitable[None] | None:
        """Called on the fresh instance a supervisor created after ``error`` failed the old one.

        Defaults to :meth:`on_start`. Messages queued at the time of the failure are kept and
        handled by the new instance.
        """
        return self.on_start()

    @property
    def context(self) -> ActorContext[M]:
        """The runtime side of this actor: its ref, children, watches, timers and logger."""
        try:
            return self._context
        except AttributeError:
            raise RuntimeError(
                f"{type(self).__name__}.context is available from on_start() on, not in __init__"
            ) from None

    @property
    def ref(self) -> ActorRef[M]:
        """This actor's own ref (shorthand for ``self.context.ref``)."""
        return self.context.ref

    # Hooks through which a parent learns about its children. Plain actors only forget
    # children that ended; Supervisor overrides all three.
    def _flockrt_child_failed(self, child: ActorContext[Any], error: BaseException) -> Awaitable[None] | None:
        return None

    def _flockrt_child_exited(self, child: ActorContext[Any], reason: StopReason) -> Awaitable[None] | None:
        return None

    async def _flockrt_stop_children(self) -> None:
        await self.context._stop_children_in_reverse()
