"""``flockrt.Flock`` as the design's embedding example uses it: a few keywords or a config file,
and the common operations on the flock itself."""

from __future__ import annotations

from pathlib import Path

import pytest

import flockrt
from flockrt.bus.embedded import EmbeddedNats


class Analyst(flockrt.Agent):
    """Counts words locally; answers text-analysis requests and 'analysis' tasks."""

    @flockrt.capability("text-analysis")
    async def analyze(self, text: str) -> dict[str, int]:
        return {"words": len(text.split())}

    @flockrt.handles_task("analysis")
    async def on_task(self, task: flockrt.TaskMessage) -> dict[str, int]:
        return await self.analyze(str(task.data))


async def test_the_design_example_on_an_embedded_nats() -> None:
    async with flockrt.Flock(nats="embedded") as flock:
        assert flock.server is not None and flock.nats_url is not None  # its own server, on a free port
        await flock.spawn_pool(Analyst, count=4, restart="permanent")
        assert await flock.request_capability("text-analysis", {"text": "a flock of agents"}, timeout=5) == {
            "words": 4
        }
        result = await flock.submit("analysis", "many words here", wait=True, timeout=5)
        assert isinstance(result, flockrt.TaskResult) and result.result == {"words": 3}
        assert sorted(agent.id for agent in flock.list_agents(status="online")) == [
            f"analyst-{i}" for i in range(1, 5)
        ]
        assert len(await flock.wait_for_agents(4, capability="text-analysis")) == 4


async def test_in_process_without_nats_and_two_nodes_sharing_one(nats_server: EmbeddedNats) -> None:
    async with flockrt.Flock(name="solo") as solo:
        assert solo.bus is None and isinstance(solo.running, flockrt.LocalFlock)
        await solo.spawn_pool(Analyst, 1)
        assert await solo.send_message("analyst-1", "hi", type="query") is None  # no on_message answer
    async with (
        flockrt.Flock(nats=nats_server.url, name="a") as a,
        flockrt.Flock(nats=nats_server.url, name="b") as b,
    ):
        await a.spawn_pool(Analyst, 2)
        await b.wait_for_agents(2, capability="text-analysis")
        assert await b.request_capability("text-analysis", {"text": "x y"}) == {"words": 2}


async def test_from_config_and_errors_before_start(tmp_path: Path) -> None:
    path = tmp_path / "flock.toml"
    path.write_text('[runtime]\nname = "from-file"\n[[agents]]\nid = "echo"\nclass = "echo"\n')
    flock = flockrt.Flock.from_config(path, env={})
    assert flock.config.runtime.name == "from-file"
    with pytest.raises(flockrt.FlockError, match="not started"):
        flock.list_agents()
    async with flock:
        assert [agent.id for agent in flock.list_agents()] == ["echo"]
    path.write_text("[runtime]\nmailbox_capacity = 0\n")
    with pytest.raises(flockrt.ConfigError, match=r"runtime\.mailbox_capacity"):
        flockrt.Flock.from_config(path, env={})
