"""This node's state, sampled once a second, and the latest state of every other node.

:class:`NodeView` is what the live view knows of the flock's processes (the agents come from the
directory, see :mod:`flockrt.view.feed`). Every ``interval`` it samples the work this node
finished (tasks and capability requests, from the flock's :class:`~flockrt.flock.stats.WorkStats`)
into a rate and a mean latency, keeping ``history`` samples, and takes its supervision tree.
Over NATS it publishes the result as a :class:`~flockrt.wire.state.NodeState` on
``flockrt.node.<node>.state`` (see :mod:`flockrt.bus.nodestate`) whenever the tree or the
failures changed, and at least every ``period`` seconds; it keeps what the other nodes publish.

An actor failure (the kernel's ``failure_listener``) is recorded with its reason and brings the
next sample forward (to ``nudge`` seconds later), so that the failure and the restart that
follows it reach the page within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import msgspec

from flockrt.actors.system import ActorSystem
from flockrt.actors.tasks import TaskOwner
from flockrt.flock.api import FlockAPI
from flockrt.flock.stats import WorkStats
from flockrt.wire.schema import utcnow
from flockrt.wire.state import FailureReport, NodeState, TreeNode

__all__ = ["MAX_TREE_ACTORS", "NodeView"]

log = logging.getLogger("flockrt.view")

MAX_TREE_ACTORS: Final = 10_000
"""Above this many live actors a node's tree is left out of its state (``treeTruncated`` says
how many actors): walking a tree of a million actors every second would stall the node."""

_REASON_CHARS: Final = 300

Publish = Callable[[NodeState], None]


class NodeView:
    """This node's sampled state and the latest state heard from each other node.

    Args:
        system: This node's actor system (its tree, its counters, its failures).
        flock: This node's flock (its name and its work statistics).
        interval: Seconds between samples.
        period: Publish at least this often (seconds), even when nothing changed.
        history: Samples kept (``interval * history`` seconds of throughput and latency).
        max_failures: Recent failures kept.
        stale_after: A peer whose last state is older than this (seconds) is shown as stale,
            and one older than ten times this is forgotten (default ``3 * period``).
        clock: Monotonic seconds (injected by tests).
        nudge: Seconds after a failure before the tree is taken again (the restart that
            follows a failure lands within it, so both go out in one state).
    """

    def __init__(
        self,
        system: ActorSystem,
        flock: FlockAPI,
        *,
        interval: float = 1.0,
        period: float = 5.0,
        history: int = 300,
        max_failures: int = 20,
        stale_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        nudge: float = 0.2,
    ) -> None:
        self.system = system
        self.flock = flock
        self.node = flock.node
        self.interval = interval
        self.period = period
        self.nudge = nudge
        self.stale_after = stale_after if stale_after is not None else 3 * period
        self._clock = clock
        self._rate: deque[float] = deque(maxlen=history)
        self._latency: deque[float | None] = deque(maxlen=history)
        self._failures: deque[FailureReport] = deque(maxlen=max_failures)
        self._last_count = 0
        self._last_seconds = 0.0
        self._stats: WorkStats | None = None
        self._sampled_at = -float("inf")
        self.state: NodeState | None = None
        """This node's latest state."""
        self.peers: dict[str, tuple[NodeState, float]] = {}
        """The latest state of each other node, with when it arrived (on ``clock``)."""
        self._published_at = -float("inf")
        self._published: tuple[TreeNode, int] | None = None
        self._publish: Publish | None = None
        self._listeners: list[Callable[[], None]] = []
        self._wake = asyncio.Event()
        self._tasks = TaskOwner(f"live view of {self.node}", log)

    # ------------------------------------------------------------------ lifecycle

    def publish_to(self, publish: Publish) -> None:
        """Send this node's states to ``publish`` (over NATS: :meth:`NodeStates.publish`)."""
        self._publish = publish

    async def start(self) -> None:
        """Hook into the actor system's failures and the flock's work statistics; start sampling."""
        if self.flock.work_stats is None:
            self.flock.work_stats = WorkStats()  # the metrics layer shares it when it is on
        self._stats = self.flock.work_stats
        self._last_count, self._last_seconds = self._totals()
        self.system.failure_listener = self._failed
        self._sampled_at = self._clock()
        self.refresh()
        self._tasks.spawn(self._run(), name=f"live view of {self.node}")

    async def close(self) -> None:
        """Stop sampling and let go of the actor system's failures. Idempotent."""
        if self.system.failure_listener == self._failed:
            self.system.failure_listener = None
        await self._tasks.close()

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after each sample and each state heard from another node."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    # ------------------------------------------------------------------ feeding

    def on_peer_state(self, state: NodeState) -> None:
        """A state another node published."""
        self.peers[state.node] = (state, self._clock())
        self._notify()

    def _failed(self, path: str, error: BaseException) -> None:
        reason = str(error) or type(error).__name__
        if len(reason) > _REASON_CHARS:
            reason = reason[: _REASON_CHARS - 1] + "…"
        report = FailureReport(path=path, error=type(error).__name__, reason=reason, timestamp=utcnow())
        self._failures.append(report)
        if not self._wake.is_set():
            with contextlib.suppress(RuntimeError):  # no loop running: the next sample shows it
                asyncio.get_running_loop().call_later(self.nudge, self._wake.set)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + self.interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, due - loop.time()))
            self._wake.clear()
            now = loop.time()
            if now >= due:  # a regular sample (a nudge only takes the tree and failures again)
                self.sample_work()
                due = max(due + self.interval, now)
            self.refresh()

    # ------------------------------------------------------------------ sampling

    def _totals(self) -> tuple[int, float]:
        """Work finished so far and the seconds it took in all (from the work statistics)."""
        stats = self._stats
        if stats is None:
            return 0, 0.0
        count = sum(stats.outcomes.values())
        seconds = sum(histogram.sum for histogram in stats.durations.values())
        return count, seconds

    def sample_work(self) -> None:
        """Append one sample of throughput and mean latency (since the previous sample)."""
        now = self._clock()
        count, seconds = self._totals()
        done, spent = count - self._last_count, seconds - self._last_seconds
        elapsed = now - self._sampled_at if self._sampled_at > -float("inf") else self.interval
        self._last_count, self._last_seconds, self._sampled_at = count, seconds, now
        self._rate.append(round(done / max(elapsed, 1e-3), 2))
        self._latency.append(round(spent / done * 1000, 2) if done else None)

    def refresh(self) -> NodeState:
        """Take the tree, counters and failures now; publish the state if it changed or is due."""
        now = self._clock()
        stats = self.system.stats()
        if stats.live <= MAX_TREE_ACTORS:
            tree, truncated = compact(self.system.snapshot()), 0
        else:
            tree, truncated = TreeNode(name="/"), stats.live
        state = NodeState(
            node=self.node,
            timestamp=utcnow(),
            interval=self.interval,
            rate=list(self._rate),
            latency=list(self._latency),
            live=stats.live,
            restarts=stats.restarts,
            failures=stats.failures,
            tree=tree,
            recent=list(self._failures),
            tree_truncated=truncated,
        )
        self.state = state
        self._forget_silent_peers(now)
        changed = self._published != (state.tree, state.failures)
        if self._publish is not None and (changed or now - self._published_at >= self.period):
            self._published, self._published_at = (state.tree, state.failures), now
            self._publish(state)
        self._notify()
        return state

    def _forget_silent_peers(self, now: float) -> None:
        forget = [name for name, (_, seen) in self.peers.items() if now - seen > 10 * self.stale_after]
        for name in forget:
            del self.peers[name]
            log.info("live view: node %s forgotten (no state for %g s)", name, 10 * self.stale_after)

    def stale(self, name: str) -> bool:
        """Whether another node's last state is older than ``stale_after``."""
        entry = self.peers.get(name)
        return entry is not None and self._clock() - entry[1] > self.stale_after

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # one broken reader must not stop the sampling of the others
                log.exception("live view listener failed")


def compact(snapshot: dict[str, Any]) -> TreeNode:
    """An :meth:`ActorSystem.snapshot` tree as :class:`TreeNode`\\ s (what the page draws)."""
    supervisor = snapshot.get("supervisor")
    return TreeNode(
        name=str(snapshot.get("id") or snapshot.get("name") or "?"),
        actor=snapshot.get("actor"),
        state=str(snapshot.get("state") or "running"),
        restarts=int(snapshot.get("restarts") or 0),
        strategy=supervisor.get("strategy") if isinstance(supervisor, dict) else None,
        children=[compact(child) for child in snapshot.get("children") or ()],
    )


def to_json(state: NodeState) -> dict[str, Any]:
    """A state as the feed's JSON object (camelCase keys)."""
    result: dict[str, Any] = msgspec.to_builtins(state)
    return result
