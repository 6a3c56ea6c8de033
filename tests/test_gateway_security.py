"""Authentication, Origin checks, the loopback rule, rate and size limits, and every kind of bad
input: each gets the right HTTP status, JSON-RPC error or close code, and the gateway stays up
for everyone else."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest

from flockrt.config import AuthConfig, McpConfig
from flockrt.mcp.auth import GatewayConfigError, TokenBucket, check_bind
from flockrt.runtime import Flock
from tests.mcp_support import (
    INIT_PARAMS,
    INIT_REQUEST,
    JSON_HEADERS,
    RawPeer,
    client,
    gateway_flock_config,
    structured,
    ws_url,
)

SECRET = "a-test-secret-of-at-least-32-bytes!"


@pytest.fixture
async def flock() -> AsyncIterator[Flock]:
    async with Flock(
        gateway_flock_config(max_message_bytes=4096, rate_limit=50.0, rate_burst=20, flood_refusals=80)
    ) as running:
        yield running


@pytest.fixture
async def secured() -> AsyncIterator[Flock]:
    auth = AuthConfig(tokens=["static-token"], jwt_secret=SECRET)
    async with Flock(gateway_flock_config(auth=auth, allowed_origins=["https://app.example"])) as running:
        yield running


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def signed(**claims: Any) -> str:
    return jwt.encode({"exp": int(time.time()) + 60, **claims}, SECRET, algorithm="HS256")


async def ws_status(url: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status of a WebSocket upgrade (101 when it succeeds)."""
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(ws_url(url), protocols=("mcp",), headers=headers) as ws:
                await ws.close()
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=data, headers={**JSON_HEADERS, **(headers or {})}) as r,
    ):
        text = await r.text()
        try:
            payload = json.loads(text)
        except ValueError:
            payload = text
        return r.status, payload, r.headers


# ---------------------------------------------------------------------- who may connect


def test_refuses_to_bind_beyond_loopback_without_authentication() -> None:
    with pytest.raises(GatewayConfigError, match="allow_unauthenticated"):
        check_bind(McpConfig(host="0.0.0.0"))
    check_bind(McpConfig(host="0.0.0.0", auth=AuthConfig(tokens=["t"])))
    check_bind(McpConfig(host="0.0.0.0", auth=AuthConfig(allow_unauthenticated=True)))
    check_bind(McpConfig(host="::1"))
    check_bind(McpConfig(host="localhost"))


async def test_the_flock_does_not_start_an_unsafe_gateway() -> None:
    with pytest.raises(GatewayConfigError):
        async with Flock(gateway_flock_config(host="0.0.0.0")):
            pass


def test_a_short_jwt_secret_is_refused() -> None:
    from flockrt.mcp.auth import Authenticator

    with pytest.raises(GatewayConfigError, match="32"):
        Authenticator(AuthConfig(jwt_secret="short"))


async def test_tokens_are_required_when_configured(secured: Flock) -> None:
    url = secured.gateway_url
    assert url is not None
    assert await ws_status(url) == 401
    assert await ws_status(url, bearer("wrong")) == 401
    assert await ws_status(url, {"Authorization": "Basic abc"}) == 401
    assert await ws_status(url, bearer(jwt.encode({"exp": int(time.time()) - 5}, SECRET))) == 401
    assert await ws_status(url, bearer(jwt.encode({"exp": int(time.time()) + 60}, "x" * 40))) == 401
    assert await ws_status(url, bearer(jwt.encode({"agentId": "a"}, SECRET))) == 401  # no exp
    assert await ws_status(url, bearer("static-token")) == 101
    assert await ws_status(url, bearer(signed(agentId="a"))) == 101
    status, _, headers = await post(url, INIT_REQUEST)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    # The official client, with a token, over both transports.
    for transport in ("http", "websocket"):
        async with client(url, transport=transport, token="static-token") as c:
            assert not (await c.call_tool("list_agents", {})).is_error


