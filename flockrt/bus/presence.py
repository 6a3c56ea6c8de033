"""Presence: how the agents of one process are known across the flock, and others' here.

Local agents announce on ``agent.announce`` when they join, heartbeat on
``agent.<id>.heartbeat``, and say goodbye (a heartbeat with status ``offline``) when they leave.
Every process builds its directory from what it hears. A process that hears a heartbeat of an
agent it does not know asks everyone to announce again (``agent.discover``, at most once per
heartbeat interval). A process answers discovery requests at most once per
``discover_interval``: requests that arrive in between share the next answer, so a flood of
them costs one round of announcements per interval.

What others say is bounded (:class:`~flockrt.config.NatsLimits`): an announcement or heartbeat
with an id, name, capability name or status longer than ``max_id_length``, or listing more than
``max_capabilities`` capabilities, is rejected (counted as invalid, under ``agent.announce`` or
``agent.*.heartbeat``, and logged), and the directory itself is bounded (see
:class:`~flockrt.flock.directory.Directory`).

With ``persist_directory``, local agents are also kept in the JetStream key-value bucket
FLOCK_AGENTS (entries expire after three missed heartbeats), which a process
loads when it starts. An entry is rewritten at each heartbeat, so the time the server stored it
says how long its agent has been silent: one older than three heartbeat intervals loads as
offline (:meth:`Directory.restore <flockrt.flock.directory.Directory.restore>`). The bucket has
``[nats] replicas`` copies and is checked at start, never weakened (see
:mod:`flockrt.bus.streams`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time

import msgspec

from flockrt.bus.connection import Message, Subscription
from flockrt.bus.outlet import Outlet
from flockrt.config import NatsLimits
from flockrt.errors import BusTimeout, BusUnavailable, JetStreamError
from flockrt.flock.directory import Directory
from flockrt.flock.dispatcher import Dispatcher
from flockrt.wire import subjects
from flockrt.wire.schema import AgentAnnouncement, DiscoveryRequest, Heartbeat

__all__ = ["Presence"]

log = logging.getLogger("flockrt.flock")

_HEARTBEATS = "agent.*.heartbeat"

_KV_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")  # what a key-value key may contain


class Presence:
    """Announcements, heartbeats, discovery and the persisted directory of one NATS flock.

    Args:
        outlet: How the flock talks on the bus.
        directory: This process's directory (fed with what other processes announce).
        dispatcher: This process's dispatcher (which agents are local).
        node: This process's name.
        heartbeat_interval: Seconds between heartbeats.
        persist: Keep local agents in the key-value bucket and load it at start.
        limits: What is accepted from others (the defaults of ``[nats]`` if None).
    """

    DIRECTORY_BUCKET = "FLOCK_AGENTS"

    def __init__(
        self,
        outlet: Outlet,
        directory: Directory,
        dispatcher: Dispatcher,
        *,
        node: str,
        heartbeat_interval: float,
        persist: bool,
        limits: NatsLimits | None = None,
    ) -> None:
        self.outlet = outlet
        self.bus = outlet.bus
        self.codec = outlet.codec
        self.directory = directory
        self.dispatcher = dispatcher
        self.node = node
        self.heartbeat_interval = heartbeat_interval
        self.persist_directory = persist
        self.announcements: dict[str, AgentAnnouncement] = {}  # local agents, for the bucket
        self.discovered_at = -math.inf  # when this process last asked agents to re-announce
        self.limits = limits or NatsLimits()
        self.answered_at = -math.inf  # when this process last answered a discovery request
        self.discover_requests_deferred = 0
        """Discovery requests that arrived within ``discover_interval`` of an answer: they
        share the next one."""
        self._discover_answer: asyncio.TimerHandle | None = None
        self._subscriptions: list[Subscription] = []
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """Listen to the flock's announcements, heartbeats and discovery requests, load the
        persisted directory, and ask the agents that started before this process to announce."""
        self._subscriptions += [
            await self.bus.subscribe(subjects.ANNOUNCE, self.on_announce),
            await self.bus.subscribe(_HEARTBEATS, self.on_heartbeat),
            await self.bus.subscribe(subjects.DISCOVER, self.on_discover),
        ]
        if self.persist_directory:
            try:  # a bucket that cannot be kept as it is (JetStreamError) fails the start
                await self.bus.jetstream.ensure_bucket(self.DIRECTORY_BUCKET, ttl=self._directory_ttl)
            except (BusUnavailable, BusTimeout) as exc:
                log.debug("directory bucket not checked: %s", exc)  # load() says it, as a warning
            await self.load()
        await self.discover()
        self._schedule_sweep()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._discover_answer is not None:
            self._discover_answer.cancel()
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        self._subscriptions.clear()

    def _schedule_sweep(self) -> None:
        # Offline detection is lazy in the directory; a periodic sweep makes transitions show up
        # (and notify subscribers) even when nobody asks.
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(self.heartbeat_interval, self._sweep)

    def _sweep(self) -> None:
        self.directory.sweep()
        self._schedule_sweep()

    # ------------------------------------------------------------------ local agents

    async def announce(self, announcement: AgentAnnouncement) -> None:
        """A local agent joined (its subscriptions are in place): tell the flock."""
        await self.outlet.publish(subjects.ANNOUNCE, announcement)
        self.announcements[announcement.id] = announcement
        if self.persist_directory:
            await self.persist(announcement)

    def heartbeat(self, heartbeat: Heartbeat) -> None:
        """A local agent's heartbeat: on NATS, and its persisted entry kept from expiring."""
        self.outlet.later(lambda: self.outlet.publish(subjects.heartbeat(heartbeat.agent_id), heartbeat))
        announcement = self.announcements.get(heartbeat.agent_id)
        if announcement is not None and self.persist_directory:
            self.outlet.later(lambda: self.persist(announcement))

    async def goodbye(self, agent_id: str, *, gone: bool) -> None:
        """A local agent left (``gone``: no instance of it runs here any more)."""
        if gone:
            self.announcements.pop(agent_id, None)
            await self.forget(agent_id)
        offline = Heartbeat(agent_id=agent_id, status="offline")
        await self.outlet.publish(subjects.heartbeat(agent_id), offline)

    # ------------------------------------------------------------------ persisted directory

    @property
    def _directory_ttl(self) -> float:
        return max(3 * self.heartbeat_interval, 1.0)

    async def persist(self, announcement: AgentAnnouncement) -> None:
        if not _KV_KEY.match(announcement.id):
            log.debug("agent id %r cannot be a key-value key; not persisted", announcement.id)
            return
        try:
            await self.bus.kv_put(
                self.DIRECTORY_BUCKET,
                announcement.id,
                self.codec.encode(announcement),
                ttl=self._directory_ttl,
            )
        except (BusUnavailable, BusTimeout, JetStreamError) as exc:  # best effort: heartbeats still work
            log.debug("directory entry for %s not persisted: %s", announcement.id, exc)

    async def forget(self, agent_id: str) -> None:
        if self.persist_directory and _KV_KEY.match(agent_id):
            try:
                await self.bus.kv_delete(self.DIRECTORY_BUCKET, agent_id, ttl=self._directory_ttl)
            except (BusUnavailable, BusTimeout, JetStreamError) as exc:
                log.debug("directory entry for %s not removed: %s", agent_id, exc)

    async def load(self) -> None:
        try:
            entries = await self.bus.jetstream.kv_entries(self.DIRECTORY_BUCKET, ttl=self._directory_ttl)
        except (BusUnavailable, BusTimeout, JetStreamError) as exc:
            log.warning("persisted directory not loaded (%s); it fills from heartbeats instead", exc)
            return
        online = offline = 0
        for key, entry in entries.items():
            announcement = self.outlet.decode(
                Message(f"$KV.{self.DIRECTORY_BUCKET}.{key}", entry.value, {}, ""), AgentAnnouncement
            )
            if announcement is None or self.dispatcher.is_local(announcement.id):
                continue
            # An entry is rewritten at every heartbeat: its age is the agent's silence (an entry
            # older than three intervals is an agent that stopped without a goodbye: offline).
            info = self.directory.restore(_described_only(announcement), entry.stored)
            if info is not None and info.status == "online":
                online += 1
            elif info is not None:
                offline += 1
        log.info(
            "loaded %d agents from the persisted directory (%d online, %d offline)",
            online + offline,
            online,
            offline,
        )

    # ------------------------------------------------------------------ other processes

    async def on_announce(self, message: Message) -> None:
        announcement = self.outlet.decode(message, AgentAnnouncement)
        if announcement is None:
            return
        problem = self._over_limits(announcement.id, announcement.name, *announcement.capabilities)
        if problem is None and len(announcement.capabilities) > self.limits.max_capabilities:
            problem = (
                f"{len(announcement.capabilities)} capabilities, over the limit of "
                f"{self.limits.max_capabilities} (nats.max_capabilities)"
            )
        if problem is not None:
            self.outlet.reject(
                subjects.ANNOUNCE, f"announcement of {announcement.id[:100]!r} rejected: {problem}"
            )
        elif not self.dispatcher.is_local(announcement.id):
            self.directory.on_announcement(_described_only(announcement))

    def _over_limits(self, *names: str) -> str | None:
        """What is wrong with these ids, names or statuses, or None."""
        limit = self.limits.max_id_length
        for name in names:
            if len(name) > limit:
                return (
                    f"{len(name)} characters in {name[:40]!r}..., over the limit of {limit} (max_id_length)"
                )
        return None

    async def on_heartbeat(self, message: Message) -> None:
        heartbeat = self.outlet.decode(message, Heartbeat, _HEARTBEATS)
        if heartbeat is None:
            return
        problem = self._over_limits(heartbeat.agent_id, heartbeat.status)
        if problem is not None:
            self.outlet.reject(_HEARTBEATS, f"heartbeat rejected: {problem}")
            return
        if self.dispatcher.is_local(heartbeat.agent_id):
            return
        if heartbeat.status == "offline":
            self.directory.mark_offline(heartbeat.agent_id)
            return
        if self.directory.get(heartbeat.agent_id) is None:
            # Heard of only now, by a heartbeat: its announcement went by before we listened
            # (or while NATS was away). Ask for announcements, at most once per interval.
            now = time.monotonic()
            if now - self.discovered_at >= self.heartbeat_interval:
                self.outlet.later(self.discover)
        self.directory.on_heartbeat(heartbeat)

    async def discover(self) -> None:
        self.discovered_at = time.monotonic()
        await self.outlet.publish(subjects.DISCOVER, DiscoveryRequest(requester=self.node))

    async def on_discover(self, message: Message) -> None:
        request = self.outlet.decode(message, DiscoveryRequest)
        if request is None or request.requester == self.node:
            return
        # Announcements go to every listener, so one answer serves every request made before
        # it: within the interval, requests wait for the next answer instead of each getting one.
        wait = self.answered_at + self.limits.discover_interval - time.monotonic()
        if wait <= 0 and self._discover_answer is None:
            await self._answer_discovery()
            return
        self.discover_requests_deferred += 1
        if self._discover_answer is None:
            loop = asyncio.get_running_loop()
            self._discover_answer = loop.call_later(max(wait, 0.0), self._answer_discovery_later)

    def _answer_discovery_later(self) -> None:
        self._discover_answer = None
        self.outlet.later(self._answer_discovery)

    async def _answer_discovery(self) -> None:
        self.answered_at = time.monotonic()
        for announcement in list(self.announcements.values()):
            await self.outlet.publish(subjects.ANNOUNCE, announcement)


def _described_only(announcement: AgentAnnouncement) -> AgentAnnouncement:
    """``announcement`` keeping the schemas of the capabilities it lists only (a schema of a
    capability the agent does not offer would become a tool nobody answers)."""
    schemas = announcement.capability_schemas
    if not schemas or schemas.keys() <= set(announcement.capabilities):
        return announcement
    offered = set(announcement.capabilities)
    kept = {name: schema for name, schema in schemas.items() if name in offered}
    return msgspec.structs.replace(announcement, capability_schemas=kept)
