"""The flock's Agent Card: one skill per capability offered anywhere in the flock.

A skill's id and name are the capability; its description the handler's docstring (as the
agents announce it); its tags ``flockrt`` and ``capability``; its example a message's data part
with the required parameters; its input modes ``application/json`` (and ``text/plain`` when the
capability takes a ``text`` parameter, which a lone text part fills).

A2A 1.0 has no field for a skill's input schema, so the schemas travel in the card's one
extension, :data:`SCHEMAS_EXTENSION` (not required): its ``params`` map each skill id to the
JSON Schema of its parameters, the MCP tool's ``inputSchema``.

The card follows the directory: it is rebuilt when the capabilities change (the MCP gateway's
:class:`~flockrt.mcp.capabilities.CapabilityTools` notices that), and kept encoded otherwise.
"""

from __future__ import annotations

import json
from typing import Any

from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentExtension,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)
from a2a.utils.constants import PROTOCOL_VERSION_1_0

from flockrt._version import __version__
from flockrt.a2a.mapping import metadata_of
from flockrt.agents.params import plain
from flockrt.config import AuthConfig
from flockrt.mcp.capabilities import PERMISSIVE, CapabilityTools
from flockrt.wire.schema import CapabilitySchema

__all__ = ["CARD_PATH", "RPC_PATH", "SCHEMAS_EXTENSION", "CardBuilder"]

CARD_PATH = "/.well-known/agent-card.json"
RPC_PATH = "/a2a"
"""Where the JSON-RPC interface is served, on the gateway's app."""
SCHEMAS_EXTENSION = "urn:flockrt:a2a:skill-input-schemas:v1"
"""The card extension whose ``params`` hold each skill's input JSON Schema."""
BEARER = "bearer"
"""The name of the card's one security scheme, when the gateway checks tokens."""


def _skill(capability: str, schema: CapabilitySchema | None) -> tuple[AgentSkill, dict[str, Any]]:
    input_schema = plain(schema.input_schema) if schema is not None and schema.input_schema else PERMISSIVE
    properties = input_schema.get("properties") or {}
    example = {
        key: f"<{(properties.get(key) or {}).get('type', 'value')}>"
        for key in input_schema.get("required") or ()
    }
    modes = (
        ["application/json", "text/plain"] if "text" in properties or not properties else ["application/json"]
    )
    described = schema.description if schema is not None else None
    skill = AgentSkill(
        id=capability,
        name=capability,
        description=described or f"The flock capability {capability!r} (its parameters are not described).",
        tags=["flockrt", "capability"],
        examples=[json.dumps({"metadata": {"skill": capability}, "data": example})],
        input_modes=modes,
        output_modes=["application/json", "text/plain"],
    )
    return skill, input_schema


class CardBuilder:
    """Builds (and caches) the flock's card for a base URL.

    Args:
        name: ``[runtime] name``: the card's name.
        tools: The gateway's capability tools (which capabilities the flock offers, with schemas).
        auth: ``[mcp.auth]``: with tokens or a JWT secret, the card declares a bearer scheme.
        public_url: The gateway's URL as clients reach it ("" = the request's own origin).
    """

    def __init__(self, name: str, tools: CapabilityTools, auth: AuthConfig, public_url: str = "") -> None:
        self._name = name
        self._tools = tools
        self._auth = auth
        self._public_url = public_url.rstrip("/")
        self._cached: dict[str, bytes] = {}
        self._version = -1

    def card(self, origin: str) -> AgentCard:
        """The card as served to a client that reached the gateway at ``origin``."""
        offered = self._tools.offered()
        skills, schemas = [], {}
        for capability in sorted(offered):
            skill, schema = _skill(capability, offered[capability])
            skills.append(skill)
            schemas[capability] = schema
        base = self._public_url or origin
        card = AgentCard(
            name=self._name,
            description=f"The flockrt flock {self._name!r}: each skill is a capability of its agents; "
            'name it in the message\'s metadata ({"skill": "<id>"}) and send its parameters as a data part.',
            version=__version__,
            supported_interfaces=[
                AgentInterface(
                    url=base + RPC_PATH, protocol_binding="JSONRPC", protocol_version=PROTOCOL_VERSION_1_0
                )
            ],
            capabilities=AgentCapabilities(
                streaming=True,
                push_notifications=False,
                extensions=[
                    AgentExtension(
                        uri=SCHEMAS_EXTENSION,
                        description="params: the input JSON Schema of each skill, by skill id",
                        required=False,
                        params=metadata_of(schemas),
                    )
                ],
            ),
            default_input_modes=["application/json", "text/plain"],
            default_output_modes=["application/json", "text/plain"],
            skills=skills,
        )
        if self._auth.tokens or self._auth.jwt_secret:
            card.security_schemes[BEARER].CopyFrom(
                SecurityScheme(
                    http_auth_security_scheme=HTTPAuthSecurityScheme(
                        scheme="Bearer",
                        bearer_format="JWT" if self._auth.jwt_secret else "",
                        description="the MCP gateway's tokens ([mcp.auth])",
                    )
                )
            )
            card.security_requirements.append(SecurityRequirement(schemes={BEARER: StringList()}))
        return card

    def encoded(self, origin: str) -> bytes:
        """:meth:`card` as JSON, built once per set of capabilities and origin."""
        self._tools.refresh()
        if self._tools.version != self._version:
            self._cached.clear()
            self._version = self._tools.version
        body = self._cached.get(origin)
        if body is None:
            if len(self._cached) >= 16:  # a few names reach the gateway; a flood of Hosts does not grow it
                self._cached.clear()
            body = json.dumps(agent_card_to_dict(self.card(origin))).encode()
            self._cached[origin] = body
        return body