async def test_foreign_origins_are_forbidden(secured: Flock) -> None:
    url = secured.gateway_url
    assert url is not None
    token = bearer("static-token")
    host = url.split("/")[2]
    assert await ws_status(url, {**token, "Origin": "https://evil.example"}) == 403
    assert await ws_status(url, {**token, "Origin": f"http://{host}"}) == 101
    assert await ws_status(url, {**token, "Origin": "https://app.example"}) == 101
    status, _, _ = await post(
        url, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, {**token, "Origin": "http://evil"}
    )
    assert status == 403


async def test_an_http_session_belongs_to_its_token(secured: Flock) -> None:
    url = secured.gateway_url
    assert url is not None
    status, _, headers = await post(url, INIT_REQUEST, bearer("static-token"))
    assert status == 200
    session = {"Mcp-Session-Id": headers["Mcp-Session-Id"]}
    status, _, _ = await post(
        url, {"jsonrpc": "2.0", "id": 2, "method": "ping"}, {**bearer(signed(agentId="a")), **session}
    )
    assert status == 403
    status, body, _ = await post(
        url, {"jsonrpc": "2.0", "id": 2, "method": "ping"}, {**bearer("static-token"), **session}
    )
    assert (status, body["result"]) == (200, {})


async def test_a_refreshed_jwt_keeps_its_http_session(secured: Flock) -> None:
    url = secured.gateway_url
    assert url is not None and secured.gateway is not None
    old = signed(agentId="a", capabilities=["x"])
    status, _, headers = await post(url, INIT_REQUEST, bearer(old))
    assert status == 200
    session_id = headers["Mcp-Session-Id"]
    fresh = jwt.encode(
        {"exp": int(time.time()) + 3600, "agentId": "a", "capabilities": ["x"]}, SECRET, algorithm="HS256"
    )
    status, body, _ = await post(
        url, {"jsonrpc": "2.0", "id": 2, "method": "ping"}, {**bearer(fresh), "Mcp-Session-Id": session_id}
    )
    assert (status, body["result"]) == (200, {})
    # The session now lives by the new token's expiry.
    assert (
        secured.gateway.sessions[session_id].principal.expires
        == jwt.decode(fresh, SECRET, algorithms=["HS256"])["exp"]
    )
    # Other rights are another token.
    for other in (signed(agentId="a"), signed(agentId="a", capabilities=["x", "y"]), signed(agentId="b")):
        status, _, _ = await post(
            url,
            {"jsonrpc": "2.0", "id": 3, "method": "ping"},
            {**bearer(other), "Mcp-Session-Id": session_id},
        )
        assert status == 403


async def test_an_action_beyond_the_token_is_403_over_http(secured: Flock) -> None:
    url = secured.gateway_url
    assert url is not None
    token = bearer(signed(agentId="alpha"))
    status, _, headers = await post(url, INIT_REQUEST, token)
    session = {**token, "Mcp-Session-Id": headers["Mcp-Session-Id"]}
    call = {"name": "announce_agent", "arguments": {"id": "beta"}}
    status, body, _ = await post(
        url, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call}, session
    )
    assert status == 403 and body["error"]["code"] == -32003


