"""submit(..., wait=True) over NATS against peers that answer in each way the wire allows: a
reply only, task.result only, both, nothing, or garbage; and the waiter's bookkeeping after."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import nats
import pytest
from nats.aio.msg import Msg

from flockrt.bus.connection import NatsConnection
from flockrt.bus.embedded import EmbeddedNats
from flockrt.bus.replies import Replies
from flockrt.errors import BusTimeout, InvalidMessage, WorkTimeout
from flockrt.wire.schema import TaskResult
from tests.test_bus_flock import Node


def _result(msg: Msg, by: str) -> bytes:
    task = msgspec.json.decode(msg.data)
    return msgspec.json.encode({"taskId": task["id"], "result": task["data"], "processedBy": by})


async def _peer(url: str, subject: str, answer: Callable[[Msg], Awaitable[None]]) -> nats.NATS:
    """A plain nats-py peer taking ``subject`` in its queue group."""
    nc = await nats.connect(url)
    await nc.subscribe(subject, queue=subject, cb=answer)
    await nc.flush()
    return nc


def _idle(node: Node) -> bool:
    results = node.flock.results
    return not results.waiters and node.bus.replies.waiting == 0


async def test_a_reply_alone_answers_and_a_late_duplicate_on_task_result_is_ignored(
    nats_server: EmbeddedNats,
) -> None:
    async def reply_then_publish(msg: Msg) -> None:
        data = _result(msg, "replier")
        await msg.respond(data)
        await msg._client.publish("task.result", data)  # after: nobody waits for it any more

    peer = await _peer(nats_server.url, "tasks.reply-only", reply_then_publish)
    try:
        async with Node(nats_server.url, "producer") as node:
            for n in range(3):
                result = await node.flock.submit("reply-only", n, wait=True, timeout=5)
                assert isinstance(result, TaskResult)
                assert (result.result, result.processed_by) == (n, "replier")
            assert _idle(node)
            assert not node.flock.invalid_messages
    finally:
        await peer.close()


async def test_a_result_on_task_result_alone_answers(nats_server: EmbeddedNats) -> None:
    async def publish_only(msg: Msg) -> None:  # what the AI Flock seed's agents do
        await msg._client.publish("task.result", _result(msg, "seed"))

    peer = await _peer(nats_server.url, "tasks.seed-shaped", publish_only)
    try:
        async with Node(nats_server.url, "producer") as node:
            result = await node.flock.submit("seed-shaped", "x", wait=True, timeout=5)
            assert isinstance(result, TaskResult)
            assert (result.result, result.processed_by) == ("x", "seed")
            assert _idle(node)
    finally:
        await peer.close()


async def test_a_silent_taker_times_out_and_leaves_nothing_behind(nats_server: EmbeddedNats) -> None:
    taken = asyncio.Event()

    async def silent(msg: Msg) -> None:
        taken.set()

    peer = await _peer(nats_server.url, "tasks.silent", silent)
    try:
        async with Node(nats_server.url, "producer") as node:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(WorkTimeout, match="silent"):
                await node.flock.submit("silent", None, wait=True, timeout=0.3)
            assert loop.time() - started >= 0.3
            assert taken.is_set() and _idle(node)
    finally:
        await peer.close()


async def test_a_cancelled_submit_leaves_nothing_behind(nats_server: EmbeddedNats) -> None:
    taken = asyncio.Event()

    async def silent(msg: Msg) -> None:
        taken.set()

    peer = await _peer(nats_server.url, "tasks.silent", silent)
    try:
        async with Node(nats_server.url, "producer") as node:
            submit = asyncio.create_task(node.flock.submit("silent", None, wait=True, timeout=30))
            async with asyncio.timeout(5):
                await taken.wait()
            assert not _idle(node)  # it waits
            submit.cancel()
            with pytest.raises(asyncio.CancelledError):
                await submit
            assert _idle(node)
    finally:
        await peer.close()


async def test_a_reply_that_is_no_task_result_is_raised(nats_server: EmbeddedNats) -> None:
    async def garbage(msg: Msg) -> None:
        await msg.respond(b'{"not": "a result"}')

    peer = await _peer(nats_server.url, "tasks.garbled", garbage)
    try:
        async with Node(nats_server.url, "producer") as node:
            with pytest.raises(InvalidMessage, match="taskId"):
                await node.flock.submit("garbled", None, wait=True, timeout=5)
            assert _idle(node)
    finally:
        await peer.close()


async def test_many_submits_at_once_each_get_their_own_result(nats_server: EmbeddedNats) -> None:
    async with Node(nats_server.url, "producer") as producer, Node(nats_server.url, "worker") as worker:
        await worker.agents("w-1", "w-2")
        await producer.settled()
        results = await asyncio.gather(
            *(producer.flock.submit("general", n, wait=True, timeout=10) for n in range(200))
        )
        assert [r.result["echo"] for r in results if isinstance(r, TaskResult)] == list(range(200))
        assert _idle(producer)


async def _ignore(msg: Msg) -> None:
    """A peer that takes a request and never answers it."""


async def test_request_deadlines_share_one_timer_and_never_fire_early(nats_server: EmbeddedNats) -> None:
    peer = await _peer(nats_server.url, "tasks.slow", _ignore)
    bus = NatsConnection(nats_server.url)
    await bus.start()
    replies = Replies(bus)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        futures = [loop.create_future() for _ in range(200)]
        tokens = [await replies.send("tasks.slow", b"x", f, timeout=0.2) for f in futures]
        answered = loop.create_future()
        replies.end(await replies.send("tasks.slow", b"x", answered, timeout=0.2))  # over in time
        answered.set_result("ok")
        deadlines = replies._deadlines
        assert deadlines is not None and deadlines._timer is not None  # one timer for them all
        with pytest.raises(BusTimeout, match=r"tasks\.slow"):
            await futures[-1]
        assert loop.time() - started >= 0.2
        assert all(isinstance(f.exception(), BusTimeout) for f in futures)
        assert answered.result() == "ok" and deadlines.expired == len(futures)
        for token in tokens:
            replies.end(token)
        assert replies.waiting == 0
    finally:
        await bus.close()
        await peer.close()
