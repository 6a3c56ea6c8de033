"""Structured logs: every record carries its correlation id and agent; optionally one file per agent.

Built from the standard library only (handlers, filters, formatters), so anything that logs
through :mod:`logging` (flockrt, agent code, libraries) is covered:

- :class:`ContextFilter` stamps each record with ``correlation_id`` and ``agent`` from the
  context variables of :mod:`flockrt.actors.correlation` (set per task, capability request,
  query and MCP request);
- :class:`JsonFormatter` writes one JSON object per line; the text format shows the same fields
  as ``key=value``;
- :class:`AgentFileHandler` appends each record logged while an agent's code runs to
  ``<log_dir>/<agent id>.log``.

:func:`configure_logging` sets this up on the root logger from ``[runtime]`` (``log_level``,
``log_format``, ``log_dir``); ``flockrt run`` calls it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from flockrt.actors.correlation import correlation_id, current_agent

__all__ = ["AgentFileHandler", "ContextFilter", "JsonFormatter", "configure_logging", "unconfigure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"

_FILE_NAME = re.compile(r"[^A-Za-z0-9_-]")


class ContextFilter(logging.Filter):
    """Adds ``correlation_id`` and ``agent`` (None when unknown) to every record, and
    ``context``: the two as `` correlation_id=... agent=...`` for text formats ("" if neither).

    An ``agent`` already on the record (``extra={"agent": ...}``) is kept. Attach it to handlers
    (not loggers) so that records propagating from any logger get it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        cid = getattr(record, "correlation_id", None) or correlation_id.get()
        agent = getattr(record, "agent", None) or current_agent.get()
        record.correlation_id = cid
        record.agent = agent
        parts = []
        if cid:
            parts.append(f"correlation_id={cid}")
        if agent:
            parts.append(f"agent={agent}")
        record.context = " " + " ".join(parts) if parts else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, correlation_id, agent, actor,
    and the formatted exception if there is one (run :class:`ContextFilter` first).

    ``time`` is ISO-8601 in UTC to the millisecond, ``2026-12-07T13:51:02.123Z``, whatever the
    machine's time zone: what log stores parse and sort without being told a format."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.fromtimestamp(record.created, tz=UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("correlation_id", "agent", "actor"):
            value = getattr(record, key, None)
            if value:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class AgentFileHandler(logging.Handler):
    """Appends the records of each agent to ``<directory>/<agent id>.log``.

    Records without an agent (run :class:`ContextFilter` first) are left to the other handlers.
    At most ``max_open`` files stay open (least recently used are closed, and reopened in append
    mode when their agent logs again), so a flock of thousands of agents does not run out of
    file descriptors.

    Args:
        directory: Created if missing.
        max_open: Open files kept at most.
    """

    def __init__(self, directory: str | Path, *, max_open: int = 64, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        if max_open < 1:
            raise ValueError(f"max_open must be >= 1, got {max_open!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_open = max_open
        self._files: OrderedDict[str, TextIO] = OrderedDict()

    def path_of(self, agent: str) -> Path:
        """The file of ``agent`` (characters other than letters, digits, ``-`` and ``_`` become
        ``_``, so an id cannot name a path outside the directory)."""
        return self.directory / f"{_FILE_NAME.sub('_', agent)}.log"

    def emit(self, record: logging.LogRecord) -> None:
        agent = getattr(record, "agent", None)
        if not agent:
            return
        try:
            line = self.format(record)
            stream = self._files.get(agent)
            if stream is None:
                stream = self._files[agent] = self.path_of(agent).open("a", encoding="utf-8")
                while len(self._files) > self.max_open:
                    _, oldest = self._files.popitem(last=False)
                    oldest.close()
            else:
                self._files.move_to_end(agent)
            stream.write(line + "\n")
            stream.flush()
        except Exception:  # logging must never break the code that logs
            self.handleError(record)

    def close(self) -> None:
        self.acquire()
        try:
            for stream in self._files.values():
                stream.close()
            self._files.clear()
        finally:
            self.release()
        super().close()


_installed: list[logging.Handler] = []


def configure_logging(
    level: str | int = "INFO",
    *,
    format: Literal["text", "json"] = "text",
    log_dir: str | Path | None = None,
    stream: TextIO | None = None,
) -> list[logging.Handler]:
    """Log to ``stream`` (stderr) and, with ``log_dir``, also to one file per agent.

    Installs its handlers on the root logger, replacing those of an earlier call (handlers
    installed by others stay). Returns the handlers installed.

    Args:
        level: Root level (``LOG_LEVEL``).
        format: ``text`` (one line, ``key=value`` context) or ``json`` (one object per line).
        log_dir: Directory of the per-agent files ("" or None: none).
        stream: Where the main log goes (default: sys.stderr).
    """
    unconfigure_logging()
    formatter: logging.Formatter = JsonFormatter() if format == "json" else logging.Formatter(TEXT_FORMAT)
    context = ContextFilter()
    handlers: list[logging.Handler] = [logging.StreamHandler(stream if stream is not None else sys.stderr)]
    if log_dir:
        handlers.append(AgentFileHandler(log_dir))
    root = logging.getLogger()
    for handler in handlers:
        handler.addFilter(context)
        handler.setFormatter(formatter)
        root.addHandler(handler)
        _installed.append(handler)
    root.setLevel(level)
    return handlers


def unconfigure_logging() -> None:
    """Remove (and close) the handlers :func:`configure_logging` installed."""
    root = logging.getLogger()
    while _installed:
        handler = _installed.pop()
        root.removeHandler(handler)
        handler.close()