# ---------------------------------------------------------------------- bad input over WebSocket


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        ("{not json", -32700, "parse error"),
        ("[1, 2]", -32600, "batches"),
        ('"text"', -32600, "JSON object"),
        ('{"id": 1, "method": "ping"}', -32600, "jsonrpc"),
        ('{"jsonrpc": "2.0", "id": 1}', -32600, "method"),
        ('{"jsonrpc": "2.0", "id": 1, "method": 5}', -32600, "method"),
        ('{"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}', -32600, "id"),
        ('{"jsonrpc": "2.0", "id": 1, "method": "nope/nothing"}', -32601, "nope/nothing"),
        ('{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "nope"}}', -32602, "nope"),
        ('{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": 3}', -32602, "params"),
    ],
)
async def test_bad_frames_get_the_right_error_and_the_connection_stays_up(
    flock: Flock, frame: str, code: int, words: str
) -> None:
    assert flock.gateway_url is not None
    async with RawPeer.connect(flock.gateway_url) as peer:
        await peer.send_raw(frame)
        response = await peer.next("<unmatched>") if '"id": 1' not in frame else None
        if response is None:
            # Requests with a readable id are answered with that id.
            response = await peer.next("<unmatched>")
        assert response["error"]["code"] == code, response
        assert words in response["error"]["message"]
        assert (await peer.request("ping"))["result"] == {}


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"message": "x"}, "to"),
        ({"to": 5, "message": "x"}, "to"),
        ({"to": "a", "message": "x", "timeout": "soon"}, "timeout"),
        ({"to": "a", "message": "x", "bogus": 1}, "bogus"),
        ({"to": "a b", "message": "x", "type": "query"}, "to"),
        ({"to": "ghost", "message": "x", "type": "query"}, None),
    ],
)
async def test_malformed_tool_arguments_are_32602_naming_the_argument(
    flock: Flock, arguments: dict[str, Any], named: str | None
) -> None:
    assert flock.gateway_url is not None
    async with RawPeer.connect(flock.gateway_url) as peer:
        response = await peer.request("tools/call", {"name": "send_message", "arguments": arguments})
        if named is None:  # a well-formed call to an agent that does not exist: a business failure
            assert response["result"]["isError"]
            return
        assert response["error"]["code"] == -32602
        assert response["error"]["data"]["argument"] == named
        assert re.search(rf"(^|: ){named} (must|is)", response["error"]["message"])


async def test_other_tools_name_their_bad_arguments(flock: Flock) -> None:
    assert flock.gateway_url is not None
    async with RawPeer.connect(flock.gateway_url) as peer:
        cases = [
            ("list_agents", {"status": "sleeping"}, "status"),
            ("announce_agent", {"id": "has space"}, "id"),
            ("announce_agent", {"id": "ok", "maxConcurrentTasks": 0}, "maxConcurrentTasks"),
            ("submit_task", {"type": "t", "priority": "urgent"}, "priority"),
            ("get_agent_info", {}, "agentId"),
            ("request_capability", {"capability": "c", "timeout": -1}, "timeout"),
            ("send_response", {"to": "a", "response": 1}, "correlationId"),
        ]
        for tool, arguments, named in cases:
            response = await peer.request("tools/call", {"name": tool, "arguments": arguments})
            assert response.get("error", {}).get("code") == -32602, (tool, response)
            assert response["error"]["data"]["argument"] == named, (tool, response)
            assert re.search(rf"(^|: ){named} (must|is)", response["error"]["message"]), (tool, response)


async def test_requests_before_initialize_are_refused(flock: Flock) -> None:
    assert flock.gateway_url is not None
    async with RawPeer.connect(flock.gateway_url, initialize=False) as peer:
        response = await peer.request("tools/list")
        assert response["error"]["code"] == -32600 and "initialize" in response["error"]["message"]
        assert (await peer.request("ping"))["result"] == {}
        bad = await peer.request("initialize", {"capabilities": {}})
        assert bad["error"]["code"] == -32602 and "protocolVersion" in bad["error"]["message"]
        old = await peer.request("initialize", {**INIT_PARAMS, "protocolVersion": "2025-03-26"})
        assert old["result"]["protocolVersion"] == "2025-03-26"
        again = await peer.request("initialize", INIT_PARAMS)
        assert again["error"]["code"] == -32600


async def test_version_negotiation_and_discover(flock: Flock) -> None:
    assert flock.gateway_url is not None
    async with RawPeer.connect(flock.gateway_url, initialize=False) as peer:
        discover = await peer.request(
            "server/discover", {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}
        )
        assert discover["error"]["code"] == -32022
        assert discover["error"]["data"] == {
            "supported": ["2025-03-26", "2025-06-18", "2025-11-25"],
            "requested": "2026-07-28",
        }
        future = await peer.request("initialize", {**INIT_PARAMS, "protocolVersion": "2099-01-01"})
        assert future["result"]["protocolVersion"] == "2025-11-25"
        assert future["result"]["capabilities"] == {
            "tools": {"listChanged": True},
            "resources": {"subscribe": True, "listChanged": False},
        }


