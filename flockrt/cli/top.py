"""``flockrt top``: the live view in a terminal (drawn by :mod:`flockrt.view.top`), at the
gateway ``--config``, ``--url`` or the defaults name (see :mod:`flockrt.cli.endpoint`)."""

from __future__ import annotations

import argparse
import sys

from flockrt.cli.endpoint import resolve
from flockrt.cli.output import EXIT_USAGE
from flockrt.errors import ConfigError
from flockrt.view import top

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Run ``flockrt top``; the exit status."""
    try:
        endpoint = resolve(args)
    except ConfigError as exc:
        print(f"flockrt top: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return top.run(endpoint.base, endpoint.token, timeout=args.timeout, once=args.once, as_json=args.json)
