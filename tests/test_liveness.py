"""Liveness: a stale or lost NATS connection shows on /readyz, the log names the server in use
and a failover, the embedded server's monitoring port, and a persisted directory that does not
show dead agents online."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from flockrt.actors.system import ActorSystem
from flockrt.bus.connection import NatsConnection
from flockrt.bus.embedded import EmbeddedNats
from flockrt.bus.flock import NatsFlock
from flockrt.bus.presence import Presence
from flockrt.config import FlockConfig, MetricsConfig, NatsConfig, RuntimeConfig, load_config
from flockrt.errors import ConfigError, NatsServerError
from flockrt.flock.directory import Directory
from flockrt.runtime import Flock
from flockrt.wire.schema import AgentAnnouncement, Codec
from tests.conftest import wait_for
from tests.nats_cluster import NatsCluster

PING_MS = 500  # the client's ping interval in these tests


async def readyz(http: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, str]]:
    async with http.get(f"{base}/readyz") as response:
        return response.status, await response.json()


async def until_status(
    http: aiohttp.ClientSession, base: str, status: int, timeout: float
) -> tuple[float, dict[str, str]]:
    """Poll /readyz until it answers ``status``: (seconds it took, its body)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.timeout(timeout):
        while True:
            code, body = await readyz(http, base)
            if code == status:
                return loop.time() - start, body
            await asyncio.sleep(0.02)


def liveness_config(url: str) -> FlockConfig:
    return FlockConfig(
        runtime=RuntimeConfig(name="live", shutdown_timeout=5.0),
        nats=NatsConfig(url=url, ping_interval=PING_MS, max_outstanding_pings=2),
        metrics=MetricsConfig(port=0),  # a listener for /readyz, without a gateway
    )


async def test_readyz_is_503_with_the_reason_once_the_server_stops_answering(tmp_path: Path) -> None:
    """A SIGSTOPped server keeps the TCP connection open but answers nothing: a silent partition."""
    async with (
        EmbeddedNats(store_dir=tmp_path / "nats") as server,
        Flock(liveness_config(server.url)) as flock,
    ):
        assert flock.metrics_url is not None and server.pid is not None
        base = flock.metrics_url.removesuffix("/metrics")
        pid = server.pid
        async with aiohttp.ClientSession() as http:
            assert await readyz(http, base) == (200, {"status": "ready"})
            os.kill(pid, signal.SIGSTOP)
            try:
                took, body = await until_status(http, base, 503, timeout=10)
                # The next ping goes out within an interval; unanswered for one more, it is stale.
                assert took <= 2 * PING_MS / 1000 + 1.0
                assert body["status"] == "not ready"
                assert "has not answered a ping for over 0.5 s" in body["reason"]
                assert server.url.removeprefix("nats://") in body["reason"]  # the server, by address
                # nats-py then gives the connection up and reconnects: still 503, saying so.
                _, body = await until_status_reason(http, base, "reconnecting", timeout=10)
            finally:
                os.kill(pid, signal.SIGCONT)
            await until_status(http, base, 200, timeout=20)


async def until_status_reason(
    http: aiohttp.ClientSession, base: str, words: str, timeout: float
) -> tuple[int, dict[str, str]]:
    async with asyncio.timeout(timeout):
        while True:
            code, body = await readyz(http, base)
            if words in body.get("reason", ""):
                return code, body
            await asyncio.sleep(0.02)


async def test_the_log_names_the_server_and_the_failover(
    cluster: NatsCluster, caplog: pytest.LogCaptureFixture
) -> None:
    urls = ",".join(cluster.urls)
    bus = NatsConnection(urls, reconnect_wait=0.05, max_backoff=0.1, connect_timeout=1.0)
    with caplog.at_level(logging.INFO, logger="flockrt.bus"):
        await bus.start()
        try:
            first = bus.server
            used = next(node for node in cluster.nodes if node.url.removeprefix("nats://") in first)
            assert f"connected to NATS server {first}" in caplog.messages
            assert first.startswith(f"{used.name} ")  # its name, from the server's INFO
            assert not any(urls in message for message in caplog.messages)  # not the URL list
            await cluster.kill(used.name)
            await wait_for(lambda: bus.connected and bus.server != first, timeout=15)
            assert f"failed over from NATS server {first} to {bus.server}" in caplog.messages
        finally:
            await bus.close()


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: dict[str, object] = json.loads(response.read())
        return body


