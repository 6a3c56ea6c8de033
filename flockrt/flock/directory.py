"""The directory of agents: who is in the flock, what each can do, and whether it is alive.

A pure data structure, with no I/O, no timers and no tasks, so that both feeders share it: the
NATS adapter hands it every ``agent.announce`` and ``agent.<id>.heartbeat`` it receives, and the
in-process flock hands it its own agents' announcements and heartbeats directly. The MCP tools
(``list_agents``, ``get_agent_info``) and capability routing (:meth:`Directory.pick`) read it.

Liveness is decided on the receiver's clock only. A sender's timestamp is kept for display, but
machines' clocks drift, so "last seen" is when *this* process received the message. An agent is
offline once more than ``missed`` heartbeat intervals have passed since it was last seen. Nothing
ticks to notice that: the status is recomputed whenever the directory is read (:meth:`~Directory.get`,
:meth:`~Directory.list`, :meth:`~Directory.pick`) or swept (:meth:`~Directory.sweep`, which a
periodic caller uses so that subscribers hear about silent agents even when nobody reads).

The directory is bounded, because anyone on the bus can make up agents: an agent heard of only
by heartbeats (it never announced) is forgotten once it has been silent for ``unannounced_ttl``,
an offline agent once it has been silent for ``offline_ttl`` (both by :meth:`~Directory.sweep`),
and at most ``max_agents`` are listed: a new agent beyond that takes the place of the longest
silent offline or unannounced one, or is refused (:attr:`~Directory.refused` counts them).

Subscribers (:meth:`Directory.subscribe`) hear about changes that matter to a reader of the list
(an agent added, renamed, given other capabilities, moved, going offline or online, reporting
another status, removed), never about a heartbeat that only moved its counters: with thousands of
agents beating every few seconds, that would flood MCP resource subscribers with noise.
"""

from __future__ import annotations

import builtins
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias

from flockrt.wire.schema import AgentAnnouncement, CapabilitySchema, Heartbeat, utcnow

__all__ = ["AgentInfo", "AgentStatus", "ChangeCallback", "Directory", "StatusFilter"]

log = logging.getLogger("flockrt.directory")

AgentStatus: TypeAlias = Literal["online", "offline"]
"""The directory's verdict on an agent: heard from recently enough, or not."""

StatusFilter: TypeAlias = Literal["online", "offline", "all"]

ChangeCallback: TypeAlias = Callable[[str, "AgentInfo | None"], None]
"""Called with ``(agent_id, info)`` on a change, ``info`` being None when the agent was removed."""

_STATUS_FILTERS: Final = frozenset({"online", "offline", "all"})


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentInfo:
    """What the directory knows about one agent: an immutable snapshot.

    Snapshots are frozen so that a reader (an MCP session serialising the list, a subscriber
    keeping a mirror) can hold one while the directory moves on; each update makes a new one.

    Attributes:
        id: The agent's id, unique in the flock.
        name: Its human-readable name (the id until an announcement says otherwise).
        capabilities: What it can be asked to do, in announcement order, without duplicates.
        status: The directory's verdict, ``online`` or ``offline`` (see :class:`Directory`).
        reported_status: What the agent said of itself in its last heartbeat (``online``,
            ``busy``, ``idle``, ...); ``online`` after an announcement. Free text: peers in other
            languages send their own words.
        last_seen: When this process last heard from the agent, by the receiver's wall clock
            (aware, UTC): a sender's clock may be skewed, ours is the one we compare against.
        timestamp: The sender's own timestamp on its last message, kept for display only.
        uptime_ms: Milliseconds since the agent started, from its last heartbeat.
        tasks_processed: Tasks it has handled, from its last heartbeat.
        load: Running tasks / max concurrent tasks, if the agent reports it.
        node: The flockrt process it lives in, if announced.
        max_concurrent_tasks: How many tasks it runs at once, if announced.
    """

    id: str
    name: str
    capabilities: tuple[str, ...] = ()
    status: AgentStatus = "online"
    reported_status: str = "online"
    last_seen: datetime
    timestamp: datetime
    uptime_ms: int = 0
    tasks_processed: int = 0
    load: float | None = None
    node: str | None = None
    max_concurrent_tasks: int | None = None
    capability_schemas: Mapping[str, CapabilitySchema] | None = None
    """What its announcement said each capability takes, returns and does (not in
    :meth:`to_json`: the MCP gateway makes tools of them)."""

    def to_json(self) -> dict[str, Any]:
        """This agent as a JSON-able dict with the camelCase keys of the wire contract.

        ``lastSeen`` is ISO-8601 UTC with a ``Z``, as msgspec writes timestamps on the wire, so
        clients parse one format everywhere. ``status`` is the directory's online/offline verdict.
        """
        return {
            "id": self.id,
            "name": self.name,
            "capabilities": builtins.list(self.capabilities),
            "status": self.status,
            "reportedStatus": self.reported_status,
            "lastSeen": _iso(self.last_seen),
            "uptime": self.uptime_ms,
            "tasksProcessed": self.tasks_processed,
            "load": self.load,
            "node": self.node,
            "maxConcurrentTasks": self.max_concurrent_tasks,
        }


