"""What the commands print: JSON, tables, supervision trees, and progress on standard error."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "ProgressLine",
    "draw_tree",
    "print_json",
    "print_table",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
"""The exit statuses of every command: done, failed, a usage or config error, nothing to reach."""


def print_json(value: Any) -> None:
    """``value`` as indented JSON on standard output (non-ASCII characters kept)."""
    print(json.dumps(value, indent=2, ensure_ascii=False))


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks."""
    table = [tuple(header), *(tuple(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


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


class ProgressLine:
    """Shows the gateway's progress notifications of one call on standard error.

    On a terminal it is one line redrawn in place behind a spinner (and erased by
    :meth:`close`, so the result that follows starts on a clean line); otherwise, a log or a
    pipe, each notification is a line of its own, ``flockrt submit: waiting 2000 ms``.

    It is the client's progress callback: ``(progress, total, message)``.
    """

    _FRAMES = "|/-\\"

    def __init__(self, command: str, stream: TextIO | None = None) -> None:
        self.command = command
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self._frames = itertools.cycle(self._FRAMES)
        self._drawn = False

    def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        text = message or (f"{progress:g} of {total:g}" if total is not None else f"{progress:g}")
        if self.tty:
            self.stream.write(f"\r\033[K{next(self._frames)} flockrt {self.command}: {text}")
            self._drawn = True
        else:
            self.stream.write(f"flockrt {self.command}: {text}\n")
        self.stream.flush()

    def close(self) -> None:
        """Erase the spinner's line (on a terminal). Idempotent."""
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False
