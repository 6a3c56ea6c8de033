"""SessionHost: what an MCP session needs from the gateway it belongs to.

A :class:`~flockrt.mcp.session.Session` depends on this Protocol, not on the
:class:`~flockrt.mcp.gateway.Gateway` (which satisfies it structurally), so a session can be
read, and tested, knowing only these few things: the flock and actor system it serves, the
limits it enforces, the outside agents' supervisor and the ids they claim, and the few services
the gateway offers its sessions (resource subscriptions, owned clean-up tasks, flush, broadcast).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from flockrt.actors.ref import ActorRef
    from flockrt.actors.system import ActorSystem
    from flockrt.config import McpConfig
    from flockrt.flock.api import FlockAPI
    from flockrt.mcp.capabilities import CapabilityTools
    from flockrt.mcp.session import Session

__all__ = ["SessionHost"]


class SessionHost(Protocol):
    """The gateway, as its sessions see it."""

    @property
    def config(self) -> McpConfig:
        """The ``[mcp]`` section: default tool timeout (ms), rate limits."""
        ...

    @property
    def flock(self) -> FlockAPI:
        """The flock the tools act on."""
        ...

    @property
    def system(self) -> ActorSystem:
        """The actor system of this process (its tree is a resource and a tool)."""
        ...

    @property
    def supervisor(self) -> ActorRef[Any]:
        """The DynamicSupervisor the outside agents of sessions run under."""
        ...

    @property
    def claimed(self) -> set[str]:
        """Agent ids of the outside agents of open sessions (announced or being announced):
        a session adds its agent's id before the first await and removes it when it stops."""
        ...

    @property
    def max_inflight(self) -> int:
        """Requests one session may have running at once."""
        ...

    @property
    def progress_interval(self) -> float:
        """Seconds between progress notifications of a long tool call."""
        ...

    @property
    def tool_listing(self) -> list[dict[str, Any]]:
        """The ``tools/list`` answer: the flock's tools and a tool per capability."""
        ...

    @property
    def capability_tools(self) -> CapabilityTools:
        """The tools that stand for the flock's capabilities."""
        ...

    def own(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run clean-up that must finish in a task the host awaits when it closes."""
        ...

    async def flush(self) -> None:
        """Make what the flock queued to send (an agent's announcement) go out now."""
        ...

    async def broadcast(self, type: str, message: Any, data: Any) -> None:
        """Tell every agent of the flock."""
        ...

    def subscribe(self, session: Session, uri: str) -> None:
        """Push ``notifications/resources/updated`` for ``uri`` to ``session`` from now on."""
        ...

    def unsubscribe(self, session: Session, uri: str) -> None:
        """Stop what :meth:`subscribe` started (nothing if it was not subscribed)."""
        ...

    def forget(self, session: Session) -> None:
        """A closed session leaves the host's registry."""
        ...
