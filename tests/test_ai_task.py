"""AI Flock scenario 1 end to end: a task on tasks.ai reaches an agent without Claude, which
requests claude-ai from the Claude agent of another process; the result is on task.result.

Over a real nats-server, with the local Messages API stand-in answering for Anthropic. Also
the shipped flock with a key: every AI Flock task type gets its result on task.result.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import nats
import pytest

from examples.messages_api import MessagesApiStandIn
from flockrt.bus.embedded import EmbeddedNats
from flockrt.config import AgentConfig, ClaudeConfig, FlockConfig, NatsConfig, RuntimeConfig, load_config
from flockrt.runtime import Flock
from tests.nats_server import Results

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-key"


def answer(request: dict[str, Any]) -> str:
    return f"Claude says: {request['messages'][-1]['content']}"


@pytest.fixture
async def api() -> AsyncIterator[MessagesApiStandIn]:
    async with MessagesApiStandIn(answer) as server:
        yield server


@pytest.fixture
def client(plain_nats: tuple[nats.NATS, Results]) -> tuple[nats.NATS, Results]:
    return plain_nats


def node(name: str, url: str, *agents: tuple[str, str], claude: ClaudeConfig | None = None) -> Flock:
    return Flock(
        FlockConfig(
            runtime=RuntimeConfig(name=name),
            nats=NatsConfig(url=url),
            claude=claude or ClaudeConfig(),
            agents=[AgentConfig(id=agent_id, class_=cls) for agent_id, cls in agents],
        )
    )


async def publish_task(connection: nats.NATS, task: dict[str, Any]) -> None:
    await connection.publish(f"tasks.{task['type']}", json.dumps(task).encode())


async def test_an_ai_task_is_answered_by_claude_through_an_agent_without_it(
    nats_server: EmbeddedNats, api: MessagesApiStandIn, client: tuple[nats.NATS, Results]
) -> None:
    connection, results = client
    claude = ClaudeConfig(api_key=KEY, base_url=api.base_url, model="claude-test")
    async with (
        node("workers", nats_server.url, ("ai", "ai")) as workers,
        node("claude-node", nats_server.url, ("claude", "claude"), claude=claude) as claude_node,
    ):
        assert workers.flock is not None and claude_node.flock is not None
        # The worker process has no Claude of its own: the capability request crosses NATS.
        assert not workers.flock.has_skill("capability", "claude-ai")
        assert claude_node.flock.has_skill("capability", "claude-ai")
        task = {"id": "ai-1", "type": "ai", "priority": "high", "data": {"prompt": "What is a flock?"}}
        await publish_task(connection, task)
        result = await results.next()
    assert (result["taskId"], result["status"], result["processedBy"], result["error"]) == (
        "ai-1",
        "ok",
        "ai",
        None,
    )
    assert result["result"]["text"] == "Claude says: What is a flock?"
    assert result["result"]["model"] == "claude-test"
    assert [r["messages"] for r in api.requests] == [[{"role": "user", "content": "What is a flock?"}]]


async def test_an_ai_task_without_a_claude_agent_fails_with_a_clear_result(
    nats_server: EmbeddedNats, client: tuple[nats.NATS, Results]
) -> None:
    connection, results = client
    async with node("workers", nats_server.url, ("ai", "ai")):
        await publish_task(connection, {"id": "ai-2", "type": "ai", "data": "anyone?"})
        result = await results.next()
    assert (result["taskId"], result["status"], result["processedBy"]) == ("ai-2", "error", "ai")
    assert "no agent offers capability 'claude-ai'" in result["error"]


async def test_a_claude_failure_becomes_the_tasks_error(
    nats_server: EmbeddedNats, api: MessagesApiStandIn, client: tuple[nats.NATS, Results]
) -> None:
    from examples.messages_api import Failure

    connection, results = client
    # Not to be retried (the SDK retries a 500 unless the server says otherwise).
    api.fail_next(Failure(500, "Internal server error", headers=(("x-should-retry", "false"),)))
    claude = ClaudeConfig(api_key=KEY, base_url=api.base_url)
    async with (
        node("workers", nats_server.url, ("ai", "ai")),
        node("claude-node", nats_server.url, ("claude", "claude"), claude=claude),
    ):
        await publish_task(connection, {"id": "ai-3", "type": "ai", "data": "fail please"})
        failed = await results.next()
        await publish_task(connection, {"id": "ai-4", "type": "ai", "data": "and now?"})
        recovered = await results.next()
    assert (failed["taskId"], failed["status"]) == ("ai-3", "error")
    assert "Claude API server error (500 api_error): Internal server error" in failed["error"]
    assert (recovered["taskId"], recovered["status"]) == ("ai-4", "ok")


async def test_the_shipped_flock_with_a_key_answers_every_task_type(
    nats_server: EmbeddedNats, api: MessagesApiStandIn, client: tuple[nats.NATS, Results]
) -> None:
    connection, results = client
    config = load_config(ROOT / "configs" / "flock.toml", env={"ANTHROPIC_API_KEY": KEY})
    assert config.nats is not None
    config = msgspec.structs.replace(
        config,
        nats=msgspec.structs.replace(config.nats, url=nats_server.url),
        claude=msgspec.structs.replace(config.claude, base_url=api.base_url),
    )
    async with Flock(config):
        tasks = [
            {"id": "t-general", "type": "general", "data": "hi"},
            {"id": "t-processing", "type": "processing", "data": {"text": "a  b", "operation": "upper"}},
            {"id": "t-analysis", "type": "analysis", "data": "Two words."},
            {"id": "t-ai", "type": "ai", "data": "hello Claude"},
        ]
        for task in tasks:
            await publish_task(connection, task)
        answered = {}
        for _ in tasks:
            result = await results.next()
            answered[result["taskId"]] = result
    assert {r["status"] for r in answered.values()} == {"ok"}
    assert answered["t-general"]["result"] == "echo: hi"
    assert answered["t-processing"]["result"] == {"operation": "upper", "text": "A  B"}
    assert answered["t-analysis"]["result"]["words"] == 2
    assert answered["t-ai"]["result"]["text"] == "Claude says: hello Claude"
    assert answered["t-ai"]["processedBy"] == "ai"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("examples_ai_task", ROOT / "examples" / "ai_task.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_the_example_on_a_nats_server_of_its_own(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("CLAUDE_MODEL", raising=False)
    result = await load_example().main(nats_server.url, prompt="Hello, flock.")
    assert (result["taskId"], result["status"], result["processedBy"]) == ("ai-task-1", "ok", "ai")
    assert result["result"]["text"] == f"(local stand-in for {ClaudeConfig().model}) You said: Hello, flock."
    assert "a local stand-in for the Messages API answers at http://127.0.0.1:" in capsys.readouterr().out


def test_the_example_runs_standalone_without_a_key() -> None:
    skipped = ("ANTHROPIC_API_KEY", "CLAUDE_MODEL", "NATS_URL")
    env = {k: v for k, v in os.environ.items() if k not in skipped}
    # This checkout's flockrt, whatever else the environment has installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "examples/ai_task.py", "Name three birds."],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        "ANTHROPIC_API_KEY is not set: a local stand-in for the Messages API answers at"
    )
    assert lines[1] == "published task ai-task-1 on tasks.ai"
    assert lines[2].startswith("task.result: task ai-task-1 ok, processed by ai in ")
    assert lines[-1] == f"(local stand-in for {ClaudeConfig().model}) You said: Name three birds."
