"""The intake's own messages (flockrt additions to the wire contract).

- The keeper claim: how flockrt processes on one NATS server agree which of them keeps a task
  type's core queue group open when every other one is saturated (:mod:`flockrt.bus.lanes`).
- The hand-off: how processes on a NATS cluster move tasks that wait for a slot to a process
  with a free one, confirmed, without ever withdrawing interest on ``tasks.<type>``
  (:mod:`flockrt.bus.handoff`).
"""

from __future__ import annotations

import msgspec

from flockrt.wire.subjects import check_token

__all__ = [
    "KeeperClaim",
    "OfferAnswer",
    "REPLY_HEADER",
    "Room",
    "keeper_subject",
    "offer_subject",
    "room_subject",
    "standby_subject",
]

REPLY_HEADER = "Flockrt-Reply"
"""The header of a handed-off task that carries the reply subject of the task as first
published (a request's), so that its result still reaches the requester."""


class KeeperClaim(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A process's rank for keeping one task type: the answer of a keeper to a probe, its
    announcement when it becomes keeper, and the question of a probing process.

    The higher ``(capacity, node)`` keeps the type; the others step down.
    """

    node: str
    capacity: int

    @property
    def rank(self) -> tuple[int, str]:
        return (self.capacity, self.node)


def keeper_subject(task_type: str) -> str:
    """``flockrt.intake.<type>.keeper``: the keeper of ``tasks.<type>`` listens here."""
    return f"flockrt.intake.{check_token('task type', task_type)}.keeper"


def standby_subject(task_type: str) -> str:
    """``flockrt.intake.<type>.standby``: the other processes that run the type, in a queue
    group: a keeper that stops hands its role over to one of them."""
    return f"flockrt.intake.{check_token('task type', task_type)}.standby"


class Room(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """On ``flockrt.intake.<type>.room``: a process says how many tasks of the type it could
    start at once (``room``: free slots, nothing waiting), and where it takes offers
    (``inbox``). ``room`` 0 is the question of a process that holds tasks waiting for a slot:
    the processes with room answer with their own :class:`Room` on the same subject."""

    node: str
    room: int
    inbox: str


class OfferAnswer(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The answer to a task offered on a process's inbox: ``taken`` (it runs there now; the
    offering process forgets it) or not (``full``: the offering process keeps it), and the
    room left."""

    node: str
    taken: bool
    room: int


def room_subject(task_type: str) -> str:
    """``flockrt.intake.<type>.room``: room announcements and questions (every process that
    runs the type on a NATS cluster listens, no queue group)."""
    return f"flockrt.intake.{check_token('task type', task_type)}.room"


def offer_subject(task_type: str, token: str) -> str:
    """``flockrt.intake.<type>.offer.<token>``: one process's inbox for offered tasks (request/
    reply; ``token`` is unique per process and lane)."""
    return f"flockrt.intake.{check_token('task type', task_type)}.offer.{check_token('inbox token', token)}"
