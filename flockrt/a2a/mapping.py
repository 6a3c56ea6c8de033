"""What an A2A message asks of the flock, and how a flock result reads in A2A.

Incoming (the flock as a server):

- ``metadata.skill`` names a skill of the Agent Card, that is a capability of the flock; a
  message naming none goes to ``[a2a] default_skill`` (a capability) or
  ``[a2a] default_task_type`` (a task type), else it is refused.
- The parameters are the message's data part (one; for a capability it must be an object); a
  message of text parts only stands for ``{"text": <the text>}`` (for a task type: the text
  itself is the task's data); no parts at all: no parameters. File parts are refused.
- The parameters are checked against the capability's input schema before anything runs (the
  MCP gateway's check, :meth:`~flockrt.mcp.capabilities.CapabilityTools.check`).

Outgoing (a result): a string is a text part, anything else a data part.

``google.protobuf.Value``, which carries data parts, keeps every number as a double: whole
numbers are turned back into ints on the way in (``{"n": 3}`` arrives as ``3``, not ``3.0``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from a2a.types import Artifact, Message, Part
from a2a.utils.errors import InvalidParamsError
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict, ParseDict

from flockrt.errors import JsonRpcError
from flockrt.mcp.capabilities import CapabilityTools, tool_name

__all__ = [
    "SKILL_KEY",
    "Route",
    "artifacts_result",
    "metadata_of",
    "parts_of",
    "result_of",
    "route_of",
    "whole",
]

SKILL_KEY = "skill"
"""The message metadata key that names the skill (capability) to run."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where one A2A message goes in the flock.

    Attributes:
        kind: ``capability`` (request_capability) or ``task`` (submit and wait).
        name: The capability or task type.
        parameters: The capability's parameters, or the task's data.
    """

    kind: Literal["capability", "task"]
    name: str
    parameters: Any


def whole(value: Any) -> Any:
    """``value`` with every float that is a whole number turned into an int (recursively)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: whole(item) for key, item in value.items()}
    if isinstance(value, list):
        return [whole(item) for item in value]
    return value


def _content(parts: Sequence[Part]) -> tuple[list[Any], list[str]]:
    """The data parts' values and the text parts' texts; raises for any other part."""
    data: list[Any] = []
    texts: list[str] = []
    for i, part in enumerate(parts):
        kind = part.WhichOneof("content")
        if kind == "data":
            data.append(whole(MessageToDict(part.data)))
        elif kind == "text":
            texts.append(part.text)
        else:
            raise InvalidParamsError(
                message=f"part {i} is a {kind or 'empty'} part: send parameters as one data part "
                "(a JSON object), or text"
            )
    return data, texts


def route_of(
    message: Message, tools: CapabilityTools, *, default_skill: str = "", default_task_type: str = ""
) -> Route:
    """Where ``message`` goes and with which parameters (see the module's docstring).

    Raises:
        InvalidParamsError: no skill named and no default configured, an unknown skill, a
            metadata ``skill`` that is no string, file parts, several data parts, or
            parameters that do not fit the capability (the message names the parameter).
    """
    metadata = MessageToDict(message.metadata) if message.HasField("metadata") else {}
    skill = metadata.get(SKILL_KEY)
    if skill is not None and not isinstance(skill, str):
        raise InvalidParamsError(
            message="metadata.skill must be a string: the id of a skill of the agent card"
        )
    data, texts = _content(message.parts)
    if len(data) > 1:
        raise InvalidParamsError(message=f"{len(data)} data parts: send the parameters as one data part")
    if not skill and default_task_type:
        task_data = data[0] if data else "\n".join(texts) if texts else None
        return Route("task", default_task_type, task_data)
    skill = skill or default_skill
    if not skill:
        raise InvalidParamsError(
            message='name a skill in the message\'s metadata ({"skill": "<id>"}; the agent card lists '
            "them), or configure [a2a] default_skill or default_task_type"
        )
    offered = tools.offered()
    if skill not in offered:
        known = ", ".join(sorted(offered)[:20]) or "none right now"
        raise InvalidParamsError(
            message=f"unknown skill {skill!r}: no agent of the flock offers it (skills: {known})"
        )
    parameters = data[0] if data else {"text": "\n".join(texts)} if texts else {}
    try:
        tools.check(tool_name(skill), parameters, None)
    except JsonRpcError as exc:
        raise InvalidParamsError(message=exc.message, data=exc.data) from None
    return Route("capability", skill, parameters)


def parts_of(result: Any) -> list[Part]:
    """A flock result as A2A parts: a string is a text part, anything else a data part."""
    if isinstance(result, str):
        return [Part(text=result, media_type="text/plain")]
    return [Part(data=ParseDict(_plain(result), struct_pb2.Value()), media_type="application/json")]


def _plain(value: Any) -> Any:
    """JSON-able builtins (a Struct result, a tuple, ...) for ``google.protobuf.Value``."""
    return msgspec.to_builtins(value)


def result_of(parts: Sequence[Part]) -> Any:
    """A remote agent's answer (an artifact's or a message's parts) as a flock result: the one
    data part's value, or the text of text parts; several data parts are a list of values.

    Raises:
        InvalidParamsError: a file part (a proxy cannot hand it on as a value).
    """
    data, texts = _content(parts)
    if data and not texts:
        return data[0] if len(data) == 1 else data
    if texts and not data:
        return "\n".join(texts)
    return [*data, *texts] if data or texts else None


def artifacts_result(artifacts: Sequence[Artifact]) -> Any:
    """The result of a finished remote task: its artifacts' parts, read by :func:`result_of`."""
    parts = [part for artifact in artifacts for part in artifact.parts]
    return result_of(parts)


def metadata_of(values: Mapping[str, Any]) -> struct_pb2.Struct:
    """A ``google.protobuf.Struct`` for message or artifact metadata."""
    struct = struct_pb2.Struct()
    struct.update(_plain(dict(values)))
    return struct
