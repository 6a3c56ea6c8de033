"""Inboxes: direct messages and events for the agents of one process, over NATS.

Each local agent receives ``agent.<id>.inbox`` (direct messages; a query is answered on the
reply subject, or on the sender's inbox as a ``response``) and ``agent.<id>.events``. An answer
that cannot be sent (it does not encode, or is over NATS's size limit) is replaced by a
``response`` whose ``metadata.error`` says so: the asker hears of it at once instead of waiting
out its timeout. A message that is not a valid DirectMessage is counted and logged; if it came
as a request (it has a reply subject), it is answered with such an error ``response`` too.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from flockrt.actors.correlation import unique_id
from flockrt.bus.connection import Message, Subscription
from flockrt.bus.outlet import Outlet
from flockrt.errors import FlockError
from flockrt.flock.local import LocalFlock
from flockrt.wire import subjects
from flockrt.wire.schema import AgentEvent, DirectMessage

__all__ = ["Inboxes"]

log = logging.getLogger("flockrt.flock")


class Inboxes:
    """The inbox and events subscriptions of the local agents, and their handlers.

    Args:
        outlet: How the flock talks on the bus.
        local: The flock's local core, which delivers to its agents.
    """

    def __init__(self, outlet: Outlet, local: LocalFlock) -> None:
        self.outlet = outlet
        self.local = local
        self._subscriptions: dict[str, list[Subscription]] = {}

    async def join(self, agent_id: str) -> None:
        """Subscribe to a local agent's inbox and events (once, whatever its restarts)."""
        if agent_id not in self._subscriptions:
            bus = self.outlet.bus
            self._subscriptions[agent_id] = [
                await bus.subscribe(subjects.inbox(agent_id), self.on_inbox),
                await bus.subscribe(subjects.events(agent_id), self.on_event),
            ]

    async def leave(self, agent_id: str) -> None:
        """The agent is gone from this process: stop listening for it."""
        for subscription in self._subscriptions.pop(agent_id, []):
            await subscription.unsubscribe()

    async def close(self) -> None:
        for agent_id in list(self._subscriptions):
            await self.leave(agent_id)

    async def on_inbox(self, message: Message) -> None:
        direct = self.outlet.decode(message, DirectMessage)
        if direct is None:  # counted and logged by decode
            if message.reply:  # an asker waits: tell it what is wrong
                reason = self.outlet.why_invalid(message, DirectMessage)
                invalid = DirectMessage(
                    id=unique_id(),
                    sender=message.subject.split(".")[1],
                    to="",
                    type="response",
                    metadata={"error": reason},
                )
                await self.outlet.publish(message.reply, invalid, message.headers)
            return
        if direct.type != "query":
            try:
                await self.local.send_message(
                    direct.to,
                    direct.message,
                    type=direct.type,
                    sender=direct.sender,
                    metadata=direct.metadata,
                )
            except FlockError as exc:
                log.warning("direct message %s for %s not delivered: %s", direct.id, direct.to, exc)
            return
        self.outlet.spawn(self._answer_query(message, direct))

    async def _answer_query(self, message: Message, query: DirectMessage) -> None:
        answer: Any = None
        error: str | None = None
        try:
            answer = await self.local.send_message(
                query.to, query.message, type="query", sender=query.sender, metadata=query.metadata
            )
        except FlockError as exc:
            error = str(exc)
        response = DirectMessage(
            id=unique_id(),
            sender=query.to,
            to=query.sender,
            message=answer,
            type="response",
            correlation_id=query.correlation_id,
            metadata={"error": error} if error else None,
        )
        if message.reply:
            where = message.reply
        else:
            try:
                where = subjects.inbox(query.sender)
            except ValueError as exc:  # the sender's name cannot be a subject: nowhere to answer
                log.warning("query %s: cannot answer %r: %s", query.id, query.sender, exc)
                return
        # One that cannot be sent goes as an error response instead (see Outlet.encode_answer).
        await self.outlet.publish(where, response, message.headers, _unsendable_response)

    async def on_event(self, message: Message) -> None:
        event = self.outlet.decode(message, AgentEvent)
        agent_id = message.subject.split(".")[1]
        if event is not None and self.local.is_local(agent_id):
            try:
                card = self.local.dispatcher.member(agent_id)
                if card is not None:
                    card.ref.tell(event)
            except FlockError as exc:
                log.warning("event for %s not delivered: %s", agent_id, exc)


def _unsendable_response(response: DirectMessage, problem: str) -> DirectMessage:
    """The response that goes instead of a query's answer that cannot be sent."""
    return msgspec.structs.replace(response, message=None, metadata={"error": problem})
