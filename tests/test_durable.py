"""Durable tasks on a JetStream work queue: no task lost to failing handlers, crashes or outages."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import pytest

from flockrt.bus.connection import BusState, Message, NatsConnection
from flockrt.bus.durable import DeadLetter, DurableTasks, TaskConsumer
from flockrt.bus.embedded import EmbeddedNats
from flockrt.errors import BusUnavailable, JetStreamError
from flockrt.wire.schema import Codec, TaskMessage, TaskResult
from tests.conftest import wait_for

STREAM = "FLOCK_TASKS"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def connection(url: str) -> NatsConnection:
    # Short waits so that recovery takes milliseconds, not the production seconds.
    return NatsConnection(url, reconnect_wait=0.05, max_backoff=0.1, connect_timeout=1.0)


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[NatsConnection]:
    bus = connection(nats_server.url)
    await bus.start()
    yield bus
    await bus.close()


def durable(bus: NatsConnection, **options: object) -> DurableTasks:
    settings: dict[str, object] = {"backoff": (0.01, 0.02), "fetch_timeout": 0.2}
    settings.update(options)
    return DurableTasks(bus, Codec(), **settings)  # type: ignore[arg-type]


def task(task_type: str, number: int) -> TaskMessage:
    return TaskMessage(id=f"{task_type}-{number}", type=task_type, data=number)


def ok(task: TaskMessage) -> TaskResult:
    return TaskResult(task_id=task.id, result=task.data, processed_by="test")


class Worker:
    """A task handler that records every attempt; ``outcome`` decides each attempt's fate."""

    def __init__(self, outcome: Callable[[TaskMessage, int], TaskResult] | None = None) -> None:
        self.attempts: Counter[str] = Counter()
        self.done: list[str] = []
        self._outcome = outcome

    async def __call__(self, task: TaskMessage) -> TaskResult:
        self.attempts[task.id] += 1
        result = self._outcome(task, self.attempts[task.id]) if self._outcome else ok(task)
        if result.status == "ok":
            self.done.append(task.id)
        return result


async def stored(url: str, subject: str) -> int:
    """How many messages the stream holds on ``subject``, asked with a plain client."""
    plain = await nats.connect(url, allow_reconnect=False)
    try:
        info = await plain.jetstream().stream_info(STREAM, subjects_filter=subject)
        return sum((info.state.subjects or {}).values())
    finally:
        await plain.close()


