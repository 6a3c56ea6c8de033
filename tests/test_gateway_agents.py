"""Outside agents: connections that announce themselves become agents of the flock, in one
process and across two flockrt processes over NATS."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from flockrt.bus.embedded import EmbeddedNats
from flockrt.config import ENV_OVERRIDES, AuthConfig
from flockrt.errors import FlockError
from flockrt.runtime import Flock
from tests.conftest import wait_for
from tests.mcp_support import Analyst, RawPeer, RpcError, gateway_flock_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def flock() -> AsyncIterator[Flock]:
    async with Flock(gateway_flock_config()) as running:
        await running.system.spawn(Analyst, "analyst-1", name="analyst-1")
        yield running


async def answer_next(peer: RawPeer, reply: Any) -> dict[str, Any]:
    """Wait for the next message pushed to ``peer``'s agent and answer it with ``reply``."""
    message = await peer.next("notifications/flock/message")
    result = await peer.call(
        "send_response", {"to": message["from"], "response": reply, "correlationId": message["correlationId"]}
    )
    assert result["structuredContent"] == {"delivered": True}
    return message


def status(flock: Flock, agent_id: str) -> str | None:
    assert flock.flock is not None
    info = flock.flock.get_agent(agent_id)
    return None if info is None else info.status


async def test_two_outside_agents_talk_to_each_other_and_to_in_process_agents(flock: Flock) -> None:
    assert flock.gateway_url is not None and flock.flock is not None
    async with RawPeer.connect(flock.gateway_url) as alpha, RawPeer.connect(flock.gateway_url) as beta:
        result = await alpha.call(
            "announce_agent", {"id": "alpha", "name": "Alpha", "capabilities": ["translate"]}
        )
        assert result["structuredContent"] == {"agentId": "alpha", "announced": True}
        await beta.call("announce_agent", {"id": "beta", "capabilities": []})
        assert status(flock, "alpha") == "online" and status(flock, "beta") == "online"
        assert flock.flock.get_agent("alpha").name == "Alpha"  # type: ignore[union-attr]

        # beta queries alpha; alpha answers with send_response.
        query = asyncio.ensure_future(
            beta.call("send_message", {"to": "alpha", "message": "ping?", "type": "query"})
        )
        pushed = await answer_next(alpha, {"pong": True})
        assert pushed["from"] == "beta" and pushed["to"] == "alpha" and pushed["type"] == "query"
        assert pushed["message"] == "ping?"
        assert (await query)["structuredContent"]["response"] == {"pong": True}

        # beta asks for alpha's capability.
        request = asyncio.ensure_future(
            beta.call("request_capability", {"capability": "translate", "parameters": {"text": "hallo"}})
        )
        pushed = await answer_next(alpha, "hello")
        assert pushed["type"] == "capability_request"
        assert pushed["message"] == {"capability": "translate", "parameters": {"text": "hallo"}}
        assert (await request)["structuredContent"]["result"] == "hello"

        # alpha's handler fails: it says so, and the requests fail at once (not at their timeout).
        for tool, arguments in (
            ("request_capability", {"capability": "translate", "parameters": "x", "timeout": 60000}),
            ("send_message", {"to": "alpha", "message": "q", "type": "query", "timeout": 60000}),
        ):
            failing = asyncio.ensure_future(beta.call(tool, arguments))
            pushed = await alpha.next("notifications/flock/message")
            answer = {"to": pushed["from"], "correlationId": pushed["correlationId"], "error": "boom"}
            assert (await alpha.call("send_response", answer))["structuredContent"] == {"delivered": True}
            result = await asyncio.wait_for(failing, 5)
            assert result["isError"] and result["structuredContent"]["error"] == "failed"
            assert "boom" in result["structuredContent"]["message"]
        assert status(flock, "alpha") == "online"  # a failed answer does not fail the agent

        # A command from alpha to beta arrives as it was sent, from alpha.
        await alpha.call("send_message", {"to": "beta", "message": {"do": "it"}, "metadata": {"k": 1}})
        command = await beta.next("notifications/flock/message")
        assert (command["from"], command["type"], command["message"]) == ("alpha", "command", {"do": "it"})
        assert command["metadata"] == {"k": 1}

        # An in-process agent answers alpha's query; an in-process caller queries alpha.
        answer = await alpha.call("send_message", {"to": "analyst-1", "message": "hi", "type": "query"})
        assert answer["structuredContent"]["response"] == {"echo": "hi", "from": "alpha"}
        from_flock = asyncio.ensure_future(
            flock.flock.send_message("alpha", "status?", type="query", timeout=5)
        )
        await answer_next(alpha, "fine")
        assert await from_flock == "fine"
        capability = asyncio.ensure_future(
            flock.flock.request_capability("translate", {"text": "x"}, timeout=5)
        )
        await answer_next(alpha, "y")
        assert await capability == "y"

        # A broadcast reaches both outside agents.
        await beta.call("broadcast", {"type": "news", "message": "all hands"})
        for peer in (alpha, beta):
            assert await peer.next("notifications/flock/broadcast") == {
                "type": "news",
                "message": "all hands",
                "data": None,
            }

        # An agent may act only as itself: it cannot answer what was sent to another agent.
        query = asyncio.ensure_future(
            beta.call("send_message", {"to": "alpha", "message": "q", "type": "query"})
        )
        pushed = await alpha.next("notifications/flock/message")
        stolen = await beta.call(
            "send_response", {"to": "beta", "response": "forged", "correlationId": pushed["correlationId"]}
        )
        assert stolen["isError"] and stolen["structuredContent"]["error"] == "failed"
        await alpha.call(
            "send_response", {"to": "beta", "response": "real", "correlationId": pushed["correlationId"]}
        )
        assert (await query)["structuredContent"]["response"] == "real"

        # One connection is one agent.
        other = await alpha.call("announce_agent", {"id": "gamma", "capabilities": []})
        assert other["isError"] and other["structuredContent"]["error"] == "forbidden"
        taken = await beta.call("announce_agent", {"id": "analyst-1"})
        assert taken["isError"]

    # Both connections closed: both agents are offline, and messages to them fail cleanly.
    await wait_for(lambda: status(flock, "alpha") == "offline" and status(flock, "beta") == "offline")
    async with RawPeer.connect(flock.gateway_url) as late:
        result = await late.call("send_message", {"to": "alpha", "message": "anyone?"})
        assert result["isError"] and result["structuredContent"]["error"] == "unknown_agent"


