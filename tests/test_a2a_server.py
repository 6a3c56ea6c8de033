"""The flock as an A2A server, driven by the a2a-sdk's own client against a running gateway.

Each test starts a flock with ``[mcp]`` on a free port and ``[a2a]``, and talks to it over a
real socket: the card, sending (blocking and streaming), get and cancel, auth and the limits,
and bad input, which gets a JSON-RPC error and leaves the server serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from a2a.client import A2ACardResolver, A2AClientError, ClientConfig, create_client
from a2a.client.client import Client
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskState,
)
from a2a.utils.errors import A2AError, TaskNotFoundError
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict, ParseDict

import flockrt
from flockrt import metrics
from flockrt.a2a.card import SCHEMAS_EXTENSION
from flockrt.config import A2aConfig, AuthConfig, FlockConfig, McpConfig, RuntimeConfig
from flockrt.runtime import Flock
from tests.mcp_support import Analyst

pytestmark = pytest.mark.timeout(60)


class Stepper(flockrt.Agent):
    """Reports three steps of progress, then answers."""

    max_concurrent_tasks = 4

    @flockrt.capability("steps")
    async def steps(self, n: int = 3) -> str:
        """Counts to n, reporting each step."""
        for i in range(1, n + 1):
            self.report_progress(i, n, f"step {i} of {n}")
            await asyncio.sleep(0)
        return f"counted to {n}"


class Hang(flockrt.Agent):
    """A capability that runs until cancelled, telling both ends."""

    max_concurrent_tasks = 4
    started: asyncio.Event
    cancelled: asyncio.Event

    @flockrt.capability("hang")
    async def hang(self) -> None:
        Hang.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            Hang.cancelled.set()
            raise


@contextlib.asynccontextmanager
async def a2a_flock(
    *, a2a: A2aConfig | None = None, auth: AuthConfig | None = None, **mcp: Any
) -> AsyncIterator[tuple[Flock, str]]:
    """A flock named ``herd`` with Analyst, Stepper and Hang agents, the gateway on a free port
    and ``[a2a]``; yields it and the gateway's base URL."""
    Hang.started, Hang.cancelled = asyncio.Event(), asyncio.Event()
    config = FlockConfig(
        runtime=RuntimeConfig(name="herd", shutdown_timeout=5.0),
        mcp=McpConfig(**{"port": 0, **mcp}, auth=auth or AuthConfig()),
        a2a=a2a or A2aConfig(),
    )
    async with Flock(config) as flock:
        await flock.spawn_pool(Analyst, 1)
        await flock.spawn_pool(Stepper, 1)
        await flock.spawn_pool(Hang, 1)
        assert flock.web is not None
        yield flock, flock.web.url


@contextlib.asynccontextmanager
async def sdk_client(
    base: str, *, token: str | None = None, streaming: bool = False
) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with httpx.AsyncClient(headers=headers, timeout=10) as http:
        client = await create_client(base, ClientConfig(httpx_client=http, streaming=streaming))
        yield client


def message(skill: str | None = None, *, text: str | None = None, data: Any = None) -> Message:
    parts = []
    if text is not None:
        parts.append(Part(text=text))
    if data is not None:
        parts.append(Part(data=ParseDict(data, struct_pb2.Value())))
    metadata = struct_pb2.Struct()
    if skill is not None:
        metadata.update({"skill": skill})
    return Message(role=Role.ROLE_USER, message_id=f"m-{id(parts)}", parts=parts, metadata=metadata)


async def events(client: Client, request: SendMessageRequest) -> list[StreamResponse]:
    return [event async for event in client.send_message(request)]


async def ask(
    client: Client,
    skill: str | None = None,
    *,
    text: str | None = None,
    data: Any = None,
    later: bool = False,
) -> list[StreamResponse]:
    """Send a message and collect what comes back (``later``: return as soon as the task exists)."""
    configuration = SendMessageConfiguration(return_immediately=later)
    request = SendMessageRequest(message=message(skill, text=text, data=data), configuration=configuration)
    return await events(client, request)


