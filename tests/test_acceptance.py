"""Issue 5's acceptance, as a user meets it: ``flockrt run`` on the shipped config (ports moved
to free ones, as tests run in parallel), then the official ``mcp`` client lists the agents and
``/metrics`` shows the flockrt series, all against the running process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path

import aiohttp

from flockrt.config import ENV_OVERRIDES
from tests.mcp_support import client, structured

ROOT = Path(__file__).resolve().parent.parent


async def test_the_shipped_flock_serves_mcp_and_metrics(tmp_path: Path) -> None:
    text = (ROOT / "configs" / "flock.toml").read_text()
    config = tmp_path / "flock.toml"
    config.write_text(text.replace("port = 4222", "port = 0", 1).replace("port = 4002", "port = 0", 1))
    env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flockrt", "run", str(config), env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        log = ""
        async with asyncio.timeout(30):
            while "agents under /root" not in log:
                line = (await proc.stderr.readline()).decode()
                assert line, f"flockrt run ended early:\n{log}"
                log += line
        ready_after = time.perf_counter() - started
        assert ready_after < 15, f"ready after {ready_after:.1f} s"  # "within seconds", on a loaded machine
        gateway = re.search(r"MCP gateway listening on (http://\S+/mcp)", log)
        assert gateway is not None, log

        async with client(gateway.group(1)) as mcp:  # the official SDK client, its default mode
            tools = {tool.name for tool in (await mcp.list_tools()).tools}
            assert {"list_agents", "request_capability", "submit_task"} <= tools
            listed = structured(await mcp.call_tool("list_agents", {"status": "online"}))
            assert sorted(agent["id"] for agent in listed["agents"]) == ["ai", "echo", "text-1", "text-2"]

        metrics_url = gateway.group(1).removesuffix("/mcp") + "/metrics"
        async with aiohttp.ClientSession() as http, http.get(metrics_url) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            body = await response.text()
        series = set(re.findall(r"^(flockrt_[a-z0-9_]+)", body, re.M))
        assert len(series) >= 10, series
        assert any(name.startswith("flockrt_mcp_") for name in series), series

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
