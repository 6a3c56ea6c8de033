"""The gateway's tools: their arguments (msgspec structs), input and output schemas.

Arguments are validated by converting the ``arguments`` object to the tool's struct, strictly
(no coercion of ``"5"`` to 5) and refusing unknown keys, so a malformed call becomes a -32602
error naming the argument. The input schema each tool advertises is generated from the same
struct, so the two cannot drift apart. Durations are milliseconds, as in the AI Flock design.

Each tool names its handler: a function of the calling session (seen through :class:`Caller`)
and the converted arguments, which returns the tool's structuredContent or, for a business
failure (nobody offers the capability, the work timed out, ...), a :class:`Failure` value that
the session answers with ``isError``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, Protocol, TypeAlias

import msgspec

from flockrt.agents.params import plain
from flockrt.errors import FlockError, JsonRpcError
from flockrt.mcp.protocol import INVALID_PARAMS
from flockrt.wire.failures import FailureKind
from flockrt.wire.subjects import check_token

if TYPE_CHECKING:
    from flockrt.agents.agent import ProgressCallback
    from flockrt.mcp.agent import OutsideAgent
    from flockrt.mcp.auth import Principal
    from flockrt.mcp.host import SessionHost

__all__ = [
    "FAILURE_SCHEMA",
    "TOOLS",
    "AnnounceAgent",
    "Broadcast",
    "Caller",
    "Failure",
    "GetAgentInfo",
    "GetSupervisionTree",
    "Handler",
    "ListAgents",
    "Outcome",
    "RequestCapability",
    "SendMessage",
    "SendResponse",
    "SubmitTask",
    "Tool",
    "check_argument",
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


class GetAgentInfo(_Args, frozen=True, kw_only=True):
    """``agentId`` (as the other tools spell their arguments) or ``agent_id`` (as this tool
    first took it): either names the agent."""

    given_agent_id: str | None = msgspec.field(default=None, name="agentId")
    snake_agent_id: str | None = msgspec.field(default=None, name="agent_id")

    def __post_init__(self) -> None:
        _one_of(self.given_agent_id, self.snake_agent_id, "agentId", "agent_id")

    @property
    def agent_id(self) -> str:
        return _either(self.given_agent_id, self.snake_agent_id)


class AnnounceAgent(_Args, frozen=True, kw_only=True):
    """The agent's ``id`` (or ``agentId``); ``timestamp`` (the AI Flock seed sends when it
    announced) is accepted and not used: the flock stamps announcements itself."""

    given_id: str | None = msgspec.field(default=None, name="id")
    name: str | None = None
    capabilities: list[str] = msgspec.field(default_factory=list)
    max_concurrent_tasks: Annotated[int, msgspec.Meta(ge=1)] = 1
    timestamp: str | float | None = None
    given_agent_id: str | None = msgspec.field(default=None, name="agentId")

    def __post_init__(self) -> None:
        _one_of(self.given_id, self.given_agent_id, "id", "agentId")

    @property
    def id(self) -> str:
        return _either(self.given_id, self.given_agent_id)


class SendResponse(_Args, frozen=True, kw_only=True):
    """Ours: ``{to, response, correlationId, error}``. The AI Flock seed's
    ``sendResponse(from, response, metadata)``: ``{from, response, metadata}`` with the
    correlation id in ``metadata.correlationId``. ``to`` and ``from`` are informational: the
    answer goes to whoever waits for ``correlationId``, from this connection's own agent."""

    to: str | None = None
    response: Any = None
    given_correlation_id: str | None = msgspec.field(default=None, name="correlationId")
    error: str | None = None
    """The outside agent's handler failed: the waiting request fails at once."""
    sender: str | None = msgspec.field(default=None, name="from")
    metadata: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.correlation_id == "":
            raise ValueError("Object missing required field `correlationId`")

    @property
    def correlation_id(self) -> str:
        if self.given_correlation_id is not None:
            return self.given_correlation_id
        metadata = self.metadata or {}
        found = metadata.get("correlationId", metadata.get("correlation_id"))
        return found if isinstance(found, str) else ""


def _one_of(first: str | None, second: str | None, name: str, other: str) -> None:
    """Check that an id given under either of two names is given, and once."""
    if first is None and second is None:
        raise ValueError(f"Object missing required field `{name}`")
    if first is not None and second is not None and first != second:
        raise ValueError(f"{name} and {other} differ (give one)")


