"""JSON-RPC 2.0 and MCP lifecycle constants, errors and message framing.

The gateway reads every incoming frame or body with :func:`parse`, which turns each kind of bad
input into a :class:`JsonRpcError` with the right code, so a transport only has to send the
error back: -32700 for bytes that are not JSON, -32600 for JSON that is not a JSON-RPC 2.0
message. Method dispatch adds -32601 (unknown method) and -32602 (bad params, naming the
argument).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from flockrt.errors import JsonRpcError

__all__ = [
    "DISCOVER_VERSION",
    "FORBIDDEN",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "LATEST_VERSION",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "RATE_LIMITED",
    "RESOURCE_NOT_FOUND",
    "SUPPORTED_VERSIONS",
    "UNSUPPORTED_PROTOCOL_VERSION",
    "Incoming",
    "JsonRpcError",
    "encode",
    "encode_response",
    "error_response",
    "notification",
    "parse",
    "result_response",
]

SUPPORTED_VERSIONS: Final = ("2025-03-26", "2025-06-18", "2025-11-25")
"""Protocol versions negotiated by ``initialize``, oldest first."""
LATEST_VERSION: Final = SUPPORTED_VERSIONS[-1]
DISCOVER_VERSION: Final = "2026-07-28"
"""The stateless era, probed with ``server/discover``; the gateway answers it with -32022."""

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
RATE_LIMITED: Final = -32000
"""Server-defined: the connection sent more than its rate limit allows."""
RESOURCE_NOT_FOUND: Final = -32002
"""MCP's code for a resource URI the server does not have."""
FORBIDDEN: Final = -32003
"""Server-defined: the bearer token does not grant this action (HTTP 403 over Streamable HTTP)."""
UNSUPPORTED_PROTOCOL_VERSION: Final = -32022
"""MCP 2026-07-28: the requested version is not served; ``data.supported`` lists those that are."""


class Incoming(msgspec.Struct, frozen=True):
    """One JSON-RPC message from the peer: a request (with ``id``), a notification (without),
    or a response to something the server asked (``result``/``error``; the gateway asks
    nothing, so these are ignored)."""

    method: str | None
    id: Any
    params: Any
    is_request: bool
    is_response: bool


_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_UNSET: Final = object()


def parse(data: bytes | str) -> Incoming:
    """Read one JSON-RPC 2.0 message.

    Raises:
        JsonRpcError: -32700 when ``data`` is not JSON (or nested too deeply to read),
            -32600 when it is not one JSON-RPC 2.0 message (a batch, a wrong ``jsonrpc``, a
            method that is not a string, a bad id).
    """
    try:
        message = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise JsonRpcError(PARSE_ERROR, f"parse error: not valid JSON ({exc})") from None
    except RecursionError:
        # msgspec decodes recursively: JSON nested past the interpreter's recursion limit
        # (about 1,000 levels) cannot be read, which is the sender's fault like bad JSON.
        raise JsonRpcError(
            PARSE_ERROR, "parse error: the JSON is nested too deeply to be read (limit about 1,000 levels)"
        ) from None
    if isinstance(message, list):
        raise JsonRpcError(INVALID_REQUEST, "invalid request: batches are not supported; send one message")
    if not isinstance(message, dict):
        raise JsonRpcError(INVALID_REQUEST, "invalid request: a JSON-RPC message is a JSON object")
    raw_id = message.get("id", _UNSET)
    request_id = None if raw_id is _UNSET else raw_id
    if raw_id is not _UNSET and (isinstance(raw_id, bool) or not isinstance(raw_id, str | int)):
        raise JsonRpcError(INVALID_REQUEST, "invalid request: 'id' must be a string or an integer")
    if message.get("jsonrpc") != "2.0":
        raise JsonRpcError(
            INVALID_REQUEST, "invalid request: 'jsonrpc' must be \"2.0\"", request_id=request_id
        )
    method = message.get("method", _UNSET)
    if method is _UNSET:
        if raw_id is not _UNSET and ("result" in message or "error" in message):
            return Incoming(None, request_id, None, is_request=False, is_response=True)
        raise JsonRpcError(INVALID_REQUEST, "invalid request: 'method' is missing", request_id=request_id)
    if not isinstance(method, str):
        raise JsonRpcError(
            INVALID_REQUEST, "invalid request: 'method' must be a string", request_id=request_id
        )
    params = message.get("params")
    if params is not None and not isinstance(params, dict | list):
        raise JsonRpcError(
            INVALID_PARAMS, "invalid params: 'params' must be an object", request_id=request_id
        )
    return Incoming(method, request_id, params, is_request=raw_id is not _UNSET, is_response=False)


def result_response(request_id: Any, result: Any) -> dict[str, Any]:
    """A success response."""
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error_response(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    """An error response (``id`` null when the request's id could not be read)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def notification(method: str, params: Any) -> dict[str, Any]:
    """A notification from the server."""
    return {"jsonrpc": "2.0", "method": method, "params": params}


def encode(message: Any) -> bytes:
    """JSON bytes of a message."""
    return _encoder.encode(message)


def encode_response(response: dict[str, Any] | None) -> bytes:
    """JSON bytes of a response; a result nested too deeply to encode (an agent's answer
    near msgspec's depth limit, wrapped a few levels deeper) becomes a -32603 error, so the
    request is still answered."""
    try:
        return _encoder.encode(response)
    except RecursionError:
        too_deep = "internal error: the result is nested too deeply to encode as JSON"
        request_id = response.get("id") if response is not None else None
        return _encoder.encode(error_response(request_id, INTERNAL_ERROR, too_deep))
