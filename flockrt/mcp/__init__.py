"""The MCP gateway: JSON-RPC sessions over WebSocket and Streamable HTTP, the flock's tools and
resources, outside agents, and who may use them. :mod:`flockrt.web` mounts it on the aiohttp app."""

from flockrt.mcp.agent import AgentDisconnected, OutsideAgent
from flockrt.mcp.auth import Forbidden, GatewayConfigError, Principal, Unauthorized
from flockrt.mcp.gateway import Gateway
from flockrt.mcp.protocol import JsonRpcError

__all__ = [
    "AgentDisconnected",
    "Forbidden",
    "Gateway",
    "GatewayConfigError",
    "JsonRpcError",
    "OutsideAgent",
    "Principal",
    "Unauthorized",
]
