"""Capacity-aware intake on a real nats-server: a node takes at most its free slots plus the
prefetch, in core and durable mode, so uneven nodes finish near the ideal time, and a killed
node loses at most what it held (core) or nothing (durable)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import nats
import pytest

from flockrt import metrics
from flockrt.bus.embedded import EmbeddedNats
from tests.conftest import wait_for
from tests.intake_support import Node, Process, collect_results, publish_tasks, starts, wait_keeper
from tests.test_metrics import value

TASKS = 64
SECONDS = 0.5  # long enough that the event loop's lag on a loaded machine is a small part of it


@pytest.fixture
async def client(nats_server: EmbeddedNats) -> AsyncIterator[nats.NATS]:
    connection = await nats.connect(nats_server.url, allow_reconnect=False)
    yield connection
    await connection.close()


async def _uneven(url: str, client: nats.NATS, *, durable: bool) -> tuple[float, Node]:
    """64 tasks of 0.5 s on a 1-slot and an 8-slot node (the small one started first):
    seconds from the first publish to the last result."""
    results = await collect_results(client)
    async with (
        Node(url, "small", 1, SECONDS, durable=durable) as small,
        Node(url, "big", 8, SECONDS, durable=durable) as big,
    ):
        if not durable:  # the keeper is the node with the most slots, and the small one takes credit
            await wait_keeper(client, "big")
            await wait_for(lambda: not small.lane.keeper and small.lane.outstanding == 2)
        ids = [f"t{i:02d}" for i in range(TASKS)]
        loop = asyncio.get_running_loop()
        began = loop.time()
        await publish_tasks(client, ids, durable=durable)
        if not durable:  # all taken at once: the small node holds no more than 1 slot + prefetch 1
            await wait_for(lambda: small.flock.intake.stats.taken + big.flock.intake.stats.taken == TASKS)
            assert small.lane.running + len(small.lane.held) <= 2
        await wait_for(lambda: len(results.ok()) == TASKS, timeout=20)
        elapsed = results.last_at - began
        assert starts(small, big) == {task: 1 for task in ids}  # each ran once
        return elapsed, small


@pytest.mark.parametrize("durable", [False, True], ids=["core", "durable"])
async def test_uneven_capacity_finishes_near_the_ideal(
    nats_server: EmbeddedNats, client: nats.NATS, durable: bool
) -> None:
    ideal = TASKS * SECONDS / 9  # 9 slots in all
    elapsed, small = await _uneven(nats_server.url, client, durable=durable)
    print(f"uneven capacity, {'durable' if durable else 'core'}: {elapsed:.2f} s, ideal {ideal:.2f} s")
    assert elapsed <= 1.2 * ideal, f"{elapsed:.2f} s for an ideal of {ideal:.2f} s"
    assert len(small.started) <= math.ceil(TASKS / 9) + 1  # it ran its share, not half


async def test_the_node_with_most_slots_keeps_the_type_and_hands_it_over_when_it_stops(
    nats_server: EmbeddedNats, client: nats.NATS
) -> None:
    results = await collect_results(client)
    async with Node(nats_server.url, "small", 1, 0.05) as small:
        await wait_keeper(client, "small")  # alone: it keeps the type
        async with Node(nats_server.url, "big", 4, 0.05) as big:
            await wait_keeper(client, "big")
            await wait_for(lambda: not small.lane.keeper)
            await publish_tasks(client, ["a1", "a2", "a3"], durable=False)
            await wait_for(lambda: results.ok() == {"a1", "a2", "a3"})
            await big.flock.stop_intake(5.0)  # hands the type over before it lets go
            assert small.lane.keeper
            # Saturate the small node: nothing vanishes, the keeper holds what it cannot run.
            await publish_tasks(client, [f"b{i}" for i in range(6)], durable=False)
            await wait_for(lambda: len(results.ok()) == 9, timeout=5)
        assert big.flock.intake.stats.refused == 0


async def test_a_stop_hands_back_what_never_started_and_refuses_when_nobody_else_runs_the_type(
    nats_server: EmbeddedNats, client: nats.NATS
) -> None:
    results = await collect_results(client)
    async with Node(nats_server.url, "alone", 1, 0.3) as alone:
        await wait_keeper(client, "alone")
        await publish_tasks(client, ["r1", "r2", "r3"], durable=False)
        await wait_for(lambda: alone.started == ["r1"] and len(alone.lane.held) == 2)
        assert alone.flock.queued_work == 2  # held by the intake, counted as queued
        with metrics.instrument(alone.system, flock=alone.flock, bus=alone.bus):
            await alone.flock.stop_intake(5.0)
            assert value("flockrt_intake_tasks_total", event="refused", system="alone") == 2
            assert value("flockrt_intake_tasks_total", event="taken", system="alone") == 3
        await wait_for(lambda: len(results.by_task) == 3)
    assert results.ok() == {"r1"}  # the running one finished
    refused = sorted(error["taskId"] for error in results.errors())
    assert refused == ["r2", "r3"]
    assert {error["errorType"] for error in results.errors()} == {"NodeStopping"}


async def test_kill_9_of_a_core_node_loses_at_most_its_slots_and_prefetch(
    nats_server: EmbeddedNats, client: nats.NATS
) -> None:
    results = await collect_results(client)
    ids = [f"k{i:02d}" for i in range(40)]
    async with (
        Process(nats_server.url, "big", 8, 0.5, "core") as big,
        Process(nats_server.url, "small", 1, 0.5, "core") as small,
    ):
        await wait_keeper(client, "big")
        await publish_tasks(client, ids, durable=False)
        async with asyncio.timeout(10):
            await small.first_start.wait()
        small.kill()
        # The small node held one running task and one prefetched: at most those two are lost.
        await wait_for(lambda: len(results.ok()) >= len(ids) - 2, timeout=20)
        assert set(big.started) <= results.ok()
        lost = set(ids) - results.ok()
        assert len(lost) <= 2
        assert not lost & set(big.started)  # the lost ones were the small node's


async def test_kill_9_of_a_durable_node_loses_nothing_and_its_tasks_return_within_the_ack_wait(
    nats_server: EmbeddedNats, client: nats.NATS
) -> None:
    results = await collect_results(client)
    ids = [f"d{i:02d}" for i in range(30)]
    async with (
        Process(nats_server.url, "big", 8, 0.5, "durable") as big,  # the default ack_wait: 10 s
        Process(nats_server.url, "small", 1, 0.5, "durable") as small,
    ):
        await publish_tasks(client, ids, durable=True)
        async with asyncio.timeout(10):
            await small.first_start.wait()
        small.kill()
        killed_at = asyncio.get_running_loop().time()
        running = small.started[-1]  # killed 0.5 s task
        await wait_for(lambda: results.ok() == set(ids), timeout=20)
        back_after = results.last_at - killed_at
        assert running in big.started  # redelivered to the survivor
        assert back_after <= 10.0 + 0.5 + 2.0, (
            f"the killed node's tasks were done {back_after:.1f} s after the kill"
        )


async def test_a_durable_task_longer_than_the_ack_wait_is_never_redelivered_while_it_runs(
    nats_server: EmbeddedNats, client: nats.NATS
) -> None:
    results = await collect_results(client)
    async with (
        Node(nats_server.url, "one", 1, 2.5, durable=True, ack_wait=0.6) as one,
        Node(nats_server.url, "two", 1, 2.5, durable=True, ack_wait=0.6) as two,
    ):
        await publish_tasks(client, ["long"], durable=True)
        await wait_for(lambda: results.ok() == {"long"}, timeout=10)
        assert starts(one, two) == {"long": 1}  # over four ack waits, in one run
        assert one.flock.durable_counts()["redelivered"] + two.flock.durable_counts()["redelivered"] == 0


async def test_garbage_on_the_keeper_subject_is_counted_and_the_keeper_keeps_answering(
    nats_server: EmbeddedNats, client: nats.NATS
) -> None:
    async with Node(nats_server.url, "alone", 1, 0.05) as alone:
        await wait_keeper(client, "alone")
        subject = "flockrt.intake.work.keeper"
        for garbage in (b"\xff not json", b'{"node": 5}', b"[]"):
            await client.publish(subject, garbage)
        await wait_for(lambda: alone.flock.invalid_messages[subject] == 3)
        await wait_keeper(client, "alone")  # still the keeper, still answering probes
