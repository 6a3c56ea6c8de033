"""LiveView: this node's part of the live view, as a running flock holds it."""

from __future__ import annotations

from flockrt.actors.system import ActorSystem
from flockrt.bus.flock import NatsFlock
from flockrt.bus.nodestate import NodeStates
from flockrt.flock.api import FlockAPI
from flockrt.view.feed import Feed
from flockrt.view.node import NodeView

__all__ = ["LiveView"]


class LiveView:
    """This node's part of the live view: sampled, published over NATS, served as a feed.

    Args:
        system: This node's actor system.
        flock: This node's flock; over NATS (a NatsFlock) its state goes out on
            ``flockrt.node.<node>.state`` and the other nodes' come in.
    """

    def __init__(self, system: ActorSystem, flock: FlockAPI) -> None:
        self.node = NodeView(system, flock)
        self.feed = Feed(self.node, flock.directory)
        self.states: NodeStates | None = None
        if isinstance(flock, NatsFlock):
            self.states = NodeStates(flock.outlet, flock.node, self.node.on_peer_state)
            self.node.publish_to(self.states.publish)

    async def start(self) -> None:
        """Hear the other nodes, then start sampling this one."""
        if self.states is not None:
            await self.states.start()
        await self.node.start()
        self.feed.start()

    async def close(self) -> None:
        """End the feed's streams, stop sampling and hearing. Idempotent."""
        self.feed.close()
        await self.node.close()
        if self.states is not None:
            await self.states.close()
