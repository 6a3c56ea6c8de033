"""How the NATS connection names the server it uses, for logs and ``/readyz``.

nats-py knows the URL it connected to (``connected_url``), the server's version and, from the
server's INFO, its name; its own logs and the connection's options print the whole URL list, so
a failover to another server of a cluster would go unseen. :func:`server_of` puts the three
together: ``n2 (2.10.22) at nats://10.0.0.2:4222``.
"""

from __future__ import annotations

from nats.aio.client import Client

__all__ = ["in_cluster", "server_of"]


def server_of(nc: Client) -> str:
    """The server ``nc`` is connected to: its name, version and URL (without credentials)."""
    url = nc.connected_url
    where = f"{url.scheme}://{url.hostname}:{url.port}" if url is not None else "an unknown address"
    info = nc._server_info
    name = info.get("server_name") or info.get("server_id") or "nats-server"
    version = info.get("version") or "unknown version"
    return f"{name} ({version}) at {where}"


def in_cluster(nc: Client) -> bool:
    """Whether the server ``nc`` is connected to is one of a cluster: its INFO (read at every
    connect) names a cluster, or lists other servers' client URLs (``connect_urls``)."""
    info = nc._server_info
    return bool(info.get("cluster") or info.get("connect_urls"))
