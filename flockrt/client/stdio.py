"""MCP over stdio, bridged to a running flock's gateway: what ``flockrt mcp`` runs.

Hosts such as Claude Desktop and Claude Code launch an MCP server as a command and speak
newline-delimited JSON-RPC on its stdin and stdout. The gateway already speaks MCP over a
WebSocket, so :class:`StdioBridge` relays each line to one text frame and each frame back to
one line, untouched: initialize, tools, resources, progress, cancellation and the gateway's own
notifications all pass through, and the ids stay the host's.

The bridge keeps only what it needs when the gateway goes away: the ids of the host's requests
not yet answered (each gets a JSON-RPC error saying the flock is unreachable), the host's
``initialize`` request and the resources it subscribed to, which it replays on a new socket when
the gateway comes back, so that the host's session goes on (with a
``notifications/tools/list_changed``, since the flock's capabilities may have changed meanwhile).
Nothing but JSON-RPC goes to stdout; logs go to stderr.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Mapping
from typing import Any, BinaryIO, Final

import aiohttp
import msgspec

from flockrt.errors import GatewayUnavailable, NotAuthorized

__all__ = ["UNREACHABLE", "StdioBridge"]

log = logging.getLogger("flockrt.stdio")

UNREACHABLE: Final = -32000
"""The JSON-RPC code of the bridge's answer to a request the flock cannot take or did not
answer because its gateway is unreachable (a server error of JSON-RPC's reserved range)."""

_REPLAY_ID: Final = "flockrt-stdio-reinitialize"
"""The id of the replayed ``initialize``; its answer is the bridge's, not the host's."""
_OWN_IDS: Final = "flockrt-stdio-"
"""The prefix of the ids of requests the bridge sends itself (their answers are not relayed)."""
_RETRY_FIRST, _RETRY_MAX = 0.1, 2.0
"""Seconds between attempts to reach a lost gateway: doubling from the first to the most."""
_MAX_LINE: Final = 64 * 1024 * 1024
"""Longest line read from the host (the gateway refuses frames beyond its own limit)."""

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class StdioBridge:
    """Relays the MCP stdio transport (``stdin``/``stdout``) to the gateway's WebSocket.

    Args:
        url: The gateway's ``ws(s)://host:port/mcp``.
        token: The bearer token, if the gateway wants one.
        timeout: Seconds one connection attempt (and a replayed initialize) may take.
        stdin: Where the host's lines come from (default: this process's stdin).
        stdout: Where the answers go (default: this process's stdout).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        stdin: BinaryIO | None = None,
        stdout: BinaryIO | None = None,
    ) -> None:
        self.url = url
        self._headers: Mapping[str, str] = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self._stdin = stdin if stdin is not None else sys.stdin.buffer
        self._stdout = stdout if stdout is not None else sys.stdout.buffer
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ready = False  # the socket is open and (after a replay) initialized
        # The host's requests the gateway has not answered, by id: a resources/subscribe
        # request's URI, None for the others.
        self._pending: dict[Any, str | None] = {}
        self._subscriptions: set[str] = set()  # URIs the host subscribed to, renewed on a new socket
        self._initialize: bytes | None = None  # the host's initialize, replayed on a new socket
        self._initialized = False  # the host sent notifications/initialized
        self._done = asyncio.Event()  # stdin ended, stop was set, or stdout is gone

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Relay until stdin ends or ``stop`` is set, then close the socket.

        Raises:
            GatewayUnavailable: the gateway cannot be reached at the start.
            NotAuthorized: the gateway refused the token (401) or the origin (403).
        """
        async with aiohttp.ClientSession() as http:
            self._ws = await self._connect(http)
            self._ready = True
            reader, transport = await self._open_stdin()
            try:
                async with asyncio.TaskGroup() as tasks:
                    relays = [
                        tasks.create_task(self._relay_frames(http)),
                        tasks.create_task(self._relay_lines(reader)),
                    ]
                    if stop is not None:
                        relays.append(tasks.create_task(self._stop_on(stop)))
                    await self._done.wait()
                    for task in relays:
                        task.cancel()
            finally:
                if transport is not None:
                    transport.close()
                if self._ws is not None and not self._ws.closed:
                    await self._ws.close()

    async def _stop_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._done.set()

    async def _connect(self, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        try:
            async with asyncio.timeout(self._timeout):
                ws = await http.ws_connect(
                    self.url, protocols=("mcp",), headers=self._headers, max_msg_size=0, autoping=True
                )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                what = "no or bad token" if exc.status == 401 else "origin or rights refused"
                raise NotAuthorized(f"MCP gateway at {self.url} refused: {exc.status} ({what})") from None
            raise GatewayUnavailable(self.url, f"WebSocket upgrade failed: HTTP {exc.status}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            reason = "connection attempt timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise GatewayUnavailable(self.url, reason or type(exc).__name__) from None
        if ws.protocol != "mcp":
            await ws.close()
            raise GatewayUnavailable(self.url, "the server did not accept the 'mcp' subprotocol")
        return ws

    async def _open_stdin(self) -> tuple[asyncio.StreamReader, asyncio.BaseTransport | None]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_MAX_LINE)
        try:
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), self._stdin
            )
        except ValueError:  # a regular file (``< requests.jsonl``): read it whole, it is there
            reader.feed_data(await asyncio.to_thread(self._stdin.read))
            reader.feed_eof()
            return reader, None
        return reader, transport

    def _write(self, data: bytes) -> None:
        # Blocking, whole lines: the host reads what it launched, and a line must never be
        # interleaved with another.
        try:
            self._stdout.write(data + b"\n")
            self._stdout.flush()
        except (BrokenPipeError, ValueError):  # the host closed our stdout: nobody is listening
            self._done.set()

    def _answer_error(self, request_id: Any, message: str) -> None:
        error = {"code": UNREACHABLE, "message": message, "data": {"url": self.url}}
        self._write(_encode({"jsonrpc": "2.0", "id": request_id, "error": error}))

    # host -> gateway

    async def _relay_lines(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            line = line.strip()
            if line:
                await self._from_host(line)
        log.debug("stdin closed")
        self._done.set()

    async def _from_host(self, line: bytes) -> None:
        try:
            message = _decode(line)
        except msgspec.DecodeError:
            message = None  # the gateway answers it with a parse error, as it would any peer
        request_id = None
        uri: str | None = None
        if isinstance(message, dict):
            method = message.get("method")
            if "id" in message and isinstance(method, str):
                request_id = message["id"]
                if method == "initialize":
                    self._initialize = line
                elif method in ("resources/subscribe", "resources/unsubscribe"):
                    params = message.get("params")
                    found = params.get("uri") if isinstance(params, dict) else None
                    if isinstance(found, str):
                        self._subscriptions.discard(found)
                        uri = found if method == "resources/subscribe" else None
            elif method == "notifications/initialized":
                self._initialized = True
        ws = self._ws
        if not self._ready or ws is None:
            if request_id is not None:
                self._answer_error(request_id, self._unreachable())
            return
        if request_id is not None:
            self._pending[_key(request_id)] = uri
        try:
            await ws.send_str(line.decode("utf-8", "replace"))
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            # aiohttp raises ConnectionResetError (or RuntimeError on a closing socket); the
            # frame reader sees the socket end too and reconnects.
            log.warning("lost the gateway at %s while sending: %s", self.url, exc)
            if ws is self._ws:
                self._gone()

    def _unreachable(self) -> str:
        return (
            f"the flock is unreachable: its MCP gateway at {self.url} cannot be reached "
            "(flockrt mcp keeps trying and goes on when it is back)"
        )

    # gateway -> host

    async def _relay_frames(self, http: aiohttp.ClientSession) -> None:
        while True:
            ws = self._ws
            assert ws is not None
            async for frame in ws:
                if frame.type is aiohttp.WSMsgType.TEXT:
                    self._from_gateway(frame.data)
                elif frame.type is aiohttp.WSMsgType.ERROR:
                    break
            log.warning(
                "lost the gateway at %s (close code %s); answering requests with errors until it is back",
                self.url,
                ws.close_code,
            )
            self._gone()
            self._ws = await self._reconnect(http)

    def _from_gateway(self, text: str) -> None:
        if '"id"' in text:  # only answers and server requests carry an id: skip the rest fast
            try:
                message = _decode(text)
            except msgspec.DecodeError:
                message = None
            if isinstance(message, dict) and "method" not in message:
                request_id = message.get("id")
                if isinstance(request_id, str) and request_id.startswith(_OWN_IDS):
                    return  # a renewed subscription's answer
                subscribed = self._pending.pop(_key(request_id), None)
                if subscribed is not None and "error" not in message:
                    self._subscriptions.add(subscribed)
        self._write(text.encode())

    def _gone(self) -> None:
        """The socket is gone: answer what it will never answer."""
        self._ready = False
        pending, self._pending = self._pending, {}
        for key in pending:
            self._answer_error(
                key[1],
                f"the flock is unreachable: its MCP gateway at {self.url} went away before answering",
            )

    async def _reconnect(self, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        delay = _RETRY_FIRST
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)
            try:
                ws = await self._connect(http)
            except (GatewayUnavailable, NotAuthorized) as exc:
                log.debug("gateway still unreachable: %s", exc)
                continue
            try:
                await self._replay(ws)
            except (OSError, aiohttp.ClientError, RuntimeError, msgspec.DecodeError) as exc:
                # GatewayUnavailable and TimeoutError are OSErrors: a gateway not ready yet.
                log.debug("replaying the session failed: %s", exc)
                await ws.close()
                continue
            log.warning("the gateway at %s is back", self.url)
            return ws

    async def _replay(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Initialize the new socket as the host initialized the old one, then go live."""
        if self._initialize is not None:
            request = _decode(self._initialize)
            request["id"] = _REPLAY_ID
            await ws.send_str(_encode(request).decode())
            # Frames are read here until the answer: nothing else is sent before it.
            async with asyncio.timeout(self._timeout):
                async for frame in ws:
                    if frame.type is not aiohttp.WSMsgType.TEXT:
                        raise GatewayUnavailable(self.url, "closed while re-initializing")
                    message = _decode(frame.data)
                    if isinstance(message, dict) and message.get("id") == _REPLAY_ID:
                        if "error" in message:
                            raise GatewayUnavailable(self.url, f"re-initialize failed: {message['error']}")
                        break
                else:
                    raise GatewayUnavailable(self.url, "closed while re-initializing")
            if self._initialized:
                await ws.send_str('{"jsonrpc":"2.0","method":"notifications/initialized"}')
            for n, uri in enumerate(sorted(self._subscriptions)):
                # Answered on the socket's reader, which drops the answers to the bridge's ids.
                renew = {"uri": uri}
                request = {
                    "jsonrpc": "2.0",
                    "id": f"{_OWN_IDS}subscribe-{n}",
                    "method": "resources/subscribe",
                }
                await ws.send_str(_encode({**request, "params": renew}).decode())
        self._ws = ws
        self._ready = True
        if self._initialized:  # the flock's capabilities may have changed while it was away
            self._write(b'{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}')


def _key(request_id: Any) -> tuple[str, Any]:
    """A dict key for a JSON-RPC id: 1 and "1" are different ids."""
    return (type(request_id).__name__, request_id)
