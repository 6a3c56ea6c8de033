"""Every message that crosses a process boundary: the AI Flock wire contract as msgspec Structs.

Field names on the wire are camelCase (``taskId``, ``maxConcurrentTasks``), timestamps are
ISO-8601 UTC, and unknown extra fields are ignored, so JSON peers written in any language
interoperate unchanged. JSON is the default encoding; a message that carries the header
``Content-Type: application/msgpack`` is msgpack instead.

Schema evolution: add fields with defaults at the end of a struct; never reorder, rename or
retype one (msgspec's schema-evolution rules).

Receivers decode with :class:`Codec`, which turns every kind of bad input (invalid JSON, wrong
types, missing fields, oversize payloads) into :class:`InvalidMessage` naming the subject and the
field, so a subscription can count it, log it and carry on.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias, TypeVar

import msgspec

from flockrt.errors import InvalidMessage

__all__ = [
    "MAX_DEPTH",
    "MSGPACK",
    "AgentAnnouncement",
    "CapabilitySchema",
    "AgentEvent",
    "BatchItem",
    "Broadcast",
    "CapabilityRequest",
    "CapabilityResponse",
    "Codec",
    "DirectMessage",
    "DiscoveryRequest",
    "Heartbeat",
    "InvalidMessage",
    "Priority",
    "TaskBatchItem",
    "TaskMessage",
    "TaskResult",
    "utcnow",
]

MSGPACK: Final = "application/msgpack"
"""The Content-Type header value that selects msgpack instead of JSON."""

Priority: TypeAlias = Literal["low", "medium", "high"]

T = TypeVar("T")


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (encoded as ISO-8601 with ``Z``)."""
    return datetime.now(UTC)


