"""``flockrt run`` and ``flockrt check``: run the flock a config describes, or only check it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import TYPE_CHECKING, Any

from flockrt.cli.output import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from flockrt.errors import ConfigError, FlockError

if TYPE_CHECKING:
    from flockrt.config import FlockConfig
    from flockrt.runtime import Flock

__all__ = ["check", "count_agents", "run", "serve"]

log = logging.getLogger("flockrt.cli")


def count_agents(root: dict[str, Any]) -> int:
    """The actors of a supervision tree snapshot that are no supervisors: the agents (and
    plain actors) a config started, however its ``[[supervisors]]`` group them."""
    children = root.get("children") or []
    if not isinstance(root.get("supervisor"), dict):
        return 1
    return sum(count_agents(child) for child in children)


def next_steps(flock: Flock, config_path: str | None) -> list[str]:
    """The lines that tell a new user what to do with the running flock."""
    lines = []
    gateway, metrics = flock.gateway_url, flock.metrics_url
    if gateway is not None and flock.web is not None:
        configured = flock.config.mcp is not None and flock.config.mcp.port != 0
        where = f"--config {config_path}" if config_path and configured else f"--url {gateway}"
        lines.append(f"gateway: {gateway} (MCP over WebSocket and Streamable HTTP)")
        lines.append(f"try: flockrt agents {where}, flockrt top {where}")
        lines.append(f"live view: {flock.web.url}/ in a browser")
    if metrics is not None:
        lines.append(f"metrics: {metrics}")
    return lines


async def serve(config: FlockConfig, stop: asyncio.Event, config_path: str | None = None) -> int:
    """Run the configured flock until ``stop`` is set or the root fails; return the exit status."""
    from flockrt.runtime import Flock

    runtime = config.runtime
    flock = Flock(config)
    try:
        await flock.start()
        system = flock.system
        root = system.snapshot()["children"][0]
        for child in root["children"]:
            log.info("started %s (%s)", child["path"], child["restart"])
        where = f"on NATS at {flock.nats_url}" if flock.nats_url else "in this process only"
        log.info(
            "flock %r ready: %d agents under /root, %s (%s loop); Ctrl-C or SIGTERM stops it",
            runtime.name,
            count_agents(root),
            where,
            runtime.loop,
        )
        for line in next_steps(flock, config_path):
            log.info("%s", line)
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


async def _serve_until_signalled(config: FlockConfig, config_path: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        return await serve(config, stop, config_path)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _load(args: argparse.Namespace) -> FlockConfig | None:
    from flockrt import assembly

    if args.config is None:
        print(
            f"flockrt {args.command}: name a config file (e.g. configs/flock.toml) or set FLOCKRT_CONFIG",
            file=sys.stderr,
        )
        return None
    try:
        return assembly.load(args.config)
    except ConfigError as exc:
        print(f"flockrt: {exc}", file=sys.stderr)
        return None


def check(args: argparse.Namespace) -> int:
    """``flockrt check``: the config's problems (exit 2), or what it would start."""
    from flockrt import assembly

    config = _load(args)
    if config is None:
        return EXIT_USAGE
    try:
        specs = assembly.child_specs(config)  # a Claude agent without its package is refused here
    except ConfigError as exc:
        print(f"flockrt: {args.config}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    strategy = config.supervisor.strategy
    if args.json:
        from flockrt.cli.output import print_json

        print_json(
            {
                "config": str(args.config),
                "ok": True,
                "strategy": strategy,
                "children": [{"id": spec.id, "type": spec.type, "restart": spec.restart} for spec in specs],
            }
        )
    else:
        print(f"{args.config}: ok ({len(specs)} actors under one {strategy} supervisor)")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """``flockrt run``: the flock until SIGINT or SIGTERM (exit 0), or until the root gives up (1)."""
    from flockrt.logs import configure_logging
    from flockrt.loop import run as run_on_loop

    config = _load(args)
    if config is None:
        return EXIT_USAGE
    runtime = config.runtime
    configure_logging(runtime.log_level, format=runtime.log_format, log_dir=runtime.log_dir or None)
    try:
        return run_on_loop(_serve_until_signalled(config, str(args.config)), runtime.loop)
    except ConfigError as exc:  # found only on start: a Claude agent without its package
        print(f"flockrt: {args.config}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FlockError as exc:
        print(f"flockrt: {exc}", file=sys.stderr)
        return EXIT_FAILED