async def test_binary_frames_close_1003(flock: Flock) -> None:
    assert flock.gateway_url is not None
    async with RawPeer.connect(flock.gateway_url) as peer:
        await peer.ws.send_bytes(b"\x00\x01")
        await peer._reader
        assert peer.close_code == 1003


async def test_oversize_frames_close_1009_and_others_stay_up(flock: Flock) -> None:
    assert flock.gateway_url is not None
    async with RawPeer.connect(flock.gateway_url) as bystander:
        async with RawPeer.connect(flock.gateway_url) as peer:
            await peer.send_raw(
                json.dumps({"jsonrpc": "2.0", "id": 9, "method": "ping", "params": {"x": "y" * 5000}})
            )
            await peer._reader
            assert peer.close_code == 1009
        assert (await bystander.request("ping"))["result"] == {}


async def test_a_flood_is_rate_limited_then_closed_1008(flock: Flock) -> None:
    assert flock.gateway_url is not None
    async with RawPeer.connect(flock.gateway_url) as bystander:
        async with RawPeer.connect(flock.gateway_url) as peer:
            ping = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
            for _ in range(400):
                if peer.ws.closed:
                    break
                await peer.send_raw(ping)
            await peer._reader
            assert peer.close_code == 1008
            limited = peer.queue("<unmatched>")
            assert not limited.empty() and limited.get_nowait()["error"]["code"] == -32000
        assert (await bystander.request("ping"))["result"] == {}


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(10.0, 2, clock=lambda: now[0])
    assert bucket.take() and bucket.take() and not bucket.take()
    now[0] += 0.1
    assert bucket.take() and not bucket.take()
    assert all(TokenBucket(0, 1).take() for _ in range(100))  # rate 0: no limit


# ---------------------------------------------------------------------- bad input over HTTP