async def test_failed_attempts_are_redelivered_and_every_task_acked_once(
    bus: NatsConnection, nats_server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    def first_attempt_fails(task: TaskMessage, attempt: int) -> TaskResult:
        if attempt == 1 and task.data % 5 == 0:
            raise RuntimeError("flaky")
        if attempt == 1 and task.data % 3 == 0:
            return TaskResult(task_id=task.id, processed_by="test", status="error", error="try again")
        return ok(task)

    tasks = durable(bus)
    await tasks.setup()
    worker = Worker(first_attempt_fails)
    consumer = await tasks.consume("job", worker, capacity=lambda: 4)
    submitted = [task("job", i) for i in range(30)]
    with caplog.at_level(logging.INFO, logger="flockrt.durable"):
        for t in submitted:
            assert await tasks.submit(t)
        await wait_for(lambda: tasks.stats.acked == 30)
        await consumer.stop()
    failing = {t.id for t in submitted if t.data % 3 == 0 or t.data % 5 == 0}
    assert Counter(worker.done) == Counter(t.id for t in submitted)  # each exactly once, as ok
    assert {i for i, n in worker.attempts.items() if n == 2} == failing
    assert tasks.stats.redelivered == len(failing) == 14
    assert (tasks.stats.received, tasks.stats.dead_lettered, tasks.stats.unsettled) == (44, 0, 0)
    assert caplog.text.count("redelivering in") == 14
    assert "handler raised RuntimeError('flaky')" in caplog.text
    assert await stored(nats_server.url, "tasks.>") == 0  # acked means gone from the work queue


async def test_a_task_failing_every_time_is_dead_lettered_with_the_reason(
    bus: NatsConnection, nats_server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    def always_fails(task: TaskMessage, attempt: int) -> TaskResult:
        raise RuntimeError(f"boom {attempt}")

    plain = await nats.connect(nats_server.url, allow_reconnect=False)
    letters = await plain.subscribe("tasks.dead")
    tasks = durable(bus, max_deliver=3)
    await tasks.setup()
    worker = Worker(always_fails)
    consumer = await tasks.consume("flaky", worker)
    try:
        with caplog.at_level(logging.WARNING, logger="flockrt.durable"):
            await tasks.submit(task("flaky", 1))
            letter = json.loads((await letters.next_msg(timeout=5)).data)
            await wait_for(lambda: tasks.stats.dead_lettered == 1)  # confirmed terminated
    finally:
        await consumer.stop()
        await plain.close()
    assert letter["task"]["id"] == "flaky-1" and letter["task"]["type"] == "flaky"
    assert letter["raw"] is None
    assert letter["reason"] == "failed 3 times; last: handler raised RuntimeError('boom 3')"
    assert (letter["deliveries"], letter["subject"]) == (3, "tasks.flaky")
    assert worker.attempts["flaky-1"] == 3
    assert (tasks.stats.redelivered, tasks.stats.dead_lettered, tasks.stats.acked) == (2, 1, 0)
    assert "flaky-1 on tasks.flaky dead-lettered to tasks.dead after 3 deliveries" in caplog.text
    # The task left the work queue; its dead letter is kept in the stream for an operator.
    assert await stored(nats_server.url, "tasks.flaky") == 0
    assert await stored(nats_server.url, "tasks.dead") == 1


async def test_a_duplicate_submission_is_dropped(bus: NatsConnection) -> None:
    tasks = durable(bus)
    await tasks.setup()
    assert await tasks.submit(task("job", 1))
    assert not await tasks.submit(task("job", 1))
    assert await tasks.submit(task("job", 2))
    worker = Worker()
    consumer = await tasks.consume("job", worker)
    # One at a time, in stream order: a stored duplicate would have come before job-2.
    await wait_for(lambda: tasks.stats.acked == 2)
    await consumer.stop()
    assert worker.done == ["job-1", "job-2"]
    assert (tasks.stats.submitted, tasks.stats.duplicates) == (2, 1)


async def test_a_killed_and_restarted_server_loses_no_task(
    bus: NatsConnection, nats_server: EmbeddedNats
) -> None:
    tasks = durable(bus, ack_wait=1.0)
    await tasks.setup()
    release = asyncio.Event()

    async def run(task: TaskMessage) -> TaskResult:
        if task.data >= 10:  # the first ten finish; the next two are in hand when the server dies
            await release.wait()
        done.append(task.id)
        return ok(task)

    done: list[str] = []
    consumer = await tasks.consume("job", run, capacity=lambda: 2)
    submitted = [task("job", i) for i in range(40)]
    for t in submitted[:20]:
        await tasks.submit(t)
    await wait_for(lambda: tasks.stats.acked == 10 and consumer.running == 2)

    await nats_server.kill()
    await wait_for(lambda: bus.state is BusState.DEGRADED)
    with pytest.raises(BusUnavailable):  # a durable submit is refused, never buffered
        await tasks.submit(task("job", 99))
    release.set()  # the two in hand finish during the outage; their acks wait for the server
    await nats_server.restart()
    await bus.wait_connected(timeout=10)
    for t in submitted[20:]:
        await tasks.submit(t)

    ids = {t.id for t in submitted}
    await wait_for(lambda: ids <= set(done) and tasks.stats.acked >= 40, timeout=10)
    await consumer.stop()
    assert set(done) == ids  # every task processed: none lost (and nothing else)
    assert len(set(done)) == 40
    # At least once: only a task whose outcome was on its way when the server died may repeat.
    repeated = {i for i, n in Counter(done).items() if n > 1}
    assert repeated <= {"job-10", "job-11"}
    assert await stored(nats_server.url, "tasks.>") == 0


async def test_a_crashed_consumer_task_goes_to_another_after_ack_wait(nats_server: EmbeddedNats) -> None:
    crashing, survivor = connection(nats_server.url), connection(nats_server.url)
    await crashing.start()
    await survivor.start()
    started = asyncio.Event()

    async def hangs(task: TaskMessage) -> TaskResult:
        started.set()
        await asyncio.Event().wait()  # never finishes: its process is about to die
        raise AssertionError("unreachable")

    first, second = durable(crashing, ack_wait=0.5), durable(survivor, ack_wait=0.5)
    await first.setup()
    doomed = await first.consume("job", hangs)
    worker = Worker()
    rescuer: TaskConsumer | None = None
    try:
        await first.submit(task("job", 1))
        await started.wait()
        # The process dies: its connection is gone and nothing is ever settled.
        await crashing.close()
        loop = asyncio.get_running_loop()
        crashed_at = loop.time()
        rescuer = await second.consume("job", worker)
        await wait_for(lambda: second.stats.acked == 1, timeout=5)
        waited = loop.time() - crashed_at
    finally:
        await doomed.stop()
        if rescuer is not None:
            await rescuer.stop()
        await survivor.close()
    assert worker.done == ["job-1"]
    assert first.stats.acked == 0
    assert waited >= 0.3  # redelivered by the server's ack wait (0.5 s), not by a settlement


async def test_an_invalid_message_is_dead_lettered_and_the_consumer_lives(
    bus: NatsConnection, nats_server: EmbeddedNats
) -> None:
    letters: list[Message] = []

    async def collect(message: Message) -> None:
        letters.append(message)

    await bus.subscribe("tasks.dead", collect)
    tasks = durable(bus)
    await tasks.setup()
    worker = Worker()
    consumer = await tasks.consume("x", worker)
    await bus.publish("tasks.x", b"{not json")  # a plain publish: the stream stores it anyway
    await tasks.submit(task("x", 1))
    await wait_for(lambda: len(letters) == 1 and tasks.stats.acked == 1)
    await consumer.stop()
    letter = Codec().decode("tasks.dead", letters[0].data, DeadLetter)
    assert (letter.task, letter.raw, letter.deliveries, letter.subject) == (None, "{not json", 1, "tasks.x")
    assert letter.reason.startswith("invalid message on 'tasks.x': payload: not valid JSON")
    assert worker.done == ["x-1"]  # the consumer lived on
    assert (tasks.stats.invalid, tasks.stats.dead_lettered, tasks.stats.acked) == (1, 1, 1)
    assert await stored(nats_server.url, "tasks.x") == 0


async def test_a_process_pulls_no_more_than_it_can_run(nats_server: EmbeddedNats) -> None:
    buses = [connection(nats_server.url), connection(nats_server.url)]
    release = asyncio.Event()
    done: list[str] = []

    async def slow(task: TaskMessage) -> TaskResult:
        await release.wait()
        done.append(task.id)
        return ok(task)

    consumers: list[TaskConsumer] = []
    try:
        for b in buses:
            await b.start()
        flocks = [durable(b) for b in buses]
        await flocks[0].setup()
        consumers = [await f.consume("job", slow, capacity=lambda: 2) for f in flocks]
        for i in range(5):
            await flocks[0].submit(task("job", i))
        await wait_for(lambda: [c.running for c in consumers] == [2, 2])
        # Four are in hand, two per process; the fifth waits in the stream for a free slot.
        plain = await nats.connect(nats_server.url, allow_reconnect=False)
        info = await plain.jetstream().consumer_info(STREAM, "tasks-job")
        await plain.close()
        assert (info.num_ack_pending, info.num_pending) == (4, 1)
        release.set()
        await wait_for(lambda: len(done) == 5)
    finally:
        for c in consumers:
            await c.stop()
        for b in buses:
            await b.close()
    assert sorted(done) == [f"job-{i}" for i in range(5)]


async def test_refusals_are_named(bus: NatsConnection) -> None:
    tasks = durable(bus)
    with pytest.raises(JetStreamError, match=r"no JetStream stream captures 'tasks\.job'"):
        await tasks.submit(task("job", 1))  # setup() not called: no stream yet
    with pytest.raises(JetStreamError, match="stream not found"):
        await tasks.consume("job", Worker())
    await tasks.setup()
    await tasks.setup()  # idempotent
    with pytest.raises(ValueError, match="dead letters"):
        await tasks.consume("dead", Worker())
    with pytest.raises(ValueError, match="max_deliver"):
        durable(bus, max_deliver=0)


async def test_a_consumer_started_while_nats_is_down_works_once_it_is_up(tmp_path: Path) -> None:
    port = free_port()
    bus = connection(f"nats://127.0.0.1:{port}")
    tasks = durable(bus)
    worker = Worker()
    try:
        await bus.start()
        assert bus.state is BusState.DEGRADED
        with pytest.raises(BusUnavailable):
            await tasks.setup()
        consumer = await tasks.consume("job", worker)  # binds once NATS is there
        async with EmbeddedNats(port=port, store_dir=tmp_path / "nats"):
            await bus.wait_connected(timeout=10)
            # Nobody calls setup() again: the consumer sets the stream up when it finds none.
            async with asyncio.timeout(5):
                while True:
                    try:
                        await tasks.submit(task("job", 1))
                        break
                    except JetStreamError:  # no stream yet
                        await asyncio.sleep(0.01)
            await wait_for(lambda: tasks.stats.acked == 1)
            await consumer.stop()
    finally:
        await bus.close()
    assert worker.done == ["job-1"]


async def test_a_consumer_binds_again_when_the_client_is_replaced(
    nats_server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    # nats-py gives up after one attempt; the connection's own loop reconnects with a new client.
    bus = NatsConnection(nats_server.url, reconnect_wait=0.05, max_backoff=0.1, max_retries=1)
    tasks = durable(bus)
    worker = Worker()
    try:
        await bus.start()
        await tasks.setup()
        consumer = await tasks.consume("job", worker)
        await tasks.submit(task("job", 1))
        await wait_for(lambda: tasks.stats.acked == 1)
        with caplog.at_level(logging.WARNING, logger="flockrt.bus"):
            await nats_server.kill()
            await wait_for(lambda: "gave up after 1 reconnect attempts" in caplog.text)
        await nats_server.restart()
        await bus.wait_connected(timeout=10)
        await tasks.submit(task("job", 2))
        await wait_for(lambda: tasks.stats.acked == 2)
        await consumer.stop()
    finally:
        await bus.close()
    assert worker.done == ["job-1", "job-2"]
