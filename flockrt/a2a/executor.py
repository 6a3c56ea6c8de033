"""FlockExecutor: the SDK's ``AgentExecutor`` that runs an A2A task in the flock.

The server adapter has already read the message (:func:`~flockrt.a2a.mapping.route_of`) and put
its :class:`~flockrt.a2a.mapping.Route` and the client's principal in the call context's
state. A task then goes: ``submitted`` (the task is created), ``working``, one ``working``
status update per progress report of the agent (its message the agent's words, its metadata
``{"progress": done, "total": total}``), an artifact ``result`` holding the result (a text part
for a string, else a data part; metadata ``agentId`` names the agent that did it), and
``completed``. A failure of the flock (no capable agent, a timeout, the handler raised) ends it
``failed``, with the error's sentence as the status message and ``{"error": kind}`` as
metadata. A client already at its ``max_inflight`` tasks gets its new task ``rejected``.

Cancelling (``tasks/cancel``) publishes ``canceled``; the SDK then cancels ``execute``, which
cancels the flock request it awaits, and with it the agent's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.tasks import TaskUpdater
from a2a.types import Part, Task, TaskState, TaskStatus

from flockrt.a2a.mapping import Route, parts_of
from flockrt.agents.work import ProgressCallback
from flockrt.errors import FlockError
from flockrt.flock.api import FlockAPI
from flockrt.wire.failures import FailureKind

__all__ = ["OWNER", "ROUTE", "FlockExecutor"]

log = logging.getLogger("flockrt.a2a")

ROUTE = "flockrt.route"
"""Call-context state key: the message's :class:`Route`."""
OWNER = "flockrt.owner"
"""Call-context state key: whom the task counts against (a token digest, or the peer)."""


class FlockExecutor(AgentExecutor):
    """Runs A2A tasks as capability requests or tasks of ``flock``.

    Args:
        flock: The flock.
        timeout: Seconds a task may wait for the flock (the gateway's ``[mcp] timeout``).
        max_inflight: Tasks one principal may have running at once (``[mcp] max_inflight``).
    """

    def __init__(self, flock: FlockAPI, *, timeout: float, max_inflight: int) -> None:
        self.flock = flock
        self.timeout = timeout
        self.max_inflight = max_inflight
        self.inflight: Counter[str] = Counter()
        """Running tasks by principal."""
        self.rejected = 0
        """Tasks rejected for their principal's max_inflight."""
        self.on_finished: Callable[[str, str], Awaitable[None]] | None = None
        """Called with (principal, task id) when a task's run ends, however it ended."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        state = context.call_context.state if context.call_context is not None else {}
        route: Route = state[ROUTE]
        owner: str = state.get(OWNER, "")
        task_id, context_id = str(context.task_id), str(context.context_id)
        updater = TaskUpdater(event_queue, task_id, context_id)
        if context.current_task is None:
            history = [context.message] if context.message is not None else []
            task = Task(
                id=task_id,
                context_id=context_id,
                status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
                history=history,
            )
            await event_queue.enqueue_event(task)
        if self.inflight[owner] >= self.max_inflight:
            self.rejected += 1
            log.info("A2A task %s rejected: its client has %d tasks in flight", task_id, self.max_inflight)
            text = (
                f"too many tasks in flight for this client (max_inflight = {self.max_inflight}); "
                "wait for one to finish, or cancel one"
            )
            await updater.reject(updater.new_agent_message([Part(text=text)], {"error": "rate_limited"}))
            if self.on_finished is not None:
                await self.on_finished(owner, task_id)
            return
        self.inflight[owner] += 1
        try:
            await updater.start_work()
            await self._run(route, updater)
        finally:
            self.inflight[owner] -= 1
            if self.inflight[owner] <= 0:
                del self.inflight[owner]
            if self.on_finished is not None:
                await self.on_finished(owner, task_id)

    async def _run(self, route: Route, updater: TaskUpdater) -> None:
        # Progress is reported synchronously and published by a pump Task, started only when the
        # agent reports any (most work does not): in order, and all of it before the result.
        reports: asyncio.Queue[tuple[float, float | None, str | None]] = asyncio.Queue()
        pump: asyncio.Task[None] | None = None
        over = False  # a report after the answer (a stray callback) goes nowhere

        async def publish() -> None:
            while True:
                done, total, text = await reports.get()
                try:
                    await self._progress(updater, done, total, text)
                except Exception:  # a report that cannot be published must not fail the work
                    log.exception("A2A task %s: a progress update could not be published", updater.task_id)
                finally:
                    reports.task_done()

        def report(done: float, total: float | None, message: str | None) -> None:
            nonlocal pump
            if over:
                return
            reports.put_nowait((done, total, message))
            if pump is None:
                pump = asyncio.get_running_loop().create_task(publish(), name=f"progress {updater.task_id}")

        try:
            outcome = await self._call(route, report)
        except FlockError as exc:
            outcome = _Failed(str(exc), FailureKind.of(exc).value)
        except BaseException:  # cancelled (tasks/cancel, the server stops): no more progress
            if pump is not None:
                pump.cancel()
            raise
        finally:
            over = True
        if pump is not None:
            await reports.join()  # every report published, then the result
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        if isinstance(outcome, _Failed):
            log.info("A2A task %s: %s %s failed: %s", updater.task_id, route.kind, route.name, outcome.text)
            words = updater.new_agent_message([Part(text=outcome.text)], {"error": outcome.kind})
            await updater.failed(words)
            return
        result, agent_id = outcome
        await updater.add_artifact(
            parts_of(result), name="result", metadata={"agentId": agent_id} if agent_id else None
        )
        await updater.complete()

    async def _progress(
        self, updater: TaskUpdater, done: float, total: float | None, text: str | None
    ) -> None:
        values: dict[str, Any] = {"progress": done}
        if total is not None:
            values["total"] = total
        words = text or (f"{done:g} of {total:g}" if total is not None else f"{done:g}")
        await updater.update_status(
            TaskState.TASK_STATE_WORKING, updater.new_agent_message([Part(text=words)], values)
        )

    async def _call(self, route: Route, report: ProgressCallback) -> tuple[Any, str] | _Failed:
        """The flock's answer to ``route`` and the agent that gave it (or a failed task)."""
        if route.kind == "capability":
            response = await self.flock.request_capability_response(
                route.name, route.parameters, timeout=self.timeout, progress=report
            )
            return response.result, response.agent_id
        result = await self.flock.submit(route.name, route.parameters, wait=True, timeout=self.timeout)
        assert not isinstance(result, str)  # wait=True: the TaskResult
        if result.status == "error":
            return _Failed(f"task {route.name!r} failed: {result.error or 'no reason given'}", "failed")
        return result.result, result.processed_by

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        updater = TaskUpdater(event_queue, str(context.task_id), str(context.context_id))
        await updater.cancel(updater.new_agent_message([Part(text="canceled by the client")]))


@dataclass(frozen=True, slots=True)
class _Failed:
    text: str
    kind: str
