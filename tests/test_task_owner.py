"""TaskOwner: every background Task has an owner that logs its failure and cancels it at close."""

from __future__ import annotations

import asyncio
import logging

import pytest

from flockrt.actors.tasks import TaskOwner


async def test_a_failure_is_logged_at_once_with_the_owner_and_task_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner = TaskOwner("agent a-1")

    async def broken() -> None:
        raise ValueError("does not encode")

    task = owner.spawn(broken(), name="answer q-1")
    with caplog.at_level(logging.ERROR, logger="flockrt.tasks"):
        await asyncio.gather(task, return_exceptions=True)  # after the owner's done-callback
    assert len(owner) == 0
    [record] = [r for r in caplog.records if r.name == "flockrt.tasks"]
    assert record.getMessage() == "agent a-1: background task answer q-1 failed"
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)


async def test_close_cancels_what_runs_and_wait_returns_the_late_ones() -> None:
    owner = TaskOwner("node")
    release = asyncio.Event()
    quick = owner.spawn(release.wait())
    slow = owner.spawn(asyncio.Event().wait())
    release.set()
    late = await owner.wait(timeout=0.05)
    assert late == {slow} and quick.done()
    await owner.close()
    assert slow.cancelled() and len(owner) == 0


async def test_take_hands_over_the_running_tasks() -> None:
    owner = TaskOwner("agent")
    task = owner.spawn(asyncio.Event().wait())
    taken = owner.take()
    assert taken == {task} and len(owner) == 0
    await TaskOwner.cancel(taken)
    assert task.cancelled()


async def test_a_task_that_reports_its_own_end_leaves_its_owner(caplog: pytest.LogCaptureFixture) -> None:
    owner = TaskOwner("agent a-1")

    async def works(error: Exception | None) -> None:
        task = asyncio.current_task()
        await asyncio.sleep(0)
        owner.ended(task, error)

    ok = owner.start(works(None))
    broken = owner.start(works(ValueError("does not encode")))
    assert len(owner) == 2
    with caplog.at_level(logging.ERROR, logger="flockrt.tasks"):
        await asyncio.gather(ok, broken)
    assert len(owner) == 0
    [record] = [r for r in caplog.records if r.name == "flockrt.tasks"]
    assert record.getMessage().startswith("agent a-1: background task ")
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
