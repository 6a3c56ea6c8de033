"""The MCP gateway benchmark suite: flockrt's gateway beside the official SDK's own server.

    python -m benchmarks.gateway [--quick] [--json PATH]

Each server runs in a process of its own (started by this script: ``--serve flockrt`` or
``--serve fastmcp``), and the load comes from this process, over real loopback sockets, with
plain aiohttp JSON-RPC clients (so the client costs the same for both servers):

- flockrt: a Flock with the gateway and one in-process agent; the trivial tool is
  ``get_agent_info`` (a directory lookup), and ``request_capability`` of an echo capability goes
  through an agent as well;
  an agent with 1,000 typed capabilities makes tools/list 1,009 tools long;
- FastMCP (``mcp.server.mcpserver.MCPServer`` in the SDK 2.x, on uvicorn), Streamable HTTP with
  JSON responses, a trivial ``echo`` tool.

Rows: tool-call latency p50/p99 on one WebSocket and on one Streamable HTTP session (sequential
calls), tool calls per second with 100 concurrent clients (each its own session), and how many
concurrent WebSocket connections the gateway holds with each still answering, and tools/list with
a tool per capability (1,000 of them; round trip as the client sees it, JSON parse included), and an
A2A ``SendMessage`` round trip (blocking, to the ``echo`` capability, which answers at once) beside
the same call as an MCP tool call over Streamable HTTP, interleaved in one run on one server (the
flockrt server has ``[a2a]``: the a2a-sdk of the dev extra). Progress goes to stderr, the table to
stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks._table import Row, render, write_json
from benchmarks.kernel import describe, say

INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@dataclasses.dataclass(frozen=True)
class Sizes:
    calls: int
    clients: int
    calls_per_client: int
    connections: int


FULL = Sizes(calls=3_000, clients=100, calls_per_client=50, connections=1_000)
QUICK = Sizes(calls=200, clients=100, calls_per_client=3, connections=100)


# ---------------------------------------------------------------------- the servers


async def serve_flockrt() -> None:
    import flockrt
    from flockrt.config import A2aConfig, FlockConfig, McpConfig, RuntimeConfig
    from flockrt.runtime import Flock

    class Echo(flockrt.Agent):
        max_concurrent_tasks = 1000

        @flockrt.capability("echo")
        async def echo(self, text: str) -> str:
            return text

    config = FlockConfig(
        runtime=RuntimeConfig(name="bench", mailbox_capacity=100_000),
        mcp=McpConfig(port=0, rate_limit=0.0),  # the limiter would be what is measured
        a2a=A2aConfig(),
    )
    async with Flock(config) as flock:
        await flock.system.spawn(Echo, "echo")
        await flock.system.spawn(_many_capabilities(CAPABILITY_TOOLS), "many")
        print(f"ready {flock.gateway_url}", flush=True)
        await _until_stdin_closes()


CAPABILITY_TOOLS = 1_000
"""Capabilities of the agent whose tools the tools/list row lists (each with a typed schema)."""


def _many_capabilities(n: int) -> type[Any]:
    """An agent class with ``n`` typed, documented capabilities ``cap-0000`` ...: n MCP tools."""
    import flockrt

    def make(i: int) -> Any:
        async def handler(self: Any, text: str, count: int = 1, note: str | None = None) -> dict[str, str]:
            """Repeat a text count times."""
            return {"text": text * count}

        return flockrt.capability(f"cap-{i:04d}")(handler)

    return type("Many", (flockrt.Agent,), {f"cap_{i}": make(i) for i in range(n)})


async def serve_fastmcp() -> None:
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("bench", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text."""
        return text

    import uvicorn

    port = free_port()
    app = server.streamable_http_app(json_response=True, max_sessions=None, host="127.0.0.1")
    uv = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    task = asyncio.get_running_loop().create_task(uv.serve())
    await wait_listening(port)
    print(f"ready http://127.0.0.1:{port}/mcp", flush=True)
    await _until_stdin_closes()
    uv.should_exit = True
    await task


async def _until_stdin_closes() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


SERVER_PIDS: dict[str, int] = {}
"""The process id of the server at each URL that :func:`server_process` started."""


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (None where /proc is not there)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def server_process(kind: str) -> AsyncIterator[str]:
    """Start ``python -m benchmarks.gateway --serve kind``; yields the URL it prints."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.gateway",
        "--serve",
        kind,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        if not line.startswith("ready "):
            raise RuntimeError(f"{kind} server did not start: {line!r}")
        SERVER_PIDS[line.split()[1]] = proc.pid
        yield line.split()[1]
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# ---------------------------------------------------------------------- the clients


class WsClient:
    """One MCP session over one WebSocket, one request at a time."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0

    async def request(self, method: str, params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send_str(
            json.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        )
        while True:
            message: dict[str, Any] = json.loads(await self.ws.receive_str())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(message["error"])
                return message

    async def initialize(self) -> None:
        await self.request("initialize", INIT)
        await self.ws.send_str(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))


