"""One MCP session: lifecycle, method dispatch, tools, resources, progress and cancellation.

A session is what a WebSocket connection or a Streamable HTTP ``Mcp-Session-Id`` stands for.
The transports hand it parsed messages (:meth:`Session.handle`) and send back what it returns;
everything the server says unprompted (an outside agent's messages, resource updates) goes
through :meth:`Session.push` into the session's outbox, which the transport drains (the
WebSocket itself, or the Streamable HTTP GET stream).

Requests run in their own asyncio tasks, owned by the session (:attr:`Session.inflight`), so one
slow tool call does not hold up the others on the same connection, and
``notifications/cancelled`` can cancel exactly the work it names.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from flockrt._version import __version__
from flockrt.actors.ref import ActorRef
from flockrt.errors import (
    FlockError,
)
from flockrt.mcp import observe, tools
from flockrt.mcp.agent import OutsideAgent
from flockrt.mcp.auth import Forbidden, Principal, TokenBucket
from flockrt.mcp.capabilities import call_capability
from flockrt.mcp.protocol import (
    DISCOVER_VERSION,
    FORBIDDEN,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LATEST_VERSION,
    METHOD_NOT_FOUND,
    RATE_LIMITED,
    RESOURCE_NOT_FOUND,
    SUPPORTED_VERSIONS,
    UNSUPPORTED_PROTOCOL_VERSION,
    Incoming,
    JsonRpcError,
    encode,
    notification,
    result_response,
)
from flockrt.supervisor.supervisor import DynamicSupervisor
from flockrt.wire.failures import FailureKind

if TYPE_CHECKING:
    from flockrt.mcp.host import SessionHost

__all__ = ["Notify", "ServerStream", "Session"]

log = logging.getLogger("flockrt.mcp")

T = TypeVar("T")

Notify = Callable[[bytes], Awaitable[None]]
"""Sends one encoded message to the peer, on the channel of the request being answered."""

_OUTBOX_LIMIT = 10_000
_TREE_URI = "flock://tree"
_AGENTS_URI = "flock://agents"
_AGENT_PREFIX = "flock://agents/"
_JSON = "application/json"


class ServerStream:
    """One Streamable HTTP server stream (GET) of a session."""

    __slots__ = ("ended", "request", "superseded")

    def __init__(self, request: Any) -> None:
        self.request = request
        self.superseded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Done when a new GET takes over."""
        self.ended = asyncio.Event()
        """Set when the stream's handler has finished (and put back what it held)."""


