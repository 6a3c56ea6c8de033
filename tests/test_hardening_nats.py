"""Issue 12, the NATS side: every bad input answered, nothing unbounded from outside.

Each test is one defect of the issue, on a real nats-server: the smallest reproduction, and what
a sender sees now.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import msgspec
import nats
import pytest

from flockrt import ActorSystem
from flockrt.agents.agent import Agent, capability, handles_task
from flockrt.bus.durable import DeadLetter
from flockrt.bus.embedded import EmbeddedNats
from flockrt.bus.flock import NatsFlock
from flockrt.config import NatsLimits
from flockrt.errors import NoCapableAgent, UnknownAgent
from flockrt.flock.directory import Directory
from flockrt.flock.local import LocalFlock
from flockrt.wire.schema import MAX_DEPTH, AgentAnnouncement, Codec, Heartbeat, TaskMessage, TaskResult
from tests.conftest import wait_for
from tests.test_bus_flock import General, Node, plain
from tests.test_directory import FakeClock
from tests.test_durable import Worker, connection, durable, stored

__all__ = ["plain"]  # a fixture, imported for the tests below

DEEP = b'{"id":"d","type":"general","data":' + b"[" * 1000 + b"]" * 1000 + b"}"
"""The issue's reproduction: a task nested 1,000 deep (msgspec raises RecursionError)."""

MSGPACK_DEEP = b"\x83\xa2id\xa1d\xa4type\xa7general\xa4data" + b"\x91" * 5000 + b"\x90"
"""The same in msgpack: {"id": "d", "type": "general", "data": [[[...]]]}, 5,000 deep."""


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


class Big(Agent):
    """Answers with as many bytes as asked for: a result over NATS's max_payload on demand."""

    @handles_task("grow")
    async def grow(self, task: TaskMessage) -> str:
        return "x" * int(task.data)

    @capability("grow")
    async def grow_capability(self, size: int) -> str:
        return "x" * size

    @capability("fail")
    async def fail(self) -> None:
        raise ValueError("nothing to do")


# ---------------------------------------------------------------------- defect 1


async def test_a_task_nested_too_deeply_gets_an_error_reply_and_is_counted_as_invalid(
    nats_server: EmbeddedNats, plain: nats.NATS, caplog: pytest.LogCaptureFixture
) -> None:
    async with Node(nats_server.url, "node-a") as node:
        await node.agents("general-1")
        reply = await plain.request("tasks.general", DEEP, timeout=5)
        answer = json.loads(reply.data)
        assert answer["status"] == "error" and "nested too deeply" in answer["error"], answer
        reply = await plain.request(
            "tasks.general", MSGPACK_DEEP, timeout=5, headers={"Content-Type": "application/msgpack"}
        )
        assert msgspec.msgpack.decode(reply.data)["status"] == "error"
        assert node.flock.invalid_messages["tasks.general"] == 2
        assert node.bus.stats.handler_errors == 0
        # Still answering well-formed tasks, nested as deep as docs/flock.md promises too.
        reply = await plain.request("tasks.general", b'{"id": "ok", "type": "general"}', timeout=5)
        assert json.loads(reply.data)["status"] == "ok"
        allowed = b'{"id":"deep","type":"general","data":' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}"
        reply = await plain.request("tasks.general", allowed, timeout=5)
        assert json.loads(reply.data)["status"] == "ok"
    assert errors_logged(caplog) == []
    assert "nested too deeply" in caplog.text  # a WARNING line


async def test_a_capability_request_nested_too_deeply_gets_a_service_error_reply(
    nats_server: EmbeddedNats, plain: nats.NATS, caplog: pytest.LogCaptureFixture
) -> None:
    deep = b'{"capability":"text-analysis","parameters":' + b"[" * 1000 + b"]" * 1000 + b"}"
    async with Node(nats_server.url, "node-a") as node:
        await node.agents("general-1")
        reply = await plain.request("capability.text-analysis", deep, timeout=5)
        assert "nested too deeply" in json.loads(reply.data)["error"]
        assert reply.headers is not None and reply.headers["Nats-Service-Error-Code"] == "400"
        assert "nested too deeply" in reply.headers["Nats-Service-Error"]
        assert node.flock.invalid_messages["capability.text-analysis"] == 1
        assert node.bus.stats.handler_errors == 0
    assert errors_logged(caplog) == []