def _either(first: str | None, second: str | None) -> str:
    return first if first is not None else second or ""


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
class Failure:
    """A business failure of a tool: answered as a result with ``isError``, not as a JSON-RPC
    error (the call itself was fine; what it asked for did not happen)."""

    kind: FailureKind
    message: str

    @classmethod
    def of(cls, exc: FlockError) -> Failure:
        """The failure a flock error is reported as."""
        return cls(FailureKind.of(exc), str(exc))

    def content(self) -> dict[str, Any]:
        """Its structuredContent (the wire contract: ``{"error": kind, "message": ...}``)."""
        return {"error": self.kind.value, "message": self.message}


Outcome: TypeAlias = dict[str, Any] | Failure
"""What a tool handler returns: its structuredContent, or its failure."""


class Caller(Protocol):
    """What a tool handler needs from the session that calls it."""

    @property
    def host(self) -> SessionHost:
        """The gateway the session belongs to."""
        ...

    @property
    def principal(self) -> Principal:
        """What the session's token allows."""
        ...

    @property
    def sender(self) -> str:
        """Who messages from the session are from."""
        ...

    @property
    def agent(self) -> OutsideAgent | None:
        """The session's outside agent, once it has started."""
        ...

    @property
    def agent_id(self) -> str | None:
        """The id the session announced (or is announcing) itself as."""
        ...

    async def announce(self, args: AnnounceAgent) -> Outcome:
        """Make the session agent ``args.id`` (arguments and rights already checked)."""
        ...


Handler: TypeAlias = Callable[[Caller, Any, Any, "ProgressCallback | None"], Awaitable[Outcome]]
"""A tool's handler: called with the session, the arguments struct, the request's id (for
-32602 errors) and, when the client asked for progress, the callback reporting it."""


@dataclass(frozen=True, slots=True)
class Tool:
    """One tool: its name, what it does, its argument struct, its output schema and its handler."""

    name: str
    description: str
    arguments: type[_Args]
    output_schema: dict[str, Any]
    handler: Handler

    def listing(self) -> dict[str, Any]:
        """The ``tools/list`` entry."""
        return {
            "name": self.name,
            "description": self.description,
            "inputSchema": _input_schema(self.arguments),
            "outputSchema": self.output_schema,
        }


_OBJECTS: Final = frozenset({"parameters", "metadata", "data"})
"""Arguments that are JSON objects in the AI Flock's calls: their schema says so (the struct
still takes any value, as AI Flock peers may send)."""


def _input_schema(arguments: type[_Args]) -> dict[str, Any]:
    """The struct's JSON Schema in the form generic clients read: an optional argument is a
    plain typed, non-required property (never ``anyOf`` with null)."""
    _, components = msgspec.json.schema_components([arguments])
    schema: dict[str, Any] = plain(components[arguments.__name__])
    schema.pop("title", None)
    for name, prop in schema.get("properties", {}).items():
        if name in _OBJECTS:
            prop["type"] = "object"
            if prop.get("default", {}) is None:
                del prop["default"]
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


FAILURE_SCHEMA: Final = _FAILURE
"""The structuredContent of a business failure (``isError``)."""


def _or_failure(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "anyOf": [schema, _FAILURE]}


# ---------------------------------------------------------------------- handlers


def check_argument(name: str, value: str, request_id: Any) -> None:
    """Refuse an argument that cannot be a NATS subject token (an agent id, a capability).

    Raises:
        JsonRpcError: -32602 naming the argument (without echoing the value, which may be huge).
    """
    try:
        check_token(name, value)
    except ValueError:
        raise JsonRpcError(
            INVALID_PARAMS,
            f"{name} must be a non-empty string without spaces, dots, '*' or '>' "
            "(it becomes part of a NATS subject)",
            {"argument": name},
            request_id,
        ) from None


def _timeout(caller: Caller, milliseconds: int | None) -> float:
    # The argument's bounds (Timeout, at most 10 minutes) were checked on the way in.
    return (milliseconds if milliseconds is not None else caller.host.config.timeout) / 1000


async def _send_message(
    caller: Caller, args: SendMessage, request_id: Any, progress: ProgressCallback | None
) -> Outcome:
    check_argument("to", args.to, request_id)
    flock = caller.host.flock
    message_id = secrets.token_hex(16)
    try:
        if args.type == "query":
            answer = await flock.query(
                args.to,
                args.message,
                sender=caller.sender,
                timeout=_timeout(caller, args.timeout),
                metadata=args.metadata,
            )
        else:
            await flock.send(
                args.to, args.message, type=args.type, sender=caller.sender, metadata=args.metadata
            )
    except FlockError as exc:
        return Failure.of(exc)
    out: dict[str, Any] = {"id": message_id, "to": args.to, "delivered": True}
    if args.type == "query":
        out["response"] = answer
        out["from"] = args.to
    return out


