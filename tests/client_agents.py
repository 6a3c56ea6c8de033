"""Agents that the client tests run in a flock (``class = "tests.client_agents:Recorder"``)."""

from __future__ import annotations

from typing import Any

from flockrt import Agent, DirectMessage, capability

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
