"""The live view's feed: the flock as one JSON snapshot, then patches, over Server-Sent Events.

What it carries (docs/live-view.md, "The feed"):

- ``agents``: every agent in this process's directory (over NATS, every agent of the flock),
  keyed by id, as :meth:`~flockrt.flock.directory.AgentInfo.to_json` writes them;
- ``nodes``: every node's :class:`~flockrt.wire.state.NodeState` (this one's and those heard
  on ``flockrt.node.*.state``), keyed by name, plus ``stale`` (no state for a while) and
  ``self`` (the node serving the feed).

A stream starts with ``event: snapshot`` (the whole picture) and goes on with ``event: patch``:
``{"agents": {id: agent or null}, "nodes": {name: changed fields or null}}``, where an agent is
replaced whole, a node's fields are merged into what the reader has (a new node comes whole),
and null removes. Patches go out at most every ``min_interval`` seconds, only with what changed
since the last one, so a thousand agents cost a reader what changed, not a thousand rows per
event. A reader that falls ``max_queued`` messages behind is given a fresh snapshot instead of
the patches it missed (counted in :attr:`Feed.resyncs`, logged).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec

from flockrt.flock.directory import AgentInfo, Directory
from flockrt.view.node import NodeView, to_json
from flockrt.wire.schema import utcnow
from flockrt.wire.state import NodeState

__all__ = ["Feed", "FeedStream"]

log = logging.getLogger("flockrt.view")

VERSION: Final = 1
"""The feed's format version (``version`` in every snapshot)."""

_encode = msgspec.json.Encoder().encode
_CLOSED: Final = b""


class FeedStream:
    """One reader's queue of encoded SSE events, taken in order with :meth:`next`."""

    def __init__(self, feed: Feed, max_queued: int) -> None:
        self._feed = feed
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._max_queued = max_queued

    def put(self, event: bytes) -> None:
        if self._queue.qsize() >= self._max_queued:  # behind: what it missed comes as a snapshot
            while not self._queue.empty():
                self._queue.get_nowait()
            self._feed.resyncs += 1
            log.info("live view: a reader fell %d events behind; it gets a new snapshot", self._max_queued)
            event = self._feed.event("snapshot", self._feed.snapshot())
        self._queue.put_nowait(event)

    def close(self) -> None:
        """End the stream: :meth:`next` returns None once the events before are read."""
        self._queue.put_nowait(_CLOSED)

    async def next(self, timeout: float) -> bytes | None:
        """The next event; an SSE comment after ``timeout`` seconds of silence (a reader that
        vanished is found when writing it fails); None once the stream is closed."""
        try:
            event = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return b": keepalive\n\n"
        if event == _CLOSED:
            self._feed.streams.discard(self)
            return None
        return event

    def leave(self) -> None:
        """The reader went away: stop queueing for it."""
        self._feed.streams.discard(self)