class Session:
    """One client of the gateway.

    Args:
        host: The gateway it belongs to (seen through what a session needs of it).
        principal: What its bearer token allows.
        transport: ``websocket`` or ``http``.
    """

    def __init__(
        self,
        host: SessionHost,
        principal: Principal,
        transport: Literal["websocket", "http"],
        owner: str = "",
    ) -> None:
        self.id = secrets.token_hex(16)
        self.host = host
        self.principal = principal
        self.transport = transport
        self.owner = owner
        """Whom the session counts against for ``max_sessions_per_principal``: its bearer
        token, or without one its peer address."""
        self.initialized = False
        """Whether the client said or asked anything after ``initialize`` (a session that did
        not is the first to be evicted)."""
        self.evict: Callable[[], None] | None = None
        """How the transport ends the session when the gateway evicts it (a WebSocket is
        closed with 1008); None: close the session."""
        self.protocol_version: str | None = None
        self.client_info: Any = None
        self.agent: OutsideAgent | None = None
        self.agent_id: str | None = None
        self._agent_ref: ActorRef[Any] | None = None
        self.subscriptions: set[str] = set()
        config = host.config
        self.bucket = TokenBucket(config.rate_limit, config.rate_burst)
        self.inflight: dict[Any, asyncio.Task[Any]] = {}
        self.outbox: asyncio.Queue[bytes] = asyncio.Queue(_OUTBOX_LIMIT)
        self.closed = False
        self.streaming = False
        """Whether a Streamable HTTP server stream (GET) is draining the outbox."""
        self.stream: ServerStream | None = None
        """The Streamable HTTP server stream draining the outbox (a new GET takes over)."""
        self._unsent: collections.deque[bytes] = collections.deque()
        """Notifications a failed stream put back: the next stream sends them first."""
        self.last_active = time.monotonic()
        self.dropped = 0
        """Notifications dropped because the peer did not read its outbox fast enough."""
        self.ignored_cancels = 0
        """``notifications/cancelled`` ignored because they named no valid request id."""

    @property
    def sender(self) -> str:
        """Who messages from this session are from: its agent, else ``mcp-<session id>``."""
        return self.agent_id or f"mcp-{self.id[:16]}"

    # ------------------------------------------------------------------ server -> client

    def push(self, method: str, params: Any) -> None:
        """Queue a notification for the peer; never blocks (a full outbox drops and counts)."""
        if self.closed:
            return
        try:
            self.outbox.put_nowait(encode(notification(method, params)))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("session %s: outbox full, notification %s dropped", self.id, method)

    def put_back(self, data: bytes) -> None:
        """A stream could not write ``data``: it goes back to the head of the outbox."""
        self._unsent.appendleft(data)

    def take_unsent(self) -> bytes | None:
        """The notification put back first, if any (before anything in the outbox)."""
        return self._unsent.popleft() if self._unsent else None

    def attach(self, agent: OutsideAgent) -> None:
        """Called by this session's OutsideAgent when it starts."""
        self.agent = agent

    # ------------------------------------------------------------------ client -> server

    def check_inflight(self, request_id: Any) -> None:
        """Refuse a request beyond the ``max_inflight`` this session may have running, or one
        whose id is that of a request still in flight (its answer could not be told apart, and
        reusing one id would slip past the cap).

        Raises:
            JsonRpcError: -32600, the id is in flight; -32000, too many requests in flight.
        """
        if request_id in self.inflight:
            raise JsonRpcError(
                INVALID_REQUEST,
                f"invalid request: id {encode(request_id).decode()} is already in use by a request "
                "in flight; use a new id for each request",
                {"id": request_id},
                request_id,
            )
        limit = self.host.max_inflight
        if len(self.inflight) >= limit:
            raise JsonRpcError(
                RATE_LIMITED,
                f"too many requests in flight (at most {limit} per session); wait for some answers",
                {"limit": limit},
                request_id,
            )

    def run(self, request_id: Any, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run the handling of request ``request_id`` in a task this session owns, so that a
        ``notifications/cancelled`` naming it, or the end of the session, cancels it."""
        task = asyncio.get_running_loop().create_task(work)
        self.inflight[request_id] = task
        task.add_done_callback(lambda _: self._forget_request(request_id, task))
        return task

    def _forget_request(self, request_id: Any, task: asyncio.Task[Any]) -> None:
        if self.inflight.get(request_id) is task:
            del self.inflight[request_id]

    async def handle(self, incoming: Incoming, notify: Notify) -> dict[str, Any] | None:
        """Handle one message; returns the response to a request, None for a notification.

        Raises:
            JsonRpcError: for every protocol error (the transport sends it back).
        """
        self.last_active = time.monotonic()
        if self.protocol_version is not None:
            self.initialized = True
        if self.principal.expired:
            raise JsonRpcError(FORBIDDEN, "forbidden: the token has expired", {"status": 401}, incoming.id)
        method = incoming.method
        if not incoming.is_request:
            if method == "notifications/cancelled":
                self._cancel(incoming.params)
            return None  # notifications/initialized and others need nothing from us
        params = incoming.params if isinstance(incoming.params, dict) else {}
        if method == "initialize":
            return result_response(incoming.id, self._initialize(params, incoming.id))
        if method == "ping":
            return result_response(incoming.id, {})
        if method == "server/discover":
            raise self.discover_error(params, incoming.id)
        if self.protocol_version is None:
            raise JsonRpcError(
                INVALID_REQUEST,
                f"{method}: the session is not initialized; send initialize first",
                None,
                incoming.id,
            )
        handler = self._METHODS.get(method or "")
        if handler is None:
            raise JsonRpcError(
                METHOD_NOT_FOUND,
                f"method not found: {encode((method or '')[:64]).decode()}",
                None,
                incoming.id,
            )
        return result_response(incoming.id, await handler(self, params, incoming.id, notify))

    @staticmethod
    def discover_error(params: dict[str, Any], request_id: Any) -> JsonRpcError:
        """The answer to ``server/discover``: the 2026-07-28 era is not served; -32022 names the
        versions that are (all handshake versions, so the SDK client falls back to initialize)."""
        meta = params.get("_meta") if isinstance(params, dict) else None
        requested = DISCOVER_VERSION
        if isinstance(meta, dict):
            requested = str(meta.get("io.modelcontextprotocol/protocolVersion", requested))
        return JsonRpcError(
            UNSUPPORTED_PROTOCOL_VERSION,
            f"unsupported protocol version {requested}: initialize with one of {list(SUPPORTED_VERSIONS)}",
            {"supported": list(SUPPORTED_VERSIONS), "requested": requested},
            request_id,
        )

    def _initialize(self, params: dict[str, Any], request_id: Any) -> dict[str, Any]:
        if self.protocol_version is not None:
            raise JsonRpcError(
                INVALID_REQUEST, "initialize: the session is already initialized", None, request_id
            )
        requested = params.get("protocolVersion")
        if not isinstance(requested, str):
            raise JsonRpcError(
                INVALID_PARAMS,
                "initialize: protocolVersion must be a string naming a protocol version",
                {"argument": "protocolVersion"},
                request_id,
            )
        self.protocol_version = requested if requested in SUPPORTED_VERSIONS else LATEST_VERSION
        self.client_info = params.get("clientInfo")
        return {
            "protocolVersion": self.protocol_version,
            "capabilities": {
                "tools": {"listChanged": True},
                "resources": {"subscribe": True, "listChanged": False},
            },
            "serverInfo": {"name": "flockrt", "version": __version__},
            "instructions": (
                "flockrt MCP gateway: tools to message agents, request capabilities, submit tasks; "
                "announce_agent makes this connection an agent of the flock."
            ),
        }

    def _cancel(self, params: Any) -> None:
        """``notifications/cancelled``: cancel the request it names. A notification gets no
        answer, so one that names no request id (missing, or not a string or an integer) is
        ignored, counted (in :attr:`ignored_cancels` and as an ``invalid``
        ``notifications/cancelled`` in ``flockrt_mcp_requests_total``) and logged at debug."""
        request_id = params.get("requestId") if isinstance(params, dict) else None
        if isinstance(request_id, bool) or not isinstance(request_id, str | int):
            self.ignored_cancels += 1
            observe.request("notifications/cancelled", "invalid", time.perf_counter())
            log.debug("session %s: notifications/cancelled without a valid requestId ignored", self.id)
            return
        task = self.inflight.get(request_id)
        if task is not None:
            log.debug("session %s: request %r cancelled by the client", self.id, request_id)
            task.cancel()

    # ------------------------------------------------------------------ tools

    async def _tools_list(self, params: dict[str, Any], request_id: Any, notify: Notify) -> Any:
        return {"tools": self.host.capability_tools.encoded()}

    async def _tools_call(self, params: dict[str, Any], request_id: Any, notify: Notify) -> Any:
        name = params.get("name")
        tool = tools.TOOLS.get(name) if isinstance(name, str) else None
        capability_tools = self.host.capability_tools
        if tool is None and isinstance(name, str) and capability_tools.capability(name) is not None:
            arguments = capability_tools.check(name, params.get("arguments"), request_id)
            handler: tools.Handler = functools.partial(call_capability, name=name)
        elif tool is None:
            raise JsonRpcError(
                INVALID_PARAMS,
                f"tools/call: there is no tool named {encode(name[:64]).decode()} (tools/list names them)"
                if isinstance(name, str)
                else "tools/call: name must be the name of a tool, a string",
                {"argument": "name"},
                request_id,
            )
        else:
            arguments = tools.convert_arguments(tool, params.get("arguments"), request_id)
            handler = tool.handler
        meta = params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        progress = None if token is None else _Progress(token, notify, self.host.progress_interval)
        if progress is not None:
            await progress.start()
        try:
            outcome = await handler(
                self, arguments, request_id, progress.report if progress is not None else None
            )
        except Forbidden as exc:
            raise JsonRpcError(FORBIDDEN, f"forbidden: {exc}", {"status": 403}, request_id) from None
        finally:
            if progress is not None:
                await progress.stop()
        if progress is not None:
            await progress.done()
        if isinstance(outcome, tools.Failure):
            content, is_error = outcome.content(), True
        else:
            content, is_error = outcome, False
        try:
            text = encode(content).decode()
        except RecursionError:
            raise JsonRpcError(
                INTERNAL_ERROR,
                f"{name}: the result is nested too deeply to encode as JSON",
                None,
                request_id,
            ) from None
        return {
            "content": [{"type": "text", "text": text}],
            "structuredContent": content,
            "isError": is_error,
        }

    async def announce(self, args: tools.AnnounceAgent) -> tools.Outcome:
        """Become agent ``args.id``: start its OutsideAgent under the host's supervisor (the
        tool's handler has checked the arguments and the token's rights)."""
        if self.agent_id is not None:
            if self.agent_id == args.id:
                return {"agentId": args.id, "announced": True}
            return tools.Failure(FailureKind.FORBIDDEN, f"this connection is already agent {self.agent_id!r}")
        known = self.host.flock.get_agent(args.id)
        if args.id in self.host.claimed or (known is not None and known.status == "online"):
            return tools.Failure(FailureKind.FAILED, f"agent id {args.id!r} is already online in the flock")
        # Claimed before the first await: two connections announcing one id at once get one agent.
        self.host.claimed.add(args.id)
        self.agent_id = args.id
        start = asyncio.ensure_future(
            DynamicSupervisor.start_child(
                self.host.supervisor,
                args.id,
                self,
                args.name,
                tuple(dict.fromkeys(args.capabilities)),
                args.max_concurrent_tasks,
                self.host.config.timeout / 1000,
                # Named for the agent: errors that name the actor (an ask that timed out) then
                # name the agent, not an internal path like /mcp-agents/$10.
                name=args.id,
            )
        )
        try:
            # Shielded: cancelling the announcement (notifications/cancelled, the connection
            # closing) does not stop the supervisor from starting the agent, so the agent it
            # starts must still be stopped, or it stays online with nobody behind it.
            self._agent_ref = await asyncio.shield(start)
        except asyncio.CancelledError:
            # The stop runs in a task the gateway owns: a second cancellation cannot orphan it.
            await asyncio.shield(self.host.own(self._abandon_start(start)))
            raise
        except FlockError as exc:
            self.agent_id = None
            self.host.claimed.discard(args.id)
            return tools.Failure(FailureKind.FAILED, f"agent {args.id!r} could not start: {exc}")
        if self.closed:  # the connection went away while the agent started
            await self._stop_agent()
            return tools.Failure(FailureKind.FAILED, "the connection closed")
        await self.host.flush()
        log.info("session %s is now agent %s (capabilities %s)", self.id, args.id, list(args.capabilities))
        return {"agentId": args.id, "announced": True}

    # ------------------------------------------------------------------ resources

    async def _resources_list(self, params: dict[str, Any], request_id: Any, notify: Notify) -> Any:
        return {
            "resources": [
                {
                    "uri": _AGENTS_URI,
                    "name": "agents",
                    "description": "Every agent of the flock",
                    "mimeType": _JSON,
                },
                {"uri": _TREE_URI, "name": "tree", "description": "The supervision tree", "mimeType": _JSON},
            ]
        }

    async def _resource_templates(self, params: dict[str, Any], request_id: Any, notify: Notify) -> Any:
        return {
            "resourceTemplates": [
                {
                    "uriTemplate": "flock://agents/{id}",
                    "name": "agent",
                    "description": "One agent",
                    "mimeType": _JSON,
                }
            ]
        }

    def _uri(self, params: dict[str, Any], request_id: Any) -> str:
        uri = params.get("uri")
        if not isinstance(uri, str):
            raise JsonRpcError(
                INVALID_PARAMS, "uri must be a string, the URI of a resource", {"argument": "uri"}, request_id
            )
        if uri in (_AGENTS_URI, _TREE_URI) or (
            uri.startswith(_AGENT_PREFIX) and len(uri) > len(_AGENT_PREFIX)
        ):
            return uri
        raise JsonRpcError(RESOURCE_NOT_FOUND, f"resource not found: {uri}", {"uri": uri}, request_id)

    async def _resources_read(self, params: dict[str, Any], request_id: Any, notify: Notify) -> Any:
        uri = self._uri(params, request_id)
        flock = self.host.flock
        body: Any
        if uri == _AGENTS_URI:
            body = {"agents": [info.to_json() for info in flock.list_agents("all")]}
        elif uri == _TREE_URI:
            body = {"tree": self.host.system.snapshot()}
        else:
            info = flock.get_agent(uri[len(_AGENT_PREFIX) :])
            if info is None:
                raise JsonRpcError(RESOURCE_NOT_FOUND, f"resource not found: {uri}", {"uri": uri}, request_id)
            body = {"agent": info.to_json()}
        return {"contents": [{"uri": uri, "mimeType": _JSON, "text": encode(body).decode()}]}

    async def _resources_subscribe(self, params: dict[str, Any], request_id: Any, notify: Notify) -> Any:
        uri = self._uri(params, request_id)
        # Only what exists: subscriptions to made-up agent ids would pile up without bound.
        if uri.startswith(_AGENT_PREFIX) and self.host.flock.get_agent(uri[len(_AGENT_PREFIX) :]) is None:
            raise JsonRpcError(RESOURCE_NOT_FOUND, f"resource not found: {uri}", {"uri": uri}, request_id)
        self.subscriptions.add(uri)
        self.host.subscribe(self, uri)
        return {}

    async def _resources_unsubscribe(self, params: dict[str, Any], request_id: Any, notify: Notify) -> Any:
        uri = self._uri(params, request_id)
        self.subscriptions.discard(uri)
        self.host.unsubscribe(self, uri)
        return {}

    _METHODS: ClassVar[dict[str, Callable[[Session, dict[str, Any], Any, Notify], Awaitable[Any]]]] = {
        "tools/list": _tools_list,
        "tools/call": _tools_call,
        "resources/list": _resources_list,
        "resources/templates/list": _resource_templates,
        "resources/read": _resources_read,
        "resources/subscribe": _resources_subscribe,
        "resources/unsubscribe": _resources_unsubscribe,
    }

    # ------------------------------------------------------------------ end

    async def close(self) -> None:
        """End the session: cancel its requests, stop its agent (it goes offline). Idempotent."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(asyncio.QueueFull):
            self.outbox.put_nowait(b"")  # wakes a server stream waiting for notifications
        for uri in self.subscriptions:
            self.host.unsubscribe(self, uri)
        self.subscriptions.clear()
        tasks = list(self.inflight.values())
        for task in tasks:
            task.cancel()
        await self._stop_agent()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.host.forget(self)
        if self.transport == "http":
            observe.connection("http", -1)

    async def _abandon_start(self, start: asyncio.Future[ActorRef[Any]]) -> None:
        """An announcement was cancelled while its agent started: wait for the start to end,
        stop the agent it started and release its id (the session may announce again)."""
        agent_id = self.agent_id
        try:
            self._agent_ref = await start
        except Exception as exc:  # it did not start: nothing to stop
            log.debug("session %s: cancelled start of agent %s failed: %r", self.id, agent_id, exc)
        await self._stop_agent()
        if self.agent_id == agent_id:
            self.agent_id = None
            self.agent = None

    async def _stop_agent(self) -> None:
        if self.agent is not None:
            self.agent.disconnected()
        ref, self._agent_ref = self._agent_ref, None
        if ref is not None and ref.is_alive:
            try:
                await DynamicSupervisor.terminate_child(self.host.supervisor, ref)
            except (FlockError, KeyError) as exc:  # the system is already stopping it
                log.debug("session %s: agent %s already stopping: %r", self.id, self.agent_id, exc)
            log.info("session %s closed: agent %s is offline", self.id, self.agent_id)
        if self.agent_id is not None:
            self.host.claimed.discard(self.agent_id)


