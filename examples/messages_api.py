"""A local stand-in for Anthropic's Messages API (``POST /v1/messages``), on aiohttp.

It answers as the API does, byte for byte in shape: a JSON message, or with ``"stream": true``
the server-sent events ``message_start``, ``content_block_start``, ``ping``,
``content_block_delta`` (one per chunk of the answer), ``content_block_stop``, ``message_delta``
(with the output usage) and ``message_stop``. Errors have the API's JSON body
``{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}``.

The answer is made up locally (``answer(request)``, by default a short echo of the prompt), so
the Claude agent, the examples and the tests run without a key and without a network. Point the
SDK at it with ``base_url``::

    async with MessagesApiStandIn() as api:
        client = anthropic.AsyncAnthropic(api_key="any", base_url=api.base_url)

Tests script failures with :meth:`MessagesApiStandIn.fail_next` (a 429 with ``retry-after``, a
529 ``overloaded_error``, a 500, or an ``error`` event in the middle of a stream) and can hold a
stream after its first delta (``hold_stream``) to see progress arrive before the end.

Run it alone with ``python examples/messages_api.py [PORT]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web

__all__ = ["Failure", "MessagesApiStandIn", "echo_answer"]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    408: "timeout_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    529: "overloaded_error",
}


@dataclass(frozen=True, slots=True)
class Failure:
    """One scripted failure: the next request gets it instead of an answer.

    Attributes:
        status: HTTP status (429, 529, 500, ...).
        message: The error's message.
        retry_after: Value of the ``retry-after`` header (seconds), if any.
        mid_stream: For a streaming request, answer 200 and send the error as an ``error``
            event after the first delta (as the API does when it overloads mid-answer).
        headers: More response headers (``retry-after-ms``, ``x-should-retry``, ...).
    """

    status: int
    message: str = "scripted failure"
    retry_after: str | None = None
    mid_stream: bool = False
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def error_type(self) -> str:
        return _ERROR_TYPES.get(self.status, "api_error")


def echo_answer(request: dict[str, Any]) -> str:
    """The stand-in's default answer: names itself and repeats the last user message."""
    return f"(local stand-in for {request['model']}) You said: {_text_of(request['messages'][-1])}"


class MessagesApiStandIn:
    """The Messages API on ``http://127.0.0.1:<port>``, started by ``async with`` or :meth:`start`.

    Args:
        answer: Makes the assistant's text from the request body.
        port: 0 picks a free port.
        chunk_words: Words per ``content_block_delta`` when streaming.
    """

    def __init__(
        self,
        answer: Callable[[dict[str, Any]], str] = echo_answer,
        *,
        port: int = 0,
        chunk_words: int = 2,
    ) -> None:
        self.answer = answer
        self.port = port
        self.chunk_words = chunk_words
        self.requests: list[dict[str, Any]] = []
        """Every request body received, in order (failed ones too)."""
        self.headers: list[dict[str, str]] = []
        """The headers of each request, in the same order."""
        self.hold_stream: asyncio.Event | None = None
        """When set to an Event, streams pause after their first delta until it is set."""
        self._failures: deque[Failure] = deque()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """What to give the SDK as ``base_url``."""
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, *failures: Failure) -> None:
        """The next requests get these failures, one each, in order."""
        self._failures.extend(failures)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> MessagesApiStandIn:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ the endpoint

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return self._error(Failure(400, "the body is not JSON"))
        self.requests.append(body)
        # SDKs send the key as x-api-key or, newer ones, as a bearer token.
        if not (
            request.headers.get("x-api-key") or request.headers.get("Authorization", "").startswith("Bearer ")
        ):
            return self._error(Failure(401, "an API key is required (x-api-key or Authorization: Bearer)"))
        problem = _invalid(body)
        if problem is not None:
            return self._error(Failure(400, problem))
        failure = self._failures.popleft() if self._failures else None
        if failure is not None and not (failure.mid_stream and body.get("stream")):
            return self._error(failure)
        text = self.answer(body)
        message_id = f"msg_standin{next(self._ids):06d}"
        input_tokens = _count_tokens(body)
        output_tokens = max(_count_tokens({"messages": [{"role": "assistant", "content": text}]}), 1)
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
                },
                headers={"request-id": f"req_{message_id}"},
            )
        try:
            return await self._stream(request, body, text, message_id, input_tokens, output_tokens, failure)
        except ConnectionResetError:  # the client went away mid-stream (timed out, cancelled)
            return web.Response(status=499)

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        text: str,
        message_id: str,
        input_tokens: int,
        output_tokens: int,
        failure: Failure | None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "request-id": f"req_{message_id}",
            }
        )
        await response.prepare(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

        await send(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": 1},
                },
            },
        )
        await send(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        await send("ping", {"type": "ping"})
        words = re.findall(r"\S+\s*", text)
        chunks = ["".join(words[i : i + self.chunk_words]) for i in range(0, len(words), self.chunk_words)]
        for i, chunk in enumerate(chunks):
            await send(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": chunk}},
            )
            if i == 0:
                if failure is not None:  # mid_stream: the API reports it as an event on the 200
                    error = {"type": failure.error_type, "message": failure.message}
                    await send("error", {"type": "error", "error": error})
                    await response.write_eof()
                    return response
                if self.hold_stream is not None:
                    await self.hold_stream.wait()
        await send("content_block_stop", {"type": "content_block_stop", "index": 0})
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
        await send("message_stop", {"type": "message_stop"})
        await response.write_eof()
        return response

    def _error(self, failure: Failure) -> web.Response:
        request_id = f"req_standin{next(self._ids):06d}"
        headers = {"request-id": request_id}
        if failure.retry_after is not None:
            headers["retry-after"] = failure.retry_after
        headers.update(failure.headers)
        return web.json_response(
            {
                "type": "error",
                "error": {"type": failure.error_type, "message": failure.message},
                "request_id": request_id,
            },
            status=failure.status,
            headers=headers,
        )


def _invalid(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    for key, kind in (("model", str), ("max_tokens", int), ("messages", list)):
        if not isinstance(body.get(key), kind):
            return f"{key}: Field required"
    if not body["messages"] or body["messages"][-1].get("role") != "user":
        return "messages: the last message must have role user"
    return None


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content", "")
    if isinstance(content, str):
        return content
    return " ".join(block.get("text", "") for block in content if isinstance(block, dict))


def _count_tokens(body: dict[str, Any]) -> int:
    """A rough token count (words and punctuation), deterministic so tests can predict it."""
    text = " ".join(_text_of(m) for m in body.get("messages", []))
    system = body.get("system")
    if isinstance(system, str):
        text += " " + system
    return len(re.findall(r"\w+|[^\w\s]", text))


async def _serve(port: int) -> None:
    async with MessagesApiStandIn(port=port) as api:
        print(f"Messages API stand-in at {api.base_url} (Ctrl-C stops it)", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
