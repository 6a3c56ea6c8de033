"""AI Flock scenario 1, AI task processing, end to end over NATS.

A client publishes a task on ``tasks.ai``. An agent without a model (``AiTaskAgent``, in the
"workers" process) takes it from the queue group, requests the ``claude-ai`` capability, which
the Claude agent of another process (``claude-node``) answers over NATS, and the result comes
back to the client on ``task.result``.

Both flockrt processes run in this one script, each with its own actor system and NATS
connection, on an embedded nats-server, so the example needs nothing but the package:

    python examples/ai_task.py "Name three birds that fly in flocks."

With ANTHROPIC_API_KEY set (and CLAUDE_MODEL, if you like) Claude answers. Without it, a local
stand-in for the Messages API (examples/messages_api.py) answers instead, and the script says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys

from messages_api import MessagesApiStandIn  # examples/messages_api.py, next to this script

from flockrt.bus.connection import Message, NatsConnection
from flockrt.bus.embedded import EmbeddedNats
from flockrt.config import AgentConfig, ClaudeConfig, FlockConfig, NatsConfig, RuntimeConfig
from flockrt.runtime import Flock


async def main(prompt: str) -> int:
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(EmbeddedNats())
        api_key, base_url = os.environ.get("ANTHROPIC_API_KEY", ""), ""
        if not api_key:
            api = await stack.enter_async_context(MessagesApiStandIn())
            api_key, base_url = "stand-in", api.base_url
            print(
                f"ANTHROPIC_API_KEY is not set: a local stand-in for the Messages API answers at {base_url}"
            )
        claude = ClaudeConfig(
            api_key=api_key, base_url=base_url, model=os.environ.get("CLAUDE_MODEL", ClaudeConfig().model)
        )
        nats = NatsConfig(url=server.url)
        # Two flockrt processes on one NATS: one with an agent that has no model, one with Claude.
        await stack.enter_async_context(
            Flock(
                FlockConfig(
                    runtime=RuntimeConfig(name="workers"),
                    nats=nats,
                    agents=[AgentConfig(id="ai", class_="ai")],
                )
            )
        )
        await stack.enter_async_context(
            Flock(
                FlockConfig(
                    runtime=RuntimeConfig(name="claude-node"),
                    nats=nats,
                    claude=claude,
                    agents=[AgentConfig(id="claude", class_="claude")],
                )
            )
        )

        # The client: any NATS client that speaks the AI Flock's JSON messages.
        client = NatsConnection(server.url, name="client")
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

        result = json.loads(await asyncio.wait_for(results.get(), timeout=180))
        print(
            f"task.result: task {result['taskId']} {result['status']}, processed by "
            f"{result['processedBy']} in {result['durationMs']:.0f} ms"
        )
        if result["status"] != "ok":
            print(f"error: {result['error']}")
            return 1
        answer = result["result"]
        usage = answer["usage"]
        print(f"{answer['model']} ({usage['inputTokens']} tokens in, {usage['outputTokens']} out) answered:")
        print(answer["text"])
        return 0


if __name__ == "__main__":
    question = " ".join(sys.argv[1:]) or "Name three birds that fly in flocks."
    sys.exit(asyncio.run(main(question)))
