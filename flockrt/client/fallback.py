"""The FlockClient's way around an unreachable gateway: the flock's own NATS.

While the gateway cannot be used (unreachable, or the circuit breaker open), a
:class:`~flockrt.client.client.FlockClient` with ``nats_url`` sends capability requests and
direct messages straight to the flock on NATS, as the same messages every flockrt process
speaks (:mod:`flockrt.bus.remote`). The connection is opened on first use and kept until the
client closes.
"""

from __future__ import annotations

from typing import Any

from flockrt.bus import remote
from flockrt.bus.connection import NatsConnection
from flockrt.wire.schema import Codec

__all__ = ["NatsFallback"]


class NatsFallback:
    """The flock's NATS, reached directly.

    Args:
        url: The flock's NATS server URL(s).
        name: The client name the NATS server shows.
        connect_timeout: Seconds a connection attempt may take.
    """

    def __init__(self, url: str, *, name: str, connect_timeout: float) -> None:
        self.url = url
        self._name = name
        self._connect_timeout = connect_timeout
        self._bus: NatsConnection | None = None
        self._codec = Codec()

    async def connect(self) -> NatsConnection:
        """The connection, opened on first use."""
        if self._bus is None:
            self._bus = NatsConnection(self.url, name=self._name, connect_timeout=self._connect_timeout)
            await self._bus.start()
        return self._bus

    async def send_direct(
        self,
        to: str,
        message: Any,
        *,
        type: str,
        sender: str,
        timeout: float,
        metadata: dict[str, Any] | None,
    ) -> Any:
        """Send a direct message to agent ``to``; for a ``query``, return its answer.

        Raises:
            UnknownAgent, WorkTimeout, WorkFailed, BusUnavailable: as
            :func:`flockrt.bus.remote.send_direct`.
        """
        answer = await remote.send_direct(
            await self.connect(),
            self._codec,
            to,
            message,
            type=type,
            sender=sender,
            timeout=timeout,
            metadata=metadata,
        )
        return answer.message if answer is not None else None

    async def request_capability(
        self, capability: str, parameters: Any, *, requester: str, timeout: float
    ) -> Any:
        """Have an agent that offers ``capability`` do it; return its result.

        Raises:
            NoCapableAgent, WorkTimeout, WorkFailed, BusUnavailable: as
            :func:`flockrt.bus.remote.request_capability`.
        """
        return await remote.request_capability(
            await self.connect(), self._codec, capability, parameters, requester=requester, timeout=timeout
        )

    async def close(self) -> None:
        """Close the connection, if one was opened. Idempotent."""
        bus, self._bus = self._bus, None
        if bus is not None:
            await bus.close()
