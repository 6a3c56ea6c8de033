"""Work routing on a real 3-node NATS cluster with three ``flockrt run`` processes (issue 11).

Each test gets its own cluster (tests/nats_cluster.py: nats-server n1..n3, routes, JetStream)
and starts ``python -m flockrt run`` processes on it, one per NATS node, whose Recorder agents
(tests/cluster_agent.py) append every execution to one file. A plain nats-py client publishes
``work`` tasks on ``tasks.work`` and collects ``task.result``. Counting the record file and the
results tells, per task, whether it ran once, twice or not at all: the delivery guarantees of
docs/flock.md ("Delivery guarantees") are these assertions.

Every wait is on a condition with a deadline; the deadlines are generous because the machine is
shared, and every test reports what it saw when it fails.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest

from tests.cluster_agent import read_record
from tests.nats_cluster import (
    FlockProcess,
    NatsCluster,
    Tally,
    best_schedule,
    flock_config,
    start_all,
    stop_all,
    uneven_tasks,
    wait_until,
)

STREAM = "FLOCK_TASKS"
PREFETCH = 1
"""``[nats] prefetch`` of every process here: tasks a node may hold beyond its free slots."""
ACK_WAIT_MS = 3000
"""``[nats] ack_wait`` of the durable processes: a dead node's tasks return after this long."""

LEADER_GAP = 10.0
"""Seconds a replicated stream may refuse publishes after its leader's server is killed: the
servers elect a new leader after a randomised raft election timeout (4-9 s in nats-server
2.10+), and a refused publish is retried after its 1 s timeout."""

Spawn = Callable[..., FlockProcess]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    cluster = NatsCluster(tmp_path)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()


@pytest.fixture
async def flocks(tmp_path: Path, cluster: NatsCluster) -> AsyncIterator[Spawn]:
    """``flocks(name, server, slots=4, durable=False, servers=(), **nats_keys)``: a flockrt
    process whose URL lists server ``server`` and ``servers`` (default: every server), not yet
    started. (nats-py picks among them at random.)"""
    processes: list[FlockProcess] = []

    def spawn(
        name: str,
        server: str,
        *,
        slots: int = 4,
        durable: bool = False,
        servers: Sequence[str] = (),
        **nats: Any,
    ) -> FlockProcess:
        first = cluster[server]
        others = [cluster[s] for s in servers] if servers else [n for n in cluster.nodes if n is not first]
        url = ",".join([first.url, *(n.url for n in others if n is not first)])
        keys = {"prefetch": PREFETCH, **({"ack_wait": ACK_WAIT_MS} if durable else {}), **nats}
        config = flock_config(name, url, tmp_path / "record", slots=slots, durable=durable, nats=keys)
        process = FlockProcess(name, tmp_path, config)
        processes.append(process)
        return process

    try:
        yield spawn
    finally:
        await stop_all(processes)


@pytest.fixture
async def tally(cluster: NatsCluster) -> AsyncIterator[Tally]:
    tally = Tally()
    await tally.connect(cluster.urls, dont_randomize=True)
    try:
        yield tally
    finally:
        await tally.close()


def record_of(tmp_path: Path) -> Any:
    return read_record(tmp_path / "record")


MODES = [pytest.param(False, id="core"), pytest.param(True, id="durable")]


@pytest.mark.parametrize("durable", MODES)
async def test_exactly_once_across_processes(
    tmp_path: Path, flocks: Spawn, tally: Tally, durable: bool
) -> None:
    processes = [flocks(f"p{i}", f"n{i}", durable=durable) for i in (1, 2, 3)]
    await start_all(processes)
    await tally.publish_many(durable, [0.0] * 3000)
    await tally.wait_all_ok(60)

    record = record_of(tmp_path)
    assert record.twice() == {}, "tasks ran more than once"
    assert set(record.started) == set(tally.sent), "a task ran that was not sent, or one sent never ran"
    split = {p.name: record.by_node(p.name) for p in processes}
    assert all(split.values()), f"every process takes a share: {split}"


