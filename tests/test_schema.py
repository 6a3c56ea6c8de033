"""The wire contract: camelCase JSON (or msgpack), ISO-8601 timestamps, strict but tolerant decoding."""

from __future__ import annotations

import contextlib
import gc
import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flockrt.wire import subjects
from flockrt.wire.schema import (
    MSGPACK,
    AgentAnnouncement,
    AgentEvent,
    BatchItem,
    Broadcast,
    CapabilityRequest,
    CapabilityResponse,
    Codec,
    DirectMessage,
    Heartbeat,
    InvalidMessage,
    TaskMessage,
    TaskResult,
)

STAMP = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

# One example of every message, with the exact JSON field names of the AI Flock wire table.
EXAMPLES: list[tuple[Any, set[str]]] = [
    (
        TaskMessage(
            id="t1", type="general", data={"text": "hi"}, priority="high", requester="a", timeout=500
        ),
        {"id", "type", "priority", "data", "requester", "timeout", "metadata"},
    ),
    (
        TaskResult(task_id="t1", result=3, processed_by="a", status="ok", duration_ms=1.5),
        {"taskId", "result", "processedBy", "status", "error", "durationMs", "errorType"},
    ),
    (
        AgentAnnouncement(id="a", name="A", capabilities=["x"], max_concurrent_tasks=2, timestamp=STAMP),
        {"id", "name", "capabilities", "maxConcurrentTasks", "timestamp", "node", "capabilitySchemas"},
    ),
    (
        Heartbeat(agent_id="a", status="online", timestamp=STAMP, uptime=10, tasks_processed=4),
        {"agentId", "status", "timestamp", "uptime", "tasksProcessed", "load"},
    ),
    (AgentEvent(type="reload", data=[1]), {"type", "data"}),
    (Broadcast(type="notice", message="hello", data=None), {"type", "message", "data"}),
    (
        DirectMessage(id="m", sender="a", to="b", message="?", type="query", correlation_id="c"),
        {"id", "from", "to", "message", "type", "metadata", "correlationId"},
    ),
    (
        CapabilityRequest(
            capability="x", parameters={"k": 1}, requester="a", timeout=1000, correlation_id="c"
        ),
        {"capability", "parameters", "requester", "timeout", "correlationId"},
    ),
    (
        CapabilityResponse(correlation_id="c", result={"ok": True}, agent_id="b", error=None),
        {"correlationId", "result", "agentId", "error", "errorType"},
    ),
]


@pytest.mark.parametrize(("message", "fields"), EXAMPLES, ids=lambda v: type(v).__name__)
def test_json_field_names_and_round_trip(message: Any, fields: set[str]) -> None:
    codec = Codec()
    data = codec.encode(message)
    assert set(json.loads(data)) == fields
    assert codec.decode("s", data, type(message)) == message
    assert codec.decode("s", codec.encode(message, msgpack=True), type(message), MSGPACK) == message


def test_timestamps_are_iso_8601_utc() -> None:
    encoded = json.loads(Codec().encode(Heartbeat(agent_id="a", timestamp=STAMP)))
    assert encoded["timestamp"] == "2026-11-25T12:00:00Z"


