"""The gateway driven by the official ``mcp`` SDK client, over Streamable HTTP and WebSocket:
the default-mode connect (server/discover, then initialize), every tool, resources and
subscriptions, progress and cancellation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import mcp_types
import pytest
from mcp.shared.exceptions import MCPError

import flockrt
from flockrt.runtime import Flock
from tests.conftest import wait_for
from tests.mcp_support import Analyst, Slow, client, gateway_flock_config, structured

TRANSPORTS = ["http", "websocket"]
pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")


@pytest.fixture
async def flock() -> AsyncIterator[Flock]:
    async with Flock(gateway_flock_config()) as running:
        await running.system.spawn(Analyst, "analyst-1", name="analyst-1")
        yield running


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_sdk_client_connects_in_default_mode(flock: Flock, transport: str) -> None:
    assert flock.gateway_url is not None
    async with client(flock.gateway_url, transport=transport) as c:
        assert c.session.protocol_version == "2025-11-25"
        init = c.session.initialize_result
        assert init is not None
        assert init.server_info.name == "flockrt"
        assert init.capabilities.tools is not None
        assert init.capabilities.resources is not None and init.capabilities.resources.subscribe
        assert await c.send_ping() is not None  # type: ignore[attr-defined]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_every_tool_is_listed_with_input_and_output_schemas(flock: Flock, transport: str) -> None:
    assert flock.gateway_url is not None
    async with client(flock.gateway_url, transport=transport) as c:
        listed = {tool.name: tool for tool in (await c.list_tools()).tools}
    assert set(listed) == {
        "send_message",
        "request_capability",
        "list_agents",
        "get_agent_info",
        "announce_agent",
        "send_response",
        "submit_task",
        "broadcast",
        "get_supervision_tree",
        "text-analysis",  # the capability of analyst-1, a tool of its own
    }
    for tool in listed.values():
        assert tool.input_schema["type"] == "object"
        assert tool.output_schema is not None and tool.output_schema["type"] == "object"
    assert listed["send_message"].input_schema["required"] == ["to", "message"]
    assert "maxConcurrentTasks" in listed["announce_agent"].input_schema["properties"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_every_tool_answers(flock: Flock, transport: str) -> None:
    assert flock.gateway_url is not None
    async with client(flock.gateway_url, transport=transport) as c:
        await c.list_tools()
        call = c.call_tool

        result = await call(
            "request_capability", {"capability": "text-analysis", "parameters": {"text": "a b c"}}
        )
        assert not result.is_error
        answer = structured(result)
        assert answer["result"] == {"words": 3}
        assert answer["agentId"] == "analyst-1" and answer["correlationId"]  # who answered

        result = await call("send_message", {"to": "analyst-1", "message": {"q": 1}, "type": "query"})
        out = structured(result)
        assert out["delivered"] and out["from"] == "analyst-1"
        assert out["response"]["echo"] == {"q": 1}
        assert out["response"]["from"].startswith("mcp-")

        result = await call("send_message", {"to": "analyst-1", "message": "hello"})
        assert structured(result)["delivered"] is True

        agents = structured(await call("list_agents", {"status": "all"}))["agents"]
        assert [a["id"] for a in agents] == ["analyst-1"]
        assert structured(await call("list_agents", {"capability": "nothing"}))["agents"] == []

        info = structured(await call("get_agent_info", {"agent_id": "analyst-1"}))["agent"]
        assert info["capabilities"] == ["text-analysis"] and info["status"] == "online"

        done = structured(await call("submit_task", {"type": "analysis", "data": "x y", "wait": True}))
        assert done["result"]["status"] == "ok" and done["result"]["result"] == {"words": 2}
        assert done["result"]["processedBy"] == "analyst-1"
        queued = structured(await call("submit_task", {"type": "analysis", "data": "z", "priority": "high"}))
        assert isinstance(queued["taskId"], str) and "result" not in queued

        assert structured(await call("broadcast", {"type": "news", "message": "hi"})) == {"delivered": True}

        tree = structured(await call("get_supervision_tree", {}))["tree"]
        names = json.dumps(tree)
        assert "analyst-1" in names and "mcp-agents" in names

        announced = structured(await call("announce_agent", {"id": "outside-1", "capabilities": ["x"]}))
        assert announced == {"agentId": "outside-1", "announced": True}
        await wait_for(
            lambda: (info := flock.flock.get_agent("outside-1")) is not None and info.status == "online"
        )  # type: ignore[union-attr]

        result = await call("send_response", {"to": "a", "response": 1, "correlationId": "nope"})
        assert result.is_error and structured(result)["error"] == "failed"
    # The session ended (DELETE, or the socket closed): its agent is offline.
    await wait_for(lambda: flock.flock.get_agent("outside-1").status == "offline")  # type: ignore[union-attr]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_business_failures_are_tool_errors(flock: Flock, transport: str) -> None:
    assert flock.gateway_url is not None
    async with client(flock.gateway_url, transport=transport) as c:
        await c.list_tools()

        async def failure(name: str, arguments: dict[str, Any]) -> str:
            result = await c.call_tool(name, arguments)
            assert result.is_error
            kind: str = structured(result)["error"]
            return kind

        assert await failure("request_capability", {"capability": "none-such"}) == "no_capable_agent"
        assert await failure("submit_task", {"type": "none-such", "wait": True}) == "no_capable_agent"
        assert await failure("send_message", {"to": "ghost", "message": 1}) == "unknown_agent"
        assert await failure("get_agent_info", {"agent_id": "ghost"}) == "unknown_agent"
        assert await failure("send_response", {"to": "x", "response": 1, "correlationId": "c"}) == "forbidden"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resources_read_and_subscriptions(flock: Flock, transport: str) -> None:
    assert flock.gateway_url is not None
    updates: list[str] = []
    arrived = asyncio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, mcp_types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))
            arrived.set()

    async with client(flock.gateway_url, transport=transport, message_handler=on_message) as c:
        listed = {str(r.uri) for r in (await c.list_resources()).resources}
        assert listed == {"flock://agents", "flock://tree"}
        templates = (await c.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["flock://agents/{id}"]

        agents = json.loads((await c.read_resource("flock://agents")).contents[0].text)  # type: ignore[union-attr]
        assert [a["id"] for a in agents["agents"]] == ["analyst-1"]
        one = json.loads((await c.read_resource("flock://agents/analyst-1")).contents[0].text)  # type: ignore[union-attr]
        assert one["agent"]["id"] == "analyst-1"
        tree = json.loads((await c.read_resource("flock://tree")).contents[0].text)  # type: ignore[union-attr]
        assert tree["tree"]["path"] == "/"
        with pytest.raises(MCPError) as missing:
            await c.read_resource("flock://agents/ghost")
        assert missing.value.error.code == -32002

        # Only resources that exist can be subscribed (an unknown agent is -32002).
        with pytest.raises(MCPError) as unknown:
            await c.subscribe_resource("flock://agents/analyst-2")
        assert unknown.value.error.code == -32002
        second = await flock.system.spawn(Analyst, "analyst-2")
        await wait_for(lambda: flock.flock is not None and flock.flock.get_agent("analyst-2") is not None)
        await c.subscribe_resource("flock://agents")
        await c.subscribe_resource("flock://agents/analyst-2")
        await second.stop()
        await wait_for(lambda: {"flock://agents", "flock://agents/analyst-2"} <= set(updates))
        await c.unsubscribe_resource("flock://agents")
        await c.unsubscribe_resource("flock://agents/analyst-2")
        await c.subscribe_resource("flock://tree")
        updates.clear()
        await flock.system.spawn(Analyst, "analyst-3")
        await wait_for(lambda: "flock://tree" in updates)
        assert "flock://agents" not in updates


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_progress_notifications_when_a_token_is_sent(flock: Flock, transport: str) -> None:
    assert flock.gateway_url is not None
    progress: list[tuple[float, float | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total))

    async with client(flock.gateway_url, transport=transport) as c:
        await c.list_tools()
        result = await c.call_tool(
            "request_capability",
            {"capability": "text-analysis", "parameters": {"text": "one"}},
            progress_callback=on_progress,
        )
        assert structured(result)["result"] == {"words": 1}
    assert progress[0] == (0, None)
    assert progress[-1][0] == progress[-1][1] and progress[-1][0] >= 1
    values = [value for value, _ in progress]
    assert values == sorted(set(values))  # strictly increasing, as the spec requires


class Reporter(flockrt.Agent):
    """Reports its progress twice while it works, as the Claude agent does while it streams."""

    @flockrt.capability("reporting")
    async def work(self) -> str:
        self.report_progress(1, 2, "half way")
        await asyncio.sleep(0)  # an await between the reports: a runner Task, not inline
        self.report_progress(2, 2, "all there")
        return "finished"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_agents_own_progress_reaches_the_caller(flock: Flock, transport: str) -> None:
    assert flock.gateway_url is not None
    await flock.system.spawn(Reporter, "reporter-1")
    messages: list[str | None] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        messages.append(message)

    async with client(flock.gateway_url, transport=transport) as c:
        result = await c.call_tool(
            "request_capability", {"capability": "reporting"}, progress_callback=on_progress
        )
        assert structured(result)["result"] == "finished"
        assert structured(result)["agentId"] == "reporter-1"
    reported = [message for message in messages if message in ("half way", "all there")]
    assert messages[0] == "started"
    assert messages[-1] == "done"
    assert reported == ["half way", "all there"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancellation_stops_the_named_work(flock: Flock, transport: str) -> None:
    assert flock.gateway_url is not None
    Slow.started, Slow.cancelled = asyncio.Event(), asyncio.Event()
    await flock.system.spawn(Slow, "slow-1")
    async with client(flock.gateway_url, transport=transport) as c:
        await c.list_tools()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(c.call_tool, "request_capability", {"capability": "slow"})
            await asyncio.wait_for(Slow.started.wait(), 5)
            tasks.cancel_scope.cancel()
        await asyncio.wait_for(Slow.cancelled.wait(), 5)
        # The session is still usable.
        result = await c.call_tool("list_agents", {})
        assert not result.is_error


async def test_gateway_url_health_readiness_and_metrics(flock: Flock) -> None:
    import aiohttp

    assert flock.gateway_url is not None and flock.metrics_url is not None
    base = flock.gateway_url.removesuffix("/mcp")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 200
        async with http.get(flock.metrics_url) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
        async with http.get(f"{base}/mcp", headers={"Accept": "application/json"}) as response:
            assert response.status == 406


def test_sdk_agent_class_is_public() -> None:
    assert issubclass(Analyst, flockrt.Agent)
