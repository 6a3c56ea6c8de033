"""The two transports of ``/mcp``: WebSocket and Streamable HTTP, as aiohttp handlers.

WebSocket (subprotocol ``mcp``): one JSON-RPC message per text frame. The connection is the
session; requests run concurrently, each answered when done; notifications (an outside agent's
messages, resource updates, progress) go out on the same socket. Close codes: 1003 for a binary
frame, 1008 for a flood past the rate limit (``flood_refusals``), an expired token, no
``initialize`` in time or an eviction to make room for another session, 1009 (by aiohttp) for a
frame over ``max_message_bytes``, 1001 when the gateway stops.

Streamable HTTP: POST one message; a request is answered with JSON, or with an SSE stream when
it asked for progress; ``initialize`` creates the session and returns ``Mcp-Session-Id``, which
every later request carries. GET opens the session's server stream (SSE) for notifications.
DELETE ends the session. Bad input is answered with a JSON-RPC error body and a 4xx status. A
cancelled request is not answered: its POST gets an SSE stream that ends without an event.

Both check the Host (on a loopback gateway), the Origin and the bearer token before anything
else (403, 403, 401).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from flockrt.actors.correlation import correlation
from flockrt.bus.remote import CORRELATION_HEADER
from flockrt.mcp import observe
from flockrt.mcp.auth import Principal, Unauthorized, host_allowed, origin_allowed
from flockrt.mcp.gateway import Gateway
from flockrt.mcp.protocol import (
    FORBIDDEN,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    RATE_LIMITED,
    SUPPORTED_VERSIONS,
    Incoming,
    JsonRpcError,
    encode,
    encode_response,
    error_response,
    parse,
)
from flockrt.mcp.session import Notify, ServerStream, Session

__all__ = ["SESSION_HEADER", "handle_delete", "handle_get", "handle_post", "handle_websocket"]

log = logging.getLogger("flockrt.mcp")

SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
_FLOOD_PAUSE = 1.0
"""Seconds without a refused message that end a flood (its count starts again)."""


class _Flood:
    """Counts the messages of one WebSocket refused for its rate. Messages let through in
    between do not end a flood (a flooder always gets some through as the bucket refills);
    only a pause of ``_FLOOD_PAUSE`` s without a refusal does."""

    __slots__ = ("count", "last", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.last = -_FLOOD_PAUSE

    def refused(self, now: float) -> bool:
        """Count one refusal at ``now``; True when the flood has reached the limit."""
        if now - self.last > _FLOOD_PAUSE:
            self.count = 0
        self.count += 1
        self.last = now
        return self.count >= self.limit


def principal_of(gateway: Gateway, request: web.Request) -> str:
    """Whom a request's sessions count against: its bearer token (a digest of it) on a gateway
    that checks tokens, else its peer address (a header nobody checks could be varied at will
    to escape the cap)."""
    authorization = request.headers.get("Authorization")
    if authorization and gateway.auth.required:
        return "token:" + hashlib.sha256(authorization.encode()).hexdigest()[:16]
    return f"peer:{request.remote}"


def _json_error(status: int, error: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=encode(error), content_type="application/json", headers=headers)


def admit(gateway: Gateway, request: web.Request) -> Principal:
    """Check the Host, the Origin and the bearer token of a request to ``/mcp``.

    Raises:
        web.HTTPForbidden: a foreign Host (on a loopback gateway) or a foreign Origin.
        web.HTTPUnauthorized: a missing or bad token (when authentication is configured).
    """
    if gateway.loopback and not host_allowed(request.headers.get("Host"), gateway.allowed_hosts):
        raise web.HTTPForbidden(text="forbidden: this Host does not name the gateway\n")
    origin = request.headers.get("Origin")
    if not origin_allowed(origin, gateway.allowed_hosts, gateway.config.allowed_origins):
        raise web.HTTPForbidden(text="forbidden: this Origin may not use the gateway\n")
    try:
        return gateway.auth.authenticate(request.headers.get("Authorization"))
    except Unauthorized as exc:
        raise web.HTTPUnauthorized(
            text=f"unauthorized: {exc}\n", headers={"WWW-Authenticate": 'Bearer realm="flockrt"'}
        ) from None


# ---------------------------------------------------------------------- WebSocket


async def handle_websocket(gateway: Gateway, request: web.Request) -> web.StreamResponse:
    """Serve one WebSocket connection as one session until it closes."""
    principal = admit(gateway, request)
    owner = principal_of(gateway, request)
    gateway.make_room(owner)
    # The heartbeat (pings every 30 s) ends connections whose peer vanished without a close,
    # which would otherwise keep their outside agents online forever.
    ws = web.WebSocketResponse(
        protocols=("mcp",), max_msg_size=gateway.config.max_message_bytes, heartbeat=30.0
    )
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text="expected a WebSocket upgrade\n")
    await ws.prepare(request)
    session = gateway.open_session(Session(gateway, principal, "websocket", owner))
    gateway.websockets.add(ws)
    observe.connection("websocket", +1)

    async def send(data: bytes) -> None:
        # A peer that went away cannot be answered; the read loop below ends the session.
        if not ws.closed:
            with contextlib.suppress(ConnectionError):
                await ws.send_frame(data, WSMsgType.TEXT)

    async def pump_outbox() -> None:
        while True:
            await send(await session.outbox.get())

    loop = asyncio.get_running_loop()
    writer = loop.create_task(pump_outbox())

    def expire_uninitialized() -> None:
        # A connection that never initializes holds a session slot for nothing.
        if session.protocol_version is None and not ws.closed:
            log.info("session %s: not initialized within %g s: closed", session.id, gateway.init_timeout)
            gateway.own(ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"initialize timeout"))

    def evicted() -> None:
        log.info("session %s: evicted, closed", session.id)
        gateway.own(ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"session evicted"))

    session.evict = evicted
    init_timer = loop.call_later(gateway.init_timeout, expire_uninitialized)
    flood = _Flood(gateway.config.flood_refusals)
    try:
        async for frame in ws:
            if frame.type is WSMsgType.TEXT:
                if not session.bucket.take():
                    observe.request(None, "rate_limited", time.perf_counter())
                    if flood.refused(time.monotonic()):
                        log.warning(
                            "session %s: %d messages over the rate limit without a %g s pause: closed 1008",
                            session.id,
                            flood.count,
                            _FLOOD_PAUSE,
                        )
                        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"rate limit exceeded")
                        break
                    await send(encode(error_response(None, RATE_LIMITED, "rate limit exceeded; slow down")))
                    continue
                if session.principal.expired:
                    await _refuse_expired(frame.data, send)
                    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"token expired")
                    break
                await _dispatch_frame(session, frame.data, send)
            elif frame.type is WSMsgType.BINARY:
                await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"binary frames are not JSON-RPC")
                break
            # ERROR (an oversize frame: aiohttp has closed with 1009) and CLOSE end the loop.
    finally:
        init_timer.cancel()
        observe.connection("websocket", -1)
        writer.cancel()
        gateway.websockets.discard(ws)
        await session.close()
        await asyncio.gather(writer, return_exceptions=True)
    return ws


async def _refuse_expired(data: str, send: Notify) -> None:
    """Answer a request that arrived after the connection's token expired (then it is closed)."""
    try:
        incoming = parse(data)
    except JsonRpcError:
        return
    if incoming.is_request:
        error = error_response(incoming.id, FORBIDDEN, "forbidden: the token has expired", {"status": 401})
        await send(encode(error))