async def test_a_query_pending_when_the_outside_agent_disconnects_fails_at_once(flock: Flock) -> None:
    assert flock.gateway_url is not None and flock.flock is not None
    async with RawPeer.connect(flock.gateway_url) as alpha:
        await alpha.call("announce_agent", {"id": "alpha"})
        query = asyncio.ensure_future(flock.flock.send_message("alpha", "q", type="query", timeout=30))
        await alpha.next("notifications/flock/message")
    started = time.monotonic()
    with pytest.raises(FlockError) as failed:
        await query
    assert "disconnected" in str(failed.value.__cause__ or failed.value)
    assert time.monotonic() - started < 5


async def test_a_jwt_binds_the_connection_to_its_agent_and_capabilities() -> None:
    secret = "a-test-secret-of-at-least-32-bytes!"
    config = gateway_flock_config(auth=AuthConfig(jwt_secret=secret))

    def token(**claims: Any) -> dict[str, str]:
        body = {"exp": int(time.time()) + 60, **claims}
        return {"Authorization": f"Bearer {jwt.encode(body, secret, algorithm='HS256')}"}

    async with Flock(config) as flock:
        assert flock.gateway_url is not None
        headers = token(agentId="alpha", capabilities=["translate"])
        async with RawPeer.connect(flock.gateway_url, headers=headers) as peer:
            with pytest.raises(RpcError) as forbidden:
                await peer.call("announce_agent", {"id": "beta"})
            assert forbidden.value.code == -32003 and forbidden.value.error["data"] == {"status": 403}
            with pytest.raises(RpcError) as beyond:
                await peer.call("announce_agent", {"id": "alpha", "capabilities": ["translate", "admin"]})
            assert beyond.value.code == -32003 and "admin" in beyond.value.error["message"]
            ok = await peer.call("announce_agent", {"id": "alpha", "capabilities": ["translate"]})
            assert ok["structuredContent"]["announced"] is True


def gateway_node_config(tmp_path: Path, nats_url: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f'[runtime]\nname = "node-b"\n[nats]\nurl = "{nats_url}"\nheartbeat_interval = 60000\n'
        "[mcp]\nport = 0\n"
        '[[agents]]\nid = "remote-analyst"\nclass = "tests.mcp_support:Analyst"\n'
    )
    return path


