"""The NATS bus: wire schemas, subjects, the connection adapter, and an embedded nats-server.

Only the adapter module imports ``nats``; everything here is importable without it.
"""

from flockrt.bus.embedded import EmbeddedNats, NatsServerError, NatsServerNotFound, find_nats_server

__all__ = ["EmbeddedNats", "NatsServerError", "NatsServerNotFound", "find_nats_server"]
