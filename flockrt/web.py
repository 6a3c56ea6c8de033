"""The one aiohttp app of a flockrt process: ``/mcp``, ``/healthz``, ``/readyz``, ``/metrics``.

With a gateway, ``/mcp`` serves MCP over WebSocket (an upgrade request) and Streamable HTTP
(POST, GET, DELETE); a WebSocket upgrade on ``/`` is MCP too (the AI Flock seed connects to
``ws://host:4002``, without a path), and a plain GET of ``/`` is the live view's page once
:func:`flockrt.view.http.add_routes` added its data routes. Without one (a ``[metrics]``
section and no ``[mcp]``), the same app serves only the health endpoints and the metrics.

``/healthz`` says the process is alive (200 while it serves at all). ``/readyz`` says it can do
work: 200 when the readiness check passes (the actor system runs and, over NATS, the connection
is up and its server answers pings), else 503 with the reason in the body
(``{"status": "not ready", "reason": "..."}``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from flockrt import metrics
from flockrt.errors import ListenError
from flockrt.mcp import transport
from flockrt.mcp.auth import host_allowed
from flockrt.mcp.gateway import Gateway
from flockrt.view import http as view_http

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

__all__ = ["ListenError", "WebServer", "build_app"]

log = logging.getLogger("flockrt.web")


_DEFAULT_BODY_LIMIT = 1024 * 1024


def build_app(
    gateway: Gateway | None = None, *, readiness: Callable[[], str | None] = lambda: None
) -> web.Application:
    """The aiohttp application: MCP (with a gateway), health, readiness and metrics.

    Args:
        gateway: Serve ``/mcp`` with it (None: health and metrics only).
        readiness: The check behind ``/readyz``: None when ready, else why not (a sentence
            for an operator, sent in the 503's body).
    """
    limit = gateway.config.max_message_bytes if gateway is not None else _DEFAULT_BODY_LIMIT
    middlewares = []
    if gateway is not None and gateway.loopback:
        hosts = gateway.allowed_hosts

        @web.middleware
        async def named_host_only(request: web.Request, handler: Handler) -> web.StreamResponse:
            # DNS rebinding: a page whose name now resolves to 127.0.0.1 sends its own name as
            # Host. On loopback, every route (metrics and health too) answers only its names.
            if not host_allowed(request.headers.get(hdrs.HOST), hosts):
                raise web.HTTPForbidden(text="forbidden: this Host does not name the gateway\n")
            return await handler(request)

        middlewares.append(named_host_only)
    app = web.Application(client_max_size=limit, middlewares=middlewares)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        reason = readiness()
        if reason is None:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "reason": reason}, status=503)

    async def metrics_endpoint(request: web.Request) -> web.Response:
        body, content_type = metrics.exposition()
        response = web.Response(body=body)
        response.headers[hdrs.CONTENT_TYPE] = content_type
        return response

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    if gateway is not None:
        mcp_gateway = gateway

        async def mcp_get(request: web.Request) -> web.StreamResponse:
            if request.headers.get(hdrs.UPGRADE, "").lower() == "websocket":
                return await transport.handle_websocket(mcp_gateway, request)
            return await transport.handle_get(mcp_gateway, request)

        async def mcp_post(request: web.Request) -> web.StreamResponse:
            return await transport.handle_post(mcp_gateway, request)

        async def mcp_delete(request: web.Request) -> web.StreamResponse:
            return await transport.handle_delete(mcp_gateway, request)

        async def root_get(request: web.Request) -> web.StreamResponse:
            # The AI Flock seed's address (ws://host:4002) has no path: an upgrade on / is MCP
            # over WebSocket as on /mcp. A plain GET is not MCP here (the live view's page).
            if request.headers.get(hdrs.UPGRADE, "").lower() == "websocket":
                return await transport.handle_websocket(mcp_gateway, request)
            if view_http.SERVED not in request.app:  # no live view was added (view_http.add_routes)
                raise web.HTTPNotFound()
            return view_http.page()

        app.router.add_get("/", root_get, allow_head=False)
        app.router.add_get("/mcp", mcp_get, allow_head=False)
        app.router.add_post("/mcp", mcp_post)
        app.router.add_delete("/mcp", mcp_delete)
    return app


_ACCEPT_TURNS = 3
"""Loop turns from asyncio's accept of a connection to its protocol's connection_made."""


def _stop_accepting(runner: web.AppRunner) -> bool:
    """Stop accepting connections on ``runner``'s listening sockets, without closing them yet.

    On asyncio's selector loop (CPython 3.11), a connection accepted in the loop turn before
    the listener closes is handed over a turn later, and that hand-over then fails (the
    server's ``_attach`` asserts it still listens): the accepted socket is leaked, its client
    left hanging on a connection nobody serves, until its own timeout. So a stop first stops
    accepting (``remove_reader``), lets the accepted connections land, and only then closes:
    those are closed as connections, and what came later is refused by the kernel. False
    (nothing done) on other loops, or if aiohttp no longer exposes its sites' servers.
    """
    loop = asyncio.get_running_loop()
    if not isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        return False
    stopped = False
    for site in runner.sites:
        server = getattr(site, "_server", None)  # (aiohttp's BaseSite keeps its asyncio Server there)
        for sock in getattr(server, "sockets", None) or ():
            stopped = loop.remove_reader(sock.fileno()) or stopped
    return stopped


class WebServer:
    """Serves an app on host:port (port 0 picks a free one) until :meth:`stop`.

    Args:
        app: From :func:`build_app`.
        host: The address to bind.
        port: The port (0: any free one; :attr:`port` tells which).
    """

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        """The bound port, once started."""
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the listener."""
        if self.port is None:
            raise RuntimeError("the web server is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve.

        Raises:
            ListenError: the address cannot be bound (in use, not local).
        """
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self.host, self._requested_port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise ListenError(
                exc.errno, f"cannot listen on {self.host}:{self._requested_port}: {exc.strerror}"
            ) from exc
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else self._requested_port

    async def stop(self) -> None:
        """Stop listening and close open connections. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if _stop_accepting(runner):
            for _ in range(_ACCEPT_TURNS):  # the connections accepted so far land in aiohttp
                await asyncio.sleep(0)
        await runner.cleanup()
