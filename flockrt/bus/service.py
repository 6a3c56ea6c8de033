"""The NATS service API (nats-py's ``nats.micro``) as the flock uses it.

A process's capabilities are the endpoints of one service, so standard NATS tooling
(``nats micro ls``, ``nats micro stats``) lists them and counts their requests and errors. An
error answer carries the service API's error headers (:func:`service_error_headers`) and is
counted in ``$SRV.STATS`` (:meth:`BusService.record_error`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

import nats.errors
from nats import micro
from nats.aio.client import Client
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER, ServiceError
from nats.micro.request import Request as MicroRequest
from nats.micro.service import Service as MicroService

from flockrt.bus.connection import Handler, NatsConnection, _wrap

__all__ = ["SERVICE_ERROR_CODE_HEADER", "SERVICE_ERROR_HEADER", "BusService", "service_error_headers"]

log = logging.getLogger("flockrt.bus")

SERVICE_ERROR_HEADER: Final = ERROR_HEADER
"""The NATS service API's header of an error reply: its description (``Nats-Service-Error``)."""
SERVICE_ERROR_CODE_HEADER: Final = ERROR_CODE_HEADER
"""The NATS service API's header of an error reply: its code (``Nats-Service-Error-Code``)."""


def service_error_headers(
    code: int, description: str, headers: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``headers`` plus the NATS service API's error headers (what ``nats micro`` and the
    service clients of every language read as an error reply). A header value is one line."""
    error = {**headers} if headers else {}
    error[SERVICE_ERROR_HEADER] = " ".join(description.split())[:1024]
    error[SERVICE_ERROR_CODE_HEADER] = str(code)
    return error


class BusService:
    """A service of the NATS service API (nats-py's ``nats.micro``) with its endpoints.

    Each endpoint is a queue-group subscription whose requests the service counts (requests,
    errors, processing time in ``$SRV.STATS``). Handlers receive a :class:`Message` and answer
    on its reply subject as any request handler does, maybe after they returned; an answer that
    is an error carries :func:`service_error_headers` and is counted with :meth:`record_error`
    (nats.micro counts only handlers that raise). A handler that raises is answered with error
    500 and counted.
    """

    def __init__(
        self, bus: NatsConnection, name: str, version: str, description: str, metadata: dict[str, str]
    ) -> None:
        self._bus = bus
        self.name = name
        self.version = version
        self.description = description
        self.metadata = metadata
        self._endpoints: dict[str, tuple[str, str, Handler, dict[str, str]]] = {}
        self._service: MicroService | None = None

    @property
    def endpoints(self) -> list[str]:
        """The endpoint names, in the order they were added."""
        return list(self._endpoints)

    async def add_endpoint(
        self,
        name: str,
        subject: str,
        handler: Handler,
        *,
        queue: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Serve ``subject`` (in queue group ``queue``) as endpoint ``name`` of this service."""
        self._endpoints[name] = (subject, queue, handler, dict(metadata or {}))
        if self._service is not None:
            await self._add(self._service, name)

    def record_error(self, subject: str, description: str) -> None:
        """Count an error answer of the endpoint serving ``subject`` in ``$SRV.STATS``
        (``num_errors``, ``last_error``), as nats.micro counts a handler that raised."""
        service = self._service
        if service is None:
            return
        for endpoint in service._endpoints:  # nats.micro has no public way to count one
            if endpoint._subject == subject:
                endpoint._num_errors += 1
                endpoint._last_error = description
                return

    async def remove_endpoint(self, name: str) -> None:
        """Stop serving an endpoint (the service restarts without it: nats.micro cannot drop one)."""
        if self._endpoints.pop(name, None) is not None and self._service is not None:
            nc = self._bus._nc
            await self._stop()
            if nc is not None and self._bus.connected:
                await self._attach(nc)

    async def stop(self) -> None:
        """Leave the service API; idempotent."""
        self._bus._services.discard(self)
        await self._stop()

    async def _stop(self) -> None:
        service, self._service = self._service, None
        if service is not None:
            try:
                await service.stop()
            except (nats.errors.Error, OSError) as exc:  # its connection is gone already
                log.debug("stopping service %s: %r", self.name, exc)

    async def _attach(self, nc: Client) -> None:
        service = await micro.add_service(
            nc,
            name=self.name,
            version=self.version,
            description=self.description or None,
            metadata=self.metadata,
        )
        self._service = service
        for name in self._endpoints:
            await self._add(service, name)

    async def _add(self, service: MicroService, name: str) -> None:
        subject, queue, handler, metadata = self._endpoints[name]
        bus = self._bus

        async def serve(request: MicroRequest) -> None:
            msg = request._msg  # the reply subject is all we need; nats-py keeps it private
            bus.stats.received += 1
            try:
                pending = handler(_wrap(msg))
                if pending is not None:
                    await pending
            except Exception as exc:  # isolation boundary, as for subscriptions
                bus.stats.handler_errors += 1
                log.exception("endpoint %s of %s failed: %r", name, self.name, exc)
                # nats.micro counts it in $SRV.STATS and answers with the error headers.
                raise ServiceError("500", f"the endpoint failed: {exc}") from exc

        await service.add_endpoint(
            name=name, subject=subject, queue_group=queue, handler=serve, metadata=metadata
        )