def test_the_codec_turns_every_decode_failure_into_invalid_message() -> None:
    codec = Codec()
    for data in (DEEP, b"[" * 100_000, b'{"id": "x", "type": "t", "data": 1e999999}'):
        with pytest.raises(ValueError, match=r"invalid message on 'tasks\.x'"):
            codec.decode("tasks.x", data, TaskMessage)
    with pytest.raises(ValueError, match="nested too deeply"):
        codec.decode("tasks.x", MSGPACK_DEEP, TaskMessage, "application/msgpack")


# ---------------------------------------------------------------------- defect 2


async def test_a_durable_task_nested_too_deeply_is_dead_lettered_once(nats_server: EmbeddedNats) -> None:
    bus = connection(nats_server.url)
    await bus.start()
    letters: list[bytes] = []

    async def collect(message: Any) -> None:
        letters.append(message.data)

    try:
        await bus.subscribe("tasks.dead", collect)
        tasks = durable(bus, max_deliver=3)
        await tasks.setup()
        worker = Worker()
        consumer = await tasks.consume("general", worker)
        await bus.publish("tasks.general", DEEP)  # a plain publish: the stream stores it anyway
        await tasks.submit(TaskMessage(id="after", type="general", data=1))
        await wait_for(lambda: len(letters) == 1 and tasks.stats.acked == 1)
        await consumer.stop()
        letter = Codec().decode("tasks.dead", letters[0], DeadLetter)
        assert "nested too deeply" in letter.reason and letter.deliveries == 1
        assert (tasks.stats.invalid, tasks.stats.dead_lettered, tasks.stats.redelivered) == (1, 1, 0)
        assert worker.done == ["after"]
        assert await stored(nats_server.url, "tasks.general") == 0  # settled, not coming back
    finally:
        await bus.close()


# ---------------------------------------------------------------------- defect 3


