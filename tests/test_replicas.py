"""``[nats] replicas``: the task stream and the directory bucket are replicated as configured, and
an existing stream or bucket (an operator's, or an earlier process's) is never weakened."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from flockrt.bus.connection import NatsConnection
from flockrt.bus.durable import DurableTasks
from flockrt.bus.embedded import EmbeddedNats
from flockrt.bus.streams import reconcile
from flockrt.config import FlockConfig, NatsConfig, RuntimeConfig, config_problems, load_config
from flockrt.errors import JetStreamError
from flockrt.runtime import Flock
from flockrt.wire.schema import Codec, TaskMessage
from tests.nats_cluster import NatsCluster

STREAM = "FLOCK_TASKS"
BUCKET = "FLOCK_AGENTS"


def work_queue(**settings: object) -> StreamConfig:
    config: dict[str, object] = {
        "name": STREAM,
        "subjects": ["tasks.>"],
        "retention": RetentionPolicy.WORK_QUEUE,
        "storage": StorageType.FILE,
        "duplicate_window": 120.0,
        "num_replicas": 1,
    }
    config.update(settings)
    return StreamConfig(**config)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the rules, one by one


def test_more_replicas_than_configured_is_an_error_naming_the_key() -> None:
    with pytest.raises(JetStreamError) as caught:
        reconcile(work_queue(num_replicas=3), work_queue(num_replicas=1), what="stream FLOCK_TASKS")
    message = str(caught.value)
    assert "stream FLOCK_TASKS has 3 replicas, [nats] replicas = 1 would shrink it" in message
    assert "set [nats] replicas = 3 (NATS_REPLICAS=3)" in message


def test_fewer_replicas_are_raised_and_the_rest_is_kept() -> None:
    existing = work_queue(num_replicas=1, max_age=3600.0, max_msgs=5000, discard=DiscardPolicy.NEW)
    update, outcome = reconcile(existing, work_queue(num_replicas=3), what="stream FLOCK_TASKS")
    assert update is not None
    assert update.num_replicas == 3
    assert (update.max_age, update.max_msgs, update.discard) == (3600.0, 5000, DiscardPolicy.NEW)
    assert "replicas 1 -> 3" in outcome


def test_an_equal_or_stronger_stream_is_kept_as_it_is() -> None:
    existing = work_queue(duplicate_window=600.0, subjects=["tasks.>", "audit.>"], max_bytes=10**9)
    update, outcome = reconcile(existing, work_queue(), what="stream FLOCK_TASKS")
    assert update is None
    assert outcome == "stream FLOCK_TASKS kept as it is (1 replicas, file storage)"


def test_missing_subjects_are_added_and_a_short_duplicate_window_lengthened() -> None:
    existing = work_queue(subjects=["audit.>"], duplicate_window=10.0)
    update, _ = reconcile(existing, work_queue(), what="stream FLOCK_TASKS")
    assert update is not None
    assert update.subjects == ["audit.>", "tasks.>"]  # the operator's subject stays
    assert update.duplicate_window == 120.0


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (work_queue(retention=RetentionPolicy.LIMITS), "has retention limits, flockrt needs workqueue"),
        (work_queue(storage=StorageType.MEMORY), "keeps its messages in memory"),
    ],
)
def test_what_cannot_be_changed_in_place_is_an_error(existing: StreamConfig, expected: str) -> None:
    with pytest.raises(JetStreamError, match=expected) as caught:
        reconcile(existing, work_queue(), what="stream FLOCK_TASKS")
    assert "nats stream rm FLOCK_TASKS" in str(caught.value)


def test_the_key_and_its_variable() -> None:
    path = Path(__file__).parent.parent / "configs" / "flock.toml"
    assert load_config(path, env={}).nats.replicas == 1  # type: ignore[union-attr]
    assert load_config(path, env={"NATS_REPLICAS": "3"}).nats.replicas == 3  # type: ignore[union-attr]
    config = load_config(path, env={})
    assert config.nats is not None
    for bad in (0, 6):
        broken = type(config)(nats=type(config.nats)(replicas=bad))
        assert f"nats.replicas: expected 1..5, got {bad}" in config_problems(broken)


# ---------------------------------------------------------------------- on a real server


async def test_an_operators_limits_survive_flockrt_starting(nats_server: EmbeddedNats) -> None:
    """Before: flockrt updated the stream to its own config, dropping the operator's limits."""
    plain = await nats.connect(nats_server.url, allow_reconnect=False)
    bus = NatsConnection(nats_server.url)
    await bus.start()
    try:
        js = plain.jetstream()
        await js.add_stream(work_queue(max_age=3600.0, max_msgs=5000, subjects=["tasks.>", "audit.>"]))
        await DurableTasks(bus, Codec()).setup()
        config = (await js.stream_info(STREAM)).config
        assert (config.max_age, config.max_msgs, config.subjects) == (3600.0, 5000, ["tasks.>", "audit.>"])
    finally:
        await bus.close()
        await plain.close()


