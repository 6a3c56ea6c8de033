"""Agents the CLI tests name in configs (``class = "tests.cli_agents:Reporter"``)."""

from __future__ import annotations

import asyncio
from typing import Any

import flockrt


class Reporter(flockrt.Agent):
    """Offers ``reporting``: reports its progress twice, then answers."""

    @flockrt.capability("reporting")
    async def work(self) -> str:
        self.report_progress(1, 2, "half way")
        await asyncio.sleep(0)
        self.report_progress(2, 2, "all there")
        return "finished"


class Stuck(flockrt.Agent):
    """Handles ``stuck`` tasks by waiting until it is stopped: a task that never finishes."""

    @flockrt.handles_task("stuck")
    async def stuck(self, task: flockrt.TaskMessage) -> Any:
        await asyncio.Event().wait()
