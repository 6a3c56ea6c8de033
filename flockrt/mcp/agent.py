"""OutsideAgent: the proxy actor of an agent that lives at the other end of an MCP connection.

A connection that calls ``announce_agent`` gets one, started under the gateway's supervisor.
To the flock it is an agent like any other (announced, heartbeating, reachable by direct
messages and capability requests from every process); what it receives it pushes over the
connection as JSON-RPC notifications (direct messages and capability requests, broadcasts,
and the events on ``agent.<id>.events``), and the outside agent answers queries and capability
requests with the ``send_response`` tool, which resolves the waiting future here.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from typing import Any, Protocol

import msgspec

from flockrt.actors.tasks import TaskOwner
from flockrt.agents.agent import Agent
from flockrt.errors import AgentDisconnected, OutsideAgentFailed, WorkFailed
from flockrt.wire.schema import AgentEvent, Broadcast, DirectMessage

__all__ = ["AgentDisconnected", "Link", "OutsideAgent", "OutsideAgentFailed"]

MESSAGE_NOTIFICATION = "notifications/flock/message"
BROADCAST_NOTIFICATION = "notifications/flock/broadcast"
EVENT_NOTIFICATION = "notifications/flock/event"


class Link(Protocol):
    """The connection an outside agent is reached through."""

    def push(self, method: str, params: Any) -> None:
        """Queue a notification for the peer (never blocks)."""

    def attach(self, agent: OutsideAgent) -> None:
        """The agent started (or restarted): route send_response to it."""


class OutsideAgent(Agent):
    """An agent whose work is done by an MCP client.

    Args:
        agent_id: Its flock-wide id.
        link: The connection to push messages over.
        name: Human-readable name.
        capabilities: What it answers, known only at run time.
        max_concurrent_tasks: Capability requests it may have outstanding at once.
        answer_timeout: Seconds a query waits for the outside agent's answer.
    """

    def __init__(
        self,
        agent_id: str,
        link: Link,
        name: str | None,
        capabilities: tuple[str, ...],
        max_concurrent_tasks: int,
        answer_timeout: float,
    ) -> None:
        super().__init__(agent_id, name=name, max_concurrent_tasks=max_concurrent_tasks)
        self._link = link
        self._capabilities = capabilities
        self._answer_timeout = answer_timeout
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._answering = TaskOwner(f"outside agent {agent_id}")
        """Queries waiting for the outside agent's answer, each in a task of its own."""
        for capability in capabilities:
            self.add_capability(capability, functools.partial(self._forward_capability, capability))

    async def setup(self) -> None:
        self._link.attach(self)

    async def teardown(self) -> None:
        await self._answering.close()

    # ------------------------------------------------------------------ answers

    def resolve(self, correlation_id: str, response: Any, error: str | None = None) -> bool:
        """Deliver the outside agent's answer (or its failure, with ``error``); False if nothing
        here waits for it."""
        future = self._pending.pop(correlation_id, None)
        if future is None or future.done():
            return False
        if error is None:
            future.set_result(response)
        else:
            future.set_exception(OutsideAgentFailed(self.agent_id, error))
        return True

    def disconnected(self) -> None:
        """The connection closed: everything waiting for an answer fails now (before the agent
        is stopped, so that a query in progress does not hold the stop up)."""
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(AgentDisconnected(self.agent_id))

    async def _await_answer(self, correlation_id: str, direct: DirectMessage) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            self._link.push(MESSAGE_NOTIFICATION, msgspec.to_builtins(direct))
            async with asyncio.timeout(self._answer_timeout):
                return await future
        finally:
            self._pending.pop(correlation_id, None)

    # ------------------------------------------------------------------ what it receives

    async def _forward_capability(self, capability: str, /, *args: Any, **kwargs: Any) -> Any:
        parameters = kwargs if kwargs or not args else args[0]
        correlation_id = uuid.uuid4().hex
        direct = DirectMessage(
            id=uuid.uuid4().hex,
            sender="flock",
            to=self.agent_id,
            message={"capability": capability, "parameters": parameters},
            type="capability_request",
            correlation_id=correlation_id,
        )
        return await self._await_answer(correlation_id, direct)

    async def on_message(self, message: DirectMessage) -> Any:
        if message.type != "query":
            self._link.push(MESSAGE_NOTIFICATION, msgspec.to_builtins(message))
            return None
        # The id the outside agent answers with is fresh for every push, whatever the
        # tracing correlation id (which the asker may choose, and reuse) is.
        answer_id = uuid.uuid4().hex
        pushed = msgspec.structs.replace(message, correlation_id=answer_id)
        # Answered in a task of its own: heartbeats and further queries keep flowing while the
        # outside agent thinks. The asker awaits the task within its own timeout.
        return self._answering.spawn(self._answer_query(answer_id, pushed), name=f"answer {message.id}")

    async def _answer_query(self, answer_id: str, query: DirectMessage) -> Any:
        try:
            return await self._await_answer(answer_id, query)
        except (OutsideAgentFailed, AgentDisconnected, TimeoutError) as exc:
            # The asker gets the failure; raising would fail this agent instead.
            return WorkFailed(self.agent_id, "query", query.id, exc)

    async def on_broadcast(self, message: Broadcast) -> None:
        self._link.push(BROADCAST_NOTIFICATION, msgspec.to_builtins(message))

    async def on_event(self, event: AgentEvent) -> None:
        """An event on ``agent.<id>.events`` (a ``config_update``, say): pushed as
        ``notifications/flock/event`` with ``{type, data, to}``."""
        self._link.push(EVENT_NOTIFICATION, {**msgspec.to_builtins(event), "to": self.agent_id})
