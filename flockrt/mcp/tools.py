"""The gateway's tools: their arguments (msgspec structs), input and output schemas.

Arguments are validated by converting the ``arguments`` object to the tool's struct, strictly
(no coercion of ``"5"`` to 5) and refusing unknown keys, so a malformed call becomes a -32602
error naming the argument. The input schema each tool advertises is generated from the same
struct, so the two cannot drift apart. Durations are milliseconds, as in the AI Flock design.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec

from flockrt.mcp.protocol import INVALID_PARAMS, JsonRpcError
from flockrt.wire.failures import FailureKind

__all__ = [
    "TOOLS",
    "AnnounceAgent",
    "Broadcast",
    "GetAgentInfo",
    "GetSupervisionTree",
    "ListAgents",
    "RequestCapability",
    "SendMessage",
    "SendResponse",
    "SubmitTask",
    "Tool",
    "convert_arguments",
]


Milliseconds = Annotated[int, msgspec.Meta(ge=0)]
"""A duration in milliseconds, never negative."""

MAX_TIMEOUT_MS = 600_000
"""The longest a tool call may ask to wait (10 minutes): a caller cannot park work for longer."""

Timeout = Annotated[int, msgspec.Meta(ge=0, le=MAX_TIMEOUT_MS)]
"""A tool's ``timeout`` argument, in milliseconds (its schema says the bounds)."""


class _Args(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename="camel"):
    """Base of tool arguments: camelCase keys, unknown keys refused."""


class SendMessage(_Args, frozen=True, kw_only=True):
    to: str
    message: Any
    type: str = "command"
    metadata: dict[str, Any] | None = None
    timeout: Timeout | None = None


class RequestCapability(_Args, frozen=True, kw_only=True):
    capability: str
    parameters: Any = msgspec.field(default_factory=dict)
    timeout: Timeout | None = None


class ListAgents(_Args, frozen=True, kw_only=True):
    status: Literal["online", "offline", "all"] = "online"
    capability: str | None = None


class GetAgentInfo(_Args, frozen=True, kw_only=True, rename=None):
    agent_id: str


class AnnounceAgent(_Args, frozen=True, kw_only=True):
    id: str
    name: str | None = None
    capabilities: list[str] = msgspec.field(default_factory=list)
    max_concurrent_tasks: Annotated[int, msgspec.Meta(ge=1)] = 1


class SendResponse(_Args, frozen=True, kw_only=True):
    to: str
    response: Any = None
    correlation_id: str
    error: str | None = None
    """The outside agent's handler failed: the waiting request fails at once."""


class SubmitTask(_Args, frozen=True, kw_only=True):
    type: str
    data: Any = None
    priority: Literal["low", "medium", "high"] = "medium"
    wait: bool = False
    timeout: Timeout | None = None


class Broadcast(_Args, frozen=True, kw_only=True):
    type: str
    message: Any = None
    data: Any = None


class GetSupervisionTree(_Args, frozen=True, kw_only=True):
    pass


@dataclass(frozen=True, slots=True)
class Tool:
    """One tool: its name, what it does, its argument struct and its schemas."""

    name: str
    description: str
    arguments: type[_Args]
    output_schema: dict[str, Any]

    def listing(self) -> dict[str, Any]:
        """The ``tools/list`` entry."""
        return {
            "name": self.name,
            "description": self.description,
            "inputSchema": _input_schema(self.arguments),
            "outputSchema": self.output_schema,
        }


def _input_schema(arguments: type[_Args]) -> dict[str, Any]:
    _, components = msgspec.json.schema_components([arguments])
    schema: dict[str, Any] = dict(components[arguments.__name__])
    schema.pop("title", None)
    schema["additionalProperties"] = False
    return schema


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


