"""``flockrt top``: the live view in a terminal, redrawn as the gateway's feed changes.

It reads the same feed as the page (``/view/feed``, Server-Sent Events with the bearer token
in the Authorization header) and draws nodes (actors, restarts, failures, tasks/s and latency
with a sparkline of the last minute), agents (status, load, tasks, restarts, capabilities),
recent failures and, with ``--once``, every node's supervision tree. ``--once`` prints one
frame of ``/view/state`` and ``--json`` that snapshot as JSON. Plain ANSI, no curses; colour
only on a terminal and without ``NO_COLOR``.

The command line (``--config``, ``--url``, ``--token``, ``--timeout``, ``--once``, ``--json``)
is :mod:`flockrt.cli.top`'s; this module draws. It imports only the standard library (aiohttp
when it runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
from datetime import datetime
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

__all__ = ["apply", "draw", "feed_url", "run"]

EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE = 0, 1, 3
_SPARKS = "▁▂▃▄▅▆▇█"
_REDRAW = 0.5  # seconds between two frames at most
_RETRY = 2.0  # seconds between two attempts to reconnect


def feed_url(url: str, path: str) -> str:
    """The gateway's ``path`` from any URL of it: ``ws://h:4002/mcp`` and ``http://h:4002``
    both give ``http://h:4002/view/...``."""
    parts = urlsplit(url if "//" in url else f"http://{url}")
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme or "http")
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def run(url: str, token: str | None, *, timeout: float, once: bool = False, as_json: bool = False) -> int:
    """Run ``flockrt top`` against the gateway at ``url``; the exit status (0, or 1 when the
    gateway refused, 3 when it could not be reached). Ctrl-C ends the live mode with 0."""
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_run(url, token, timeout, once, as_json))
    return EXIT_OK


class _Refused(Exception):
    """The gateway answered with an error status (its text says why)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


async def _run(url: str, token: str | None, seconds: float, once: bool, as_json: bool) -> int:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=None, connect=seconds, sock_connect=seconds)
    try:
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
            if once or as_json:
                async with asyncio.timeout(seconds):
                    picture = await _get_state(http, feed_url(url, "/view/state"))
                if as_json:
                    print(json.dumps(picture, indent=2))
                else:
                    print("\n".join(draw(picture, url, width=_width(), color=_color(), trees=True)))
                return EXIT_OK
            return await _watch(http, feed_url(url, "/view/feed"), url)
    except _Refused as exc:
        hint = " (give --token or set FLOCKRT_TOKEN)" if exc.status == 401 else ""
        print(f"flockrt top: the gateway refused: {str(exc).strip()}{hint}", file=sys.stderr)
        return EXIT_FAILED
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        print(
            f"flockrt top: cannot reach the gateway at {url}: {exc or type(exc).__name__}",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE


async def _get_state(http: Any, url: str) -> dict[str, Any]:
    async with http.get(url) as response:
        if response.status != 200:
            raise _Refused(response.status, await response.text())
        picture: dict[str, Any] = await response.json()
        return picture


async def _watch(http: Any, url: str, shown: str, out: TextIO = sys.stdout) -> int:
    """Follow the feed and redraw (at most every half second) until Ctrl-C; when the gateway
    goes away after the first connection, say so and reconnect every few seconds."""
    import aiohttp

    picture: dict[str, Any] = {"agents": {}, "nodes": {}}
    connected = False
    out.write("\x1b[?1049h\x1b[?25l")  # the alternate screen, no cursor
    try:
        while True:
            try:
                async with http.get(url) as response:
                    if response.status != 200:
                        raise _Refused(response.status, await response.text())
                    connected = True
                    await _follow(response, picture, lambda note: _frame(out, picture, shown, note))
                problem = "the gateway closed the feed"
            except (aiohttp.ClientError, OSError) as exc:
                if not connected:
                    raise
                problem = str(exc) or type(exc).__name__
            _frame(out, picture, shown, f"disconnected ({problem}); retrying every {_RETRY:g} s")
            await asyncio.sleep(_RETRY)
    finally:
        out.write("\x1b[?25h\x1b[?1049l")
        out.flush()


async def _follow(response: Any, picture: dict[str, Any], redraw: Any) -> None:
    """Apply the feed's events to ``picture`` until the stream ends, redrawing at most every
    half second."""
    drawn, pending = 0.0, False
    event, data = "", ""
    while True:
        try:
            line = await asyncio.wait_for(response.content.readline(), _REDRAW if pending else None)
        except TimeoutError:
            line = None
        if line == b"":
            return
        if line is not None:
            text = line.decode().rstrip("\n")
            if text.startswith("event: "):
                event = text[7:]
            elif text.startswith("data: "):
                data += text[6:]
            elif not text and data:
                apply(picture, event, json.loads(data))
                event, data, pending = "", "", True
        now = time.monotonic()
        if pending and now - drawn >= _REDRAW:
            redraw("")
            drawn, pending = now, False


def _frame(out: TextIO, picture: dict[str, Any], shown: str, note: str) -> None:
    size = shutil.get_terminal_size()
    lines = draw(
        picture, shown, width=size.columns, color=_color(out), height=size.lines - (1 if note else 0)
    )
    if note:
        lines.insert(1, note)
    out.write("\x1b[H" + "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J")
    out.flush()


def apply(picture: dict[str, Any], event: str, data: dict[str, Any]) -> None:
    """Bring ``picture`` up to a feed event: a ``snapshot`` replaces it, a ``patch`` replaces
    agents whole and merges nodes' fields (null removes)."""
    if event == "snapshot":
        picture.clear()
        picture.update(data)
        return
    if event != "patch":
        return
    agents, nodes = picture.setdefault("agents", {}), picture.setdefault("nodes", {})
    for agent_id, agent in (data.get("agents") or {}).items():
        if agent is None:
            agents.pop(agent_id, None)
        else:
            agents[agent_id] = agent
    for name, fields in (data.get("nodes") or {}).items():
        if fields is None:
            nodes.pop(name, None)
        else:
            nodes.setdefault(name, {}).update(fields)