async def test_replicas_beyond_one_on_a_single_server_say_what_is_needed(nats_server: EmbeddedNats) -> None:
    bus = NatsConnection(nats_server.url, replicas=3)
    await bus.start()
    try:
        with pytest.raises(JetStreamError, match=r"\[nats\] replicas = 3 needs a JetStream cluster"):
            await DurableTasks(bus, Codec()).setup()
        with pytest.raises(JetStreamError, match=r"\[nats\] replicas = 3 needs a JetStream cluster"):
            await bus.jetstream.ensure_bucket(BUCKET, ttl=90)
    finally:
        await bus.close()


async def wait_for_followers(js: JetStreamContext, stream: str, count: int, timeout: float = 10.0) -> None:
    """Wait until ``stream`` has ``count`` followers (a scaled-up stream gains them as it catches up)."""
    async with asyncio.timeout(timeout):
        while True:
            cluster = (await js.stream_info(stream)).cluster
            if cluster is not None and len(cluster.replicas or []) == count:
                return
            await asyncio.sleep(0.05)


async def started(url: str, replicas: int) -> NatsConnection:
    bus = NatsConnection(url, replicas=replicas)
    await bus.start()
    return bus


async def test_an_operators_r3_stream_stays_r3(
    cluster: NatsCluster, caplog: pytest.LogCaptureFixture
) -> None:
    plain = await nats.connect(cluster.urls[0], allow_reconnect=False)
    try:
        js = plain.jetstream()
        await js.add_stream(work_queue(num_replicas=3))
        await js.create_key_value(bucket=BUCKET, history=1, storage=StorageType.FILE, replicas=3)
        weak = await started(cluster.urls[1], replicas=1)  # the default
        try:
            with pytest.raises(
                JetStreamError, match=r"has 3 replicas, \[nats\] replicas = 1 would shrink it"
            ):
                await DurableTasks(weak, Codec()).setup()
            with pytest.raises(JetStreamError, match=r"bucket FLOCK_AGENTS has 3 replicas"):
                await weak.jetstream.ensure_bucket(BUCKET)
        finally:
            await weak.close()
        assert (await js.stream_info(STREAM)).config.num_replicas == 3
        assert (await js.stream_info(f"KV_{BUCKET}")).config.num_replicas == 3
        same = await started(cluster.urls[2], replicas=3)
        try:
            with caplog.at_level(logging.INFO, logger="flockrt.bus"):
                await DurableTasks(same, Codec()).setup()
            assert "JetStream stream FLOCK_TASKS kept as it is (3 replicas, file storage)" in caplog.messages
        finally:
            await same.close()
        assert (await js.stream_info(STREAM)).config.num_replicas == 3
    finally:
        await plain.close()


async def test_flockrt_creates_r3_and_raises_r1_to_r3(cluster: NatsCluster) -> None:
    plain = await nats.connect(cluster.urls[0], allow_reconnect=False)
    try:
        js = plain.jetstream()
        await js.add_stream(work_queue(num_replicas=1))  # made by an earlier R1 flock
        bus = await started(cluster.urls[1], replicas=3)
        try:
            tasks = DurableTasks(bus, Codec())
            await tasks.setup()
            await bus.jetstream.kv_put(BUCKET, "a-1", b"{}", ttl=90)
            assert await tasks.submit(TaskMessage(id="t-1", type="job", data=1))
        finally:
            await bus.close()
        for name in (STREAM, f"KV_{BUCKET}"):
            assert (await js.stream_info(name)).config.num_replicas == 3
            await wait_for_followers(js, name, 2)  # the leader and two more copies
        assert (await js.stream_info(STREAM)).state.messages == 1  # the task survived the change
    finally:
        await plain.close()


async def test_a_flock_refuses_to_start_on_a_stream_it_cannot_keep(nats_server: EmbeddedNats) -> None:
    plain = await nats.connect(nats_server.url, allow_reconnect=False)
    try:
        await plain.jetstream().add_stream(work_queue(storage=StorageType.MEMORY))
        config = FlockConfig(
            runtime=RuntimeConfig(name="strict"), nats=NatsConfig(url=nats_server.url, durable=True)
        )
        flock = Flock(config)
        with pytest.raises(JetStreamError, match="stream FLOCK_TASKS keeps its messages in memory"):
            await flock.start()
        assert flock.bus is not None and flock.bus.closed  # what had started is stopped again
        info = await plain.jetstream().stream_info(STREAM)
        assert info.config.storage == StorageType.MEMORY  # untouched
    finally:
        await plain.close()