@pytest.mark.parametrize("durable", MODES)
async def test_uneven_capacity_finishes_near_the_ideal(
    tmp_path: Path, flocks: Spawn, tally: Tally, durable: bool
) -> None:
    small = flocks("small", "n1", slots=1, durable=durable)
    big = flocks("big", "n2", slots=8, durable=durable)
    await start_all([small, big])
    # 64 tasks of 0.1-0.25 s published at once, longest first. The ideal: the best schedule of
    # them on 9 slots (1.34 s; the work / 9, a bound no schedule of whole tasks reaches, is 1.25 s).
    seconds = uneven_tasks()
    ideal = best_schedule(seconds, 9)

    await tally.publish_many(durable, seconds)
    await tally.wait_all_ok(30)

    # From the first task's start to the last one's end, as the agents recorded them: the
    # schedule's length, without this client's own latency on a loaded machine.
    record = record_of(tmp_path)
    elapsed = record.makespan
    split = {p.name: record.by_node(p.name) for p in (small, big)}
    print(
        f"uneven capacity: {elapsed:.2f} s, ideal {ideal:.2f} s ({elapsed / ideal:.2f}x; "
        f"{elapsed / (sum(seconds) / 9):.2f}x the work / 9 slots), split {split}"
    )
    assert record.twice() == {}
    assert elapsed <= 1.2 * ideal, f"{elapsed:.2f} s against an ideal of {ideal:.2f} s; split {split}"


async def test_kill9_of_a_node_loses_nothing_in_durable_mode(
    tmp_path: Path, flocks: Spawn, tally: Tally
) -> None:
    victim = flocks("p1", "n1", durable=True)
    others = [flocks(f"p{i}", f"n{i}", durable=True) for i in (2, 3)]
    await start_all([victim, *others])
    await tally.publish_many(True, [0.5] * 60)
    await wait_until(lambda: record_of(tmp_path).by_node("p1") >= 2, 20, "p1 running tasks")

    await victim.kill()
    killed = time.monotonic()
    record = record_of(tmp_path)
    held = [
        t for t, agents in record.agents.items() if agents[0].startswith("p1-") and not record.finished[t]
    ]
    await tally.wait_all_ok(30)

    assert tally.missing() == []
    assert held, "the victim was killed while running tasks"
    back = max(tally.first_ok[t] for t in held) - killed
    print(f"kill -9, durable: {len(held)} running tasks done elsewhere {back:.1f} s after the kill")
    assert back <= 10, f"the killed node's tasks were done again {back:.1f} s after the kill"
    record = record_of(tmp_path)
    # Only what the victim held may run twice.
    assert set(record.twice()) <= set(held), record.twice()


async def keeper_of(tally: Tally) -> str:
    """The node that keeps ``tasks.work`` open in core mode (docs/flock.md, "Capacity-aware
    intake"): it answers a probe on ``flockrt.intake.work.keeper``; "" when none answers."""
    assert tally.connection is not None
    probe = json.dumps({"node": "test-probe", "capacity": 0}).encode()
    try:
        reply = await tally.connection.request("flockrt.intake.work.keeper", probe, timeout=0.5)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return ""
    return str(json.loads(reply.data)["node"])


@pytest.mark.parametrize("keeper", [pytest.param(False, id="not-keeper"), pytest.param(True, id="keeper")])
async def test_kill9_of_a_node_loses_at_most_what_it_held_in_core_mode(
    tmp_path: Path, flocks: Spawn, tally: Tally, keeper: bool
) -> None:
    # The keeper is the process with the most slots: the victim, or p3.
    slots = 6 if keeper else 4
    victim = flocks("p1", "n1", slots=slots)
    others = [flocks(f"p{i}", f"n{i}", slots=10 - slots) for i in (2, 3)]
    await start_all([victim, *others])
    expected = "p1" if keeper else "p3"
    await wait_until(lambda: _is(keeper_of(tally), expected), 10, f"{expected} keeping tasks.work")
    await tally.publish_many(False, [0.5] * 60)
    await wait_until(lambda: record_of(tmp_path).by_node("p1") >= 2, 20, "p1 running tasks")

    await victim.kill()
    killed = time.monotonic()
    # A survivor keeps the type (at once when the victim was not keeper), and tasks published
    # from then on are not lost.
    await wait_until(lambda: _is(keeper_of(tally), "p2", "p3"), 10, "a surviving keeper")
    recovered = time.monotonic() - killed
    before = set(tally.sent)
    await tally.publish_many(False, [0.05] * 30)
    after = set(tally.sent) - before

    def survivors_done() -> bool:
        record = record_of(tmp_path)
        theirs = [t for t, agents in record.agents.items() if not agents[0].startswith("p1-")]
        return all(t in tally.first_ok for t in [*theirs, *after])

    await wait_until(survivors_done, 30, "the survivors finish every task they took")
    record = record_of(tmp_path)
    lost = tally.missing()
    assert record.twice() == {}
    assert all(t not in record.agents or record.agents[t][0].startswith("p1-") for t in lost), (
        "only the victim's tasks may be lost"
    )
    print(f"kill -9, core, keeper={keeper}: {len(lost)} lost, a surviving keeper after {recovered:.1f} s")
    assert recovered <= 5, f"no surviving keeper for {recovered:.1f} s"
    if not keeper:
        assert len(lost) <= slots + PREFETCH, f"{len(lost)} lost; the victim had {slots} slots + {PREFETCH}"


