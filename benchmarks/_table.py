"""One result row per measured quantity, and the Markdown table they print as."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One quantity measured on flockrt, bare asyncio and Pykka (None: not measured / n/a)."""

    workload: str
    unit: str
    flockrt: float | None
    bare: float | None
    pykka: float | None
    target: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """flockrt / bare: above 1 is better for rates, below 1 for bytes and latencies."""
        if self.flockrt is None or not self.bare:
            return None
        return self.flockrt / self.bare

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit.endswith("/s"):
        if value >= 1e6:
            return f"{value / 1e6:.2f}M"
        return f"{value / 1e3:.1f}k" if value >= 1e3 else f"{value:.0f}"
    if unit in ("us", "ms", "s"):
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    return f"{value:,.0f}"


HEADER = ("workload", "unit", "flockrt", "bare asyncio", "pykka", "flockrt/bare", "target", "met", "notes")
RIGHT = {2, 3, 4, 5}


def render(
    rows: list[Row],
    *,
    bare: str = "bare asyncio",
    pykka: bool = True,
    ours: str = "flockrt",
    ratio: str = "flockrt/bare",
) -> str:
    """A Markdown table, padded so that it also reads well in a terminal.

    ``bare`` titles the baseline column; ``pykka=False`` leaves the Pykka column out (for suites
    without that peer, like the NATS bus suite); ``ours`` and ``ratio`` title the measured and
    the ratio columns (the metrics suite compares flockrt with itself: "metrics on", "on/off").
    """
    cells = [(*HEADER[:2], ours, bare, HEADER[4], ratio, *HEADER[6:])]
    for row in rows:
        ratio = row.ratio
        cells.append(
            (
                row.workload,
                row.unit,
                fmt(row.flockrt, row.unit),
                fmt(row.bare, row.unit),
                fmt(row.pykka, row.unit),
                f"{ratio:.2f}x" if ratio is not None else "",
                row.target,
                {True: "yes", False: "NO", None: ""}[row.met],
                row.note,
            )
        )
    right = RIGHT
    if not pykka:
        cells = [(*line[:4], *line[5:]) for line in cells]
        right = {2, 3, 4}
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]

    def line(values: tuple[str, ...]) -> str:
        padded = (
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        )
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i in right else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), rule, *map(line, cells[1:])])


def write_json(
    path: Path,
    info: dict[str, Any],
    sizes: Any,
    rows: Sequence[Row],
    say: Callable[[str], None],
    **extra: Any,
) -> None:
    """Write a suite's results (its run info, sizes, ``extra`` sections and rows) to ``path``."""
    document = {**info, "sizes": asdict(sizes), **extra, "rows": [row.as_json() for row in rows]}
    path.write_text(json.dumps(document, indent=2) + "\n")
    say(f"results written to {path}")
