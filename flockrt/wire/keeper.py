"""The keeper claim: how flockrt processes agree which of them keeps a task type's core
queue group open when every other one is saturated (a flockrt addition; see
:mod:`flockrt.bus.lanes`)."""

from __future__ import annotations

import msgspec

from flockrt.wire.subjects import check_token

__all__ = ["KeeperClaim", "keeper_subject", "standby_subject"]


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
