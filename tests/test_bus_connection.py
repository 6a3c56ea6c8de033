"""The shared NATS connection: messaging, failures named, and degraded mode with recovery."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from flockrt.bus.connection import BusState, Message, NatsConnection
from flockrt.bus.embedded import EmbeddedNats
from flockrt.errors import BusTimeout, BusUnavailable, NoResponders
from tests.conftest import wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bus_for(url: str, **options: object) -> NatsConnection:
    # Short waits so that recovery in tests takes milliseconds, not the production seconds.
    defaults: dict[str, object] = {"reconnect_wait": 0.05, "max_backoff": 0.1, "connect_timeout": 1.0}
    defaults.update(options)
    return NatsConnection(url, **defaults)  # type: ignore[arg-type]


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[NatsConnection]:
    connection = bus_for(nats_server.url)
    await connection.start()
    yield connection
    await connection.close()


class Inbox:
    """Collects what a subscription receives; tests wait on its size."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def payloads(self) -> list[bytes]:
        return [m.data for m in self.messages]


async def test_publish_and_subscribe_with_headers(bus: NatsConnection, nats_server: EmbeddedNats) -> None:
    inbox = Inbox()
    await bus.subscribe("greet.*", inbox)
    plain = await nats.connect(nats_server.url, allow_reconnect=False)
    try:
        await plain.publish("greet.a", b"from a plain client", headers={"Correlation-Id": "c-1"})
        await plain.flush()
        await bus.publish("greet.b", b"from the bus")
        await wait_for(lambda: len(inbox.messages) == 2)
    finally:
        await plain.close()
    # Two connections: NATS orders messages per publisher, not across publishers.
    by_subject = {m.subject: m for m in inbox.messages}
    assert by_subject["greet.a"].data == b"from a plain client"
    assert by_subject["greet.a"].headers["Correlation-Id"] == "c-1"
    assert by_subject["greet.b"].data == b"from the bus"
    assert bus.state is BusState.CONNECTED
    assert bus.stats.published == 1 and bus.stats.received == 2


async def test_queue_group_delivers_each_message_once(nats_server: EmbeddedNats) -> None:
    first, second = bus_for(nats_server.url), bus_for(nats_server.url)
    inboxes = [Inbox(), Inbox()]
    try:
        for connection, inbox in zip((first, second), inboxes, strict=True):
            await connection.start()
            await connection.subscribe("tasks.general", inbox, queue="workers")
        for i in range(200):
            await first.publish("tasks.general", str(i).encode())
        await wait_for(lambda: sum(len(i.messages) for i in inboxes) == 200)
    finally:
        await first.close()
        await second.close()
    handled = sorted(int(p) for inbox in inboxes for p in inbox.payloads)
    assert handled == list(range(200))


async def test_publish_nowait_that_must_wait_finishes_in_a_task_the_close_awaits(
    nats_server: EmbeddedNats,
) -> None:
    # A pending buffer of 64 bytes: every publish is over it and waits for nats-py's flusher.
    bus = bus_for(nats_server.url, options={"pending_size": 64})
    watcher = bus_for(nats_server.url)
    inbox = Inbox()
    try:
        await bus.start()
        await watcher.start()
        await watcher.subscribe("t", inbox)
        for i in range(20):
            bus.publish_nowait("t", b"%03d" % i + b"." * 100)
        assert len(bus._publishing) > 0  # the waits run on, in tasks the connection owns
        await bus.close()  # awaits them: the drain sends every message
        assert len(bus._publishing) == 0
        await wait_for(lambda: len(inbox.messages) == 20)
        assert [m.data[:3] for m in inbox.messages] == [b"%03d" % i for i in range(20)]
        assert bus.stats.published == 20
    finally:
        await bus.close()
        await watcher.close()