async def _request_capability(
    caller: Caller, args: RequestCapability, request_id: Any, progress: ProgressCallback | None
) -> Outcome:
    check_argument("capability", args.capability, request_id)
    try:
        response = await caller.host.flock.request_capability_response(
            args.capability, args.parameters, timeout=_timeout(caller, args.timeout), progress=progress
        )
    except FlockError as exc:
        return Failure.of(exc)
    return {
        "capability": args.capability,
        "result": response.result,
        "agentId": response.agent_id,
        "correlationId": response.correlation_id or secrets.token_hex(16),
    }


async def _list_agents(
    caller: Caller, args: ListAgents, request_id: Any, progress: ProgressCallback | None
) -> Outcome:
    agents = caller.host.flock.list_agents(args.status, args.capability)
    return {"agents": [info.to_json() for info in agents]}


async def _get_agent_info(
    caller: Caller, args: GetAgentInfo, request_id: Any, progress: ProgressCallback | None
) -> Outcome:
    info = caller.host.flock.get_agent(args.agent_id)
    if info is None:
        return Failure(FailureKind.UNKNOWN_AGENT, f"no agent {args.agent_id!r} in the flock")
    return {"agent": info.to_json()}


async def _announce_agent(
    caller: Caller, args: AnnounceAgent, request_id: Any, progress: ProgressCallback | None
) -> Outcome:
    check_argument("id", args.id, request_id)
    for capability in args.capabilities:
        check_argument("capabilities", capability, request_id)
    caller.principal.check_announce(args.id, args.capabilities)
    return await caller.announce(args)


async def _send_response(
    caller: Caller, args: SendResponse, request_id: Any, progress: ProgressCallback | None
) -> Outcome:
    agent = caller.agent
    if agent is None:
        return Failure(FailureKind.FORBIDDEN, "send_response: this connection has not announced an agent")
    if not agent.resolve(args.correlation_id, args.response, args.error):
        return Failure(
            FailureKind.FAILED,
            f"agent {caller.agent_id!r} has no pending query or capability request {args.correlation_id!r}",
        )
    return {"delivered": True}


async def _submit_task(
    caller: Caller, args: SubmitTask, request_id: Any, progress: ProgressCallback | None
) -> Outcome:
    check_argument("type", args.type, request_id)
    flock = caller.host.flock
    try:
        outcome = await flock.submit(
            args.type,
            args.data,
            priority=args.priority,
            wait=args.wait,
            timeout=_timeout(caller, args.timeout),
            check=True,  # a task nobody handles is refused (no_capable_agent), not published to nobody
        )
    except FlockError as exc:
        return Failure.of(exc)
    if isinstance(outcome, str):
        return {"taskId": outcome}
    return {"taskId": outcome.task_id, "result": msgspec.to_builtins(outcome)}


async def _broadcast(
    caller: Caller, args: Broadcast, request_id: Any, progress: ProgressCallback | None
) -> Outcome:
    try:
        await caller.host.broadcast(args.type, args.message, args.data)
    except FlockError as exc:
        return Failure.of(exc)
    return {"delivered": True}


async def _get_supervision_tree(
    caller: Caller, args: GetSupervisionTree, request_id: Any, progress: ProgressCallback | None
) -> Outcome:
    return {"tree": caller.host.system.snapshot()}


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
            _send_message,
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
            _request_capability,
        ),
        Tool(
            "list_agents",
            "The agents of the flock, by status (online, offline, all) and capability.",
            ListAgents,
            _or_failure(_object(["agents"], agents={"type": "array", "items": _AGENT})),
            _list_agents,
        ),
        Tool(
            "get_agent_info",
            "What the flock knows of one agent.",
            GetAgentInfo,
            _or_failure(_object(["agent"], agent=_AGENT)),
            _get_agent_info,
        ),
        Tool(
            "announce_agent",
            "Make this connection an agent of the flock: messages and capability requests for it "
            "arrive as notifications/flock/message; answer them with send_response.",
            AnnounceAgent,
            _or_failure(_object(["agentId", "announced"], agentId=_STRING, announced=_BOOL)),
            _announce_agent,
        ),
        Tool(
            "send_response",
            "Answer a query or capability request this connection's agent received.",
            SendResponse,
            _or_failure(_object(["delivered"], delivered=_BOOL)),
            _send_response,
        ),
        Tool(
            "submit_task",
            "Submit a task; one agent of the flock handles it. With wait, returns its result.",
            SubmitTask,
            _or_failure(_object(["taskId"], taskId=_STRING, result=_ANY)),
            _submit_task,
        ),
        Tool(
            "broadcast",
            "Send a message to every agent of the flock.",
            Broadcast,
            _or_failure(_object(["delivered"], delivered=_BOOL)),
            _broadcast,
        ),
        Tool(
            "get_supervision_tree",
            "The supervision tree of the gateway's process: actors, supervisors, states, restarts.",
            GetSupervisionTree,
            _or_failure(_object(["tree"], tree={"type": "object"})),
            _get_supervision_tree,
        ),
    )
}

