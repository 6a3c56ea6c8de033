"""SIGTERM of a flockrt process during a stream of tasks: it stops taking tasks first, lets what
runs finish (acked, in durable mode), hands back what never started, and no task runs twice or
vanishes without a result."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest

from flockrt.bus.embedded import EmbeddedNats
from tests.conftest import wait_for
from tests.intake_support import Process, collect_results, publish_tasks, starts, wait_keeper

STREAM = 60
SECONDS = 0.3


@pytest.fixture
async def client(nats_server: EmbeddedNats) -> AsyncIterator[nats.NATS]:
    connection = await nats.connect(nats_server.url, allow_reconnect=False)
    yield connection
    await connection.close()


@pytest.mark.parametrize("mode", ["core", "durable"])
async def test_sigterm_during_a_stream_runs_every_task_once_and_drops_none_silently(
    nats_server: EmbeddedNats, client: nats.NATS, mode: str
) -> None:
    durable = mode == "durable"
    results = await collect_results(client)
    ids = [f"s{i:02d}" for i in range(STREAM)]
    async with (
        Process(nats_server.url, "stays", 4, SECONDS, mode) as stays,
        Process(nats_server.url, "stops", 8, SECONDS, mode) as stops,
    ):
        if not durable:  # the stopping node keeps the type: its stop hands the role over
            await wait_keeper(client, "stops")
        stopped: asyncio.Task[int] | None = None
        for i, task_id in enumerate(ids):
            await publish_tasks(client, [task_id], durable=durable)
            if i == STREAM // 3:
                async with asyncio.timeout(10):
                    await stops.first_start.wait()  # it is running tasks
                stopped = asyncio.ensure_future(stops.terminate())
            await asyncio.sleep(0.02)  # a stream, not a burst: tasks arrive during the stop
        assert stopped is not None
        assert await stopped == 0
        # Every task has a result: ok, or an error result that says why (and was counted).
        await wait_for(lambda: set(results.by_task) == set(ids), timeout=20)
        await client.flush()
        ran = starts(stays, stops)
        assert max(ran.values()) == 1, f"ran twice: {[task for task, n in ran.items() if n > 1]}"
        assert all(len(answers) == 1 for answers in results.by_task.values())
        counted = stops.stopped
        assert counted is not None
        refused = [error["taskId"] for error in results.errors()]
        assert len(refused) == counted["refused"]  # none here: the other node took them back
        assert refused == []
        assert results.ok() == set(ids)
        if durable:  # the stopping node acked what it ran, and ran nothing it did not ack
            assert counted["acked"] == len(stops.started)
        assert stops.started and stays.started
