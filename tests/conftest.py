"""Shared fixtures and helpers: no sleeps, only events and conditions with deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import flockrt
from tests.nats_cluster import NatsCluster

# The nats_server fixture: a real nats-server with JetStream on a free port, one per test.
pytest_plugins = ["tests.nats_server"]


@pytest.fixture
async def system() -> AsyncIterator[flockrt.ActorSystem]:
    async with flockrt.ActorSystem("test", shutdown_timeout=2.0) as sys:
        yield sys


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    """Three nats-servers ``n1``..``n3`` with JetStream, routed into one cluster on free ports
    (tests/nats_cluster.py), healthy when the test starts; stopped after it."""
    cluster = NatsCluster(tmp_path)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` is true, yielding to the loop; fail after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0)
