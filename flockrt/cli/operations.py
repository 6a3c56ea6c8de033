"""The operator commands: ``agents``, ``tree``, ``send``, ``request`` and ``submit``, each one
call to a running flock through its MCP gateway (with :class:`~flockrt.FlockClient`), or, for
``send`` and ``request`` with ``--nats``, over NATS while the gateway cannot be reached."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from flockrt.cli.endpoint import resolve
from flockrt.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    ProgressLine,
    draw_tree,
    print_json,
    print_table,
)
from flockrt.errors import BusUnavailable, CircuitOpen, FlockError, GatewayUnavailable

if TYPE_CHECKING:
    from flockrt.client.client import FlockClient

__all__ = ["main", "operate"]


def _json_argument(what: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON ({exc.msg} at character {exc.pos}): {text!r}") from None


def _parse_json_arguments(args: argparse.Namespace) -> None:
    """Decode the JSON arguments in place, so bad input is reported before any connection."""
    if args.command == "request":
        args.parameters = _json_argument("parameters", args.parameters)
    elif args.command == "submit":
        args.data = _json_argument("data", args.data)
    elif args.command == "send":
        with contextlib.suppress(json.JSONDecodeError):  # not JSON: the message is the string itself
            args.message = json.loads(args.message)


def _progress(args: argparse.Namespace) -> ProgressLine | None:
    return None if getattr(args, "quiet", True) else ProgressLine(args.command)


async def _agents(client: FlockClient, args: argparse.Namespace) -> int:
    agents = await client.list_agents(status="all" if args.all else "online", capability=args.capability)
    if args.json:
        print_json(agents)
        return EXIT_OK
    if not agents:
        print("no agents" + (f" offering {args.capability!r}" if args.capability else ""))
        return EXIT_OK
    rows = []
    for agent in sorted(agents, key=lambda a: str(a.get("id"))):
        load = agent.get("load")
        rows.append(
            (
                str(agent.get("id")),
                str(agent.get("status")),
                ", ".join(agent.get("capabilities") or []) or "-",
                f"{load:.0%}" if isinstance(load, int | float) else "-",
                str(agent.get("node") or "-"),
            )
        )
    print_table(("AGENT", "STATUS", "CAPABILITIES", "LOAD", "NODE"), rows)
    return EXIT_OK


async def _tree(client: FlockClient, args: argparse.Namespace) -> int:
    tree = await client.get_supervision_tree()
    if args.json:
        print_json(tree)
    else:
        print("\n".join(draw_tree(tree)))
    return EXIT_OK


async def _send(client: FlockClient, args: argparse.Namespace) -> int:
    answer = await client.send_message(args.to, args.message, type=args.type, timeout=args.timeout)
    if args.type == "query":
        print_json(answer)
    elif args.json:
        print_json({"sent": args.type, "to": args.to})
    else:
        print(f"sent {args.type} to {args.to}")
    return EXIT_OK


async def _request(client: FlockClient, args: argparse.Namespace) -> int:
    # The result is JSON with or without --json.
    progress = _progress(args)
    try:
        result = await client.request_capability(
            args.capability, args.parameters, timeout=args.timeout, progress=progress
        )
    finally:
        if progress is not None:
            progress.close()
    print_json(result)
    return EXIT_OK


async def _submit(client: FlockClient, args: argparse.Namespace) -> int:
    progress = _progress(args) if args.wait else None
    try:
        outcome = await client.submit(
            args.type,
            args.data,
            priority=args.priority,
            wait=args.wait,
            timeout=args.timeout,
            progress=progress,
        )
    finally:
        if progress is not None:
            progress.close()
    if isinstance(outcome, str):
        if args.json:
            print_json({"taskId": outcome})
        else:
            print(outcome)
        return EXIT_OK
    print_json(
        {
            "taskId": outcome.task_id,
            "status": outcome.status,
            "result": outcome.result,
            "error": outcome.error,
            "processedBy": outcome.processed_by,
            "durationMs": outcome.duration_ms,
        }
    )
    return EXIT_OK if outcome.status == "ok" else EXIT_FAILED


_OPERATIONS: dict[str, Callable[[FlockClient, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "agents": _agents,
    "tree": _tree,
    "send": _send,
    "request": _request,
    "submit": _submit,
}


async def operate(argv: Sequence[str]) -> int:
    """Run one operator command (``["agents", "--url", ...]``) against the gateway and return
    its exit status; errors become a message on stderr, never a traceback."""
    from flockrt.cli.parser import build_parser

    return await _operate(build_parser().parse_args(argv))


def main(args: argparse.Namespace) -> int:
    """The ``flockrt`` entry of the operator commands."""
    # One-shot commands say what went wrong themselves; the client's warnings about
    # reconnecting or degraded NATS would only be noise here.
    logger = logging.getLogger("flockrt")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return asyncio.run(_operate(args))
    finally:
        logger.setLevel(level)


async def _operate(args: argparse.Namespace) -> int:
    from flockrt.client.client import FlockClient

    name = f"flockrt {args.command}"
    try:
        endpoint = resolve(args)
        _parse_json_arguments(args)
        client = FlockClient(
            endpoint.url,
            token=endpoint.token,
            nats_url=endpoint.nats,
            timeout=args.timeout,
            connect_timeout=args.timeout,  # --timeout bounds connecting too
            reconnect=False,
        )
    except ValueError as exc:  # ConfigError included
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        # No connect() first: the call connects, after its arguments were checked, and
        # with --nats it falls back to NATS if the gateway cannot be reached.
        return await _OPERATIONS[args.command](client, args)
    except ValueError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (GatewayUnavailable, CircuitOpen) as exc:
        print(f"{name}: {exc} (is the flock running with an [mcp] section?)", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except BusUnavailable as exc:  # the --nats fallback could not help either
        print(f"{name}: neither the gateway nor NATS can be reached: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except BrokenPipeError:  # standard output closed (| head): the caller says what that means
        raise
    except (FlockError, ConnectionError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await client.close()
