"""Gateway: the MCP server's state shared by every session.

It owns the sessions, the supervisor of outside agents (a DynamicSupervisor named
``mcp-agents``, a top-level actor of the flock's system), the resource subscriptions (fed by the
directory's change notifications) and the authenticator. The transports in
:mod:`flockrt.mcp.transport` turn requests into sessions and messages; :mod:`flockrt.web` mounts
them on the aiohttp app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from aiohttp import WSCloseCode, web

from flockrt.actors.ref import ActorRef
from flockrt.actors.tasks import TaskOwner
from flockrt.config import McpConfig, is_loopback
from flockrt.flock.api import FlockAPI
from flockrt.flock.directory import AgentInfo
from flockrt.mcp.agent import OutsideAgent
from flockrt.mcp.auth import Authenticator, allowed_hosts, check_bind
from flockrt.mcp.capabilities import CapabilityTools
from flockrt.mcp.session import Session
from flockrt.mcp.tools import TOOLS
from flockrt.supervisor.spec import ChildSpec
from flockrt.supervisor.supervisor import DynamicSupervisor

__all__ = ["Gateway"]

log = logging.getLogger("flockrt.mcp")

_UPDATED = "notifications/resources/updated"
_TOOLS_CHANGED = "notifications/tools/list_changed"


class Gateway:
    """The MCP gateway of one flock.

    Args:
        config: The ``[mcp]`` section.
        flock: The flock it serves (in-process, or over NATS: any implementation of the
            Flock interface).
        progress_interval: Seconds between progress notifications of a long tool call.
        keepalive_interval: Seconds between SSE comments on an idle Streamable HTTP server
            stream (GET), which find a client that vanished.

    The limits come from ``config`` (see docs/gateway.md, "Limits") and are attributes a test
    may change on a running gateway: ``max_sessions``, ``max_sessions_per_principal``,
    ``max_inflight``, ``init_timeout``, ``session_idle_timeout``, ``agent_idle_timeout``.

    Raises:
        GatewayConfigError: the config would expose an unauthenticated gateway beyond loopback.
    """

    def __init__(
        self,
        config: McpConfig,
        flock: FlockAPI,
        *,
        progress_interval: float = 1.0,
        keepalive_interval: float = 15.0,
    ) -> None:
        check_bind(config)
        self.config = config
        self.flock = flock
        self.system = flock.system
        """The actor system of this process: the outside agents' supervisor runs in it, and its
        tree is the ``flock://tree`` resource."""
        self.progress_interval = progress_interval
        self.keepalive_interval = keepalive_interval
        self.session_idle_timeout = config.session_idle_timeout
        """Seconds a Streamable HTTP session may go without a request (and without a server
        stream open) before it is ended. A WebSocket session ends with its connection."""
        self.agent_idle_timeout = config.agent_idle_timeout
        """The same for a Streamable HTTP session that carries an outside agent: a client that
        vanished without DELETE must not leave an agent online that nobody answers for."""
        self.max_sessions = config.max_sessions
        self.max_sessions_per_principal = config.max_sessions_per_principal
        self.init_timeout = config.init_timeout
        """Seconds a session may go without initializing (a WebSocket: ``initialize``; a
        Streamable HTTP session: anything after it) before it is closed."""
        self.max_inflight = config.max_inflight
        self._owned: dict[str, set[Session]] = {}
        """The open sessions of each principal (:attr:`Session.owner`)."""
        self._sweeper: asyncio.TimerHandle | None = None
        self.evictions = 0
        """Sessions evicted to make room for new ones."""
        self.auth = Authenticator(config.auth)
        self.loopback = is_loopback(config.host)
        """Whether the gateway is bound to loopback: then the Host header must name it."""
        self.allowed_hosts = allowed_hosts(config.host, config.allowed_origins)
        """Host names that reach the gateway (the Host check, and Origins on them are its own)."""
        self.sessions: dict[str, Session] = {}
        self.claimed: set[str] = set()
        """Agent ids of the outside agents of open sessions (announced or being announced)."""
        self.capability_tools = CapabilityTools(
            flock.directory, flock.node, [tool.listing() for tool in TOOLS.values()]
        )
        """The flock's tools and a tool per capability offered in the flock."""
        self._tools_version = 0
        """The :attr:`CapabilityTools.version` sessions were last told about."""
        self._tools_check: asyncio.Handle | None = None
        self._supervisor: ActorRef[Any] | None = None
        self._subscribers: dict[str, set[Session]] = {}
        self._unsubscribe_directory: Callable[[], None] | None = None
        self._closing = TaskOwner("MCP gateway", log)
        self.websockets: set[web.WebSocketResponse] = set()
        """Open WebSocket connections, closed with 1001 (going away) when the gateway stops."""

    @property
    def tool_listing(self) -> list[dict[str, Any]]:
        """The ``tools/list`` answer: the flock's tools, then one per capability."""
        return self.capability_tools.listing()

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
        self.capability_tools.refresh()
        self._tools_version = self.capability_tools.version
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
        if self._tools_check is not None:
            self._tools_check.cancel()
            self._tools_check = None
        for ws in list(self.websockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway stopping")
        for session in list(self.sessions.values()):
            await session.close()
        await self._closing.wait(None)
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor.is_alive:
            await supervisor.stop()

    # ------------------------------------------------------------------ sessions

    def make_room(self, owner: str) -> None:
        """Make room for a new session of ``owner``, or refuse it.

        A principal holds at most ``max_sessions_per_principal`` sessions and the gateway at
        most ``max_sessions``. Beyond either, the gateway evicts a session that does no work:
        one that never went past ``initialize`` first, else the one idle longest (no request
        in flight, no server stream open; a WebSocket only if it is not initialized). Beyond
        the per-principal cap only that principal's sessions are candidates; beyond the
        gateway's cap, those of the principal holding the most. So one client's flood of
        ``initialize`` costs that client its own sessions and nobody else's.

        Raises:
            web.HTTPTooManyRequests: ``owner`` holds its maximum and every one is busy.
            web.HTTPServiceUnavailable: the gateway is full and no session can be evicted.
        """
        mine = self._owned.get(owner, ())
        if len(mine) >= self.max_sessions_per_principal and not self._evict_one(mine):
            raise web.HTTPTooManyRequests(
                text=f"this client holds its maximum of {self.max_sessions_per_principal} sessions, "
                "all busy; end one (DELETE) or wait\n",
                headers={"Retry-After": "5"},
            )
        if len(self.sessions) >= self.max_sessions:
            largest = max(self._owned.values(), key=len, default=set())
            if not self._evict_one(largest):
                raise web.HTTPServiceUnavailable(
                    text=f"the gateway holds its maximum of {self.max_sessions} sessions\n",
                    headers={"Retry-After": "5"},
                )

    def _evict_one(self, sessions: Iterable[Session]) -> bool:
        candidates = [
            session
            for session in sessions
            if not session.closed
            and not session.inflight
            and not session.streaming
            and (session.transport == "http" or not session.initialized)
        ]
        if not candidates:
            return False
        victim = min(candidates, key=lambda s: (s.initialized, s.agent_id is not None, s.last_active))
        log.info(
            "session %s evicted (%s) to make room for another of %s",
            victim.id,
            "idle" if victim.initialized else "not initialized",
            victim.owner or "a client",
        )
        self.evictions += 1
        self.forget(victim)  # at once: the room is needed now; the close follows
        if victim.evict is not None:
            victim.evict()
        else:
            self.close_later(victim)
        return True

    def open_session(self, session: Session) -> Session:
        """Register a new session (after :meth:`make_room`)."""
        self.sessions[session.id] = session
        self._owned.setdefault(session.owner, set()).add(session)
        return session

    def forget(self, session: Session) -> None:
        """A closed (or evicted) session leaves the registry."""
        self.sessions.pop(session.id, None)
        owned = self._owned.get(session.owner)
        if owned is not None:
            owned.discard(session)
            if not owned:
                del self._owned[session.owner]

    def close_later(self, session: Session) -> None:
        """Close ``session`` in a task the gateway owns (from code that cannot await)."""
        self.own(session.close())

    def own(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``work`` (clean-up that must finish) in a task the gateway owns and awaits when
        it closes."""
        return self._closing.spawn(work)

    def expire_idle(self, now: float | None = None) -> int:
        """End the Streamable HTTP sessions that stopped being used.

        A session with no request in flight and no server stream open ends after
        ``session_idle_timeout`` s without a request; one that carries an outside agent after
        ``agent_idle_timeout`` s (its agent goes offline); one that never went past
        ``initialize`` after ``init_timeout`` s. A client that vanished without DELETE would
        otherwise keep its session, and its outside agent, online. Returns how many sessions
        are being ended.
        """
        now = time.monotonic() if now is None else now
        idle = [
            session
            for session in self.sessions.values()
            if session.transport == "http"
            and not session.streaming
            and not session.inflight
            and now - session.last_active > self._idle_limit(session)
        ]
        for session in idle:
            if session.agent_id is not None:
                log.warning(
                    "agent %s: its HTTP session %s made no request and held no stream for %.0f s: "
                    "ended, the agent is offline",
                    session.agent_id,
                    session.id,
                    now - session.last_active,
                )
            else:
                log.info("session %s idle for %.0f s: ended", session.id, now - session.last_active)
            self.close_later(session)
        return len(idle)

    def _idle_limit(self, session: Session) -> float:
        if session.agent_id is not None:
            return self.agent_idle_timeout
        if not session.initialized:
            return self.init_timeout
        return self.session_idle_timeout

    def _schedule_sweep(self) -> None:
        shortest = min(self.session_idle_timeout, self.agent_idle_timeout, self.init_timeout)
        interval = min(max(shortest / 4, 0.05), 5.0)
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
        directory reports as a change of an agent of this node. The capability tools are looked
        at again soon after (once for a burst of changes).
        """
        self.capability_tools.touch()
        if self._tools_check is None:
            # Fed outside the loop (a test): the next change, or the next tools/list, sees it.
            with contextlib.suppress(RuntimeError):
                self._tools_check = asyncio.get_running_loop().call_soon(self._check_tools)
        if not self._subscribers:
            return
        uris = ["flock://agents", f"flock://agents/{agent_id}"]
        if info is None or info.node == self.flock.node:
            uris.append("flock://tree")
        for uri in uris:
            for session in self._subscribers.get(uri, ()):
                session.push(_UPDATED, {"uri": uri})

    def _check_tools(self) -> None:
        """Tell the initialized sessions when the capability tools changed."""
        self._tools_check = None
        self.capability_tools.refresh()
        if self.capability_tools.version == self._tools_version:
            return
        self._tools_version = self.capability_tools.version
        for session in tuple(self.sessions.values()):
            if session.initialized:  # it said something after initialize (notifications/initialized)
                session.push(_TOOLS_CHANGED, {})