_AT = re.compile(r"^(?P<reason>.*) - at `\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")
_TOP = re.compile(r"^[A-Za-z_]+")


def _describe(info: msgspec.inspect.Type, name: str) -> str:
    """What a value of ``info`` is, in words a caller reads (never a Python type name)."""
    if isinstance(info, msgspec.inspect.UnionType):
        choices = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        text = " or ".join(_describe(t, name) for t in choices)
        return f"{text} (or null)" if len(choices) < len(info.types) else text
    if isinstance(info, msgspec.inspect.IntType):
        unit = " number of milliseconds" if name == "timeout" else ""
        if info.ge is not None and info.le is not None:
            return f"an integer{unit} from {info.ge} to {info.le}"
        if info.ge is not None:
            return f"an integer{unit} of at least {info.ge}"
        return f"an integer{unit}"
    if isinstance(info, msgspec.inspect.StrType):
        return "a string"
    if isinstance(info, msgspec.inspect.BoolType):
        return "true or false"
    if isinstance(info, msgspec.inspect.LiteralType):
        return "one of " + ", ".join(f'"{value}"' for value in info.values)
    if isinstance(info, msgspec.inspect.ListType):
        item = _describe(info.item_type, name)
        return "a list of strings" if item == "a string" else f"a list whose items are each {item}"
    if isinstance(info, msgspec.inspect.DictType):
        return "an object"
    return "any JSON value"


def _argument_texts(arguments: type[_Args]) -> dict[str, str]:
    info = msgspec.inspect.type_info(arguments)
    assert isinstance(info, msgspec.inspect.StructType)
    return {field.encode_name: _describe(field.type, field.encode_name) for field in info.fields}


_EXPECTED: Final[dict[str, dict[str, str]]] = {
    name: _argument_texts(tool.arguments) for name, tool in TOOLS.items()
}
"""Per tool, per argument: what the argument must be, for -32602 messages."""


def convert_arguments(tool: Tool, arguments: Any, request_id: Any) -> Any:
    """The tool's argument struct from a call's ``arguments``.

    Raises:
        JsonRpcError: -32602 whose message is a plain sentence naming the argument that is
            missing, unexpected or of the wrong kind, and saying what it must be
            (``send_message: timeout must be an integer number of milliseconds from 0 to
            600000``); ``data.argument`` names it too.
    """
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise JsonRpcError(
            INVALID_PARAMS,
            f"{tool.name}: arguments must be an object of named arguments",
            {"argument": "arguments"},
            request_id,
        )
    try:
        return msgspec.convert(arguments, tool.arguments, strict=True)
    except msgspec.ValidationError as exc:
        expected = _EXPECTED[tool.name]
        match = _AT.match(str(exc))
        reason, path = (match["reason"], match["path"].lstrip(".")) if match else (str(exc), "")
        top = _TOP.match(path)
        if (missing := _MISSING.match(reason)) is not None and not path:
            name = missing["field"]
            message = f"{name} is required: it must be {expected.get(name, 'given')}"
        elif (unknown := _UNKNOWN.match(reason)) is not None and not path:
            name = unknown["field"]
            message = f"{name} is not an argument of this tool (it takes {', '.join(expected)})"
        elif top is not None and top[0] in expected:
            name = top[0]
            message = f"{name} must be {expected[name]}"
        else:  # not reached with the tools' structs; kept plain all the same
            name = path or "arguments"
            message = f"{name} is not valid for this tool"
        raise JsonRpcError(
            INVALID_PARAMS, f"{tool.name}: {message}", data={"argument": name}, request_id=request_id
        ) from None
