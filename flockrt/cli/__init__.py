"""The ``flockrt`` command.

``flockrt run CONFIG`` runs a flock, ``flockrt check CONFIG`` validates a config. The operator
commands talk to a running flock through its MCP gateway (with :class:`~flockrt.FlockClient`):
``flockrt agents``, ``flockrt tree``, ``flockrt top`` (live), ``flockrt send TO MESSAGE``,
``flockrt request CAPABILITY JSON`` and ``flockrt submit TYPE JSON``; ``--config`` (default
``$FLOCKRT_CONFIG``) finds the gateway, its token and the flock's NATS in the flock's config,
or ``--url`` (default
``ws://127.0.0.1:$MCP_PORT/mcp``) and ``--token`` (default ``$FLOCKRT_TOKEN``) say where and as
whom. ``flockrt mcp`` speaks MCP on stdin/stdout for hosts that launch servers as commands,
bridged to the gateway. ``flockrt health`` asks a running flock's ``/healthz`` (or
``/readyz``), for container health checks. ``flockrt bench`` runs the benchmark suites of a
source checkout and prints their tables. ``flockrt completion bash|zsh|fish`` prints a shell
completion script.

The parts: :mod:`~flockrt.cli.parser` declares every subcommand (and says how to add one), each
run by a module imported only when it runs (``serve``, ``operate``, ``tools``, ``completion``),
so that ``flockrt --help``
imports little beyond the standard library.

Exit status: 0 after a clean stop (SIGINT/SIGTERM) or a successful command; 1 when the root
supervisor gave up, or the flock answered with a failure (no capable agent, unknown agent, a
timeout, a failed task); 2 for a bad config, command line or JSON argument; 3 when the gateway
cannot be reached; 130 when a command other than ``run`` is interrupted (Ctrl-C); 141 when
standard output was closed early (``flockrt agents | head -1``), as for a program SIGPIPE ends.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from flockrt.cli.operations import operate
from flockrt.cli.output import draw_tree
from flockrt.cli.parser import COMMANDS, build_parser
from flockrt.cli.serve import serve

__all__ = ["EXIT_INTERRUPTED", "EXIT_PIPE_CLOSED", "draw_tree", "main", "operate", "serve"]

EXIT_INTERRUPTED = 130
"""128 + SIGINT: what a shell reports for a command Ctrl-C stopped."""
EXIT_PIPE_CLOSED = 141
"""128 + SIGPIPE: what a shell reports for a program writing to a pipe nobody reads any more."""

_parser = build_parser  # the name tests and tools have used


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flockrt`` command; returns the exit status.

    Ctrl-C ends a command with one line and status 130 (``flockrt run`` handles SIGINT itself:
    a graceful stop, status 0); a closed standard output ends it quietly with status 141.
    """
    command = "flockrt"
    try:
        try:
            args = build_parser().parse_args(argv)
            command = f"flockrt {args.command}"
            module, _, function = COMMANDS[args.command].handler.partition(":")
            status: int = getattr(importlib.import_module(module), function)(args)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not at exit as "Exception ignored"
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Nobody reads standard output any more: leave quietly, and point it at /dev/null so
        # that the interpreter's own flush at exit does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_PIPE_CLOSED
    return status
