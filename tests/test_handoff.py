"""The confirmed hand-off of core mode on a NATS cluster (flockrt/bus/handoff.py).

flockrt nodes in this process on a real 3-node cluster (tests/nats_cluster.py): on a cluster
each keeps one permanent queue subscription on ``tasks.work`` and takes an equal share, and
what waits for a slot is offered to a process with room. A plain nats-py client publishes the
tasks, collects ``task.result``, and plays a peer where a test needs one that answers as it
says: an offer is dropped only on ``taken``; ``full``, no responders and no answer keep it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.msg import Msg

from flockrt.bus import handoff
from tests.conftest import wait_for
from tests.intake_support import Node, Results, collect_results, publish_tasks, starts, task_payload
from tests.nats_cluster import NatsCluster

ROOM = "flockrt.intake.work.room"
SECONDS = 1.0
"""How long a task takes where a test waits for one to run and the others to wait: long enough
that the loaded machine does not finish the first before the test sees it running."""
FAKE = "flockrt.intake.work.offer.fake"


@pytest.fixture
async def client(cluster: NatsCluster) -> AsyncIterator[nats.NATS]:
    """A plain client on n2, where no node of these tests is: every task crosses a route."""
    connection = await nats.connect(cluster["n2"].url, allow_reconnect=False)
    yield connection
    await connection.close()


async def _visible(client: nats.NATS, *nodes: str) -> None:
    """Wait until the client's server knows of the ``nodes``' subscriptions (which cross a route
    after the node's own server confirmed them): each answers a question for room on the room
    subject, which a lane subscribes to after ``tasks.work``."""
    seen: set[str] = set()
    heard = asyncio.Event()

    async def on_room(msg: Msg) -> None:
        room = json.loads(msg.data)
        if room["room"] > 0:
            seen.add(room["node"])
            heard.set()

    question = json.dumps({"node": "probe", "room": 0, "inbox": "flockrt.intake.work.offer.probe"}).encode()
    subscription = await client.subscribe(ROOM, cb=on_room)
    try:
        async with asyncio.timeout(10):
            while not set(nodes) <= seen:
                heard.clear()
                await client.publish(ROOM, question)  # asked again until all have answered
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await heard.wait()
    finally:
        await subscription.unsubscribe()


async def _held(node: Node, client: nats.NATS, count: int) -> tuple[Results, list[str]]:
    """``count`` tasks published to ``node`` alone: one runs, the rest wait in its lane."""
    await _visible(client, node.name)
    results = await collect_results(client)
    ids = [f"t{i}" for i in range(count)]
    await publish_tasks(client, ids, durable=False)
    await wait_for(lambda: node.started == ["t0"] and len(node.lane.held) == count - 1, timeout=10)
    assert node.lane.handoff is not None, "a lane on a cluster hands off"
    return results, ids


async def test_waiting_tasks_run_on_a_peer_with_room(cluster: NatsCluster, client: nats.NATS) -> None:
    async with Node(cluster["n1"].url, "small", 1, SECONDS) as small:
        results, ids = await _held(small, client, 8)
        async with Node(cluster["n3"].url, "big", 4, SECONDS) as big:
            # big asks who needs room at start, small asks while it holds: big takes 4 at once.
            await wait_for(lambda: len(big.started) >= 4, timeout=10)
            await wait_for(lambda: results.ok() == set(ids), timeout=10)
            assert starts(small, big) == {task: 1 for task in ids}
            assert small.lane.stats.handed_off == big.lane.stats.handed_in == len(big.started)
            assert big.lane.stats.taken == 0  # every task big ran was handed to it


@pytest.mark.parametrize("answer", ["full", "silent", "no responders"])
async def test_an_offer_not_taken_keeps_the_task(
    cluster: NatsCluster, client: nats.NATS, answer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handoff, "OFFER_TIMEOUT", 0.3)
    offers: list[Msg] = []

    async def peer(msg: Msg) -> None:
        offers.append(msg)
        if answer == "full":
            await client.publish(msg.reply, json.dumps({"node": "fake", "taken": False, "room": 0}).encode())

    if answer != "no responders":
        await client.subscribe(FAKE, cb=peer)
    async with Node(cluster["n1"].url, "small", 1, SECONDS) as small:
        results, ids = await _held(small, client, 3)
        lane = small.lane
        assert lane.handoff is not None
        await client.publish(ROOM, json.dumps({"node": "fake", "room": 1, "inbox": FAKE}).encode())
        # The offer goes out (the task leaves the queue while it waits for the answer) ...
        await wait_for(lambda: lane.handoff is not None and lane.handoff.offering == 1, timeout=5)
        # ... and comes back into it, in its place, when the answer is not "taken".
        await wait_for(lambda: lane.handoff is not None and lane.handoff.offering == 0, timeout=5)
        assert lane.stats.handed_off == 0
        if answer == "no responders":
            assert FAKE not in lane.handoff.peers  # a peer that is gone is forgotten
        else:
            assert [json.loads(o.data)["id"] for o in offers] == ["t1"]  # the oldest first
        await wait_for(lambda: results.ok() == set(ids), timeout=10)
        assert starts(small) == {task: 1 for task in ids}  # all ran here, once


async def test_a_taken_offer_is_dropped_and_carries_the_reply_subject_and_headers(
    cluster: NatsCluster, client: nats.NATS
) -> None:
    offers: list[Msg] = []

    async def peer(msg: Msg) -> None:  # takes it: runs nothing, answers a requester itself
        offers.append(msg)
        await client.publish(msg.reply, json.dumps({"node": "fake", "taken": True, "room": 0}).encode())
        if msg.headers and "Flockrt-Reply" in msg.headers:
            result = {"taskId": "asked", "result": "by fake", "processedBy": "fake", "status": "ok"}
            await client.publish(msg.headers["Flockrt-Reply"], json.dumps(result).encode())

    await client.subscribe(FAKE, cb=peer)
    async with Node(cluster["n1"].url, "small", 1, 3.0) as small:
        await _held(small, client, 2)
        # A request with a correlation id waits behind t1.
        asked = asyncio.ensure_future(
            client.request(
                "tasks.work", task_payload("asked"), timeout=10, headers={"Correlation-Id": "c-42"}
            )
        )
        await wait_for(lambda: len(small.lane.held) == 2, timeout=5)
        await client.publish(ROOM, json.dumps({"node": "fake", "room": 2, "inbox": FAKE}).encode())
        await wait_for(lambda: small.lane.stats.handed_off == 2, timeout=5)
        assert small.lane.held == []
        reply = await asyncio.wait_for(asked, 10)
        assert json.loads(reply.data)["processedBy"] == "fake"
        assert small.started == ["t0"]  # the others ran "elsewhere"
        first, second = offers
        assert json.loads(first.data)["id"] == "t1"  # the oldest waiting one first
        assert json.loads(second.data)["id"] == "asked"
        # The requester's own headers travel with the task, and its reply subject.
        assert second.headers is not None
        assert second.headers["Correlation-Id"] == "c-42"
        assert second.headers["Flockrt-Reply"].startswith("_INBOX.")


async def test_a_stopping_node_loses_nothing(cluster: NatsCluster, client: nats.NATS) -> None:
    async with (
        Node(cluster["n1"].url, "small", 1, SECONDS) as small,
        Node(cluster["n3"].url, "big", 2, 0.3) as big,
    ):
        await _visible(client, "small", "big")
        results = await collect_results(client)
        ids = [f"s{i:02d}" for i in range(30)]
        await publish_tasks(client, ids, durable=False)
        await wait_for(lambda: len(small.lane.held) > 0, timeout=10)
        await small.flock.stop_intake(5.0)
        stats = small.lane.stats
        # What waited went to big: offered (to a node known to have room) or handed back.
        assert stats.refused == 0
        assert small.lane.held == []
        assert stats.handed_off + stats.handed_back > 0
        await wait_for(lambda: results.ok() == set(ids), timeout=20)
        assert starts(small, big) == {task: 1 for task in ids}


async def test_a_node_alone_refuses_what_it_holds_at_its_stop(
    cluster: NatsCluster, client: nats.NATS
) -> None:
    async with Node(cluster["n1"].url, "alone", 1, SECONDS) as alone:
        results, _ = await _held(alone, client, 3)
        stats = alone.lane.stats
        await alone.flock.stop_intake(5.0)
        await wait_for(lambda: len(results.by_task) == 3, timeout=10)
    assert results.ok() == {"t0"}
    assert sorted(error["taskId"] for error in results.errors()) == ["t1", "t2"]
    assert {error["errorType"] for error in results.errors()} == {"NodeStopping"}
    assert stats.refused == 2


async def test_a_bad_room_message_is_counted_and_changes_nothing(
    cluster: NatsCluster, client: nats.NATS
) -> None:
    async with Node(cluster["n1"].url, "small", 1, SECONDS) as small:
        results, ids = await _held(small, client, 3)
        lane = small.lane
        assert lane.handoff is not None
        await client.publish(ROOM, b"not json")
        # An inbox that is no offer inbox of the type (here: the task subject itself) is refused:
        # offering there would publish the task anew.
        await client.publish(ROOM, json.dumps({"node": "x", "room": 5, "inbox": "tasks.work"}).encode())
        await wait_for(lambda: lane.outlet.invalid[ROOM] == 2, timeout=5)
        assert lane.handoff.peers == {}
        await wait_for(lambda: results.ok() == set(ids), timeout=10)
        assert starts(small) == {task: 1 for task in ids}


async def test_offers_in_flight_count_against_max_held(
    cluster: NatsCluster, client: nats.NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handoff, "OFFER_TIMEOUT", 10.0)

    async def silent(msg: Msg) -> None:  # a peer that never answers
        pass

    await client.subscribe(FAKE, cb=silent)
    # prefetch 1 + max_held 1: at most 2 tasks wait here, offered or not.
    async with Node(cluster["n1"].url, "small", 1, SECONDS, max_held=1) as small:
        results, _ = await _held(small, client, 3)
        lane = small.lane
        await client.publish(ROOM, json.dumps({"node": "fake", "room": 1, "inbox": FAKE}).encode())
        await wait_for(lambda: lane.handoff is not None and lane.handoff.offering == 1, timeout=5)
        await publish_tasks(client, ["extra"], durable=False)
        await wait_for(lambda: "extra" in results.by_task, timeout=5)
        [refusal] = results.by_task["extra"]
        assert refusal["errorType"] == "FlockSaturated"
        assert lane.stats.saturated == 1
