"""Every capability of the flock as an MCP tool of its own, driven by the official SDK client over
both transports: its schema and description, its calls (arguments checked first, routed like
request_capability), ``notifications/tools/list_changed`` when an agent starts in another process,
and schemas a generic client reads (no ``anyOf`` with null) for the flock's own tools too."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import mcp_types
import nats
import pytest
from mcp.shared.exceptions import MCPError

import flockrt
from flockrt.mcp.capabilities import PERMISSIVE, tool_name
from flockrt.mcp.tools import TOOLS
from flockrt.runtime import Flock
from tests.conftest import wait_for
from tests.mcp_support import RawPeer, client, gateway_flock_config, structured
from tests.nats_server import EmbeddedNats

TRANSPORTS = ["http", "websocket"]
ROOT = Path(__file__).resolve().parent.parent
MCP_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")


class Writer(flockrt.Agent):
    @flockrt.capability("summarize")
    async def summarize(
        self,
        text: str,
        max_words: int = 10,
        style: Literal["plain", "bullets"] = "plain",
        lang: str | None = None,
    ) -> dict[str, int]:
        """Summarize a text in at most max_words words."""
        return {"words": min(len(text.split()), max_words)}

    @flockrt.capability("text:stats")
    async def stats(self, text: str) -> int:
        """Count the characters of a text."""
        return len(text)

    @flockrt.capability("broadcast")
    async def shout(self, text):  # type: ignore[no-untyped-def]  # untyped on purpose
        return text.upper()


@pytest.fixture
async def flock() -> AsyncIterator[Flock]:
    async with Flock(gateway_flock_config()) as running:
        await running.system.spawn(Writer, "writer")
        yield running


def no_null_unions(schema: Any) -> bool:
    """Whether ``schema`` is free of ``anyOf: [X, {type: null}]`` anywhere."""
    if isinstance(schema, dict):
        options = schema.get("anyOf")
        if isinstance(options, list) and {"type": "null"} in options:
            return False
        return all(no_null_unions(value) for value in schema.values())
    if isinstance(schema, list):
        return all(no_null_unions(value) for value in schema)
    return True


def test_tool_names_are_valid_stable_and_collision_free() -> None:
    capabilities = ["summarize", "text:stats", "text_3a_stats", "broadcast", "ümlaut", "a" * 200, "a" * 201]
    names = [tool_name(capability) for capability in capabilities]
    assert names[0] == "summarize"
    assert names[1] == "cap.text.3a.stats"
    assert names[2] == "text_3a_stats"
    assert names[3] == "cap.broadcast"  # a flock tool's name is taken
    assert all(MCP_NAME.match(name) for name in names)
    assert len(set(names)) == len(names)
    assert names == [tool_name(capability) for capability in capabilities]  # stable
    assert not set(names) & set(TOOLS)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_tool_per_capability_with_its_schema_and_description(flock: Flock, transport: str) -> None:
    assert flock.gateway_url is not None
    async with client(flock.gateway_url, transport=transport) as c:
        init = c.session.initialize_result
        assert init is not None and init.capabilities.tools is not None
        assert init.capabilities.tools.list_changed is True
        listed = {tool.name: tool for tool in (await c.list_tools()).tools}
    assert set(listed) == {*TOOLS, "summarize", "cap.text.3a.stats", "cap.broadcast"}
    summarize = listed["summarize"]
    assert summarize.description == "Summarize a text in at most max_words words."
    assert summarize.input_schema == {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "max_words": {"type": "integer", "default": 10},
            "style": {"type": "string", "enum": ["bullets", "plain"], "default": "plain"},
            "lang": {"type": "string"},
        },
        "required": ["text"],
        "additionalProperties": False,
    }
    assert summarize.output_schema is not None
    ok = summarize.output_schema["anyOf"][0]
    assert ok["properties"]["result"] == {"type": "object", "additionalProperties": {"type": "integer"}}
    stats = listed["cap.text.3a.stats"]
    assert stats.title == "text:stats" and stats.description == "Count the characters of a text."
    assert stats.output_schema is not None and stats.output_schema["anyOf"][0]["properties"]["result"] == {
        "type": "integer"
    }
    untyped = listed["cap.broadcast"]  # no hints: any value of its one parameter, no outputSchema
    assert untyped.input_schema["properties"] == {"text": {}} and untyped.output_schema is None
    # Schemas generic clients read, the flock's own tools' too.
    for tool in listed.values():
        assert no_null_unions(tool.input_schema), tool.name
        assert no_null_unions(tool.output_schema), tool.name
    assert listed["request_capability"].input_schema["properties"]["parameters"]["type"] == "object"
    assert listed["send_message"].input_schema["properties"]["metadata"] == {"type": "object"}
    assert listed["send_message"].input_schema["properties"]["timeout"]["type"] == "integer"
    assert listed["submit_task"].input_schema["properties"]["data"] == {"type": "object"}
    assert listed["list_agents"].input_schema["properties"]["capability"] == {"type": "string"}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_calling_a_capability_tool_checks_its_arguments_then_returns_the_result(
    flock: Flock, transport: str
) -> None:
    assert flock.gateway_url is not None
    async with client(flock.gateway_url, transport=transport) as c:
        await c.list_tools()
        result = await c.call_tool("summarize", {"text": "a b c d", "max_words": 3})
        assert not result.is_error and structured(result) == {"result": {"words": 3}}
        result = await c.call_tool("cap.text.3a.stats", {"text": "hello"})
        assert structured(result) == {"result": 5}
        result = await c.call_tool("cap.broadcast", {"text": "hey"})
        assert structured(result) == {"result": "HEY"}

        async def refused(arguments: dict[str, Any]) -> tuple[str, Any]:
            with pytest.raises(MCPError) as error:
                await c.call_tool("summarize", arguments)
            assert error.value.error.code == -32602
            data = error.value.error.data
            return error.value.error.message, data["argument"] if isinstance(data, dict) else None

        assert await refused({}) == (
            "summarize: summarize needs parameter 'text' (it takes: text, max_words, style, lang)",
            "text",
        )
        assert await refused({"text": "a", "max_words": "3"}) == (
            "summarize: parameter 'max_words' of summarize must be an integer, not a string",
            "max_words",
        )
        assert await refused({"text": "a", "bogus": 1}) == (
            "summarize: summarize has no parameter 'bogus' (it takes: text, max_words, style, lang)",
            "bogus",
        )
        message, argument = await refused({"text": "a", "style": "loud"})
        assert argument == "style" and "must be one of 'bullets', 'plain'" in message
        with pytest.raises(MCPError) as unknown:
            await c.call_tool("no-such-capability", {})
        assert unknown.value.error.code == -32602


async def test_an_outside_agents_capability_is_a_permissive_tool(flock: Flock) -> None:
    assert flock.gateway_url is not None
    async with RawPeer.connect(flock.gateway_url) as agent, RawPeer.connect(flock.gateway_url) as host:
        await agent.call("announce_agent", {"id": "outsider", "capabilities": ["echo-it"]})
        changed = await host.next("notifications/tools/list_changed")
        assert changed in (None, {})
        listed = (await host.request("tools/list"))["result"]["tools"]
        entry = next(tool for tool in listed if tool["name"] == "echo-it")
        assert entry["inputSchema"] == PERMISSIVE and "outputSchema" not in entry
        call = asyncio.ensure_future(host.call("echo-it", {"anything": [1, 2]}))
        message = await agent.next("notifications/flock/message")
        assert message["message"]["parameters"] == {"anything": [1, 2]}
        await agent.call(
            "send_response",
            {"to": message["from"], "response": "echoed", "correlationId": message["correlationId"]},
        )
        assert (await call)["structuredContent"] == {"result": "echoed"}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_list_changed_when_an_agent_starts_in_another_process(
    nats_server: EmbeddedNats, transport: str
) -> None:
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, mcp_types.ToolListChangedNotification):
            changed.set()

    async with Flock(gateway_flock_config(nats_url=nats_server.url, node="node-a")) as flock:
        assert flock.gateway_url is not None
        async with client(flock.gateway_url, transport=transport, message_handler=on_message) as c:
            assert "text-analysis" not in {tool.name for tool in (await c.list_tools()).tools}
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.flock_node",
                nats_server.url,
                "node-b",
                "remote-worker",
                stdout=asyncio.subprocess.PIPE,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            try:
                assert proc.stdout is not None
                assert (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() == b"ready"
                await asyncio.wait_for(changed.wait(), 10)
                listed = {tool.name: tool for tool in (await c.list_tools()).tools}
                remote = listed["text-analysis"]  # its real schema, announced over NATS
                assert remote.input_schema == {
                    "type": "object",
                    "properties": {"text": {"type": "string"}},
                    "required": ["text"],
                    "additionalProperties": False,
                }
                with pytest.raises(MCPError) as invalid:
                    await c.call_tool("text-analysis", {"text": 5})
                assert invalid.value.error.code == -32602
                assert "parameter 'text' of text-analysis must be a string" in invalid.value.error.message
                result = await c.call_tool("text-analysis", {"text": "one two three"})
                assert structured(result) == {"result": {"words": 3}}

                changed.clear()
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 20)
                await asyncio.wait_for(changed.wait(), 10)  # it went away: the tool too
                await wait_for(lambda: flock.flock is not None and not flock.flock.list_agents("online"))
                assert "text-analysis" not in {tool.name for tool in (await c.list_tools()).tools}
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


async def test_announced_schemas_over_nats_from_new_and_older_peers(nats_server: EmbeddedNats) -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    described = {
        "id": "new-peer",
        "name": "new",
        "capabilities": ["lookup"],
        "capabilitySchemas": {
            "lookup": {"description": "Look a word up.", "inputSchema": schema, "outputSchema": None},
            "not-offered": {"description": "A schema of nothing the agent offers."},
        },
    }
    older = {"id": "old-peer", "name": "old", "capabilities": ["legacy"]}  # no capabilitySchemas
    async with Flock(gateway_flock_config(nats_url=nats_server.url, node="node-a")) as flock:
        assert flock.gateway_url is not None and flock.flock is not None
        async with RawPeer.connect(flock.gateway_url) as host:
            peer = await nats.connect(nats_server.url, allow_reconnect=False)
            try:
                for announcement in (described, older):
                    await peer.publish("agent.announce", json.dumps(announcement).encode())
                await peer.flush()
                await wait_for(lambda: len(flock.flock.list_agents("online")) == 2)  # type: ignore[union-attr]
            finally:
                await peer.close()
            info = flock.flock.directory.get("new-peer")
            assert info is not None and set(info.capability_schemas or {}) == {
                "lookup"
            }  # only what it offers
            await host.next("notifications/tools/list_changed")
            listed = {tool["name"]: tool for tool in (await host.request("tools/list"))["result"]["tools"]}
    assert set(listed) == {*TOOLS, "lookup", "legacy"}
    assert listed["lookup"]["inputSchema"] == schema
    assert listed["lookup"]["description"] == "Look a word up."
    assert listed["legacy"]["inputSchema"] == PERMISSIVE
