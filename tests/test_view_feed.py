"""The live view's parts without a browser: node states over a real NATS (published on change,
bad ones counted, oversize trees cut), peers going stale, and the feed's snapshot and patches
(only what changed, a lagging reader resynchronised)."""

from __future__ import annotations

import asyncio
import json
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from flockrt.bus.embedded import EmbeddedNats
from flockrt.config import AgentConfig, AuthConfig, FlockConfig, McpConfig, NatsConfig
from flockrt.runtime import Flock
from flockrt.view.feed import Feed
from flockrt.view.node import NodeView
from flockrt.wire.state import NodeState, TreeNode
from tests.conftest import wait_for


def config(name: str, url: str, agents: str, count: int = 2, mcp: bool = False) -> FlockConfig:
    return FlockConfig(
        runtime=msgspec.structs.replace(FlockConfig().runtime, name=name),
        nats=NatsConfig(url=url),
        mcp=McpConfig(port=0) if mcp else None,
        agents=[AgentConfig(id=agents, class_="tests.view_agents:Crashy", count=count)],
    )


@pytest.fixture
async def two(nats_server: EmbeddedNats) -> AsyncIterator[tuple[Flock, Flock]]:
    async with (
        Flock(config("alpha", nats_server.url, "a", mcp=True)) as alpha,
        Flock(config("beta", nats_server.url, "b")) as beta,
    ):
        yield alpha, beta


def peer(flock: Flock, name: str) -> NodeState | None:
    assert flock.view is not None
    entry = flock.view.node.peers.get(name)
    return entry[0] if entry is not None else None


async def test_each_node_hears_the_others_state_and_a_restart_at_once(two: tuple[Flock, Flock]) -> None:
    alpha, beta = two
    await wait_for(lambda: peer(alpha, "beta") is not None and peer(beta, "alpha") is not None)
    state = peer(alpha, "beta")
    assert state is not None
    root = next(child for child in state.tree.children if child.name == "root")
    assert [child.name for child in root.children] == ["b-1", "b-2"]
    assert root.strategy == "one_for_one" and state.restarts == 0

    assert beta.flock is not None
    await beta.flock.send("b-1", "crash")
    # Sooner than the 5 s period: a failure brings the state forward.
    await wait_for(lambda: (s := peer(alpha, "beta")) is not None and s.restarts == 1, timeout=3)
    state = peer(alpha, "beta")
    assert state is not None
    assert [(f.path, f.error, f.reason) for f in state.recent] == [
        ("/root/b-1", "RuntimeError", "b-1 was asked to crash")
    ]
    root = next(child for child in state.tree.children if child.name == "root")
    assert {child.name: child.restarts for child in root.children} == {"b-1": 1, "b-2": 0}


async def test_bad_node_states_are_counted_and_change_nothing(
    two: tuple[Flock, Flock], nats_server: EmbeddedNats
) -> None:
    alpha, _ = two
    assert alpha.flock is not None and alpha.view is not None
    await wait_for(lambda: peer(alpha, "beta") is not None)
    client = await nats.connect(nats_server.url)
    try:
        await client.publish("flockrt.node.evil.state", b"{not json")
        await client.publish("flockrt.node.evil.state", json.dumps({"node": "evil"}).encode())
        # A state that claims another node's name than its subject's.
        good = msgspec.json.encode(peer(alpha, "beta"))
        await client.publish("flockrt.node.evil.state", good)
        await client.flush()
    finally:
        await client.close()
    await wait_for(lambda: alpha.flock.invalid_messages["flockrt.node.*.state"] == 3)  # type: ignore[union-attr]
    assert set(alpha.view.node.peers) == {"beta"}


async def test_an_oversize_tree_is_cut_to_fit_the_servers_max_payload(nats_server: EmbeddedNats) -> None:
    client = await nats.connect(nats_server.url)
    heard: list[bytes] = []
    try:

        async def hear(msg: Any) -> None:
            heard.append(msg.data)

        await client.subscribe("flockrt.node.beta.state", cb=hear)
        async with Flock(config("beta", nats_server.url, "b", count=30)) as beta:
            assert beta.view is not None and beta.view.states is not None and beta.bus is not None
            await wait_for(lambda: bool(heard))
            assert len(heard[-1]) > 1000  # thirty agents in the tree
            beta.bus.max_payload = 1000  # what a server with a small max_payload would say
            count = len(heard)
            await beta.flock.send("b-2", "crash")  # type: ignore[union-attr]  # a change: published now
            await wait_for(lambda: len(heard) > count, timeout=3)
    finally:
        await client.close()
    state = msgspec.json.decode(heard[-1], type=NodeState)
    assert len(heard[-1]) <= 1000 and state.tree_truncated == 30
    assert [child.name for child in state.tree.children] == ["root"] and state.tree.children[0].children == []
    assert state.restarts == 1 and beta.view.states.truncated >= 1


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _state(name: str) -> NodeState:
    from flockrt.wire.schema import utcnow

    return NodeState(
        node=name, timestamp=utcnow(), interval=1.0, rate=[1.0], latency=[2.0], live=1, restarts=0,
        failures=0, tree=TreeNode(name="/"), recent=[],
    )  # fmt: skip


