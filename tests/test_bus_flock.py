"""The flock over NATS: seed-shaped JSON, announcements, heartbeats, fan-out, capabilities, bad input."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from flockrt import ActorSystem
from flockrt.actors.correlation import correlation_id
from flockrt.agents.agent import Agent, capability, handles_task
from flockrt.bus.connection import NatsConnection
from flockrt.bus.embedded import EmbeddedNats
from flockrt.bus.flock import NatsFlock
from flockrt.errors import NoCapableAgent, UnknownAgent, WorkFailed
from flockrt.flock.local import WorkStats
from flockrt.wire.schema import Broadcast, DirectMessage, TaskMessage, TaskResult
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


class General(Agent):
    """Handles the AI Flock's 'general' tasks and answers text-analysis."""

    max_concurrent_tasks = 4

    @handles_task("general")
    async def general(self, task: TaskMessage) -> dict[str, Any]:
        return {"echo": task.data, "by": self.agent_id}

    @capability("text-analysis")
    async def analyze(self, text: str) -> dict[str, int]:
        return {"words": len(text.split())}

    async def on_message(self, message: DirectMessage) -> Any:
        if message.message == "unencodable":
            return object()  # no JSON for this
        return f"{self.agent_id} got {message.message}"


class Node:
    """One flockrt 'process': an actor system, a NATS connection and a NatsFlock."""

    def __init__(self, url: str, name: str, heartbeat_interval: float = 60.0) -> None:
        self.system = ActorSystem(name, shutdown_timeout=2.0)
        self.bus = NatsConnection(url, name=name, reconnect_wait=0.05, max_backoff=0.1)
        self.name = name
        self.heartbeat_interval = heartbeat_interval
        self.flock: NatsFlock

    async def __aenter__(self) -> Node:
        await self.system.__aenter__()
        await self.bus.start()
        self.flock = NatsFlock(
            self.system, self.bus, node=self.name, heartbeat_interval=self.heartbeat_interval
        )
        await self.flock.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.system.shutdown()
        await self.flock.close()
        await self.bus.close()

    async def agents(self, *ids: str) -> None:
        for agent_id in ids:
            await self.system.spawn(General, agent_id)
        await self.settled()

    async def settled(self) -> None:
        """Wait until every queued announce/subscribe has gone out and the server has it."""
        await self.flock.flush()


@pytest.fixture
async def plain(nats_server: EmbeddedNats) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(nats_server.url, allow_reconnect=False)
    yield client
    await client.close()


class Collector:
    def __init__(self) -> None:
        self.messages: list[Msg] = []

    async def handle(self, msg: Msg) -> None:  # nats-py wants a coroutine function
        self.messages.append(msg)

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(m.data) for m in self.messages]


