"""Capability requests from NATS (``capability.<name>``), answered on their reply subject.

What the :class:`~flockrt.bus.intake.Intake` does with a request that arrives on an endpoint of
the process's service: decode it, hand it to the dispatcher, answer it. A request whose
handler never waits runs on the dispatcher's fast path and is answered at once (no Work, no
Task, no deadline). Any other is a :class:`~flockrt.agents.work.CapabilityCall` with one
:class:`_Answer`: the work's hook, and what its deadline fails. The deadlines are the
kernel's :class:`~flockrt.actors.deadlines.AskDeadlines` (slots of a millisecond, one loop
timer for the earliest; no timer per request): a request whose work has not finished
``timeout`` ms after it arrived is answered with a WorkTimeout error (504) up to a
millisecond later, never before, and its work is stopped (skipped if it has not started,
cancelled if it runs), as the requester's own future would stop it in process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from flockrt.actors.deadlines import AskDeadlines, Slot
from flockrt.agents.work import CapabilityCall
from flockrt.bus.connection import Message
from flockrt.bus.outlet import Outlet, outgoing_headers
from flockrt.bus.remote import CORRELATION_HEADER
from flockrt.bus.service import BusService, service_error_headers
from flockrt.errors import FlockError, WorkFailed, WorkTimeout
from flockrt.flock.batches import PRIORITIES
from flockrt.flock.dispatcher import Dispatcher
from flockrt.wire.schema import MSGPACK, CapabilityRequest, CapabilityResponse

__all__ = ["CapabilityAnswers"]

log = logging.getLogger("flockrt.flock")

_MEDIUM = PRIORITIES["medium"]

Origin = tuple[str | None, str, Mapping[str, str], str]
"""A request on the fast path: its correlation id, reply subject, headers and subject."""


def _late(capability: str, timeout: float) -> BaseException:
    return WorkTimeout("capability", capability, timeout)


class CapabilityAnswers:
    """Answers the capability requests this process's agents take from NATS.

    Args:
        outlet: How the flock talks on the bus.
        dispatcher: Hands the work to local agents.
    """

    def __init__(self, outlet: Outlet, dispatcher: Dispatcher) -> None:
        self.outlet = outlet
        self.dispatcher = dispatcher
        self.service: BusService | None = None
        """The service whose endpoints take the requests (error answers are counted there)."""
        self._deadlines: AskDeadlines | None = None

    @property
    def expired(self) -> int:
        """Requests answered with a WorkTimeout error at their deadline so far."""
        return self._deadlines.expired if self._deadlines is not None else 0

    def on_request(self, message: Message) -> None:
        """Answer a capability request when its work finishes: at once on the dispatcher's fast
        path (a handler that never waits: no Work, no Task, no deadline), else from the agent's
        runner or at the deadline."""
        outlet = self.outlet
        request = outlet.decode(message, CapabilityRequest)
        if request is None:  # counted and logged by decode
            if message.reply:
                invalid = CapabilityResponse(error=outlet.why_invalid(message, CapabilityRequest))
                self.send(message.reply, invalid, message.headers, message.subject, 400)
            return
        headers, correlation_id, capability = message.headers, request.correlation_id, request.capability
        # The id the requester's logs know it by reaches the agent's work and its logs.
        work_correlation = (headers.get(CORRELATION_HEADER) if headers else None) or correlation_id
        dispatcher = self.dispatcher
        skill = dispatcher.skill("capability", capability)
        origin = (correlation_id, message.reply, headers, message.subject)
        if skill is not None and dispatcher.run_now(
            skill, request.parameters, work_correlation, self._deliver, origin
        ):
            return
        answer = _Answer(self, capability, origin)
        work = answer.work = CapabilityCall(
            key=capability,
            parameters=request.parameters,
            priority=_MEDIUM,
            on_done=answer,
            correlation_id=work_correlation,
        )
        try:
            dispatcher.dispatch(work)
        except FlockError as exc:  # no agent here offers it any more, or none can take it
            refused = CapabilityResponse(
                correlation_id=correlation_id, error=str(exc), error_type=type(exc).__name__
            )
            answer.finish(refused, "error", 503)
            return
        if not answer.answered:  # it runs (or waits for an agent) for a while: answer by the deadline
            # A requester's future, failed at the deadline: work that has not started by then
            # is skipped, work that runs is cancelled.
            loop = asyncio.get_running_loop()
            work.future = loop.create_future()
            deadlines = self._deadlines
            if deadlines is None:
                deadlines = self._deadlines = AskDeadlines(loop, _late)
            answer.slot = deadlines.hold(answer, capability, request.timeout / 1000)

    def _deliver(
        self, origin: Origin, agent_id: str, value: Any, error: WorkFailed | None, seconds: float
    ) -> None:
        """A capability request ran on the dispatcher's fast path: answer it."""
        correlation_id, reply, headers, subject = origin
        if reply:
            self.send(reply, _response(correlation_id, agent_id, value, error), headers, subject, 500)

    def send(
        self, reply: str, response: CapabilityResponse, headers: Mapping[str, str], subject: str, code: int
    ) -> None:
        """Publish the answer to a capability request that arrived on ``subject``.

        One that cannot be sent (a result that does not encode as JSON or msgpack, or is over
        NATS's size limit) is replaced by an answer that says so: the requester hears of it
        rather than waiting in vain. An error answer carries the NATS service API's error
        headers (``code`` if it is ``response``'s own error: 400 invalid request, 500 failed,
        503 no agent, 504 timed out) and is counted in ``$SRV.STATS``, so ``nats micro stats``
        shows a failing capability as failing."""
        msgpack = headers.get("Content-Type") == MSGPACK if headers else False
        data, sent = self.outlet.encode_answer(response, _unsendable, msgpack=msgpack)
        out = outgoing_headers(headers)
        if sent.error is not None:
            if sent is not response:
                code = 500
            out = service_error_headers(code, sent.error, out)
            if self.service is not None:
                self.service.record_error(subject, f"{code} {sent.error}")
        self.outlet.send(reply, data, out)


