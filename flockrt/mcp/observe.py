"""What the gateway reports to :mod:`flockrt.metrics`: each request by method and outcome, with
its duration, and the open connections by transport.

The metrics module owns the series (``observe_mcp_request``, ``MCP_CONNECTIONS``); this module
only classifies. It looks them up by name so that the gateway runs (without MCP series) against
a metrics module that does not define them.
"""

from __future__ import annotations

import time
from typing import Any, Final

from flockrt import metrics
from flockrt.mcp.protocol import (
    FORBIDDEN,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    RATE_LIMITED,
)

__all__ = ["connection", "outcome_of", "request"]

_observe: Any = getattr(metrics, "observe_mcp_request", None)
_connections: Any = getattr(metrics, "MCP_CONNECTIONS", None)

_INVALID: Final = frozenset({PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS})


def outcome_of(response: dict[str, Any] | None) -> str:
    """``ok``, ``error``, ``timeout``, ``unauthorized``, ``rate_limited`` or ``invalid``."""
    if response is None:
        return "ok"
    error = response.get("error")
    if error is not None:
        code = error.get("code")
        if code in _INVALID:
            return "invalid"
        if code == FORBIDDEN:
            return "unauthorized"
        return "rate_limited" if code == RATE_LIMITED else "error"
    result = response.get("result")
    if isinstance(result, dict) and result.get("isError"):
        kind = str((result.get("structuredContent") or {}).get("error"))
        return {"timeout": "timeout", "forbidden": "unauthorized"}.get(kind, "error")
    return "ok"


def request(method: str | None, outcome: str, started: float) -> None:
    """Count one request that arrived at ``started`` (``time.perf_counter()``)."""
    if _observe is not None:
        _observe(method or "other", outcome, time.perf_counter() - started)


def connection(transport: str, delta: int) -> None:
    """A connection of ``transport`` (websocket, http, sse) opened (+1) or closed (-1)."""
    if _connections is not None:
        _connections.labels(transport).inc(delta)
