"""The dispatcher's view of its skills and its agents (see :mod:`flockrt.flock.dispatcher`)."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Literal

from flockrt.agents.ports import AgentCard
from flockrt.agents.work import Work

__all__ = ["HEAP_SLACK", "Member", "Skill", "push_lowered"]

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
    """Those with a free slot, as a heap keyed like the fair choice; an entry may be stale (its
    member took work since, or is full): see Dispatcher.free_member."""
    lowered: dict[str, Member] = field(default_factory=dict)
    """Members whose key fell (a slot given back) since the heap last looked: their current
    entries go into ``free`` when it next does (see Dispatcher.free_member), so a member
    that gives a slot back pushes no entry into the heaps of skills nobody asks for."""
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


def push_lowered(skill: Skill, members: dict[str, Member]) -> None:
    """The current entries of the members of ``skill`` whose key fell (``Skill.lowered``)
    into its free heap, which is compacted when stale entries piled up in it."""
    heap, push = skill.free, heapq.heappush
    for agent_id, member in skill.lowered.items():
        running, capacity = member.running, member.card.max_concurrent_tasks
        if members.get(agent_id) is member and running < capacity:
            push(heap, (running / capacity, member.handed.get(skill, 0), agent_id, member.version))
    skill.lowered.clear()
    if len(heap) > HEAP_SLACK * len(skill.agents) + 64:  # drop the stale entries
        current = []
        for agent_id in skill.agents:
            member = members[agent_id]
            if member.free:
                current.append((member.load, member.handed.get(skill, 0), agent_id, member.version))
        heapq.heapify(current)
        skill.free = current
