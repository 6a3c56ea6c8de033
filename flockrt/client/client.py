"""FlockClient: the Python client of the MCP gateway, over its WebSocket transport.

It speaks JSON-RPC 2.0 over one WebSocket (subprotocol ``mcp``), does the MCP
initialize/initialized handshake, and calls the gateway's tools: the operations of the AI Flock
MCP client (send_message, request_capability, list_agents, get_agent_info, announce_agent,
send_response) plus submit, broadcast and get_supervision_tree.

Resilience:

- **Reconnects.** A lost connection is re-established in the background with exponential
  backoff (and jitter); an agent announced through the client is announced again, so its
  handlers keep receiving messages. A call made while disconnected connects first.
- **Circuit breaker.** Consecutive failures to reach the gateway (refused connections, lost
  connections, calls with no answer) open a :class:`~flockrt.breaker.CircuitBreaker`; while it
  is open calls fail fast with :class:`~flockrt.errors.CircuitOpen` instead of waiting. Business
  failures (no capable agent, a timeout inside the flock) are answers, not failures.
- **Fallback to NATS.** With ``nats_url`` set, capability requests and direct messages that
  cannot go through the gateway (unreachable, or the breaker open) go straight to the flock on
  NATS instead, with the same messages every flockrt process speaks.

Outside agent. After :meth:`FlockClient.announce_agent`, the client is an agent of the flock:
messages for it arrive pushed by the gateway and go to the handler registered for their type
(:meth:`FlockClient.register_message_handler`); a handler's return value for a ``query`` or a
``capability_request`` is sent back as the answer.

The parts live apart: the JSON-RPC connection and the handshake in :mod:`flockrt.client.rpc`,
pushed messages and their handlers in :mod:`flockrt.client.inbox`, the NATS fallback in
:mod:`flockrt.client.fallback`; this module holds the client that ties them together.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Literal, TypeVar

import aiohttp
import msgspec

from flockrt.actors.tasks import TaskOwner
from flockrt.breaker import CircuitBreaker
from flockrt.client.fallback import NatsFallback
from flockrt.client.inbox import ANSWERED_TYPES, BroadcastHandler, Inbox, MessageHandler
from flockrt.client.rpc import (
    FORBIDDEN,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    RpcSession,
    _RpcError,
    open_session,
    structured,
)
from flockrt.errors import (
    CircuitOpen,
    GatewayError,
    GatewayUnavailable,
    NotAuthorized,
    ToolError,
)
from flockrt.supervisor.spec import Backoff
from flockrt.wire.schema import Priority, TaskResult

__all__ = [
    "ANSWERED_TYPES",
    "DEFAULT_URL",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "BroadcastHandler",
    "FlockClient",
    "MessageHandler",
    "ProgressHandler",
]

log = logging.getLogger("flockrt.client")

T = TypeVar("T")

DEFAULT_URL: Final = "ws://127.0.0.1:4002/mcp"

ProgressHandler = Callable[[float, float | None, str | None], None]
"""Hears a call's progress notifications from the gateway: (progress, total, message)."""

_GRACE = 5.0  # seconds a call may take beyond the timeout the gateway works to, before we give up


