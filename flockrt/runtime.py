"""Flock: everything a config describes, started in order and stopped in reverse.

Start order: the embedded nats-server (if ``nats.url = "embedded"``), the NATS connection, the
actor system, the flock (over NATS, or in-process without a ``[nats]`` section), its metrics
(with ``[metrics]`` enabled), then the root supervisor and its agents. Stop order is the
reverse, so agents finish their in-flight work and say goodbye while NATS is still there.
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
from flockrt.metrics import Instrumentation, instrument
from flockrt.supervisor.supervisor import Supervisor

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

    @property
    def nats_url(self) -> str | None:
        """Where this process's NATS is (None without a ``[nats]`` section)."""
        if self.server is not None:
            return self.server.url
        return self.config.nats.url if self.config.nats is not None else None

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

    async def stop(self, timeout: float | None = None) -> None:
        """Stop in reverse order; ``timeout`` bounds the actors' graceful stop. Idempotent."""
        try:
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