def _whereabouts(task_ids: list[str], tmp_path: Path) -> str:
    """Where tasks without a result went: never started, started by whom, finished or not."""
    record = record_of(tmp_path)
    never = [t for t in task_ids if t not in record.started]
    started = Counter(
        f"{record.agents[t][0].split('-')[0]}/{'done' if record.finished[t] else 'running'}"
        for t in task_ids
        if t in record.started
    )
    return f"{len(task_ids)} tasks without a result: {len(never)} never started, started {dict(started)}"


async def _reconnected(cluster: NatsCluster, names: list[str]) -> bool:
    try:
        return all([await cluster.server_of(name) != "" for name in names])
    except AssertionError:  # not connected anywhere yet
        return False


async def _is(node: Awaitable[str], *expected: str) -> bool:
    return await node in expected


async def test_kill9_of_the_stream_leader_keeps_intake_and_loses_nothing(
    tmp_path: Path, cluster: NatsCluster, flocks: Spawn
) -> None:
    processes = [flocks(f"p{i}", f"n{i}", durable=True, replicas=3) for i in (1, 2, 3)]
    await start_all(processes)
    leader = await cluster.stream_leader(STREAM)
    info = await cluster.stream_info(STREAM)
    assert info["config"]["num_replicas"] == 3
    # The producer uses the servers that survive, as a producer elsewhere would.
    tally = Tally()
    await tally.connect([n.url for n in cluster.nodes if n.name != leader], dont_randomize=True)
    try:
        acked: list[float] = []
        stop = asyncio.Event()

        async def produce() -> None:
            while not stop.is_set():
                await tally.js_publish(0.02)
                acked.append(time.monotonic())
                await asyncio.sleep(0.01)  # a steady stream, about 50 tasks/s

        producer = asyncio.create_task(produce())
        await wait_until(lambda: len(acked) >= 50, 20, "50 tasks stored before the kill")
        await cluster.kill(leader)
        killed = time.monotonic()
        await wait_until(
            lambda: len([a for a in acked if a > killed + 1]) >= 100, 30, "intake after the kill"
        )
        stop.set()
        await producer

        gap = max(b - a for a, b in itertools.pairwise(acked))
        assert gap <= LEADER_GAP, f"no task was stored for {gap:.1f} s ({tally.refused} refusals)"
        await tally.wait_all_ok(40)
        print(
            f"stream leader kill: no task stored for {gap:.1f} s, {tally.refused} publishes refused, "
            f"{len(record_of(tmp_path).twice())} tasks ran twice"
        )
        assert tally.missing() == []
        assert await cluster.stream_leader(STREAM) != leader
    finally:
        await tally.close()