async def test_streamable_http_bad_input(flock: Flock) -> None:
    url = flock.gateway_url
    assert url is not None
    status, body, _ = await post(url, b"{oops")
    assert status == 400 and body["error"]["code"] == -32700 and body["id"] is None
    status, body, _ = await post(url, {"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert status == 400 and "Mcp-Session-Id" in body
    status, _, _ = await post(
        url, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"Mcp-Session-Id": "unknown"}
    )
    assert status == 404
    status, _, _ = await post(url, b"x" * 5000)
    assert status == 413
    status, body, _ = await post(url, {"jsonrpc": "2.0", "id": 1, "method": "server/discover"})
    assert status == 400 and body["error"]["code"] == -32022

    status, body, headers = await post(url, INIT_REQUEST)
    assert status == 200 and body["result"]["protocolVersion"] == "2025-11-25"
    session = {"Mcp-Session-Id": headers["Mcp-Session-Id"]}
    status, body, _ = await post(url, {"jsonrpc": "2.0", "id": 2, "method": "nope"}, session)
    assert body["error"]["code"] == -32601
    status, body, _ = await post(
        url, {"jsonrpc": "2.0", "id": 3, "method": "ping"}, {**session, "MCP-Protocol-Version": "1999-01-01"}
    )
    assert status == 400
    status, _, _ = await post(url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
    assert status == 202
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={**session, "Accept": "application/json"}) as response:
            assert response.status == 406
        async with http.delete(url, headers=session) as response:
            assert response.status == 200
    status, _, _ = await post(url, {"jsonrpc": "2.0", "id": 4, "method": "ping"}, session)
    assert status == 404  # the session ended


async def test_streamable_http_rate_limit_is_429(flock: Flock) -> None:
    url = flock.gateway_url
    assert url is not None
    _, _, headers = await post(url, INIT_REQUEST)
    session = {"Mcp-Session-Id": headers["Mcp-Session-Id"]}
    statuses = []
    for i in range(40):
        status, _, _ = await post(url, {"jsonrpc": "2.0", "id": i, "method": "ping"}, session)
        statuses.append(status)
    assert 429 in statuses and statuses[0] == 200


async def test_the_gateway_serves_a_progress_request_as_sse(flock: Flock) -> None:
    url = flock.gateway_url
    assert url is not None
    async with client(url) as c:
        await c.list_tools()
        result = await c.call_tool("list_agents", {}, progress_callback=_ignore)
        assert structured(result) == {"agents": []}


async def _ignore(progress: float, total: float | None, message: str | None) -> None:
    pass


async def test_a_full_gateway_refuses_new_sessions_with_503(flock: Flock) -> None:
    url = flock.gateway_url
    assert url is not None and flock.gateway is not None
    async with RawPeer.connect(url) as first:
        flock.gateway.max_sessions = 1  # the first is initialized: it stays
        assert await ws_status(url) == 503
        status, _, headers = await post(url, INIT_REQUEST)
        assert status == 503 and headers["Retry-After"] == "5"
        assert (await first.request("ping"))["result"] == {}


async def test_a_connection_whose_token_expires_is_closed_1008(
    secured: Flock, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = secured.gateway_url
    assert url is not None
    now = time.time()
    token = jwt.encode({"exp": int(now) + 60, "agentId": "a"}, SECRET, algorithm="HS256")
    async with RawPeer.connect(url, headers=bearer(token)) as peer:
        assert (await peer.request("ping"))["result"] == {}
        monkeypatch.setattr("flockrt.mcp.auth.time.time", lambda: now + 120)
        response = await peer.request("ping")
        assert response["error"]["code"] == -32003 and "expired" in response["error"]["message"]
        await peer._reader
        assert peer.close_code == 1008


async def test_a_rebinding_page_is_forbidden(flock: Flock) -> None:
    """DNS rebinding: a page at http://evil.example:PORT resolved to 127.0.0.1 sends its own name
    as Host and Origin; neither names the gateway, so it gets 403 (the Origin is not compared
    with the Host header, which the page controls too)."""
    url = flock.gateway_url
    assert url is not None
    port = url.split("/")[2].rsplit(":", 1)[1]
    evil = f"evil.example:{port}"
    init = INIT_REQUEST
    for headers in (
        {"Host": evil, "Origin": f"http://{evil}"},
        {"Host": evil},
        {"Host": f"127.0.0.1:{port}", "Origin": f"http://{evil}"},
    ):
        status, _, _ = await post(url, init, headers)
        assert status == 403, headers
        assert await ws_status(url, headers) == 403, headers
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
        status, _, _ = await post(url, init, {"Host": host, "Origin": f"http://{host}"})
        assert status == 200, host
    base = url.removesuffix("/mcp")
    async with aiohttp.ClientSession() as http:
        for path in ("/metrics", "/healthz", "/readyz"):  # the page cannot read these either
            async with http.get(base + path, headers={"Host": evil}) as response:
                assert response.status == 403, path
            async with http.get(base + path) as response:
                assert response.status == 200, path


async def test_hosts_named_in_allowed_origins_may_reach_the_gateway(secured: Flock) -> None:
    url = secured.gateway_url
    assert url is not None
    headers = {**bearer("static-token"), "Host": "app.example", "Origin": "https://app.example"}
    init = INIT_REQUEST
    status, _, _ = await post(url, init, headers)
    assert status == 200


def test_the_host_check_parses_every_form() -> None:
    from flockrt.mcp.auth import allowed_hosts, host_allowed, origin_allowed

    hosts = allowed_hosts("127.0.0.1", ["https://app.example:8443"])
    assert host_allowed("[::1]:4002", hosts) and host_allowed("LOCALHOST:1", hosts)
    assert host_allowed("app.example", hosts)
    assert not host_allowed(None, hosts) and not host_allowed("", hosts)
    assert not host_allowed("evil.example:4002", hosts) and not host_allowed("[bad", hosts)
    assert origin_allowed(None, hosts, []) and origin_allowed("http://localhost:3000", hosts, [])
    assert not origin_allowed("http://evil.example:4002", hosts, [])
    assert not origin_allowed("null", hosts, []) and origin_allowed("null", hosts, ["*"])
    assert "::1" in allowed_hosts("::1", []) and "gw.internal" in allowed_hosts("gw.internal", [])
