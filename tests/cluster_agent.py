"""The agent of the multi-process tests: it records every execution of a ``work`` task.

A config names it as ``class = "tests.cluster_agent:Recorder"`` with ``options = { record =
"/path/of/the/log" }``. Each execution appends ``start <task id> <agent id> <time>`` when the
handler begins and ``done <task id> <agent id> <time>`` when it ends (``time.time()``, one clock
for every process of the machine), one ``write`` on a file opened with
O_APPEND, so the lines of every process of a test interleave whole and survive a ``kill -9`` of
the writer. A task's ``data`` is ``{"seconds": s}``: how long the work takes (0 for none).

Counting the lines tells what ran once, twice, or not at all (see :func:`read_record`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from flockrt.agents.agent import Agent, handles_task
from flockrt.wire.schema import TaskMessage

__all__ = ["TASK_TYPE", "Recorder", "Record", "read_record"]

TASK_TYPE = "work"

_files: dict[str, int] = {}  # path -> descriptor, one per process


def _append(path: str, line: str) -> None:
    fd = _files.get(path)
    if fd is None:
        fd = _files[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, line.encode())


class Recorder(Agent):
    """Runs ``work`` tasks for ``data["seconds"]`` seconds and records each execution."""

    def __init__(
        self,
        agent_id: str,
        *,
        record: str,
        name: str | None = None,
        max_concurrent_tasks: int | None = None,
    ) -> None:
        super().__init__(agent_id, name=name, max_concurrent_tasks=max_concurrent_tasks)
        self.record = record

    @handles_task(TASK_TYPE)
    async def work(self, task: TaskMessage) -> dict[str, Any]:
        _append(self.record, f"start {task.id} {self.agent_id} {time.time():.6f}\n")
        data = task.data if isinstance(task.data, dict) else {}
        seconds = float(data.get("seconds", 0))
        if seconds > 0:
            await asyncio.sleep(seconds)  # the work itself: it takes this long
        _append(self.record, f"done {task.id} {self.agent_id} {time.time():.6f}\n")
        return {"by": self.agent_id}


class Record:
    """What a record file says: executions begun and finished, per task id."""

    def __init__(self, lines: list[str]) -> None:
        self.started: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()
        self.agents: dict[str, list[str]] = {}  # task id -> agents that started it
        self.first_start = self.last_done = 0.0
        for line in lines:
            what, task_id, agent, at = line.split()  # os.write of one line is whole, even at kill -9
            if what == "start":
                self.started[task_id] += 1
                self.agents.setdefault(task_id, []).append(agent)
                self.first_start = min(self.first_start or float(at), float(at))
            elif what == "done":
                self.finished[task_id] += 1
                self.last_done = max(self.last_done, float(at))

    @property
    def makespan(self) -> float:
        """Seconds from the first execution's start to the last one's end."""
        return self.last_done - self.first_start

    def twice(self) -> dict[str, list[str]]:
        """Tasks begun more than once, with the agents that began them."""
        return {task_id: self.agents[task_id] for task_id, n in self.started.items() if n > 1}

    def by_node(self, node: str) -> int:
        """Executions begun by agents of ``node`` (agent ids are prefixed with the node name)."""
        return sum(1 for agents in self.agents.values() for agent in agents if agent.startswith(f"{node}-"))


def read_record(path: Path) -> Record:
    """The :class:`Record` of a record file (empty if nothing ran yet)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Record([])
    return Record(text.splitlines())
