"""Helpers of the gateway tests: a WebSocket transport for the official ``mcp`` SDK client, a
running flock with a gateway on a free port, and a few in-process agents.

The SDK ships no WebSocket client transport, so :func:`websocket_transport` bridges the
client's read/write streams (anyio memory streams of ``SessionMessage``) to an aiohttp
WebSocket with the ``mcp`` subprotocol, one JSON-RPC message per text frame.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import httpx2
import mcp_types
from mcp import Client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.message import SessionMessage

import flockrt
from flockrt.config import AuthConfig, FlockConfig, McpConfig, NatsConfig, RuntimeConfig
from flockrt.runtime import Flock

INIT_PARAMS: dict[str, Any] = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "t", "version": "0"},
}
"""The params of an ``initialize`` request."""
INIT_REQUEST: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT_PARAMS}
JSON_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
"""What a Streamable HTTP client sends with a POST."""


@asynccontextmanager
async def websocket_transport(
    url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[Any, Any]]:
    """The SDK's Transport over an aiohttp WebSocket (subprotocol ``mcp``)."""
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, protocols=("mcp",), headers=headers) as ws,
    ):

        async def reader() -> None:
            async with read_writer:
                async for frame in ws:
                    if frame.type is not aiohttp.WSMsgType.TEXT:
                        break
                    try:
                        message: SessionMessage | Exception = SessionMessage(
                            mcp_types.jsonrpc_message_adapter.validate_json(frame.data, by_name=False)
                        )
                    except ValueError as exc:
                        message = exc
                    await read_writer.send(message)

        async def writer() -> None:
            async with write_reader:
                async for session_message in write_reader:
                    await ws.send_str(
                        session_message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    )

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(reader)
            tasks.start_soon(writer)
            try:
                yield read_stream, write_stream
            finally:
                tasks.cancel_scope.cancel()


def ws_url(http_url: str) -> str:
    return "ws" + http_url.removeprefix("http")


def client(url: str, *, transport: str = "http", token: str | None = None, **options: Any) -> Client:
    """An SDK client of the gateway at ``url`` (``http://.../mcp``) over ``transport``."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    if transport == "websocket":
        return Client(websocket_transport(ws_url(url), headers), **options)
    if headers is None:
        return Client(url, **options)
    return Client(_http_with_headers(url, headers), **options)


@asynccontextmanager
async def _http_with_headers(url: str, headers: dict[str, str]) -> AsyncIterator[Any]:
    """Streamable HTTP with extra headers: the SDK closes only an HTTP client it made itself."""
    from mcp.client.streamable_http import streamable_http_client

    http: httpx2.AsyncClient = create_mcp_http_client(headers=headers)
    async with http, streamable_http_client(url, http_client=http) as streams:
        yield streams


def gateway_flock_config(
    *, nats_url: str | None = None, node: str = "gw", auth: AuthConfig | None = None, **mcp: Any
) -> FlockConfig:
    """A flock with the gateway on a free port (``mcp`` options on top) and no agents of its
    own; ``tests.client_support.agents_flock_config`` is the one with agents."""
    return FlockConfig(
        runtime=RuntimeConfig(name=node, shutdown_timeout=5.0),
        nats=NatsConfig(url=nats_url) if nats_url else None,
        mcp=McpConfig(**{"port": 0, **mcp}, auth=auth or AuthConfig()),
    )


class Analyst(flockrt.Agent):
    """Counts words; answers queries with an echo."""

    max_concurrent_tasks = 4

    @flockrt.capability("text-analysis")
    async def analyze(self, text: str) -> dict[str, int]:
        return {"words": len(text.split())}

    @flockrt.handles_task("analysis")
    async def on_task(self, task: flockrt.TaskMessage) -> dict[str, Any]:
        return {"words": len(str(task.data).split())}

    async def on_message(self, message: flockrt.DirectMessage) -> Any:
        self.seen.append(message)
        return {"echo": message.message, "from": message.sender}

    async def setup(self) -> None:
        self.seen: list[flockrt.DirectMessage] = []


class Slow(flockrt.Agent):
    """A capability that runs until cancelled, reporting both ends."""

    started: asyncio.Event
    cancelled: asyncio.Event

    @flockrt.capability("slow")
    async def slow(self) -> None:
        Slow.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            Slow.cancelled.set()
            raise


@asynccontextmanager
async def running_flock(config: FlockConfig) -> AsyncIterator[Flock]:
    async with Flock(config) as flock:
        yield flock


def structured(result: Any) -> Any:
    """The structuredContent of a CallToolResult, checked against its text block."""
    assert result.content and result.content[0].type == "text"
    assert json.loads(result.content[0].text) == result.structured_content
    return result.structured_content


class RawPeer:
    """A hand-driven JSON-RPC peer over one gateway WebSocket: what an outside agent does.

    Requests get futures by id; notifications are queued by method, so a test waits for the
    exact message it expects (with a deadline), never for time to pass.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = iter(range(1, 1 << 30))
        self._pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.notifications: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.close_code: int | None = None

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, url: str, *, headers: dict[str, str] | None = None, initialize: bool = True
    ) -> AsyncIterator[RawPeer]:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(ws_url(url), protocols=("mcp",), headers=headers) as ws,
        ):
            peer = cls(ws)
            try:
                if initialize:
                    await peer.request(
                        "initialize",
                        {
                            "protocolVersion": "2025-06-18",
                            "capabilities": {},
                            "clientInfo": {"name": "raw", "version": "0"},
                        },
                    )
                    await peer.notify("notifications/initialized")
                yield peer
            finally:
                await ws.close()
                await asyncio.gather(peer._reader, return_exceptions=True)

    async def _read(self) -> None:
        async for frame in self.ws:
            if frame.type is not aiohttp.WSMsgType.TEXT:
                break
            message = json.loads(frame.data)
            if "method" in message:
                self.queue(message["method"]).put_nowait(message.get("params"))
            elif (future := self._pending.pop(message.get("id"), None)) is not None:
                future.set_result(message)
            else:
                self.queue("<unmatched>").put_nowait(message)
        self.close_code = self.ws.close_code
        for future in self._pending.values():  # nothing more will answer them
            if not future.done():
                future.set_exception(ConnectionError(f"closed with {self.close_code}"))

    def queue(self, method: str) -> asyncio.Queue[dict[str, Any]]:
        return self.notifications.setdefault(method, asyncio.Queue())

    async def next(self, method: str, timeout: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.queue(method).get(), timeout)

    async def send_raw(self, data: str) -> None:
        await self.ws.send_str(data)

    async def request(self, method: str, params: Any = None, timeout: float = 10.0) -> dict[str, Any]:
        """The whole response (``result`` or ``error``)."""
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.ws.send_str(json.dumps(message))
        return await asyncio.wait_for(future, timeout)

    async def notify(self, method: str, params: Any = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        await self.ws.send_str(json.dumps(message))

    async def call(self, tool: str, arguments: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """A tool's result (``structuredContent``, ``isError``), or raises on a JSON-RPC error."""
        response = await self.request("tools/call", {"name": tool, "arguments": arguments}, timeout)
        if "error" in response:
            raise RpcError(response["error"])
        result: dict[str, Any] = response["result"]
        assert json.loads(result["content"][0]["text"]) == result["structuredContent"]
        return result


class RpcError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.code = error["code"]
        self.error = error
