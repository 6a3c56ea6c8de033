"""``flockrt mcp`` (MCP on stdin/stdout, bridged to a gateway), ``flockrt health`` (a flock's
/healthz or /readyz) and ``flockrt bench`` (the benchmark suites of a source checkout)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from flockrt.cli.endpoint import resolve
from flockrt.cli.output import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from flockrt.cli.parser import BENCH_SUITES
from flockrt.errors import ConfigError, FlockError, GatewayUnavailable

__all__ = ["bench", "health", "mcp"]


def mcp(args: argparse.Namespace) -> int:
    """``flockrt mcp``: bridge stdin/stdout to the gateway until stdin ends or a signal."""
    from flockrt.client.stdio import StdioBridge

    try:
        endpoint = resolve(args)
    except ConfigError as exc:
        print(f"flockrt mcp: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not endpoint.url.startswith(("ws://", "wss://")):
        print(f"flockrt mcp: expected a ws:// or wss:// URL, got {endpoint.url!r}", file=sys.stderr)
        return EXIT_USAGE
    # stdout carries JSON-RPC only: every log line goes to stderr.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="flockrt mcp: %(message)s")
    bridge = StdioBridge(endpoint.url, token=endpoint.token, timeout=args.timeout)

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


def health(args: argparse.Namespace) -> int:
    """``flockrt health``: exit 0 when the flock answers 200, 1 on another status, 3 unreachable."""
    if args.url is None:
        try:
            args.url = resolve(argparse.Namespace(config=args.config)).base
        except ConfigError as exc:
            print(f"flockrt health: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if not args.url.startswith(("http://", "https://")):
        print(f"flockrt health: expected an http:// or https:// URL, got {args.url!r}", file=sys.stderr)
        return EXIT_USAGE
    url = f"{args.url.rstrip('/')}/{'readyz' if args.ready else 'healthz'}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status, body = response.status, response.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode(errors="replace").strip()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"flockrt health: {url} cannot be reached: {reason}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.json:
        try:
            answer = json.loads(body)
        except json.JSONDecodeError:
            answer = body
        print(json.dumps({"url": url, "status": status, "healthy": status == 200, "body": answer}))
    elif status == 200:
        print(f"{url}: {body}")
    if status != 200:
        print(f"flockrt health: {url}: {status} {body}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def bench(args: argparse.Namespace) -> int:
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
    for candidate in (Path(__file__).resolve().parent.parent.parent, Path.cwd()):
        if (candidate / "benchmarks" / "kernel.py").is_file():
            return candidate
    return None
