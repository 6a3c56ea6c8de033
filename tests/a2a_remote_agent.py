"""A small outside A2A agent built with the a2a-sdk alone (its Starlette app under uvicorn), for
tests and the benchmark: the remote end of ``[[a2a.remote]]``.

    python -m tests.a2a_remote_agent PORT [TOKEN]

Skills: ``shout`` (the message's text, upper-cased, as a text artifact, with one ``working``
status message on the way), ``add`` (a data part ``{"a": x, "b": y}`` answered with the data part
``{"sum": x + y}``), ``fail`` (the task ends failed), ``slow`` (works until its task is
cancelled) and ``ask`` (the task asks for input). With TOKEN, every request but the card
needs ``Authorization: Bearer TOKEN``. Prints ``ready`` once it listens; runs until killed.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvicorn
from a2a.helpers.proto_helpers import get_data_parts, get_message_text, new_data_part, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, Task, TaskState, TaskStatus
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class Remote(AgentExecutor):
    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.message is not None
        task_id, context_id = str(context.task_id), str(context.context_id)
        await event_queue.enqueue_event(
            Task(id=task_id, context_id=context_id, status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED))
        )
        updater = TaskUpdater(event_queue, task_id, context_id)
        metadata: dict[str, Any] = MessageToDict(context.message.metadata)
        skill = metadata.get("skill")
        await updater.start_work(updater.new_agent_message([new_text_part(f"working on {skill}")]))
        if skill == "shout":
            await updater.add_artifact([new_text_part(get_message_text(context.message).upper())])
            await updater.complete()
        elif skill == "add":
            (data,) = get_data_parts(context.message.parts)
            await updater.add_artifact([new_data_part({"sum": data["a"] + data["b"]})])
            await updater.complete()
        elif skill == "slow":
            await asyncio.Event().wait()  # until cancelled (the handler's cancel_task)
        elif skill == "ask":
            await updater.requires_input(updater.new_agent_message([new_text_part("which one?")]))
        else:
            await updater.failed(updater.new_agent_message([new_text_part(f"no such skill: {skill}")]))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        await TaskUpdater(event_queue, str(context.task_id), str(context.context_id)).cancel()


def app(port: int, token: str | None) -> Starlette:
    card = AgentCard(
        name="remote-shouter",
        description="Shouts and adds.",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(
                url=f"http://127.0.0.1:{port}/", protocol_binding="JSONRPC", protocol_version="1.0"
            )
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain", "application/json"],
        default_output_modes=["text/plain", "application/json"],
        skills=[
            AgentSkill(id="shout", name="shout", description="Upper-cases text.", tags=["text"]),
            AgentSkill(id="add", name="add", description="Adds a and b.", tags=["math"]),
            AgentSkill(id="fail", name="fail", description="Always fails.", tags=["test"]),
            AgentSkill(id="slow", name="slow", description="Works until cancelled.", tags=["test"]),
            AgentSkill(id="ask", name="ask", description="Asks for input.", tags=["test"]),
        ],
    )
    handler = DefaultRequestHandler(Remote(), InMemoryTaskStore(), card)
    routes = [*create_agent_card_routes(card), *create_jsonrpc_routes(handler, "/")]
    starlette = Starlette(routes=routes)
    if token:

        async def check(request: Request, call_next: Any) -> Response:
            if (
                request.url.path != "/.well-known/agent-card.json"
                and request.headers.get("authorization") != f"Bearer {token}"
            ):
                return JSONResponse({"error": "unauthorized"}, status_code=401)
            response: Response = await call_next(request)
            return response

        starlette.add_middleware(BaseHTTPMiddleware, dispatch=check)
    return starlette


async def main(port: int, token: str | None) -> None:
    config = uvicorn.Config(
        app(port, token), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            await serving  # raises what stopped it (the port is taken)
            return
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    await serving


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
