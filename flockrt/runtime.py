"""Flock: everything a config describes, started in order and stopped in reverse.

Start order: the embedded nats-server (if ``nats.url = "embedded"``), the NATS connection, the
actor system, the flock (over NATS, or in-process without a ``[nats]`` section), its metrics
(with ``[metrics]`` enabled), then the root supervisor and its agents, and last the web listener
(the MCP gateway with ``/metrics``, or ``/metrics`` alone). Stop order is the reverse, so
outside clients are let go first and agents finish their in-flight work and say goodbye while
NATS is still there.
"""

from __future__ import annotations

import functools
import logging
import math
from types import TracebackType

from flockrt.actors.ref import ActorRef
from flockrt.actors.system import ActorSystem
from flockrt.bus.connection import NatsConnection
from flockrt.bus.embedded import EmbeddedNats
from flockrt.bus.flock import NatsFlock
from flockrt.config import FlockConfig
from flockrt.local import LocalFlock
from flockrt.mcp.gateway import Gateway
from flockrt.metrics import Instrumentation, instrument
from flockrt.supervisor.supervisor import Supervisor
from flockrt.web import WebServer, build_app

__all__ = ["Flock"]

log = logging.getLogger("flockrt.runtime")


class Flock:
    """A running flock built from a :class:`~flockrt.config.FlockConfig`.

    Example::

        async with Flock(load_config("configs/flock.toml")) as flock:
            print(await flock.flock.request_capability("text-analysis", {"text": "hi there"}))
    """

    def __init__(self, config: FlockConfig) -> None:
        self.config = config
        self.server: EmbeddedNats | None = None
        self.bus: NatsConnection | None = None
        self.system = ActorSystem(config.runtime.name, mailbox_capacity=config.runtime.mailbox_capacity)
        self.flock: LocalFlock | None = None
        """The flock (a NatsFlock with a ``[nats]`` section), once started."""
        self.root: ActorRef[object] | None = None
        self.metrics: Instrumentation | None = None
        """This flock's series in ``flockrt.metrics.REGISTRY``, while ``[metrics]`` is enabled."""
        self.gateway: Gateway | None = None
        """The MCP gateway (with an enabled ``[mcp]`` section), once started."""
        self.web: WebServer | None = None
        """The HTTP listener: the gateway's, or the metrics-only one."""

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
        if self.flock is None or self.system.failure is not None:
            return False
        return self.bus is None or self.bus.connected

    async def __aenter__(self) -> Flock:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start every part; if one fails, the parts already started are stopped again."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        config, runtime = self.config, self.config.runtime
        if config.nats is not None:
            nats = config.nats
            url = nats.url
            if url == "embedded":
                self.server = EmbeddedNats(port=nats.port or None, store_dir=nats.store_dir or None)
                await self.server.start()
                url = self.server.url
            self.bus = NatsConnection(
                url, name=runtime.name, max_retries=nats.max_retries, buffer_limit=nats.buffer_limit
            )
            await self.bus.start()
            heartbeat = nats.heartbeat_interval / 1000
            nats_flock = NatsFlock(
                self.system,
                self.bus,
                node=runtime.name,
                heartbeat_interval=heartbeat,
                durable=nats.durable,
                persist_directory=nats.persist_directory,
            )
            self.flock = nats_flock
            await nats_flock.start()
        else:
            self.flock = LocalFlock(self.system, node=runtime.name)
            log.info("no [nats] section: the flock stays in this process")
        if config.metrics is not None and config.metrics.enabled:
            self.metrics = instrument(self.system, flock=self.flock, bus=self.bus, label=runtime.name)
            log.info("metrics on: flockrt_* series labelled system=%r", self.metrics.label)
        tree = config.supervisor
        self.root = await self.system.spawn(
            functools.partial(
                Supervisor,
                config.child_specs(),
                strategy=tree.strategy,
                max_restarts=tree.max_restarts,
                max_seconds=tree.max_seconds,
            ),
            name="root",
            shutdown_timeout=math.inf,  # stop() bounds the whole stop; each agent has its own
        )
        if isinstance(self.flock, NatsFlock):
            await self.flock.flush()
        await self._start_web()

    async def _start_web(self) -> None:
        """The gateway (with /metrics) if [mcp] is enabled, else /metrics alone if [metrics] is."""
        config = self.config
        assert self.flock is not None
        if config.mcp is not None and config.mcp.enabled:
            self.gateway = Gateway(config.mcp, self.flock)
            await self.gateway.start()
            self.web = WebServer(build_app(self.gateway, ready=self.ready), config.mcp.host, config.mcp.port)
            await self.web.start()
            log.info("MCP gateway listening on %s (WebSocket and Streamable HTTP)", self.gateway_url)
        elif config.metrics is not None and config.metrics.enabled:
            self.web = WebServer(build_app(ready=self.ready), config.metrics.host, config.metrics.port)
            await self.web.start()
            log.info("metrics served on %s", self.metrics_url)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop in reverse order; ``timeout`` bounds the actors' graceful stop. Idempotent."""
        try:
            if self.gateway is not None:
                await self.gateway.close()
            if self.web is not None:
                await self.web.stop()
            await self.system.shutdown(
                timeout=timeout if timeout is not None else self.config.runtime.shutdown_timeout
            )
            if isinstance(self.flock, NatsFlock):
                await self.flock.close()
            if self.bus is not None:
                await self.bus.close()
            if self.server is not None:
                await self.server.stop()
        finally:
            if self.metrics is not None:  # its series leave the registry however the stop went
                self.metrics.close()