async def test_publish_nowait_goes_straight_to_the_pending_buffer_in_order_with_reply_subjects(
    nats_server: EmbeddedNats,
) -> None:
    # 4 KB of pending buffer: the first publishes are appended directly, later ones find it
    # full and take nats-py's own publish (which waits for its flusher): one order throughout.
    bus = bus_for(nats_server.url, options={"pending_size": 4096})
    watcher = bus_for(nats_server.url)
    inbox = Inbox()
    try:
        await bus.start()
        await watcher.start()
        await watcher.subscribe("direct.>", inbox)
        assert bus._direct  # this nats-py's pending buffer is the one append_pub knows
        for i in range(300):
            bus.publish_nowait(f"direct.{i % 3}", b"%03d" % i + b"." * 50, reply=f"answer.{i}")
        bus.publish_nowait("direct.h", b"with headers", headers={"Correlation-Id": "c-9"})
        with pytest.raises(nats.errors.BadSubjectError):  # refused, not injected into the protocol
            bus.publish_nowait("direct.x\r\nPUB direct.y 2", b"no")
        await bus.flush()
        await wait_for(lambda: len(inbox.messages) == 301)
        assert [m.data[:3] for m in inbox.messages[:300]] == [b"%03d" % i for i in range(300)]
        assert [m.reply for m in inbox.messages[:300]] == [f"answer.{i}" for i in range(300)]
        assert [m.subject for m in inbox.messages[:3]] == ["direct.0", "direct.1", "direct.2"]
        assert inbox.messages[300].headers["Correlation-Id"] == "c-9"
        assert bus.stats.published == 301
        assert bus._nc is not None and bus._nc.stats["out_msgs"] >= 301
    finally:
        await bus.close()
        await watcher.close()


async def test_request_reply_and_its_failures(bus: NatsConnection) -> None:
    async def responder(message: Message) -> None:
        await bus.publish(message.reply, message.data.upper())

    async def silent(message: Message) -> None:
        pass

    await bus.subscribe("echo", responder)
    await bus.subscribe("silent", silent)
    reply = await bus.request("echo", b"hello", timeout=2)
    assert reply.data == b"HELLO"
    with pytest.raises(NoResponders, match="nobody"):
        await bus.request("nobody", b"?", timeout=2)
    with pytest.raises(BusTimeout) as info:
        await bus.request("silent", b"?", timeout=0.05)
    assert isinstance(info.value, TimeoutError)