# ---------------------------------------------------------------------- drawing


def draw(
    picture: dict[str, Any],
    source: str,
    *,
    width: int = 100,
    color: bool = False,
    height: int | None = None,
    trees: bool = False,
) -> list[str]:
    """The lines of one frame: a summary, nodes, agents, recent failures (and the trees).

    With ``height``, agents that do not fit are counted on one line instead.
    """
    paint = _painter(color)
    agents: dict[str, dict[str, Any]] = picture.get("agents") or {}
    nodes: dict[str, dict[str, Any]] = picture.get("nodes") or {}
    restarts = _restarts_by_agent(nodes)
    online = sum(1 for agent in agents.values() if agent.get("status") == "online")
    rate = sum((node.get("rate") or [0])[-1] for node in nodes.values() if not node.get("stale"))
    lines = [
        paint("bold", f"flockrt top  {source}  {time.strftime('%H:%M:%S')}"),
        f"{len(nodes)} nodes · {online}/{len(agents)} agents online · {rate:.1f} tasks/s · "
        f"{sum(node.get('restarts', 0) for node in nodes.values())} restarts",
        "",
        paint(
            "bold",
            f"{'NODE':<16} {'ACTORS':>6} {'RESTARTS':>8} {'FAILURES':>8} {'TASKS/S':>8} "
            f"{'LATENCY':>10}  LAST MINUTE",
        ),
    ]
    for name in sorted(nodes):
        node = nodes[name]
        rates = node.get("rate") or []
        latency = next((v for v in reversed(node.get("latency") or []) if v is not None), None)
        per_minute = max(1, int(60 / (node.get("interval") or 1)))
        tag = " (stale)" if node.get("stale") else ""
        lines.append(
            f"{(name + tag)[:16]:<16} {node.get('live', 0):>6} {node.get('restarts', 0):>8} "
            f"{node.get('failures', 0):>8} {(rates or [0])[-1]:>8.1f} "
            f"{'-' if latency is None else f'{latency:.1f} ms':>10}  {sparkline(rates[-per_minute:], 30)}"
        )
    lines += [
        "",
        paint(
            "bold",
            f"{'AGENT':<20} {'NODE':<12} {'STATUS':<8} {'LOAD':>5} {'TASKS':>7} "
            f"{'RESTARTS':>8}  CAPABILITIES",
        ),
    ]
    failures = _failures(nodes)
    ordered = sorted(agents.values(), key=lambda agent: (agent.get("node") or "", agent["id"]))
    # A full screen scrolls on its last newline: the frame takes at most height - 1 lines.
    below = 3 + max(1, min(len(failures), 5))  # "… more", the failures' heading and lines
    room = len(ordered) if height is None else max(1, height - 1 - len(lines) - below)
    for agent in ordered[:room]:
        status = agent.get("status", "?")
        if status == "online" and agent.get("reportedStatus") == "busy":
            status = "busy"
        load = agent.get("load")
        count = restarts.get(agent["id"], 0)
        caps = ", ".join(agent.get("capabilities") or [])
        row = (
            f"{agent['id'][:20]:<20} {(agent.get('node') or '-')[:12]:<12} "
            f"{paint(_STATUS_COLOR.get(status, ''), f'{status:<8}')} "
            f"{'-' if load is None else f'{round(load * 100)}%':>5} {agent.get('tasksProcessed', 0):>7} "
            f"{paint('yellow' if count else '', f'{count:>8}')}  {caps}"
        )
        lines.append(_clip(row, width))
    if len(ordered) > room:
        lines.append(f"… {len(ordered) - room} more agents (--once lists them all)")
    lines += ["", paint("bold", "RECENT FAILURES")]
    shown = failures if height is None else failures[:5]
    for when, name, failure in shown:
        stamp = _local_time(when)
        text = f"{stamp} {name} {failure['path']} {failure['error']}: {failure['reason']}"
        lines.append(_clip(paint("red", text), width))
    if not failures:
        lines.append("none")
    if trees:
        for name in sorted(nodes):
            lines += ["", paint("bold", f"TREE OF {name}")]
            tree = nodes[name].get("tree") or {}
            lines += draw_tree(tree.get("children") or [])
            if nodes[name].get("treeTruncated"):
                lines.append(f"… {nodes[name]['treeTruncated']} actors not shown")
    return lines


