"""What a supervisor is told about its children: specs, restart types, strategies, backoff."""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, get_args

if TYPE_CHECKING:
    from flockrt.actors.actor import Actor

__all__ = ["Backoff", "ChildSpec", "ChildType", "Restart", "Strategy"]

Restart: TypeAlias = Literal["permanent", "transient", "temporary"]
"""When a child is restarted: ``permanent`` always; ``transient`` only after a failure (not
after a normal stop); ``temporary`` never."""

ChildType: TypeAlias = Literal["worker", "supervisor"]


class Strategy(enum.StrEnum):
    """What else a supervisor restarts when one child fails."""

    ONE_FOR_ONE = "one_for_one"
    """Only the failed child."""
    ONE_FOR_ALL = "one_for_all"
    """Every child: the others are stopped in reverse start order, then all start in order."""
    REST_FOR_ONE = "rest_for_one"
    """The failed child and every child started after it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ChildSpec:
    """How a supervisor starts, restarts and stops one child.

    Attributes:
        id: Unique among the supervisor's children; also the child's actor name.
        factory: An Actor subclass or a callable returning an Actor, called with ``args``
            at every (re)start.
        args: Positional arguments for ``factory``.
        restart: ``permanent`` (default), ``transient`` or ``temporary``.
        shutdown: Seconds the child may take to stop before it is cancelled; ``math.inf``
            waits forever (usual for a child supervisor), ``0`` cancels at once.
        type: ``worker`` (default) or ``supervisor``; informational, shown by introspection.
        mailbox_capacity: Mailbox bound for the child (default: the system's).
    """

    id: str
    factory: Callable[..., Actor[Any]]
    args: tuple[Any, ...] = ()
    restart: Restart = "permanent"
    shutdown: float = 5.0
    type: ChildType = "worker"
    mailbox_capacity: int | None = None

    def __post_init__(self) -> None:
        if not self.id or "/" in self.id or self.id.startswith("$"):
            raise ValueError(f"child id {self.id!r}: must be non-empty, without '/', not starting with '$'")
        if not callable(self.factory):
            raise TypeError(f"child {self.id!r}: factory must be callable, got {self.factory!r}")
        if self.restart not in get_args(Restart):
            raise ValueError(
                f"child {self.id!r}: restart must be one of permanent, transient, temporary, "
                f"got {self.restart!r}"
            )
        if self.type not in get_args(ChildType):
            raise ValueError(f"child {self.id!r}: type must be worker or supervisor, got {self.type!r}")
        if math.isnan(self.shutdown) or self.shutdown < 0:
            raise ValueError(f"child {self.id!r}: shutdown must be >= 0 seconds, got {self.shutdown!r}")
        if not isinstance(self.args, tuple):
            raise TypeError(f"child {self.id!r}: args must be a tuple, got {type(self.args).__name__}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: flockrt's one schedule of delays between attempts.

    Attempt ``n`` (0-based) waits ``min(maximum, initial * multiplier**n)``, scaled by a random
    factor in ``[1 - jitter, 1 + jitter]`` (jitter spreads out the retries of many clients that
    failed at once). A supervisor waits so between restarts of a failing child, which keeps its
    mailbox meanwhile (``n`` counts restarts within the intensity window); the bus waits so
    between attempts to reach NATS or a starting nats-server, and the Claude agent between
    retries of an API call.
    """

    initial: float = 0.01
    maximum: float = 1.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not (0 <= self.initial <= self.maximum):
            raise ValueError(f"backoff needs 0 <= initial <= maximum, got {self.initial!r}, {self.maximum!r}")
        if self.multiplier < 1:
            raise ValueError(f"backoff multiplier must be >= 1, got {self.multiplier!r}")
        if not (0 <= self.jitter <= 1):
            raise ValueError(f"backoff jitter must be within [0, 1], got {self.jitter!r}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt number ``attempt`` (0-based; a negative one counts as 0).

        Args:
            attempt: How many attempts failed before this one.
            rng: Where the jitter comes from (default: the ``random`` module), for tests.
        """
        try:
            base = min(self.maximum, self.initial * self.multiplier ** max(attempt, 0))
        except OverflowError:  # attempt 1024 and on at 2.0: a retry loop that never gives up
            base = self.maximum
        if self.jitter:
            base *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return max(base, 0.0)
