"""The ``nats_server`` fixture: a real nats-server with JetStream, one per test; and
``plain_nats``: a plain nats-py client of it that collects ``task.result``, as the AI Flock's
own clients see the flock.

tests/conftest.py loads it for every test module (``pytest_plugins``).

Each test gets its own server on a free port with its store in ``tmp_path``: a server starts in
a few tens of milliseconds, and no stream, consumer or subscription can leak between tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.msg import Msg

from flockrt.bus.embedded import EmbeddedNats

__all__ = ["Results", "nats_cluster", "nats_server", "plain_nats", "wait_for_jetstream"]


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A started :class:`EmbeddedNats` (``.url`` for clients, ``.kill()``/``.restart()`` for crash
    tests), stopped after the test."""
    async with EmbeddedNats(store_dir=tmp_path / "nats", stop_timeout=5.0) as server:
        yield server


class Results:
    """``task.result`` as a plain NATS client sees it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def handle(self, msg: Msg) -> None:
        self.queue.put_nowait(json.loads(msg.data))

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.queue.get(), 10)


@pytest.fixture
async def plain_nats(nats_server: EmbeddedNats) -> AsyncIterator[tuple[nats.NATS, Results]]:
    """A plain nats-py client of ``nats_server``, subscribed to ``task.result``."""
    connection = await nats.connect(nats_server.url, allow_reconnect=False)
    results = Results()
    await connection.subscribe("task.result", cb=results.handle)
    await connection.flush()
    yield connection, results
    await connection.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def nats_cluster(
    store: Path, size: int = 3, *, timeout: float = 20.0
) -> AsyncIterator[list[EmbeddedNats]]:
    """``size`` nats-servers with JetStream, routed into one cluster on loopback, yielded once
    JetStream has a meta leader (so an R3 stream can be created); stopped on exit.

    Each server's store is ``store/n<i>``; ``servers[i].url`` is its client URL, and
    ``servers[i].kill()`` / ``.restart()`` keep its ports (client and route) and store.
    """
    cluster_ports = [_free_port() for _ in range(size)]
    routes = ",".join(f"nats://127.0.0.1:{port}" for port in cluster_ports)
    servers = [
        EmbeddedNats(
            port=_free_port(),
            store_dir=store / f"n{i}",
            extra_args=[
                "--cluster_name",
                "flockrt-test",
                "--cluster",
                f"nats://127.0.0.1:{port}",
                "--routes",
                routes,
            ],
            stop_timeout=5.0,
        )
        for i, port in enumerate(cluster_ports)
    ]
    try:
        await asyncio.gather(*(server.start() for server in servers))
        await wait_for_jetstream(servers[0].url, timeout)
        yield servers
    finally:
        await asyncio.gather(*(server.stop() for server in servers))


async def wait_for_jetstream(url: str, timeout: float = 20.0) -> None:
    """Wait until the JetStream of the server at ``url`` answers account info (a clustered
    JetStream answers only once it has elected a meta leader)."""
    connection = await nats.connect(url, allow_reconnect=False)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                await connection.jetstream(timeout=1.0).account_info()
                return
            except (nats.errors.TimeoutError, nats.js.errors.APIError, nats.errors.NoRespondersError):
                if loop.time() > deadline:
                    raise AssertionError(f"JetStream at {url} not ready within {timeout} s") from None
                await asyncio.sleep(0.1)
    finally:
        await connection.close()
