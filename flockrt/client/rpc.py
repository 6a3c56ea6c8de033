"""The client's JSON-RPC 2.0 connection to the MCP gateway, over one WebSocket.

:func:`open_session` opens the socket (subprotocol ``mcp``) and does the MCP handshake
(initialize, then notifications/initialized); the :class:`RpcSession` it returns sends requests
and matches their answers by id, hands notifications from the gateway to a callback, answers the
gateway's own ``ping``, and tells its owner when the socket ends by itself. :func:`structured`
reads a tool's CallToolResult: its structuredContent, or the flock error its ``isError`` stands
for. Reconnection, the circuit breaker and the fallback to NATS are the
:class:`~flockrt.client.client.FlockClient`'s business, not this module's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

import aiohttp
import msgspec

from flockrt._version import __version__
from flockrt.errors import GatewayError, GatewayUnavailable, NotAuthorized
from flockrt.wire.failures import FailureKind, failure_error

__all__ = [
    "FORBIDDEN",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "RpcSession",
    "open_session",
    "structured",
]

log = logging.getLogger("flockrt.client")

PROTOCOL_VERSION: Final = "2025-11-25"
"""The MCP protocol version the client asks for."""
SUPPORTED_VERSIONS: Final = ("2025-03-26", "2025-06-18", "2025-11-25")
"""Versions the client accepts from the gateway (the tools it uses are the same in each)."""

FORBIDDEN: Final = -32003
"""The gateway's JSON-RPC code for an action the token does not grant."""
_METHOD_NOT_FOUND = -32601

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


class RpcSession:
    """One initialized WebSocket session: JSON-RPC requests in flight and the task reading frames.

    The reader task is owned here: :meth:`close` cancels and awaits it. When the socket ends by
    itself, every request in flight fails with GatewayUnavailable and ``on_lost`` is called.
    """

    def __init__(
        self,
        url: str,
        ws: aiohttp.ClientWebSocketResponse,
        on_notification: Callable[[str, Any], None],
        on_lost: Callable[[RpcSession], None],
    ) -> None:
        self.url = url
        self.ws = ws
        self._on_notification = on_notification
        self._on_lost = on_lost
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._closing = False
        self.reader = asyncio.get_running_loop().create_task(self._read())
        self.server_info: dict[str, Any] = {}
        self.protocol_version = ""

    @property
    def alive(self) -> bool:
        return not self._closing and not self.ws.closed and not self.reader.done()

    async def request(self, method: str, params: Mapping[str, Any], timeout: float) -> Any:
        """Send a request and return its ``result``.

        Raises:
            GatewayUnavailable: the connection is gone, or no answer within ``timeout`` s.
            _RpcError: the gateway answered with a JSON-RPC error (the caller names it).
        """
        if not self.alive:
            raise GatewayUnavailable(self.url, "the connection is closed")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            await self._cancel_remote(request_id, "the client stopped waiting")
            raise GatewayUnavailable(
                self.url, f"no answer to {method} within {timeout:g} s", sent=True
            ) from None
        except asyncio.CancelledError:
            await asyncio.shield(self._cancel_remote(request_id, "the caller was cancelled"))
            raise
        finally:
            self._pending.pop(request_id, None)

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        await self._send(message)

    async def _send(self, message: Mapping[str, Any]) -> None:
        try:
            await self.ws.send_str(_json_encode(message).decode())
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            # aiohttp raises ConnectionResetError (or RuntimeError on a closing socket).
            raise GatewayUnavailable(self.url, f"connection lost while sending: {exc}") from exc

    async def _cancel_remote(self, request_id: int, reason: str) -> None:
        # Best effort: the gateway may stop the work the abandoned request started.
        if self.alive:
            with contextlib.suppress(GatewayUnavailable):
                await self.notify("notifications/cancelled", {"requestId": request_id, "reason": reason})

    async def close(self) -> None:
        """Close the socket and stop reading; requests in flight fail. Idempotent."""
        self._closing = True
        if not self.ws.closed:
            await self.ws.close()
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        self._fail_pending("the client closed the connection")

    def _fail_pending(self, reason: str) -> None:
        for future in self._pending.values():  # requests sent, not answered
            if not future.done():
                future.set_exception(GatewayUnavailable(self.url, reason, sent=True))
        self._pending.clear()

    async def _read(self) -> None:
        reason = "the gateway closed the connection"
        try:
            async for frame in self.ws:
                if frame.type is aiohttp.WSMsgType.TEXT:
                    await self._dispatch(frame.data)
                elif frame.type is aiohttp.WSMsgType.ERROR:
                    reason = f"connection error: {self.ws.exception()!r}"
                    break
                else:
                    log.warning("gateway %s sent an unexpected %s frame; ignored", self.url, frame.type.name)
            if self.ws.close_code not in (None, aiohttp.WSCloseCode.OK):
                reason = f"the gateway closed the connection (code {self.ws.close_code})"
        finally:
            self._fail_pending(reason)
            if not self._closing:
                log.warning("lost the connection to %s: %s", self.url, reason)
                self._on_lost(self)
        if not self.ws.closed:  # after an error frame: let the socket go too
            await self.ws.close()

    async def _dispatch(self, text: str) -> None:
        try:
            message = _json_decode(text)
        except msgspec.DecodeError:
            log.warning("gateway %s sent a frame that is not JSON; ignored", self.url)
            return
        if not isinstance(message, dict):
            log.warning("gateway %s sent a JSON-RPC batch or a bare value; ignored", self.url)
            return
        method = message.get("method")
        if isinstance(method, str):
            if "id" in message:  # a request from the server
                await self._answer_server(message["id"], method)
            else:
                self._on_notification(method, message.get("params"))
            return
        request_id = message.get("id")
        future = self._pending.get(request_id) if isinstance(request_id, int) else None
        if future is None or future.done():
            log.debug("gateway %s answered an unknown or abandoned request %r", self.url, message.get("id"))
            return
        error = message.get("error")
        if isinstance(error, dict):
            future.set_exception(_rpc_error(error))
        else:
            future.set_result(message.get("result"))

    async def _answer_server(self, request_id: Any, method: str) -> None:
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
        if method == "ping":
            reply["result"] = {}
        else:
            reply["error"] = {"code": _METHOD_NOT_FOUND, "message": f"method not found: {method}"}
        try:
            await self._send(reply)
        except GatewayUnavailable as exc:
            log.debug("could not answer the gateway's %s: %s", method, exc)