async def test_kill9_of_a_nats_server_in_core_mode_loses_at_most_what_its_nodes_held(
    tmp_path: Path, cluster: NatsCluster, flocks: Spawn
) -> None:
    """The server of processes that are not keeper: they fail over, and what they held
    (running, prefetched, in transit) is all that may be lost. (A keeper connected to a killed
    server loses what is published while it reconnects and the others are saturated:
    unbounded, as the keeper's kill.)"""
    p1 = flocks("p1", "n1", servers=["n2"])
    p2 = flocks("p2", "n2", servers=["n1"])
    keeper = flocks("p3", "n3", servers=["n3"], slots=6)  # the most slots: the keeper, on n3
    await start_all([p1, p2, keeper])
    victim = await cluster.server_of("p1")
    on_victim = [p for p in ("p1", "p2") if await cluster.server_of(p) == victim]
    bound = len(on_victim) * (4 + PREFETCH)
    tally = Tally()
    await tally.connect([cluster["n1" if victim == "n2" else "n2"].url])
    await wait_until(lambda: _is(keeper_of(tally), "p3"), 10, "p3 keeping tasks.work")
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            await tally.publish(0.2)
            await asyncio.sleep(0.01)  # a steady stream, about 60 tasks/s

    producer = asyncio.create_task(produce())
    try:
        await wait_until(lambda: record_of(tmp_path).by_node("p1") >= 4, 20, "p1 running tasks")
        await cluster.kill(victim)  # p1 (and p2, if it is there) fail over
        await wait_until(lambda: _reconnected(cluster, on_victim), 20, f"{on_victim} failed over")
        sent_then = len(tally.sent)
        await wait_until(lambda: len(tally.sent) >= sent_then + 60, 20, "tasks after the failover")
    finally:
        stop.set()
        await producer
    try:
        await wait_until(
            lambda: (
                len(tally.missing()) <= bound
                and all(t in tally.first_ok for t in record_of(tmp_path).finished)
            ),
            30,
            lambda: f"results for what ran ({_whereabouts(tally.missing(), tmp_path)})",
        )
        lost = tally.missing()
        record = record_of(tmp_path)
        print(f"NATS server kill, core: {len(lost)} lost ({on_victim} on it)")
        assert record.twice() == {}
        assert len(lost) <= bound, f"{_whereabouts(lost, tmp_path)}; {on_victim} held at most {bound}"
    finally:
        await tally.close()


@pytest.mark.parametrize("durable", MODES)
async def test_sigterm_during_a_stream_of_tasks(
    tmp_path: Path, flocks: Spawn, tally: Tally, durable: bool
) -> None:
    victim = flocks("p1", "n1", durable=durable)
    others = [flocks(f"p{i}", f"n{i}", durable=durable) for i in (2, 3)]
    await start_all([victim, *others])
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            await tally.publish_many(durable, [0.2])
            await asyncio.sleep(0.01)  # a steady stream, about 60 tasks/s

    producer = asyncio.create_task(produce())
    try:
        await wait_until(lambda: record_of(tmp_path).by_node("p1") >= 8, 20, "p1 running tasks")
        victim.terminate()
        assert await victim.wait_exit(30) == 0, victim.log()[-3000:]
        stopped_at = len(tally.sent)
        await wait_until(lambda: len(tally.sent) >= stopped_at + 30, 20, "tasks published after the stop")
    finally:
        stop.set()
        await producer

    # No silent drop: every task has a result. Other processes run the type, so a task the
    # stopping process took and never started is handed back and runs there: every result is ok.
    await wait_until(
        lambda: tally.answered() == set(tally.sent),
        30,
        lambda: f"a result for every task ({len(set(tally.sent) - tally.answered())} without one)",
    )
    errors = {t: tally.errors.get(t) for t in tally.sent if "ok" not in tally.results[t]}
    assert errors == {}, "tasks another process could run got an error result"
    record = record_of(tmp_path)
    assert record.twice() == {}, "a stop made tasks run twice"
    assert set(record.started) == set(tally.sent)


async def test_an_operators_r3_stream_stays_r3(tmp_path: Path, cluster: NatsCluster, flocks: Spawn) -> None:
    connection = await nats.connect(cluster.urls[0])
    try:
        js = connection.jetstream()
        await js.add_stream(name=STREAM, subjects=["tasks.>"], retention="workqueue", num_replicas=3)
    finally:
        await connection.close()

    keeper = flocks("p1", "n1", durable=True, replicas=3)
    await keeper.start()
    assert (await cluster.stream_info(STREAM))["config"]["num_replicas"] == 3

    weakener = flocks("p2", "n2", durable=True, replicas=1)
    weakener.spawn()
    code = await weakener.wait_exit(30)
    assert code != 0
    log = weakener.log()
    assert "replicas" in log, log[-3000:]
    assert (await cluster.stream_info(STREAM))["config"]["num_replicas"] == 3