def _iso(moment: datetime) -> str:
    """ISO-8601 in UTC with ``Z``; a naive datetime is taken to be UTC already."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")


class _Entry:
    """The directory's mutable slot for one agent: its current snapshot and when it was seen.

    ``seen`` is on the monotonic ``clock`` (what liveness is computed from), unlike the
    snapshot's ``last_seen``, which is wall-clock time for people to read.
    """

    __slots__ = ("announced", "info", "seen")

    def __init__(self, info: AgentInfo, seen: float, announced: bool) -> None:
        self.info = info
        self.seen = seen
        self.announced = announced
        """Whether it announced itself (else it is known by its heartbeats only)."""


class Directory:
    """The agents of the flock, indexed by id and by capability.

    An agent is online from its announcement (or first heartbeat) until more than
    ``missed * heartbeat_interval`` seconds pass on ``clock`` without a word from it, or until it
    is :meth:`mark_offline`-ed; its next heartbeat or announcement brings it back online.
    Exactly ``missed`` intervals of silence is still online: a heartbeat that is merely on time
    must never flap an agent offline.

    Not thread-safe, and it need not be: it lives on one event loop and never awaits, so each
    method runs to completion before the next message is handled.

    Args:
        heartbeat_interval: Seconds between an agent's heartbeats (the flock's HEARTBEAT_INTERVAL).
        missed: How many intervals may pass in silence before an agent counts as offline.
        clock: Monotonic seconds, for liveness; injected by tests to move time without sleeping.
        wallclock: The current aware UTC time, for ``last_seen``.
        max_agents: Agents listed at most (online or offline).
        unannounced_ttl: Seconds of silence after which an agent that never announced is
            forgotten (None: ``missed * heartbeat_interval``, when it would go offline).
        offline_ttl: Seconds of silence after which an offline agent is forgotten.

    Raises:
        ValueError: ``heartbeat_interval`` is not positive, ``missed`` or ``max_agents`` is
            below 1, or a ttl is not positive.
    """

    def __init__(
        self,
        heartbeat_interval: float = 30.0,
        *,
        missed: int = 3,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], datetime] = utcnow,
        max_agents: int = 10_000,
        unannounced_ttl: float | None = None,
        offline_ttl: float = 3600.0,
    ) -> None:
        if not heartbeat_interval > 0:  # also rejects NaN
            raise ValueError(f"heartbeat_interval must be > 0 seconds, got {heartbeat_interval!r}")
        if missed < 1:
            raise ValueError(f"missed must be >= 1, got {missed!r}")
        if max_agents < 1:
            raise ValueError(f"max_agents must be >= 1, got {max_agents!r}")
        if unannounced_ttl is None:
            unannounced_ttl = heartbeat_interval * missed
        for name, ttl in (("unannounced_ttl", unannounced_ttl), ("offline_ttl", offline_ttl)):
            if not ttl > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {ttl!r}")
        self.max_agents = max_agents
        self.unannounced_ttl = unannounced_ttl
        self.offline_ttl = offline_ttl
        self.refused = 0
        """New agents not listed because the directory was full."""
        self.evicted = 0
        """Agents forgotten: silent past their ttl, or making room for a new one."""
        self._no_room_until = -math.inf  # full, with nothing to forget, until then
        self.heartbeat_interval = heartbeat_interval
        self.missed = missed
        self._grace = heartbeat_interval * missed
        self._clock = clock
        self._wallclock = wallclock
        self._agents: dict[str, _Entry] = {}
        # capability -> ids of the agents that have it, so that routing a capability request
        # touches only the capable agents, not the whole flock. Never holds an empty set.
        self._by_capability: dict[str, set[str]] = {}
        self._subscribers: dict[int, ChangeCallback] = {}
        self._next_token = 0

    # -- feeding ---------------------------------------------------------------------------------

    def on_announcement(self, announcement: AgentAnnouncement) -> AgentInfo | None:
        """Add an agent, or update what it announced; either way it is online and seen now.

        A re-announcement replaces name, capabilities, node and max concurrent tasks, resets the
        reported status to ``online``, and keeps the counters of the last heartbeat (the next
        heartbeat refreshes them).

        Returns:
            The agent's new snapshot, or None for a new agent refused because the directory is
            full (``max_agents`` listed, none of them offline or unannounced).
        """
        now, wall = self._clock(), self._wallclock()
        capabilities = tuple(dict.fromkeys(announcement.capabilities))
        entry = self._agents.get(announcement.id)
        if entry is None:
            if len(self._agents) >= self.max_agents and not self._make_room(now, announcement.id):
                return None
            info = AgentInfo(
                id=announcement.id,
                name=announcement.name,
                capabilities=capabilities,
                last_seen=wall,
                timestamp=announcement.timestamp,
                node=announcement.node,
                max_concurrent_tasks=announcement.max_concurrent_tasks,
                capability_schemas=announcement.capability_schemas,
            )
            self._agents[info.id] = _Entry(info, now, True)
            self._index(info.id, (), capabilities)
            self._notify(info.id, info)
            return info
        old = entry.info
        info = replace(
            old,
            name=announcement.name,
            capabilities=capabilities,
            status="online",
            reported_status="online",
            last_seen=wall,
            timestamp=announcement.timestamp,
            node=announcement.node,
            max_concurrent_tasks=announcement.max_concurrent_tasks,
            capability_schemas=announcement.capability_schemas,
        )
        entry.info, entry.seen, entry.announced = info, now, True
        self._index(info.id, old.capabilities, capabilities)
        if _listing_changed(old, info):
            self._notify(info.id, info)
        return info

    def restore(self, announcement: AgentAnnouncement, last_seen: datetime) -> AgentInfo | None:
        """Add an agent from a stored record (the persisted directory), last heard of at
        ``last_seen`` (aware wall-clock time, e.g. when the record was last written).

        It counts as silent since then: offline already if that is more than ``missed``
        heartbeat intervals ago (a record outlives a process killed without a goodbye), else
        online until the rest of the grace period passes without a word from it. Its next
        heartbeat or announcement brings it online as usual. A time in the future (clocks
        disagree) counts as now.

        Returns:
            The agent's snapshot; the one already listed, unchanged, if the agent is known here
            (what this process heard itself is fresher than any record); None if the directory
            is full.
        """
        entry = self._agents.get(announcement.id)
        if entry is not None:
            return self._refresh((entry,))[0]
        now, wall = self._clock(), self._wallclock()
        age = max(0.0, (wall - last_seen).total_seconds())
        if len(self._agents) >= self.max_agents and not self._make_room(now, announcement.id):
            return None
        info = AgentInfo(
            id=announcement.id,
            name=announcement.name,
            capabilities=tuple(dict.fromkeys(announcement.capabilities)),
            status="offline" if age > self._grace else "online",
            last_seen=min(last_seen, wall),
            timestamp=announcement.timestamp,
            node=announcement.node,
            max_concurrent_tasks=announcement.max_concurrent_tasks,
            capability_schemas=announcement.capability_schemas,
        )
        self._agents[info.id] = _Entry(info, now - age, True)
        self._index(info.id, (), info.capabilities)
        self._notify(info.id, info)
        return info

    def on_heartbeat(self, heartbeat: Heartbeat) -> AgentInfo | None:
        """Record an agent's sign of life: seen now, online, with its latest counters.

        A heartbeat from an agent never announced here is kept, as an agent known by its id only
        (its name is the id, it has no capabilities, so :meth:`pick` never routes to it), and a
        later announcement fills in the rest. Announcements are sent once, when an agent starts:
        a process that joins a running flock hears only heartbeats, and dropping them would hide
        every agent that started before it until that agent happened to re-announce.

        Subscribers are told only when the agent is new, comes back online, or reports another
        status; a heartbeat that moves nothing but counters (uptime, tasks, load) is silent.

        Such an agent is forgotten after ``unannounced_ttl`` seconds of silence, and, when the
        directory is full, it is not added (an agent that announces itself still is).

        Returns:
            The agent's new snapshot, or None for a new agent refused because the directory is
            full.
        """
        now, wall = self._clock(), self._wallclock()
        entry = self._agents.get(heartbeat.agent_id)
        if entry is None:
            full = len(self._agents) >= self.max_agents
            if full and not self._room_for_unannounced(now, heartbeat.agent_id):
                return None
            info = AgentInfo(
                id=heartbeat.agent_id,
                name=heartbeat.agent_id,
                reported_status=heartbeat.status,
                last_seen=wall,
                timestamp=heartbeat.timestamp,
                uptime_ms=heartbeat.uptime,
                tasks_processed=heartbeat.tasks_processed,
                load=heartbeat.load,
            )
            self._agents[info.id] = _Entry(info, now, False)
            self._notify(info.id, info)
            return info
        old = entry.info
        info = replace(
            old,
            status="online",
            reported_status=heartbeat.status,
            last_seen=wall,
            timestamp=heartbeat.timestamp,
            uptime_ms=heartbeat.uptime,
            tasks_processed=heartbeat.tasks_processed,
            load=heartbeat.load,
        )
        entry.info, entry.seen = info, now
        if _listing_changed(old, info):
            self._notify(info.id, info)
        return info

    def remove(self, agent_id: str) -> bool:
        """Forget an agent that stopped for good (it said goodbye, or its process ended it).

        Returns:
            True if the agent was known; subscribers then get ``(agent_id, None)``.
        """
        entry = self._agents.pop(agent_id, None)
        if entry is None:
            return False
        self._index(agent_id, entry.info.capabilities, ())
        self._notify(agent_id, None)
        return True

    def mark_offline(self, agent_id: str) -> bool:
        """Mark an agent offline now, without waiting for its heartbeats to lapse.

        For an agent known to be gone that should stay listed (an MCP connection that closed may
        reconnect and announce again). It comes back online at its next heartbeat or announcement.

        Returns:
            True if the agent was known (subscribers hear of it if it was online until now).
        """
        entry = self._agents.get(agent_id)
        if entry is None:
            return False
        if entry.info.status == "online":
            entry.info = replace(entry.info, status="offline")
            self._notify(agent_id, entry.info)
        return True

    # -- reading ---------------------------------------------------------------------------------

    def get(self, agent_id: str) -> AgentInfo | None:
        """The agent's current snapshot (status recomputed now), or None if it is unknown."""
        entry = self._agents.get(agent_id)
        if entry is None:
            return None
        return self._refresh((entry,))[0]

    def list(self, status: StatusFilter = "all", capability: str | None = None) -> builtins.list[AgentInfo]:
        """The agents with ``status`` (and ``capability``, if given), sorted by id.

        With a capability, only the agents indexed under it are looked at, so listing a rare
        capability in a large flock is cheap.

        Raises:
            ValueError: ``status`` is not ``online``, ``offline`` or ``all``.
        """
        if status not in _STATUS_FILTERS:
            raise ValueError(f"status must be 'online', 'offline' or 'all', got {status!r}")
        infos = self._refresh(self._candidates(capability))
        if status != "all":
            infos = [info for info in infos if info.status == status]
        infos.sort(key=_by_id)
        return infos

    def pick(self, capability: str, *, prefer: Callable[[AgentInfo], bool] | None = None) -> AgentInfo | None:
        """The online agent best placed to take a ``capability`` request, or None if none can.

        The least loaded wins (an agent that reports no load counts as idle, 0), then the one that
        has processed the fewest tasks, then the smallest id, so the choice is deterministic and
        spreads work. With ``prefer`` (say, "lives in this process"), agents it accepts win over
        all others whatever their load: a local call costs no network hop.

        Args:
            capability: The capability needed.
            prefer: Optional predicate of the agents to try first.
        """
        best: AgentInfo | None = None
        best_key: tuple[bool, float, int, str] | None = None
        for info in self._refresh(self._candidates(capability)):
            if info.status != "online":
                continue
            load = 0.0 if info.load is None else info.load
            key = (prefer is not None and not prefer(info), load, info.tasks_processed, info.id)
            if best_key is None or key < best_key:
                best, best_key = info, key
        return best

    def sweep(self) -> builtins.list[AgentInfo]:
        """Recompute every agent's status now and tell subscribers about those that went
        offline; forget the agents silent past their ttl (``unannounced_ttl``, ``offline_ttl``).

        Reads already do this lazily for the agents they touch; a periodic caller (every
        heartbeat interval, say) sweeps so that an agent that falls silent is reported even when
        nobody is reading.

        Returns:
            The snapshots of the agents that went offline in this sweep, sorted by id.
        """
        now = self._clock()
        self._evict_expired(now)
        lapsed = sorted(
            (entry for entry in self._agents.values() if self._lapsed(entry, now)),
            key=lambda entry: entry.info.id,
        )
        return [info for info in self._refresh(lapsed, now) if info.status == "offline"]

    def __len__(self) -> int:
        """How many agents are listed, online or offline."""
        return len(self._agents)

    def __contains__(self, agent_id: object) -> bool:
        """Whether an agent with this id is listed, online or offline."""
        return agent_id in self._agents

    # -- change notifications -------------------------------------------------------------------

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback(agent_id, info)`` on every change, synchronously, after it is made.

        A change is: an agent added; its name, capabilities, node or max concurrent tasks
        changed; it went offline or came back online; its reported status changed; it was
        removed (then ``info`` is None). Offline transitions are noticed lazily, by the read or
        :meth:`sweep` that first sees them.

        The directory is already updated when the callback runs, so it may read the directory
        (or change it). A callback that raises is logged with its traceback and the other
        subscribers are still called: one broken subscriber must not corrupt the feed of the
        others, nor fail the heartbeat that happened to trigger it.

        Returns:
            A function that unsubscribes this callback; calling it again does nothing.
        """
        token = self._next_token
        self._next_token += 1
        self._subscribers[token] = callback

        def unsubscribe() -> None:
            self._subscribers.pop(token, None)

        return unsubscribe

    # -- internals -------------------------------------------------------------------------------

    def _expired(self, entry: _Entry, now: float) -> bool:
        """Silent past its ttl: never announced, or offline."""
        silent = now - entry.seen
        if not entry.announced and silent > self.unannounced_ttl:
            return True
        return silent > self.offline_ttl and (entry.info.status == "offline" or self._lapsed(entry, now))

    def _evict_expired(self, now: float) -> None:
        expired = [agent_id for agent_id, entry in self._agents.items() if self._expired(entry, now)]
        for agent_id in expired:
            self.evicted += 1
            self.remove(agent_id)
        if expired:
            log.info("forgot %d agents silent past their ttl", len(expired))

    def _room_for_unannounced(self, now: float, newcomer: str) -> bool:
        """Room for an agent known by a heartbeat only, in a full directory: only by forgetting
        the expired (looked for at most once per second: a flood of made-up agents then costs
        a comparison each)."""
        if now >= self._no_room_until:
            self._evict_expired(now)
            if len(self._agents) < self.max_agents:
                return True
            self._no_room_until = now + 1.0
        self._refuse(newcomer)
        return False

    def _make_room(self, now: float, newcomer: str) -> bool:
        """Room for an agent that announced itself in a full directory: forget the expired, or
        else the longest silent agent that is offline or never announced (looked for at most
        once per second when there is none)."""
        if now < self._no_room_until:
            self._refuse(newcomer)
            return False
        self._evict_expired(now)
        if len(self._agents) < self.max_agents:
            return True
        candidates = [
            entry
            for entry in self._agents.values()
            if not entry.announced or entry.info.status == "offline" or self._lapsed(entry, now)
        ]
        if not candidates:
            self._no_room_until = now + 1.0
            self._refuse(newcomer)
            return False
        oldest = min(candidates, key=lambda entry: entry.seen)
        self.evicted += 1
        self.remove(oldest.info.id)
        return True

    def _refuse(self, agent_id: str) -> None:
        self.refused += 1
        if self.refused & (self.refused - 1):  # logged at the 1st, 2nd, 4th, 8th ... refusal
            return
        log.warning(
            "directory full (%d agents): agent %.100r not listed (%d refused so far; raise max_agents)",
            self.max_agents,
            agent_id,
            self.refused,
        )

    def _candidates(self, capability: str | None) -> builtins.list[_Entry]:
        if capability is None:
            return builtins.list(self._agents.values())
        return [self._agents[agent_id] for agent_id in self._by_capability.get(capability, ())]

    def _lapsed(self, entry: _Entry, now: float) -> bool:
        """An online agent silent for strictly more than the grace period."""
        return entry.info.status == "online" and now - entry.seen > self._grace

    def _refresh(self, entries: Iterable[_Entry], now: float | None = None) -> builtins.list[AgentInfo]:
        """Bring the entries' statuses up to date and return their snapshots, in order.

        Subscribers are notified only after the whole batch is updated, so a callback that changes
        the directory cannot disturb the loop, and sees every entry of the batch current.
        """
        if now is None:
            now = self._clock()
        infos: builtins.list[AgentInfo] = []
        went_offline: builtins.list[AgentInfo] = []
        for entry in entries:
            if self._lapsed(entry, now):
                entry.info = replace(entry.info, status="offline")
                went_offline.append(entry.info)
            infos.append(entry.info)
        for info in went_offline:
            self._notify(info.id, info)
        return infos

    def _index(self, agent_id: str, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        if old == new:
            return
        for capability in set(old).difference(new):
            ids = self._by_capability[capability]
            ids.discard(agent_id)
            if not ids:
                del self._by_capability[capability]
        for capability in set(new).difference(old):
            self._by_capability.setdefault(capability, set()).add(agent_id)

    def _notify(self, agent_id: str, info: AgentInfo | None) -> None:
        # A snapshot of the subscribers: a callback may subscribe or unsubscribe.
        for callback in tuple(self._subscribers.values()):
            try:
                callback(agent_id, info)
            except Exception:  # isolation boundary: one subscriber must not break the others
                log.exception("directory subscriber %r failed on a change of agent %s", callback, agent_id)


def _listing_changed(old: AgentInfo, new: AgentInfo) -> bool:
    """Whether a reader of the list would see a difference (counters and times aside)."""
    return (
        old.status != new.status
        or old.reported_status != new.reported_status
        or old.name != new.name
        or old.capabilities != new.capabilities
        or old.node != new.node
        or old.max_concurrent_tasks != new.max_concurrent_tasks
        or old.capability_schemas != new.capability_schemas
    )


def _by_id(info: AgentInfo) -> str:
    return info.id