_ANY: Final[dict[str, Any]] = {}
_STRING: Final = {"type": "string"}
_BOOL: Final = {"type": "boolean"}
_AGENT: Final = _object(
    ["id", "name", "capabilities", "status"],
    id=_STRING,
    name=_STRING,
    capabilities={"type": "array", "items": _STRING},
    status={"type": "string", "enum": ["online", "offline"]},
    reportedStatus=_STRING,
    lastSeen=_STRING,
    uptime={"type": "integer"},
    tasksProcessed={"type": "integer"},
    load={"type": ["number", "null"]},
    node={"type": ["string", "null"]},
    maxConcurrentTasks={"type": ["integer", "null"]},
)
# Every structuredContent may instead be a business failure: {error, message} with isError.
_FAILURE: Final = _object(
    ["error", "message"],
    error={"type": "string", "enum": [kind.value for kind in FailureKind]},
    message=_STRING,
)


def _or_failure(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "anyOf": [schema, _FAILURE]}


TOOLS: Final[dict[str, Tool]] = {
    tool.name: tool
    for tool in (
        Tool(
            "send_message",
            "Send a direct message to an agent. A 'query' waits (up to timeout ms) for the answer.",
            SendMessage,
            _or_failure(
                _object(
                    ["id", "to", "delivered"],
                    id=_STRING,
                    to=_STRING,
                    delivered=_BOOL,
                    response=_ANY,
                    **{"from": _STRING},
                )
            ),
        ),
        Tool(
            "request_capability",
            "Have an agent that offers a capability do it, anywhere in the flock; returns its result.",
            RequestCapability,
            _or_failure(
                _object(
                    ["capability", "result"],
                    capability=_STRING,
                    result=_ANY,
                    agentId={"type": ["string", "null"]},
                    correlationId=_STRING,
                )
            ),
        ),
        Tool(
            "list_agents",
            "The agents of the flock, by status (online, offline, all) and capability.",
            ListAgents,
            _or_failure(_object(["agents"], agents={"type": "array", "items": _AGENT})),
        ),
        Tool(
            "get_agent_info",
            "What the flock knows of one agent.",
            GetAgentInfo,
            _or_failure(_object(["agent"], agent=_AGENT)),
        ),
        Tool(
            "announce_agent",
            "Make this connection an agent of the flock: messages and capability requests for it "
            "arrive as notifications/flock/message; answer them with send_response.",
            AnnounceAgent,
            _or_failure(_object(["agentId", "announced"], agentId=_STRING, announced=_BOOL)),
        ),
        Tool(
            "send_response",
            "Answer a query or capability request this connection's agent received.",
            SendResponse,
            _or_failure(_object(["delivered"], delivered=_BOOL)),
        ),
        Tool(
            "submit_task",
            "Submit a task; one agent of the flock handles it. With wait, returns its result.",
            SubmitTask,
            _or_failure(_object(["taskId"], taskId=_STRING, result=_ANY)),
        ),
        Tool(
            "broadcast",
            "Send a message to every agent of the flock.",
            Broadcast,
            _or_failure(_object(["delivered"], delivered=_BOOL)),
        ),
        Tool(
            "get_supervision_tree",
            "The supervision tree of the gateway's process: actors, supervisors, states, restarts.",
            GetSupervisionTree,
            _or_failure(_object(["tree"], tree={"type": "object"})),
        ),
    )
}

_AT = re.compile(r"^(?P<reason>.*) - at `\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")


def convert_arguments(tool: Tool, arguments: Any, request_id: Any) -> Any:
    """The tool's argument struct from a call's ``arguments``.

    Raises:
        JsonRpcError: -32602 naming the argument that is missing, unexpected or of the wrong type.
    """
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise JsonRpcError(
            INVALID_PARAMS, f"{tool.name}: 'arguments' must be an object", request_id=request_id
        )
    try:
        return msgspec.convert(arguments, tool.arguments, strict=True)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _AT.match(text)
        reason, path = (match["reason"], match["path"].lstrip(".")) if match else (text, "")
        if (missing := _MISSING.match(reason)) is not None:
            name, reason = (f"{path}.{missing['field']}" if path else missing["field"]), "is required"
        elif (unknown := _UNKNOWN.match(reason)) is not None:
            name, reason = unknown["field"], "is not an argument of this tool"
        else:
            name, reason = path or "arguments", reason[:1].lower() + reason[1:]
        raise JsonRpcError(
            INVALID_PARAMS,
            f"{tool.name}: invalid argument {name!r}: {reason}",
            data={"argument": name},
            request_id=request_id,
        ) from None