async def test_a_silent_peer_goes_stale_then_is_forgotten() -> None:
    clock = _Clock()
    async with Flock(FlockConfig()) as flock:
        assert flock.view is None  # no NATS, no gateway: nobody to show it to
        assert flock.flock is not None
        view = NodeView(flock.system, flock.flock, period=1.0, clock=clock)
        view.on_peer_state(_state("gone"))
        assert not view.stale("gone")
        clock.now = 3.5
        assert view.stale("gone")
        view.refresh()
        assert "gone" in view.peers
        clock.now = 31.0
        view.refresh()
        assert "gone" not in view.peers


async def test_the_feed_sends_a_snapshot_then_only_what_changed() -> None:
    cfg = FlockConfig(
        mcp=McpConfig(port=0), agents=[AgentConfig(id="w", class_="tests.view_agents:Crashy", count=3)]
    )
    async with Flock(cfg) as flock:
        assert flock.view is not None and flock.flock is not None
        feed = flock.view.feed
        feed.min_interval = 0.0
        stream = feed.open()
        first = await stream.next(5)
        assert first is not None and first.startswith(b"event: snapshot\ndata: ")
        snapshot = json.loads(first.split(b"data: ", 1)[1])
        assert sorted(snapshot["agents"]) == ["w-1", "w-2", "w-3"]
        assert snapshot["nodes"]["flock"]["self"] is True

        await flock.flock.send("w-3", "crash")
        patches: list[dict[str, Any]] = []
        while not any(p["nodes"].get("flock", {}).get("restarts") == 1 for p in patches):
            event = await stream.next(5)
            assert event is not None
            if event.startswith(b"event: patch"):
                patches.append(json.loads(event.split(b"data: ", 1)[1]))
        changed = next(p for p in patches if p["nodes"].get("flock", {}).get("restarts") == 1)["nodes"][
            "flock"
        ]
        # Only the fields that changed travel: the node's name, interval and self flag did not.
        assert "node" not in changed and "interval" not in changed and "self" not in changed
        assert all(agent_id in ("w-1", "w-2", "w-3") for p in patches for agent_id in p["agents"])
        stream.leave()
        assert stream not in feed.streams


async def test_a_reader_that_falls_behind_gets_a_fresh_snapshot() -> None:
    async with Flock(FlockConfig(mcp=McpConfig(port=0))) as flock:
        assert flock.view is not None
        feed: Feed = flock.view.feed
        feed.max_queued = 2
        stream = feed.open()
        for _ in range(3):
            stream.put(b"event: patch\ndata: {}\n\n")
        assert feed.resyncs == 1
        events = [await stream.next(1) for _ in range(2)]
        assert events[0] is not None and events[0].startswith(b"event: snapshot")
        feed.close()
        assert await stream.next(1) is None


async def test_a_node_name_that_cannot_be_a_subject_still_runs_and_hears_others(
    nats_server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        Flock(config("my flock", nats_server.url, "a", mcp=True)) as odd,
        Flock(config("beta", nats_server.url, "b")) as beta,
    ):
        assert odd.view is not None and odd.view.states is not None and beta.view is not None
        await wait_for(lambda: peer(odd, "beta") is not None)
        assert odd.view.states.published == 0 and not beta.view.node.peers
        assert "node name 'my flock' cannot be part of a NATS subject" in caplog.text


def test_the_page_ships_as_package_data() -> None:
    root = Path(__file__).resolve().parent.parent
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    assert "view/page.html" in pyproject["tool"]["setuptools"]["package-data"]["flockrt"]
    assert (root / "flockrt" / "view" / "page.html").is_file()
    assert "playwright" in " ".join(pyproject["project"]["optional-dependencies"]["dev"])


async def test_a_stream_ends_when_its_token_expires() -> None:
    import time

    import aiohttp
    import jwt

    secret = "a-secret-of-at-least-thirty-two-bytes!"
    config = FlockConfig(mcp=McpConfig(port=0, auth=AuthConfig(jwt_secret=secret)), agents=[])
    async with Flock(config) as flock, aiohttp.ClientSession() as http:
        assert flock.web is not None
        expires = time.time() + 2
        token = jwt.encode({"sub": "viewer", "exp": expires}, secret, algorithm="HS256")
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(flock.web.url + "/view/feed", headers=headers) as response:
            assert response.status == 200
            events = 0
            async with asyncio.timeout(15):
                async for line in response.content:
                    events += line.startswith(b"event: ")
            assert time.time() >= expires and events >= 1  # ended by the expiry, not before
        async with http.get(flock.web.url + "/view/feed", headers=headers) as response:
            assert response.status == 401
            assert "expired" in await response.text()
