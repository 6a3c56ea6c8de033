"""Messages the runtime itself delivers to actors, and the envelopes it wraps messages in."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from flockrt.actors.ref import ActorRef

__all__ = ["StopReason", "Terminated"]

StopReason: TypeAlias = "str | BaseException"
"""Why an actor ended: ``"normal"`` (it stopped itself or was stopped), ``"shutdown"`` (its
parent or the system stopped it), ``"killed"`` (it overran its shutdown timeout and was
cancelled), or the exception it failed with."""


@dataclass(frozen=True, slots=True)
class Terminated:
    """Delivered to every watcher of an actor when that actor has ended.

    Attributes:
        ref: The actor that ended.
        reason: Why it ended (see :data:`StopReason`).
    """

    ref: ActorRef[Any]
    reason: StopReason

    @property
    def failed(self) -> bool:
        """True when the actor ended with an exception rather than being stopped."""
        return isinstance(self.reason, BaseException)


class _Ask:
    """Mailbox envelope of an ``ask``: the message and the future its reply goes to."""

    __slots__ = ("future", "message")

    def __init__(self, message: Any, future: asyncio.Future[Any]) -> None:
        self.message = message
        self.future = future


class _ChildFailed:
    """System message to a parent: a supervised child failed and waits for a decision."""

    __slots__ = ("child", "error")

    def __init__(self, child: Any, error: BaseException) -> None:
        self.child = child
        self.error = error


class _ChildExited:
    """System message to a parent: a child has terminated for good.

    ``escalated`` is true when the child was a supervisor that ended with an error: a plain
    parent then fails too, as a linked process does in OTP.
    """

    __slots__ = ("child", "escalated", "reason")

    def __init__(self, child: Any, reason: StopReason, escalated: bool) -> None:
        self.child = child
        self.reason = reason
        self.escalated = escalated
