"""An agent the live-view tests can crash: a direct message ``crash`` fails it (its supervisor
restarts it), anything else is answered. Also a capability, so it has one to show."""

from __future__ import annotations

from typing import Any

from flockrt.agents.agent import Agent, capability
from flockrt.wire.schema import DirectMessage


class Crashy(Agent):
    @capability("echo-back")
    async def echo_back(self, text: str) -> str:
        return text

    async def on_message(self, message: DirectMessage) -> Any:
        if message.message == "crash":
            raise RuntimeError(f"{self.agent_id} was asked to crash")
        return message.message
