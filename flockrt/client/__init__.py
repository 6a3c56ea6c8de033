"""FlockClient: the Python client of the MCP gateway (JSON-RPC over WebSocket, reconnects, and a
NATS fallback behind a circuit breaker)."""

from flockrt.client.client import FlockClient

__all__ = ["FlockClient"]
