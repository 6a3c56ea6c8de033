"""The ``nats_server`` fixture: a real nats-server with JetStream, one per test; and
``plain_nats``: a plain nats-py client of it that collects ``task.result``, as the AI Flock's
own clients see the flock.

tests/conftest.py loads it for every test module (``pytest_plugins``).

Each test gets its own server on a free port with its store in ``tmp_path``: a server starts in
a few tens of milliseconds, and no stream, consumer or subscription can leak between tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.msg import Msg

from flockrt.bus.embedded import EmbeddedNats

__all__ = ["Results", "nats_server", "plain_nats"]


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
