"""Every capability offered anywhere in the flock as an MCP tool of its own.

An LLM host sees ``text-analysis`` as a tool it can call directly, with the JSON Schema of the
handler's parameters and its docstring, instead of having to know to call ``request_capability``
with the right ``parameters``. The schema and description come from the agents' announcements
(``capabilitySchemas``, which local agents build from their handlers' type hints and docstrings);
a capability nobody described (an outside agent's, an older peer's) gets a permissive object
schema.

Names: a capability that is already a valid MCP tool name (letters, digits, ``_``, ``-``) and is
not one of the flock's own tools is its own tool name. Any other is ``cap.`` followed by the
capability with each other character written ``.<hex code point>.``: a capability never contains
a dot (it is a NATS subject token), so names with a dot are exactly the escaped ones and the
mapping is stable and collision-free. A name that would exceed 128 characters is ``cap.h.`` and
a SHA-256 prefix of the capability. :class:`CapabilityTools` keeps the reverse map.

A call is routed exactly like ``request_capability`` (local agents first, the least loaded,
the gateway's default timeout, progress, cancellation) after its arguments are checked against
the schema: a missing, unexpected or mistyped argument is a -32602 naming it, in the words of
:class:`~flockrt.agents.params.Parameters`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import msgspec

from flockrt.agents.params import plain
from flockrt.errors import FlockError, InvalidParameters, JsonRpcError
from flockrt.mcp.protocol import INVALID_PARAMS
from flockrt.mcp.tools import FAILURE_SCHEMA, TOOLS, Caller, Failure, Outcome
from flockrt.wire.failures import FailureKind

if TYPE_CHECKING:
    from flockrt.agents.work import ProgressCallback
    from flockrt.flock.directory import Directory
    from flockrt.wire.schema import CapabilitySchema

__all__ = ["CapabilityTools", "call_capability", "tool_name"]

PREFIX: Final = "cap."
_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_SAFE_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
PERMISSIVE: Final[dict[str, Any]] = {"type": "object", "additionalProperties": True}
"""The input schema of a capability nobody described: any object of parameters."""

_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}
_WORDS: Final = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "an array",
    "object": "an object",
    "null": "null",
}


def tool_name(capability: str) -> str:
    """The MCP tool name of ``capability`` (see the module's docstring)."""
    if _SAFE.match(capability) and capability not in TOOLS:
        return capability
    name = PREFIX + "".join(c if c in _SAFE_CHARS else f".{ord(c):x}." for c in capability)
    if len(name) > 128:
        name = f"{PREFIX}h.{hashlib.sha256(capability.encode()).hexdigest()[:40]}"
    return name


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _fits(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[kind])


class CapabilityTools:
    """The capability tools of the flock as this process's directory knows them.

    The listing is rebuilt only when what the online agents offer changed: :meth:`touch` (on
    every directory change) marks it stale, :meth:`refresh` recomputes which capabilities are
    offered with which schema and bumps :attr:`version` when that changed.

    Args:
        directory: The directory of this process.
        node: This process's node (its agents' schemas are preferred).
        base: The flock's own tools' listing, listed first.
    """

    def __init__(self, directory: Directory, node: str | None, base: list[dict[str, Any]]) -> None:
        self._directory = directory
        self._node = node
        self._base = base
        self._stale = True
        self._offered: dict[str, CapabilitySchema | None] = {}
        self._listing: list[dict[str, Any]] = list(base)
        self._by_name: dict[str, str] = {}
        self._schemas: dict[str, dict[str, Any]] = {}
        self._encoded: msgspec.Raw | None = None
        self.version = 0
        """Bumped each time the set of capability tools (or a schema) changes."""

    def touch(self) -> None:
        """The directory changed: recompute on the next :meth:`refresh`."""
        self._stale = True

    def refresh(self) -> None:
        """Bring the tools up to date with the online agents (nothing if nothing changed)."""
        if not self._stale:
            return
        self._stale = False
        agents = self._directory.list("online")
        agents.sort(key=lambda info: info.node != self._node)  # stable: this node's first, by id
        offered: dict[str, CapabilitySchema | None] = {}
        for info in agents:
            schemas = info.capability_schemas or {}
            for capability in info.capabilities:
                if offered.get(capability) is None:
                    offered[capability] = schemas.get(capability)
        if offered == self._offered:
            return
        self._offered = offered
        listing = list(self._base)
        by_name: dict[str, str] = {}
        schemas_by_name: dict[str, dict[str, Any]] = {}
        for capability in sorted(offered):
            name = tool_name(capability)
            entry = _listing(name, capability, offered[capability])
            by_name[name] = capability
            schemas_by_name[name] = entry["inputSchema"]
            listing.append(entry)
        self._listing, self._by_name, self._schemas = listing, by_name, schemas_by_name
        self._encoded = None
        self.version += 1

    def offered(self) -> Mapping[str, CapabilitySchema | None]:
        """Each capability offered in the flock with its schema (None: nobody described it);
        the A2A agent card's skills."""
        self.refresh()
        return self._offered

    def listing(self) -> list[dict[str, Any]]:
        """The ``tools/list`` answer: the flock's tools, then one per capability."""
        self.refresh()
        return self._listing

    def encoded(self) -> msgspec.Raw:
        """:meth:`listing` as JSON, encoded once per change (a thousand tools are half a
        megabyte: encoding them for every tools/list would be most of its cost)."""
        self.refresh()
        if self._encoded is None:
            self._encoded = msgspec.Raw(msgspec.json.encode(self._listing))
        return self._encoded

    def capability(self, name: str) -> str | None:
        """The capability tool ``name`` stands for, or None."""
        self.refresh()
        return self._by_name.get(name)

    def check(self, name: str, arguments: Any, request_id: Any) -> dict[str, Any]:
        """The arguments of a call of capability tool ``name``, checked against its schema.

        Raises:
            JsonRpcError: -32602 naming the argument that is unexpected, missing or of the
                wrong type (``data.argument`` names it too).
        """
        capability = self._by_name[name]
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise _invalid(
                name, "arguments", f"{capability}: arguments must be an object of named arguments", request_id
            )
        schema = self._schemas[name]
        properties: Mapping[str, Any] = schema.get("properties") or {}
        takes = ", ".join(properties) or "no parameters"
        required = schema.get("required") or ()
        if schema.get("additionalProperties") is False:
            for key in arguments:
                if key not in properties:
                    text = f"{capability} has no parameter {key!r} (it takes: {takes})"
                    raise _invalid(name, str(key), text, request_id)
        for key in required:
            if key not in arguments:
                raise _invalid(
                    name, key, f"{capability} needs parameter {key!r} (it takes: {takes})", request_id
                )
        for key, value in arguments.items():
            prop = properties.get(key)
            kind = prop.get("type") if isinstance(prop, dict) else None
            if value is None and key not in required:
                continue  # an optional parameter left out in so many words
            if isinstance(kind, str) and kind in _TYPES and not _fits(value, kind):
                got = _WORDS[_json_type(value)]
                text = f"parameter {key!r} of {capability} must be {_WORDS[kind]}, not {got}"
                raise _invalid(name, key, text, request_id)
            choices = prop.get("enum") if isinstance(prop, dict) else None
            if isinstance(choices, list) and value not in choices:
                listed = ", ".join(repr(choice) for choice in choices)
                text = f"parameter {key!r} of {capability} must be one of {listed}, not {value!r:.64}"
                raise _invalid(name, key, text, request_id)
        return arguments


def _invalid(name: str, argument: str, text: str, request_id: Any) -> JsonRpcError:
    return JsonRpcError(INVALID_PARAMS, f"{name}: {text}", {"argument": argument}, request_id)


def _listing(name: str, capability: str, schema: CapabilitySchema | None) -> dict[str, Any]:
    described = schema.description if schema is not None else None
    entry: dict[str, Any] = {
        "name": name,
        "title": capability,
        "description": described
        or f"The flock capability {capability!r} (its parameters are not described).",
        "inputSchema": plain(schema.input_schema)
        if schema is not None and schema.input_schema
        else PERMISSIVE,
    }
    output = schema.output_schema if schema is not None else None
    if output:
        result = plain(output)
        defs = result.pop("$defs", None)
        wrapped: dict[str, Any] = {
            "type": "object",
            "anyOf": [
                {"type": "object", "properties": {"result": result}, "required": ["result"]},
                FAILURE_SCHEMA,
            ],
        }
        if defs:
            wrapped["$defs"] = defs
        entry["outputSchema"] = wrapped
    return entry


async def call_capability(
    caller: Caller,
    arguments: dict[str, Any],
    request_id: Any,
    progress: ProgressCallback | None,
    *,
    name: str,
) -> Outcome:
    """Capability tool ``name``'s call: its capability requested like ``request_capability``
    does, answered with ``{"result": ...}``.

    Raises:
        JsonRpcError: -32602 when the handler's own check refused the parameters.
    """
    host = caller.host
    capability = host.capability_tools.capability(name)
    if capability is None:  # went away between the check and now
        return Failure(
            FailureKind.NO_CAPABLE_AGENT, f"no agent offers the capability of tool {name} any more"
        )
    try:
        response = await host.flock.request_capability_response(
            capability, arguments, timeout=host.config.timeout / 1000, progress=progress
        )
    except InvalidParameters as exc:
        raise _invalid(name, exc.parameter or "arguments", str(exc), request_id) from None
    except FlockError as exc:
        return Failure.of(exc)
    return {"result": response.result}