async def test_the_embedded_servers_monitoring_port(tmp_path: Path) -> None:
    server = EmbeddedNats(store_dir=tmp_path / "nats", monitor_port=0)  # 0: a free port
    async with server:
        assert server.monitor_url is not None
        varz = await asyncio.to_thread(get_json, f"{server.monitor_url}/varz")
        assert varz["server_name"] == server._server_name
        await server.restart()  # keeps the port it picked
        assert (await asyncio.to_thread(get_json, f"{server.monitor_url}/varz"))[
            "server_name"
        ] == server._server_name


async def test_a_taken_monitoring_port_is_named_as_such(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        server = EmbeddedNats(store_dir=tmp_path / "nats", monitor_port=taken)
        with pytest.raises(NatsServerError, match=f"could not serve its monitoring on 127.0.0.1:{taken}"):
            await server.start()
        await server.stop()


async def test_monitoring_is_off_unless_configured(tmp_path: Path) -> None:
    base = NatsConfig(url="embedded", port=0, store_dir=str(tmp_path / "a"))
    async with Flock(FlockConfig(nats=base)) as flock:
        assert flock.server is not None and flock.server.monitor_url is None
    on = NatsConfig(url="embedded", port=0, store_dir=str(tmp_path / "b"), monitor_port=0)
    async with Flock(FlockConfig(nats=on)) as flock:
        assert flock.server is not None and flock.server.monitor_url is not None
        assert "server_id" in await asyncio.to_thread(get_json, f"{flock.server.monitor_url}/varz")


# ---------------------------------------------------------------------- the persisted directory


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[NatsConnection]:
    bus = NatsConnection(nats_server.url)
    await bus.start()
    yield bus
    await bus.close()


async def newcomer_sees(bus: NatsConnection, ahead: float) -> dict[str, str]:
    """The statuses a new process loads from the bucket, its clock ``ahead`` seconds later."""
    interval = 10.0
    directory = Directory(interval, wallclock=lambda: datetime.now(UTC) + timedelta(seconds=ahead))
    async with ActorSystem("newcomer") as system:
        flock = NatsFlock(
            system,
            bus,
            node="newcomer",
            heartbeat_interval=interval,
            directory=directory,
            persist_directory=True,
        )
        await flock.start()
        try:
            return {agent.id: agent.status for agent in flock.list_agents("all")}
        finally:
            await flock.close()


async def test_a_persisted_entry_older_than_three_intervals_loads_offline(bus: NatsConnection) -> None:
    # What a process killed without a goodbye leaves: its agents' entries, no longer rewritten.
    dead = AgentAnnouncement(id="dead-1", name="dead-1", capabilities=["echo"], node="gone")
    await bus.jetstream.kv_put(Presence.DIRECTORY_BUCKET, "dead-1", Codec().encode(dead), ttl=3600)
    assert await newcomer_sees(bus, ahead=0) == {"dead-1": "online"}  # just written: alive
    assert await newcomer_sees(bus, ahead=29) == {"dead-1": "online"}  # within 3 x 10 s
    assert await newcomer_sees(bus, ahead=31) == {"dead-1": "offline"}  # beyond: offline at once


# ---------------------------------------------------------------------- the keys


def test_the_liveness_keys_their_variables_and_ranges(tmp_path: Path) -> None:
    path = tmp_path / "flock.toml"
    path.write_text("[nats]\n")
    nats = load_config(path, env={}).nats
    assert nats is not None
    assert (nats.ping_interval, nats.max_outstanding_pings, nats.monitor_port) == (10000, 2, -1)
    env = {"NATS_PING_INTERVAL": "2500", "NATS_MAX_OUTSTANDING_PINGS": "4", "NATS_MONITOR_PORT": "0"}
    nats = load_config(path, env=env).nats
    assert nats is not None
    assert (nats.ping_interval, nats.max_outstanding_pings, nats.monitor_port) == (2500, 4, 0)
    with pytest.raises(
        ConfigError, match=r"NATS_PING_INTERVAL: expected an integer \(milliseconds\), got '10s'"
    ):
        load_config(path, env={"NATS_PING_INTERVAL": "10s"})
    path.write_text("[nats]\nping_interval = 0\nmax_outstanding_pings = 0\nmonitor_port = -2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    for problem in (
        "nats.ping_interval: expected 1..1000000000, got 0",
        "nats.max_outstanding_pings: expected 1..1000000, got 0",
        "nats.monitor_port: expected -1 (off), 0 (a free port) or a port, got -2",
    ):
        assert problem in str(caught.value)
