"""A node's own picture of itself, on ``flockrt.node.<node>.state`` (a flockrt addition).

Each flockrt process of a flock publishes a :class:`NodeState` now and then (and soon after its
supervision tree changes or an actor fails), so that the live view of any gateway shows every
node: its supervision tree, its throughput and latency over the last minutes, its restarts and
its recent failures. The agents themselves are not in it: every process already knows them from
``agent.announce`` and the heartbeats.

Field names on the wire are camelCase, as in :mod:`flockrt.wire.schema`; add fields with
defaults at the end, never reorder or retype one.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from flockrt.wire.subjects import check_token

__all__ = ["FailureReport", "NodeState", "TreeNode", "node_state_subject"]

NODE_STATES = "flockrt.node.*.state"
"""The wildcard a live view subscribes to: every node's state."""


def node_state_subject(node: str) -> str:
    """``flockrt.node.<node>.state``: where ``node`` publishes its :class:`NodeState`."""
    return f"flockrt.node.{check_token('node name', node)}.state"


class TreeNode(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """One actor of a supervision tree, compact: defaults are left out on the wire.

    Attributes:
        name: The actor's name (an agent's is its id), unique among its siblings.
        actor: Its class name (None: a child waiting to be restarted).
        state: ``running``, ``restarting``, ``terminated``, ``suspended``, ``stopping``...
        restarts: How many times its supervisor restarted it.
        strategy: A supervisor's strategy (``one_for_one``...), else None.
        children: Its children, in start order.
    """

    name: str
    actor: str | None = None
    state: str = "running"
    restarts: int = 0
    strategy: str | None = None
    children: list[TreeNode] = msgspec.field(default_factory=list)


class FailureReport(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """An actor that failed: where, why and when.

    Attributes:
        path: The actor's path (``/root/echo``).
        error: The exception's class name.
        reason: The exception's message (cut to a few hundred characters).
        timestamp: When it failed (UTC).
    """

    path: str
    error: str
    reason: str
    timestamp: datetime


class NodeState(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """What one node says of itself.

    Attributes:
        node: The node's name (``[runtime] name``).
        timestamp: When the state was taken (UTC, the sender's clock).
        interval: Seconds between two samples of ``rate`` and ``latency``.
        rate: Work finished per second (tasks and capability requests), oldest sample first.
        latency: Mean milliseconds from submission to outcome per sample (None: nothing finished).
        live: Actors running in the node.
        restarts: Restarts its supervisors made since it started.
        failures: Actor failures since it started.
        tree: Its supervision tree, from the root actor down.
        recent: Its latest failures, newest last.
        tree_truncated: Actors left out of ``tree`` to keep the message under the server's
            ``max_payload``.
    """

    node: str
    timestamp: datetime
    interval: float
    rate: list[float]
    latency: list[float | None]
    live: int
    restarts: int
    failures: int
    tree: TreeNode
    recent: list[FailureReport]
    tree_truncated: int = 0
