"""The dispatcher's view of its skills and its agents (see :mod:`flockrt.flock.dispatcher`)."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Literal

from flockrt.agents.ports import AgentCard
from flockrt.agents.work import Work

__all__ = ["HANDED_ONE", "HEAP_SLACK", "Member", "Skill", "fair_key", "push_lowered"]

HEAP_SLACK = 4
"""A free heap is compacted when it holds this many entries per agent (plus 64): stale ones."""

_HANDED_BITS = 64  # pieces handed to one member, of one skill, below 2**64
_LOAD_SCALE = float(1 << 53)
HANDED_ONE = 1
"""What one more piece handed adds to a member's :func:`fair_key`."""


def fair_key(running: int, capacity: int, handed: int) -> int:
    """The fair choice as one number, smallest first: the least loaded (``running /
    capacity``), then the one handed least of the skill so far (the free heaps' entries break
    a tie by the id, next in the entry: :attr:`Skill.free`). One int, so a free heap's sift
    compares numbers where it compared a float and an int.

    The load keeps its order exactly: a correctly rounded ``running / capacity`` times 2**53
    is an integer, equal for equal loads, and two loads below 1 with capacities below 2**26
    differ by more than its rounding."""
    return (int(running / capacity * _LOAD_SCALE) << _HANDED_BITS) + handed


@dataclass(eq=False, slots=True)
class Skill:
    """A capability or a task type offered in this process: who offers it, who of them has a
    free slot, and the work waiting for one. Work is dispatched per skill."""

    kind: Literal["capability", "task"]
    name: str
    agents: set[str] = field(default_factory=set)
    """The local agents that offer it (ids)."""
    free: list[tuple[int, str, int, int]] = field(default_factory=list)
    """Those with a free slot, as a heap of ``(fair_key, agent id, version, running)``: the
    member's key (ties go to the smallest id), and its version and running count then. While
    its version holds, only taking a slot (running grows) changes a member's key (all else
    that does gives it a new version: Dispatcher.offer), so an entry with its version and
    running count has its key. An entry may be stale (its member took work since, or is
    full): see Dispatcher.free_member."""
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

    def entry(self, skill: Skill) -> tuple[int, str, int, int]:
        """Its current entry in ``skill``'s free heap (see :attr:`Skill.free`)."""
        running = self.running
        key = fair_key(running, self.card.max_concurrent_tasks, self.handed.get(skill, 0))
        return key, self.card.id, self.version, running


def push_lowered(skill: Skill, members: dict[str, Member]) -> None:
    """The current entries of the members of ``skill`` whose key fell (``Skill.lowered``)
    into its free heap, which is compacted when stale entries piled up in it."""
    heap, push = skill.free, heapq.heappush
    for agent_id, member in skill.lowered.items():
        if members.get(agent_id) is member and member.running < member.card.max_concurrent_tasks:
            push(heap, member.entry(skill))
    skill.lowered.clear()
    if len(heap) > HEAP_SLACK * len(skill.agents) + 64:  # drop the stale entries
        rebuild(skill, members)


def rebuild(skill: Skill, members: dict[str, Member]) -> None:
    """``skill``'s free heap anew: the current entry of each of its members with a free slot."""
    current = []
    for agent_id in skill.agents:
        member = members.get(agent_id)  # (one that rejoined without the skill: none here)
        if member is None or skill not in member.skills:
            continue
        if member.running < member.card.max_concurrent_tasks:
            current.append(member.entry(skill))
    heapq.heapify(current)
    skill.free = current
    skill.lowered.clear()
