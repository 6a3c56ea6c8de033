"""Outside A2A agents in the flock: an agent built with the a2a-sdk alone (``tests.a2a_remote_agent``,
its own process on a real socket) configured as ``[[a2a.remote]]``.

Its skills are capabilities of the flock, requested over MCP and over NATS from another
process; killing it takes its proxy offline and requests fail fast with a clear error;
restarting it brings it back; a breaker guards a remote whose requests keep failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.types import ListTasksRequest, TaskState

from flockrt import metrics
from flockrt.bus.embedded import EmbeddedNats
from flockrt.config import A2aConfig, A2aRemote, AuthConfig, FlockConfig, McpConfig, NatsConfig, RuntimeConfig
from flockrt.errors import CircuitOpen, NoCapableAgent, RemoteAgentUnreachable, WorkFailed, WorkTimeout
from flockrt.runtime import Flock
from tests.conftest import wait_for
from tests.mcp_support import client, structured

ROOT = Path(__file__).resolve().parent.parent
AGENT = "remote-1"

pytestmark = pytest.mark.timeout(90)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RemoteProcess:
    """``tests.a2a_remote_agent`` in a process of its own, on ``port``: started, killed, restarted."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.port = port
        self.token = token
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        args = [str(self.port), *([self.token] if self.token else [])]
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.a2a_remote_agent",
            *args,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.proc.stdout is not None
        assert (await asyncio.wait_for(self.proc.stdout.readline(), 30)).strip() == b"ready"

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def remote_agent(token: str | None = None) -> AsyncIterator[RemoteProcess]:
    remote = RemoteProcess(free_port(), token)
    await remote.start()
    try:
        yield remote
    finally:
        await remote.kill()


def flock_config(
    remote: RemoteProcess, *, token: str = "", nats_url: str | None = None, refresh: float = 0.3
) -> FlockConfig:
    return FlockConfig(
        runtime=RuntimeConfig(name="gw", shutdown_timeout=5.0),
        nats=NatsConfig(url=nats_url) if nats_url else None,
        mcp=McpConfig(port=0, auth=AuthConfig()),
        a2a=A2aConfig(
            refresh_interval=refresh, remote=[A2aRemote(url=remote.url, token=token, timeout=5.0, id=AGENT)]
        ),
    )


def status(flock: Flock) -> str | None:
    info = flock.running.get_agent(AGENT)
    return None if info is None else info.status