class _Answer:
    """One capability request whose work takes the dispatcher's usual path: the work's
    ``on_done`` hook (called as one), and what the request's deadline fails (an
    :class:`~flockrt.actors.deadlines.Expiring`). Whichever comes first answers; the other
    finds it answered."""

    __slots__ = ("answered", "answers", "capability", "origin", "slot", "work")

    def __init__(self, answers: CapabilityAnswers, capability: str, origin: Origin) -> None:
        self.answers = answers
        self.capability = capability
        self.origin = origin
        self.answered = False
        self.work: CapabilityCall | None = None
        self.slot: Slot | None = None  # its deadline's, once it has one

    def __call__(self, work: CapabilityCall, value: Any, error: WorkFailed | None) -> None:
        """The work finished."""
        if not self.answered:
            response = _response(self.origin[0], work.agent_id, value, error)
            self.finish(response, "ok" if error is None else "error", 500)

    def done(self) -> bool:
        return self.answered

    def set_exception(self, exception: BaseException, /) -> None:
        """The deadline: answer with ``exception`` (a WorkTimeout) and stop the work."""
        self.slot = None  # (the deadlines are going through it: it is theirs to drop)
        work = self.work
        if work is not None and work.future is not None:
            work.future.cancel()
        expired = CapabilityResponse(
            correlation_id=self.origin[0], error=str(exception), error_type=type(exception).__name__
        )
        self.finish(expired, "timeout", 504)

    def finish(self, response: CapabilityResponse, outcome: str, code: int) -> None:
        """Answer (once), counted and timed in the flock's work stats."""
        if self.answered:
            return
        self.answered = True
        slot = self.slot
        if slot is not None:
            self.slot = None
            slot.pop(self, None)
        answers = self.answers
        _, reply, headers, subject = self.origin
        if reply:
            answers.send(reply, response, headers, subject, code)
        stats = answers.dispatcher.work_stats
        work = self.work
        if stats is not None and work is not None:
            stats.record("capability", self.capability, outcome, time.monotonic() - work.enqueued)


def _response(
    correlation_id: str | None, agent_id: str, value: Any, error: WorkFailed | None
) -> CapabilityResponse:
    """The answer to a capability request whose work finished."""
    if error is None:
        return CapabilityResponse(correlation_id=correlation_id, result=value, agent_id=agent_id)
    return CapabilityResponse(
        correlation_id=correlation_id,
        agent_id=error.agent_id,
        error=error.reason,
        error_type=error.error_type,
    )


def _unsendable(response: CapabilityResponse, problem: str) -> CapabilityResponse:
    """The answer that goes instead of a capability answer that cannot be sent."""
    return CapabilityResponse(
        correlation_id=response.correlation_id, agent_id=response.agent_id, error=problem
    )
