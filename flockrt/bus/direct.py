"""A direct message for an agent this process does not know: delivered only if some process
listens on ``agent.<id>.inbox`` (what :meth:`NatsFlock.send_message
<flockrt.bus.flock.NatsFlock.send_message>` does for an agent missing from its directory)."""

from __future__ import annotations

from typing import Any

from flockrt.bus.connection import NatsConnection
from flockrt.bus.remote import direct_message
from flockrt.errors import NoResponders, UnknownAgent
from flockrt.wire import subjects
from flockrt.wire.schema import Codec

__all__ = ["send_checked"]


async def send_checked(
    bus: NatsConnection,
    codec: Codec,
    to: str,
    message: Any,
    *,
    type: str,
    sender: str,
    metadata: dict[str, Any] | None,
) -> None:
    """Delivered if somebody listens on ``agent.<to>.inbox``, else UnknownAgent.

    Raises:
        UnknownAgent: nobody listens (or ``to`` cannot be an agent id).
        BusUnavailable: NATS is unreachable.
    """
    direct, headers = direct_message(to, message, type, sender, metadata)
    try:
        subject = subjects.inbox(to)
        await bus.publish_checked(subject, codec.encode(direct), headers=headers)
    except (NoResponders, ValueError):  # nobody listens, or not even a possible id
        raise UnknownAgent(to) from None
