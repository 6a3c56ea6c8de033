"""Where a running flock is, for the operator commands: the flags, else the flock's config
(``--config`` or ``$FLOCKRT_CONFIG``), else the defaults.

The gateway's URL comes from ``--url``, else the config's ``[mcp]`` host and port (with the
environment overrides a flock started from it would see: ``MCP_PORT`` and the like), else
``ws://127.0.0.1:$MCP_PORT/mcp``. The token from ``--token``, else ``$FLOCKRT_TOKEN``, else the
config's first ``[mcp.auth] tokens``. The NATS URL (``--nats``: where a command that can
falls back when the gateway is down) from the flag, else the config's ``[nats]`` section.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from flockrt.errors import ConfigError

__all__ = ["CONFIG_VARIABLE", "Endpoint", "default_url", "resolve"]

CONFIG_VARIABLE = "FLOCKRT_CONFIG"
"""The environment variable naming the flock's config when ``--config`` does not."""


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom an operator command talks to the flock."""

    url: str
    """The gateway's ``ws://host:port/mcp``."""
    base: str
    """Its HTTP listener, ``http://host:port`` (for /healthz and /readyz)."""
    token: str | None
    nats: str | None


def default_url() -> str:
    """The gateway's endpoint when nothing names it: ws://127.0.0.1:$MCP_PORT/mcp."""
    return f"ws://127.0.0.1:{os.environ.get('MCP_PORT', '4002')}/mcp"


def _loopback(host: str) -> str:
    # A listener bound to every interface is reached on loopback from this machine.
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"[{host}]" if ":" in host else host


def resolve(args: argparse.Namespace) -> Endpoint:
    """The endpoint of an operator command's arguments (``url``, ``token``, ``config`` and,
    where the command has it, ``nats``).

    Raises:
        ConfigError: the config cannot be read or is invalid, has no gateway (no ``[mcp]``
            section) when the URL must come from it, or has ``port = 0`` there (a free port,
            unknown from outside: give ``--url``).
    """
    path = getattr(args, "config", None) or os.environ.get(CONFIG_VARIABLE) or None
    url: str | None = getattr(args, "url", None)
    token: str | None = getattr(args, "token", None) or os.environ.get("FLOCKRT_TOKEN") or None
    nats: str | None = getattr(args, "nats", None)
    base: str | None = None
    if path is not None:
        from flockrt.config import load_config

        config = load_config(path)
        mcp = config.mcp
        listener = mcp if mcp is not None else config.metrics
        if listener is not None and listener.port != 0:
            base = f"http://{_loopback(listener.host)}:{listener.port}"
        if url is None:
            if mcp is None:
                raise ConfigError(
                    f"{path}: no [mcp] section (or MCP_ENABLED=false): the flock has no gateway"
                )
            if mcp.port == 0:
                raise ConfigError(f"{path}: [mcp] port = 0 picks a free port; give --url instead")
            url = f"ws://{_loopback(mcp.host)}:{mcp.port}/mcp"
        if token is None and mcp is not None and mcp.auth.tokens:
            token = mcp.auth.tokens[0]
        if nats is None and hasattr(args, "nats") and config.nats is not None:
            nats = _nats_url(config.nats.url, config.nats.port)
    url = url or default_url()
    if base is None:
        base = url.replace("ws", "http", 1).rsplit("/mcp", 1)[0] if url.startswith("ws") else url
    return Endpoint(url=url, base=base.rstrip("/"), token=token, nats=nats)


def _nats_url(url: str, port: int) -> str | None:
    """The NATS URL a client outside the flock uses: an embedded server's on loopback (None on
    a free port, which cannot be known from here), else the configured one."""
    if url == "embedded":
        return f"nats://127.0.0.1:{port}" if port else None
    return url
