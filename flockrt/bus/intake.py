"""Intake: what one process takes from NATS for its local agents.

- For every task type a local agent handles, the process consumes ``tasks.<type>`` in the queue
  group ``tasks.<type>``, so each task is handled once across the flock, taking no more than its
  agents' free slots for the type plus ``prefetch`` (a :class:`~flockrt.bus.lanes.CoreLane` per
  type; on a NATS cluster an equal share instead, holding what waits for a slot; in durable mode
  a pull consumer of the JetStream work queue, see :mod:`flockrt.bus.durable`); results go to
  ``task.result`` through the outlet's sink, and to the reply subject of a request.
  :meth:`Intake.stop` is the graceful stop.
- For every capability a local agent offers, the process answers ``capability.<name>``
  requests (queue group ``capability.<name>``) as an endpoint of its NATS service
  (``nats micro ls`` lists them), answered by :class:`~flockrt.bus.answers.CapabilityAnswers`.
- While a local agent handles tasks, the process takes ``batch.messages`` (queue group): it runs
  the tasks it can and republishes the others on their own subjects, so each is still handled
  once. A batch is an array of ``{subject, message}`` items, or a bare array of tasks (what the
  AI Flock seed's MessageBatcher sends), each then standing for ``tasks.<its type>``. Only
  the flock's task subjects (``tasks.<type>``, not the dead-letter subject) are republished:
  an item for any other subject (``$JS.API.*``, ``agent.announce`` ...) is refused, counted as
  invalid on ``batch.messages`` and logged, and in a batch that is a request its result is an
  error.

Tasks and capability requests go straight to the dispatcher, whose one fast path runs them at
once when a free agent's handler never waits.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence

import msgspec

from flockrt.agents.ports import AgentCard
from flockrt.bus.answers import CapabilityAnswers
from flockrt.bus.connection import Message, Subscription
from flockrt.bus.durable import DurableTasks, TaskConsumer
from flockrt.bus.lanes import CoreLane, IntakeStats, failed_task
from flockrt.bus.outlet import Outlet, outgoing_headers
from flockrt.bus.service import BusService
from flockrt.errors import BusUnavailable, FlockError, NoCapableAgent
from flockrt.flock.dispatcher import Dispatcher
from flockrt.wire import subjects
from flockrt.wire.schema import (
    BatchItem,
    InvalidMessage,
    TaskBatchItem,
    TaskMessage,
    TaskResult,
)

__all__ = ["Intake"]

log = logging.getLogger("flockrt.flock")

_TASK_SUBJECT = re.compile(r"^tasks\.[^\s.*>]+$")  # tasks.<type>: what a batch item may stand for


class Intake:
    """The subscriptions and handlers through which NATS work reaches local agents.

    Args:
        outlet: How the flock talks on the bus.
        dispatcher: Hands the work to local agents.
        node: This process's name (in its service's metadata).
        version: flockrt's version (in its service's info).
        durable: Consume tasks from the JetStream work queue instead of core NATS.
        prefetch: Tasks of a type taken beyond the free slots of the agents that run it.
        max_held: Core mode: tasks of a type held beyond ``prefetch`` waiting for a slot; one
            more is refused with an error result (``FlockSaturated``).
    """

    def __init__(
        self,
        outlet: Outlet,
        dispatcher: Dispatcher,
        *,
        node: str,
        version: str,
        durable: DurableTasks | None,
        prefetch: int = 1,
        max_held: int = 10000,
    ) -> None:
        if prefetch < 0 or max_held < 0:
            raise ValueError(f"prefetch and max_held must be >= 0, got {prefetch!r} and {max_held!r}")
        self.outlet = outlet
        self.bus = outlet.bus
        self.codec = outlet.codec
        self.dispatcher = dispatcher
        self.node = node
        self.version = version
        self.durable = durable
        self.prefetch = prefetch
        self.max_held = max_held
        self.stats = IntakeStats()
        """Core-mode tasks taken, handed back and refused at a stop, keeper changes."""
        self.lanes: dict[str, CoreLane] = {}
        """The core-mode intake of each task type run here."""
        self._consumers: dict[str, TaskConsumer] = {}
        self._service: BusService | None = None
        self.answers = CapabilityAnswers(outlet, dispatcher)
        """The capability requests taken here, answered (:mod:`flockrt.bus.answers`)."""
        self._served: set[str] = set()  # capabilities this process serves as service endpoints
        # Joined only while local agents handle tasks: a producer-only node taking batches
        # would just republish their tasks one by one.
        self._batch_subscription: Subscription | None = None
        self._taking = True  # until the graceful stop: agents restarted during it take no tasks

    async def start(self) -> None:
        """The NATS service whose endpoints are the capabilities served here."""
        self._service = await self.bus.add_service(
            "flockrt",
            self.version,
            description="flockrt agents; one endpoint per capability they offer",
            metadata={"node": self.node},
        )
        self.answers.service = self._service

    def counts(self) -> dict[str, int]:
        """What :attr:`stats` counted, by event name (the metrics layer's labels)."""
        stats = self.stats
        return {
            "taken": stats.taken,
            "handed_back": stats.handed_back,
            "refused": stats.refused,
            "keeper_changes": stats.keeper_changes,
            "saturated": stats.saturated,
            "handed_off": stats.handed_off,
            "handed_in": stats.handed_in,
        }

    @property
    def held(self) -> int:
        """Tasks taken from NATS that wait here for a free slot (not yet in the dispatcher)."""
        return sum(len(lane.held) for lane in self.lanes.values()) + sum(
            consumer.held for consumer in self._consumers.values()
        )

    async def stop(self, timeout: float) -> None:
        """The graceful stop: take no more tasks, hand back those that never started, and wait
        up to ``timeout`` seconds for the running ones to finish (and, in durable mode, be
        acked). Capability requests are still answered until :meth:`close`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._taking = False
        if self._batch_subscription is not None:
            subscription, self._batch_subscription = self._batch_subscription, None
            await subscription.drain()
        lanes = list(self.lanes.values())
        await asyncio.gather(*(lane.stop_taking() for lane in lanes))  # (each may hand its keeper role on)
        consumers = list(self._consumers.values())
        self._consumers.clear()
        await asyncio.gather(*(consumer.stop(max(0.0, deadline - loop.time())) for consumer in consumers))
        for lane in lanes:
            if not await lane.wait_idle(max(0.0, deadline - loop.time())) and timeout > 0:
                log.warning(
                    "stop: %d tasks of %s still running after %g s; they are cut short by the agents' stop",
                    lane.running,
                    lane.subject,
                    timeout,
                )

    async def close(self) -> None:
        """Take nothing more from NATS."""
        if self._service is not None:
            await self._service.stop()
        for consumer in self._consumers.values():
            await consumer.stop()
        self._consumers.clear()
        lanes = list(self.lanes.values())
        self.lanes.clear()
        for lane in lanes:
            await lane.close()
        if self._batch_subscription is not None:
            subscription, self._batch_subscription = self._batch_subscription, None
            await subscription.unsubscribe()

    async def join(self, card: AgentCard) -> None:
        """A local agent joined: take its skills' work from NATS (if not already taken)."""
        for capability in card.capabilities:
            await self._serve_capability(capability)
        if not self._taking:  # stopping: capability requests are answered, tasks are not taken
            return
        if card.task_types and self._batch_subscription is None:
            self._batch_subscription = await self.bus.subscribe(
                subjects.BATCH, self.on_batch, queue=subjects.BATCH
            )
        for task_type in card.task_types:
            if self.durable is not None:
                await self._consume_durably(task_type)
            else:
                await self._take(task_type)

    async def leave(self) -> None:
        """A local agent left: stop taking the work no local agent does any more."""
        for capability in list(self._served):
            if not self.dispatcher.has_skill("capability", capability) and self._service is not None:
                self._served.discard(capability)
                await self._service.remove_endpoint(_endpoint_name(capability))
        if self._batch_subscription is not None and not self.dispatcher.handles_tasks():
            subscription, self._batch_subscription = self._batch_subscription, None
            await subscription.unsubscribe()
        for task_type, consumer in list(self._consumers.items()):
            if not self.dispatcher.has_skill("task", task_type):
                del self._consumers[task_type]
                await consumer.stop()
        for task_type, lane in list(self.lanes.items()):
            if not self.dispatcher.has_skill("task", task_type):
                del self.lanes[task_type]
                await lane.stop_taking()  # what it holds goes back to the flock
                await lane.close()
            else:
                lane.refresh()  # fewer slots

    async def _take(self, task_type: str) -> None:
        """Take tasks of ``task_type`` from core NATS, as many as the local agents can run."""
        lane = self.lanes.get(task_type)
        if lane is not None:
            lane.refresh()  # more capacity for this type
        elif self.dispatcher.has_skill("task", task_type):
            lane = self.lanes[task_type] = CoreLane(
                task_type,
                self.outlet,
                self.dispatcher,
                node=self.node,
                prefetch=self.prefetch,
                max_held=self.max_held,
                stats=self.stats,
            )
            await lane.start()

    async def _serve_capability(self, capability: str) -> None:
        """Answer capability.<name> in its queue group, as an endpoint of the process's service."""
        if capability in self._served or not self.dispatcher.has_skill("capability", capability):
            return
        assert self._service is not None, "start() the flock before its agents join"
        subject = subjects.capability(capability)
        await self._service.add_endpoint(
            _endpoint_name(capability),
            subject,
            self.answers.on_request,
            queue=subject,
            metadata={"capability": capability},
        )
        self._served.add(capability)

    async def _consume_durably(self, task_type: str) -> None:
        assert self.durable is not None
        consumer = self._consumers.get(task_type)
        if consumer is not None:
            consumer.wake()  # more capacity for this type
            return
        if self.dispatcher.has_skill("task", task_type):
            self._consumers[task_type] = await self.durable.consume(
                task_type,
                self._run_durable_task,
                capacity=lambda: self.dispatcher.capacity("task", task_type),
                prefetch=self.prefetch,
            )

    async def _run_durable_task(self, task: TaskMessage) -> TaskResult:
        # NoCapableAgent (our last agent for the type just left) raises: the task is retried.
        result = self.dispatcher.start_task(task)
        async with asyncio.timeout(task.timeout / 1000 if task.timeout is not None else None):
            return await result

    # ------------------------------------------------------------------ batches

    async def on_batch(self, message: Message) -> None:
        items: Sequence[TaskBatchItem | BatchItem] | None
        try:  # a batch of tasks only (as submit_many sends) decodes in one pass
            items = self.codec.decode(
                message.subject, message.data, list[TaskBatchItem], message.headers.get("Content-Type")
            )
        except InvalidMessage:
            items = self._bare_tasks(message)
            if items is None:  # anything else, item by item (naming the bad ones)
                items = self.outlet.decode(message, list[BatchItem])
        if items is None:
            if message.reply:
                await self.outlet.publish(message.reply, [], message.headers)
            return
        if message.reply:  # submit_many(..., results="batch"): one array of results back
            if items:
                self._answer_batch(message, items)
            else:
                await self.outlet.publish(message.reply, [], message.headers)
            return
        tasks: list[TaskMessage] = []
        foreign: list[BatchItem | TaskBatchItem] = []
        runnable: dict[str, bool] = {}  # subject -> self._runs_here(subject), per batch
        for item in items:
            runs = runnable.get(item.subject)
            if runs is None:
                runs = runnable[item.subject] = self._runs_here(item.subject)
            if runs:
                try:
                    task = _as_task(item)
                except msgspec.ValidationError as exc:
                    self.outlet.reject(
                        message.subject, f"invalid task in a batch for {item.subject[:200]!r}: {exc}"
                    )
                    continue
                if self.dispatcher.has_skill("task", task.type):
                    tasks.append(task)
                else:  # on our subject, of a type nobody here handles: as _on_task answers it
                    self.outlet.publish_result(_no_agent(task), None)
            elif self._forwardable(item.subject):
                foreign.append(item)
            else:
                self._refuse(message.subject, item.subject)
        # Ours, in a few units of work (results each on task.result, as for tasks one by one).
        self.dispatcher.dispatch_tasks(tasks)
        for item in foreign:  # not ours to run: send each on by itself, to whoever takes it
            await self.outlet.publish(item.subject, item.message)

    def _bare_tasks(self, message: Message) -> list[TaskBatchItem] | None:
        """A bare array of tasks, as the AI Flock seed's MessageBatcher sends, read as items
        each on its own ``tasks.<type>``; None if the batch is not one."""
        try:
            tasks = self.codec.decode(
                message.subject, message.data, list[TaskMessage], message.headers.get("Content-Type")
            )
        except InvalidMessage:
            return None
        # Not checked here: a type that is no subject token is refused as such an item would be.
        return [TaskBatchItem(subject=f"tasks.{task.type}", message=task) for task in tasks]

    def _forwardable(self, subject: str) -> bool:
        """Whether a batch item for ``subject`` may be republished there: a task subject of the
        flock, not its dead letters."""
        dead = self.durable.dead_letter_subject if self.durable is not None else None
        return _TASK_SUBJECT.match(subject) is not None and subject != dead

    def _refuse(self, batch_subject: str, subject: str) -> str:
        """Count and log a batch item for a subject it may not stand for; the error says why."""
        error = f"batch item for {subject[:200]!r} refused: batch items may only be tasks on tasks.<type>"
        self.outlet.reject(batch_subject, error)
        return error

    def _runs_here(self, subject: str) -> bool:
        """Whether a local agent runs tasks published on ``subject``."""
        return subject.startswith("tasks.") and self.dispatcher.has_skill("task", subject[len("tasks.") :])

    def _answer_batch(self, message: Message, items: Sequence[TaskBatchItem | BatchItem]) -> None:
        """Run a batch's tasks and answer its request with one array of their TaskResults, in
        order, once the last one is in. Those results do not go to ``task.result``."""
        reply, headers = message.reply, outgoing_headers(message.headers)

        def answer(results: list[TaskResult]) -> None:
            try:
                self.bus.publish_nowait(reply, self.codec.encode(results), headers=headers)
            except BusUnavailable as exc:
                log.debug("batch results not published: %s", exc)

        subject = items[0].subject
        if type(items[0]) is TaskBatchItem and self._runs_here(subject):  # all are TaskBatchItems
            same = [item.message for item in items if item.subject == subject]
            if len(same) == len(items):  # the usual batch: all ours, their results the answer
                try:
                    self.dispatcher.dispatch_tasks(same, answer, publish=False)
                    return
                except NoCapableAgent:  # a task's type is not its subject's: nothing was queued
                    pass
        tasks: list[TaskMessage] = []
        places: list[int] = []  # where each of `tasks` is in the batch
        others: list[tuple[int, TaskResult | tuple[str, TaskMessage]]] = []  # done, or to forward
        runnable: dict[str, bool] = {}  # subject -> self._runs_here(subject), per batch
        for index, item in enumerate(items):
            try:
                task = _as_task(item)
            except msgspec.ValidationError as exc:
                self.outlet.reject(
                    message.subject, f"invalid task in a batch for {item.subject[:200]!r}: {exc}"
                )
                error = f"invalid task: {exc}"
                others.append((index, TaskResult(task_id="", processed_by="", status="error", error=error)))
                continue
            runs = runnable.get(item.subject)
            if runs is None:
                runs = runnable[item.subject] = self._runs_here(item.subject)
            if runs and self.dispatcher.has_skill("task", task.type):
                tasks.append(task)
                places.append(index)
            elif runs:  # on our subject, of a type nobody here handles: as _on_task answers it
                others.append((index, _no_agent(task)))
            elif self._forwardable(item.subject):
                others.append((index, (item.subject, task)))
            else:
                error = self._refuse(message.subject, item.subject)
                failed = TaskResult(task_id=task.id, processed_by="", status="error", error=error)
                others.append((index, failed))
        if not others:
            self.dispatcher.dispatch_tasks(tasks, answer, publish=False)
            return
        results: list[TaskResult | None] = [None] * len(items)
        missing = len(items)

        def settle(index: int, result: TaskResult) -> None:
            nonlocal missing
            results[index] = result
            missing -= 1
            if missing == 0:
                answer(results)  # type: ignore[arg-type]  # no None is left

        def ours(outcomes: list[TaskResult]) -> None:
            for index, result in zip(places, outcomes, strict=True):
                settle(index, result)

        if tasks:
            self.dispatcher.dispatch_tasks(tasks, ours, publish=False)
        foreign: list[tuple[int, str, TaskMessage]] = []
        for index, other in others:
            if isinstance(other, TaskResult):
                settle(index, other)
            else:
                foreign.append((index, *other))
        if foreign:  # not ours to run: ask whoever takes their subjects, one by one
            self.outlet.spawn(self._forward_batch_items(foreign, settle))

    async def _forward_batch_items(
        self, items: list[tuple[int, str, TaskMessage]], settle: Callable[[int, TaskResult], None]
    ) -> None:
        async def forward(index: int, subject: str, task: TaskMessage) -> None:
            timeout = task.timeout / 1000 if task.timeout else 30.0
            try:
                reply = await self.outlet.request(subject, task, "task", task.type, timeout, None)
                result = self.codec.decode(
                    reply.subject, reply.data, TaskResult, reply.headers.get("Content-Type")
                )
            except (FlockError, ValueError) as exc:
                result = failed_task(task, exc)
            settle(index, result)

        await asyncio.gather(*(forward(*item) for item in items))


def _invalid_item(subject: str, exc: Exception) -> str:
    return f"invalid task in a batch for {subject[:200]!r}: {exc}"


def _no_agent(task: TaskMessage) -> TaskResult:
    """The error result of a task no local agent can run."""
    return failed_task(task, NoCapableAgent("task", task.type))


def _as_task(item: TaskBatchItem | BatchItem) -> TaskMessage:
    """The task a batch item carries (raises msgspec.ValidationError if it is not one)."""
    if isinstance(item.message, TaskMessage):
        return item.message
    return msgspec.convert(item.message, TaskMessage)


def _endpoint_name(capability: str) -> str:
    """Service API endpoint names allow letters, digits, '-' and '_' only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", capability)