async def test_a_task_result_over_max_payload_becomes_an_error_result(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    results: list[dict[str, Any]] = []

    async def collect(msg: Any) -> None:
        results.append(json.loads(msg.data))

    await plain.subscribe("task.result", cb=collect)
    async with Node(nats_server.url, "node-a") as node:
        await node.system.spawn(Big, "big-1")
        await node.settled()
        size = 2 * plain.max_payload
        task = {"id": "huge", "type": "grow", "data": size}
        reply = await plain.request("tasks.grow", json.dumps(task).encode(), timeout=5)
        answer = json.loads(reply.data)
        assert answer["taskId"] == "huge" and answer["status"] == "error", answer
        assert answer["processedBy"] == "big-1"
        assert "over the NATS server's max_payload" in answer["error"]
        await wait_for(lambda: any(r["taskId"] == "huge" for r in results))
        assert [r["status"] for r in results if r["taskId"] == "huge"] == ["error"]
        assert node.flock.outlet.unsendable == 1  # one result, replaced once: on task.result and the reply
        # The same for a capability (one mechanism), with the service error headers.
        request = {"capability": "grow", "parameters": {"size": size}}
        reply = await plain.request("capability.grow", json.dumps(request).encode(), timeout=5)
        assert "over the NATS server's max_payload" in json.loads(reply.data)["error"]
        assert reply.headers is not None and reply.headers["Nats-Service-Error-Code"] == "500"
        # A result that fits still goes.
        outcome = await node.flock.submit("grow", 10, wait=True, timeout=5)
        assert isinstance(outcome, TaskResult) and outcome.result == "x" * 10


# ---------------------------------------------------------------------- defect 4


async def test_a_malformed_direct_query_with_a_reply_subject_gets_an_error_reply(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    async with Node(nats_server.url, "node-a") as node:
        await node.agents("general-1")
        reply = await plain.request("agent.general-1.inbox", b'{"type":"query","message":"hi"}', timeout=5)
        answer = json.loads(reply.data)
        assert answer["type"] == "response" and answer["from"] == "general-1"
        assert "required field is missing" in answer["metadata"]["error"], answer
        assert node.flock.invalid_messages["agent.general-1.inbox"] == 1
        # A well-formed query is still answered.
        query = {"id": "q", "from": "me", "to": "general-1", "type": "query", "message": "hi"}
        reply = await plain.request("agent.general-1.inbox", json.dumps(query).encode(), timeout=5)
        assert json.loads(reply.data)["message"] == "general-1 got hi"


# ---------------------------------------------------------------------- defect 16


async def test_capability_errors_carry_service_error_headers_and_count_in_srv_stats(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    async with Node(nats_server.url, "node-a") as node:
        await node.system.spawn(Big, "big-1")
        await node.settled()
        reply = await plain.request("capability.fail", b'{"capability": "fail"}', timeout=5)
        assert "nothing to do" in json.loads(reply.data)["error"]
        assert reply.headers is not None and reply.headers["Nats-Service-Error-Code"] == "500"
        assert "nothing to do" in reply.headers["Nats-Service-Error"]
        await plain.request("capability.fail", b"not json", timeout=5)
        ok = await plain.request(
            "capability.grow", b'{"capability": "grow", "parameters": {"size": 3}}', timeout=5
        )
        assert json.loads(ok.data)["result"] == "xxx" and not ok.headers
        stats = json.loads((await plain.request("$SRV.STATS.flockrt", b"", timeout=5)).data)
        endpoints = {endpoint["subject"]: endpoint for endpoint in stats["endpoints"]}
        assert endpoints["capability.fail"]["num_requests"] == 2
        assert endpoints["capability.fail"]["num_errors"] == 2
        assert endpoints["capability.fail"]["last_error"].startswith("400 invalid message")
        assert endpoints["capability.grow"]["num_errors"] == 0


# ---------------------------------------------------------------------- defect 11 (the flock part)


async def test_a_message_for_an_agent_nobody_knows_or_hears_raises_unknown_agent(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    heard: list[dict[str, Any]] = []

    async def collect(msg: Any) -> None:
        heard.append(json.loads(msg.data))

    await plain.subscribe("agent.ghost.inbox", cb=collect)  # listening, but never announced
    await plain.flush()
    async with Node(nats_server.url, "node-a") as node:
        await node.agents("general-1")
        with pytest.raises(UnknownAgent, match="nosuch"):
            await node.flock.send_message("nosuch", "hello")
        with pytest.raises(UnknownAgent):
            await node.flock.send("no.such", "hello")  # not even a possible id
        await node.flock.send("ghost", "boo", type="command")  # not in the directory, yet heard
        await wait_for(lambda: [m["message"] for m in heard] == ["boo"])
        assert heard[0]["to"] == "ghost" and heard[0]["type"] == "command"


async def test_submit_with_check_says_when_nobody_handles_the_type(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    results: list[dict[str, Any]] = []

    async def collect(msg: Any) -> None:
        results.append(json.loads(msg.data))

    await plain.subscribe("task.result", cb=collect)
    async with Node(nats_server.url, "producer") as producer, Node(nats_server.url, "worker") as worker:
        await worker.agents("general-1")
        with pytest.raises(NoCapableAgent, match="nosuchtype"):
            await producer.flock.submit("nosuchtype", 1, check=True)
        assert isinstance(await producer.flock.submit("nosuchtype", 1), str)  # the fast path: unchecked
        task_id = await producer.flock.submit("general", "hi", check=True)
        await wait_for(lambda: any(r["taskId"] == task_id and r["status"] == "ok" for r in results))
    local = LocalFlock(ActorSystem("one"))
    with pytest.raises(NoCapableAgent):
        await local.submit("nosuchtype", 1, check=True)


# ---------------------------------------------------------------------- defect 12


def test_the_directory_forgets_unannounced_and_offline_agents_and_is_bounded() -> None:
    clock = FakeClock()
    directory = Directory(
        10.0, clock=clock, wallclock=clock.wall, max_agents=3, unannounced_ttl=20.0, offline_ttl=100.0
    )
    for number in range(5):  # made-up agents, heard of by heartbeats only
        directory.on_heartbeat(Heartbeat(agent_id=f"fake-{number}"))
    assert len(directory) == 3 and directory.refused == 2
    # An agent that announces itself takes the place of the longest silent unannounced one.
    clock.advance(1.0)
    directory.on_heartbeat(Heartbeat(agent_id="fake-1"))
    directory.on_heartbeat(Heartbeat(agent_id="fake-2"))
    assert directory.on_announcement(AgentAnnouncement(id="real", name="real")) is not None
    assert "fake-0" not in directory and "real" in directory
    # Silent unannounced agents are forgotten after unannounced_ttl ...
    clock.advance(21.0)
    directory.sweep()
    assert [info.id for info in directory.list()] == ["real"]
    # ... offline ones after offline_ttl of silence.
    clock.advance(79.0)
    directory.sweep()
    assert [info.status for info in directory.list()] == ["offline"]
    clock.advance(1.0)
    directory.sweep()
    assert len(directory) == 0 and directory.evicted == 4
    # A full directory of live announced agents refuses newcomers, announced or not.
    for name in ("a", "b", "c"):
        directory.on_announcement(AgentAnnouncement(id=name, name=name))
    assert directory.on_announcement(AgentAnnouncement(id="d", name="d")) is None
    assert directory.on_heartbeat(Heartbeat(agent_id="e")) is None
    assert sorted(info.id for info in directory.list()) == ["a", "b", "c"]


async def test_fake_heartbeats_cannot_grow_the_directory_without_bound(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    limits = NatsLimits(directory_max_agents=50, max_id_length=64)
    system = ActorSystem("node-a")
    bus = connection(nats_server.url)
    await bus.start()
    flock = NatsFlock(system, bus, node="node-a", limits=limits)
    await flock.start()
    try:
        huge = json.dumps({"agentId": "x" * 500_000}).encode()
        for _ in range(20):
            await plain.publish("agent.x.heartbeat", huge)
        for number in range(500):
            await plain.publish(
                f"agent.fake-{number}.heartbeat", json.dumps({"agentId": f"fake-{number}"}).encode()
            )
        await plain.flush()
        await wait_for(lambda: flock.directory.refused + len(flock.directory) == 500)
        assert len(flock.directory) == 50
        assert flock.invalid_messages["agent.*.heartbeat"] == 20
        assert len(flock.invalid_messages) == 1  # made-up subjects do not grow the counters
        big = {"id": "big", "name": "big", "capabilities": [f"c{n}" for n in range(300)]}
        await plain.publish("agent.announce", json.dumps(big).encode())
        await plain.flush()
        await wait_for(lambda: flock.invalid_messages["agent.announce"] == 1)
        assert "big" not in flock.directory
    finally:
        await system.shutdown()
        await flock.close()
        await bus.close()


# ---------------------------------------------------------------------- defect 13


async def test_batch_items_are_republished_only_on_task_subjects(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    seen: list[str] = []

    async def collect(msg: Any) -> None:
        seen.append(msg.subject)

    task = {"id": "t", "type": "other"}
    batch = [
        {"subject": "$JS.API.STREAM.DELETE.TASKS", "message": task},
        {"subject": "agent.announce", "message": {"id": "evil", "name": "evil"}},
        {"subject": "broadcast", "message": {"type": "x"}},
        {"subject": "tasks.other", "message": task},
    ]
    async with Node(nats_server.url, "node-a") as node:
        await node.agents("general-1")  # (its announcement goes out before we listen)
        for subject in ("$JS.API.>", "agent.announce", "tasks.other", "tasks.dead", "broadcast"):
            await plain.subscribe(subject, cb=collect)
        await plain.flush()
        await plain.publish("batch.messages", json.dumps(batch).encode())
        await plain.flush()
        await wait_for(lambda: "tasks.other" in seen)  # after the refused ones, if they went
        assert seen == ["tasks.other"]
        assert node.flock.invalid_messages["batch.messages"] == 3
        # As a request: an error result for each refused item, in order.
        reply = await plain.request("batch.messages", json.dumps(batch[:2]).encode(), timeout=5)
        answers = json.loads(reply.data)
        assert [a["status"] for a in answers] == ["error", "error"]
        assert "batch items may only be tasks on tasks.<type>" in answers[0]["error"]
        assert seen == ["tasks.other"]


# ---------------------------------------------------------------------- defect 14


async def test_a_node_answers_discovery_at_most_once_per_interval(
    nats_server: EmbeddedNats, plain: nats.NATS
) -> None:
    announced: list[str] = []

    async def collect(msg: Any) -> None:
        announced.append(json.loads(msg.data)["id"])

    await plain.subscribe("agent.announce", cb=collect)
    await plain.flush()
    system = ActorSystem("node-a")
    bus = connection(nats_server.url)
    await bus.start()
    flock = NatsFlock(system, bus, node="node-a", limits=NatsLimits(discover_interval=0.3))
    await flock.start()
    try:
        await system.spawn(General, "general-1")
        await flock.flush()
        await wait_for(lambda: announced == ["general-1"])  # its own announcement
        request = json.dumps({"requester": "flooder"}).encode()
        for _ in range(200):
            await plain.publish("agent.discover", request)
        await plain.flush()
        presence = flock.presence
        await wait_for(lambda: presence.discover_requests_deferred >= 199)
        # The first is answered at once (unless the agent's own announcement was just now),
        # the others share one answer at the end of the interval.
        await wait_for(lambda: len(announced) == 3 and presence._discover_answer is None)
        await flock.flush()
        await bus.flush()
        await plain.flush()
        assert announced == ["general-1"] * 3
    finally:
        await system.shutdown()
        await flock.close()
        await bus.close()