class HttpClient:
    """One MCP session over Streamable HTTP."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.headers = dict(HEADERS)
        self.next_id = 0

    async def post(self, message: dict[str, Any]) -> tuple[dict[str, Any] | None, Any]:
        async with self.http.post(self.url, data=json.dumps(message), headers=self.headers) as response:
            body = await response.read()
            if response.status >= 400:
                raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
            return (json.loads(body) if body else None), response.headers

    async def request(self, method: str, params: Any) -> dict[str, Any]:
        self.next_id += 1
        message, _ = await self.post(
            {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        )
        assert message is not None
        if "error" in message:
            raise RuntimeError(message["error"])
        return message

    async def initialize(self) -> None:
        self.next_id += 1
        message, headers = await self.post(
            {"jsonrpc": "2.0", "id": self.next_id, "method": "initialize", "params": INIT}
        )
        assert message is not None and "result" in message, message
        self.headers["Mcp-Session-Id"] = headers["Mcp-Session-Id"]
        self.headers["MCP-Protocol-Version"] = message["result"]["protocolVersion"]
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})


Call = Callable[[Any], Awaitable[dict[str, Any]]]


def trivial_call(kind: str) -> Callable[[Any], Awaitable[dict[str, Any]]]:
    """The trivial tool call of a server kind, on a client."""
    if kind == "fastmcp":
        params = {"name": "echo", "arguments": {"text": "hi"}}
    elif kind == "flockrt-capability":
        params = {
            "name": "request_capability",
            "arguments": {"capability": "echo", "parameters": {"text": "hi"}},
        }
    else:
        params = {"name": "get_agent_info", "arguments": {"agent_id": "echo"}}

    async def call(client: Any) -> dict[str, Any]:
        response: dict[str, Any] = await client.request("tools/call", params)
        assert not response["result"].get("isError"), response
        return response

    return call


@asynccontextmanager
async def ws_session(http: aiohttp.ClientSession, url: str) -> AsyncIterator[WsClient]:
    async with http.ws_connect("ws" + url.removeprefix("http"), protocols=("mcp",)) as ws:
        client = WsClient(ws)
        await client.initialize()
        yield client


async def latencies(client: Any, call: Call, n: int) -> list[float]:
    for _ in range(min(100, n)):  # warm-up
        await call(client)
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call(client)
        samples.append(time.perf_counter() - started)
    return samples


async def ws_listing(url: str, n: int) -> list[float]:
    """Round trips of tools/list on one WebSocket (the answer parsed, its length checked)."""

    async def listing(client: WsClient) -> dict[str, Any]:
        response = await client.request("tools/list", {})
        assert len(response["result"]["tools"]) > CAPABILITY_TOOLS, len(response["result"]["tools"])
        return response

    async with aiohttp.ClientSession() as http, ws_session(http, url) as client:
        return await latencies(client, listing, n)


async def ws_latency(url: str, kind: str, n: int) -> list[float]:
    async with aiohttp.ClientSession() as http, ws_session(http, url) as client:
        return await latencies(client, trivial_call(kind), n)


async def http_latency(url: str, kind: str, n: int) -> list[float]:
    async with aiohttp.ClientSession() as http:
        client = HttpClient(http, url)
        await client.initialize()
        return await latencies(client, trivial_call(kind), n)


async def ws_rate(url: str, kind: str, clients: int, each: int) -> float:
    call = trivial_call(kind)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
        contextlib.AsyncExitStack() as stack,
    ):
        sessions = [await stack.enter_async_context(ws_session(http, url)) for _ in range(clients)]

        async def run(client: WsClient) -> None:
            for _ in range(each):
                await call(client)

        started = time.perf_counter()
        await asyncio.gather(*(run(client) for client in sessions))
        return clients * each / (time.perf_counter() - started)


async def http_rate(url: str, kind: str, clients: int, each: int) -> float:
    call = trivial_call(kind)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sessions = [HttpClient(http, url) for _ in range(clients)]
        await asyncio.gather(*(client.initialize() for client in sessions))

        async def run(client: HttpClient) -> None:
            for _ in range(each):
                await call(client)

        started = time.perf_counter()
        await asyncio.gather(*(run(client) for client in sessions))
        return clients * each / (time.perf_counter() - started)


async def connections_held(url: str, target: int) -> tuple[int, int]:
    """Open ``target`` WebSocket sessions at once, then have every one call a tool.

    Returns (connections opened and initialized, connections that answered the call).
    """
    call = trivial_call("flockrt")
    opened: list[aiohttp.ClientWebSocketResponse] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        try:
            for start in range(0, target, 100):  # in waves: a SYN flood would measure the backlog

                async def one() -> aiohttp.ClientWebSocketResponse:
                    ws = await http.ws_connect("ws" + url.removeprefix("http"), protocols=("mcp",))
                    await WsClient(ws).initialize()
                    return ws

                opened += await asyncio.gather(*(one() for _ in range(min(100, target - start))))
            answers = await asyncio.gather(*(call(WsClient(ws)) for ws in opened), return_exceptions=True)
            answered = sum(1 for answer in answers if isinstance(answer, dict))
            return len(opened), answered
        finally:
            for ws in opened:
                await ws.close()


A2A_HEADERS = {"Content-Type": "application/json", "A2A-Version": "1.0"}


@dataclasses.dataclass
class Side:
    """One side of :func:`a2a_beside_mcp`: round-trip times, and the server's CPU seconds."""

    samples: list[float] = dataclasses.field(default_factory=list)
    cpu: float = 0.0
    calls: int = 0

    def cpu_ms_per_call(self) -> float | None:
        return self.cpu / self.calls * 1e3 if self.calls and self.cpu > 0 else None


