"""The kinds of tool failure the MCP gateway reports, and the errors they stand for.

A gateway tool that fails for a business reason (nobody offers the capability, the work timed
out, ...) answers with a result, not a JSON-RPC error: ``isError: true`` and the
``structuredContent`` ``{"error": <kind>, "message": <sentence>}``. The gateway turns a flock
error into its kind with :meth:`FailureKind.of`; the client turns a kind back into the flock
error with :func:`failure_error`. Both sides use this one enum, so the kinds cannot drift apart.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from flockrt.errors import (
    ActorFailed,
    AskTimeout,
    FlockError,
    NoCapableAgent,
    NotAuthorized,
    ToolError,
    UnknownAgent,
    WorkFailed,
    WorkTimeout,
)

__all__ = ["FailureKind", "failure_error"]


class FailureKind(enum.StrEnum):
    """Why a tool call failed: the ``error`` member of a failed tool's structuredContent."""

    NO_CAPABLE_AGENT = "no_capable_agent"
    """No agent offers the capability or handles the task type (:class:`NoCapableAgent`)."""
    TIMEOUT = "timeout"
    """The work did not finish within the call's timeout (:class:`WorkTimeout`)."""
    UNKNOWN_AGENT = "unknown_agent"
    """No agent has the id the call names (:class:`UnknownAgent`)."""
    FAILED = "failed"
    """Anything else: the agent's handler failed, the id is taken, ..."""
    FORBIDDEN = "forbidden"
    """The connection may not do this (:class:`NotAuthorized` on the client)."""

    @classmethod
    def of(cls, exc: FlockError) -> FailureKind:
        """The kind a flock error is reported as (an :class:`ActorFailed` by the error that
        caused it, when that is a flock error)."""
        if isinstance(exc, NoCapableAgent):
            return cls.NO_CAPABLE_AGENT
        if isinstance(exc, WorkTimeout | AskTimeout):
            return cls.TIMEOUT
        if isinstance(exc, UnknownAgent):
            return cls.UNKNOWN_AGENT
        if isinstance(exc, ActorFailed) and isinstance(exc.__cause__, FlockError):
            return cls.of(exc.__cause__)
        return cls.FAILED


# What a tool's work is called in WorkTimeout, and the argument that names it.
_WORK: Mapping[str, tuple[str, str]] = {
    "request_capability": ("capability", "capability"),
    "send_message": ("query", "to"),
    "submit_task": ("task", "type"),
}


def failure_error(
    kind: str,
    tool: str,
    arguments: Mapping[str, Any],
    message: str,
    *,
    timeout: float,
    agent_id: str = "",
) -> FlockError:
    """The flock error a failed call of ``tool`` stands for, as the client raises it.

    Args:
        kind: The failure's ``error`` member (a :class:`FailureKind`; a kind this version does
            not know becomes a :class:`ToolError` carrying it).
        tool: The tool that was called.
        arguments: The call's arguments (they name what failed: the capability, the agent, ...).
        message: The failure's ``message`` member.
        timeout: Seconds the call waited (for :class:`WorkTimeout`).
        agent_id: The failure's ``agentId`` member, if any (the agent whose handler failed).
    """
    if kind == FailureKind.NO_CAPABLE_AGENT:
        if tool == "request_capability":
            return NoCapableAgent("capability", str(arguments.get("capability")))
        return NoCapableAgent("task", str(arguments.get("type")))
    if kind == FailureKind.TIMEOUT:
        what, key = _WORK.get(tool, (tool, ""))
        return WorkTimeout(what, str(arguments.get(key, "")), timeout)
    if kind == FailureKind.UNKNOWN_AGENT:
        return UnknownAgent(str(arguments.get("to") or arguments.get("agent_id") or message))
    if kind == FailureKind.FORBIDDEN:
        return NotAuthorized(f"{tool}: {message}")
    if kind == FailureKind.FAILED and tool == "request_capability":
        capability = str(arguments.get("capability"))
        return WorkFailed(agent_id, "capability", capability, ToolError(tool, kind, message))
    return ToolError(tool, kind, message)
