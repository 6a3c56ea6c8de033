"""The ``flockrt`` command.

``flockrt run CONFIG`` runs a flock, ``flockrt check CONFIG`` validates a config. The operator
commands talk to a running flock through its MCP gateway (with :class:`~flockrt.FlockClient`):
``flockrt agents``, ``flockrt tree``, ``flockrt send TO MESSAGE``, ``flockrt request CAPABILITY
JSON`` and ``flockrt submit TYPE JSON``; ``--url`` (default ``ws://127.0.0.1:$MCP_PORT/mcp``)
and ``--token`` (default ``$FLOCKRT_TOKEN``) say where and as whom. ``flockrt mcp`` speaks MCP
on stdin/stdout for hosts that launch servers as commands, bridged to the gateway. ``flockrt health`` asks a
running flock's ``/healthz`` (or ``/readyz``), for container health checks. ``flockrt bench``
runs the benchmark suites of a source checkout and prints their tables.

Exit status: 0 after a clean stop (SIGINT/SIGTERM) or a successful command; 1 when the root
supervisor gave up, or the flock answered with a failure (no capable agent, unknown agent, a
timeout, a failed task); 2 for a bad config, command line or JSON argument; 3 when the gateway
cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flockrt.errors import BusUnavailable, CircuitOpen, ConfigError, FlockError, GatewayUnavailable

# The command imports what a subcommand needs when it runs, so that `flockrt --help`, `health`
# and `bench` do not pay for NATS, aiohttp, msgspec and prometheus_client.
if TYPE_CHECKING:
    from flockrt.client.client import FlockClient
    from flockrt.config import FlockConfig

__all__ = ["main"]

log = logging.getLogger("flockrt.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


async def serve(config: FlockConfig, stop: asyncio.Event) -> int:
    """Run the configured flock until ``stop`` is set or the root fails; return the exit status."""
    from flockrt.runtime import Flock

    runtime = config.runtime
    flock = Flock(config)
    try:
        await flock.start()
        system = flock.system
        for child in system.snapshot()["children"][0]["children"]:
            log.info("started %s (%s)", child["path"], child["restart"])
        where = f"on NATS at {flock.nats_url}" if flock.nats_url else "in this process only"
        log.info(
            "flock %r ready: %d agents under /root, %s (%s loop); Ctrl-C or SIGTERM stops it",
            runtime.name,
            system.stats().live - 1,
            where,
            runtime.loop,
        )
        stopped = asyncio.ensure_future(stop.wait())
        failed = asyncio.ensure_future(system.wait())
        try:
            await asyncio.wait((stopped, failed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            failed.cancel()
        if system.failure is not None:
            log.critical("flock %r stopped: %s", runtime.name, system.failure)
            return EXIT_FAILED
        log.info("stopping: draining in-flight work (up to %g s)", runtime.shutdown_timeout)
    finally:
        await flock.stop()
    log.info("flock %r stopped cleanly (%d messages handled)", runtime.name, flock.system.stats().processed)
    return EXIT_OK


async def _serve_until_signalled(config: FlockConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        return await serve(config, stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flockrt", description="Run and inspect a flockrt flock.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the flock described by a config file")
    run.add_argument("config", help="path to the TOML config, e.g. configs/flock.toml")
    check = commands.add_parser("check", help="validate a config file without starting anything")
    check.add_argument("config")

    gateway = argparse.ArgumentParser(add_help=False)
    port = os.environ.get("MCP_PORT", "4002")
    gateway.add_argument(
        "--url",
        default=_default_url(),
        help="the gateway's WebSocket endpoint (default ws://127.0.0.1:$MCP_PORT/mcp, MCP_PORT=4002)",
    )
    gateway.add_argument(
        "--token", default=os.environ.get("FLOCKRT_TOKEN"), help="bearer token (default $FLOCKRT_TOKEN)"
    )
    gateway.add_argument(
        "--timeout", type=_seconds, default=30.0, help="seconds to wait for the flock (default 30)"
    )
    fallback = argparse.ArgumentParser(add_help=False)
    fallback.add_argument("--nats", metavar="URL", help="the flock's NATS, used if the gateway is down")

    agents = commands.add_parser("agents", parents=[gateway], help="list the flock's agents")
    agents.add_argument("--all", action="store_true", help="offline agents too")
    agents.add_argument("--capability", help="only agents offering this capability")
    agents.add_argument("--json", action="store_true", help="print JSON instead of a table")
    tree = commands.add_parser("tree", parents=[gateway], help="draw the gateway process's supervision tree")
    tree.add_argument("--json", action="store_true", help="print JSON instead of a drawing")
    send = commands.add_parser("send", parents=[gateway, fallback], help="send a direct message to an agent")
    send.add_argument("to", help="the agent's id")
    send.add_argument("message", help="JSON, or else taken as a string")
    send.add_argument("--type", default="command", help="command (default), query (prints the answer), ...")
    request = commands.add_parser(
        "request", parents=[gateway, fallback], help="have a capable agent do a capability"
    )
    request.add_argument("capability")
    request.add_argument("parameters", nargs="?", default="{}", help="JSON parameters (default {})")
    submit = commands.add_parser("submit", parents=[gateway], help="submit a task to the flock")
    submit.add_argument("type", help="the task type (tasks.<type>)")
    submit.add_argument("data", nargs="?", default="null", help="the task's data as JSON (default null)")
    submit.add_argument("--wait", action="store_true", help="wait for the result and print it")
    submit.add_argument("--priority", choices=("low", "medium", "high"), default="medium")

    mcp = commands.add_parser(
        "mcp",
        help="speak MCP on stdin/stdout (for Claude Desktop, Claude Code), bridged to a running flock",
    )
    mcp.add_argument(
        "--url",
        help="the gateway's WebSocket endpoint (default: from --config, else ws://127.0.0.1:$MCP_PORT/mcp)",
    )
    mcp.add_argument("--token", help="bearer token (default $FLOCKRT_TOKEN, else the config's first token)")
    mcp.add_argument("--config", help="the flock's TOML config: its [mcp] section says where the gateway is")
    mcp.add_argument(
        "--timeout", type=_seconds, default=10.0, help="seconds a connection attempt may take (default 10)"
    )

    health = commands.add_parser("health", help="check a running flock's /healthz (exit 0 when healthy)")
    health.add_argument(
        "--url",
        default=f"http://127.0.0.1:{port}",
        help="the flock's HTTP listener (default http://127.0.0.1:$MCP_PORT, MCP_PORT=4002)",
    )
    health.add_argument("--ready", action="store_true", help="check /readyz: can the flock take work?")
    health.add_argument("--timeout", type=_seconds, default=3.0, help="seconds to wait (default 3)")

    bench = commands.add_parser(
        "bench", help="run benchmark suites (from a source checkout) and print tables"
    )
    bench.add_argument(
        "suites",
        nargs="*",
        metavar="SUITE",
        help=f"{', '.join(BENCH_SUITES)} (default: all)",
    )
    bench.add_argument("--quick", action="store_true", help="small N, one run each: minutes become seconds")
    bench.add_argument(
        "--json", type=Path, metavar="DIR", help="also write each suite's results to DIR/<suite>.json"
    )
    bench.add_argument(
        "--loop", choices=("asyncio", "uvloop"), help="event loop of the kernel, bus and metrics suites"
    )
    return parser


def _default_url() -> str:
    """The gateway's endpoint when nothing names it: ws://127.0.0.1:$MCP_PORT/mcp."""
    return f"ws://127.0.0.1:{os.environ.get('MCP_PORT', '4002')}/mcp"


