"""Prometheus metrics: scraped from ``exposition()`` after real work, they move as they should."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flockrt import (
    Actor,
    ActorSystem,
    AskTimeout,
    ChildSpec,
    LocalFlock,
    MailboxFull,
    Supervisor,
    TaskMessage,
    WorkFailed,
    WorkTimeout,
    capability,
    handles_task,
    metrics,
)
from flockrt.actors.histogram import Histogram
from flockrt.agents.agent import Agent
from flockrt.bus.connection import BusStats, NatsConnection
from flockrt.bus.embedded import EmbeddedNats
from flockrt.bus.flock import NatsFlock
from flockrt.config import FlockConfig, MetricsConfig, RuntimeConfig
from flockrt.runtime import Flock
from flockrt.wire.schema import DirectMessage
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the registry, keyed by (sample name, labels)."""
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(name: str, **labels: str) -> float | None:
    """One sample's value now, or None if there is no such series."""
    return scrape().get((name, frozenset(labels.items())))


def series_of(label: str) -> list[str]:
    """Names of the samples carrying ``system=label``."""
    return [name for name, labels in scrape() if ("system", label) in labels]


class Echo(Actor[Any]):
    def receive(self, message: Any) -> Any:
        return message


class Blocker(Actor[Any]):
    """Its async receive waits on an event: its mailbox fills up."""

    def __init__(self, release: asyncio.Event, entered: asyncio.Event | None = None) -> None:
        self.release = release
        self.entered = entered or asyncio.Event()

    async def receive(self, message: Any) -> Any:
        self.entered.set()
        await self.release.wait()
        return message


class SlowStart(Actor[Any]):
    def __init__(self, release: asyncio.Event) -> None:
        self.release = release

    async def on_start(self) -> None:
        await self.release.wait()

    def receive(self, message: Any) -> None:
        pass


class Crasher(Actor[Any]):
    def receive(self, message: Any) -> None:
        raise RuntimeError("crash requested")


@pytest.fixture
async def system() -> AsyncIterator[ActorSystem]:
    async with ActorSystem("metrics-test", shutdown_timeout=2.0) as system:
        with metrics.instrument(system, ask_sampling=1) as instrumentation:
            assert instrumentation.label == "metrics-test"
            yield system


# ---------------------------------------------------------------------- histogram