async def test_outside_agents_on_two_processes_talk_over_nats(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flockrt.cli",
        "run",
        str(gateway_node_config(tmp_path, nats_server.url)),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES},
    )
    try:
        remote_url = await read_gateway_url(proc)
        async with Flock(gateway_flock_config(nats_url=nats_server.url, node="node-a")) as flock:
            assert flock.gateway_url is not None and flock.flock is not None
            await flock.system.spawn(Analyst, "local-analyst")
            async with RawPeer.connect(flock.gateway_url) as alpha, RawPeer.connect(remote_url) as beta:
                await alpha.call("announce_agent", {"id": "alpha", "capabilities": ["translate"]})
                await beta.call("announce_agent", {"id": "beta", "capabilities": ["summarize"]})
                # Each process learns of the other's outside agent from its announcement.
                await wait_for(lambda: status(flock, "beta") == "online")
                listed = await beta.call("list_agents", {"capability": "translate"})
                assert [a["id"] for a in listed["structuredContent"]["agents"]] == ["alpha"]

                query = asyncio.ensure_future(
                    beta.call(
                        "send_message",
                        {"to": "alpha", "message": "hi", "type": "query", "metadata": {"m": 2}},
                    )
                )
                pushed = await answer_next(alpha, "hi back")
                assert pushed["from"] == "beta" and pushed["metadata"] == {"m": 2}
                assert (await query)["structuredContent"]["response"] == "hi back"

                request = asyncio.ensure_future(
                    alpha.call("request_capability", {"capability": "summarize", "parameters": "long text"})
                )
                pushed = await answer_next(beta, "short")
                assert pushed["message"] == {"capability": "summarize", "parameters": "long text"}
                assert (await request)["structuredContent"]["result"] == "short"

                # A failed answer crosses the processes as a failure, not as a null answer.
                failing = asyncio.ensure_future(
                    beta.call("send_message", {"to": "alpha", "message": "q", "type": "query"})
                )
                pushed = await alpha.next("notifications/flock/message")
                error = {"to": pushed["from"], "correlationId": pushed["correlationId"], "error": "boom"}
                await alpha.call("send_response", error)
                result = await failing
                assert result["isError"] and "boom" in result["structuredContent"]["message"]

                # Outside agents reach in-process agents of the other process.
                answer = await beta.call(
                    "send_message", {"to": "local-analyst", "message": "x", "type": "query"}
                )
                assert answer["structuredContent"]["response"] == {"echo": "x", "from": "beta"}
                answer = await alpha.call(
                    "request_capability", {"capability": "text-analysis", "parameters": {"text": "a b"}}
                )
                assert answer["structuredContent"]["result"] == {"words": 2}

            # alpha's connection closed: the other process hears it went offline.
            await wait_for(lambda: status(flock, "beta") == "offline", timeout=10)
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 20)


async def read_gateway_url(proc: asyncio.subprocess.Process, timeout: float = 20) -> str:
    assert proc.stderr is not None
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            line = (await proc.stderr.readline()).decode()
            if not line:
                raise AssertionError("the node ended before its gateway listened:\n" + "".join(seen))
            seen.append(line)
            if match := re.search(r"MCP gateway listening on (http://\S+)", line):
                return match.group(1)


async def test_an_agent_can_be_given_capabilities_at_run_time() -> None:
    import flockrt

    class Blank(flockrt.Agent):
        def __init__(self, agent_id: str, extra: tuple[str, ...] = ()) -> None:
            super().__init__(agent_id)
            for name in extra:
                self.add_capability(name, functools.partial(self.shout, name))

        async def shout(self, name: str, text: str) -> str:
            return f"{name}: {text.upper()}"

    async with flockrt.ActorSystem("dyn") as system:
        flock = flockrt.LocalFlock(system)
        await system.spawn(Blank, "loud", ("shout",))
        await system.spawn(Blank, "quiet")
        assert await flock.request_capability("shout", {"text": "hi"}, timeout=5) == "shout: HI"
        assert [a.id for a in flock.list_agents(capability="shout")] == ["loud"]
        assert flock.get_agent("quiet").capabilities == ()  # type: ignore[union-attr]
        with pytest.raises(ValueError, match="NATS subject"):
            Blank("bad", ("no spaces allowed",))


