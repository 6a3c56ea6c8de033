"""``flockrt health``: the check a container's HEALTHCHECK runs against /healthz and /readyz."""

from __future__ import annotations

import asyncio

import pytest

from flockrt.bus.embedded import EmbeddedNats
from flockrt.cli import main
from flockrt.runtime import Flock
from tests.client_support import agents_flock_config, dead_url
from tests.conftest import wait_for


def base_url(flock: Flock) -> str:
    assert flock.web is not None
    return flock.web.url


async def test_healthy_and_ready_flock(capsys: pytest.CaptureFixture[str]) -> None:
    async with Flock(agents_flock_config(mcp={"port": 0})) as flock:
        url = base_url(flock)
        assert await asyncio.to_thread(main, ["health", "--url", url]) == 0
        assert capsys.readouterr().out.strip() == f'{url}/healthz: {{"status": "ok"}}'
        assert await asyncio.to_thread(main, ["health", "--url", url, "--ready"]) == 0


async def test_alive_but_not_ready_while_nats_is_away(
    nats_server: EmbeddedNats, capsys: pytest.CaptureFixture[str]
) -> None:
    async with Flock(agents_flock_config(mcp={"port": 0}, nats={"url": nats_server.url})) as flock:
        url = base_url(flock)
        assert await asyncio.to_thread(main, ["health", "--url", url, "--ready"]) == 0
        await nats_server.kill()
        bus = flock.bus
        assert bus is not None
        await wait_for(lambda: not bus.connected)
        assert await asyncio.to_thread(main, ["health", "--url", url]) == 0  # alive: serving its local agents
        assert await asyncio.to_thread(main, ["health", "--url", url, "--ready"]) == 1
        assert "503" in capsys.readouterr().err


def test_nobody_listening_and_bad_urls(capsys: pytest.CaptureFixture[str]) -> None:
    url = dead_url().replace("ws://", "http://").removesuffix("/mcp")
    assert main(["health", "--url", url]) == 3
    assert "cannot be reached" in capsys.readouterr().err
    assert main(["health", "--url", "ftp://127.0.0.1:1"]) == 2
    assert "expected an http:// or https:// URL" in capsys.readouterr().err