async def _dispatch_frame(session: Session, data: str, send: Notify) -> None:
    started = time.perf_counter()
    try:
        incoming = parse(data)
    except JsonRpcError as exc:
        await send(encode(exc.response()))
        observe.request(None, "invalid", started)
        return
    if incoming.is_response:
        return
    if not incoming.is_request:
        with contextlib.suppress(JsonRpcError):  # nobody to answer a bad notification
            await session.handle(incoming, send)
        return
    try:
        session.check_inflight(incoming.id)
    except JsonRpcError as exc:
        await send(encode(exc.response()))
        observe.request(incoming.method, observe.outcome_of(exc.response()), started)
        return
    session.run(incoming.id, _serve_request(session, incoming, send, started))


async def _serve_request(session: Session, incoming: Incoming, send: Notify, started: float) -> None:
    """Handle one request of a WebSocket session and send its answer (none if cancelled)."""
    with correlation():  # the flock work this request starts, and its logs, carry one id
        await _serve_request_correlated(session, incoming, send, started)


async def _serve_request_correlated(
    session: Session, incoming: Incoming, send: Notify, started: float
) -> None:
    try:
        response = await session.handle(incoming, send)
    except JsonRpcError as exc:
        if exc.request_id is None:
            exc.request_id = incoming.id
        response = exc.response()
    except Exception as exc:  # isolation boundary: a bug answers one request, not the connection
        log.error("session %s: %s failed", session.id, incoming.method, exc_info=exc)
        response = error_response(incoming.id, INTERNAL_ERROR, f"internal error: {exc}")
    if response is not None:
        await send(encode_response(response))
    observe.request(incoming.method, observe.outcome_of(response), started)


# ---------------------------------------------------------------------- Streamable HTTP


