"""The ``flockrt`` command: ``flockrt run CONFIG`` and ``flockrt check CONFIG``.

Exit status: 0 after a clean stop (SIGINT/SIGTERM), 1 when the root supervisor gave up,
2 for a bad config or command line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from flockrt.config import ConfigError, FlockConfig, load_config
from flockrt.errors import FlockError
from flockrt.logs import configure_logging
from flockrt.loop import run as run_on_loop
from flockrt.runtime import Flock

__all__ = ["main"]

log = logging.getLogger("flockrt.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


async def serve(config: FlockConfig, stop: asyncio.Event) -> int:
    """Run the configured flock until ``stop`` is set or the root fails; return the exit status."""
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flockrt`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"flockrt: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "check":
        specs = config.child_specs()
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