async def test_an_outside_agent_over_streamable_http_gets_its_messages_on_the_server_stream(
    flock: Flock,
) -> None:
    import json

    url = flock.gateway_url
    assert url is not None and flock.flock is not None
    init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "h", "version": "0"}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as http:
        body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}
        async with http.post(url, json=body) as response:
            session = {"Mcp-Session-Id": response.headers["Mcp-Session-Id"]}
        call = {"name": "announce_agent", "arguments": {"id": "http-agent", "capabilities": ["sum"]}}
        async with http.post(
            url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call}, headers=session
        ) as response:
            assert (await response.json())["result"]["structuredContent"]["announced"] is True
        async with http.get(url, headers={**session, "Accept": "text/event-stream"}) as stream:
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            request = asyncio.ensure_future(flock.flock.request_capability("sum", [1, 2], timeout=5))
            data: dict[str, Any] = {"method": "notifications/tools/list_changed"}
            while data["method"] == "notifications/tools/list_changed":  # its own "sum" is a new tool
                event = b""
                while not event.endswith(b"\n\n"):
                    event += await asyncio.wait_for(stream.content.readline(), 5)
                data = json.loads(event.split(b"data: ", 1)[1])
            assert data["method"] == "notifications/flock/message"
            pushed = data["params"]
            assert pushed["message"] == {"capability": "sum", "parameters": [1, 2]}
            answer = {"to": pushed["from"], "response": 3, "correlationId": pushed["correlationId"]}
            call = {"name": "send_response", "arguments": answer}
            async with http.post(
                url, json={"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": call}, headers=session
            ) as response:
                assert response.status == 200
            assert await request == 3
        async with http.delete(url, headers=session) as response:
            assert response.status == 200
    await wait_for(lambda: status(flock, "http-agent") == "offline")


async def test_a_long_call_reports_progress_while_it_waits(flock: Flock) -> None:
    assert flock.gateway_url is not None and flock.gateway is not None
    flock.gateway.progress_interval = 0.01
    async with RawPeer.connect(flock.gateway_url) as worker, RawPeer.connect(flock.gateway_url) as caller:
        await worker.call("announce_agent", {"id": "worker", "capabilities": ["think"]})
        params = {
            "name": "request_capability",
            "arguments": {"capability": "think"},
            "_meta": {"progressToken": "t1"},
        }
        call = asyncio.ensure_future(caller.request("tools/call", params))
        pushed = await worker.next("notifications/flock/message")
        started = await caller.next("notifications/progress")
        assert (started["progressToken"], started["progress"]) == ("t1", 0)
        waiting = await caller.next("notifications/progress")
        assert waiting["progress"] == 1 and waiting["message"].startswith("waiting")
        await worker.call(
            "send_response", {"to": "flock", "response": "42", "correlationId": pushed["correlationId"]}
        )
        response = await call
        assert response["result"]["structuredContent"]["result"] == "42"
        last = None
        while not caller.queue("notifications/progress").empty():
            last = caller.queue("notifications/progress").get_nowait()
        assert last is not None and last["message"] == "done" and last["progress"] == last["total"]


async def test_two_connections_announcing_one_id_at_once_get_one_agent(flock: Flock) -> None:
    assert flock.gateway_url is not None
    async with RawPeer.connect(flock.gateway_url) as one, RawPeer.connect(flock.gateway_url) as two:
        results = await asyncio.gather(
            one.call("announce_agent", {"id": "twin"}), two.call("announce_agent", {"id": "twin"})
        )
        assert sorted(bool(r["isError"]) for r in results) == [False, True]
    async with RawPeer.connect(flock.gateway_url) as again:
        await wait_for(lambda: status(flock, "twin") == "offline")
        assert not (await again.call("announce_agent", {"id": "twin"}))["isError"]  # free again