class _Wire(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Base of wire structs: camelCase names; every field is always written (null when unset),
    so peers see the documented shape."""


class TaskMessage(_Wire, frozen=True, kw_only=True, gc=False):
    """A unit of work on ``tasks.<type>``, handled once across the flock (queue group)."""

    id: str
    type: str
    data: Any = None
    priority: Priority = "medium"
    requester: str | None = None
    timeout: int | None = None
    """Milliseconds the requester is prepared to wait."""
    metadata: dict[str, Any] | None = None


class TaskResult(_Wire, frozen=True, kw_only=True, gc=False):
    """The outcome of a task, on ``task.result`` (and the task's reply subject, if any)."""

    task_id: str
    result: Any = None
    processed_by: str
    status: Literal["ok", "error"] = "ok"
    error: str | None = None
    duration_ms: float = 0.0
    error_type: str | None = None
    """``errorType``: the class of the exception behind ``error`` (a flockrt addition; other
    peers may omit it). ``error`` is a sentence for people; programs branch on this."""


class CapabilitySchema(_Wire, frozen=True, kw_only=True):
    """One capability as an MCP tool shows it: JSON Schemas of its parameters and result."""

    description: str | None = None
    input_schema: dict[str, Any] | None = None
    """A JSON Schema of the parameters object (None: any object)."""
    output_schema: dict[str, Any] | None = None
    """A JSON Schema of the result (None: untyped)."""


class AgentAnnouncement(_Wire, frozen=True, kw_only=True):
    """An agent saying it is here, on ``agent.announce``."""

    id: str
    name: str
    capabilities: list[str] = msgspec.field(default_factory=list)
    max_concurrent_tasks: int | None = None
    timestamp: datetime = msgspec.field(default_factory=utcnow)
    node: str | None = None
    """The flockrt process the agent lives in (a flockrt addition; other peers may omit it)."""
    capability_schemas: dict[str, CapabilitySchema] | None = None
    """What each capability takes, returns and does, by capability (a flockrt addition, on the
    wire ``capabilitySchemas``; peers that omit it, or a capability it leaves out, are offered
    as MCP tools with a permissive schema)."""


class DiscoveryRequest(_Wire, frozen=True, kw_only=True):
    """A process asking every agent to announce itself again, on ``agent.discover``.

    A flockrt addition: AI Flock agents announce once, when they start, so a process that joins
    a running flock would otherwise know the agents that started before it by their heartbeats
    only, without their capabilities.
    """

    requester: str
    """The node asking (it ignores its own request)."""
    timestamp: datetime = msgspec.field(default_factory=utcnow)


class Heartbeat(_Wire, frozen=True, kw_only=True):
    """An agent's periodic sign of life, on ``agent.<id>.heartbeat``."""

    agent_id: str
    status: str = "online"
    timestamp: datetime = msgspec.field(default_factory=utcnow)
    uptime: int = 0
    """Milliseconds since the agent started."""
    tasks_processed: int = 0
    load: float | None = None
    """Running tasks / max concurrent tasks (a flockrt addition)."""


class AgentEvent(_Wire, frozen=True, kw_only=True):
    """An event addressed to one agent, on ``agent.<id>.events``."""

    type: str
    data: Any = None


class Broadcast(_Wire, frozen=True, kw_only=True):
    """A message for every agent, on ``broadcast``."""

    type: str
    message: Any = None
    data: Any = None


class DirectMessage(_Wire, frozen=True, kw_only=True):
    """A message from one agent to another, on ``agent.<to>.inbox``.

    ``type`` is ``command``, ``query`` (answered with a ``response`` carrying the same
    correlation id) or ``response``; other types are passed to the agent's handlers as they are.
    """

    id: str
    sender: str = msgspec.field(name="from")
    to: str
    message: Any = None
    type: str = "command"
    metadata: dict[str, Any] | None = None
    correlation_id: str | None = None


class CapabilityRequest(_Wire, frozen=True, kw_only=True):
    """A request for whoever can do ``capability``, on ``capability.<name>`` (request/reply)."""

    capability: str
    parameters: Any = None
    requester: str = ""
    timeout: int = 30000
    """Milliseconds."""
    correlation_id: str | None = None


class CapabilityResponse(_Wire, frozen=True, kw_only=True):
    """The answer to a CapabilityRequest."""

    correlation_id: str | None = None
    result: Any = None
    agent_id: str = ""
    error: str | None = None
    error_type: str | None = None
    """``errorType``: the class of the exception behind ``error`` (as on TaskResult)."""


class BatchItem(_Wire, frozen=True, kw_only=True):
    """One message of a ``batch.messages`` array: the subject it stands for and its payload."""

    subject: str
    message: Any


class TaskBatchItem(_Wire, frozen=True, kw_only=True):
    """A ``batch.messages`` item read as a task: how a batch of tasks alone (what
    ``submit_many`` sends) is decoded in one pass; any other batch is read as BatchItems."""

    subject: str
    message: TaskMessage


MAX_DEPTH: Final = 500
"""Nesting depth of arrays and objects that every receiver accepts (documented in
docs/flock.md, "Limits"). Deeper payloads may still decode, up to msgspec's own limit (the
interpreter's recursion limit less the stack in use, about 1,000 levels); past it they are
rejected as :data:`_TOO_DEEP`."""

_TOO_DEEP = f"nested too deeply (keep arrays and objects within {MAX_DEPTH} levels)"

_AT = re.compile(r"^(?P<reason>.*) - at `\$(?P<path>[^`]*)`$")


class Codec:
    """Encoders and decoders built once and reused (msgspec's fast path).

    Every decode failure, whatever msgspec raises (a validation error, malformed JSON or
    msgpack, a payload nested past the recursion limit), comes out as :class:`InvalidMessage`.

    Args:
        max_bytes: Payloads larger than this are rejected before decoding (default 1 MiB,
            NATS's default max_payload).
    """

    def __init__(self, max_bytes: int = 1024 * 1024) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._json_encoder = msgspec.json.Encoder()
        self._msgpack_encoder = msgspec.msgpack.Encoder()
        self._json_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
        self._msgpack_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}

    def encode(self, message: Any, *, msgpack: bool = False) -> bytes:
        """Encode a wire struct (or a list of them, or any msgspec-encodable value)."""
        return self._msgpack_encoder.encode(message) if msgpack else self._json_encoder.encode(message)

    def decode(self, subject: str, data: bytes, type: type[T], content_type: str | None = None) -> T:
        """Decode ``data`` that arrived on ``subject`` as ``type``.

        Raises:
            InvalidMessage: oversize, malformed, or not matching ``type``; it names the field.
        """
        if len(data) > self.max_bytes:
            raise InvalidMessage(subject, None, f"{len(data)} bytes is over the {self.max_bytes} byte limit")
        msgpack = content_type == MSGPACK
        decoder = (
            self._decoder(type, True)
            if msgpack
            else (self._json_decoders.get(type) or self._decoder(type, False))
        )
        try:
            result: T = decoder.decode(data)
        except msgspec.ValidationError as exc:
            match = _AT.match(str(exc))
            path, reason = (match["path"].lstrip("."), match["reason"]) if match else ("", str(exc))
            field, reason = _field_and_reason(path, reason)
            raise InvalidMessage(subject, field, reason) from None
        except msgspec.DecodeError as exc:
            kind = "msgpack" if msgpack else "JSON"
            raise InvalidMessage(subject, None, f"not valid {kind}: {exc}") from None
        except RecursionError:
            # msgspec's own depth limit: the interpreter's recursion limit, less the stack in use
            # (about 1,000 levels by default). Caught here, where it is raised anyway: scanning
            # every payload for its depth first would cost the hot path.
            raise InvalidMessage(subject, None, _TOO_DEEP) from None
        except (ValueError, TypeError, OverflowError) as exc:  # any other way a payload can fail
            raise InvalidMessage(subject, None, f"cannot be decoded: {exc}") from None
        return result

    def json_decoder(self, type: type[T]) -> msgspec.json.Decoder[T]:
        """The JSON decoder of ``type`` (built once): for a caller that checks the size itself
        and, on any failure, calls :meth:`decode` for the error that names the field."""
        decoder: msgspec.json.Decoder[T] = self._decoder(type, False)
        return decoder

    def _decoder(self, type: Any, msgpack: bool) -> Any:
        cache: dict[Any, Any] = self._msgpack_decoders if msgpack else self._json_decoders
        decoder = cache.get(type)
        if decoder is None:
            decoder = cache[type] = (msgspec.msgpack.Decoder if msgpack else msgspec.json.Decoder)(type)
        return decoder


_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")


def _field_and_reason(path: str, reason: str) -> tuple[str | None, str]:
    """msgspec reports a missing field at its parent object; name the field itself."""
    missing = _MISSING.match(reason)
    if missing is not None:
        name = missing["field"]
        return (f"{path}.{name}" if path else name), "required field is missing"
    return (path or None), reason[:1].lower() + reason[1:]
