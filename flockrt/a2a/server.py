"""The flock as an A2A server: an aiohttp adapter in front of the a2a-sdk's request handler.

The SDK's own HTTP apps are Starlette's; its transport-neutral layer is the
``RequestHandler`` (here the ``DefaultRequestHandler`` with :class:`FlockExecutor`, an
in-memory task store and the SDK's event queues). This module speaks the A2A 1.0 JSON-RPC
binding over aiohttp in front of it: ``POST /a2a`` with one JSON-RPC request (no batches);
``SendStreamingMessage`` and ``SubscribeToTask`` are answered with an SSE stream, one
JSON-RPC response per event; the card is ``GET /.well-known/agent-card.json``.

Admission is the MCP gateway's, not a copy of it: the Host check on a loopback gateway (the
app's middleware), the Origin and the bearer token (:func:`flockrt.mcp.transport.admit`: 403,
403, 401). The card itself needs no token (a client reads it to learn how to authenticate).
Limits are the gateway's ``[mcp]`` ones: bodies over ``max_message_bytes`` get 413, a principal
(its token, else its address) over ``rate_limit`` / ``rate_burst`` gets 429 with a JSON-RPC
error, and beyond ``max_inflight`` running tasks its new tasks are ``rejected``. Tasks are
scoped to their principal: another token cannot read or cancel them. Requests must carry the
``A2A-Version: 1.0`` header (the SDK's clients send it; a request without it is taken as 0.3).

Every bad request gets a JSON-RPC error naming what is wrong (HTTP 200, as the SDK's server
answers), and the process goes on.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from a2a.auth.user import User
from a2a.server.context import ServerCallContext
from a2a.server.jsonrpc_models import InternalError as RpcInternalError
from a2a.server.jsonrpc_models import InvalidRequestError as RpcInvalidRequest
from a2a.server.jsonrpc_models import JSONParseError, JSONRPCError, MethodNotFoundError
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.request_handlers.response_helpers import build_error_response
from a2a.server.tasks import InMemoryTaskStore
from a2a.types import (
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTasksRequest,
    SendMessageRequest,
    SendMessageResponse,
    SubscribeToTaskRequest,
    Task,
    TaskPushNotificationConfig,
)
from a2a.utils import proto_utils
from a2a.utils.constants import VERSION_HEADER
from a2a.utils.errors import A2AError, InvalidParamsError, TaskNotFoundError, VersionNotSupportedError
from aiohttp import web
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.message import Message as Proto

from flockrt import metrics
from flockrt.a2a.card import CARD_PATH, RPC_PATH, CardBuilder
from flockrt.a2a.executor import OWNER, ROUTE, FlockExecutor
from flockrt.a2a.mapping import route_of
from flockrt.actors.correlation import correlation
from flockrt.bus.remote import CORRELATION_HEADER
from flockrt.config import A2aConfig
from flockrt.mcp.auth import Principal, TokenBucket
from flockrt.mcp.gateway import Gateway
from flockrt.mcp.protocol import RATE_LIMITED
from flockrt.mcp.transport import admit, principal_of

__all__ = ["A2AServer"]

log = logging.getLogger("flockrt.a2a")

_METHODS: dict[str, type[Proto]] = {
    "SendMessage": SendMessageRequest,
    "SendStreamingMessage": SendMessageRequest,
    "GetTask": GetTaskRequest,
    "ListTasks": ListTasksRequest,
    "CancelTask": CancelTaskRequest,
    "SubscribeToTask": SubscribeToTaskRequest,
    "CreateTaskPushNotificationConfig": TaskPushNotificationConfig,
    "GetTaskPushNotificationConfig": GetTaskPushNotificationConfigRequest,
    "ListTaskPushNotificationConfigs": ListTaskPushNotificationConfigsRequest,
    "DeleteTaskPushNotificationConfig": DeleteTaskPushNotificationConfigRequest,
    "GetExtendedAgentCard": GetExtendedAgentCardRequest,
}
"""The A2A 1.0 JSON-RPC methods and the request each carries."""
_STREAMING = frozenset({"SendStreamingMessage", "SubscribeToTask"})


_INVALID = (InvalidParamsError, VersionNotSupportedError)
"""The SDK's errors counted as an ``invalid`` request (the rest as ``error``)."""