async def request_over_nats(url: str, capability: str, parameters: object) -> dict[str, object]:
    """A capability request from another process with plain nats-py (what a peer in any
    language sends on ``capability.<name>``)."""
    code = (
        "import asyncio, json, sys, nats\n"
        "async def main():\n"
        "    nc = await nats.connect(sys.argv[1])\n"
        "    body = json.dumps({'capability': sys.argv[2], 'parameters': json.loads(sys.argv[3]),\n"
        "                       'requester': 'other-process', 'timeout': 10000}).encode()\n"
        "    reply = await nc.request('capability.' + sys.argv[2], body, timeout=15)\n"
        "    print(reply.data.decode())\n"
        "    await nc.close()\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        url,
        capability,
        json.dumps(parameters),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    answer: dict[str, object] = json.loads(out)
    return answer


async def test_a_remote_agents_skills_are_requested_over_mcp_and_over_nats(nats_server: EmbeddedNats) -> None:
    async with remote_agent() as remote, Flock(flock_config(remote, nats_url=nats_server.url)) as flock:
        (info,) = await flock.wait_for_agents(1, capability="shout", timeout=10)
        assert info.id == AGENT
        assert info.name == "remote-shouter"  # the card's name
        assert set(info.capabilities) == {"shout", "add", "fail", "slow", "ask"}
        assert await flock.request_capability("shout", {"text": "in process"}) == "IN PROCESS"

        assert flock.gateway_url is not None
        async with client(flock.gateway_url) as mcp:
            tools = {tool.name: tool for tool in (await mcp.list_tools()).tools}
            assert tools["shout"].description == "Upper-cases text."  # from the remote's card
            assert structured(await mcp.call_tool("shout", {"text": "over mcp"})) == {"result": "OVER MCP"}
            added = await mcp.call_tool(
                "request_capability", {"capability": "add", "parameters": {"a": 2, "b": 40}}
            )
            assert structured(added)["result"] == {"sum": 42}
            failed = await mcp.call_tool("fail", {"text": "x"})
            assert failed.is_error
            assert "its task ended failed: no such skill: fail" in structured(failed)["message"]

        answer = await request_over_nats(nats_server.url, "shout", {"text": "over nats"})
        assert answer["result"] == "OVER NATS"
        assert answer["agentId"] == AGENT


async def test_a_killed_remote_goes_offline_fails_fast_and_comes_back_when_restarted() -> None:
    async with remote_agent() as remote, Flock(flock_config(remote)) as flock:
        await flock.wait_for_agents(1, capability="shout", timeout=10)
        assert await flock.request_capability("shout", {"text": "up"}) == "UP"

        await remote.kill()
        # The next request either finds it unreachable (and that takes it offline at once), or
        # the periodic read of its card already did: a clear error either way, and fast.
        started = time.perf_counter()
        with pytest.raises((WorkFailed, NoCapableAgent)) as first:
            await flock.request_capability("shout", {"text": "down?"}, timeout=10)
        assert time.perf_counter() - started < 2.0
        if isinstance(first.value, WorkFailed):
            assert isinstance(first.value.__cause__, RemoteAgentUnreachable)
            assert f"remote A2A agent {AGENT} at {remote.url} is unreachable" in str(first.value)
        await wait_for(lambda: status(flock) == "offline", timeout=10)
        assert flock.list_agents("online", capability="shout") == []

        started = time.perf_counter()
        with pytest.raises(NoCapableAgent, match="no agent offers capability 'shout'"):
            await flock.request_capability("shout", {"text": "down"}, timeout=10)
        assert time.perf_counter() - started < 0.5
        assert flock.gateway_url is not None
        async with client(flock.gateway_url) as mcp:
            refused = await mcp.call_tool(
                "request_capability", {"capability": "shout", "parameters": {"text": "x"}}
            )
            assert refused.is_error
            assert structured(refused)["error"] == "no_capable_agent"

        await remote.start()  # the same port: the card can be read again
        await wait_for(lambda: status(flock) == "online", timeout=10)
        assert await flock.request_capability("shout", {"text": "back"}) == "BACK"


async def test_the_token_is_sent_and_a_breaker_guards_a_remote_whose_requests_fail() -> None:
    async with remote_agent(token="s3cret") as remote:
        async with Flock(flock_config(remote, token="s3cret")) as flock:
            await flock.wait_for_agents(1, capability="add", timeout=10)
            assert await flock.request_capability("add", {"a": 1, "b": 2}) == {"sum": 3}

        # A wrong token: the card (public) can be read, every request is refused with 401.
        async with Flock(flock_config(remote, token="wrong", refresh=60.0)) as flock:
            await flock.wait_for_agents(1, capability="add", timeout=10)
            for _ in range(3):
                with pytest.raises(WorkFailed) as refused:
                    await flock.request_capability("add", {"a": 1, "b": 2})
                assert isinstance(refused.value.__cause__, RemoteAgentUnreachable)
                assert "401" in str(refused.value)
            started = time.perf_counter()
            with pytest.raises(WorkFailed) as fast:
                await flock.request_capability("add", {"a": 1, "b": 2})
            assert time.perf_counter() - started < 0.5
            assert isinstance(fast.value.__cause__, CircuitOpen)
            assert f"circuit breaker for remote A2A agent {AGENT} is open" in str(fast.value)
            assert status(flock) == "online"  # its card can be read: it stays, behind the breaker


@contextlib.asynccontextmanager
async def remote_tasks(remote: RemoteProcess) -> AsyncIterator[Callable[[str, int], Awaitable[None]]]:
    """``until(state, count)``: wait until ``count`` of the remote's tasks are in ``state``
    (``"canceled"``, ``"working"``...), as its own A2A ``ListTasks`` gives them; fail after 10 s."""
    async with httpx.AsyncClient(timeout=10) as http:
        card = await A2ACardResolver(http, remote.url).get_agent_card()
        a2a = ClientFactory(ClientConfig(httpx_client=http, streaming=False)).create(card)

        async def until(state: str, count: int) -> None:
            deadline = time.monotonic() + 10
            while True:
                listed = await a2a.list_tasks(ListTasksRequest())
                states = [TaskState.Name(task.status.state) for task in listed.tasks]
                if states.count("TASK_STATE_" + state.upper()) == count:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"not {count} {state} tasks at the remote within 10 s: {states}")

        yield until


def counted(series: str, outcome: str) -> float:
    """``flockrt_a2a_remote_<series>_total{remote=AGENT, outcome}`` now (the process's registry)."""
    sample = metrics.REGISTRY.get_sample_value(
        f"flockrt_a2a_remote_{series}_total", {"remote": AGENT, "outcome": outcome}
    )
    return sample or 0.0


async def test_a_request_given_up_or_left_asking_for_input_is_cancelled_at_the_remote() -> None:
    outcomes = [("requests", "cancelled"), ("requests", "failed"), ("requests", "ok"), ("cancels", "ok")]
    before = {case: counted(*case) for case in outcomes}
    async with remote_agent() as remote, Flock(flock_config(remote)) as flock, remote_tasks(remote) as until:
        await flock.wait_for_agents(1, capability="slow", timeout=10)
        assert flock.a2a is not None
        link = flock.a2a.remotes.links[AGENT]

        # The requester's deadline passes while the remote works: the remote's task is cancelled.
        request = asyncio.create_task(flock.request_capability("slow", {"text": "forever"}, timeout=2))
        await until("working", 1)
        with pytest.raises(WorkTimeout):
            await request
        await until("canceled", 1)

        # A requester cancelled from outside: the same.
        request = asyncio.create_task(flock.request_capability("slow", {"text": "again"}, timeout=30))
        await until("working", 1)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await until("canceled", 2)

        # A task that asks for input fails the request and is not left open at the remote.
        with pytest.raises(WorkFailed, match="its task ended input_required: which one"):
            await flock.request_capability("ask", {"text": "?"}, timeout=10)
        await until("canceled", 3)
        assert (link.cancels_sent, link.cancels_failed) == (3, 0)

        # A task that ended by itself is not cancelled.
        assert await flock.request_capability("shout", {"text": "done"}) == "DONE"
        await until("completed", 1)
        assert (link.cancels_sent, link.cancels_failed) == (3, 0)
    counts = {case: counted(*case) - before[case] for case in outcomes}
    assert counts == {
        ("requests", "cancelled"): 2,
        ("requests", "failed"): 1,
        ("requests", "ok"): 1,
        ("cancels", "ok"): 3,
    }