def _mcp_endpoint(args: argparse.Namespace) -> tuple[str, str | None]:
    """The gateway URL and token of ``flockrt mcp``: the flags, else the config's [mcp]
    section (and its first token), else the default the operator commands use.

    Raises:
        ConfigError: the config cannot be read, has no [mcp] section, or a port of 0.
    """
    url, token = args.url, args.token or os.environ.get("FLOCKRT_TOKEN") or None
    if args.config is not None and (url is None or token is None):
        from flockrt.config import load_config

        mcp = load_config(args.config).mcp
        if mcp is None:
            raise ConfigError(
                f"{args.config}: no [mcp] section (or MCP_ENABLED=false): the flock has no gateway"
            )
        if url is None:
            if mcp.port == 0:
                raise ConfigError(f"{args.config}: [mcp] port = 0 picks a free port; give --url instead")
            # A gateway bound to every interface is reached on loopback from this machine.
            host = "127.0.0.1" if mcp.host in ("0.0.0.0", "::", "") else mcp.host
            url = f"ws://{f'[{host}]' if ':' in host else host}:{mcp.port}/mcp"
        if token is None and mcp.auth.tokens:
            token = mcp.auth.tokens[0]
    return url or _default_url(), token


def _mcp(args: argparse.Namespace) -> int:
    from flockrt.client.stdio import StdioBridge

    try:
        url, token = _mcp_endpoint(args)
    except ConfigError as exc:
        print(f"flockrt mcp: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not url.startswith(("ws://", "wss://")):
        print(f"flockrt mcp: expected a ws:// or wss:// URL, got {url!r}", file=sys.stderr)
        return EXIT_USAGE
    # stdout carries JSON-RPC only: every log line goes to stderr.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="flockrt mcp: %(message)s")
    bridge = StdioBridge(url, token=token, timeout=args.timeout)

    async def bridged() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await bridge.run(stop)

    try:
        asyncio.run(bridged())
    except GatewayUnavailable as exc:
        print(f"flockrt mcp: {exc} (is the flock running with an [mcp] section?)", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except FlockError as exc:  # NotAuthorized: a token the gateway refuses
        print(f"flockrt mcp: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


BENCH_SUITES = ("kernel", "bus", "agents", "gateway", "metrics", "startup")
"""The suites of ``benchmarks/`` that ``flockrt bench`` runs, in this order."""


def _health(args: argparse.Namespace) -> int:
    if not args.url.startswith(("http://", "https://")):
        print(f"flockrt health: expected an http:// or https:// URL, got {args.url!r}", file=sys.stderr)
        return EXIT_USAGE
    url = f"{args.url.rstrip('/')}/{'readyz' if args.ready else 'healthz'}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            body = response.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        print(
            f"flockrt health: {url}: {exc.code} {exc.read().decode(errors='replace').strip()}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"flockrt health: {url} cannot be reached: {reason}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(f"{url}: {body}")
    return EXIT_OK


def _bench(args: argparse.Namespace) -> int:
    """Run each suite as ``python -m benchmarks.<suite>`` in the checkout: the benchmarks (and
    their peers, like Pykka) are development tools, not part of the installed package."""
    unknown = [suite for suite in args.suites if suite not in BENCH_SUITES]
    if unknown:
        print(
            f"flockrt bench: unknown suite {unknown[0]!r}; expected {', '.join(BENCH_SUITES)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    root = _source_checkout()
    if root is None:
        print(
            "flockrt bench: the benchmarks live in a source checkout of flockrt (benchmarks/), "
            "which this installation is not; run it from a clone with 'pip install -e .[dev]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    suites = args.suites or list(BENCH_SUITES)
    for i, suite in enumerate(suites, 1):
        command = [sys.executable, "-m", f"benchmarks.{suite}"]
        if args.quick:
            command.append("--quick")
        if args.loop and suite not in ("gateway", "startup"):
            command += ["--loop", args.loop]
        if args.json is not None:
            args.json.mkdir(parents=True, exist_ok=True)
            command += ["--json", str((args.json / f"{suite}.json").resolve())]
        print(f"== [{i}/{len(suites)}] {' '.join(command[1:])}", file=sys.stderr, flush=True)
        # Progress goes to stderr and the table to stdout, both straight through.
        done = subprocess.run(command, cwd=root, check=False)
        if done.returncode != 0:
            print(f"flockrt bench: {suite} failed (exit {done.returncode})", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


def _source_checkout() -> Path | None:
    """The checkout holding ``benchmarks/`` next to this ``flockrt`` package, or the current
    directory if it is one; None for an installed package."""
    for candidate in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (candidate / "benchmarks" / "kernel.py").is_file():
            return candidate
    return None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


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


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


async def _agents(client: FlockClient, args: argparse.Namespace) -> int:
    agents = await client.list_agents(status="all" if args.all else "online", capability=args.capability)
    if args.json:
        _print_json(agents)
        return EXIT_OK
    if not agents:
        print("no agents" + (f" offering {args.capability!r}" if args.capability else ""))
        return EXIT_OK
    rows = [("AGENT", "STATUS", "CAPABILITIES", "LOAD", "NODE")]
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
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def draw_tree(snapshot: dict[str, Any]) -> list[str]:
    """The lines of a supervision tree snapshot (``ActorSystem.snapshot()``) drawn for a terminal."""
    lines: list[str] = []

    def describe(node: dict[str, Any]) -> str:
        parts = [str(node.get("name")), str(node.get("actor") or "-"), str(node.get("state"))]
        supervisor = node.get("supervisor")
        if isinstance(supervisor, dict):
            parts.append(
                f"{supervisor.get('strategy')}, max {supervisor.get('max_restarts')} restarts"
                f" in {supervisor.get('max_seconds')} s"
            )
        if node.get("restart"):
            parts.append(str(node["restart"]))
        if node.get("restarts"):
            parts.append(f"restarted {node['restarts']}x")
        if node.get("mailbox"):
            parts.append(f"{node['mailbox']} queued")
        return "  ".join(parts)

    def walk(node: dict[str, Any], prefix: str, last: bool, top: bool) -> None:
        lines.append(describe(node) if top else f"{prefix}{'└── ' if last else '├── '}{describe(node)}")
        children = node.get("children") or []
        inner = "" if top else prefix + ("    " if last else "│   ")
        for index, child in enumerate(children):
            walk(child, inner, index == len(children) - 1, False)

    walk(snapshot, "", True, True)
    return lines


async def _tree(client: FlockClient, args: argparse.Namespace) -> int:
    tree = await client.get_supervision_tree()
    if args.json:
        _print_json(tree)
    else:
        print("\n".join(draw_tree(tree)))
    return EXIT_OK


async def _send(client: FlockClient, args: argparse.Namespace) -> int:
    answer = await client.send_message(args.to, args.message, type=args.type, timeout=args.timeout)
    if args.type == "query":
        _print_json(answer)
    else:
        print(f"sent {args.type} to {args.to}")
    return EXIT_OK


async def _request(client: FlockClient, args: argparse.Namespace) -> int:
    _print_json(await client.request_capability(args.capability, args.parameters, timeout=args.timeout))
    return EXIT_OK


async def _submit(client: FlockClient, args: argparse.Namespace) -> int:
    outcome = await client.submit(
        args.type, args.data, priority=args.priority, wait=args.wait, timeout=args.timeout
    )
    if isinstance(outcome, str):
        print(outcome)
        return EXIT_OK
    _print_json(
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
    return await _operate(_parser().parse_args(argv))


async def _operate(args: argparse.Namespace) -> int:
    from flockrt.client.client import FlockClient

    nats_url = getattr(args, "nats", None)
    try:
        _parse_json_arguments(args)
        client = FlockClient(
            args.url, token=args.token, nats_url=nats_url, timeout=args.timeout, reconnect=False
        )
    except ValueError as exc:
        print(f"flockrt {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        # No connect() first: the call connects, after its arguments were checked, and
        # with --nats it falls back to NATS if the gateway cannot be reached.
        return await _OPERATIONS[args.command](client, args)
    except ValueError as exc:
        print(f"flockrt {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (GatewayUnavailable, CircuitOpen) as exc:
        print(f"flockrt {args.command}: {exc} (is the flock running with an [mcp] section?)", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except BusUnavailable as exc:  # the --nats fallback could not help either
        print(f"flockrt {args.command}: neither the gateway nor NATS can be reached: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (FlockError, ConnectionError) as exc:
        print(f"flockrt {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flockrt`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "health":
        return _health(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "mcp":
        return _mcp(args)
    if args.command in _OPERATIONS:
        # One-shot commands say what went wrong themselves; the client's warnings about
        # reconnecting or degraded NATS would only be noise here.
        logger = logging.getLogger("flockrt")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            return asyncio.run(_operate(args))
        finally:
            logger.setLevel(level)
    from flockrt import assembly
    from flockrt.logs import configure_logging
    from flockrt.loop import run as run_on_loop

    try:
        config = assembly.load(args.config)
    except ConfigError as exc:
        print(f"flockrt: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "check":
        specs = assembly.child_specs(config)
        print(f"{args.config}: ok ({len(specs)} actors under one {config.supervisor.strategy} supervisor)")
        return EXIT_OK
    runtime = config.runtime
    configure_logging(runtime.log_level, format=runtime.log_format, log_dir=runtime.log_dir or None)
    try:
        return run_on_loop(_serve_until_signalled(config), config.runtime.loop)
    except FlockError as exc:
        print(f"flockrt: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