class _Seen:
    """What a request turned out to be, for ``flockrt_a2a_requests_total``: its method (once
    parsed) and its outcome (``error`` until it is known to be something else)."""

    __slots__ = ("method", "outcome")

    def __init__(self) -> None:
        self.method = "other"
        self.outcome = "error"


class _Client(User):
    """The A2A view of an admitted principal (the SDK asks whether it is authenticated)."""

    def __init__(self, principal: Principal, authenticated: bool) -> None:
        self._principal = principal
        self._authenticated = authenticated

    @property
    def is_authenticated(self) -> bool:
        return self._authenticated

    @property
    def user_name(self) -> str:
        return self._principal.agent_id or ""


class _Refusal(Exception):
    """A request answered with a JSON-RPC error before it reached the handler."""

    def __init__(self, error: A2AError | JSONRPCError) -> None:
        super().__init__(str(error))
        self.error = error


def _owner(context: ServerCallContext) -> str:
    owner: str = context.state.get(OWNER, "")
    return owner


class A2AServer:
    """The A2A server of one flock, on the MCP gateway's app.

    Args:
        config: ``[a2a]``.
        gateway: The MCP gateway: its flock, auth, limits and capability tools are this
            server's too.
        name: The card's name (``[runtime] name``).
    """

    def __init__(self, config: A2aConfig, gateway: Gateway, name: str) -> None:
        self.config = config
        self.gateway = gateway
        self.cards = CardBuilder(name, gateway.capability_tools, gateway.config.auth, config.public_url)
        self.executor = FlockExecutor(
            gateway.flock, timeout=gateway.config.timeout / 1000, max_inflight=gateway.config.max_inflight
        )
        self.executor.on_finished = self._finished
        self.store = InMemoryTaskStore(owner_resolver=_owner)
        # The handler reads only the card's capabilities (streaming, push) from it; the card a
        # client sees is built per request. One placeholder skill keeps the SDK's check quiet.
        handler_card = self.cards.card("http://127.0.0.1")
        handler_card.skills.add(id="flock", name="the flock", description="see the card", tags=["flockrt"])
        self.handler = DefaultRequestHandler(self.executor, self.store, handler_card)
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()
        self._finished_tasks: collections.deque[tuple[str, str]] = collections.deque()
        self.forgotten = 0
        """Finished tasks dropped from the store past ``max_tasks``."""

    def mount(self, app: web.Application) -> None:
        """Add the card and the JSON-RPC endpoint to the gateway's app."""
        app.router.add_get(CARD_PATH, self.handle_card)
        app.router.add_post(RPC_PATH, self.handle_rpc)

    async def close(self) -> None:
        """Cancel the tasks still running (their clients see them end) and release the SDK's."""
        await self.handler.aclose()

    # ------------------------------------------------------------------ the card

    async def handle_card(self, request: web.Request) -> web.Response:
        origin = f"{request.scheme}://{request.host}"
        return web.Response(body=self.cards.encoded(origin), content_type="application/json")

    # ------------------------------------------------------------------ JSON-RPC

    async def handle_rpc(self, request: web.Request) -> web.StreamResponse:
        # The work a request starts (the SDK runs it in a copy of this context) and its logs
        # carry one correlation id, the caller's if it sent one; aiohttp serves a keep-alive
        # connection's requests in one task: set, then reset.
        started = time.perf_counter()
        seen = _Seen()
        try:
            with correlation(request.headers.get(CORRELATION_HEADER)):
                return await self._handle_rpc(request, seen)
        except web.HTTPException as refused:  # admission (401, 403) or a body too large (413)
            seen.outcome = "unauthorized" if refused.status in (401, 403) else "invalid"
            raise
        finally:
            metrics.observe_a2a_request(seen.method, seen.outcome, time.perf_counter() - started)

    async def _handle_rpc(self, request: web.Request, seen: _Seen) -> web.StreamResponse:
        principal = admit(self.gateway, request)
        owner = principal_of(self.gateway, request)
        if not self._bucket(owner).take():
            seen.outcome = "rate_limited"
            error = JSONRPCError(code=RATE_LIMITED, message="rate limit exceeded; slow down")
            return _json(build_error_response(None, error), status=429, headers={"Retry-After": "1"})
        limit = self.gateway.config.max_message_bytes
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        body = await request.read()  # the app's client_max_size refuses oversize chunked bodies
        request_id: str | int | None = None
        try:
            method, request_id, params = self._parse(body)
            seen.method = method
            context = ServerCallContext(
                state={
                    "headers": dict(request.headers),
                    "method": method,
                    "request_id": request_id,
                    OWNER: owner,
                },
                user=_Client(principal, self.gateway.auth.required),
            )
            context.tenant = getattr(params, "tenant", "")
            self._check_version(request)
            if isinstance(params, SendMessageRequest):
                context.state[ROUTE] = route_of(
                    params.message,
                    self.gateway.capability_tools,
                    default_skill=self.config.default_skill,
                    default_task_type=self.config.default_task_type,
                )
            if method in _STREAMING:
                return await self._stream(request, method, request_id, params, context, seen)
            result = await self._call(method, params, context)
        except _Refusal as refusal:
            seen.outcome = "invalid"
            return _json(build_error_response(request_id, refusal.error))
        except A2AError as exc:
            seen.outcome = "invalid" if isinstance(exc, _INVALID) else "error"
            return _json(build_error_response(request_id, exc))
        except Exception as exc:  # isolation boundary: a bug answers one request, not the server
            log.exception("A2A request %s failed", request_id)
            return _json(build_error_response(request_id, RpcInternalError(message=f"internal error: {exc}")))
        seen.outcome = "ok"
        return _json({"jsonrpc": "2.0", "id": request_id, "result": result})

    def _parse(self, body: bytes) -> tuple[str, str | int | None, Proto]:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Refusal(JSONParseError(message=f"parse error: the body is not JSON ({exc})")) from None
        if isinstance(data, list):
            raise _Refusal(RpcInvalidRequest(message="batch requests are not supported: send one request"))
        if not isinstance(data, dict):
            raise _Refusal(RpcInvalidRequest(message="invalid request: expected a JSON-RPC request object"))
        request_id = data.get("id")
        if isinstance(request_id, bool) or not isinstance(request_id, str | int | None):
            raise _Refusal(
                RpcInvalidRequest(message="invalid request: id must be a string, an integer or null")
            )
        if data.get("jsonrpc") != "2.0":
            raise _Refusal(RpcInvalidRequest(message="invalid request: 'jsonrpc' must be exactly '2.0'"))
        method = data.get("method")
        if not isinstance(method, str) or not method:
            raise _Refusal(RpcInvalidRequest(message="invalid request: 'method' must be a method name"))
        model = _METHODS.get(method)
        if model is None:
            known = ", ".join(_METHODS)
            raise _Refusal(
                MethodNotFoundError(message=f"method not found: {method!r} (A2A 1.0 methods: {known})")
            )
        params = data.get("params", {})
        if not isinstance(params, dict):
            raise _Refusal(RpcInvalidRequest(message="invalid request: 'params' must be an object"))
        try:
            parsed = ParseDict(params, model(), ignore_unknown_fields=True)
        except Exception as exc:  # protobuf's ParseError and the TypeErrors it lets through
            raise InvalidParamsError(message=f"invalid params for {method}: {exc}") from None
        return method, request_id, parsed

    @staticmethod
    def _check_version(request: web.Request) -> None:
        version = request.headers.get(VERSION_HEADER, "")
        if not version.startswith("1."):
            got = f"{VERSION_HEADER}: {version}" if version else f"no {VERSION_HEADER} header (taken as 0.3)"
            raise VersionNotSupportedError(
                message=f"this server speaks A2A 1.0 and got {got}: send the header {VERSION_HEADER}: 1.0"
            )

    async def _call(self, method: str, params: Any, context: ServerCallContext) -> Any:
        handler = self.handler
        if method == "SendMessage":
            outcome = await handler.on_message_send(params, context)
            response = (
                SendMessageResponse(task=outcome)
                if isinstance(outcome, Task)
                else SendMessageResponse(message=outcome)
            )
            return MessageToDict(response)
        if method == "DeleteTaskPushNotificationConfig":
            await handler.on_delete_task_push_notification_config(params, context)
            return None
        calls = {
            "GetTask": handler.on_get_task,
            "ListTasks": handler.on_list_tasks,
            "CancelTask": handler.on_cancel_task,
            "CreateTaskPushNotificationConfig": handler.on_create_task_push_notification_config,
            "GetTaskPushNotificationConfig": handler.on_get_task_push_notification_config,
            "ListTaskPushNotificationConfigs": handler.on_list_task_push_notification_configs,
            "GetExtendedAgentCard": handler.on_get_extended_agent_card,
        }
        result = await calls[method](params, context)
        if result is None:
            raise TaskNotFoundError
        return MessageToDict(result, preserving_proto_field_name=False)

    async def _stream(
        self,
        request: web.Request,
        method: str,
        request_id: str | int | None,
        params: Any,
        context: ServerCallContext,
        seen: _Seen,
    ) -> web.StreamResponse:
        """Answer with SSE: one JSON-RPC response per event. Errors found before the first
        event (an unknown task, say) are a plain JSON-RPC error instead."""
        if method == "SendStreamingMessage":
            events: AsyncGenerator[Any, None] = self.handler.on_message_send_stream(params, context)
        else:
            events = self.handler.on_subscribe_to_task(params, context)
        try:
            first = await anext(events)
        except StopAsyncIteration:
            first = None
        stream = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await stream.prepare(request)
        try:
            try:
                if first is not None:
                    await stream.write(_event(request_id, first))
                    async for event in events:
                        await stream.write(_event(request_id, event))
                seen.outcome = "ok"
            except A2AError as exc:
                await stream.write(_sse(build_error_response(request_id, exc), error=True))
            except ConnectionResetError:
                raise  # the client went away: below
            except Exception as exc:  # isolation boundary: the stream has started, end it with an error
                log.exception("A2A stream %s failed", request_id)
                error = RpcInternalError(message=f"internal error: {exc}")
                await stream.write(_sse(build_error_response(request_id, error), error=True))
            finally:
                await events.aclose()
            await stream.write_eof()
        except ConnectionResetError:  # aiohttp's ClientConnectionResetError too
            log.debug("A2A stream %s: the client went away (its task goes on)", request_id)
        return stream

    # ------------------------------------------------------------------ limits

    def _bucket(self, owner: str) -> TokenBucket:
        """The rate bucket of a principal; at most ``max_sessions`` are kept (the least recently
        used one goes, as a full bucket: a client seen again starts with its burst)."""
        bucket = self._buckets.get(owner)
        if bucket is None:
            config = self.gateway.config
            bucket = self._buckets[owner] = TokenBucket(config.rate_limit, config.rate_burst)
            if len(self._buckets) > config.max_sessions:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(owner)
        return bucket

    async def _finished(self, owner: str, task_id: str) -> None:
        """A task ended: keep at most ``max_tasks`` finished ones for tasks/get."""
        self._finished_tasks.append((owner, task_id))
        while len(self._finished_tasks) > self.config.max_tasks:
            old_owner, old_id = self._finished_tasks.popleft()
            await self.store.delete(old_id, ServerCallContext(state={OWNER: old_owner}))
            if not self.forgotten:
                log.info(
                    "A2A: %d finished tasks kept ([a2a] max_tasks); from now on the oldest are "
                    "forgotten (GetTask answers 'not found'); the count is A2AServer.forgotten",
                    self.config.max_tasks,
                )
            self.forgotten += 1


def _json(payload: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(payload).encode(), status=status, content_type="application/json", headers=headers
    )


def _sse(payload: dict[str, Any], *, error: bool = False) -> bytes:
    # json.dumps escapes every control character and (ensure_ascii) U+2028/U+2029: one line.
    head = b"event: error\n" if error else b""
    return head + b"data: " + json.dumps(payload).encode() + b"\n\n"


def _event(request_id: str | int | None, event: Any) -> bytes:
    result = MessageToDict(proto_utils.to_stream_response(event), preserving_proto_field_name=False)
    return _sse({"jsonrpc": "2.0", "id": request_id, "result": result})