def test_histogram_buckets_hold_values_up_to_their_bound() -> None:
    h = Histogram((0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.002, 5.0):
        h.observe(seconds)
    assert h.cumulative() == [(0.001, 2), (0.01, 3), (float("inf"), 4)]
    assert h.count == 4
    assert h.sum == pytest.approx(5.0035)
    with pytest.raises(ValueError, match="increasing"):
        Histogram((0.01, 0.001))


# ---------------------------------------------------------------------- the kernel


async def test_kernel_series_move_with_real_work(system: ActorSystem) -> None:
    label = {"system": "metrics-test"}
    assert value("flockrt_messages_processed_total", **label) == 0
    echo = await system.spawn(Echo)
    for i in range(5):
        echo.tell(i)
    for i in range(3):
        assert await echo.ask(i) == i
    assert value("flockrt_messages_processed_total", **label) == 8
    assert value("flockrt_ask_duration_seconds_count", **label) == 3
    assert value("flockrt_ask_duration_seconds_bucket", le="+Inf", **label) == 3
    assert value("flockrt_ask_duration_seconds_sum", **label) > 0  # type: ignore[operator]
    assert value("flockrt_actors", state="running", **label) == 1

    # A crash under a supervisor: a failure and a restart.
    sup = await system.spawn(
        functools.partial(Supervisor, [ChildSpec(id="crasher", factory=Crasher)]), name="sup"
    )
    crasher = system.lookup("/sup/crasher")
    assert crasher is not None
    crasher.tell("boom")
    await wait_for(lambda: system.stats().restarts == 1)
    assert value("flockrt_actor_failures_total", **label) == 1
    assert value("flockrt_actor_restarts_total", **label) == 1
    assert value("flockrt_actors", state="running", **label) == 3  # echo, sup, crasher

    # A full mailbox, an ask that times out, and a dead letter.
    release, entered = asyncio.Event(), asyncio.Event()
    blocker = await system.spawn(Blocker, release, entered, mailbox_capacity=1)
    blocker.tell("busy")  # taken: the actor now waits in receive
    await entered.wait()
    blocker.tell("queued")
    with pytest.raises(MailboxFull):
        blocker.tell("refused")
    assert value("flockrt_mailbox_overflows_total", **label) == 1
    release.set()
    hang = asyncio.Event()
    slow = await system.spawn(Blocker, hang)
    slow.tell("hang")
    with pytest.raises(AskTimeout):
        await slow.ask("never", timeout=0.01)
    assert value("flockrt_ask_timeouts_total", **label) == 1
    assert value("flockrt_ask_duration_seconds_count", **label) == 4  # timeouts are timed too
    fast = value("flockrt_ask_duration_seconds_bucket", le="0.005", **label)
    assert fast is not None and fast <= 3  # not the one that waited 10 ms
    await echo.stop()
    echo.tell("late")
    assert value("flockrt_dead_letters_total", **label) == 1
    assert value("flockrt_actors_stopped_total", **label) == 1
    await sup.stop()
    hang.set()  # else the system's shutdown waits its whole timeout for the blocked actor


async def test_actors_by_state_counts_starting_ones(system: ActorSystem) -> None:
    release = asyncio.Event()
    spawning = asyncio.ensure_future(system.spawn(SlowStart, release))
    await wait_for(lambda: system.stats().starting == 1)
    assert value("flockrt_actors", system="metrics-test", state="starting") == 1
    assert value("flockrt_actors", system="metrics-test", state="running") == 0
    release.set()
    await spawning
    assert value("flockrt_actors", system="metrics-test", state="starting") == 0
    assert value("flockrt_actors", system="metrics-test", state="running") == 1


async def test_actors_by_state_add_up_to_live_actors_through_crashes_restarts_and_stops() -> None:
    system = ActorSystem("states", shutdown_timeout=2.0)

    def check() -> None:
        stats = system.stats()
        assert sum(stats.by_state().values()) == stats.live, stats

    async with system:
        specs = [ChildSpec(id=f"c{i}", factory=Crasher) for i in range(3)]
        sup = await system.spawn(functools.partial(Supervisor, specs, strategy="one_for_all"), name="sup")
        check()
        for round_ in range(1, 4):
            crasher = system.lookup("/sup/c1")
            assert crasher is not None
            crasher.tell("boom")
            await wait_for(lambda round_=round_: system.stats().restarts == 3 * round_)  # type: ignore[misc]
            check()
        echo = await system.spawn(Echo)
        await echo.stop()
        check()
        await sup.stop()
        check()
        assert system.stats().live == 0
    stats = system.stats()
    assert (stats.live, stats.running, stats.stopped) == (0, 0, 5)  # sup, its 3 children, echo


async def test_ask_sampling_times_one_ask_in_n() -> None:
    async with ActorSystem("sampled") as system:
        with metrics.instrument(system, ask_sampling=4):
            echo = await system.spawn(Echo)
            for i in range(9):
                await echo.ask(i)
            assert value("flockrt_ask_duration_seconds_count", system="sampled") == 3  # 1st, 5th, 9th
        with pytest.raises(ValueError, match="ask_sampling"):
            metrics.instrument(system, ask_sampling=0)


async def test_two_systems_do_not_clash_and_close_unregisters() -> None:
    async with ActorSystem("twin") as first, ActorSystem("twin") as second:
        one = metrics.instrument(first)
        two = metrics.instrument(second)
        assert (one.label, two.label) == ("twin", "twin-2")
        echo = await second.spawn(Echo)
        echo.tell("x")
        await echo.ask("y")
        assert value("flockrt_messages_processed_total", system="twin") == 0
        assert value("flockrt_messages_processed_total", system="twin-2") == 2
        two.close()
        assert series_of("twin-2") == []
        assert second.ask_latency is None
        assert two.closed
        assert "flockrt_messages_processed_total" in series_of("twin")
        # Instrumenting the same system again replaces its registration.
        again = metrics.instrument(first, label="renamed")
        assert one.closed
        assert series_of("twin") == []
        assert "flockrt_messages_processed_total" in series_of("renamed")
        again.close()
        assert series_of("renamed") == []


# ---------------------------------------------------------------------- the local flock


class Worker(Agent):
    @handles_task("general")
    async def general(self, task: TaskMessage) -> Any:
        if task.data == "fail":
            raise ValueError("asked to fail")
        return task.data

    @capability("echo")
    async def echo(self, value: Any = None) -> Any:
        if value == "fail":
            raise ValueError("asked to fail")
        if value == "hang":
            await asyncio.Event().wait()
        return value


async def test_tasks_and_capability_requests_by_outcome(system: ActorSystem) -> None:
    flock = LocalFlock(system, node="metrics-test")
    with metrics.instrument(system, flock=flock, label="flock-test"):
        await system.spawn(Worker, "worker")
        label = {"system": "flock-test"}
        assert value("flockrt_agents", status="online", **label) == 1
        for data in ("a", "b", "fail"):
            await flock.submit("general", data, wait=True)
        assert await flock.request_capability("echo", "hi") == "hi"
        with pytest.raises(WorkFailed):
            await flock.request_capability("echo", "fail")
        assert value("flockrt_tasks_total", type="general", outcome="ok", **label) == 2
        assert value("flockrt_tasks_total", type="general", outcome="error", **label) == 1
        assert value("flockrt_task_duration_seconds_count", type="general", **label) == 3
        assert value("flockrt_capability_requests_total", capability="echo", outcome="ok", **label) == 1
        assert value("flockrt_capability_requests_total", capability="echo", outcome="error", **label) == 1
        assert value("flockrt_capability_request_duration_seconds_count", capability="echo", **label) == 2
        assert value("flockrt_work_queued", **label) == 0
        with pytest.raises(WorkTimeout):
            await flock.request_capability("echo", "hang", timeout=0.01)
        assert value("flockrt_capability_requests_total", capability="echo", outcome="timeout", **label) == 1
        assert value("flockrt_capability_request_duration_seconds_count", capability="echo", **label) == 3
    assert flock.work_stats is None  # closing turned the stats off again


# ---------------------------------------------------------------------- NATS


async def test_nats_flock_series(nats_server: EmbeddedNats) -> None:
    async with ActorSystem("nats-node", shutdown_timeout=2.0) as system:
        bus = NatsConnection(nats_server.url, name="nats-node", reconnect_wait=0.05, max_backoff=0.1)
        await bus.start()
        flock = NatsFlock(system, bus, node="nats-node", heartbeat_interval=60)
        try:
            await flock.start()
            with metrics.instrument(system, flock=flock, bus=bus):
                label = {"system": "nats-node"}
                assert value("flockrt_nats_connected", **label) == 1
                await system.spawn(Worker, "worker")
                await flock.flush()
                published = value("flockrt_nats_published_total", **label)
                assert published is not None and published > 0  # the announcement
                client = await nats.connect(nats_server.url)
                try:
                    task = {"id": "t-1", "type": "general", "data": "x", "requester": "test"}
                    await client.request("tasks.general", json.dumps(task).encode(), timeout=5)
                    await client.publish("tasks.general", b"not json")
                    await client.flush()
                finally:
                    await client.close()
                await wait_for(lambda: value("flockrt_nats_invalid_messages_total", **label) == 1)
                assert value("flockrt_tasks_total", type="general", outcome="ok", **label) == 1
                received = value("flockrt_nats_received_total", **label)
                assert received is not None and received >= 2
                assert value("flockrt_nats_reconnects_total", **label) == 0
                await nats_server.kill()
                await wait_for(lambda: value("flockrt_nats_connected", **label) == 0)
                await bus.publish("anything", b"x")
                buffered = value("flockrt_nats_buffered_publishes", **label)
                assert buffered is not None and buffered >= 1
                await nats_server.restart()
                await bus.wait_connected(timeout=10)
                await wait_for(lambda: (value("flockrt_nats_flushed_publishes_total", **label) or 0) >= 1)
                assert value("flockrt_nats_connected", **label) == 1
                assert value("flockrt_nats_buffered_publishes", **label) == 0
                reconnects = value("flockrt_nats_reconnects_total", **label)
                assert reconnects is not None and reconnects >= 1
        finally:
            await system.shutdown()
            await flock.close()
            await bus.close()


async def test_durable_task_series(nats_server: EmbeddedNats) -> None:
    from flockrt.bus.durable import DurableTasks
    from flockrt.wire.schema import Codec

    async with ActorSystem("durable-node", shutdown_timeout=2.0) as system:
        bus = NatsConnection(nats_server.url, name="durable-node", reconnect_wait=0.05, max_backoff=0.1)
        await bus.start()
        tasks = DurableTasks(bus, Codec(), backoff=(0.01, 0.02), ack_wait=2.0, fetch_timeout=0.2)
        flock = NatsFlock(system, bus, node="durable-node", heartbeat_interval=60, durable=tasks)
        try:
            await flock.start()
            with metrics.instrument(system, flock=flock, bus=bus):
                label = {"system": "durable-node"}
                assert value("flockrt_durable_tasks_total", event="acked", **label) == 0
                await system.spawn(Worker, "worker")
                await flock.flush()
                await flock.submit("general", "x")
                await flock.submit("general", "fail")
                await wait_for(lambda: value("flockrt_durable_tasks_total", event="acked", **label) == 1)
                await wait_for(
                    lambda: (value("flockrt_durable_tasks_total", event="redelivered", **label) or 0) >= 1
                )
                assert value("flockrt_durable_tasks_total", event="submitted", **label) == 2
                received = value("flockrt_durable_tasks_total", event="received", **label)
                assert received is not None and received >= 2
        finally:
            await system.shutdown()
            await flock.close()
            await bus.close()


# ---------------------------------------------------------------------- the runtime


async def test_flock_with_metrics_enabled_reports_and_stop_unregisters() -> None:
    config = FlockConfig(runtime=RuntimeConfig(name="runtime-test"), metrics=MetricsConfig())
    flock = Flock(config)
    await flock.start()
    try:
        assert flock.metrics is not None
        assert value("flockrt_actors", system="runtime-test", state="running") == 1  # the root
    finally:
        await flock.stop()
    assert series_of("runtime-test") == []

    quiet = Flock(FlockConfig(runtime=RuntimeConfig(name="quiet"), metrics=MetricsConfig(enabled=False)))
    async with quiet:
        assert quiet.metrics is None
        assert series_of("quiet") == []


# ---------------------------------------------------------------------- gateway and Claude


def test_mcp_requests_and_connections() -> None:
    before = value("flockrt_mcp_requests_total", method="tools/call", outcome="ok") or 0
    metrics.observe_mcp_request("tools/call", "ok", 0.002)
    metrics.observe_mcp_request("tools/call", "ok", 0.02)
    metrics.observe_mcp_request("made/up", "weird", 0.002)
    assert value("flockrt_mcp_requests_total", method="tools/call", outcome="ok") == before + 2
    assert (value("flockrt_mcp_requests_total", method="other", outcome="error") or 0) >= 1
    assert value("flockrt_mcp_requests_total", method="made/up", outcome="weird") is None
    bucket = value("flockrt_mcp_request_duration_seconds_bucket", method="tools/call", le="0.0025")
    assert bucket is not None and bucket >= 1
    metrics.MCP_CONNECTIONS.labels("websocket").inc()
    assert value("flockrt_mcp_connections", transport="websocket") == 1
    metrics.MCP_CONNECTIONS.labels("websocket").dec()
    assert value("flockrt_mcp_connections", transport="websocket") == 0


async def test_claude_usage_is_read_from_the_claude_agents_counters() -> None:
    from examples.messages_api import Failure, MessagesApiStandIn
    from flockrt.agents.claude import ClaudeAgent
    from flockrt.supervisor.spec import Backoff

    def counts() -> dict[str, float]:
        return {
            "input": value("flockrt_claude_tokens_total", kind="input") or 0,
            "output": value("flockrt_claude_tokens_total", kind="output") or 0,
            "ok": value("flockrt_claude_requests_total", outcome="ok") or 0,
            "rate_limited": value("flockrt_claude_requests_total", outcome="rate_limited") or 0,
            "retries": value("flockrt_claude_retries_total") or 0,
        }

    async with (
        MessagesApiStandIn(lambda request: "two words") as api,
        ActorSystem("claude-metrics", shutdown_timeout=2.0) as system,
    ):
        flock = LocalFlock(system)
        no_wait = Backoff(initial=0.0, maximum=0.0, jitter=0.0)
        await system.spawn(
            functools.partial(ClaudeAgent, api_key="sk-test", base_url=api.base_url, backoff=no_wait),
            "claude",
        )
        before = counts()
        api.fail_next(Failure(429, "rate limited", retry_after="0"))
        answer = await flock.request_capability("claude-ai", "hello there")
        assert answer["text"] == "two words"
        after = counts()
    tokens = answer["usage"]
    assert after["input"] - before["input"] == tokens["inputTokens"] > 0
    assert after["output"] - before["output"] == tokens["outputTokens"] > 0
    assert (after["ok"] - before["ok"], after["rate_limited"] - before["rate_limited"]) == (1, 1)
    assert after["retries"] - before["retries"] == 1


def test_every_series_is_named_flockrt_or_process() -> None:
    names = {family.name for family in text_string_to_metric_families(metrics.exposition()[0].decode())}
    assert names
    assert all(name.startswith(("flockrt_", "process_")) for name in names), sorted(names)


# ---------------------------------------------------------------------- logs


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[tuple[list[logging.Handler], Path]]:
    """flockrt.logs configured (JSON, per-agent files) on the root logger; restored after."""
    from flockrt.logs import configure_logging, unconfigure_logging

    root = logging.getLogger()
    level = root.level
    stream_path = tmp_path / "main.log"
    with stream_path.open("w") as stream:
        handlers = configure_logging("INFO", format="json", log_dir=tmp_path / "agents", stream=stream)
        try:
            yield handlers, stream_path
        finally:
            unconfigure_logging()
            root.setLevel(level)


class Chatty(Agent):
    @handles_task("general")
    async def general(self, task: TaskMessage) -> Any:
        logging.getLogger("user.code").info("working on %s", task.data)
        return task.data


async def test_correlation_id_travels_from_nats_header_into_the_agents_own_log_file(
    nats_server: EmbeddedNats, logged: tuple[list[logging.Handler], Path], tmp_path: Path
) -> None:
    _, main_log = logged
    async with ActorSystem("logs", shutdown_timeout=2.0) as system:
        bus = NatsConnection(nats_server.url, name="logs")
        await bus.start()
        flock = NatsFlock(system, bus, node="logs", heartbeat_interval=60)
        try:
            await flock.start()
            await system.spawn(Chatty, "chatty")
            await flock.flush()
            client = await nats.connect(nats_server.url)
            try:
                task = {"id": "t-7", "type": "general", "data": "hello", "requester": "test"}
                await client.request(
                    "tasks.general",
                    json.dumps(task).encode(),
                    timeout=5,
                    headers={"Correlation-Id": "trace-7"},
                )
            finally:
                await client.close()
        finally:
            await system.shutdown()
            await flock.close()
            await bus.close()
    agent_file = tmp_path / "agents" / "chatty.log"
    records = [json.loads(line) for line in agent_file.read_text().splitlines()]
    working = [r for r in records if r["message"] == "working on hello"]
    assert working == [
        {
            "time": working[0]["time"],
            "level": "INFO",
            "logger": "user.code",
            "message": "working on hello",
            "correlation_id": "trace-7",
            "agent": "chatty",
        }
    ]
    main = [json.loads(line) for line in main_log.read_text().splitlines()]
    assert any(r["message"] == "working on hello" and r.get("correlation_id") == "trace-7" for r in main)
    assert all(r.get("agent") == "chatty" for r in records)


class Recorder(Agent):
    """Notes the correlation id and agent its task handler sees."""

    max_concurrent_tasks = 2

    def __init__(self, agent_id: str, seen: dict[str, tuple[str | None, str | None]]) -> None:
        super().__init__(agent_id)
        self.seen = seen

    @handles_task("general")
    async def general(self, task: TaskMessage) -> None:
        from flockrt.actors.correlation import correlation_id, current_agent

        self.seen[task.id] = (correlation_id.get(), current_agent.get())

    async def on_message(self, message: DirectMessage) -> Any:
        from flockrt.actors.correlation import correlation_id, current_agent

        self.seen[str(message.message)] = (correlation_id.get(), current_agent.get())
        return "seen"


async def test_each_piece_of_work_runs_with_its_own_correlation_id(system: ActorSystem) -> None:
    from flockrt.actors.correlation import correlation, correlation_id

    flock = LocalFlock(system)
    seen: dict[str, tuple[str | None, str | None]] = {}
    await system.spawn(Recorder, "recorder", seen)
    # Both Work messages reach the agent's mailbox before it runs: one receive loop (started
    # in c-1's context) takes both, and each must still run with its own id.
    with correlation("c-1"):
        first = flock.dispatcher.start_task(flock.new_task("general", task_id="t-1"))
    with correlation("c-2"):
        second = flock.dispatcher.start_task(flock.new_task("general", task_id="t-2"))
    third = flock.dispatcher.start_task(flock.new_task("general", task_id="t-3"))  # no id: the task's
    await asyncio.gather(first, second, third)
    assert seen == {"t-1": ("c-1", "recorder"), "t-2": ("c-2", "recorder"), "t-3": ("t-3", "recorder")}
    assert correlation_id.get() is None
    # A query carries the current id too, and leaves no trace in the agent's receive loop.
    with correlation("q-1"):
        assert await flock.send_message("recorder", "query", type="query") == "seen"
    await flock.send_message("recorder", "command")
    await wait_for(lambda: "command" in seen)
    assert (seen["query"], seen["command"]) == (("q-1", "recorder"), (None, "recorder"))


async def test_a_submit_over_nats_carries_the_current_correlation_id_to_the_agent_and_the_result(
    nats_server: EmbeddedNats,
) -> None:
    from flockrt.actors.correlation import correlation

    seen: dict[str, tuple[str | None, str | None]] = {}
    async with ActorSystem("corr", shutdown_timeout=2.0) as system:
        bus = NatsConnection(nats_server.url, name="corr")
        await bus.start()
        flock = NatsFlock(system, bus, node="corr", heartbeat_interval=60)
        client = await nats.connect(nats_server.url)
        try:
            await flock.start()
            results = await client.subscribe("task.result")
            await client.flush()
            await system.spawn(Recorder, "recorder", seen)
            await flock.flush()
            with correlation("outer-1"):
                await flock.submit("general", None, task_id="t-9", wait=True)
            result = await results.next_msg(timeout=5)
            assert (result.headers or {}).get("Correlation-Id") == "outer-1"
        finally:
            await client.close()
            await system.shutdown()
            await flock.close()
            await bus.close()
    assert seen == {"t-9": ("outer-1", "recorder")}


def test_text_format_shows_correlation_and_agent(tmp_path: Path) -> None:
    from flockrt.actors.correlation import correlation, current_agent
    from flockrt.logs import AgentFileHandler, ContextFilter, configure_logging, unconfigure_logging

    root = logging.getLogger()
    level = root.level
    path = tmp_path / "main.log"
    try:
        with path.open("w") as stream:
            handlers = configure_logging("INFO", stream=stream, log_dir=tmp_path / "agents")
            log = logging.getLogger("flockrt.test")
            log.info("outside")
            with correlation("c-1"):
                token = current_agent.set("a/../b")
                try:
                    log.info("inside")
                finally:
                    current_agent.reset(token)
            for handler in handlers:
                handler.flush()
        lines = path.read_text().splitlines()
        assert lines[0].endswith("flockrt.test: outside")
        assert lines[1].endswith("flockrt.test: inside correlation_id=c-1 agent=a/../b")
        # An agent id cannot name a file outside the directory.
        assert [p.name for p in (tmp_path / "agents").iterdir()] == ["a____b.log"]
        agent_handler = next(h for h in handlers if isinstance(h, AgentFileHandler))
        assert isinstance(agent_handler.filters[0], ContextFilter)
    finally:
        unconfigure_logging()
        root.setLevel(level)


def test_agent_file_handler_keeps_few_files_open(tmp_path: Path) -> None:
    from flockrt.logs import AgentFileHandler

    handler = AgentFileHandler(tmp_path, max_open=2)
    try:
        for agent in ("a", "b", "c", "a"):
            record = logging.LogRecord("x", logging.INFO, __file__, 1, f"to {agent}", None, None)
            record.agent = agent
            handler.handle(record)
        assert len(handler._files) == 2
    finally:
        handler.close()
    assert (tmp_path / "a.log").read_text() == "to a\nto a\n"
    assert (tmp_path / "c.log").read_text() == "to c\n"


# ---------------------------------------------------------------------- the dashboard


def test_grafana_dashboard_uses_only_series_that_exist() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "flockrt.json").read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert len(exprs) >= 10
    known = known_series()
    for expr in exprs:
        used = set(re.findall(r"\b(flockrt_[a-z0-9_]+|process_[a-z_]+)\b", expr))
        assert used, expr
        assert used <= known, f"{expr}: unknown {sorted(used - known)}"
    # Every family flockrt reports is on the dashboard.
    on_dashboard = {base(name) for expr in exprs for name in re.findall(r"\bflockrt_[a-z0-9_]+\b", expr)}
    families = {base(name) for name in known if name.startswith("flockrt_")}
    assert families - on_dashboard <= {"flockrt_build"}, sorted(families - on_dashboard)