def draw_tree(children: list[dict[str, Any]], prefix: str = "") -> list[str]:
    """A node's supervision tree (its :class:`~flockrt.wire.state.TreeNode` JSON), drawn."""
    lines = []
    for index, child in enumerate(children):
        last = index == len(children) - 1
        parts = [child.get("name", "?"), child.get("actor") or "-"]
        if child.get("strategy"):
            parts.append(child["strategy"])
        if child.get("state", "running") != "running":
            parts.append(child["state"])
        if child.get("restarts"):
            parts.append(f"restarted {child['restarts']}x")
        lines.append(f"{prefix}{'└── ' if last else '├── '}{'  '.join(parts)}")
        lines += draw_tree(child.get("children") or [], prefix + ("    " if last else "│   "))
    return lines


def sparkline(values: list[float], width: int) -> str:
    """The last ``width`` values as block characters scaled to their maximum."""
    values = values[-width:]
    top = max(values, default=0) or 1.0
    return "".join(_SPARKS[min(len(_SPARKS) - 1, int(v / top * (len(_SPARKS) - 1)))] for v in values)


def _restarts_by_agent(nodes: dict[str, dict[str, Any]]) -> dict[str, int]:
    found: dict[str, int] = {}

    def walk(tree: dict[str, Any]) -> None:
        if tree.get("restarts"):
            found[tree.get("name", "")] = tree["restarts"]
        for child in tree.get("children") or []:
            walk(child)

    for node in nodes.values():
        walk(node.get("tree") or {})
    return found


def _failures(nodes: dict[str, dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    found = [(f["timestamp"], name, f) for name, node in nodes.items() for f in node.get("recent") or []]
    return sorted(found, key=lambda item: item[0], reverse=True)


def _local_time(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return iso


_STATUS_COLOR = {"online": "green", "offline": "red", "busy": "yellow"}
_CODES = {"bold": "1", "red": "31", "green": "32", "yellow": "33"}


def _painter(color: bool) -> Any:
    def paint(style: str, text: str) -> str:
        if not color or not style:
            return text
        return f"\x1b[{_CODES[style]}m{text}\x1b[0m"

    return paint


def _clip(line: str, width: int) -> str:
    """Cut a line to the terminal's width (colour codes aside: a cut line loses its colour)."""
    if len(line) <= width or "\x1b" in line:
        return line
    return line[: max(1, width - 1)] + "…"


def _width() -> int:
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else 10_000


def _color(out: TextIO = sys.stdout) -> bool:
    return out.isatty() and "NO_COLOR" not in os.environ