async def test_seed_shaped_json_task_is_processed_and_answered(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    results = Collector()
    await plain.subscribe("task.result", cb=results.handle)
    async with Node(nats_server.url, "node-a") as node:
        await node.agents("general-1")
        # As any AI Flock client publishes it: JSON with camelCase fields, some left out.
        task = {"id": "task-1", "type": "general", "priority": "high", "data": {"text": "hi"}}
        await plain.publish("tasks.general", json.dumps(task).encode())
        reply = await plain.request(
            "tasks.general",
            json.dumps({**task, "id": "task-2"}).encode(),
            timeout=5,
            headers={"Correlation-Id": "c-2"},
        )
        await wait_for(lambda: len(results.messages) == 2)
    answered = json.loads(reply.data)
    assert answered["taskId"] == "task-2"
    assert answered["status"] == "ok"
    assert answered["processedBy"] == "general-1"
    assert answered["result"] == {"echo": {"text": "hi"}, "by": "general-1"}
    assert reply.headers is not None and reply.headers["Correlation-Id"] == "c-2"
    published = {r["taskId"]: r for r in results.json()}
    assert set(published) == {"task-1", "task-2"}
    fields = {"taskId", "result", "processedBy", "status", "error", "durationMs", "errorType"}
    assert set(published["task-1"]) == fields


async def test_announcements_and_heartbeats_carry_the_documented_fields(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    announces, beats = Collector(), Collector()
    await plain.subscribe("agent.announce", cb=announces.handle)
    await plain.subscribe("agent.*.heartbeat", cb=beats.handle)
    await plain.flush()
    async with Node(nats_server.url, "node-a", heartbeat_interval=0.02) as node:
        await node.agents("general-1")
        await wait_for(lambda: len(beats.messages) >= 2)
    [announce] = [a for a in announces.json() if a["id"] == "general-1"][:1]
    assert set(announce) == {
        "id",
        "name",
        "capabilities",
        "maxConcurrentTasks",
        "timestamp",
        "node",
        "capabilitySchemas",
    }
    assert (announce["capabilities"], announce["maxConcurrentTasks"], announce["node"]) == (
        ["text-analysis"],
        4,
        "node-a",
    )
    assert announce["timestamp"].endswith("Z")
    beat = beats.json()[0]
    assert {"agentId", "status", "timestamp", "uptime", "tasksProcessed"} <= set(beat)
    assert beat["agentId"] == "general-1" and beat["status"] == "online"
    assert beats.messages[0].subject == "agent.general-1.heartbeat"


async def test_each_task_is_handled_once_across_two_nodes(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    results = Collector()
    await plain.subscribe("task.result", cb=results.handle)
    async with Node(nats_server.url, "node-a") as a, Node(nats_server.url, "node-b") as b:
        await a.agents("a-1", "a-2")
        await b.agents("b-1")
        for i in range(200):
            await a.flock.submit("general", i, task_id=f"t-{i}")
        await wait_for(lambda: len(results.messages) == 200, timeout=20)
    by_task = {r["taskId"]: r for r in results.json()}
    assert len(by_task) == 200  # exactly once each: no task twice, none lost
    assert all(r["status"] == "ok" for r in by_task.values())
    workers = {r["processedBy"] for r in by_task.values()}
    assert workers & {"a-1", "a-2"} and "b-1" in workers  # both nodes took part


async def test_submit_and_wait_across_nodes(nats_server: EmbeddedNats) -> None:
    async with Node(nats_server.url, "node-a") as a, Node(nats_server.url, "node-b") as b:
        await b.agents("b-1")
        result = await a.flock.submit("general", "over there", wait=True, timeout=5)
        assert isinstance(result, TaskResult)
        assert (result.status, result.processed_by) == ("ok", "b-1")
        with pytest.raises(NoCapableAgent, match="painting"):
            await a.flock.submit("painting", {}, wait=True, timeout=5)


async def test_capability_request_and_direct_query_across_nodes(nats_server: EmbeddedNats) -> None:
    async with Node(nats_server.url, "node-a") as a, Node(nats_server.url, "node-b") as b:
        await b.agents("b-1")
        await a.settled()
        assert await a.flock.request_capability("text-analysis", {"text": "from another node"}) == {
            "words": 3
        }
        with pytest.raises(NoCapableAgent, match="translation"):
            await a.flock.request_capability("translation", {}, timeout=2)
        assert await a.flock.send_message("b-1", "hello", type="query", timeout=5) == "b-1 got hello"
        with pytest.raises(UnknownAgent):
            await a.flock.send_message("nobody", "hello", type="query", timeout=5)
        await wait_for(lambda: (info := a.flock.get_agent("b-1")) is not None and info.node == "node-b")


async def test_a_query_answer_that_cannot_be_sent_fails_the_query_at_once(
    nats_server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    """An agent answering a query from another process with a value that does not encode: the
    asker gets an error right away (not its timeout), and the answering process logs why."""
    async with Node(nats_server.url, "node-a") as a, Node(nats_server.url, "node-b") as b:
        await b.agents("b-1")
        await a.settled()
        started = asyncio.get_running_loop().time()
        with pytest.raises(WorkFailed, match="could not be sent"):
            await a.flock.query("b-1", "unencodable", timeout=20)
        assert asyncio.get_running_loop().time() - started < 10
        assert "the answer of b-1 could not be sent" in caplog.text
        assert await a.flock.query("b-1", "hello", timeout=5) == "b-1 got hello"  # b-1 lives on


async def test_a_silent_node_goes_offline_after_missed_heartbeats(nats_server: EmbeddedNats) -> None:
    async with Node(nats_server.url, "node-a", heartbeat_interval=0.02) as a:
        b = Node(nats_server.url, "node-b", heartbeat_interval=0.02)
        await b.__aenter__()
        await b.agents("b-1")
        await wait_for(lambda: (info := a.flock.get_agent("b-1")) is not None and info.status == "online")
        await b.bus.close()  # gone without a goodbye: only missed heartbeats tell
        await wait_for(lambda: a.flock.get_agent("b-1").status == "offline", timeout=5)  # type: ignore[union-attr]
        await b.system.shutdown()
        await b.flock.close()


async def test_a_stopped_agent_says_goodbye(nats_server: EmbeddedNats) -> None:
    async with Node(nats_server.url, "node-a") as a, Node(nats_server.url, "node-b") as b:
        await b.agents("b-1")
        await wait_for(lambda: a.flock.get_agent("b-1") is not None)
        ref = b.flock.dispatcher._members["b-1"].card.ref
        await ref.stop()
        await wait_for(lambda: a.flock.get_agent("b-1").status == "offline")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "subject",
    [
        "tasks.general",
        "capability.text-analysis",
        "agent.announce",
        "agent.general-1.heartbeat",
        "broadcast",
        "agent.general-1.inbox",
        "agent.general-1.events",
    ],
)
async def test_malformed_messages_are_counted_and_the_subscription_lives(
    nats_server: EmbeddedNats, plain: nats.NATS, subject: str
) -> None:
    async with Node(nats_server.url, "node-a") as node:
        await node.agents("general-1")
        for garbage in (b"not json", b'{"id": 5}', b"[]", b"{" * 10):
            await plain.publish(subject, garbage)
        await plain.flush()
        # Heartbeats are counted under their subscription's wildcard: made-up ids must not
        # grow the counter.
        counted = "agent.*.heartbeat" if subject.endswith(".heartbeat") else subject
        await wait_for(lambda: node.flock.invalid_messages[counted] == 4)
        # Still alive on the same subscriptions:
        assert await node.flock.request_capability("text-analysis", "still here") == {"words": 2}
        reply = await plain.request("tasks.general", b'{"id": "ok", "type": "general"}', timeout=5)
        assert json.loads(reply.data)["status"] == "ok"


async def test_a_malformed_request_gets_an_error_reply(nats_server: EmbeddedNats, plain: nats.NATS) -> None:
    async with Node(nats_server.url, "node-a") as node:
        await node.agents("general-1")
        reply = await plain.request("capability.text-analysis", b'{"capability": 3}', timeout=5)
        # The error says what is wrong, and the reply is a service API error.
        assert "field 'capability': expected `str`" in json.loads(reply.data)["error"]
        assert reply.headers and reply.headers["Nats-Service-Error-Code"] == "400"
        reply = await plain.request("tasks.general", b"nonsense", timeout=5)
        assert json.loads(reply.data)["status"] == "error"
        assert "not valid JSON" in json.loads(reply.data)["error"]


class Counting(Agent):
    """A capability whose handler never waits: answered inline, as soon as it arrives."""

    @capability("count")
    async def count(self, text: str) -> dict[str, Any]:
        if text == "fail":
            raise ValueError("nothing to count")
        return {"words": len(text.split()), "by": self.agent_id, "correlation": correlation_id.get()}


async def test_capability_requests_for_handlers_that_never_wait_are_answered_at_once(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    async with Node(nats_server.url, "node-a") as node:
        for i in range(2):
            await node.system.spawn(Counting, f"counting-{i}")
        await node.settled()
        node.flock.work_stats = WorkStats()
        fast = node.flock.dispatcher._run_inline_now
        ran_inline: list[Any] = []

        def counted(*args: Any) -> Any:
            ran = fast(*args)
            ran_inline.append(ran is not None)
            return ran

        node.flock.dispatcher._run_inline_now = counted  # type: ignore[method-assign]

        async def ask(parameters: Any, correlation: str, headers: dict[str, str] | None = None) -> Any:
            request = {"capability": "count", "parameters": parameters, "correlationId": correlation}
            reply = await plain.request("capability.count", json.dumps(request).encode(), 5, headers=headers)
            return json.loads(reply.data)

        answers = [await ask({"text": "a b c"}, f"c-{i}") for i in range(4)]
        assert [a["agentId"] for a in answers] == ["counting-0", "counting-1", "counting-0", "counting-1"]
        assert answers[0] == {
            "correlationId": "c-0",
            "result": {"words": 3, "by": "counting-0", "correlation": "c-0"},
            "agentId": "counting-0",
            "error": None,
            "errorType": None,
        }
        # The Correlation-Id header, when there is one, is what the agent's work runs with.
        traced = await ask("x y", "c-5", {"Correlation-Id": "trace-5"})
        assert traced["result"]["correlation"] == "trace-5" and traced["correlationId"] == "c-5"
        failed = await ask({"text": "fail"}, "c-6")
        assert failed["correlationId"] == "c-6" and "nothing to count" in failed["error"]
        assert failed["agentId"] in ("counting-0", "counting-1") and failed["result"] is None
        wrong = await ask({"words": "x"}, "c-7")  # not the handler's parameters
        assert wrong["error"] == "count has no parameter 'words' (it takes: text)"
        assert wrong["errorType"] == "InvalidParameters"
        outcomes = node.flock.work_stats.outcomes
        assert (outcomes["capability", "count", "ok"], outcomes["capability", "count", "error"]) == (5, 2)
        assert ran_inline == [True] * 7  # each went the fast path (no Work, no timer)
        local = await node.flock.request_capability("count", "still here", timeout=5)  # in-process
        assert local["words"] == 2 and local["by"] in ("counting-0", "counting-1")


class Unsendable(Agent):
    """Answers with something no encoder takes: inline, and after a wait."""

    max_concurrent_tasks = 2

    @capability("unsendable")
    async def unsendable(self) -> Any:
        return object()

    @capability("unsendable-later")
    async def later(self) -> Any:
        await asyncio.sleep(0)
        return object()

    @handles_task("follow-up")
    async def follow_up(self, task: TaskMessage) -> str:
        return "followed up"


async def test_an_answer_that_cannot_be_sent_is_replaced_by_an_error_answer(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    async with Node(nats_server.url, "node-a") as node:
        await node.system.spawn(Unsendable, "unsendable-1")
        await node.settled()
        for name in ("unsendable", "unsendable-later"):
            request = {"capability": name, "correlationId": f"c-{name}"}
            reply = await plain.request(f"capability.{name}", json.dumps(request).encode(), timeout=5)
            answer = json.loads(reply.data)
            assert answer["correlationId"] == f"c-{name}" and answer["agentId"] == "unsendable-1"
            assert answer["error"].startswith("the answer could not be sent:"), answer
        # The agent goes on, and so does work queued for it.
        outcome = await node.flock.submit("follow-up", None, wait=True, timeout=5)
        assert isinstance(outcome, TaskResult) and outcome.result == "followed up"


class Pondering(Agent):
    """A capability that waits before it answers: it runs in a Task, not inline."""

    @capability("ponder")
    async def ponder(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return f"pondered {seconds}"


async def test_capability_requests_that_wait_are_answered_or_time_out(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    async with Node(nats_server.url, "node-a") as node:
        await node.system.spawn(Pondering, "p-1")
        await node.settled()
        request = {"capability": "ponder", "parameters": {"seconds": 0.01}, "correlationId": "c-1"}
        reply = await plain.request("capability.ponder", json.dumps(request).encode(), timeout=5)
        assert json.loads(reply.data) == {
            "correlationId": "c-1",
            "result": "pondered 0.01",
            "agentId": "p-1",
            "error": None,
            "errorType": None,
        }
        # Past the request's own timeout (ms) the answering side gives up and says so.
        slow = {"capability": "ponder", "parameters": {"seconds": 5}, "timeout": 50, "correlationId": "c-2"}
        reply = await plain.request("capability.ponder", json.dumps(slow).encode(), timeout=5)
        answer = json.loads(reply.data)
        assert answer["correlationId"] == "c-2" and "0.05" in answer["error"]


class Holding(Agent):
    """One slot; "hold" waits until released, and notes which calls started and which were
    cancelled."""

    max_concurrent_tasks = 1

    def __init__(self, agent_id: str) -> None:
        super().__init__(agent_id)
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.release = asyncio.Event()

    @capability("hold")
    async def hold(self, name: str) -> str:
        self.started.append(name)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        return f"held {name}"


async def test_a_capability_request_past_its_deadline_is_answered_504_and_its_work_stopped(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    async with Node(nats_server.url, "node-a") as node:
        holding = Holding("holding-1")
        await node.system.spawn(lambda: holding)
        await node.settled()
        loop = asyncio.get_running_loop()

        async def ask(name: str, timeout_ms: int) -> tuple[Msg, float]:
            request = {"capability": "hold", "parameters": name, "timeout": timeout_ms, "correlationId": name}
            sent = loop.time()
            reply = await plain.request("capability.hold", json.dumps(request).encode(), timeout=5)
            return reply, loop.time() - sent

        # "first" takes the one slot; "second" waits for it, and its deadline comes first.
        first = asyncio.ensure_future(ask("first", 300))
        await wait_for(lambda: holding.started == ["first"], timeout=5)
        (second, waited), (first_reply, first_waited) = await asyncio.gather(ask("second", 50), first)
        for reply, name, timeout, elapsed in (
            (second, "second", 0.05, waited),
            (first_reply, "first", 0.3, first_waited),
        ):
            answer = json.loads(reply.data)
            assert answer["correlationId"] == name and answer["errorType"] == "WorkTimeout", answer
            assert f"{timeout:g}" in answer["error"]
            assert reply.headers is not None and reply.headers["Nats-Service-Error-Code"] == "504"
            assert elapsed >= timeout  # never before the deadline
        # The running work was cancelled at its deadline; the queued one never started.
        await wait_for(lambda: holding.cancelled == ["first"], timeout=5)
        assert holding.started == ["first"]
        assert node.flock.intake.answers.expired == 2
        # The agent goes on: its slot is free again.
        holding.release.set()
        reply, _ = await ask("third", 5000)
        assert json.loads(reply.data)["result"] == "held third"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_nats_down_at_start_then_recovery(tmp_path: Any) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    async with AsyncExitStack() as stack:
        node = await stack.enter_async_context(Node(url, "node-a"))
        await node.agents("general-1")
        # Degraded: tasks still run on local agents; requests for others fail clearly.
        result = await node.flock.submit("general", "offline work", wait=True, timeout=5)
        assert isinstance(result, TaskResult) and result.processed_by == "general-1"
        assert await node.flock.request_capability("text-analysis", "local first") == {"words": 2}
        server = await stack.enter_async_context(EmbeddedNats(port=port, store_dir=tmp_path / "nats"))
        await node.bus.wait_connected(timeout=10)
        await node.settled()
        async with asyncio.timeout(10):
            client = await nats.connect(server.url, allow_reconnect=False)
        try:
            reply = await client.request("tasks.general", b'{"id": "after", "type": "general"}', timeout=5)
            assert json.loads(reply.data)["processedBy"] == "general-1"
        finally:
            await client.close()


class Special(Agent):
    @handles_task("special")
    async def special(self, task: TaskMessage) -> str:
        return f"special {task.data}"


async def test_submit_many_travels_in_few_batches_and_each_task_runs_once(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    results, batches = Collector(), Collector()
    await plain.subscribe("task.result", cb=results.handle)
    await plain.subscribe("batch.messages", cb=batches.handle)
    await plain.flush()
    async with Node(nats_server.url, "node-a") as a, Node(nats_server.url, "node-b") as b:
        await a.agents("a-1")
        await b.agents("b-1")
        a.flock.batcher.max_items = 100
        ids = await a.flock.submit_many("general", range(250), priority="low")
        await wait_for(lambda: len(results.messages) == 250, timeout=20)
    assert len(batches.messages) == 3  # 100 + 100 + 50
    by_task = {r["taskId"]: r for r in results.json()}
    assert set(by_task) == set(ids)
    assert all(r["status"] == "ok" for r in by_task.values())


async def test_submit_many_with_batched_results_gets_one_answer_per_batch(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    results, batches = Collector(), Collector()
    await plain.subscribe("task.result", cb=results.handle)
    await plain.subscribe("batch.messages", cb=batches.handle)
    await plain.flush()
    async with Node(nats_server.url, "node-a") as a, Node(nats_server.url, "node-b") as b:
        await b.agents("b-1", "b-2")
        a.flock.batcher.max_items = 100
        outcome = await a.flock.submit_many("general", range(250), results="batch", timeout=10)
        await plain.flush()
        assert results.messages == []  # batched results do not go to task.result
        assert len(batches.messages) == 3  # 100 + 100 + 50
        # The node taking a batch answers it also when it must forward some tasks elsewhere.
        async with Node(nats_server.url, "node-c") as c:
            await c.system.spawn(Special, "s-1")
            await c.settled()
            mixed = [{"subject": "tasks.general", "message": {"id": "g-1", "type": "general", "data": 1}}]
            mixed += [{"subject": "tasks.special", "message": {"id": "s-1", "type": "special", "data": 2}}]
            mixed += [{"subject": "tasks.general", "message": {"id": 3}}]  # invalid: an error result
            reply = await plain.request("batch.messages", json.dumps(mixed).encode(), timeout=10)
            await wait_for(lambda: len(results.messages) == 1)
    assert [r.result["echo"] for r in outcome] == list(range(250))  # in order
    assert all(r.status == "ok" and r.processed_by in ("b-1", "b-2") for r in outcome)
    answer = json.loads(reply.data)
    assert [(r["taskId"], r["status"]) for r in answer] == [("g-1", "ok"), ("s-1", "ok"), ("", "error")]
    assert answer[1]["result"] == "special 2"
    # The forwarded task travelled as a task of its own, with its own result on task.result.
    assert [r["taskId"] for r in results.json()] in (["g-1"], ["s-1"])


class Picky(Agent):
    """A 'picky' task handler that never waits and fails on "fail"."""

    @handles_task("picky")
    async def picky(self, task: TaskMessage) -> str:
        if task.data == "fail":
            raise ValueError("not this one")
        return f"{self.agent_id}: {task.data}"


async def test_in_a_batch_a_failing_task_or_one_of_another_type_fails_alone(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    results = Collector()
    await plain.subscribe("task.result", cb=results.handle)
    await plain.flush()
    async with Node(nats_server.url, "node-a") as a, Node(nats_server.url, "node-b") as b:
        await b.system.spawn(Picky, "p-1")
        await b.settled()
        outcome = await a.flock.submit_many("picky", ["x", "fail", "y"], results="batch", timeout=10)
        assert [(r.status, r.result) for r in outcome] == [
            ("ok", "p-1: x"),
            ("error", None),
            ("ok", "p-1: y"),
        ]
        assert "not this one" in (outcome[1].error or "")
        # On the subject of a type node-b runs, a task of a type it does not: an error result
        # for that task only, the batch answered (results="batch") or run (results each).
        items = [
            {"subject": "tasks.picky", "message": {"id": "k-1", "type": "picky", "data": "z"}},
            {"subject": "tasks.picky", "message": {"id": "k-2", "type": "painting"}},
        ]
        reply = await plain.request("batch.messages", json.dumps(items).encode(), timeout=10)
        answer = json.loads(reply.data)
        assert [(r["taskId"], r["status"]) for r in answer] == [("k-1", "ok"), ("k-2", "error")]
        assert "painting" in answer[1]["error"]
        await plain.publish("batch.messages", json.dumps(items).encode())
        await wait_for(lambda: len(results.messages) == 2)
    assert sorted((r["taskId"], r["status"]) for r in results.json()) == [("k-1", "ok"), ("k-2", "error")]


async def test_batched_results_need_someone_taking_batches(nats_server: EmbeddedNats) -> None:
    async with Node(nats_server.url, "node-a") as a:
        with pytest.raises(NoCapableAgent):
            await a.flock.submit_many("general", range(3), results="batch", timeout=5)


async def test_submit_with_batch_waits_for_company(nats_server: EmbeddedNats, plain: nats.NATS) -> None:
    results, batches = Collector(), Collector()
    await plain.subscribe("task.result", cb=results.handle)
    await plain.subscribe("batch.messages", cb=batches.handle)
    await plain.flush()
    async with Node(nats_server.url, "node-a") as a:
        await a.agents("a-1")
        a.flock.batcher.window = 0.05
        for i in range(10):
            await a.flock.submit("general", i, batch=True)
        await wait_for(lambda: len(results.messages) == 10)
    assert len(batches.messages) == 1


async def test_a_batch_with_foreign_tasks_is_shared_out(nats_server: EmbeddedNats, plain: nats.NATS) -> None:
    results = Collector()
    await plain.subscribe("task.result", cb=results.handle)
    async with Node(nats_server.url, "node-a") as a, Node(nats_server.url, "node-b") as b:
        await a.agents("a-1")
        await b.system.spawn(Special, "s-1")
        await b.settled()
        items = [
            {"subject": "tasks.general", "message": {"id": f"g-{i}", "type": "general"}} for i in range(5)
        ]
        items += [
            {"subject": "tasks.special", "message": {"id": f"s-{i}", "type": "special"}} for i in range(5)
        ]
        for _ in range(4):  # whichever node takes each batch, every task runs once, where it can
            await plain.publish("batch.messages", json.dumps(items).encode())
        await wait_for(lambda: len(results.messages) == 40, timeout=20)
        bad = [{"subject": "no good", "message": {}}, {"subject": "tasks.general", "message": {"id": 1}}]
        await plain.publish("batch.messages", json.dumps(bad).encode())
        await plain.publish("batch.messages", b"[not json")
        await wait_for(
            lambda: (
                a.flock.invalid_messages["batch.messages"] + b.flock.invalid_messages["batch.messages"] >= 2
            )
        )
    processed = {(r["taskId"], r["processedBy"]) for r in results.json()}
    assert {by for task, by in processed if task.startswith("g-")} == {"a-1"}
    assert {by for task, by in processed if task.startswith("s-")} == {"s-1"}


async def start_node_process(url: str, node: str, *agents: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.flock_node", url, node, *agents, stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        line = await proc.stdout.readline()
    assert line.strip() == b"ready", line
    return proc


async def stop_process(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        return await proc.wait()


async def test_two_processes_share_the_work_exactly_once(nats_server: EmbeddedNats, plain: nats.NATS) -> None:
    results = Collector()
    await plain.subscribe("task.result", cb=results.handle)
    procs = [
        await start_node_process(nats_server.url, "proc-a", "pa-1", "pa-2"),
        await start_node_process(nats_server.url, "proc-b", "pb-1"),
    ]
    try:
        for i in range(300):
            await plain.publish(
                "tasks.general", json.dumps({"id": f"t-{i}", "type": "general", "data": i}).encode()
            )
        await wait_for(lambda: len(results.messages) == 300, timeout=30)
        # A capability request from this process, answered by an agent of another process.
        async with Node(nats_server.url, "requester") as requester:
            answer = await requester.flock.request_capability("text-analysis", {"text": "across processes"})
            assert answer == {"words": 2}
    finally:
        codes = [await stop_process(proc) for proc in procs]
    assert codes == [0, 0]
    by_task = {r["taskId"]: r["processedBy"] for r in results.json()}
    assert len(by_task) == 300 == len(results.messages)  # each task exactly once
    assert set(by_task.values()) & {"pa-1", "pa-2"} and "pb-1" in set(by_task.values())


class OneAtATime(Agent):
    """Handles 'ordered' tasks one at a time; the first one waits for the test's gate."""

    def __init__(self, agent_id: str, gate: asyncio.Event, started: list[Any]) -> None:
        super().__init__(agent_id)
        self.gate = gate
        self.started = started

    @handles_task("ordered")
    async def ordered(self, task: TaskMessage) -> None:
        self.started.append(task.data)
        await self.gate.wait()


async def test_higher_priority_tasks_waiting_in_a_process_run_first(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    gate, started = asyncio.Event(), []
    async with Node(nats_server.url, "node-a") as node:
        await node.system.spawn(OneAtATime, "one", gate, started)
        await node.settled()
        await plain.publish("tasks.ordered", b'{"id": "0", "type": "ordered", "data": "first"}')
        await wait_for(lambda: started == ["first"])
        for name in ("low", "medium", "high"):
            task = {"id": name, "type": "ordered", "data": name, "priority": name}
            await plain.publish("tasks.ordered", json.dumps(task).encode())
        await plain.flush()
        await wait_for(lambda: node.flock.queued_work == 3)
        gate.set()
        await wait_for(lambda: len(started) == 4)
    assert started == ["first", "high", "medium", "low"]


async def service_info(client: nats.NATS, verb: str, node: str, processes: int = 2) -> dict[str, Any]:
    """The answer of ``node``'s flockrt service to $SRV.<verb>.flockrt (every process answers)."""
    inbox = client.new_inbox()
    answers: list[dict[str, Any]] = []

    async def collect(msg: Msg) -> None:
        answers.append(json.loads(msg.data))

    sub = await client.subscribe(inbox, cb=collect)
    await client.publish(f"$SRV.{verb}.flockrt", b"", reply=inbox)
    await client.flush()
    await wait_for(lambda: len(answers) == processes)
    await sub.unsubscribe()
    [answer] = [a for a in answers if a["metadata"] == {"node": node}]
    return answer


async def test_capabilities_show_up_in_the_nats_service_api(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    async with Node(nats_server.url, "node-a") as a, Node(nats_server.url, "node-b") as b:
        await a.agents("a-1")
        await b.settled()
        ping = await service_info(plain, "PING", "node-a")
        assert (ping["name"], ping["version"], ping["metadata"]) == ("flockrt", "0.1.0", {"node": "node-a"})
        info = await service_info(plain, "INFO", "node-a")
        [endpoint] = info["endpoints"]
        assert (endpoint["name"], endpoint["subject"], endpoint["queue_group"]) == (
            "text-analysis",
            "capability.text-analysis",
            "capability.text-analysis",
        )
        assert await b.flock.request_capability("text-analysis", "counted by the service") == {"words": 4}
        stats = await service_info(plain, "STATS", "node-a")
        assert stats["endpoints"][0]["num_requests"] == 1
        # The last agent offering it stops: the endpoint goes away.
        await a.flock.dispatcher._members["a-1"].card.ref.stop()
        await a.settled()
        info = await service_info(plain, "INFO", "node-a")
        assert info["endpoints"] == []


async def test_correlation_ids_travel_from_task_to_result(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    results = Collector()
    await plain.subscribe("task.result", cb=results.handle)
    async with Node(nats_server.url, "node-a") as node:
        await node.agents("general-1")
        task = {"id": "t-corr", "type": "general", "data": 1}
        await plain.publish(
            "tasks.general", json.dumps(task).encode(), headers={"Correlation-Id": "trace-42"}
        )
        await node.flock.submit("general", 2, task_id="t-own")
        await wait_for(lambda: len(results.messages) == 2)
    headers = {
        json.loads(m.data)["taskId"]: (m.headers or {}).get("Correlation-Id") for m in results.messages
    }
    # A task without a header of its own: its correlation id is its id, carried as taskId.
    assert headers == {"t-corr": "trace-42", "t-own": None}


async def test_a_persisted_directory_lets_a_new_process_see_the_flock_at_once(
    nats_server: EmbeddedNats,
) -> None:
    async def persistent(name: str) -> Node:
        node = Node(nats_server.url, name)  # heartbeats every 60 s: none arrive during the test
        await node.system.__aenter__()
        await node.bus.start()
        node.flock = NatsFlock(
            node.system, node.bus, node=name, heartbeat_interval=60, persist_directory=True
        )
        await node.flock.start()
        return node

    first = await persistent("node-a")
    try:
        await first.agents("a-1", "a-2")
        late = await persistent("node-late")
        try:
            assert sorted(agent.id for agent in late.flock.list_agents()) == ["a-1", "a-2"]
            assert late.flock.get_agent("a-1").node == "node-a"  # type: ignore[union-attr]
        finally:
            await late.__aexit__(None, None, None)
        await first.flock.dispatcher._members["a-2"].card.ref.stop()
        await first.settled()
        later = await persistent("node-later")
        try:
            assert [agent.id for agent in later.flock.list_agents()] == ["a-1"]  # the stopped one is gone
        finally:
            await later.__aexit__(None, None, None)
    finally:
        await first.__aexit__(None, None, None)


async def test_only_nodes_that_run_tasks_take_batches(nats_server: EmbeddedNats) -> None:
    async with Node(nats_server.url, "producer") as producer:
        assert producer.flock.intake._batch_subscription is None  # no agents: leave batches to others
        await producer.agents("p-1")
        assert producer.flock.intake._batch_subscription is not None
        await producer.flock.dispatcher._members["p-1"].card.ref.stop()
        await producer.settled()
        assert producer.flock.intake._batch_subscription is None


async def test_nats_down_during_a_run_then_recovery(nats_server: EmbeddedNats) -> None:
    async with Node(nats_server.url, "node-a") as node:
        await node.agents("general-1")
        await nats_server.kill()
        await wait_for(lambda: not node.bus.connected)
        # Degraded: local work goes on, the results wait in the publish buffer.
        result = await node.flock.submit("general", "during the outage", wait=True, timeout=5)
        assert isinstance(result, TaskResult) and result.status == "ok"
        await wait_for(lambda: node.bus.stats.buffered >= 1)
        await nats_server.restart()
        await node.bus.wait_connected(timeout=10)
        client = await nats.connect(nats_server.url, allow_reconnect=False)
        try:
            reply = await client.request("tasks.general", b'{"id": "after", "type": "general"}', timeout=5)
            assert json.loads(reply.data)["processedBy"] == "general-1"  # its subscriptions are back
        finally:
            await client.close()
        assert node.bus.stats.flushed >= 1  # what was buffered went out


async def test_a_process_that_joins_late_learns_the_agents_already_there(nats_server: EmbeddedNats) -> None:
    async with Node(nats_server.url, "early") as early:
        await early.agents("e-1", "e-2")  # announced before the late node listens
        async with Node(nats_server.url, "late") as late:
            agents = await late.flock.wait_for_agents(2, capability="text-analysis", timeout=5)
            assert sorted(agent.id for agent in agents) == ["e-1", "e-2"]
            assert {agent.node for agent in agents} == {"early"}
            assert await late.flock.request_capability("text-analysis", {"text": "a b c"}) == {"words": 3}


async def test_a_heartbeat_from_an_unknown_agent_asks_for_announcements(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    async with Node(nats_server.url, "node") as node:  # heartbeats 60 s apart: nobody goes offline
        discover = Collector()
        await plain.subscribe("agent.discover", cb=discover.handle)
        await plain.flush()
        node.flock.presence.discovered_at = -math.inf  # as if its own request at start were long ago
        await plain.publish("agent.stranger.heartbeat", json.dumps({"agentId": "stranger"}).encode())
        await wait_for(lambda: len(discover.messages) == 1)
        assert discover.json()[0]["requester"] == "node"
        # Announcing now fills in what the heartbeat could not say.
        announcement = {
            "id": "stranger",
            "name": "Stranger",
            "capabilities": ["x"],
            "timestamp": "2026-01-01T00:00:00Z",
        }
        await plain.publish("agent.announce", json.dumps(announcement).encode())
        await wait_for(lambda: node.flock.list_agents(capability="x") != [])


async def test_wait_for_agents_says_how_many_were_there(nats_server: EmbeddedNats) -> None:
    async with Node(nats_server.url, "node") as node:
        await node.agents("only-one")
        with pytest.raises(TimeoutError, match=r"1 of 2 agents with 'text-analysis' online after 0\.05 s"):
            await node.flock.wait_for_agents(2, capability="text-analysis", timeout=0.05)


class Listener(Agent):
    """Keeps the broadcasts it hears."""

    heard: list[str]

    async def on_broadcast(self, message: Broadcast) -> None:
        Listener.heard.append(message.type)


async def test_a_broadcast_sent_during_an_outage_reaches_local_agents_once(nats_server: EmbeddedNats) -> None:
    Listener.heard = []
    async with Node(nats_server.url, "node-a") as node:
        await node.system.spawn(Listener, "listener-1")
        await node.settled()
        await nats_server.kill()
        await wait_for(lambda: not node.bus.connected)
        await node.flock.broadcast("during")  # delivered here now, buffered for the others
        await wait_for(lambda: Listener.heard == ["during"])
        await nats_server.restart()
        await node.bus.wait_connected(timeout=10)
        await wait_for(lambda: node.bus.stats.flushed >= 1)
        await node.flock.broadcast("after")  # comes back through NATS, after the buffered one
        await wait_for(lambda: "after" in Listener.heard)
        assert Listener.heard == ["during", "after"]  # not "during" twice