def base(name: str) -> str:
    """A sample name without its type's suffix: the family."""
    return re.sub(r"_(bucket|count|sum|total|created|info)$", "", name)


def known_series() -> set[str]:
    """Every sample name the registry can report, with all parts (flock, NATS) instrumented."""

    class _Bus:  # stands in for a NatsConnection: the collector reads these two
        connected = True
        stats = BusStats()

    async def collect() -> set[str]:
        async with ActorSystem("dashboard") as system:
            flock = LocalFlock(system)
            # Durable counts as a NatsFlock with JetStream tasks reports them.
            counts = dict.fromkeys(("submitted", "duplicate", "received", "acked"), 0)
            flock.durable_counts = lambda: counts  # type: ignore[method-assign]
            with metrics.instrument(system, flock=flock, bus=_Bus()):  # type: ignore[arg-type]
                await system.spawn(Worker, "worker")
                await flock.submit("general", "x", wait=True)
                await flock.request_capability("echo", "x")
                metrics.observe_mcp_request("ping", "ok", 0.001)
                metrics.observe_a2a_request("GetTask", "ok", 0.001)
                metrics.observe_a2a_remote("dashboard-remote", "ok")
                metrics.observe_a2a_remote_cancel("dashboard-remote", ok=True)
                import flockrt.agents.claude  # noqa: F401 - its counters are reported once it is loaded

                return {name for name, _ in scrape()}

    return asyncio.run(collect())