class FlockClient:
    """An async client of a flockrt MCP gateway (and, as a fallback, of its NATS).

    Use it as an async context manager, or call :meth:`connect` and :meth:`close`::

        async with FlockClient("ws://127.0.0.1:4002/mcp", token="...") as client:
            print(await client.list_agents())
            print(await client.request_capability("text-analysis", {"text": "hello there"}))

    Args:
        url: The gateway's endpoint, ``ws://host:port/mcp`` (or ``wss://``; an ``http(s)://``
            URL of the same endpoint is taken as its WebSocket twin).
        token: Bearer token sent on the upgrade request, if the gateway wants one.
        nats_url: The flock's NATS; when set, capability requests and direct messages fall
            back to it while the gateway is unreachable or the breaker is open.
        timeout: Seconds a call may take by default (the gateway is told, in milliseconds).
        failure_threshold: Consecutive gateway failures that open the circuit breaker.
        reset_timeout: Seconds the breaker stays open before a trial call (half-open).
        breaker: A breaker of your own (its settings win over the two above).
        reconnect: Re-establish a lost connection in the background.
        backoff: Seconds before the first reconnection attempt; doubles up to ``max_backoff``.
        max_backoff: Longest wait between reconnection attempts, in seconds.
        connect_timeout: Seconds one connection attempt (socket and handshake) may take.
        name: The client's name in the MCP handshake (``clientInfo.name``).

    Raises:
        ValueError: a setting is out of range or the URL is not ws:// or wss://.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        nats_url: str | None = None,
        timeout: float = 30.0,
        failure_threshold: int = 5,
        reset_timeout: float = 60.0,
        breaker: CircuitBreaker | None = None,
        reconnect: bool = True,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        connect_timeout: float = 5.0,
        name: str = "flockrt-client",
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError(f"url must be a ws:// or wss:// URL of the gateway's /mcp, got {url!r}")
        if url.startswith("http"):  # the gateway's http://host:port/mcp is the same endpoint
            url = "ws" + url[len("http") :]
        for setting, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            if not value > 0:
                raise ValueError(f"{setting} must be > 0 seconds, got {value!r}")
        if not 0 < backoff <= max_backoff:
            raise ValueError(f"expected 0 < backoff <= max_backoff, got {backoff!r} and {max_backoff!r}")
        self.url = url
        self.nats_url = nats_url or None
        self.timeout = timeout
        self.breaker = breaker or CircuitBreaker(
            url, failure_threshold=failure_threshold, reset_timeout=reset_timeout
        )
        self.reconnect = reconnect
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.connect_timeout = connect_timeout
        self.name = name
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http: aiohttp.ClientSession | None = None
        # Centred on 3/4 of the nominal delay with a third of jitter: each wait is uniform in
        # [1/2, 1] of min(max_backoff, backoff * 2**attempt).
        self._backoff = Backoff(
            initial=backoff * 0.75, maximum=max_backoff * 0.75, multiplier=2.0, jitter=1 / 3
        )
        self._session: RpcSession | None = None
        self._connect_lock = asyncio.Lock()
        self._tasks = TaskOwner(f"FlockClient of {url}", log)
        """The reconnector and the handlers of pushed messages."""
        self._reconnector: asyncio.Task[None] | None = None
        self._inbox = Inbox(self._tasks, self._answer)
        self._announcement: dict[str, Any] | None = None
        self._progress: dict[str, ProgressHandler] = {}
        """The progress handlers of calls in flight, by their progressToken."""
        self._fallback = (
            NatsFallback(self.nats_url, name=name, connect_timeout=connect_timeout) if self.nats_url else None
        )
        self._closed = False
        self._client_id = f"client-{uuid.uuid4().hex[:12]}"
        self.reconnects = 0
        """Connections re-established after a loss."""
        self.fallbacks = 0
        """Calls that went over NATS because the gateway could not be used."""

    # ------------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        """Whether an initialized session with the gateway is up right now."""
        return self._session is not None and self._session.alive

    @property
    def agent_id(self) -> str | None:
        """The id this client announced itself as, or None."""
        return self._announcement["id"] if self._announcement is not None else None

    @property
    def server_info(self) -> dict[str, Any]:
        """The gateway's ``serverInfo`` from the handshake (empty before the first connection)."""
        return self._session.server_info if self._session is not None else {}

    async def __aenter__(self) -> FlockClient:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect to the gateway and do the MCP handshake.

        With ``nats_url`` set, an unreachable gateway is not an error here: the client starts
        on NATS (and connects to the gateway on a later call, or in the background).

        Raises:
            GatewayUnavailable: the gateway cannot be reached (and there is no NATS fallback).
            CircuitOpen: the breaker is open (and there is no NATS fallback).
            NotAuthorized: the gateway refused the token (401) or the origin (403).
        """
        if self._closed:
            raise RuntimeError("this FlockClient is closed; make a new one")
        try:
            await self._guarded(self._ensure_session)
        except (GatewayUnavailable, CircuitOpen) as exc:
            if self.nats_url is None:
                raise
            log.warning("%s; using the flock's NATS at %s until it is back", exc, self.nats_url)
            assert self._fallback is not None
            await self._fallback.connect()
            self._start_reconnector()

    async def close(self) -> None:
        """Close the connection, stop reconnecting and cancel running handlers. Idempotent."""
        self._closed = True
        await self._tasks.close()
        self._reconnector = None
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._fallback is not None:
            await self._fallback.close()

    async def _ensure_session(self) -> RpcSession:
        """The live session, connecting first if there is none.

        The caller has passed the breaker and records the outcome in it.
        """
        session = self._session
        if session is not None and session.alive:
            return session
        async with self._connect_lock:
            session = self._session
            if session is None or not session.alive:
                session = await self._open()
        return session

    async def _guarded(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` through the breaker: gateway unavailability counts as a failure, any
        answer (even an error) as a success, a cancellation or a bug as neither."""
        trial = self.breaker.check()
        try:
            result = await work()
        except GatewayUnavailable:
            self.breaker.record_failure()
            raise
        except (_RpcError, NotAuthorized, GatewayError):
            self.breaker.record_success()
            raise
        except BaseException:
            self.breaker.release(trial)
            raise
        self.breaker.record_success()
        return result

    async def _open(self) -> RpcSession:
        """Open a socket, do the handshake, re-announce; the caller holds the connect lock."""
        if self._closed:
            raise GatewayUnavailable(self.url, "the client is closed")
        if self._http is None:
            self._http = aiohttp.ClientSession()
        session = await open_session(
            self._http,
            self.url,
            headers=self._headers,
            timeout=self.connect_timeout,
            client_name=self.name,
            on_notification=self._on_notification,
            on_lost=self._on_lost,
        )
        self._session = session
        if self._announcement is not None:
            await self._reannounce(session)
        return session

    async def _reannounce(self, session: RpcSession) -> None:
        """Announce the agent again on a new session.

        Raises:
            GatewayUnavailable: the gateway refused for now (the agent of the previous
                connection may still be stopping, so its id is taken): the session is closed
                and the reconnection is retried with backoff.
        """
        assert self._announcement is not None
        agent_id = self._announcement["id"]
        try:
            result = await session.request(
                "tools/call", {"name": "announce_agent", "arguments": self._announcement}, self.timeout
            )
            structured("announce_agent", self._announcement, result, self.timeout)
        except (ToolError, _RpcError) as exc:
            await session.close()
            self._session = None
            raise GatewayUnavailable(self.url, f"could not announce {agent_id} again: {exc}") from None
        except NotAuthorized as exc:  # retrying will not help: stay connected, unannounced
            log.error("could not announce %s again: %s", agent_id, exc)
            self._announcement = None
            return
        log.info("announced %s again after reconnecting", agent_id)

    def _on_notification(self, method: str, params: Any) -> None:
        if method != "notifications/progress":
            self._inbox.on_notification(method, params)
            return
        token = params.get("progressToken") if isinstance(params, dict) else None
        handler = self._progress.get(token) if isinstance(token, str) else None
        progress = params.get("progress") if handler is not None else None
        if handler is not None and isinstance(progress, int | float):
            total, message = params.get("total"), params.get("message")
            try:
                handler(
                    progress,
                    total if isinstance(total, int | float) else None,
                    message if isinstance(message, str) else None,
                )
            except Exception:  # a broken progress display must not break the call
                log.exception("progress handler failed")

    def _on_lost(self, session: RpcSession) -> None:
        if self._session is session:
            self._session = None
            self.breaker.record_failure()
            self._start_reconnector()

    def _start_reconnector(self) -> None:
        if self.reconnect and not self._closed and (self._reconnector is None or self._reconnector.done()):
            self._reconnector = self._tasks.spawn(self._reconnect_forever(), name="reconnect")

    async def _reconnect_forever(self) -> None:
        # Not breaker-guarded: the backoff spaces the attempts, and the first success closes
        # the breaker, so callers stop failing fast as soon as the gateway is back.
        attempt = 0
        while not self._closed:
            await asyncio.sleep(self._backoff.delay(attempt))
            attempt += 1
            try:
                async with self._connect_lock:
                    if self._session is None or not self._session.alive:
                        await self._open()
            except GatewayUnavailable as exc:
                self.breaker.record_failure()
                log.debug("reconnection to %s failed: %s", self.url, exc)
                continue
            except NotAuthorized as exc:
                log.error("reconnection to %s refused, giving up: %s", self.url, exc)
                return
            self.breaker.record_success()
            self.reconnects += 1
            log.info("reconnected to %s", self.url)
            return

    # ------------------------------------------------------------------ calls

    async def call_tool(
        self,
        name: str,
        arguments: Mapping[str, Any],
        *,
        timeout: float | None = None,
        progress: ProgressHandler | None = None,
    ) -> Any:
        """Call a gateway tool and return its ``structuredContent``.

        The typed methods below are built on this; use it for tools they do not cover.

        Args:
            name: The tool.
            arguments: Its arguments (JSON-able).
            timeout: Seconds to wait for the answer (plus a small grace for the way back);
                the client's ``timeout`` by default.
            progress: Called with each progress notification the gateway sends while the
                tool runs (the call asks for them with a ``progressToken``).

        Raises:
            GatewayUnavailable: the gateway cannot be reached or did not answer in time.
            CircuitOpen: the breaker is open; nothing was sent.
            NotAuthorized: the token does not allow this.
            GatewayError: the gateway rejected the call (e.g. -32602, a bad argument).
            NoCapableAgent, UnknownAgent, WorkTimeout, WorkFailed, ToolError: the tool failed.
        """
        limit = (timeout if timeout is not None else self.timeout) + _GRACE
        params: dict[str, Any] = {"name": name, "arguments": dict(arguments)}
        token = f"progress-{uuid.uuid4().hex[:12]}" if progress is not None else None
        if token is not None:
            params["_meta"] = {"progressToken": token}

        async def call() -> Any:
            session = await self._ensure_session()
            return await session.request("tools/call", params, limit)

        try:
            if progress is not None and token is not None:
                self._progress[token] = progress
            result = await self._guarded(call)
        except _RpcError as exc:
            if exc.code == FORBIDDEN:
                raise NotAuthorized(f"{name}: {exc.message}") from None
            raise GatewayError(name, exc.code, exc.message, exc.data) from None
        finally:
            if token is not None:
                self._progress.pop(token, None)
        return structured(name, arguments, result, timeout if timeout is not None else self.timeout)

    async def send_message(
        self,
        to: str,
        message: Any,
        *,
        type: str = "command",
        metadata: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send a direct message to agent ``to``.

        Args:
            to: The agent's id.
            message: Any JSON-able value.
            type: ``command`` (default), ``query`` (waits for the answer), ``notification``, ...
            metadata: Extra JSON-able fields for the receiver.
            timeout: Seconds a query waits for its answer.

        Returns:
            For a query, the answer; else None once the gateway has delivered it.

        Raises:
            UnknownAgent: no such agent. WorkTimeout: a query was not answered in time.
            GatewayUnavailable / CircuitOpen: the gateway cannot be used and there is no NATS
            fallback (with one, the message goes over NATS instead).
        """
        _check_str("to", to)
        _check_str("type", type)
        limit = timeout if timeout is not None else self.timeout
        arguments: dict[str, Any] = {"to": to, "message": message, "type": type, "timeout": _ms(limit)}
        if metadata is not None:
            arguments["metadata"] = metadata
        try:
            result = await self.call_tool("send_message", arguments, timeout=limit)
        except (GatewayUnavailable, CircuitOpen) as exc:
            if self._fallback is None or _maybe_done(exc):
                raise
            answer = await self._fallback.send_direct(
                to,
                message,
                type=type,
                sender=self.agent_id or self._client_id,
                timeout=limit,
                metadata=metadata,
            )
            self.fallbacks += 1
            return answer
        return result.get("response") if type == "query" else None

    async def request_capability(
        self,
        capability: str,
        parameters: Any = None,
        *,
        timeout: float | None = None,
        progress: ProgressHandler | None = None,
    ) -> Any:
        """Have an agent that offers ``capability`` do it, and return its result; ``progress``
        hears the gateway's progress notifications meanwhile (none over the NATS fallback).

        Raises:
            NoCapableAgent: no agent offers it. WorkTimeout: no answer within ``timeout`` s.
            WorkFailed: the agent's handler failed.
            GatewayUnavailable / CircuitOpen: the gateway cannot be used and there is no NATS
            fallback (with one, the request goes over NATS instead).
        """
        _check_str("capability", capability)
        limit = timeout if timeout is not None else self.timeout
        arguments = {
            "capability": capability,
            "parameters": {} if parameters is None else parameters,
            "timeout": _ms(limit),
        }
        try:
            result = await self.call_tool("request_capability", arguments, timeout=limit, progress=progress)
        except (GatewayUnavailable, CircuitOpen) as exc:
            if self._fallback is None or _maybe_done(exc):
                raise
            answer = await self._fallback.request_capability(
                capability, parameters, requester=self.agent_id or self._client_id, timeout=limit
            )
            self.fallbacks += 1
            return answer
        return result.get("result")

    async def list_agents(
        self, status: Literal["online", "offline", "all"] = "online", capability: str | None = None
    ) -> list[dict[str, Any]]:
        """The agents the flock knows, as dicts with the wire contract's camelCase keys (id,
        name, capabilities, status, reportedStatus, lastSeen, uptime, tasksProcessed, load,
        node, maxConcurrentTasks)."""
        if status not in ("online", "offline", "all"):
            raise ValueError(f"status must be online, offline or all, got {status!r}")
        arguments: dict[str, Any] = {"status": status}
        if capability is not None:
            arguments["capability"] = _check_str("capability", capability)
        result = await self.call_tool("list_agents", arguments)
        agents: list[dict[str, Any]] = result.get("agents", [])
        return agents

    async def get_agent_info(self, agent_id: str) -> dict[str, Any]:
        """What the flock knows of one agent (keys as in :meth:`list_agents`).

        Raises:
            UnknownAgent: no agent with this id is known.
        """
        result = await self.call_tool("get_agent_info", {"agent_id": _check_str("agent_id", agent_id)})
        agent: dict[str, Any] = result["agent"]
        return agent

    async def announce_agent(
        self,
        agent_id: str,
        name: str | None = None,
        capabilities: Sequence[str] = (),
        *,
        max_concurrent_tasks: int = 1,
    ) -> None:
        """Join the flock as agent ``agent_id`` through this connection.

        From now on messages for it (direct messages, capability requests for ``capabilities``)
        are pushed to the handlers registered with :meth:`register_message_handler`. After a
        reconnect the client announces itself again. When the client closes, the agent goes
        offline.

        Raises:
            NotAuthorized: the token does not allow acting as this agent.
        """
        _check_str("agent_id", agent_id)
        if isinstance(capabilities, str) or not all(isinstance(c, str) and c for c in capabilities):
            raise TypeError(f"capabilities must be a sequence of non-empty strings, got {capabilities!r}")
        if not isinstance(max_concurrent_tasks, int) or max_concurrent_tasks < 1:
            raise ValueError(f"max_concurrent_tasks must be an int >= 1, got {max_concurrent_tasks!r}")
        announcement = {
            "id": agent_id,
            "name": name or agent_id,
            "capabilities": list(capabilities),
            "maxConcurrentTasks": max_concurrent_tasks,
        }
        await self.call_tool("announce_agent", announcement)
        self._announcement = announcement

    async def send_response(
        self, to: str, response: Any, correlation_id: str, *, error: str | None = None
    ) -> None:
        """Answer a query or capability request that was pushed to this agent.

        Handlers registered with :meth:`register_message_handler` are answered automatically;
        use this when the answer comes later or from elsewhere.

        Args:
            to: The requester (the pushed message's ``sender``).
            response: The answer (JSON-able).
            correlation_id: The pushed message's ``correlation_id``.
            error: Instead of an answer, why there is none: the requester fails at once
                (gateways that predate this argument reject it with -32602).
        """
        _check_str("to", to)
        _check_str("correlation_id", correlation_id)
        arguments = {"to": to, "response": response, "correlationId": correlation_id}
        if error is not None:
            arguments["error"] = _check_str("error", error)
        await self.call_tool("send_response", arguments)

    async def submit(
        self,
        task_type: str,
        data: Any = None,
        *,
        priority: Priority = "medium",
        wait: bool = False,
        timeout: float | None = None,
        progress: ProgressHandler | None = None,
    ) -> TaskResult | str:
        """Submit a task of ``task_type`` to the flock; ``progress`` hears the gateway's progress
        notifications while it waits.

        Returns:
            The task's id, or with ``wait`` its :class:`~flockrt.TaskResult`.

        Raises:
            NoCapableAgent: nobody handles the type. WorkTimeout: ``wait`` and no result in time.
        """
        _check_str("task_type", task_type)
        if priority not in ("low", "medium", "high"):
            raise ValueError(f"priority must be low, medium or high, got {priority!r}")
        limit = timeout if timeout is not None else self.timeout
        arguments: dict[str, Any] = {
            "type": task_type,
            "data": data,
            "priority": priority,
            "wait": wait,
            "timeout": _ms(limit),
        }
        result = await self.call_tool("submit_task", arguments, timeout=limit, progress=progress)
        if not wait:
            return str(result["taskId"])
        try:
            return msgspec.convert(result["result"], TaskResult)
        except (KeyError, msgspec.ValidationError) as exc:
            raise GatewayError("submit_task", 0, f"the gateway's task result is malformed: {exc}") from None

    async def broadcast(self, type: str, message: Any = None, data: Any = None) -> None:
        """Broadcast to every agent of the flock."""
        _check_str("type", type)
        arguments: dict[str, Any] = {"type": type, "message": message}
        if data is not None:
            arguments["data"] = data
        await self.call_tool("broadcast", arguments)

    async def get_supervision_tree(self) -> dict[str, Any]:
        """The gateway process's supervision tree (``ActorSystem.snapshot()``)."""
        result = await self.call_tool("get_supervision_tree", {})
        tree: dict[str, Any] = result["tree"]
        return tree

    # ------------------------------------------------------------------ pushed messages

    def register_message_handler(self, type: str, handler: MessageHandler) -> None:
        """Call ``handler`` for each pushed message of ``type`` (``"*"``: any type without a
        handler of its own). It receives the :class:`~flockrt.DirectMessage`.

        For a ``query`` or a ``capability_request`` (whose message is ``{capability,
        parameters}``), the handler's return value is sent back as the answer. A handler that
        raises is logged, and the failure is reported with ``send_response``'s ``error``, so
        the requester fails at once where the gateway supports it (else it times out). Handlers
        run concurrently, each in a task the client owns (cancelled by :meth:`close`).
        """
        self._inbox.register(_check_str("type", type), handler)

    def register_broadcast_handler(self, handler: BroadcastHandler) -> None:
        """Call ``handler`` with each :class:`~flockrt.Broadcast` pushed to this connection."""
        self._inbox.register_broadcast(handler)

    async def _answer(self, to: str, response: Any, correlation_id: str, error: str | None) -> None:
        await self.send_response(to, response, correlation_id, error=error)


def _check_str(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _ms(seconds: float) -> int:
    if not seconds > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {seconds!r}")
    return max(1, round(seconds * 1000))


def _maybe_done(exc: GatewayUnavailable | CircuitOpen) -> bool:
    """Whether a failed call may have been carried out anyway (sent before the connection
    went): falling back to NATS could then do it twice, so the caller hears of it instead."""
    return isinstance(exc, GatewayUnavailable) and exc.sent
