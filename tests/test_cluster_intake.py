"""Core-mode intake on a 3-node NATS cluster loses nothing (the regression test of the interest
race, docs/flock.md "Capacity-aware intake").

On a cluster, a server that routed a task to another server's queue member before it heard
that the member withdrew its interest loses the task when it arrives there, silently. Credit
subscriptions (``UNSUB <sid> <max>``) withdrew interest all the time, and a keeper that met a
stronger one stepped down by draining: bursts of 1,000 tasks lost up to hundreds. A lane on a
cluster now keeps one unbounded subscription while it runs. Here three ``flockrt run``
processes, each stronger than the last (more slots), join on n1 and n3 while a plain client
publishes bursts through n2, where none of them is: every task crosses a route, and each join
used to make the keeper step down in the middle of a burst.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from tests.cluster_agent import read_record
from tests.nats_cluster import FlockProcess, NatsCluster, Tally, flock_config, wait_until

BURST = 1000
BACKLOG = 40 * BURST
NATS = {"max_held": 2 * BACKLOG}
"""``[nats]`` keys: a process alone at first may hold the whole backlog (no FlockSaturated)."""


async def test_core_bursts_through_a_remote_server_lose_nothing(tmp_path: Path, cluster: NatsCluster) -> None:
    processes = [
        FlockProcess(
            name,
            tmp_path,
            flock_config(name, cluster[server].url, tmp_path / "record", slots=slots, nats=NATS),
        )
        for name, server, slots in (("p1", "n1", 2), ("p2", "n3", 4), ("p3", "n1", 6))
    ]
    tally = Tally()
    stop = asyncio.Event()
    bursts = 0

    async def produce() -> None:
        nonlocal bursts
        while not stop.is_set():
            await tally.publish_many(False, [0.0] * BURST)
            bursts += 1
            # Bursts back to back while fewer than BACKLOG wait for a result, so tasks are on
            # their way whenever a process joins (lost tasks never get one: a loss of more than
            # BACKLOG - BURST stops the producer, and the test fails on its count).
            await wait_until(lambda: len(tally.sent) - len(tally.results) < BACKLOG, 30, "answers")

    try:
        await processes[0].start()
        await tally.connect([cluster["n2"].url])
        producer = asyncio.create_task(produce())
        try:
            for process in processes[1:]:  # each joins while bursts flow
                await process.start()
            await wait_until(lambda: bursts >= 6, 60, "6 bursts")
        finally:
            stop.set()
            await producer

        def lost() -> list[str]:
            return [t for t in tally.sent if t not in tally.results]

        # Every task has a result within the deadline, or it was lost.
        with contextlib.suppress(AssertionError):  # (the assertions below say what is missing)
            await wait_until(lambda: not lost(), 20, "a result for every task")
        record = read_record(tmp_path / "record")
        split = {p.name: record.by_node(p.name) for p in processes}
        print(f"core bursts through n2: {len(lost())} of {len(tally.sent)} lost, split {split}")
        assert lost() == [], f"{len(lost())} of {len(tally.sent)} tasks lost (run per process: {split})"
        assert tally.ok() == set(tally.sent), "tasks refused (FlockSaturated) or failed"
        assert record.twice() == {}, "tasks ran more than once"
        assert set(record.started) == set(tally.sent)
    finally:
        await tally.close()
        await asyncio.gather(*(process.stop() for process in processes))


async def test_core_hand_off_of_bursts_while_uneven_processes_join(
    tmp_path: Path, cluster: NatsCluster
) -> None:
    """A 1-slot process alone gets a burst of 1,000 tasks and holds them; an 8-slot and a
    3-slot process join during the next bursts, and what waits in the others is handed to
    whoever has a free slot (docs/flock.md, "Core mode on a NATS cluster"): each task runs
    once, none is lost, and the 8-slot process runs most of them."""
    processes = [
        FlockProcess(
            name,
            tmp_path,
            flock_config(name, cluster[server].url, tmp_path / "record", slots=slots, nats=NATS),
        )
        for name, server, slots in (("p1", "n1", 1), ("p2", "n3", 8), ("p3", "n1", 3))
    ]
    tally = Tally()
    try:
        await processes[0].start()
        await tally.connect([cluster["n2"].url])
        await tally.publish_many(False, [0.005] * BURST)
        for process in processes[1:]:  # each joins while the earlier bursts wait for slots
            await process.start()
            await tally.publish_many(False, [0.005] * BURST)
        try:  # (within the test's own 60 s, so that a failure says where the tasks are)
            await tally.wait_all_ok(40)
        except AssertionError as exc:
            record = read_record(tmp_path / "record")
            missing = tally.missing()
            running = sum(1 for t in missing if record.started[t] and not record.finished[t])
            logs = "\n".join(f"--- {p.name}:\n" + "\n".join(p.log().splitlines()[-15:]) for p in processes)
            raise AssertionError(
                f"{exc}: {running} started and unfinished, {len(missing) - running} never started\n{logs}"
            ) from None
        record = read_record(tmp_path / "record")
        split = {p.name: record.by_node(p.name) for p in processes}
        # The first burst went to p1 alone: what of it ran elsewhere was handed off.
        first = list(tally.sent)[:BURST]
        handed = sum(1 for t in first if not record.agents[t][0].startswith("p1-"))
        print(f"core hand-off, bursts while processes join: split {split}, {handed} of burst 1 handed off")
        assert record.twice() == {}, "tasks ran more than once"
        assert set(record.started) == set(tally.sent)
        assert tally.ok() == set(tally.sent)
        assert handed > BURST // 2, "p1 kept most of what it could not run"
        assert split["p2"] > split["p1"], "the 8-slot process ran more than the 1-slot one"
    finally:
        await tally.close()
        await asyncio.gather(*(process.stop() for process in processes))