async def a2a_beside_mcp(url: str, n: int, rounds: int = 5) -> tuple[Side, Side]:
    """Sequential round trips of the same capability call: A2A ``SendMessage`` (blocking, its
    answer a completed task with the result as an artifact) and the MCP capability tool over
    Streamable HTTP, alternating in ``rounds`` blocks so that both see the same machine. The
    server's CPU time per call (from /proc) is the figure the machine's other load blurs least."""
    a2a_url = url.removesuffix("/mcp") + "/a2a"
    message = {
        "messageId": "bench",
        "role": "ROLE_USER",
        "metadata": {"skill": "echo"},
        "parts": [{"data": {"text": "hi"}}],
    }
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": message}})

    async def send(http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.post(a2a_url, data=body, headers=A2A_HEADERS) as response:
            answer: dict[str, Any] = json.loads(await response.read())
        assert answer["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED", answer
        return answer

    async def tool(client: HttpClient) -> dict[str, Any]:
        response = await client.request("tools/call", {"name": "echo", "arguments": {"text": "hi"}})
        assert not response["result"].get("isError"), response
        return response

    a2a, mcp = Side(), Side()
    pid = SERVER_PIDS.get(url)
    each = max(1, n // rounds)

    async def block(side: Side, client: Any, call: Call) -> None:
        before = cpu_seconds(pid) if pid else None
        side.samples += await latencies(client, call, each)
        after = cpu_seconds(pid) if pid else None
        if before is not None and after is not None:
            side.cpu += after - before
            side.calls += each + min(100, each)  # latencies() warms up with up to 100 calls

    async with aiohttp.ClientSession() as http:
        client = HttpClient(http, url)
        await client.initialize()
        for _ in range(rounds):
            await block(a2a, http, send)
            await block(mcp, client, tool)
    return a2a, mcp


def percentiles_ms(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1e3, cuts[98] * 1e3


async def run_suite(sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    async with server_process("flockrt") as flockrt_url, server_process("fastmcp") as fastmcp_url:
        say(f"flockrt gateway at {flockrt_url}, FastMCP at {fastmcp_url}")

        say(f"[0/5] tools/list with {CAPABILITY_TOOLS:,} capability tools")
        listing = percentiles_ms(await ws_listing(flockrt_url, max(20, sizes.calls // 30)))
        rows.append(
            Row(
                f"0 tools/list, {CAPABILITY_TOOLS:,} capabilities p50",
                "ms",
                listing[0],
                None,
                None,
                "< 50 ms",
                listing[0] < 50.0,
                f"p99 {listing[1]:.1f} ms; one WebSocket, a tool per capability with its schema",
            )
        )

        say("[1/5] latency, sequential calls on one session")
        ws = percentiles_ms(await ws_latency(flockrt_url, "flockrt", sizes.calls))
        ws_capability = percentiles_ms(await ws_latency(flockrt_url, "flockrt-capability", sizes.calls))
        http = percentiles_ms(await http_latency(flockrt_url, "flockrt", sizes.calls))
        peer = percentiles_ms(await http_latency(fastmcp_url, "fastmcp", sizes.calls))
        note = f"{sizes.calls:,} sequential tools/call; FastMCP over Streamable HTTP"
        rows += [
            Row("1 WebSocket tool call p50", "ms", ws[0], peer[0], None, "<= 1 ms", ws[0] <= 1.0, note),
            Row("1 WebSocket tool call p99", "ms", ws[1], peer[1], None, note=note),
            Row(
                "1 WebSocket capability p50",
                "ms",
                ws_capability[0],
                peer[0],
                None,
                note="request_capability -> agent",
            ),
            Row(
                "1 WebSocket capability p99",
                "ms",
                ws_capability[1],
                peer[1],
                None,
                note="request_capability -> agent",
            ),
            Row(
                "2 HTTP tool call p50", "ms", http[0], peer[0], None, note="POST, JSON response, one session"
            ),
            Row(
                "2 HTTP tool call p99", "ms", http[1], peer[1], None, note="POST, JSON response, one session"
            ),
        ]

        say(f"[2/5] {sizes.clients} concurrent clients over WebSocket")
        ws_rate_value = await ws_rate(flockrt_url, "flockrt", sizes.clients, sizes.calls_per_client)
        say(f"[3/5] {sizes.clients} concurrent clients over Streamable HTTP")
        http_rate_value = await http_rate(flockrt_url, "flockrt", sizes.clients, sizes.calls_per_client)
        peer_rate = await http_rate(fastmcp_url, "fastmcp", sizes.clients, sizes.calls_per_client)
        note = f"{sizes.clients} sessions x {sizes.calls_per_client} calls; FastMCP over Streamable HTTP"
        rows += [
            Row(
                f"3 calls/s, {sizes.clients} clients, WebSocket",
                "call/s",
                ws_rate_value,
                peer_rate,
                None,
                note=note,
            ),
            Row(
                f"3 calls/s, {sizes.clients} clients, HTTP",
                "call/s",
                http_rate_value,
                peer_rate,
                None,
                note=note,
            ),
        ]

        say("[4/5] A2A SendMessage beside the MCP tool call, one capability that answers at once")
        a2a_side, mcp_side = await a2a_beside_mcp(flockrt_url, sizes.calls)
        a2a, mcp = percentiles_ms(a2a_side.samples), percentiles_ms(mcp_side.samples)
        a2a_cpu, mcp_cpu = a2a_side.cpu_ms_per_call(), mcp_side.cpu_ms_per_call()
        calls = f"{len(a2a_side.samples):,} sequential calls each, interleaved"
        note = f"{calls}; A2A / MCP p50 = {a2a[0] / mcp[0]:.1f}x"
        cpu_note = "the server process's CPU per call, from /proc"
        if a2a_cpu and mcp_cpu:
            cpu_note += f"; A2A / MCP = {a2a_cpu / mcp_cpu:.1f}x"
        same = "the same call: tools/call echo"
        a2a_rows = [
            Row("5 A2A SendMessage, capability p50", "ms", a2a[0], None, None, note=note),
            Row("5 A2A SendMessage, capability p99", "ms", a2a[1], None, None, note=note),
            Row("5 A2A SendMessage, server CPU", "ms", a2a_cpu, None, None, note=cpu_note),
            Row("5 MCP HTTP capability tool p50", "ms", mcp[0], None, None, note=same),
            Row("5 MCP HTTP capability tool p99", "ms", mcp[1], None, None, note=same),
            Row("5 MCP HTTP capability tool, server CPU", "ms", mcp_cpu, None, None, note=cpu_note),
        ]

        say(f"[5/5] {sizes.connections:,} concurrent WebSocket connections")
        opened, answered = await connections_held(flockrt_url, sizes.connections)
        rows.append(
            Row(
                "4 WebSocket connections held",
                "conns",
                answered,
                None,
                None,
                ">= 1,000" if sizes.connections >= 1000 else f">= {sizes.connections:,} (quick)",
                answered >= sizes.connections,
                f"{opened:,} opened and initialized, {answered:,} answered a tool call while all were open",
            )
        )
        rows += a2a_rows
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N: a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--serve", choices=["flockrt", "fastmcp"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve == "flockrt":
        asyncio.run(serve_flockrt())
        return 0
    if args.serve == "fastmcp":
        asyncio.run(serve_fastmcp())
        return 0

    sizes = QUICK if args.quick else FULL
    info = describe("asyncio", args.quick)
    rows = asyncio.run(run_suite(sizes))
    print(
        f"flockrt MCP gateway benchmarks, {info['date']}: {info['implementation']} {info['python']}, "
        f"{info['cpus']} CPUs, loopback{', --quick' if args.quick else ''}"
    )
    print(render(rows, bare="FastMCP", pykka=False))
    if args.json is not None:
        write_json(args.json, info, sizes, rows, say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