@pytest.fixture
def held_start(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """Outside agents' setup waits for the test: (started, release)."""
    from flockrt.mcp.agent import OutsideAgent

    started, release = asyncio.Event(), asyncio.Event()
    setup = OutsideAgent.setup

    async def held(self: OutsideAgent) -> None:
        started.set()
        await release.wait()
        await setup(self)

    monkeypatch.setattr(OutsideAgent, "setup", held)
    return started, release


def the_session(flock: Flock) -> Any:
    assert flock.gateway is not None
    (session,) = flock.gateway.sessions.values()
    return session


async def test_an_announcement_cancelled_while_its_agent_starts_leaves_no_agent_online(
    flock: Flock, held_start: tuple[asyncio.Event, asyncio.Event]
) -> None:
    assert flock.gateway_url is not None and flock.gateway is not None
    started, release = held_start
    async with RawPeer.connect(flock.gateway_url) as peer:
        announce = asyncio.ensure_future(peer.call("announce_agent", {"id": "orphan"}))
        await asyncio.wait_for(started.wait(), 5)
        (task,) = the_session(flock).inflight.values()
        await peer.notify("notifications/cancelled", {"requestId": 2})
        await wait_for(lambda: task.cancelling() > 0)
        release.set()
        await wait_for(lambda: task.done())
        await wait_for(lambda: status(flock, "orphan") in (None, "offline"))
        assert "orphan" not in flock.gateway.claimed and the_session(flock).agent_id is None
        announce.cancel()
        # The id is free again, for this very connection.
        assert not (await peer.call("announce_agent", {"id": "orphan"}))["isError"]
        assert status(flock, "orphan") == "online"


async def test_a_connection_closed_while_its_agent_starts_leaves_no_agent_online(
    flock: Flock, held_start: tuple[asyncio.Event, asyncio.Event]
) -> None:
    assert flock.gateway_url is not None and flock.gateway is not None
    started, release = held_start
    async with RawPeer.connect(flock.gateway_url) as peer:
        await peer.send_raw(
            '{"jsonrpc": "2.0", "id": 9, "method": "tools/call",'
            ' "params": {"name": "announce_agent", "arguments": {"id": "ghost"}}}'
        )
        await asyncio.wait_for(started.wait(), 5)
        session = the_session(flock)
    await wait_for(lambda: session.closed)
    release.set()
    await wait_for(lambda: not flock.gateway.sessions and not session.inflight)
    await wait_for(lambda: status(flock, "ghost") in (None, "offline"))
    assert not flock.gateway.claimed
    assert flock.gateway.supervisor.is_alive
    async with RawPeer.connect(flock.gateway_url) as again:
        assert not (await again.call("announce_agent", {"id": "ghost"}))["isError"]


async def test_queries_to_an_outside_agent_do_not_wait_for_each_other(flock: Flock) -> None:
    """An unanswered query holds up neither the next query nor other messages (heartbeats go
    through the same mailbox), and each push has its own id to answer with, even when the
    askers share one tracing correlation id."""
    from flockrt.actors.correlation import correlation

    assert flock.gateway_url is not None and flock.flock is not None
    async with RawPeer.connect(flock.gateway_url) as x:
        await x.call("announce_agent", {"id": "x"})
        with correlation("one-trace"):
            first = asyncio.ensure_future(flock.flock.send_message("x", "q1", type="query", timeout=30))
            second = asyncio.ensure_future(flock.flock.send_message("x", "q2", type="query", timeout=30))
            one = await x.next("notifications/flock/message")
            two = await x.next("notifications/flock/message")
        assert (one["message"], two["message"]) == ("q1", "q2")
        assert one["correlationId"] != two["correlationId"]
        assert "one-trace" not in (one["correlationId"], two["correlationId"])
        await flock.flock.send_message("x", "news", type="command")
        assert (await x.next("notifications/flock/message"))["message"] == "news"
        for message, reply in ((two, "a2"), (one, "a1")):  # answered out of order
            result = await x.call(
                "send_response",
                {"to": message["from"], "response": reply, "correlationId": message["correlationId"]},
            )
            assert result["structuredContent"] == {"delivered": True}
        assert (await first, await second) == ("a1", "a2")


async def test_a_query_the_asker_gave_up_on_is_forgotten(flock: Flock) -> None:
    assert flock.gateway_url is not None and flock.flock is not None
    async with RawPeer.connect(flock.gateway_url) as x:
        await x.call("announce_agent", {"id": "x"})
        agent = the_session(flock).agent
        with pytest.raises(FlockError):
            await flock.flock.send_message("x", "q", type="query", timeout=0.2)
        pushed = await x.next("notifications/flock/message")
        await wait_for(lambda: not agent._answering and not agent._pending)
        late = await x.call(
            "send_response", {"to": pushed["from"], "response": 1, "correlationId": pushed["correlationId"]}
        )
        assert late["isError"]
        assert status(flock, "x") == "online"
