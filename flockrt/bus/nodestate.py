"""Node states on NATS: this node's :class:`~flockrt.wire.state.NodeState` out on
``flockrt.node.<node>.state``, every other node's in from ``flockrt.node.*.state``.

The live view (:mod:`flockrt.view`) decides what a state holds and when it goes out; this module
only carries it. A state over the server's ``max_payload`` loses the deepest parts of its tree
until it fits (the count of actors left out travels in ``treeTruncated``); a state that arrives
malformed is counted under ``flockrt.node.*.state`` in the flock's invalid messages and logged,
like every other rejected message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from flockrt.bus.connection import Message, Subscription
from flockrt.bus.outlet import Outlet
from flockrt.errors import BusUnavailable
from flockrt.wire.state import NODE_STATES, NodeState, TreeNode, node_state_subject

__all__ = ["NodeStates"]

log = logging.getLogger("flockrt.view")


class NodeStates:
    """Publishes this node's state and hears the other nodes' states.

    Args:
        outlet: The NATS flock's outlet (its connection, codec and invalid-message counter).
        node: This node's name (its own states, echoed back by NATS, are ignored).
        on_state: Called with each state another node publishes.
    """

    def __init__(self, outlet: Outlet, node: str, on_state: Callable[[NodeState], None]) -> None:
        self._outlet = outlet
        self.node = node
        self._subject = node_state_subject_or_none(node)
        if self._subject is None:
            log.warning(
                "node name %r cannot be part of a NATS subject (no spaces, dots, '*' or '>'): its state "
                "is not published, so other nodes' live views do not show its tree; rename [runtime] name",
                node,
            )
        self._on_state = on_state
        self._subscription: Subscription | None = None
        self.published = 0
        """States published."""
        self.truncated = 0
        """States whose tree was cut to fit the server's max_payload."""

    async def start(self) -> None:
        """Subscribe to every node's state."""
        self._subscription = await self._outlet.bus.subscribe(NODE_STATES, self._on_message)

    async def close(self) -> None:
        """Stop hearing states; idempotent."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.unsubscribe()

    def publish(self, state: NodeState) -> None:
        """Publish ``state`` (without waiting; while NATS is away it is buffered like any publish)."""
        if self._subject is None:
            return
        codec, limit = self._outlet.codec, self._outlet.bus.max_payload
        data = codec.encode(state)
        if len(data) > limit:
            state, data = self._fit(state, limit)
        try:
            self._outlet.bus.publish_nowait(self._subject, data)
        except BusUnavailable as exc:  # closing: the last state is of no use to anyone
            log.debug("node state not published: %s", exc)
            return
        self.published += 1

    def _fit(self, state: NodeState, limit: int) -> tuple[NodeState, bytes]:
        """``state`` with its tree cut, level by level from the bottom, until it fits."""
        depth = _depth(state.tree)
        while True:
            depth -= 1
            tree, dropped = _cut(state.tree, depth)
            fitted = msgspec.structs.replace(state, tree=tree, tree_truncated=dropped)
            data = self._outlet.codec.encode(fitted)
            if len(data) <= limit or depth <= 0:
                break
        self.truncated += 1
        log.warning(
            "node state of %s is over the server's max_payload (%d bytes): %d actors left out of its tree",
            self.node,
            limit,
            dropped,
        )
        return fitted, data

    def _on_message(self, message: Message) -> None:
        state = self._outlet.decode(message, NodeState, counted_as=NODE_STATES)
        if state is None or state.node == self.node:
            return
        if message.subject != node_state_subject_or_none(state.node):
            self._outlet.reject(NODE_STATES, f"a node state of {state.node!r} on {message.subject}")
            return
        self._on_state(state)


def node_state_subject_or_none(node: str) -> str | None:
    """The subject ``node`` publishes on, or None when its name cannot be a subject token."""
    try:
        return node_state_subject(node)
    except ValueError:
        return None


def _depth(tree: TreeNode) -> int:
    return 1 + max((_depth(child) for child in tree.children), default=0)


def _size(tree: TreeNode) -> int:
    return 1 + sum(_size(child) for child in tree.children)


def _cut(tree: TreeNode, depth: int) -> tuple[TreeNode, int]:
    """``tree`` without the actors below ``depth`` levels, and how many were left out."""
    if depth <= 1:
        dropped = _size(tree) - 1
        return (msgspec.structs.replace(tree, children=[]) if dropped else tree), dropped
    children, dropped = [], 0
    for child in tree.children:
        kept, lost = _cut(child, depth - 1)
        children.append(kept)
        dropped += lost
    return msgspec.structs.replace(tree, children=children), dropped