def _session_of(gateway: Gateway, request: web.Request, principal: Principal) -> Session:
    session_id = request.headers.get(SESSION_HEADER)
    if not session_id:
        raise web.HTTPBadRequest(text=f"missing {SESSION_HEADER} header: send initialize first\n")
    session = gateway.sessions.get(session_id)
    if session is None or session.transport != "http":
        raise web.HTTPNotFound(text="unknown or ended session\n")
    # The same rights, not the same token: a client refreshes its JWT (a new ``exp``) and keeps
    # its session, which from now on expires with the new token.
    held = session.principal
    if (held.agent_id, held.capabilities) != (principal.agent_id, principal.capabilities):
        raise web.HTTPForbidden(text="forbidden: the session belongs to another token\n")
    session.principal = principal
    return session


class _Note:
    """What a POST was and how it went, for the metrics."""

    __slots__ = ("method", "outcome")

    def __init__(self) -> None:
        self.method: str | None = None
        self.outcome = "ok"


_STATUS_OUTCOMES = {401: "unauthorized", 403: "unauthorized", 429: "rate_limited"}


async def handle_post(gateway: Gateway, request: web.Request) -> web.StreamResponse:
    """One JSON-RPC message from a Streamable HTTP client."""
    started = time.perf_counter()
    note = _Note()
    try:
        # aiohttp serves a keep-alive connection's requests in one task: set, then reset.
        with correlation(request.headers.get(CORRELATION_HEADER)):
            response = await _handle_post(gateway, request, note)
    except web.HTTPException as exc:
        observe.request(note.method, _STATUS_OUTCOMES.get(exc.status, "invalid"), started)
        raise
    if response.status >= 400 and note.outcome == "ok":
        note.outcome = _STATUS_OUTCOMES.get(response.status, "invalid")
    observe.request(note.method, note.outcome, started)
    return response


async def _handle_post(gateway: Gateway, request: web.Request, note: _Note) -> web.StreamResponse:
    principal = admit(gateway, request)
    if request.content_length is not None and request.content_length > gateway.config.max_message_bytes:
        raise web.HTTPRequestEntityTooLarge(
            max_size=gateway.config.max_message_bytes, actual_size=request.content_length
        )
    body = await request.read()  # the app's client_max_size refuses oversize chunked bodies (413)
    try:
        incoming = parse(body)
    except JsonRpcError as exc:
        return _json_error(400, exc.response())
    note.method = incoming.method
    version = request.headers.get(VERSION_HEADER)
    if incoming.method == "server/discover" and request.headers.get(SESSION_HEADER) is None:
        params = incoming.params if isinstance(incoming.params, dict) else {}
        return _json_error(400, Session.discover_error(params, incoming.id).response())
    if incoming.method == "initialize":
        owner = principal_of(gateway, request)
        gateway.make_room(owner)
        session = gateway.open_session(Session(gateway, principal, "http", owner))
        observe.connection("http", +1)
    else:
        session = _session_of(gateway, request, principal)
        if version is not None and version not in SUPPORTED_VERSIONS:
            error = JsonRpcError(
                INVALID_REQUEST, f"unsupported {VERSION_HEADER} {version!r}", None, incoming.id
            )
            return _json_error(400, error.response())
    headers = {SESSION_HEADER: session.id}
    if not session.bucket.take():
        limited = error_response(incoming.id, RATE_LIMITED, "rate limit exceeded; slow down")
        return _json_error(429, limited, {**headers, "Retry-After": "1"})
    if incoming.is_response:
        return web.Response(status=202, headers=headers)
    if not incoming.is_request:
        try:
            await session.handle(incoming, _discard)
        except JsonRpcError as exc:
            return _json_error(400, exc.response(), headers)
        return web.Response(status=202, headers=headers)
    try:
        session.check_inflight(incoming.id)
    except JsonRpcError as exc:
        note.outcome = observe.outcome_of(exc.response())
        if exc.code != RATE_LIMITED:  # an id already in flight
            return _json_error(400, exc.response(), headers)
        return _json_error(429, exc.response(), {**headers, "Retry-After": "1"})
    if _wants_progress(incoming) and "text/event-stream" in request.headers.get("Accept", ""):
        return await _answer_with_stream(session, incoming, request, headers, note)
    task = session.run(incoming.id, session.handle(incoming, _discard))
    try:
        response = await task
    except asyncio.CancelledError:
        if task.cancelled() and not _current_cancelling():
            return await _unanswered(request, headers)
        raise
    except JsonRpcError as exc:
        if incoming.method == "initialize":
            await session.close()
        if exc.request_id is None:
            exc.request_id = incoming.id
        status = 403 if exc.code == FORBIDDEN else 200
        note.outcome = observe.outcome_of(exc.response())
        return _json_error(status, exc.response(), headers)
    note.outcome = observe.outcome_of(response)
    return web.Response(body=encode_response(response), content_type="application/json", headers=headers)


