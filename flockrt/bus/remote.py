"""Asking agents of the flock over NATS, from anywhere that has a connection.

The two request/reply exchanges of the AI Flock design, shared by :class:`~flockrt.bus.flock.NatsFlock`
(for agents in other processes) and by :class:`~flockrt.client.client.FlockClient` (its fallback
when the gateway is down), so both speak exactly the same messages:

- ``capability.<name>``: a :class:`CapabilityRequest`, answered by a :class:`CapabilityResponse`;
- ``agent.<id>.inbox``: a :class:`DirectMessage`; a ``query`` is a request whose reply is the
  ``response`` DirectMessage, any other type is a plain publish.

The correlation id travels in the message (``correlationId``), and for direct messages in the
``Correlation-Id`` header too.
"""

from __future__ import annotations

import asyncio
from typing import Any

from flockrt.actors.correlation import new_correlation_id, unique_id
from flockrt.bus.connection import Message, NatsConnection
from flockrt.bus.replies import no_responders
from flockrt.errors import (
    BusTimeout,
    NoCapableAgent,
    NoResponders,
    RemoteFailure,
    UnknownAgent,
    WorkFailed,
    WorkTimeout,
)
from flockrt.wire import subjects
from flockrt.wire.schema import CapabilityRequest, CapabilityResponse, Codec, DirectMessage

__all__ = [
    "CORRELATION_HEADER",
    "direct_message",
    "request_capability",
    "request_capability_response",
    "send_direct",
]

CORRELATION_HEADER = "Correlation-Id"


async def request_capability(
    bus: NatsConnection,
    codec: Codec,
    capability: str,
    parameters: Any = None,
    *,
    requester: str,
    timeout: float = 30.0,
) -> Any:
    """:func:`request_capability_response`'s result alone."""
    response = await request_capability_response(
        bus, codec, capability, parameters, requester=requester, timeout=timeout
    )
    return response.result


async def request_capability_response(
    bus: NatsConnection,
    codec: Codec,
    capability: str,
    parameters: Any = None,
    *,
    requester: str,
    timeout: float = 30.0,
) -> CapabilityResponse:
    """Ask whoever offers ``capability`` on NATS (queue group: one of them answers).

    One coroutine: the request goes out through the connection's one reply subscription
    (:meth:`Replies.send_nowait <flockrt.bus.replies.Replies.send_nowait>`) and its reply is
    awaited on a plain future, with the subject of each capability checked once.

    Returns:
        The answer: the agent's result, its id and the correlation id.

    Raises:
        NoCapableAgent: nobody subscribes to ``capability.<name>``.
        WorkTimeout: no answer within ``timeout`` seconds.
        WorkFailed: the agent's handler raised (the response carried an error).
        BusUnavailable: NATS is unreachable.
        ValueError: ``capability`` cannot be a subject token.
    """
    subject = _SUBJECTS.get(capability) or _subject(capability)
    request = CapabilityRequest(
        capability=capability,
        parameters=parameters,
        requester=requester,
        timeout=int(timeout * 1000),
        correlation_id=new_correlation_id(),  # the current one travels on
    )
    # The body's correlationId is enough for the answering side; no header repeats it (a
    # header costs microseconds a message to build and to parse, a lot for a request).
    data = codec.encode(request)
    replies = bus.replies
    future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
    if replies.ready:
        token = replies.send_nowait(subject, data, future, timeout=timeout)
    else:
        token = await replies.send(subject, data, future, timeout=timeout)
    try:
        reply = await future
    except BusTimeout:
        raise WorkTimeout("capability", capability, timeout) from None
    finally:
        replies.end(token)
    if no_responders(reply):
        raise NoCapableAgent("capability", capability)
    response = codec.decode(reply.subject, reply.data, CapabilityResponse, reply.headers.get("Content-Type"))
    if response.error is not None:
        # As the answering process put it: its words and the class of its error, not wrapped again.
        cause = RemoteFailure(response.error, response.error_type)
        raise WorkFailed(response.agent_id, "capability", capability, cause)
    return response


_SUBJECTS: dict[str, str] = {}
"""``capability.<name>`` of the capabilities asked for lately, each checked once (at most 1,024)."""


def _subject(capability: str) -> str:
    subject = subjects.capability(capability)  # checks the name
    if len(_SUBJECTS) >= 1024:
        _SUBJECTS.clear()
    _SUBJECTS[capability] = subject
    return subject


async def send_direct(
    bus: NatsConnection,
    codec: Codec,
    to: str,
    message: Any,
    *,
    type: str = "command",
    sender: str,
    timeout: float = 30.0,
    metadata: dict[str, Any] | None = None,
) -> DirectMessage | None:
    """Send a direct message to agent ``to`` on its inbox.

    Returns:
        For a ``query``, the ``response`` DirectMessage (its ``message`` is the answer); else
        None once the message is published (or buffered while NATS is degraded).

    Raises:
        UnknownAgent: a query found nobody listening on ``agent.<to>.inbox``.
        WorkTimeout: a query got no answer within ``timeout`` seconds.
        WorkFailed: the answer says the agent could not answer (``metadata.error``).
        BusUnavailable: NATS is unreachable (queries) or the connection is closed.
        ValueError: ``to`` cannot be a subject token.
    """
    subject = subjects.inbox(to)
    direct, headers = direct_message(to, message, type, sender, metadata)
    if type != "query":
        await bus.publish(subject, codec.encode(direct), headers=headers)
        return None
    try:
        reply = await bus.request(subject, codec.encode(direct), timeout=timeout, headers=headers)
    except NoResponders:
        raise UnknownAgent(to) from None
    except BusTimeout:
        raise WorkTimeout("query", to, timeout) from None
    answer = codec.decode(reply.subject, reply.data, DirectMessage, reply.headers.get("Content-Type"))
    error = (answer.metadata or {}).get("error")
    if error:  # the agent's process could not get an answer (see NatsFlock._answer_query)
        raise WorkFailed(answer.sender, "query", to, RemoteFailure(str(error)))
    return answer


def direct_message(
    to: str, message: Any, type: str, sender: str, metadata: dict[str, Any] | None
) -> tuple[DirectMessage, dict[str, str]]:
    """A direct message for ``agent.<to>.inbox`` and its headers, with the current correlation id
    (it travels on), or a new one."""
    correlation_id = new_correlation_id()
    direct = DirectMessage(
        id=unique_id(),
        sender=sender,
        to=to,
        message=message,
        type=type,
        metadata=metadata,
        correlation_id=correlation_id,
    )
    return direct, {CORRELATION_HEADER: correlation_id}
