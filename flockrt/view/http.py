"""The live view over HTTP: the page at ``GET /``, the feed at ``GET /view/feed`` (Server-Sent
Events) and ``GET /view/state`` (one JSON snapshot).

The page is static (no data in it), so it is served to anyone who may reach the gateway; it
asks for a token when the feed answers 401. The feed and the state obey the gateway's rules
for ``/mcp`` (:func:`flockrt.mcp.transport.admit`: the Host, the Origin and the bearer token),
which the runtime passes in as ``admit`` when it adds these routes to the gateway's app.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Protocol

from aiohttp import hdrs, web

from flockrt.view.feed import Feed

__all__ = ["MAX_READERS", "SERVED", "add_routes", "page"]

SERVED = web.AppKey("flockrt.view.served", bool)
"""Set on an app whose live view is served: its ``GET /`` (in :mod:`flockrt.web`) is the page."""

MAX_READERS = 64
"""Feed streams open at once at most; more are refused with 503."""

KEEPALIVE = 15.0
"""Seconds of silence on a stream before an SSE comment goes out."""


@cache
def _page() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy: only its own inline script and style run,
    and it may connect only to its own origin."""
    text = resources.files("flockrt.view").joinpath("page.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.S)
        digests = (base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() for body in bodies)
        return " ".join(f"'sha256-{digest}'" for digest in digests)

    policy = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return text.encode(), policy


def page() -> web.Response:
    """The live view's page."""
    body, policy = _page()
    return web.Response(
        body=body,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": policy,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


class Admitted(Protocol):
    """Whom ``admit`` let in (the gateway's Principal): a stream ends when its token expires."""

    @property
    def expired(self) -> bool: ...


def add_routes(app: web.Application, feed: Feed, admit: Callable[[web.Request], Admitted]) -> None:
    """Serve ``feed`` on ``/view/feed`` and ``/view/state`` of ``app``, each request let in
    by ``admit`` (which raises the HTTP error of a request it refuses)."""

    async def state(request: web.Request) -> web.Response:
        admit(request)
        return web.json_response(feed.snapshot(), headers={"Cache-Control": "no-store"})

    async def stream(request: web.Request) -> web.StreamResponse:
        principal = admit(request)
        if len(feed.streams) >= MAX_READERS:
            raise web.HTTPServiceUnavailable(
                text=f"the live view has {MAX_READERS} readers already; close one and retry\n"
            )
        reader = feed.open()
        response = web.StreamResponse(
            headers={
                hdrs.CONTENT_TYPE: "text/event-stream",
                hdrs.CACHE_CONTROL: "no-store",
                "X-Accel-Buffering": "no",  # a proxy in front must not hold the events back
            }
        )
        try:
            await response.prepare(request)
            while (event := await reader.next(KEEPALIVE)) is not None and not principal.expired:
                await response.write(event)  # an expired token ends the stream: the page asks again
        except ConnectionError:  # the reader went away
            pass
        finally:
            reader.leave()
        return response

    async def end_streams(app: web.Application) -> None:
        feed.close()

    app[SERVED] = True
    app.router.add_get("/view/state", state, allow_head=False)
    app.router.add_get("/view/feed", stream, allow_head=False)
    app.on_shutdown.append(end_streams)