async def _unanswered(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """The POST of a request that was cancelled (``notifications/cancelled``, or its session
    ended): the MCP spec says a cancelled request gets no response, so its SSE stream ends
    without one (202 with no body for a client that does not accept SSE)."""
    if "text/event-stream" not in request.headers.get("Accept", ""):
        return web.Response(status=202, headers=headers)
    stream = web.StreamResponse(
        headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await stream.prepare(request)
    await stream.write_eof()
    return stream


def _current_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _discard(data: bytes) -> None:
    """Progress for a request answered with plain JSON has nowhere to go."""


def _wants_progress(incoming: Incoming) -> bool:
    params = incoming.params
    meta = params.get("_meta") if isinstance(params, dict) else None
    return isinstance(meta, dict) and "progressToken" in meta


_SEPARATORS = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))
"""U+0085, U+2028 and U+2029 in UTF-8, and their JSON escapes: SSE ends lines at CR and LF
only, but parsers that split on every Unicode line break (Python's ``str.splitlines``) would cut
an event in two. JSON may escape any character, so they go out escaped."""


def _sse(data: bytes) -> bytes:
    """One SSE event carrying a JSON-RPC message (``data`` holds no CR or LF: it is JSON)."""
    if b"\xc2\x85" in data or b"\xe2\x80" in data:  # rare: not every event pays for three replaces
        for raw, escaped in _SEPARATORS:
            data = data.replace(raw, escaped)
    return b"event: message\ndata: " + data + b"\n\n"


async def _answer_with_stream(
    session: Session, incoming: Incoming, request: web.Request, headers: dict[str, str], note: _Note
) -> web.StreamResponse:
    """Answer a request as an SSE stream: its progress notifications, then its response."""
    stream = web.StreamResponse(
        headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await stream.prepare(request)

    async def notify(data: bytes) -> None:
        await stream.write(_sse(data))

    task = session.run(incoming.id, session.handle(incoming, notify))
    try:
        response: dict[str, Any] | None = await task
    except asyncio.CancelledError:
        if task.cancelled() and not _current_cancelling():
            response = None
        else:
            raise
    except JsonRpcError as exc:
        if exc.request_id is None:
            exc.request_id = incoming.id
        response = exc.response()
    note.outcome = observe.outcome_of(response)
    if response is not None:
        await stream.write(_sse(encode_response(response)))
    await stream.write_eof()
    return stream


_KEEPALIVE = b": keepalive\n\n"


async def handle_get(gateway: Gateway, request: web.Request) -> web.StreamResponse:
    """The session's server stream: its notifications as SSE, until the client goes away.

    An SSE comment every ``gateway.keepalive_interval`` seconds finds a client that vanished
    (the write fails) and keeps proxies from timing the stream out. A new GET takes over from
    the session's current stream (a client that reconnects may not know its old one is dead).
    A notification whose write fails goes back to the head of the outbox for the next stream.
    """
    principal = admit(gateway, request)
    if "text/event-stream" not in request.headers.get("Accept", ""):
        raise web.HTTPNotAcceptable(text="the server stream is text/event-stream\n")
    session = _session_of(gateway, request, principal)
    stream = web.StreamResponse(
        headers={SESSION_HEADER: session.id, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await stream.prepare(request)
    me = ServerStream(request)
    previous, session.stream = session.stream, me
    session.streaming = True
    observe.connection("sse", +1)
    getter: asyncio.Task[bytes] | None = None
    try:
        if previous is not None:  # take over: it puts back what it holds, then ends
            previous.superseded.set_result(None)
            await previous.ended.wait()
        while not session.closed and not me.superseded.done():
            data = session.take_unsent()
            if data is None:
                if getter is None:
                    getter = asyncio.get_running_loop().create_task(session.outbox.get())
                await asyncio.wait(
                    (getter, me.superseded),
                    timeout=gateway.keepalive_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not getter.done():
                    if not me.superseded.done():
                        await stream.write(_KEEPALIVE)
                    continue
                data, getter = getter.result(), None
            if not data:  # the session closed
                break
            try:
                await stream.write(_sse(data))
            except BaseException:
                session.put_back(data)
                raise
    except ConnectionResetError:
        pass  # the client went away; it may open the stream again
    finally:
        if getter is not None:
            getter.cancel()
            await asyncio.wait((getter,))
            if not getter.cancelled() and getter.exception() is None:
                session.put_back(getter.result())
        observe.connection("sse", -1)
        if session.stream is me:
            session.stream = None
            session.streaming = False
        session.last_active = time.monotonic()  # idleness counts from the end of the stream
        me.ended.set()
    return stream


async def handle_delete(gateway: Gateway, request: web.Request) -> web.StreamResponse:
    """End a session: its requests are cancelled and its agent goes offline."""
    principal = admit(gateway, request)
    session = _session_of(gateway, request, principal)
    await session.close()
    return web.Response(status=200)
