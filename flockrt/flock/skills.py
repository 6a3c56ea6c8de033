"""The dispatcher's view of its skills and its agents (see :mod:`flockrt.flock.dispatcher`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from flockrt.agents.ports import AgentCard
from flockrt.agents.work import Work

__all__ = ["HEAP_SLACK", "Member", "Skill"]

HEAP_SLACK = 4
"""A free heap is compacted when it holds this many entries per agent (plus 64): stale ones."""


@dataclass(eq=False, slots=True)
class Skill:
    """A capability or a task type offered in this process: who offers it, who of them has a
    free slot, and the work waiting for one. Work is dispatched per skill."""

    kind: Literal["capability", "task"]
    name: str
    agents: set[str] = field(default_factory=set)
    """The local agents that offer it (ids)."""
    free: list[tuple[float, int, str, int]] = field(default_factory=list)
    """Those with a free slot, as a heap keyed like the fair choice (see Dispatcher.offer)."""
    waiting: list[tuple[int, int, Work]] = field(default_factory=list)
    """Work waiting for a free agent, as a heap: highest priority (lowest number) first, then
    the oldest."""
    pumping: bool = False
    """Whether Dispatcher.pump (or a dispatch) is handing out its work right now."""
    inline: set[str] = field(default_factory=set)
    """Those whose handler of it never waits (the fast path looks for a free agent only if
    there is one: otherwise the usual path looks, once)."""


@dataclass(eq=False, slots=True)
class Member:
    card: AgentCard
    skills: tuple[Skill, ...] = ()
    running: int = 0
    handed: dict[Skill, int] = field(default_factory=dict)
    """Pieces of work of each skill handed to it so far (a task of bulk work counts as one):
    the fair choice's tie-break, so each kind of work spreads over the agents that do it."""
    version: int = 0
    """Which of its entries in the free heaps is current (see Dispatcher.offer); 0: none."""

    @property
    def free(self) -> bool:
        return self.running < self.card.max_concurrent_tasks

    @property
    def load(self) -> float:
        return self.running / self.card.max_concurrent_tasks
