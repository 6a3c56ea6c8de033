"""The AI Flock seed's own client code, unchanged, against flockrt (issue 13).

Each test writes what the seed writes: raw JSON published by a plain nats-py client (its
MessageBatcher, its agents that answer only on ``task.result``, its events), and over MCP the
argument shapes its TypeScript client sends, on its address without a path.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import nats
import pytest
from nats.aio.msg import Msg

from examples.messages_api import MessagesApiStandIn
from flockrt.bus.embedded import EmbeddedNats
from flockrt.config import (
    AgentConfig,
    AuthConfig,
    ClaudeConfig,
    FlockConfig,
    McpConfig,
    NatsConfig,
    RuntimeConfig,
)
from flockrt.runtime import Flock
from flockrt.wire.schema import TaskResult
from tests.mcp_support import RawPeer, RpcError
from tests.nats_server import Results

KEY = "sk-test-key"


def flock_config(
    name: str, url: str, *agents: tuple[str, str], gateway: bool = False, claude: ClaudeConfig | None = None
) -> FlockConfig:
    return FlockConfig(
        runtime=RuntimeConfig(name=name, shutdown_timeout=5.0),
        nats=NatsConfig(url=url),
        mcp=McpConfig(port=0, auth=AuthConfig()) if gateway else None,
        claude=claude or ClaudeConfig(),
        agents=[AgentConfig(id=agent_id, class_=cls) for agent_id, cls in agents],
    )


@pytest.fixture
def seed(plain_nats: tuple[nats.NATS, Results]) -> tuple[nats.NATS, Results]:
    return plain_nats


@pytest.fixture
async def api() -> AsyncIterator[MessagesApiStandIn]:
    async with MessagesApiStandIn(
        lambda request: f"Claude says: {request['messages'][-1]['content']}"
    ) as server:
        yield server


async def test_a_bare_array_of_tasks_on_batch_messages_is_processed(
    nats_server: EmbeddedNats, seed: tuple[nats.NATS, Results]
) -> None:
    connection, results = seed
    async with Flock(flock_config("workers", nats_server.url, ("text-1", "text"), ("echo", "echo"))):
        # The seed's MessageBatcher: JSON.stringify(tasks), the tasks themselves, no subjects.
        tasks = [
            {
                "id": f"b-{i}",
                "type": "analysis" if i % 2 else "general",
                "data": f"word {i}",
                "priority": "low",
            }
            for i in range(12)
        ]
        await connection.publish("batch.messages", json.dumps(tasks).encode())
        seen = {}
        for _ in range(12):
            result = await results.next()
            seen[result["taskId"]] = result
    assert sorted(seen) == sorted(task["id"] for task in tasks)
    assert all(result["status"] == "ok" for result in seen.values())
    assert seen["b-1"]["processedBy"] == "text-1" and seen["b-1"]["result"]["words"] == 2
    assert (seen["b-2"]["processedBy"], seen["b-2"]["result"]) == ("echo", "word 2")


async def test_a_bare_array_is_answered_for_a_batch_request_and_bad_types_are_refused(
    nats_server: EmbeddedNats, seed: tuple[nats.NATS, Results]
) -> None:
    connection, _ = seed
    async with Flock(flock_config("workers", nats_server.url, ("echo", "echo"))):
        tasks = [
            {"id": "r-1", "type": "general", "data": "a"},
            {"id": "r-2", "type": "bad.type", "data": "b"},
        ]
        reply = await connection.request("batch.messages", json.dumps(tasks).encode(), timeout=10)
    answers = json.loads(reply.data)
    assert (answers[0]["taskId"], answers[0]["status"], answers[0]["result"]) == ("r-1", "ok", "a")
    assert answers[1]["status"] == "error" and "refused" in answers[1]["error"]


async def test_a_claude_task_is_served_like_ai_with_camel_case_parameters(
    nats_server: EmbeddedNats, api: MessagesApiStandIn, seed: tuple[nats.NATS, Results]
) -> None:
    connection, results = seed
    claude = ClaudeConfig(api_key=KEY, base_url=api.base_url, model="claude-test")
    async with (
        Flock(flock_config("workers", nats_server.url, ("ai", "ai"))),
        Flock(flock_config("claude-node", nats_server.url, ("claude", "claude"), claude=claude)),
    ):
        task = {"id": "c-1", "type": "claude", "data": {"prompt": "hi", "maxTokens": 64}}
        await connection.publish("tasks.claude", json.dumps(task).encode())
        result = await results.next()
        assert (result["taskId"], result["status"], result["processedBy"]) == ("c-1", "ok", "ai")
        assert result["result"]["text"] == "Claude says: hi"
        assert api.requests[-1]["max_tokens"] == 64
        # On tasks.claude as a request, the answer comes back too.
        asked = {"id": "c-2", "type": "claude", "data": "again"}
        reply = await connection.request("tasks.claude", json.dumps(asked).encode(), timeout=10)
        assert json.loads(reply.data)["result"]["text"] == "Claude says: again"

        # claude-ai with the wire's camelCase (and the docs' snake_case), and a model of its own.
        for parameters in (
            {"prompt": "p", "maxTokens": 32, "model": "claude-other"},
            {"prompt": "p", "max_tokens": 33},
        ):
            request = {"capability": "claude-ai", "parameters": parameters}
            reply = await connection.request("capability.claude-ai", json.dumps(request).encode(), timeout=10)
            answer = json.loads(reply.data)
            assert answer["error"] is None, answer
            assert answer["result"]["text"] == "Claude says: p"
        assert [(r["max_tokens"], r["model"]) for r in api.requests[-2:]] == [
            (32, "claude-other"),
            (33, "claude-test"),
        ]
        # The seed's text-analysis: {text, useClaude, model}, answered by the Claude agent.
        request = {
            "capability": "text-analysis",
            "parameters": {"text": "a b", "useClaude": True, "model": "m-2"},
        }
        reply = await connection.request("capability.text-analysis", json.dumps(request).encode(), timeout=10)
        answer = json.loads(reply.data)
        assert answer["error"] is None and answer["result"]["words"] == 2, answer
        assert api.requests[-1]["model"] == "m-2"


async def test_the_seeds_mcp_client_shapes_on_its_address_without_a_path(nats_server: EmbeddedNats) -> None:
    async with Flock(flock_config("gw", nats_server.url, ("text-1", "text"), gateway=True)) as flock:
        assert flock.gateway_url is not None
        root = flock.gateway_url.removesuffix("/mcp") + "/"
        async with aiohttp.ClientSession() as http, http.get(root) as plain:
            assert plain.status == 200  # not MCP without an upgrade: the live view's page
            assert plain.content_type == "text/html"
        async with RawPeer.connect(root) as alpha, RawPeer.connect(root) as beta:
            # requestCapability('text-analysis', {text, useClaude, model}), answered by TextAgent.
            result = await beta.call(
                "request_capability",
                {
                    "capability": "text-analysis",
                    "parameters": {"text": "x y z", "useClaude": False, "model": "m"},
                },
            )
            assert not result.get("isError") and result["structuredContent"]["result"]["words"] == 3
            # announceAgent({..., timestamp}) and agentId wherever an agent id is taken.
            stamp = "2026-12-07T13:00:00.000Z"
            announced = await alpha.call(
                "announce_agent", {"id": "alpha", "name": "Alpha", "capabilities": ["t"], "timestamp": stamp}
            )
            assert announced["structuredContent"] == {"agentId": "alpha", "announced": True}
            await beta.call("announce_agent", {"agentId": "beta", "capabilities": [], "timestamp": 1.5e12})
            for arguments in ({"agentId": "alpha"}, {"agent_id": "alpha"}):
                info = await beta.call("get_agent_info", arguments)
                assert info["structuredContent"]["agent"]["name"] == "Alpha"
            with pytest.raises(RpcError) as missing:
                await beta.call("get_agent_info", {})
            assert missing.value.code == -32602 and "agentId is required" in str(missing.value)
            # sendResponse(from, response, metadata): the correlation id in metadata.
            query = asyncio.ensure_future(
                beta.call("send_message", {"to": "alpha", "message": "?", "type": "query"})
            )
            pushed = await alpha.next("notifications/flock/message")
            sent = await alpha.call(
                "send_response",
                {
                    "from": "alpha",
                    "response": {"ok": 1},
                    "metadata": {"correlationId": pushed["correlationId"]},
                },
            )
            assert sent["structuredContent"] == {"delivered": True}
            assert (await query)["structuredContent"]["response"] == {"ok": 1}
            with pytest.raises(RpcError) as uncorrelated:
                await alpha.call("send_response", {"from": "alpha", "response": 1, "metadata": {}})
            assert uncorrelated.value.code == -32602 and "correlationId" in str(uncorrelated.value)


async def test_an_outside_agent_receives_its_events(
    nats_server: EmbeddedNats, seed: tuple[nats.NATS, Results]
) -> None:
    connection, _ = seed
    async with Flock(flock_config("gw", nats_server.url, gateway=True)) as flock:
        assert flock.gateway_url is not None and flock.flock is not None
        async with RawPeer.connect(flock.gateway_url) as alpha:
            await alpha.call("announce_agent", {"id": "alpha", "capabilities": []})
            await flock.flock.flush()
            event = {"type": "config_update", "data": {"temperature": 0.2}}
            await connection.publish("agent.alpha.events", json.dumps(event).encode())
            pushed = await alpha.next("notifications/flock/event")
    assert pushed == {"type": "config_update", "data": {"temperature": 0.2}, "to": "alpha"}


async def seed_agent(connection: nats.NATS, task_type: str) -> None:
    """An AI Flock seed agent: takes tasks in their queue group, publishes only on task.result."""

    async def handle(msg: Msg) -> None:
        task = json.loads(msg.data)
        status = "error" if task["data"] == "fail" else "ok"
        result = {
            "taskId": task["id"],
            "result": {"done": task["data"]},
            "processedBy": "seed-1",
            "status": status,
        }
        if status == "error":
            result["error"] = "it failed"
        await connection.publish("task.result", json.dumps(result).encode())

    await connection.subscribe(f"tasks.{task_type}", queue=f"tasks.{task_type}", cb=handle)
    await connection.flush()


async def test_submit_and_wait_takes_a_result_on_task_result(
    nats_server: EmbeddedNats, seed: tuple[nats.NATS, Results]
) -> None:
    connection, _ = seed
    await seed_agent(connection, "seedwork")
    async with Flock(flock_config("gw", nats_server.url, gateway=True)) as flock:
        assert flock.flock is not None and flock.gateway_url is not None
        result = await flock.flock.submit("seedwork", "x", wait=True, timeout=5)
        assert isinstance(result, TaskResult)
        assert (result.status, result.result, result.processed_by) == ("ok", {"done": "x"}, "seed-1")
        failed = await flock.flock.submit("seedwork", "fail", wait=True, timeout=5)
        assert isinstance(failed, TaskResult) and (failed.status, failed.error) == ("error", "it failed")
        async with RawPeer.connect(flock.gateway_url) as peer:
            called = await peer.call(
                "submit_task", {"type": "seedwork", "data": "y", "wait": True, "timeout": 5000}
            )
        assert called["structuredContent"]["result"]["result"] == {"done": "y"}