def test_seed_shaped_json_from_a_javascript_peer_decodes() -> None:
    # As a Node.js client of the AI Flock design would publish it: toISOString() stamps with
    # milliseconds, fields in any order, extra fields this version does not know.
    raw = (
        b'{"agentId":"js-agent","status":"busy","timestamp":"2026-11-25T12:00:00.123Z",'
        b'"uptime":1234,"tasksProcessed":7,"memoryUsage":{"rss":1}}'
    )
    beat = Codec().decode("agent.js-agent.heartbeat", raw, Heartbeat)
    assert beat.agent_id == "js-agent"
    assert beat.timestamp == datetime(2026, 11, 25, 12, 0, 0, 123000, tzinfo=UTC)
    task = Codec().decode("tasks.general", b'{"id":"1","type":"general","data":"x"}', TaskMessage)
    assert task.priority == "medium"  # optional fields take their defaults


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        (b'{"id": 1, "type": "g"}', "id", "expected `str`, got `int`"),
        (b'{"type": "g"}', "id", "required field is missing"),
        (b'{"id": "1", "type": "g", "priority": "urgent"}', "priority", "invalid enum value 'urgent'"),
        (b'{"id": "1", "type": "g", "metadata": []}', "metadata", "expected `object | null`, got `array`"),
        (b"not json", None, "not valid JSON"),
        (b"[1, 2]", None, "expected `object`, got `array`"),
        (b"", None, "not valid JSON"),
    ],
)
def test_invalid_messages_name_subject_and_field(raw: bytes, field: str | None, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        Codec().decode("tasks.g", raw, TaskMessage)
    assert info.value.subject == "tasks.g"
    assert info.value.field == field
    assert reason in info.value.reason
    assert "tasks.g" in str(info.value)


def test_nested_fields_are_named() -> None:
    raw = b'{"id": "a", "name": "A", "capabilities": ["x", 2], "timestamp": "2026-11-25T12:00:00Z"}'
    with pytest.raises(InvalidMessage) as info:
        Codec().decode("agent.announce", raw, AgentAnnouncement)
    assert info.value.field == "capabilities[1]"


def test_oversize_payload_is_rejected_before_decoding() -> None:
    codec = Codec(max_bytes=64)
    with pytest.raises(InvalidMessage, match="over the 64 byte limit"):
        codec.decode("tasks.g", b'{"id": "1", "type": "g", "data": "' + b"x" * 100 + b'"}', TaskMessage)


def test_bad_msgpack_is_named_as_such() -> None:
    with pytest.raises(InvalidMessage, match="not valid msgpack"):
        Codec().decode("tasks.g", b"\xc1", TaskMessage, MSGPACK)


def test_batch_items_carry_their_subject() -> None:
    codec = Codec()
    items = [
        BatchItem(subject="tasks.general", message=TaskMessage(id=str(i), type="general")) for i in range(3)
    ]
    decoded = codec.decode(subjects.BATCH, codec.encode(items), list[BatchItem])
    assert [item.subject for item in decoded] == ["tasks.general"] * 3
    task = msgspec.convert(decoded[2].message, TaskMessage)
    assert task.id == "2"


@settings(max_examples=300)
@given(st.binary(max_size=200), st.booleans())
def test_random_bytes_never_raise_anything_but_invalid_message(data: bytes, msgpack: bool) -> None:
    codec = Codec()
    for message_type in (TaskMessage, Heartbeat, DirectMessage, list[BatchItem]):
        with contextlib.suppress(InvalidMessage):
            codec.decode("s", data, message_type, MSGPACK if msgpack else None)


@settings(max_examples=200)
@given(
    st.dictionaries(st.sampled_from(["id", "type", "priority", "data", "timeout", "x"]), st.from_type(object))
)
def test_random_json_objects_never_raise_anything_but_invalid_message(obj: dict[str, Any]) -> None:
    try:
        data = json.dumps(obj, default=str).encode()
    except (TypeError, ValueError):
        return
    with contextlib.suppress(InvalidMessage):
        Codec().decode("tasks.g", data, TaskMessage)


def test_subjects() -> None:
    assert subjects.tasks("general") == "tasks.general"
    assert subjects.heartbeat("a-1") == "agent.a-1.heartbeat"
    assert subjects.events("a-1") == "agent.a-1.events"
    assert subjects.inbox("a-1") == "agent.a-1.inbox"
    assert subjects.capability("text-analysis") == "capability.text-analysis"
    for bad in ("", "a.b", "a b", "*", ">", "a>"):
        with pytest.raises(ValueError, match="cannot be part of a NATS subject"):
            subjects.inbox(bad)


def test_tasks_and_results_stay_out_of_the_garbage_collector() -> None:
    """A TaskMessage or TaskResult cannot refer back to itself (frozen, and its data is the
    sender's), so it is not tracked (``gc=False``): one object less for every collection to
    walk per task in flight, 16 bytes less each. Even with containers in it."""
    task = TaskMessage(id="t-1", type="echo", data={"items": [1, 2]}, metadata={"k": []})
    result = TaskResult(task_id="t-1", result={"items": [1, 2]}, processed_by="a")
    assert not gc.is_tracked(task) and not gc.is_tracked(result)
    assert msgspec.json.decode(msgspec.json.encode(task), type=TaskMessage) == task