class _Progress:
    """Progress notifications of one tool call: 0 when it starts, one more for each report of
    the agent doing the work (its message, e.g. how much of Claude's answer has streamed in) or,
    while nothing is reported, every ``interval`` seconds (how long it has waited), and last
    ``n`` of ``n``. The value only ever increases, as the MCP spec requires.

    :meth:`report` is the agent's :data:`~flockrt.ProgressCallback`: synchronous, it queues the
    report for the ticker Task, which owns the sending (a report that finds the queue full is
    dropped: progress is advice, and the next report says more)."""

    def __init__(self, token: Any, notify: Notify, interval: float) -> None:
        self.token = token
        self.notify = notify
        self.interval = interval
        self.value = 0
        self.started = time.monotonic()
        self._ticker: asyncio.Task[None] | None = None
        self._reports: asyncio.Queue[str] = asyncio.Queue(maxsize=64)
        self.dropped = 0

    def report(self, done: float, total: float | None = None, message: str | None = None) -> None:
        text = message or (f"{done:g} of {total:g}" if total is not None else f"{done:g}")
        try:
            self._reports.put_nowait(text)
        except asyncio.QueueFull:
            self.dropped += 1

    async def _send(self, message: str, total: int | None = None) -> None:
        params: dict[str, Any] = {"progressToken": self.token, "progress": self.value, "message": message}
        if total is not None:
            params["total"] = total
        await self.notify(encode(notification("notifications/progress", params)))

    async def start(self) -> None:
        await self._send("started")
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11, wait_for swallows a cancellation that
                # arrives as a report does, and stop() would wait for this loop forever.
                async with asyncio.timeout(self.interval):
                    message = await self._reports.get()
            except TimeoutError:
                message = f"waiting {int((time.monotonic() - self.started) * 1000)} ms"
            self.value += 1
            await self._send(message)

    async def stop(self) -> None:
        """Stop the notifications (and wait until the ticker is gone), after the reports still
        queued: work that reports and ends in one step of its handler ends before the ticker
        ran (a waiting requester runs the handler in its own Task)."""
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        while not self._reports.empty():
            self.value += 1
            await self._send(self._reports.get_nowait())

    async def done(self) -> None:
        self.value += 1
        await self._send("done", total=self.value)
