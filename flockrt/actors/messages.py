"""Messages the runtime itself delivers to actors, and the envelopes it wraps messages in."""

from __future__ import annotations

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


class _AskMark:
    """The mark of an ask's envelope (see :data:`ASK`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<ask>"


ASK = _AskMark()
"""An ``ask`` travels through the mailbox as the tuple ``(ASK, message, future, ref, timeout)``:
the message for ``receive``, the future its reply goes to, and what its deadline needs (the
envelope itself is what :meth:`~flockrt.actors.deadlines.AskDeadlines.enter` is given; nobody
takes it out again when the future is settled). A tuple is the cheapest envelope to build (an
instance built through ``__init__`` cost 1.4k instructions more per ask); no user message can carry
``ASK`` first, since nothing outside the kernel holds it. Test with :func:`is_ask`, or inline
``type(m) is tuple and m and m[0] is ASK`` on the hot paths (``m``: an empty tuple is a
message too)."""


def is_ask(envelope: Any) -> bool:
    """Whether a mailbox entry is an ask's envelope."""
    return type(envelope) is tuple and len(envelope) > 0 and envelope[0] is ASK


def settle_ask(envelope: Any, error: BaseException) -> None:
    """Fail an ask's future with ``error`` unless it is settled."""
    future = envelope[2]
    if not future.done():
        future.set_exception(error)


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
