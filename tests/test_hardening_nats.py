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

from flockrt.agents.agent import Agent, capability, handles_task
from flockrt.bus.durable import DeadLetter
from flockrt.bus.embedded import EmbeddedNats
from flockrt.wire.schema import Codec, TaskMessage, TaskResult
from tests.conftest import wait_for
from tests.test_bus_flock import Node, plain
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
        # Still answering well-formed tasks.
        reply = await plain.request("tasks.general", b'{"id": "ok", "type": "general"}', timeout=5)
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
        assert node.flock.outlet.unsendable == 2  # the reply and task.result
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