class Feed:
    """The flock as the live view shows it: a snapshot and patches for each reader.

    Args:
        view: This node's state and the other nodes' (:class:`~flockrt.view.node.NodeView`).
        directory: The agents this process knows of.
        min_interval: Seconds between two patches at least (changes in between are merged).
        max_queued: Events a reader may fall behind before it is given a snapshot instead.
    """

    def __init__(
        self, view: NodeView, directory: Directory, *, min_interval: float = 0.5, max_queued: int = 32
    ) -> None:
        self.view = view
        self.directory = directory
        self.min_interval = min_interval
        self.max_queued = max_queued
        self.streams: set[FeedStream] = set()
        self.resyncs = 0
        """Readers that fell behind and were sent a snapshot instead of patches."""
        self.patches = 0
        """Patches sent (to all readers at once: one per change round)."""
        self._agents: dict[str, AgentInfo] = {}
        self._agent_json: dict[str, dict[str, Any]] = {}
        self._nodes: dict[str, dict[str, Any]] = {}
        self._node_states: dict[str, tuple[NodeState, bool]] = {}
        self._due: asyncio.TimerHandle | None = None
        self._last_patch = -float("inf")
        self._unsubscribe: list[Callable[[], None]] = []

    def start(self) -> None:
        """Listen to the node view and the directory (patches go out only while someone reads)."""
        self._unsubscribe = [
            self.view.subscribe(self._changed),
            self.directory.subscribe(lambda agent_id, info: self._changed()),
        ]

    def close(self) -> None:
        """End every stream and stop listening. Idempotent."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        if self._due is not None:
            self._due.cancel()
            self._due = None
        for stream in list(self.streams):
            stream.close()

    # ------------------------------------------------------------------ readers

    def open(self) -> FeedStream:
        """A new reader's stream: a snapshot first, then the patches."""
        if self._due is not None:
            self._due.cancel()
        self._tick()  # bring the others up to now, so this snapshot and the next patch agree
        stream = FeedStream(self, self.max_queued)
        stream.put(self.event("snapshot", self.snapshot()))
        self.streams.add(stream)
        return stream

    def snapshot(self) -> dict[str, Any]:
        """The whole picture, as of the last patch (or now, with no reader)."""
        if not self.streams:
            self._diff()
        return {
            "version": VERSION,
            "node": self.view.node,
            "time": _now(),
            "agents": self._agent_json,
            "nodes": self._nodes,
        }

    @staticmethod
    def event(name: str, data: dict[str, Any]) -> bytes:
        """One Server-Sent Event: ``event: <name>`` and the JSON on one ``data:`` line."""
        return b"event: " + name.encode() + b"\ndata: " + _encode(data) + b"\n\n"

    # ------------------------------------------------------------------ changes

    def _changed(self) -> None:
        if not self.streams or self._due is not None:
            return
        loop = asyncio.get_running_loop()
        wait = max(0.0, self._last_patch + self.min_interval - time.monotonic())
        self._due = loop.call_later(wait, self._tick)

    def _tick(self) -> None:
        self._due = None
        patch = self._diff()
        if patch is None:
            return
        self._last_patch = time.monotonic()
        self.patches += 1
        event = self.event("patch", patch)
        for stream in list(self.streams):
            stream.put(event)

    def _diff(self) -> dict[str, Any] | None:
        """Bring the picture up to now; what changed, as a patch (None: nothing)."""
        agents: dict[str, Any] = {}
        current = {info.id: info for info in self.directory.list("all")}
        for agent_id, info in current.items():
            if self._agents.get(agent_id) is not info:  # snapshots are replaced on every change
                self._agents[agent_id] = info
                self._agent_json[agent_id] = agents[agent_id] = info.to_json()
        for agent_id in [agent_id for agent_id in self._agents if agent_id not in current]:
            del self._agents[agent_id], self._agent_json[agent_id]
            agents[agent_id] = None
        nodes: dict[str, Any] = {}
        states = self._states()
        for name, (state, stale) in states.items():
            if self._node_states.get(name) == (state, stale):
                continue
            self._node_states[name] = (state, stale)
            fresh = to_json(state)
            fresh.update(stale=stale, self=name == self.view.node)
            old = self._nodes.get(name)
            self._nodes[name] = fresh
            nodes[name] = fresh if old is None else {k: v for k, v in fresh.items() if old.get(k) != v}
        for name in [name for name in self._nodes if name not in states]:
            del self._nodes[name], self._node_states[name]
            nodes[name] = None
        if not agents and not nodes:
            return None
        return {"agents": agents, "nodes": nodes}

    def _states(self) -> dict[str, tuple[NodeState, bool]]:
        view = self.view
        states = {name: (state, view.stale(name)) for name, (state, _) in view.peers.items()}
        if view.state is not None:
            states[view.node] = (view.state, False)
        return states


def _now() -> str:
    return utcnow().isoformat().replace("+00:00", "Z")
