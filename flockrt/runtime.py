"""Flock: everything a config describes, started in order and stopped in reverse.

Start order: the embedded nats-server (if ``nats.url = "embedded"``), the NATS connection, the
actor system, the flock (over NATS, or in-process without a ``[nats]`` section), its metrics
(with ``[metrics]`` enabled), then the root supervisor and its agents, and last the web listener
(the MCP gateway with ``/metrics``, or ``/metrics`` alone). Stop order is the reverse, so
outside clients are let go first and agents finish their in-flight work and say goodbye while
NATS is still there.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import math
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgspec

from flockrt import assembly
from flockrt.actors.ref import ActorRef
from flockrt.actors.system import ActorSystem
from flockrt.agents.agent import Agent
from flockrt.bus.connection import NatsConnection, tls_context
from flockrt.bus.embedded import EmbeddedNats
from flockrt.bus.flock import NatsFlock
from flockrt.config import FlockConfig, NatsConfig
from flockrt.errors import FlockError, ListenError, NatsServerError
from flockrt.flock.api import FlockAPI
from flockrt.flock.directory import AgentInfo, StatusFilter
from flockrt.flock.local import LocalFlock
from flockrt.mcp.gateway import Gateway
from flockrt.mcp.transport import admit
from flockrt.metrics import Instrumentation, instrument
from flockrt.supervisor.spec import Restart
from flockrt.supervisor.supervisor import Supervisor
from flockrt.view import http as view_http
from flockrt.view.live import LiveView
from flockrt.web import WebServer, build_app
from flockrt.wire.schema import Priority, TaskResult

if TYPE_CHECKING:
    from flockrt.a2a.edge import A2AEdge

__all__ = ["Flock"]

log = logging.getLogger("flockrt.runtime")


class Flock:
    """A running flock: built from a config file, a :class:`~flockrt.config.FlockConfig`, or
    a few keywords, and used directly for the common operations (the full API is on
    :attr:`flock`: the :class:`~flockrt.flock.api.FlockAPI` of a :class:`~flockrt.LocalFlock`
    or, over NATS, a ``NatsFlock``).

    Example::

        async with Flock(nats="embedded") as flock:          # or Flock.from_config(path)
            await flock.spawn_pool(Analyst, count=4)
            print(await flock.request_capability("text-analysis", {"text": "hi there"}))

    Args:
        config: Everything (default: an empty flock named ``flock``, in-process).
        nats: Shorthand for a ``[nats]`` section with this URL; ``"embedded"`` starts a
            nats-server on a free port.
        name: Shorthand for ``[runtime] name`` (the node's name).
    """

    def __init__(
        self, config: FlockConfig | None = None, *, nats: str | None = None, name: str | None = None
    ) -> None:
        config = config if config is not None else FlockConfig()
        if nats is not None:
            # An embedded server of its own takes a free port unless the config names one.
            base = config.nats or NatsConfig(port=0 if nats == "embedded" else NatsConfig().port)
            config = msgspec.structs.replace(config, nats=msgspec.structs.replace(base, url=nats))
        if name is not None:
            config = msgspec.structs.replace(
                config, runtime=msgspec.structs.replace(config.runtime, name=name)
            )
        self.config = config
        self.server: EmbeddedNats | None = None
        self.bus: NatsConnection | None = None
        self.system = ActorSystem(config.runtime.name, mailbox_capacity=config.runtime.mailbox_capacity)
        self.flock: FlockAPI | None = None
        """The flock (a NatsFlock with a ``[nats]`` section, else a LocalFlock), once started."""
        self.root: ActorRef[object] | None = None
        self.metrics: Instrumentation | None = None
        """This flock's series in ``flockrt.metrics.REGISTRY``, while ``[metrics]`` is enabled."""
        self.gateway: Gateway | None = None
        """The MCP gateway (with an enabled ``[mcp]`` section), once started."""
        self.web: WebServer | None = None
        """The HTTP listener: the gateway's, or the metrics-only one."""
        self.view: LiveView | None = None
        """This node's part of the live view (its state published over NATS, the feed)."""
        self.a2a: A2AEdge | None = None
        """The A2A server (on the gateway) and remote agents, with an enabled ``[a2a]`` section."""

    @classmethod
    def from_config(cls, path: str | Path, env: dict[str, str] | None = None) -> Flock:
        """The flock a TOML file describes, with the environment overrides applied (see
        :func:`flockrt.assembly.load`, which raises ConfigError naming a bad key or class)."""
        return cls(assembly.load(path, env))

    @property
    def nats_url(self) -> str | None:
        """Where this process's NATS is (None without a ``[nats]`` section)."""
        if self.server is not None:
            return self.server.url
        return self.config.nats.url if self.config.nats is not None else None

    @property
    def gateway_url(self) -> str | None:
        """``http://host:port/mcp`` of the running gateway (its bound port), else None."""
        if self.gateway is None or self.web is None or self.web.port is None:
            return None
        return f"{self.web.url}/mcp"

    @property
    def metrics_url(self) -> str | None:
        """``http://host:port/metrics`` where this process serves its metrics, else None."""
        if self.web is None or self.web.port is None:
            return None
        return f"{self.web.url}/metrics"

    def ready(self) -> bool:
        """Whether the flock can take work: it runs and, over NATS, is connected."""
        return self.readiness() is None

    def readiness(self) -> str | None:
        """Why the flock cannot take work now (what ``/readyz`` answers with 503), or None:
        not started, its actor system failed, or its NATS connection is not up and answering
        (degraded, reconnecting, or stale: see ``NatsConnection.not_ready_reason``)."""
        if self.flock is None:
            return "the flock is not started"
        if self.system.failure is not None:
            return "the actor system stopped after a failure (see the log)"
        return self.bus.not_ready_reason() if self.bus is not None else None

    async def __aenter__(self) -> Flock:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start every part; if one fails, the parts already started are stopped again.

        Raises:
            ConfigError: a class of the config cannot be imported, or does not fit its entry
                (checked before anything starts).
        """
        assembly.check(self.config)
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        config, runtime = self.config, self.config.runtime
        flock: FlockAPI
        if config.nats is not None:
            nats = config.nats
            url = nats.url
            if url == "embedded":
                self.server = EmbeddedNats(
                    port=nats.port or None,
                    store_dir=nats.store_dir or None,
                    monitor_port=nats.monitor_port if nats.monitor_port >= 0 else None,
                )
                try:
                    await self.server.start()
                except NatsServerError as exc:
                    if "address already in use" not in exc.output or "monitor port" in exc.output:
                        raise  # (a taken monitoring port has its own message, naming monitor_port)
                    # The server's banner says no more than this; the fix is in the config.
                    raise NatsServerError(
                        _port_in_use("the embedded nats-server", "nats", "NATS_PORT", "127.0.0.1", nats.port),
                        port=nats.port,
                    ) from None
                url = self.server.url
            tls = (
                tls_context(nats.tls_ca, nats.tls_cert, nats.tls_key)
                if nats.tls_ca or nats.tls_cert
                else None
            )
            self.bus = NatsConnection(
                url,
                name=runtime.name,
                max_retries=nats.max_retries,
                buffer_limit=nats.buffer_limit,
                credentials=nats.credentials or None,
                user=nats.user or None,
                password=nats.password or None,
                token=nats.token or None,
                tls=tls,
                ping_interval=nats.ping_interval / 1000,
                max_outstanding_pings=nats.max_outstanding_pings,
                replicas=nats.replicas,
            )
            await self.bus.start()
            flock = NatsFlock(
                self.system,
                self.bus,
                node=runtime.name,
                heartbeat_interval=nats.heartbeat_interval / 1000,
                durable=nats.durable,
                persist_directory=nats.persist_directory,
                limits=nats.limits,
                prefetch=nats.prefetch,
                max_held=nats.max_held,
                ack_wait=nats.ack_wait / 1000,
            )
        else:
            flock = LocalFlock(self.system, node=runtime.name)
            log.info("no [nats] section: the flock stays in this process")
        self.flock = flock
        await flock.start()
        if config.metrics is not None and config.metrics.enabled:
            self.metrics = instrument(self.system, flock=self.flock, bus=self.bus, label=runtime.name)
            log.info("metrics on: flockrt_* series labelled system=%r", self.metrics.label)
        tree = config.supervisor
        self.root = await self.system.spawn(
            functools.partial(
                Supervisor,
                assembly.child_specs(config),
                strategy=tree.strategy,
                max_restarts=tree.max_restarts,
                max_seconds=tree.max_seconds,
            ),
            name="root",
            shutdown_timeout=math.inf,  # stop() bounds the whole stop; each agent has its own
        )
        await flock.flush()  # the agents' announcements are out before anyone is let in
        if config.nats is not None or (config.mcp is not None and config.mcp.enabled):
            self.view = LiveView(self.system, flock)  # with no NATS and no gateway, nobody would see it
            await self.view.start()
        await self._start_web(flock)

    async def _start_web(self, flock: FlockAPI) -> None:
        """The gateway (with /metrics) if [mcp] is enabled, else /metrics alone if [metrics] is."""
        config = self.config
        if config.a2a is not None and config.a2a.enabled:
            from flockrt.a2a.edge import A2AEdge  # the a2a-sdk is imported only when configured

            self.a2a = A2AEdge(config.a2a, flock, config.runtime.name)
            await self.a2a.start()
        if config.mcp is not None and config.mcp.enabled:
            self.gateway = Gateway(config.mcp, flock)
            await self.gateway.start()
            self.web = WebServer(
                build_app(self.gateway, readiness=self.readiness), config.mcp.host, config.mcp.port
            )
            if self.view is not None:  # the live view, under the gateway's auth rules
                view_http.add_routes(self.web.app, self.view.feed, functools.partial(admit, self.gateway))
            if self.a2a is not None:
                self.a2a.serve(self.gateway, self.web.app)
            await _listen(self.web, "the MCP gateway", "mcp", "MCP_PORT", config.mcp.host, config.mcp.port)
            log.info("MCP gateway listening on %s (WebSocket and Streamable HTTP)", self.gateway_url)
        elif config.metrics is not None and config.metrics.enabled:
            metrics = config.metrics
            self.web = WebServer(build_app(readiness=self.readiness), metrics.host, metrics.port)
            await _listen(self.web, "/metrics", "metrics", "METRICS_PORT", metrics.host, metrics.port)
            log.info("metrics served on %s", self.metrics_url)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop in reverse order, within ``timeout`` in all (default: ``[runtime]
        shutdown_timeout``): each step gets what the steps before it left. Idempotent."""
        budget = timeout if timeout is not None else self.config.runtime.shutdown_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget

        def left() -> float:
            return max(0.0, deadline - loop.time())

        try:
            if self.gateway is not None:
                # MCP (and A2A) requests in flight may finish in half the budget; agents get the rest.
                await self.gateway.close(drain=budget / 2)
            if self.a2a is not None:
                await self.a2a.close()
            if self.web is not None:
                await self.web.stop()
            if isinstance(self.flock, NatsFlock):  # no new tasks; running ones finish, and are acked
                await self.flock.stop_intake(left())
            if self.view is not None:
                await self.view.close()
            await self.system.shutdown(timeout=left())
            if self.flock is not None:
                await self.flock.close()
            if self.bus is not None:
                await self.bus.close()
            if self.server is not None:
                await self.server.stop()
        finally:
            if self.metrics is not None:  # its series leave the registry however the stop went
                self.metrics.close()

    # ------------------------------------------------------------------ the common operations

    @property
    def running(self) -> FlockAPI:
        """The started flock; raises FlockError before :meth:`start` (or after a failed one)."""
        if self.flock is None:
            raise FlockError("the flock is not started: use 'async with Flock(...)' or await start()")
        return self.flock

    async def spawn_pool(
        self, agent_class: type[Agent], count: int, *, restart: Restart = "permanent", **options: Any
    ) -> ActorRef[Any]:
        """Start ``count`` agents of ``agent_class`` under a supervisor of their own (see
        :meth:`flockrt.flock.api.FlockAPI.spawn_pool`)."""
        return await self.running.spawn_pool(agent_class, count, restart=restart, **options)

    async def request_capability(
        self, capability: str, parameters: Any = None, *, timeout: float = 30.0
    ) -> Any:
        """Have a capable agent, here or in another process, do ``capability``."""
        return await self.running.request_capability(capability, parameters, timeout=timeout)

    async def submit(
        self,
        task_type: str,
        data: Any = None,
        *,
        priority: Priority = "medium",
        wait: bool = False,
        timeout: float | None = None,
    ) -> TaskResult | str:
        """Submit a task; its id, or with ``wait`` its :class:`~flockrt.TaskResult`."""
        return await self.running.submit(task_type, data, priority=priority, wait=wait, timeout=timeout)

    async def send_message(
        self, to: str, message: Any, *, type: str = "command", timeout: float = 30.0
    ) -> Any:
        """A direct message to agent ``to``; a ``query`` returns its answer."""
        if type == "query":
            return await self.running.query(to, message, timeout=timeout)
        await self.running.send(to, message, type=type)
        return None

    def list_agents(self, status: StatusFilter = "online", capability: str | None = None) -> list[AgentInfo]:
        """The agents this process knows of, by status and capability."""
        return self.running.list_agents(status, capability)

    async def wait_for_agents(
        self, count: int, *, capability: str | None = None, timeout: float = 10.0
    ) -> list[AgentInfo]:
        """Wait until ``count`` agents (with ``capability``) are online, here or elsewhere."""
        return await self.running.wait_for_agents(count, capability=capability, timeout=timeout)


def _port_in_use(what: str, section: str, variable: str, host: str, port: int) -> str:
    """What to do about a port that is taken: the key, its variable, or ``port = 0``."""
    return (
        f"{what} cannot listen on {host}:{port} ([{section}] port = {port}): the port is already in use "
        f"(another flock?). Choose another port with [{section}] port or {variable}=..., "
        f"or port = 0 for a free one"
    )


async def _listen(web: WebServer, what: str, section: str, variable: str, host: str, port: int) -> None:
    """Start ``web``; a taken port is reported as :func:`_port_in_use` says.

    Raises:
        ListenError: the address cannot be bound.
    """
    try:
        await web.start()
    except ListenError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        error = ListenError(_port_in_use(what, section, variable, host, port))
        error.errno = exc.errno  # str() stays the message alone, without "[Errno 98]"
        raise error from None
