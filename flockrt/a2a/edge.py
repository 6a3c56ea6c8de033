"""A2AEdge: the A2A part of a running flock, started and stopped as one.

With a gateway (``[mcp]``), the flock is an A2A server on the gateway's app (:meth:`A2AEdge.serve`);
without one, only the ``[[a2a.remote]]`` agents join (nothing listens for A2A). The runtime
starts the edge after the agents and before the listener, and stops it first.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from flockrt.a2a.remote import Remotes
from flockrt.a2a.server import A2AServer
from flockrt.config import A2aConfig
from flockrt.flock.api import FlockAPI
from flockrt.mcp.gateway import Gateway

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["A2AEdge"]

log = logging.getLogger("flockrt.a2a")


class A2AEdge:
    """The flock's A2A server (once :meth:`serve` puts it on the gateway's app) and its remote
    A2A agents.

    Args:
        config: ``[a2a]``.
        flock: The flock.
        name: The card's name (``[runtime] name``).
    """

    def __init__(self, config: A2aConfig, flock: FlockAPI, name: str) -> None:
        self.config = config
        self.name = name
        self.server: A2AServer | None = None
        self.remotes = Remotes(config, flock.system)

    async def start(self) -> None:
        """Bring the remote agents online (those whose card can be read now)."""
        await self.remotes.start()

    def serve(self, gateway: Gateway, app: web.Application) -> None:
        """Serve the card and the JSON-RPC endpoint on ``app``, the gateway's (before it runs):
        with the gateway's auth, limits and view of the flock's capabilities."""
        self.server = A2AServer(self.config, gateway, self.name)
        self.server.mount(app)
        log.info("A2A server on the gateway: the card at %s", "/.well-known/agent-card.json")

    async def close(self) -> None:
        """Stop the server's tasks and the remote agents. Idempotent."""
        if self.server is not None:
            await self.server.close()
        await self.remotes.close()
