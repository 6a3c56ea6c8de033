"""FlockClient and the operator commands against a live gateway (the runtime's Flock with an
``[mcp]`` section on a free port, over a real nats-server): every operation, pushed messages and
handlers that answer, two outside agents talking, reconnection after the gateway restarts, the
breaker closing again, and the fallback to NATS when the gateway goes away."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest

from flockrt import (
    Broadcast,
    CircuitBreaker,
    CircuitOpen,
    DirectMessage,
    FlockClient,
    GatewayError,
    GatewayUnavailable,
    NoCapableAgent,
    NotAuthorized,
    TaskResult,
    UnknownAgent,
    WorkFailed,
)
from flockrt.breaker import BreakerState
from flockrt.bus.embedded import EmbeddedNats
from flockrt.cli import operate
from flockrt.flock.local import LocalFlock
from flockrt.runtime import Flock
from tests import client_support
from tests.client_support import agents_flock_config
from tests.conftest import wait_for
from tests.mcp_support import Slow


def agents_of(flock: Flock) -> LocalFlock:
    assert flock.flock is not None, "the flock is not started"
    return flock.flock


def gateway_url(flock: Flock) -> str:
    url = flock.gateway_url
    assert url is not None, "the flock runs no gateway"
    return url


@pytest.fixture
async def flock(nats_server: EmbeddedNats) -> AsyncIterator[Flock]:
    """A flock with a gateway on a free port: agents rec (a Recorder) and echo."""
    client_support.RECEIVED.clear()
    async with Flock(agents_flock_config(nats={"url": nats_server.url}, mcp={"port": 0})) as running:
        yield running


@pytest.fixture
async def client(flock: Flock) -> AsyncIterator[FlockClient]:
    async with FlockClient(gateway_url(flock), timeout=5) as connected:
        yield connected


async def test_the_handshake_and_every_query_operation(client: FlockClient) -> None:
    assert client.connected
    assert client.server_info["name"] == "flockrt"
    agents = {agent["id"]: agent for agent in await client.list_agents()}
    assert set(agents) == {"rec", "echo"}
    assert agents["rec"]["capabilities"] == ["upper", "explode"]
    assert agents["rec"]["status"] == "online"
    assert agents["rec"]["node"] == "test-flock"
    assert [a["id"] for a in await client.list_agents(capability="upper")] == ["rec"]
    assert await client.list_agents(status="offline") == []
    info = await client.get_agent_info("echo")
    assert (info["id"], info["capabilities"]) == ("echo", ["echo"])
    with pytest.raises(UnknownAgent, match="'nobody'"):
        await client.get_agent_info("nobody")
    tree = await client.get_supervision_tree()
    root = next(child for child in tree["children"] if child["name"] == "root")
    assert [child["id"] for child in root["children"]] == ["rec", "echo"]


async def test_capabilities_messages_tasks_and_their_failures(client: FlockClient) -> None:
    assert await client.request_capability("upper", {"text": "through the gateway"}) == "THROUGH THE GATEWAY"
    # Many calls in flight on one connection: each answer goes to its own caller.
    words = [f"word{i}" for i in range(50)]
    answers = await asyncio.gather(*(client.request_capability("upper", {"text": w}) for w in words))
    assert answers == [w.upper() for w in words]
    with pytest.raises(NoCapableAgent, match="no agent offers capability 'translate'"):
        await client.request_capability("translate", {"text": "x"})
    with pytest.raises(WorkFailed, match="exploding on purpose"):
        await client.request_capability("explode")
    answer = await client.send_message("rec", {"q": 1}, type="query")
    assert answer["got"] == {"q": 1}
    assert answer["from"].startswith("mcp-")  # not announced: the gateway names the session
    assert await client.send_message("rec", "a command", metadata={"k": "v"}) is None
    await wait_for(lambda: any(m.message == "a command" for m in client_support.RECEIVED))
    with pytest.raises(UnknownAgent, match="'nobody'"):
        await client.send_message("nobody", "hello?", type="query")
    result = await client.submit("general", "hi", wait=True)
    assert isinstance(result, TaskResult)
    assert (result.status, result.result, result.processed_by) == ("ok", "echo: hi", "echo")
    task_id = await client.submit("general", "later", priority="high")
    assert isinstance(task_id, str) and task_id
    with pytest.raises(NoCapableAgent, match="no agent handles task type 'nothing'"):
        await client.submit("nothing", {}, wait=True, timeout=2)
    await client.broadcast("hello-everyone", {"n": 1})
    with pytest.raises(GatewayError, match="-32602") as info:
        await client.call_tool("list_agents", {"status": 7})
    assert info.value.code == -32602
    assert client.breaker.failures == 0  # answers, even failures, are not gateway failures


async def test_two_outside_agents_talk_through_the_gateway(flock: Flock) -> None:
    url = gateway_url(flock)
    async with FlockClient(url, timeout=5) as alice, FlockClient(url, timeout=5) as bob:
        bob_got: asyncio.Future[DirectMessage] = asyncio.get_running_loop().create_future()
        broadcasts: asyncio.Queue[Broadcast] = asyncio.Queue()

        async def greet(message: DirectMessage) -> Any:
            assert message.type == "capability_request"
            return f"hello, {message.message['parameters']['name']}"

        alice.register_message_handler("capability_request", greet)
        alice.register_message_handler("query", lambda message: {"alice heard": message.message})
        bob.register_message_handler("*", bob_got.set_result)
        bob.register_broadcast_handler(broadcasts.put_nowait)
        await alice.announce_agent("alice", "Alice", ["greet"])
        await bob.announce_agent("bob")
        assert (alice.agent_id, bob.agent_id) == ("alice", "bob")

        # Bob asks for a capability only Alice offers; her handler's return value is the answer.
        assert await bob.request_capability("greet", {"name": "bob"}) == "hello, bob"
        # A query from Bob to Alice, answered by her query handler.
        assert await bob.send_message("alice", "ping", type="query") == {"alice heard": "ping"}
        # A command from Alice reaches Bob's catch-all handler, with Alice as the sender.
        await alice.send_message("bob", {"task": "wave"})
        message = await asyncio.wait_for(bob_got, 5)
        assert (message.sender, message.to, message.type, message.message) == (
            "alice",
            "bob",
            "command",
            {"task": "wave"},
        )
        # In-process agents reach outside agents too, and the other way round.
        assert await agents_of(flock).request_capability("greet", {"name": "rec"}, timeout=5) == "hello, rec"
        answer = await alice.send_message("rec", "from alice", type="query")
        assert answer["from"] == "alice"
        await alice.broadcast("news", "all hands")
        got = await asyncio.wait_for(broadcasts.get(), 5)
        assert (got.type, got.message) == ("news", "all hands")

        online = {agent["id"] for agent in await bob.list_agents()}
        assert {"alice", "bob", "rec", "echo"} <= online
        await alice.close()
        await wait_for(
            lambda: (info := flock.flock.get_agent("alice")) is not None and info.status == "offline"
        )  # type: ignore[union-attr]


async def test_a_handler_that_raises_fails_the_request_instead_of_answering(flock: Flock) -> None:
    url = gateway_url(flock)
    async with FlockClient(url, timeout=5) as agent, FlockClient(url, timeout=5) as asker:

        def broken(message: DirectMessage) -> Any:
            raise RuntimeError("handler bug")

        agent.register_message_handler("capability_request", broken)
        await agent.announce_agent("fragile", capabilities=["fragile"])
        # send_response carries the handler's error: the request fails at once, not by timeout.
        with pytest.raises(WorkFailed, match="handler bug"):
            await asker.request_capability("fragile", {}, timeout=5)
        assert agent.agent_id == "fragile" and agent.connected  # the agent lives on


async def test_reconnects_and_announces_again_after_the_gateway_restarts(nats_server: EmbeddedNats) -> None:
    config = agents_flock_config(nats={"url": nats_server.url}, mcp={"port": 0}, agents=False, name="gw-1")
    first = Flock(config)
    await first.start()
    url = gateway_url(first)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    client = FlockClient(url, timeout=5, backoff=0.01, max_backoff=0.05)
    try:
        client.register_message_handler("capability_request", lambda m: m.message["parameters"]["x"] * 2)
        await client.connect()
        await client.announce_agent("doubler", capabilities=["double"])
        await first.stop()  # the gateway closes every connection; the client starts reconnecting
        await wait_for(lambda: not client.connected)
        again = agents_flock_config(
            nats={"url": nats_server.url}, mcp={"port": port}, agents=False, name="gw-2"
        )
        async with Flock(again) as second:
            await wait_for(lambda: client.reconnects == 1, timeout=10)
            await wait_for(lambda: agents_of(second).get_agent("doubler") is not None, timeout=5)
            # The new gateway pushes requests for the re-announced agent to the same handler.
            assert await agents_of(second).request_capability("double", {"x": 21}, timeout=5) == 42
            assert client.breaker.state is BreakerState.CLOSED
    finally:
        await client.close()
        await first.stop()


async def test_reconnects_and_announces_again_after_its_connection_drops(flock: Flock) -> None:
    url = gateway_url(flock)
    async with FlockClient(url, timeout=5, backoff=0.01, max_backoff=0.05) as agent:
        agent.register_message_handler("capability_request", lambda message: "still here")
        await agent.announce_agent("blip", capabilities=["blip"])
        assert flock.gateway is not None
        for ws in list(flock.gateway.websockets):  # the connection drops; the gateway lives on
            await ws.close()
        await wait_for(lambda: agent.reconnects == 1, timeout=10)
        # The old session's agent stopped; the re-announced one answers through the new session.
        await wait_for(
            lambda: (info := agents_of(flock).get_agent("blip")) is not None and info.status == "online"
        )
        assert await agents_of(flock).request_capability("blip", {}, timeout=5) == "still here"


async def test_while_its_id_is_taken_the_client_keeps_trying_to_announce_again(
    flock: Flock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flockrt.client")
    url = gateway_url(flock)
    # backoff=1: the first reconnection attempt comes 0.5 to 1 s after the drop.
    async with FlockClient(url, timeout=5, backoff=1, max_backoff=1) as agent:
        agent.register_message_handler("capability_request", lambda message: "the original")
        await agent.announce_agent("taken", capabilities=["who"])
        assert flock.gateway is not None
        for ws in list(flock.gateway.websockets):
            await ws.close()
        await wait_for(
            lambda: (info := agents_of(flock).get_agent("taken")) is not None and info.status == "offline"
        )
        async with FlockClient(url, timeout=5) as impostor:
            impostor.register_message_handler("capability_request", lambda message: "the impostor")
            await impostor.announce_agent("taken", capabilities=["who"])
            await wait_for(lambda: "could not announce taken again" in caplog.text, timeout=10)
            assert agent.reconnects == 0
            assert await agents_of(flock).request_capability("who", {}, timeout=5) == "the impostor"
        await wait_for(lambda: agent.reconnects == 1, timeout=10)
        assert await agents_of(flock).request_capability("who", {}, timeout=5) == "the original"


async def test_the_breaker_opens_on_a_dead_gateway_and_closes_on_a_live_one(
    nats_server: EmbeddedNats,
) -> None:
    config = agents_flock_config(nats={"url": nats_server.url}, mcp={"port": 0}, name="gw-1")
    first = Flock(config)
    await first.start()
    url = gateway_url(first)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    await first.stop()
    now = [0.0]
    breaker = CircuitBreaker(url, failure_threshold=2, reset_timeout=60, clock=lambda: now[0])
    client = FlockClient(url, breaker=breaker, reconnect=False, timeout=5)
    try:
        for _ in range(2):
            with pytest.raises(GatewayUnavailable):
                await client.list_agents()
        async with Flock(agents_flock_config(nats={"url": nats_server.url}, mcp={"port": port})):
            with pytest.raises(CircuitOpen):  # the gateway is back, but the breaker is still open
                await client.list_agents()
            now[0] += 60  # half-open: the next call is a trial, and it succeeds
            assert {agent["id"] for agent in await client.list_agents()} == {"rec", "echo"}
            assert breaker.state is BreakerState.CLOSED
    finally:
        await client.close()


async def test_falls_back_to_nats_when_the_gateway_goes_away(nats_server: EmbeddedNats) -> None:
    client_support.RECEIVED.clear()
    agents = agents_flock_config(nats={"url": nats_server.url}, name="workers")
    gateway = agents_flock_config(nats={"url": nats_server.url}, mcp={"port": 0}, agents=False, name="gw")
    async with Flock(agents), Flock(gateway) as front:
        client = FlockClient(gateway_url(front), nats_url=nats_server.url, reconnect=False, timeout=5)
        try:
            assert await client.request_capability("upper", {"text": "gateway"}) == "GATEWAY"
            assert client.fallbacks == 0
            await front.stop()
            assert await client.request_capability("upper", {"text": "nats"}) == "NATS"
            assert (await client.send_message("rec", "still there?", type="query"))["got"] == "still there?"
            assert client.fallbacks == 2
            with pytest.raises(GatewayUnavailable):  # no NATS equivalent: the gateway is needed
                await client.list_agents()
        finally:
            await client.close()


async def test_operator_commands_against_the_gateway(
    flock: Flock, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--url", gateway_url(flock), "--timeout", "5"]
    assert await operate(["agents", *url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["AGENT", "STATUS", "CAPABILITIES", "LOAD", "NODE"]
    assert lines[1].split() == ["echo", "online", "echo", "0%", "test-flock"]
    assert lines[2].split() == ["rec", "online", "upper,", "explode", "0%", "test-flock"]
    assert await operate(["agents", "--capability", "upper", "--json", *url]) == 0
    assert [agent["id"] for agent in json.loads(capsys.readouterr().out)] == ["rec"]
    assert await operate(["tree", *url]) == 0
    drawing = capsys.readouterr().out
    assert "├── root  Supervisor  running  one_for_one, max 3 restarts in 5.0 s" in drawing
    assert "└── mcp-agents  DynamicSupervisor  running" in drawing
    assert "│   ├── rec  Recorder  running  permanent" in drawing
    assert await operate(["send", "rec", '{"n": 2}', "--type", "query", *url]) == 0
    assert json.loads(capsys.readouterr().out)["got"] == {"n": 2}
    assert await operate(["send", "rec", "just words", *url]) == 0
    assert capsys.readouterr().out == "sent command to rec\n"
    assert await operate(["request", "upper", '{"text": "cli"}', *url]) == 0
    assert json.loads(capsys.readouterr().out) == "CLI"
    assert await operate(["submit", "general", '"task data"', "--wait", *url]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["status"], result["result"], result["processedBy"]) == ("ok", "echo: task data", "echo")
    assert await operate(["submit", "general", "1", *url]) == 0
    assert capsys.readouterr().out.strip()  # the task id
    assert await operate(["request", "translate", "{}", *url]) == 1
    assert "no agent offers capability 'translate'" in capsys.readouterr().err
    assert await operate(["send", "nobody", "x", "--type", "query", *url]) == 1
    assert "no agent with id 'nobody'" in capsys.readouterr().err


async def test_tokens_static_and_jwt(nats_server: EmbeddedNats, capsys: pytest.CaptureFixture[str]) -> None:
    secret = "a-test-secret-that-is-long-enough-for-hs256"
    auth = {"tokens": ["static-token"], "jwt_secret": secret}
    config = agents_flock_config(nats={"url": nats_server.url}, mcp={"port": 0, "auth": auth})
    async with Flock(config) as running:
        url = gateway_url(running)
        for token in (None, "wrong-token"):
            client = FlockClient(url, token=token)
            try:
                with pytest.raises(NotAuthorized, match="refused: 401"):
                    await client.connect()
                assert client.breaker.failures == 0  # the gateway is up; retrying will not help
            finally:
                await client.close()
        async with FlockClient(url, token="static-token") as client:
            assert await client.request_capability("upper", {"text": "let in"}) == "LET IN"
        bound = jwt.encode(
            {"agentId": "alpha", "capabilities": ["translate"], "exp": int(time.time()) + 60},
            secret,
            algorithm="HS256",
        )
        async with FlockClient(url, token=bound) as client:
            with pytest.raises(NotAuthorized, match="not 'beta'"):
                await client.announce_agent("beta")
            await client.announce_agent("alpha", capabilities=["translate"])
            assert client.agent_id == "alpha"
        assert await operate(["agents", "--url", url]) == 1
        assert "refused: 401" in capsys.readouterr().err
        assert await operate(["agents", "--url", url, "--token", "static-token"]) == 0
        assert "rec" in capsys.readouterr().out


async def test_cancelling_a_call_cancels_the_work_in_the_flock(flock: Flock, client: FlockClient) -> None:
    Slow.started, Slow.cancelled = asyncio.Event(), asyncio.Event()
    await flock.system.spawn(Slow, "slow-1")
    await wait_for(lambda: agents_of(flock).get_agent("slow-1") is not None)
    call = asyncio.ensure_future(client.request_capability("slow", {}, timeout=30))
    await asyncio.wait_for(Slow.started.wait(), 5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # The client told the gateway (notifications/cancelled), which stopped the agent's work.
    await asyncio.wait_for(Slow.cancelled.wait(), 5)
    assert await client.request_capability("upper", {"text": "still usable"}) == "STILL USABLE"


async def test_no_fallback_for_a_request_the_gateway_may_have_carried_out(nats_server: EmbeddedNats) -> None:
    Slow.started, Slow.cancelled = asyncio.Event(), asyncio.Event()
    config = agents_flock_config(nats={"url": nats_server.url}, mcp={"port": 0}, agents=False, name="gw")
    async with Flock(config) as front:
        await front.system.spawn(Slow, "slow-1")
        client = FlockClient(gateway_url(front), nats_url=nats_server.url, reconnect=False, timeout=5)
        try:
            call = asyncio.ensure_future(client.request_capability("slow", {}))
            await asyncio.wait_for(Slow.started.wait(), 5)  # delivered and running
            assert front.gateway is not None
            for ws in list(front.gateway.websockets):  # the connection drops mid-call
                await ws.close()
            with pytest.raises(GatewayUnavailable, match="its outcome is unknown") as failed:
                await call
            assert failed.value.sent and client.fallbacks == 0  # not run a second time over NATS
        finally:
            await client.close()
