"""The ``nats_server`` fixture: a real nats-server with JetStream, one per test.

tests/conftest.py loads it for every test module (``pytest_plugins``).

Each test gets its own server on a free port with its store in ``tmp_path``: a server starts in
a few tens of milliseconds, and no stream, consumer or subscription can leak between tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flockrt.bus.embedded import EmbeddedNats

__all__ = ["nats_server"]


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A started :class:`EmbeddedNats` (``.url`` for clients, ``.kill()``/``.restart()`` for crash
    tests), stopped after the test."""
    async with EmbeddedNats(store_dir=tmp_path / "nats", stop_timeout=5.0) as server:
        yield server
