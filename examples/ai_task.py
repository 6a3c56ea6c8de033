"""AI Flock scenario 1, AI task processing: a task published on ``tasks.ai`` reaches an agent
without Claude, which requests the ``claude-ai`` capability from the Claude agent and publishes
the result on ``task.result``.

Two flockrt nodes share one NATS server, as two processes on two machines would: a worker node
with the built-in ``ai`` agent (no model of its own) and a node with the Claude agent, so the
capability request crosses NATS. The task comes from a plain NATS client, as any AI Flock client
would send it. Run it with ``python examples/ai_task.py ["your prompt"]``; it starts an
embedded nats-server on a free port, or uses ``NATS_URL`` if set.

With ANTHROPIC_API_KEY set (and CLAUDE_MODEL, if you like) Claude answers. Without it, a local
stand-in for the Messages API (``examples/messages_api.py``) answers instead, and it says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from flockrt.bus.connection import Message, NatsConnection
from flockrt.config import AgentConfig, ClaudeConfig, FlockConfig, NatsConfig, RuntimeConfig
from flockrt.runtime import Flock

# The stand-in lives next to this file; found also when the example is loaded by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from messages_api import MessagesApiStandIn

PROMPT = "Name three birds that fly in flocks."


def node_config(name: str, url: str, *agents: str, claude: ClaudeConfig | None = None) -> FlockConfig:
    return FlockConfig(
        runtime=RuntimeConfig(name=name),
        nats=NatsConfig(url=url, port=0),
        claude=claude or ClaudeConfig(),
        agents=[AgentConfig(id=agent, class_=agent) for agent in agents],  # built-in names
    )


async def main(nats_url: str | None = None, prompt: str = PROMPT) -> dict[str, Any]:
    """Run the scenario and return the TaskResult as the client received it (JSON)."""
    url = nats_url or os.environ.get("NATS_URL") or "embedded"
    async with contextlib.AsyncExitStack() as stack:
        api_key, base_url = os.environ.get("ANTHROPIC_API_KEY", ""), ""
        if not api_key:
            api = await stack.enter_async_context(MessagesApiStandIn())
            api_key, base_url = "stand-in", api.base_url
            print(
                f"ANTHROPIC_API_KEY is not set: a local stand-in for the Messages API answers at {base_url}"
            )
        claude = ClaudeConfig(
            api_key=api_key, base_url=base_url, model=os.environ.get("CLAUDE_MODEL") or ClaudeConfig().model
        )
        workers = await stack.enter_async_context(Flock(node_config("workers", url, "ai")))
        assert workers.flock is not None and workers.nats_url is not None
        await stack.enter_async_context(
            Flock(node_config("claude-node", workers.nats_url, "claude", claude=claude))
        )
        await workers.flock.wait_for_agents(1, capability="claude-ai")

        # The client: any NATS client that speaks the AI Flock's JSON messages.
        client = NatsConnection(workers.nats_url, name="client")
        await client.start()
        stack.push_async_callback(client.close)
        results: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_result(message: Message) -> None:
            results.put_nowait(message.data)

        await client.subscribe("task.result", on_result)
        await client.flush()
        task = {"id": "ai-task-1", "type": "ai", "priority": "high", "data": {"prompt": prompt}}
        await client.publish("tasks.ai", json.dumps(task).encode())
        print(f"published task {task['id']} on tasks.ai")
        result: dict[str, Any] = json.loads(await asyncio.wait_for(results.get(), timeout=180))

    print(
        f"task.result: task {result['taskId']} {result['status']}, processed by "
        f"{result['processedBy']} in {result['durationMs']:.0f} ms"
    )
    if result["status"] == "ok":
        answer = result["result"]
        usage = answer["usage"]
        print(f"{answer['model']} ({usage['inputTokens']} tokens in, {usage['outputTokens']} out) answered:")
        print(answer["text"])
    else:
        print(f"error: {result['error']}")
    return result


if __name__ == "__main__":
    outcome = asyncio.run(main(prompt=" ".join(sys.argv[1:]) or PROMPT))
    sys.exit(0 if outcome["status"] == "ok" else 1)