async def test_a_failing_handler_is_counted_and_the_subscription_lives(
    bus: NatsConnection, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox()

    async def picky(message: Message) -> None:
        if message.data == b"bad":
            raise ValueError("cannot handle this")
        await inbox(message)

    await bus.subscribe("picky", picky)
    with caplog.at_level(logging.ERROR, logger="flockrt.bus"):
        await bus.publish("picky", b"bad")
        await bus.publish("picky", b"good")
        await wait_for(lambda: inbox.payloads == [b"good"])
    assert bus.stats.handler_errors == 1
    assert "cannot handle this" in caplog.text


async def test_a_raw_subscription_gets_nats_py_messages_counted_and_isolated(
    bus: NatsConnection, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[Message | Msg] = []

    def raw(msg: Message | Msg) -> None:  # (a Handler that also takes nats-py's Msg, as CoreLane's)
        if msg.data == b"bad":
            raise ValueError("raw cannot handle this")
        got.append(msg)

    await bus.subscribe("raw", raw, raw=True)
    received = bus.stats.received
    with caplog.at_level(logging.ERROR, logger="flockrt.bus"):
        await bus.publish("raw", b"bad")
        await bus.publish("raw", b"good", headers={"K": "v"})
        await wait_for(lambda: len(got) == 1)
    assert isinstance(got[0], Msg) and got[0].data == b"good" and got[0].headers == {"K": "v"}
    assert bus.stats.handler_errors == 1 and bus.stats.received == received + 2
    assert "raw cannot handle this" in caplog.text


async def test_nats_down_at_start_degrades_then_recovers_in_order(tmp_path: Path) -> None:
    port = free_port()
    bus = bus_for(f"nats://127.0.0.1:{port}")
    inbox = Inbox()
    try:
        await bus.start()  # returns although nothing listens there
        assert bus.state is BusState.DEGRADED
        await bus.subscribe("t.>", inbox)  # remembered for later
        for i in range(3):
            await bus.publish(f"t.{i}", str(i).encode())
        assert bus.stats.buffered == 3
        with pytest.raises(BusUnavailable, match="unreachable"):
            await bus.request("t.x", b"?", timeout=1)
        async with EmbeddedNats(port=port, store_dir=tmp_path / "nats"):
            await bus.wait_connected(timeout=10)
            await wait_for(lambda: len(inbox.messages) == 3)
            assert inbox.payloads == [b"0", b"1", b"2"]
            assert (bus.stats.flushed, bus.stats.buffered, bus.stats.dropped) == (3, 0, 0)
            await bus.close()
    finally:
        await bus.close()


async def test_nats_down_during_a_run_buffers_then_flushes(nats_server: EmbeddedNats) -> None:
    bus = bus_for(nats_server.url)
    inbox = Inbox()
    try:
        await bus.start()
        await bus.subscribe("t.>", inbox)
        assert bus.direct is not None and bus.direct is bus._nc  # publishes go straight to nats-py
        await bus.publish("t.before", b"before")
        await wait_for(lambda: len(inbox.messages) == 1)
        await nats_server.kill()
        await wait_for(lambda: bus.state is BusState.DEGRADED)
        assert bus.direct is None  # degraded: nothing may pass the buffer
        for i in range(3):
            await bus.publish(f"t.{i}", str(i).encode())
        assert bus.stats.buffered == 3
        await nats_server.restart()
        await bus.wait_connected(timeout=10)
        assert bus.direct is bus._nc  # the buffer went first, then direct publishes again
        await wait_for(lambda: len(inbox.messages) == 4)
        assert inbox.payloads == [b"before", b"0", b"1", b"2"]
        assert bus.stats.reconnects >= 1
    finally:
        await bus.close()


async def test_when_the_client_gives_up_our_loop_reconnects_and_resubscribes(
    nats_server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    bus = bus_for(nats_server.url, max_retries=1)
    inbox = Inbox()
    try:
        await bus.start()
        await bus.subscribe("t.>", inbox)
        with caplog.at_level(logging.WARNING, logger="flockrt.bus"):
            await nats_server.kill()
            await wait_for(lambda: "gave up after 1 reconnect attempts" in caplog.text)
        assert bus.state is BusState.DEGRADED
        await nats_server.restart()
        await bus.wait_connected(timeout=10)
        await bus.publish("t.after", b"after")
        await wait_for(lambda: inbox.payloads == [b"after"])
    finally:
        await bus.close()


async def test_full_buffer_drops_with_a_count_and_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    bus = bus_for(f"nats://127.0.0.1:{free_port()}", buffer_limit=2)
    try:
        await bus.start()
        with caplog.at_level(logging.WARNING, logger="flockrt.bus"):
            for i in range(5):
                await bus.publish("t", str(i).encode())
        assert (bus.stats.buffered, bus.stats.dropped) == (2, 3)
        assert "publish buffer is full" in caplog.text
    finally:
        await bus.close()
    assert bus.stats.dropped == 5  # the two still buffered at close are counted too
    assert bus.state is BusState.CLOSED


async def test_start_fails_fast_when_nats_is_down() -> None:
    bus = bus_for(f"nats://127.0.0.1:{free_port()}", reconnect_wait=30, max_retries=60)
    try:
        async with asyncio.timeout(5):  # not max_retries x reconnect_wait
            await bus.start()
        assert bus.state is BusState.DEGRADED
    finally:
        await bus.close()
    with pytest.raises(ValueError, match="max_retries"):
        NatsConnection("nats://127.0.0.1:1", max_retries=0)


def test_reconnect_backoff_doubles_from_50_ms_up_to_max_backoff_with_jitter() -> None:
    rng = random.Random(7)
    backoff = NatsConnection("nats://127.0.0.1:1", max_backoff=2.0)._backoff
    for attempt in (0, 1, 3, 5, 6, 100, 5000):  # 5000: an outage of hours must not overflow
        base = min(2.0, 0.05 * 2 ** min(attempt, 60))
        for _ in range(20):
            assert 0.8 * base <= backoff.delay(attempt, rng) <= 1.2 * base
    tiny = NatsConnection("nats://127.0.0.1:1", max_backoff=0.01)._backoff
    assert 0.008 <= tiny.delay(0, rng) <= 0.012
    with pytest.raises(ValueError, match="max_backoff"):
        NatsConnection("nats://127.0.0.1:1", max_backoff=-1)


async def test_close_is_idempotent_and_later_use_is_refused(bus: NatsConnection) -> None:
    await bus.close()
    await bus.close()
    with pytest.raises(BusUnavailable, match="closed"):
        await bus.publish("t", b"x")
    with pytest.raises(BusUnavailable):
        await bus.request("t", b"x", timeout=1)
    with pytest.raises(BusUnavailable, match="closed"):
        await bus.wait_connected(timeout=1)


async def test_key_value_through_the_jetstream_part_and_its_older_names(bus: NatsConnection) -> None:
    from flockrt.bus import connection, jetstream

    assert (connection.JsMessage, connection.PullConsumer) == (jetstream.JsMessage, jetstream.PullConsumer)
    await bus.jetstream.kv_put("DIR", "a-1", b"one")
    await bus.kv_put("DIR", "a-2", b"two")
    # nats-py lists keys through a watcher that may see a bucket's newest entries a moment
    # late on a busy machine: read again until they show, within a deadline.
    async with asyncio.timeout(5):
        while (items := await bus.kv_items("DIR")) != {"a-1": b"one", "a-2": b"two"}:
            assert set(items) <= {"a-1", "a-2"}
    await bus.kv_delete("DIR", "a-1")
    await bus.kv_delete("DIR", "never-there")  # no error
    assert await bus.jetstream.kv_items("DIR") == {"a-2": b"two"}
    await bus.close()
    assert bus.closed
    with pytest.raises(BusUnavailable, match="closed"):
        await bus.kv_put("DIR", "a-3", b"three")  # never buffered


async def test_unsubscribe_stops_delivery(bus: NatsConnection) -> None:
    inbox, sentinel = Inbox(), Inbox()
    subscription = await bus.subscribe("t", inbox)
    await bus.subscribe("t", sentinel)
    await subscription.unsubscribe()
    await subscription.unsubscribe()  # idempotent
    await bus.publish("t", b"x")
    await wait_for(lambda: len(sentinel.messages) == 1)
    await bus.flush()
    assert inbox.messages == []


async def test_several_cluster_urls_connect_to_one_that_answers(nats_server: EmbeddedNats) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    bus = bus_for(f"{dead}, {nats_server.url}")
    try:
        await bus.start()
        await bus.wait_connected(10)
        reply = await bus.request("$JS.API.INFO", b"", timeout=5)  # the server answers
        assert b"memory" in reply.data
    finally:
        await bus.close()


async def test_user_password_and_token_authentication(tmp_path: Path) -> None:
    from flockrt.config import FlockConfig, NatsConfig
    from flockrt.runtime import Flock

    async with EmbeddedNats(
        store_dir=tmp_path / "a", extra_args=("--user", "flock", "--pass", "s3cret")
    ) as server:
        good = FlockConfig(nats=NatsConfig(url=server.url, user="flock", password="s3cret"))
        async with Flock(good) as flock:
            assert flock.bus is not None
            await flock.bus.wait_connected(5)
        wrong = bus_for(server.url, user="flock", password="wrong")
        try:
            await wrong.start()
            assert not wrong.connected  # refused: degraded, trying again in the background
        finally:
            await wrong.close()
    async with EmbeddedNats(store_dir=tmp_path / "b", extra_args=("--auth", "t0ken")) as server:
        bus = bus_for(server.url, token="t0ken")
        try:
            await bus.start()
            await bus.wait_connected(5)
        finally:
            await bus.close()
