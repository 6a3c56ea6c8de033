"""What the client tests share: agents they run in a flock (``class =
"tests.client_support:Recorder"``), flock configs, and a URL where no gateway listens."""

from __future__ import annotations

import socket
from typing import Any

import msgspec

from flockrt import Agent, DirectMessage, capability
from flockrt.config import FlockConfig

RECEIVED: list[DirectMessage] = []
"""Every direct message a Recorder received (tests clear it first)."""


class Recorder(Agent):
    """Keeps the direct messages it gets; answers queries and the ``upper`` capability."""

    @capability("upper")
    async def upper(self, text: str) -> str:
        return text.upper()

    @capability("explode")
    async def explode(self, **parameters: Any) -> None:
        raise RuntimeError("exploding on purpose")

    async def on_message(self, message: DirectMessage) -> Any:
        RECEIVED.append(message)
        return {"to": self.agent_id, "got": message.message, "from": message.sender}


def dead_url() -> str:
    """A ws:// URL on a local port nobody listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ws://127.0.0.1:{port}/mcp"


def agents_flock_config(*, agents: bool = True, name: str = "test-flock", **sections: Any) -> FlockConfig:
    """A flock of two agents, ``rec`` (a Recorder) and ``echo`` (prefix "echo: "), or none
    without ``agents``, plus the given sections (``nats={"url": ...}``, ``mcp={"port": 0}``)."""
    members = [
        {"id": "rec", "class": "tests.client_support:Recorder"},
        {"id": "echo", "class": "echo", "options": {"prefix": "echo: "}},
    ]
    config = {"runtime": {"name": name, "shutdown_timeout": 5.0}, "agents": members if agents else []}
    return msgspec.convert({**config, **sections}, FlockConfig)