class _RpcError(Exception):
    """A JSON-RPC error object, before the caller names the method it answered."""

    def __init__(self, code: int, message: str, data: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def _rpc_error(error: Mapping[str, Any]) -> _RpcError:
    code = error.get("code")
    return _RpcError(code if isinstance(code, int) else 0, str(error.get("message", "")), error.get("data"))


async def open_session(
    http: aiohttp.ClientSession,
    url: str,
    *,
    headers: Mapping[str, str],
    timeout: float,
    client_name: str,
    on_notification: Callable[[str, Any], None],
    on_lost: Callable[[RpcSession], None],
) -> RpcSession:
    """Open a WebSocket to the gateway at ``url`` and do the MCP handshake.

    Args:
        http: The aiohttp session to connect with.
        url: The gateway's ``ws(s)://host:port/mcp``.
        headers: Extra headers of the upgrade request (the bearer token).
        timeout: Seconds the socket and the handshake may take, each.
        client_name: ``clientInfo.name`` in the handshake.
        on_notification: Called with each notification's method and params.
        on_lost: Called when the socket ends by itself (not by :meth:`RpcSession.close`).

    Raises:
        NotAuthorized: the gateway refused the token (401) or the origin (403).
        GatewayUnavailable: anything else went wrong (the socket is closed again).
    """
    try:
        async with asyncio.timeout(timeout):
            ws = await http.ws_connect(url, protocols=("mcp",), headers=headers)
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status in (401, 403):
            what = "no or bad token" if exc.status == 401 else "origin or rights refused"
            raise NotAuthorized(f"MCP gateway at {url} refused: {exc.status} ({what})") from None
        raise GatewayUnavailable(url, f"WebSocket upgrade failed: HTTP {exc.status}") from None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise GatewayUnavailable(url, _describe(exc)) from None
    if ws.protocol != "mcp":
        await ws.close()
        raise GatewayUnavailable(url, f"the server did not accept the 'mcp' subprotocol at {url}")
    session = RpcSession(url, ws, on_notification, on_lost)
    try:
        init = await session.request(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": client_name, "version": __version__},
            },
            timeout,
        )
        version = init.get("protocolVersion") if isinstance(init, dict) else None
        if version not in SUPPORTED_VERSIONS:
            raise GatewayUnavailable(url, f"unsupported MCP protocol version {version!r}")
        session.protocol_version = version
        session.server_info = dict(init.get("serverInfo") or {})
        await session.notify("notifications/initialized")
    except _RpcError as exc:
        await session.close()
        raise GatewayUnavailable(url, f"initialize failed: {exc.message} ({exc.code})") from None
    except BaseException:
        await session.close()
        raise
    return session


def structured(tool: str, arguments: Mapping[str, Any], result: Any, timeout: float) -> dict[str, Any]:
    """The CallToolResult's structuredContent, or the flockrt error its isError stands for."""
    if not isinstance(result, dict):
        raise GatewayError(tool, 0, f"expected a CallToolResult object, got {type(result).__name__}")
    content = result.get("structuredContent")
    if not isinstance(content, dict):
        content = {}
    if not result.get("isError"):
        return content
    raise failure_error(
        str(content.get("error", FailureKind.FAILED)),
        tool,
        arguments,
        str(content.get("message", "")),
        timeout=timeout,
        agent_id=str(content.get("agentId") or ""),
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "connection attempt timed out"
    return str(exc) or type(exc).__name__
