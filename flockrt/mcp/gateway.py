"""Gateway: the MCP server's state shared by every session.

It owns the sessions, the supervisor of outside agents (a DynamicSupervisor named
``mcp-agents``, a top-level actor of the flock's system), the resource subscriptions (fed by the
directory's change notifications) and the authenticator. The transports in
:mod:`flockrt.mcp.transport` turn requests into sessions and messages; :mod:`flockrt.web` mounts
them on the aiohttp app.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import WSCloseCode, web

from flockrt.actors.ref import ActorRef
from flockrt.actors.tasks import TaskOwner
from flockrt.config import McpConfig, is_loopback
from flockrt.flock.api import FlockAPI
from flockrt.flock.directory import AgentInfo
from flockrt.mcp.agent import OutsideAgent
from flockrt.mcp.auth import Authenticator, allowed_hosts, check_bind
from flockrt.mcp.session import Session
from flockrt.mcp.tools import TOOLS
from flockrt.supervisor.spec import ChildSpec
from flockrt.supervisor.supervisor import DynamicSupervisor

__all__ = ["Gateway"]

log = logging.getLogger("flockrt.mcp")

_UPDATED = "notifications/resources/updated"


class Gateway:
    """The MCP gateway of one flock.

    Args:
        config: The ``[mcp]`` section.
        flock: The flock it serves (in-process, or over NATS: any implementation of the
            Flock interface).
        progress_interval: Seconds between progress notifications of a long tool call.
        session_idle_timeout: Seconds a Streamable HTTP session may go without a request (and
            without a server stream open) before it is ended, with its outside agent. A
            WebSocket session ends with its connection instead.
        max_sessions: Sessions held at once; more get HTTP 503 (a flood of ``initialize``
            requests must not exhaust the process).
        keepalive_interval: Seconds between SSE comments on an idle Streamable HTTP server
            stream (GET), which find a client that vanished.
        init_timeout: Seconds a WebSocket connection may go without initializing its session
            before it is closed (1008).
        max_inflight: Requests of one session running at once; more are refused with -32000
            (HTTP 429).

    Raises:
        GatewayConfigError: the config would expose an unauthenticated gateway beyond loopback.
    """

    def __init__(
        self,
        config: McpConfig,
        flock: FlockAPI,
        *,
        progress_interval: float = 1.0,
        session_idle_timeout: float = 600.0,
        max_sessions: int = 10_000,
        keepalive_interval: float = 15.0,
        init_timeout: float = 10.0,
        max_inflight: int = 64,
    ) -> None:
        check_bind(config)
        self.config = config
        self.flock = flock
        self.system = flock.system
        """The actor system of this process: the outside agents' supervisor runs in it, and its
        tree is the ``flock://tree`` resource."""
        self.progress_interval = progress_interval
        self.session_idle_timeout = session_idle_timeout
        self.max_sessions = max_sessions
        self.keepalive_interval = keepalive_interval
        self.init_timeout = init_timeout
        self.max_inflight = max_inflight
        self._sweeper: asyncio.TimerHandle | None = None
        self.auth = Authenticator(config.auth)
        self.loopback = is_loopback(config.host)
        """Whether the gateway is bound to loopback: then the Host header must name it."""
        self.allowed_hosts = allowed_hosts(config.host, config.allowed_origins)
        """Host names that reach the gateway (the Host check, and Origins on them are its own)."""
        self.sessions: dict[str, Session] = {}
        self.claimed: set[str] = set()
        """Agent ids of the outside agents of open sessions (announced or being announced)."""
        self.tool_listing = [tool.listing() for tool in TOOLS.values()]
        self._supervisor: ActorRef[Any] | None = None
        self._subscribers: dict[str, set[Session]] = {}
        self._unsubscribe_directory: Callable[[], None] | None = None
        self._closing = TaskOwner("MCP gateway", log)
        self.websockets: set[web.WebSocketResponse] = set()
        """Open WebSocket connections, closed with 1001 (going away) when the gateway stops."""

    @property
    def supervisor(self) -> ActorRef[Any]:
        """The supervisor of the outside agents."""
        if self._supervisor is None:
            raise RuntimeError("the gateway is not started")
        return self._supervisor

    async def start(self) -> None:
        """Start the outside agents' supervisor and follow the directory for subscriptions."""
        template = ChildSpec(id="outside-agent", factory=OutsideAgent, restart="temporary", shutdown=2.0)
        self._supervisor = await self.system.spawn(DynamicSupervisor, template, name="mcp-agents")
        self._unsubscribe_directory = self.flock.directory.subscribe(self._directory_changed)
        self._schedule_sweep()

    async def close(self, drain: float = 0.0) -> None:
        """End every session (their agents go offline) and stop the supervisor. Idempotent.

        Args:
            drain: Seconds to let the requests in flight finish first (a graceful stop);
                what still runs after them is cancelled with its session.
        """
        inflight = [task for session in self.sessions.values() for task in session.inflight.values()]
        if inflight and drain > 0:
            _, late = await asyncio.wait(inflight, timeout=drain)
            if late:
                log.warning("%d MCP requests still running after %g s are cancelled", len(late), drain)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._unsubscribe_directory is not None:
            self._unsubscribe_directory()
            self._unsubscribe_directory = None
        for ws in list(self.websockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway stopping")
        for session in list(self.sessions.values()):
            await session.close()
        await self._closing.wait(None)
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor.is_alive:
            await supervisor.stop()

    # ------------------------------------------------------------------ sessions

    def check_capacity(self) -> None:
        """Refuse a new session when ``max_sessions`` are open.

        Raises:
            web.HTTPServiceUnavailable: the gateway is full.
        """
        if len(self.sessions) >= self.max_sessions:
            raise web.HTTPServiceUnavailable(
                text=f"the gateway holds its maximum of {self.max_sessions} sessions\n",
                headers={"Retry-After": "5"},
            )

    def open_session(self, session: Session) -> Session:
        """Register a new session."""
        self.sessions[session.id] = session
        return session

    def forget(self, session: Session) -> None:
        """A closed session leaves the registry."""
        self.sessions.pop(session.id, None)

    def close_later(self, session: Session) -> None:
        """Close ``session`` in a task the gateway owns (from code that cannot await)."""
        self.own(session.close())

    def own(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``work`` (clean-up that must finish) in a task the gateway owns and awaits when
        it closes."""
        return self._closing.spawn(work)

    def expire_idle(self, now: float | None = None) -> int:
        """End the Streamable HTTP sessions idle for longer than ``session_idle_timeout``.

        A client that vanished without DELETE would otherwise keep its session, and its outside
        agent online, forever. Returns how many sessions are being ended.
        """
        now = time.monotonic() if now is None else now
        idle = [
            session
            for session in self.sessions.values()
            if session.transport == "http"
            and not session.streaming
            and not session.inflight
            and now - session.last_active > self.session_idle_timeout
        ]
        for session in idle:
            log.info("session %s idle for %.0f s: ended", session.id, now - session.last_active)
            self.close_later(session)
        return len(idle)

    def _schedule_sweep(self) -> None:
        interval = max(self.session_idle_timeout / 4, 1.0)
        self._sweeper = asyncio.get_running_loop().call_later(interval, self._sweep)

    def _sweep(self) -> None:
        self.expire_idle()
        self._schedule_sweep()

    # ------------------------------------------------------------------ flock helpers

    async def flush(self) -> None:
        """Make what the flock queued for NATS (an outside agent's announcement) go out now."""
        await self.flock.flush()

    async def broadcast(self, type: str, message: Any, data: Any) -> None:
        """A broadcast to every agent of the flock (every process, over NATS)."""
        await self.flock.broadcast(type, message, data)

    # ------------------------------------------------------------------ resource subscriptions

    def subscribe(self, session: Session, uri: str) -> None:
        self._subscribers.setdefault(uri, set()).add(session)

    def unsubscribe(self, session: Session, uri: str) -> None:
        sessions = self._subscribers.get(uri)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._subscribers[uri]

    def _directory_changed(self, agent_id: str, info: AgentInfo | None) -> None:
        """A change in the directory: tell the sessions subscribed to what it touches.

        The tree resource changes when an agent of this process starts or stops, which the
        directory reports as a change of an agent of this node.
        """
        if not self._subscribers:
            return
        uris = ["flock://agents", f"flock://agents/{agent_id}"]
        if info is None or info.node == self.flock.node:
            uris.append("flock://tree")
        for uri in uris:
            for session in self._subscribers.get(uri, ()):
                session.push(_UPDATED, {"uri": uri})
