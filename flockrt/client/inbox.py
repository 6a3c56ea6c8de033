"""What the gateway pushes to a FlockClient that announced an agent, and who handles it.

The gateway pushes direct messages and capability requests for the client's agent as
``notifications/flock/message`` and broadcasts as ``notifications/flock/broadcast``. The
:class:`Inbox` hands each to the handler registered for it, in a task of the client's own (so
handlers run concurrently and a slow one holds up nothing), and sends a handler's return value
back as the answer to a ``query`` or a ``capability_request``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeAlias

import msgspec

from flockrt.actors.tasks import TaskOwner
from flockrt.errors import CircuitOpen, GatewayError, GatewayUnavailable, NotAuthorized, ToolError
from flockrt.wire.schema import Broadcast, DirectMessage

__all__ = ["ANSWERED_TYPES", "BroadcastHandler", "Inbox", "MessageHandler"]

log = logging.getLogger("flockrt.client")

ANSWERED_TYPES: Final = frozenset({"query", "capability_request"})
"""Pushed message types whose handler's return value is sent back with send_response."""

MessageHandler: TypeAlias = Callable[[DirectMessage], Awaitable[Any] | Any]
"""Called with each pushed DirectMessage of its type; may be sync or async."""
BroadcastHandler: TypeAlias = Callable[[Broadcast], Awaitable[Any] | Any]

Answer: TypeAlias = Callable[[str, Any, str, str | None], Awaitable[None]]
"""Sends an answer: (to, response, correlation id, error), as FlockClient.send_response."""


class Inbox:
    """The handlers of pushed messages and broadcasts.

    Args:
        tasks: The owner of the tasks handlers run in (the client's, cancelled when it closes).
        answer: How an answer goes back to the gateway.
    """

    def __init__(self, tasks: TaskOwner, answer: Answer) -> None:
        self._tasks = tasks
        self._answer = answer
        self._handlers: dict[str, MessageHandler] = {}
        self._broadcast_handlers: list[BroadcastHandler] = []

    def register(self, type: str, handler: MessageHandler) -> None:
        """Handle pushed messages of ``type`` (``"*"``: of any type without a handler)."""
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        self._handlers[type] = handler

    def register_broadcast(self, handler: BroadcastHandler) -> None:
        """Handle every pushed broadcast."""
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        self._broadcast_handlers.append(handler)

    def on_notification(self, method: str, params: Any) -> None:
        """A notification from the gateway: start the handlers it is for (never blocks)."""
        if method == "notifications/flock/message":
            try:
                message = msgspec.convert(params, DirectMessage)
            except msgspec.ValidationError as exc:
                log.warning("the gateway pushed a malformed message (%s); ignored", exc)
                return
            handler = self._handlers.get(message.type) or self._handlers.get("*")
            if handler is None:
                log.warning(
                    "no handler for a pushed %r message from %s; dropped", message.type, message.sender
                )
                return
            self._tasks.spawn(self._handle_message(handler, message))
        elif method == "notifications/flock/broadcast":
            try:
                broadcast = msgspec.convert(params, Broadcast)
            except msgspec.ValidationError as exc:
                log.warning("the gateway pushed a malformed broadcast (%s); ignored", exc)
                return
            for broadcast_handler in self._broadcast_handlers:
                self._tasks.spawn(self._handle_broadcast(broadcast_handler, broadcast))
        else:
            log.debug("notification %s from the gateway ignored", method)

    async def _handle_message(self, handler: MessageHandler, message: DirectMessage) -> None:
        answer: Any = None
        error: str | None = None
        try:
            answer = await _call(handler, message)
        except Exception as exc:
            log.exception(
                "handler for %r message %s from %s failed", message.type, message.id, message.sender
            )
            # Tell the requester now rather than let it wait for its timeout.
            error = f"{message.to}: handler failed: {exc!r}"
        if message.type not in ANSWERED_TYPES or not message.correlation_id:
            return
        try:
            await self._answer(message.sender, answer, message.correlation_id, error)
        except (GatewayUnavailable, CircuitOpen, GatewayError, NotAuthorized, ToolError) as exc:
            log.warning("answer to %s from %s not delivered: %s", message.id, message.sender, exc)

    async def _handle_broadcast(self, handler: BroadcastHandler, broadcast: Broadcast) -> None:
        try:
            await _call(handler, broadcast)
        except Exception:
            log.exception("broadcast handler failed on %r", broadcast.type)


async def _call(handler: Callable[[Any], Any], argument: Any) -> Any:
    result = handler(argument)
    if inspect.isawaitable(result):
        result = await result
    return result