def final_task(responses: list[StreamResponse]) -> Task:
    tasks = [r.task for r in responses if r.HasField("task")]
    assert tasks, f"no task in {responses}"
    return tasks[-1]


def artifact_value(task: Task) -> Any:
    (artifact,) = task.artifacts
    (part,) = artifact.parts
    return part.text if part.WhichOneof("content") == "text" else MessageToDict(part.data)


async def rpc(base: str, body: Any, *, headers: dict[str, str] | None = None) -> httpx.Response:
    """A raw POST to /a2a (``body`` as JSON unless it is bytes)."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", "A2A-Version": "1.0", **(headers or {})}
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(base + "/a2a", content=content, headers=sent)


def send_body(skill: str | None, parts: list[dict[str, Any]], request_id: Any = 1) -> dict[str, Any]:
    msg: dict[str, Any] = {"messageId": "raw-1", "role": "ROLE_USER", "parts": parts}
    if skill is not None:
        msg["metadata"] = {"skill": skill}
    return {"jsonrpc": "2.0", "id": request_id, "method": "SendMessage", "params": {"message": msg}}


# ---------------------------------------------------------------------- the card


async def test_the_card_describes_the_flock_and_lists_its_capabilities_as_skills() -> None:
    async with a2a_flock() as (_flock, base), httpx.AsyncClient() as http:
        card = await A2ACardResolver(http, base).get_agent_card()
    assert card.name == "herd"
    assert card.version == flockrt.__version__
    (interface,) = card.supported_interfaces
    assert (interface.url, interface.protocol_binding) == (base + "/a2a", "JSONRPC")
    assert card.capabilities.streaming
    assert not card.capabilities.push_notifications
    skills = {skill.id: skill for skill in card.skills}
    assert {"text-analysis", "steps", "hang"} <= set(skills)
    steps = skills["steps"]
    assert steps.name == "steps"
    assert steps.description == "Counts to n, reporting each step."
    assert list(steps.tags) == ["flockrt", "capability"]
    assert json.loads(steps.examples[0])["metadata"] == {"skill": "steps"}
    (extension,) = card.capabilities.extensions
    assert extension.uri == SCHEMAS_EXTENSION
    schemas = MessageToDict(extension.params)
    assert schemas["text-analysis"]["required"] == ["text"]
    assert schemas["steps"]["properties"]["n"]["type"] == "integer"
    assert not card.security_schemes  # loopback, no tokens


async def test_the_card_follows_capabilities_as_they_come_and_go() -> None:
    class Late(flockrt.Agent):
        @flockrt.capability("late-skill")
        async def late(self) -> str:
            """Arrives late."""
            return "late"

    async def skills(http: httpx.AsyncClient, base: str) -> set[str]:
        card = await A2ACardResolver(http, base).get_agent_card()
        return {skill.id for skill in card.skills}

    async def until(http: httpx.AsyncClient, base: str, present: bool) -> None:
        async with asyncio.timeout(10):  # each look is a round trip to the gateway: no busy loop
            while ("late-skill" in await skills(http, base)) != present:
                pass

    async with a2a_flock() as (flock, base), httpx.AsyncClient() as http:
        assert "late-skill" not in await skills(http, base)
        pool = await flock.spawn_pool(Late, 1)
        await until(http, base, present=True)
        await pool.stop()
        await until(http, base, present=False)


# ---------------------------------------------------------------------- sending


async def test_a_message_naming_a_skill_runs_that_capability_and_returns_an_artifact() -> None:
    async with a2a_flock() as (_flock, base), sdk_client(base) as client:
        text = final_task(await ask(client, "text-analysis", text="a b c"))
        data = final_task(await ask(client, "text-analysis", data={"text": "a b"}))
        counted = final_task(await ask(client, "steps", data={"n": 2}))
    assert text.status.state == TaskState.TASK_STATE_COMPLETED
    assert artifact_value(text) == {"words": 3}  # a structured result: a data part
    assert artifact_value(data) == {"words": 2}
    assert artifact_value(counted) == "counted to 2"  # a string: a text part
    assert MessageToDict(text.artifacts[0].metadata)["agentId"].startswith("analyst")


async def test_a_message_naming_no_skill_goes_to_the_default_skill_or_task_type() -> None:
    async with (
        a2a_flock(a2a=A2aConfig(default_skill="text-analysis")) as (_f, base),
        sdk_client(base) as client,
    ):
        task = final_task(await ask(client, text="one two"))
        assert artifact_value(task) == {"words": 2}
    async with (
        a2a_flock(a2a=A2aConfig(default_task_type="analysis")) as (_f, base),
        sdk_client(base) as client,
    ):
        task = final_task(await ask(client, text="one two three"))
        assert artifact_value(task) == {"words": 3}
    async with a2a_flock() as (_f, base), sdk_client(base) as client:
        with pytest.raises(A2AError, match="name a skill"):
            await ask(client, text="one")


async def test_streaming_maps_progress_to_status_updates_in_order() -> None:
    async with a2a_flock() as (_flock, base), sdk_client(base, streaming=True) as client:
        responses = await ask(client, "steps", data={"n": 3})
    kinds = [r.WhichOneof("payload") for r in responses]
    assert kinds[0] == "task"
    progress = [
        r.status_update.status.message.parts[0].text
        for r in responses
        if r.HasField("status_update") and r.status_update.status.message.parts
    ]
    assert progress == ["step 1 of 3", "step 2 of 3", "step 3 of 3"]
    updates = [r.status_update for r in responses if r.HasField("status_update")]
    assert MessageToDict(updates[1].status.message.metadata) == {"progress": 1.0, "total": 3.0}
    artifact_at = kinds.index("artifact_update")
    reported_at = [
        i
        for i, r in enumerate(responses)
        if r.HasField("status_update") and r.status_update.status.message.parts
    ]
    assert max(reported_at) < artifact_at
    assert updates[-1].status.state == TaskState.TASK_STATE_COMPLETED
    (part,) = responses[artifact_at].artifact_update.artifact.parts
    assert part.text == "counted to 3"


async def test_get_and_cancel_work_on_a_task_in_flight() -> None:
    async with a2a_flock() as (_flock, base), sdk_client(base) as client:
        (response,) = await ask(client, "hang", data={}, later=True)
        task_id = response.task.id
        await asyncio.wait_for(Hang.started.wait(), 10)
        running = await client.get_task(GetTaskRequest(id=task_id))
        assert running.status.state == TaskState.TASK_STATE_WORKING
        cancelled = await client.cancel_task(CancelTaskRequest(id=task_id))
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        await asyncio.wait_for(Hang.cancelled.wait(), 10)  # the agent's work was cancelled too
        after = await client.get_task(GetTaskRequest(id=task_id))
        assert after.status.state == TaskState.TASK_STATE_CANCELED
        with pytest.raises(A2AError):  # a finished task cannot be cancelled again
            await client.cancel_task(CancelTaskRequest(id=task_id))


async def test_a_client_that_leaves_a_stream_leaves_its_task_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with a2a_flock() as (_flock, base), sdk_client(base, streaming=True) as client:
        request = SendMessageRequest(message=message("hang", data={}))
        stream = client.send_message(request)
        first = await anext(stream)  # the task; then the client closes the stream
        await stream.aclose()  # type: ignore[attr-defined]
        task_id = first.task.id
        await asyncio.wait_for(Hang.started.wait(), 10)
        async with sdk_client(base) as other:
            assert (
                await other.get_task(GetTaskRequest(id=task_id))
            ).status.state == TaskState.TASK_STATE_WORKING
            await other.cancel_task(CancelTaskRequest(id=task_id))
            await asyncio.wait_for(Hang.cancelled.wait(), 10)
            assert artifact_value(final_task(await ask(other, "steps", data={"n": 1}))) == "counted to 1"
    assert not [r for r in caplog.records if r.name == "flockrt.a2a" and r.levelno >= logging.ERROR]


async def test_a_failure_in_the_flock_ends_the_task_failed_with_its_reason() -> None:
    async with a2a_flock(timeout=200) as (_flock, base), sdk_client(base) as client:  # [mcp] timeout, ms
        task = final_task(await ask(client, "hang", data={}))
    assert task.status.state == TaskState.TASK_STATE_FAILED
    words = task.status.message.parts[0].text
    assert "did not finish within 0.2 s" in words
    assert MessageToDict(task.status.message.metadata) == {"error": "timeout"}


async def test_finished_tasks_are_kept_up_to_max_tasks_and_the_oldest_go_first() -> None:
    async with a2a_flock(a2a=A2aConfig(max_tasks=2)) as (flock, base), sdk_client(base) as client:
        ids = [final_task(await ask(client, "text-analysis", text=f"n {i}")).id for i in range(3)]
        with pytest.raises(TaskNotFoundError):
            await client.get_task(GetTaskRequest(id=ids[0]))
        for kept in ids[1:]:
            assert (
                await client.get_task(GetTaskRequest(id=kept))
            ).status.state == TaskState.TASK_STATE_COMPLETED
        assert flock.a2a is not None and flock.a2a.server is not None
        assert flock.a2a.server.forgotten == 1


# ---------------------------------------------------------------------- auth


async def test_tokens_are_required_when_configured_and_declared_in_the_card() -> None:
    auth = AuthConfig(tokens=["sesame", "other"])
    async with a2a_flock(auth=auth) as (_flock, base):
        async with httpx.AsyncClient() as http:
            card = await A2ACardResolver(http, base).get_agent_card()  # the card needs no token
        assert card.security_schemes["bearer"].http_auth_security_scheme.scheme == "Bearer"
        assert "bearer" in card.security_requirements[0].schemes
        async with sdk_client(base) as anonymous:
            with pytest.raises(A2AClientError, match="401"):
                await ask(anonymous, "text-analysis", text="x")
        async with sdk_client(base, token="wrong") as wrong:
            with pytest.raises(A2AClientError, match="401"):
                await ask(wrong, "text-analysis", text="x")
        async with sdk_client(base, token="sesame") as client:
            task = final_task(await ask(client, "text-analysis", text="x y"))
            assert artifact_value(task) == {"words": 2}
            assert task.id in [listed.id for listed in (await client.list_tasks(ListTasksRequest())).tasks]
        async with sdk_client(base, token="other") as stranger:  # tasks belong to their token
            with pytest.raises(TaskNotFoundError):
                await stranger.get_task(GetTaskRequest(id=task.id))
            assert not (await stranger.list_tasks(ListTasksRequest())).tasks


# ---------------------------------------------------------------------- limits and bad input


async def test_bad_input_gets_a_clear_json_rpc_error_and_the_server_goes_on() -> None:
    async with a2a_flock(max_message_bytes=4096) as (_flock, base):

        async def error(body: Any, **options: Any) -> dict[str, Any]:
            response = await rpc(base, body, **options)
            assert response.status_code == 200, response.text
            reply: dict[str, Any] = response.json()["error"]
            return reply

        assert (await error(b"{not json"))["code"] == -32700
        assert "batch" in (await error([send_body("text-analysis", [{"text": "x"}])]))["message"]
        assert (await error({"jsonrpc": "2.0", "id": 1, "method": "Nope"}))["code"] == -32601
        assert (await error({"jsonrpc": "1.0", "id": 1, "method": "SendMessage"}))["code"] == -32600
        unknown = await error(send_body("nope", [{"text": "x"}]))
        assert unknown["code"] == -32602
        assert "unknown skill 'nope'" in unknown["message"]
        mistyped = await error(send_body("text-analysis", [{"data": {"text": 5}}]))
        assert mistyped["code"] == -32602
        assert "parameter 'text' of text-analysis must be a string" in mistyped["message"]
        extra = await error(send_body("text-analysis", [{"data": {"text": "a", "x": 1}}]))
        assert "has no parameter 'x'" in extra["message"]
        files = await error(send_body("text-analysis", [{"url": "http://x/y.png"}]))
        assert "url part" in files["message"]
        shaped = await error({"jsonrpc": "2.0", "id": 2, "method": "SendMessage", "params": {"message": 5}})
        assert shaped["code"] == -32602
        unversioned = await error(send_body("text-analysis", [{"text": "x"}]), headers={"A2A-Version": ""})
        assert "A2A-Version: 1.0" in unversioned["message"]
        missing = await error({"jsonrpc": "2.0", "id": 3, "method": "GetTask", "params": {"id": "no-such"}})
        assert missing["code"] == -32001  # TaskNotFoundError
        oversize = await rpc(base, send_body("text-analysis", [{"text": "x" * 8000}]))
        assert oversize.status_code == 413
        # ... and it still serves.
        ok = await rpc(base, send_body("text-analysis", [{"text": "still here"}]))
        assert ok.json()["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"


async def test_the_rate_limit_and_the_in_flight_limit_are_the_gateways() -> None:
    async with a2a_flock(rate_limit=0.001, rate_burst=2) as (_flock, base):
        statuses = [
            (await rpc(base, send_body("text-analysis", [{"text": "x"}]))).status_code for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        refused = await rpc(base, send_body("text-analysis", [{"text": "x"}]))
        assert refused.json()["error"]["code"] == -32000
        assert refused.headers["Retry-After"] == "1"
    async with a2a_flock(max_inflight=1) as (_flock, base), sdk_client(base) as client:
        later = SendMessageConfiguration(return_immediately=True)
        first = await events(
            client, SendMessageRequest(message=message("hang", data={}), configuration=later)
        )
        await asyncio.wait_for(Hang.started.wait(), 10)
        second = final_task(await ask(client, "hang", data={}))
        assert second.status.state == TaskState.TASK_STATE_REJECTED
        assert "too many tasks in flight" in second.status.message.parts[0].text
        await client.cancel_task(CancelTaskRequest(id=first[0].task.id))


# ---------------------------------------------------------------------- metrics


def counted(method: str, outcome: str) -> float:
    """``flockrt_a2a_requests_total{method, outcome}`` now (the registry is the process's)."""
    sample = metrics.REGISTRY.get_sample_value(
        "flockrt_a2a_requests_total", {"method": method, "outcome": outcome}
    )
    return sample or 0.0


async def test_requests_are_counted_by_method_and_outcome() -> None:
    cases = [
        ("SendMessage", "ok"),
        ("SendStreamingMessage", "ok"),
        ("GetTask", "error"),
        ("SendMessage", "invalid"),
        ("other", "invalid"),
        ("other", "unauthorized"),
        ("other", "rate_limited"),
    ]
    before = {case: counted(*case) for case in cases}
    auth = AuthConfig(tokens=["sesame"])
    async with a2a_flock(auth=auth, rate_limit=0.001, rate_burst=5) as (_flock, base):
        token = {"Authorization": "Bearer sesame"}
        ok = await rpc(base, send_body("text-analysis", [{"text": "x"}]), headers=token)
        assert ok.json()["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
        async with sdk_client(base, token="sesame", streaming=True) as client:
            streamed = await ask(client, "text-analysis", text="a b")
            assert streamed[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
        missing = {"jsonrpc": "2.0", "id": 3, "method": "GetTask", "params": {"id": "no-such"}}
        assert (await rpc(base, missing, headers=token)).json()["error"]["code"] == -32001
        unknown = await rpc(base, send_body("nope", [{"text": "x"}]), headers=token)
        assert unknown.json()["error"]["code"] == -32602
        assert (await rpc(base, b"{not json", headers=token)).json()["error"]["code"] == -32700
        assert (await rpc(base, send_body("text-analysis", [{"text": "x"}]))).status_code == 401
        assert (await rpc(base, b"{}", headers=token)).status_code == 429  # 6th of a burst of 5
        assert metrics.exposition()[0].count(b"flockrt_a2a_request_duration_seconds_count") >= 3
    assert {case: counted(*case) - before[case] for case in cases} == dict.fromkeys(cases, 1.0)