# ---------------------------------------------------------------------- MCP requests


class Tracer(Agent):
    """Answers with the correlation id its capability handler runs with."""

    @capability("trace")
    async def trace(self) -> dict[str, Any]:
        from flockrt.actors.correlation import correlation_id

        return {"correlationId": correlation_id.get()}


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_each_mcp_request_runs_with_a_correlation_id() -> None:
    from mcp import Client

    from tests.mcp_support import _http_with_headers, client, gateway_flock_config, structured

    async with Flock(gateway_flock_config()) as flock:
        await flock.system.spawn(Tracer, "tracer")
        url = flock.gateway_url
        assert url is not None
        seen = []
        async with client(url, transport="websocket") as c:
            for _ in range(2):
                result = await c.call_tool("request_capability", {"capability": "trace"})
                seen.append(structured(result)["result"]["correlationId"])
        assert all(seen) and seen[0] != seen[1]  # a fresh one per request
        async with Client(_http_with_headers(url, {"Correlation-Id": "from-the-caller"})) as c:
            result = await c.call_tool("request_capability", {"capability": "trace"})
            assert structured(result)["result"]["correlationId"] == "from-the-caller"


async def test_metrics_endpoint_of_a_running_flock_shows_its_series() -> None:
    """What `curl /metrics` shows: the gateway's listener serves the flock's series."""
    import aiohttp
    import msgspec

    from tests.mcp_support import gateway_flock_config

    config = msgspec.structs.replace(gateway_flock_config(node="served"), metrics=MetricsConfig())
    async with Flock(config) as flock:
        await flock.system.spawn(Tracer, "tracer")
        assert flock.metrics_url is not None
        async with aiohttp.ClientSession() as http, http.get(flock.metrics_url) as response:
            assert response.status == 200
            text = await response.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    running = [
        s for s in families["flockrt_actors"].samples if s.labels == {"system": "served", "state": "running"}
    ]
    assert [s.value for s in running] == [3]  # /root, the gateway's /mcp-agents and the tracer
    assert "flockrt_mcp_requests" in families
