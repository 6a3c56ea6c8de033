"""The agent directory: liveness on the receiver's clock, lookups, routing, change notifications.

Time is a fake clock moved by hand (monotonic seconds, plus a wall clock derived from it), so the
offline boundary is tested to the exact second and nothing sleeps.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flockrt.flock.directory import AgentInfo, Directory
from flockrt.wire.schema import AgentAnnouncement, Heartbeat

EPOCH = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
INTERVAL = 30.0  # seconds between heartbeats; three may be missed, so 90 s of silence is allowed
SKEWED = datetime(1999, 1, 1, tzinfo=UTC)  # a sender whose clock is far off


class FakeClock:
    """Monotonic seconds moved by hand; the wall clock is EPOCH plus the same seconds."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return EPOCH + timedelta(seconds=self.now - 1000.0)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def directory(clock: FakeClock) -> Directory:
    return Directory(INTERVAL, clock=clock, wallclock=clock.wall)


class Recorder:
    """A subscriber that records every notification it gets."""

    def __init__(self) -> None:
        self.events: list[tuple[str, AgentInfo | None]] = []

    def __call__(self, agent_id: str, info: AgentInfo | None) -> None:
        self.events.append((agent_id, info))

    def take(self) -> list[tuple[str, str | None]]:
        """The events since the last take, as (id, status) pairs (None for a removal)."""
        taken: list[tuple[str, str | None]] = [
            (agent_id, None if info is None else info.status) for agent_id, info in self.events
        ]
        self.events.clear()
        return taken


def announce(
    directory: Directory,
    agent_id: str,
    *capabilities: str,
    name: str | None = None,
    node: str | None = None,
    max_concurrent_tasks: int | None = None,
) -> AgentInfo:
    return directory.on_announcement(
        AgentAnnouncement(
            id=agent_id,
            name=name or agent_id.upper(),
            capabilities=list(capabilities),
            node=node,
            max_concurrent_tasks=max_concurrent_tasks,
            timestamp=SKEWED,
        )
    )


def beat(
    directory: Directory,
    agent_id: str,
    *,
    status: str = "online",
    load: float | None = None,
    tasks: int = 0,
    uptime: int = 0,
) -> AgentInfo:
    return directory.on_heartbeat(
        Heartbeat(
            agent_id=agent_id,
            status=status,
            load=load,
            tasks_processed=tasks,
            uptime=uptime,
            timestamp=SKEWED,
        )
    )


# -- feeding ---------------------------------------------------------------------------------------


def test_announcement_then_heartbeats_update_the_snapshot(directory: Directory, clock: FakeClock) -> None:
    info = announce(directory, "a1", "summarize", "translate", "summarize", node="n1", max_concurrent_tasks=4)
    assert info == AgentInfo(
        id="a1",
        name="A1",
        capabilities=("summarize", "translate"),  # announcement order, duplicates dropped
        status="online",
        reported_status="online",
        last_seen=EPOCH,
        timestamp=SKEWED,
        node="n1",
        max_concurrent_tasks=4,
    )

    clock.advance(30)
    info = beat(directory, "a1", status="busy", load=0.5, tasks=7, uptime=30_000)
    assert (info.reported_status, info.load, info.tasks_processed, info.uptime_ms) == ("busy", 0.5, 7, 30_000)
    assert info.last_seen == EPOCH + timedelta(seconds=30)
    # What the announcement said is kept.
    assert (info.name, info.capabilities, info.node, info.max_concurrent_tasks) == (
        "A1",
        ("summarize", "translate"),
        "n1",
        4,
    )
    assert directory.get("a1") == info


def test_last_seen_is_the_receivers_clock_not_the_senders(directory: Directory, clock: FakeClock) -> None:
    """A sender whose clock is years behind is still online: liveness never reads its timestamp."""
    announce(directory, "a1")
    clock.advance(60)
    info = beat(directory, "a1")
    assert info.timestamp == SKEWED
    assert info.last_seen == EPOCH + timedelta(seconds=60)
    clock.advance(90)
    assert directory.get("a1") == info  # still online, nothing changed


def test_reannouncement_replaces_description_and_keeps_counters(directory: Directory) -> None:
    announce(directory, "a1", "x", "y", node="n1")
    beat(directory, "a1", status="busy", tasks=5, uptime=99)
    info = announce(directory, "a1", "y", "z", name="Renamed", node="n2", max_concurrent_tasks=2)
    assert (info.name, info.capabilities, info.node, info.max_concurrent_tasks) == (
        "Renamed",
        ("y", "z"),
        "n2",
        2,
    )
    assert info.reported_status == "online"
    assert (info.tasks_processed, info.uptime_ms) == (5, 99)
    # The capability index followed.
    assert directory.list(capability="x") == []
    assert [i.id for i in directory.list(capability="z")] == ["a1"]
    assert directory.pick("x") is None


def test_heartbeat_before_announcement_keeps_an_id_only_agent(directory: Directory, clock: FakeClock) -> None:
    """A process joining a running flock hears heartbeats before any (re-)announcement."""
    info = beat(directory, "late", status="idle", tasks=3, load=0.25)
    assert info.id == info.name == "late"
    assert info.capabilities == ()
    assert (info.status, info.reported_status, info.tasks_processed, info.load) == ("online", "idle", 3, 0.25)
    assert info.node is None and info.max_concurrent_tasks is None
    assert "late" in directory
    assert directory.pick("anything") is None  # nothing to route to without capabilities

    clock.advance(5)
    filled = announce(directory, "late", "ocr", node="n9", max_concurrent_tasks=8)
    assert (filled.name, filled.capabilities, filled.node, filled.max_concurrent_tasks) == (
        "LATE",
        ("ocr",),
        "n9",
        8,
    )
    assert filled.tasks_processed == 3  # the heartbeat's counters survive
    assert directory.pick("ocr") == filled


# -- liveness --------------------------------------------------------------------------------------


def test_offline_strictly_after_three_missed_intervals_and_online_at_next_heartbeat(
    directory: Directory, clock: FakeClock
) -> None:
    announce(directory, "a1")
    clock.advance(3 * INTERVAL)
    info = directory.get("a1")
    assert info is not None and info.status == "online"  # exactly three intervals: on time, not late

    clock.advance(1e-6)
    info = directory.get("a1")
    assert info is not None and info.status == "offline"
    assert info.last_seen == EPOCH  # going offline does not pretend it was seen
    assert [i.id for i in directory.list("offline")] == ["a1"]
    assert directory.list("online") == []
    assert len(directory) == 1 and "a1" in directory  # offline agents stay listed

    clock.advance(1000)
    info = beat(directory, "a1")
    assert info.status == "online"
    assert info.last_seen == EPOCH + timedelta(seconds=3 * INTERVAL + 1e-6 + 1000)


def test_heartbeats_keep_an_agent_online_indefinitely(directory: Directory, clock: FakeClock) -> None:
    announce(directory, "a1")
    for _ in range(10):
        clock.advance(3 * INTERVAL)
        beat(directory, "a1")
    assert [i.status for i in directory.list()] == ["online"]


def test_announcement_brings_an_offline_agent_back(directory: Directory, clock: FakeClock) -> None:
    announce(directory, "a1", "x")
    clock.advance(3 * INTERVAL + 1)
    assert directory.pick("x") is None
    assert announce(directory, "a1", "x").status == "online"
    assert directory.pick("x") is not None


def test_missed_and_interval_are_configurable(clock: FakeClock) -> None:
    directory = Directory(5.0, missed=1, clock=clock, wallclock=clock.wall)
    announce(directory, "a1")
    clock.advance(5.0)
    assert directory.list("online") != []
    clock.advance(0.001)
    assert directory.list("online") == []


@pytest.mark.parametrize(("interval", "missed"), [(0.0, 3), (-1.0, 3), (float("nan"), 3), (30.0, 0)])
def test_bad_settings_are_refused(interval: float, missed: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        Directory(interval, missed=missed)


def test_remove_forgets_the_agent(directory: Directory) -> None:
    announce(directory, "a1", "x")
    announce(directory, "a2", "x")
    assert directory.remove("a1") is True
    assert directory.remove("a1") is False
    assert directory.get("a1") is None
    assert "a1" not in directory and len(directory) == 1
    assert [i.id for i in directory.list(capability="x")] == ["a2"]
    directory.remove("a2")
    assert directory.pick("x") is None
    assert directory.list(capability="x") == []


def test_mark_offline_keeps_the_agent_listed_until_it_returns(directory: Directory, clock: FakeClock) -> None:
    announce(directory, "a1", "x")
    assert directory.mark_offline("a1") is True
    assert directory.mark_offline("nobody") is False
    info = directory.get("a1")
    assert info is not None and info.status == "offline"
    assert directory.pick("x") is None
    assert [i.id for i in directory.list("offline", capability="x")] == ["a1"]
    clock.advance(1)
    assert beat(directory, "a1").status == "online"
    assert directory.pick("x") is not None


# -- reading ---------------------------------------------------------------------------------------


def test_list_filters_by_status_and_capability_sorted_by_id(directory: Directory, clock: FakeClock) -> None:
    announce(directory, "c", "x")
    announce(directory, "a", "x", "y")
    announce(directory, "b", "y")
    clock.advance(60)
    beat(directory, "b")
    clock.advance(31)  # a and c: 91 s of silence; b: 31 s

    def ids(agents: list[AgentInfo]) -> list[str]:
        return [agent.id for agent in agents]

    assert ids(directory.list()) == ["a", "b", "c"]
    assert ids(directory.list("online")) == ["b"]
    assert ids(directory.list("offline")) == ["a", "c"]
    assert ids(directory.list(capability="x")) == ["a", "c"]
    assert ids(directory.list("online", capability="y")) == ["b"]
    assert ids(directory.list("offline", capability="y")) == ["a"]
    assert directory.list(capability="nobody-has-it") == []
    with pytest.raises(ValueError, match="status must be"):
        directory.list("busy")  # type: ignore[arg-type]


def test_get_contains_and_len(directory: Directory) -> None:
    assert directory.get("a1") is None
    assert "a1" not in directory and len(directory) == 0
    info = announce(directory, "a1")
    assert directory.get("a1") == info
    assert "a1" in directory and len(directory) == 1
    assert 42 not in directory


def test_pick_prefers_the_least_loaded(directory: Directory) -> None:
    for agent_id, load in [("a", 0.9), ("b", 0.2), ("c", 0.5)]:
        announce(directory, agent_id, "x")
        beat(directory, agent_id, load=load)
    assert (picked := directory.pick("x")) is not None and picked.id == "b"


def test_pick_counts_an_unreported_load_as_idle(directory: Directory) -> None:
    announce(directory, "a", "x")
    beat(directory, "a", load=0.1)
    announce(directory, "b", "x")  # never reported a load
    assert (picked := directory.pick("x")) is not None and picked.id == "b"


def test_pick_breaks_ties_by_fewest_tasks_then_id(directory: Directory) -> None:
    for agent_id, tasks in [("c", 2), ("b", 5), ("a", 2)]:
        announce(directory, agent_id, "x")
        beat(directory, agent_id, load=0.5, tasks=tasks)
    assert (picked := directory.pick("x")) is not None and picked.id == "a"
    beat(directory, "a", load=0.5, tasks=3)
    assert (picked := directory.pick("x")) is not None and picked.id == "c"


def test_pick_prefers_local_agents_over_less_loaded_remote_ones(directory: Directory) -> None:
    announce(directory, "remote", "x", node="n2")
    beat(directory, "remote", load=0.0)
    announce(directory, "local-busy", "x", node="n1")
    beat(directory, "local-busy", load=0.8)
    announce(directory, "local-free", "x", node="n1")
    beat(directory, "local-free", load=0.3)

    def is_local(info: AgentInfo) -> bool:
        return info.node == "n1"

    assert (picked := directory.pick("x", prefer=is_local)) is not None and picked.id == "local-free"
    assert (picked := directory.pick("x")) is not None and picked.id == "remote"
    # With no local agent online, a remote one still serves.
    directory.mark_offline("local-busy")
    directory.mark_offline("local-free")
    assert (picked := directory.pick("x", prefer=is_local)) is not None and picked.id == "remote"


def test_pick_never_returns_an_offline_agent(directory: Directory, clock: FakeClock) -> None:
    announce(directory, "idle-but-silent", "x")
    clock.advance(80)
    announce(directory, "busy", "x")
    beat(directory, "busy", load=1.0, tasks=100)
    clock.advance(11)  # the idle one has now been silent for 91 s
    assert (picked := directory.pick("x")) is not None and picked.id == "busy"
    directory.mark_offline("busy")
    assert directory.pick("x") is None


def test_pick_with_nobody_capable_is_none(directory: Directory) -> None:
    assert directory.pick("x") is None
    announce(directory, "a", "y")
    assert directory.pick("x") is None


# -- notifications ---------------------------------------------------------------------------------


def test_notifications_follow_the_life_of_an_agent(directory: Directory, clock: FakeClock) -> None:
    seen = Recorder()
    directory.subscribe(seen)

    announce(directory, "a1", "x")
    assert seen.take() == [("a1", "online")]  # added

    announce(directory, "a1", "x")
    clock.advance(INTERVAL)
    beat(directory, "a1", load=0.5, tasks=1, uptime=30_000)
    beat(directory, "a1", load=0.7, tasks=2, uptime=31_000)
    assert seen.take() == []  # a repeated announcement and counter-only heartbeats are silent

    beat(directory, "a1", status="busy", tasks=3)
    assert seen.take() == [("a1", "online")]  # reported status changed
    assert seen.events == [] and directory.get("a1") is not None
    beat(directory, "a1", status="busy", tasks=4)
    assert seen.take() == []

    announce(directory, "a1", "x", "y")
    # changed capabilities (the announcement also resets the reported status to online)
    events = seen.events[:]
    assert seen.take() == [("a1", "online")]
    info = events[0][1]
    assert info is not None and info.capabilities == ("x", "y") and info.reported_status == "online"

    announce(directory, "a1", "x", "y", node="n2")
    announce(directory, "a1", "x", "y", node="n2", name="Other")
    assert seen.take() == [("a1", "online"), ("a1", "online")]  # node, then name

    clock.advance(3 * INTERVAL)
    assert directory.sweep() == []
    clock.advance(1)
    went = directory.sweep()
    assert [i.id for i in went] == ["a1"] and went[0].status == "offline"
    assert seen.take() == [("a1", "offline")]
    assert directory.sweep() == []  # reported once, not at every sweep
    directory.list()
    assert seen.take() == []

    beat(directory, "a1", status="busy", tasks=4)
    assert seen.take() == [("a1", "online")]  # back online

    directory.mark_offline("a1")
    directory.mark_offline("a1")
    assert seen.take() == [("a1", "offline")]

    directory.remove("a1")
    directory.remove("a1")
    assert seen.take() == [("a1", None)]


def test_a_heartbeat_from_an_unknown_agent_notifies_an_addition(directory: Directory) -> None:
    seen = Recorder()
    directory.subscribe(seen)
    beat(directory, "late")
    assert seen.take() == [("late", "online")]


@pytest.mark.parametrize("read", ["get", "list", "list_capability", "pick"])
def test_reads_notice_and_report_offline_transitions_once(
    directory: Directory, clock: FakeClock, read: str
) -> None:
    seen = Recorder()
    directory.subscribe(seen)
    announce(directory, "a1", "x")
    seen.take()
    clock.advance(3 * INTERVAL + 1)
    for _ in range(2):
        if read == "get":
            directory.get("a1")
        elif read == "list":
            directory.list("online")
        elif read == "list_capability":
            directory.list(capability="x")
        else:
            directory.pick("x")
    assert seen.take() == [("a1", "offline")]


def test_unsubscribe_stops_notifications(directory: Directory) -> None:
    first, second = Recorder(), Recorder()
    unsubscribe = directory.subscribe(first)
    directory.subscribe(second)
    unsubscribe()
    unsubscribe()  # idempotent
    announce(directory, "a1")
    assert first.take() == []
    assert second.take() == [("a1", "online")]


def test_a_failing_subscriber_is_logged_and_the_others_still_hear(
    directory: Directory, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(agent_id: str, info: AgentInfo | None) -> None:
        raise RuntimeError("subscriber bug")

    after = Recorder()
    directory.subscribe(broken)
    directory.subscribe(after)
    with caplog.at_level(logging.ERROR, logger="flockrt.directory"):
        info = announce(directory, "a1")
    assert directory.get("a1") == info
    assert after.take() == [("a1", "online")]
    assert "subscriber bug" in caplog.text


def test_a_subscriber_may_change_the_directory_during_a_sweep(directory: Directory, clock: FakeClock) -> None:
    """A callback that removes agents while a sweep reports them must not break the sweep."""
    for agent_id in ("a", "b", "c"):
        announce(directory, agent_id)

    def remove_when_offline(agent_id: str, info: AgentInfo | None) -> None:
        if info is not None and info.status == "offline":
            directory.remove(agent_id)

    directory.subscribe(remove_when_offline)
    clock.advance(100)
    assert [i.id for i in directory.sweep()] == ["a", "b", "c"]
    assert len(directory) == 0


# -- JSON ------------------------------------------------------------------------------------------


def test_to_json_has_the_camel_case_keys_and_an_iso_utc_timestamp(
    directory: Directory, clock: FakeClock
) -> None:
    announce(directory, "a1", "x", "y", node="n1", max_concurrent_tasks=3)
    clock.advance(1.5)
    info = beat(directory, "a1", load=0.25, tasks=9, uptime=1500)
    assert info.to_json() == {
        "id": "a1",
        "name": "A1",
        "capabilities": ["x", "y"],
        "status": "online",
        "reportedStatus": "online",
        "lastSeen": "2026-11-25T12:00:01.500000Z",
        "uptime": 1500,
        "tasksProcessed": 9,
        "load": 0.25,
        "node": "n1",
        "maxConcurrentTasks": 3,
    }
    assert datetime.fromisoformat(info.to_json()["lastSeen"]) == EPOCH + timedelta(seconds=1.5)


def test_to_json_of_an_offline_id_only_agent(clock: FakeClock) -> None:
    directory = Directory(
        INTERVAL, clock=clock, wallclock=lambda: datetime(2026, 1, 2, 3, 4, 5)
    )  # naive: UTC
    beat(directory, "late")
    clock.advance(1000)
    info = directory.get("late")
    assert info is not None
    assert info.to_json() == {
        "id": "late",
        "name": "late",
        "capabilities": [],
        "status": "offline",
        "reportedStatus": "online",
        "lastSeen": "2026-01-02T03:04:05Z",
        "uptime": 0,
        "tasksProcessed": 0,
        "load": None,
        "node": None,
        "maxConcurrentTasks": None,
    }


# -- property: random feeds against a model of last-seen times --------------------------------------

IDS = ("a", "b", "c")
CAPABILITIES = ("x", "y")
GRACE = 3 * INTERVAL

operations = st.lists(
    st.one_of(
        st.tuples(st.just("announce"), st.sampled_from(IDS), st.sets(st.sampled_from(CAPABILITIES))),
        st.tuples(st.just("beat"), st.sampled_from(IDS), st.sampled_from(["online", "busy"])),
        # Multiples of 0.25 s add up exactly in floats, so the 90 s boundary is hit exactly.
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.25, 1.0, 30.0, 60.0, 89.75, 90.0, 90.25])),
        st.tuples(st.just("remove"), st.sampled_from(IDS)),
        st.tuples(st.just("offline"), st.sampled_from(IDS)),
        st.tuples(st.just("sweep")),
    ),
    max_size=40,
)


@dataclass
class ModelAgent:
    seen: float
    capabilities: frozenset[str]
    reported: str
    forced_offline: bool = False


def _view(info: AgentInfo) -> tuple[str, str, str, tuple[str, ...]]:
    """What subscribers are promised to stay in step with (counters and times aside)."""
    return (info.name, info.status, info.reported_status, info.capabilities)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_random_feeds_match_a_model_of_last_seen_times(ops: list[tuple[Any, ...]]) -> None:
    clock = FakeClock()
    # Liveness only: nothing is forgotten here (eviction has tests of its own).
    directory = Directory(
        INTERVAL, clock=clock, wallclock=clock.wall, unannounced_ttl=math.inf, offline_ttl=math.inf
    )
    model: dict[str, ModelAgent] = {}
    # A subscriber's mirror, built only from notifications: it must never drift from the directory.
    mirror: dict[str, tuple[str, str, str, tuple[str, ...]]] = {}

    def follow(agent_id: str, info: AgentInfo | None) -> None:
        if info is None:
            del mirror[agent_id]
        else:
            mirror[agent_id] = _view(info)

    directory.subscribe(follow)

    for op in ops:
        kind = op[0]
        if kind == "announce":
            agent_id, caps = op[1], sorted(op[2])
            announce(directory, agent_id, *caps)
            model[agent_id] = ModelAgent(clock.now, frozenset(caps), "online")
        elif kind == "beat":
            agent_id, status = op[1], op[2]
            beat(directory, agent_id, status=status)
            known = model.get(agent_id)
            model[agent_id] = ModelAgent(clock.now, known.capabilities if known else frozenset(), status)
        elif kind == "advance":
            clock.advance(op[1])
        elif kind == "remove":
            assert directory.remove(op[1]) == (model.pop(op[1], None) is not None)
        elif kind == "offline":
            agent_id = op[1]
            assert directory.mark_offline(agent_id) == (agent_id in model)
            if agent_id in model:
                model[agent_id].forced_offline = True
        else:
            directory.sweep()

        def expected_status(agent: ModelAgent) -> str:
            late = clock.now - agent.seen > GRACE
            return "offline" if agent.forced_offline or late else "online"

        everyone = directory.list("all")
        online, offline = directory.list("online"), directory.list("offline")
        assert sorted(online + offline, key=lambda info: info.id) == everyone
        assert [info.id for info in everyone] == sorted(model)
        assert {info.id: info.status for info in everyone} == {
            agent_id: expected_status(agent) for agent_id, agent in model.items()
        }
        assert {info.id: info.reported_status for info in everyone} == {
            agent_id: agent.reported for agent_id, agent in model.items()
        }
        assert len(directory) == len(model)
        for capability in CAPABILITIES:
            capable = sorted(a for a, agent in model.items() if capability in agent.capabilities)
            assert [info.id for info in directory.list(capability=capability)] == capable
            picked = directory.pick(capability)
            online_capable = [a for a in capable if expected_status(model[a]) == "online"]
            if online_capable:
                assert picked is not None and picked.id == min(online_capable)  # equal load and tasks
            else:
                assert picked is None
        assert mirror == {info.id: _view(info) for info in everyone}


# -- a stored record (the persisted directory) -----------------------------------------------------


def stored(agent_id: str) -> AgentAnnouncement:
    return AgentAnnouncement(id=agent_id, name=agent_id.upper(), capabilities=["echo"], timestamp=SKEWED)


def test_a_record_within_the_grace_period_is_online_for_the_rest_of_it(
    directory: Directory, clock: FakeClock
) -> None:
    info = directory.restore(stored("a-1"), clock.wall() - timedelta(seconds=60))
    assert info is not None and info.status == "online"
    assert info.last_seen == clock.wall() - timedelta(seconds=60)
    clock.advance(30)  # 90 s since the record: still within three intervals
    assert directory.get("a-1").status == "online"  # type: ignore[union-attr]
    clock.advance(0.001)
    assert [info.id for info in directory.sweep()] == ["a-1"]


def test_a_record_older_than_three_intervals_is_offline_at_once(
    directory: Directory, clock: FakeClock
) -> None:
    recorder = Recorder()
    directory.subscribe(recorder)
    info = directory.restore(stored("a-1"), clock.wall() - timedelta(seconds=90.001))
    assert info is not None and info.status == "offline"
    assert recorder.take() == [("a-1", "offline")]
    assert directory.pick("echo") is None  # no work is routed to it
    beat(directory, "a-1")  # alive after all: online, as usual
    assert directory.get("a-1").status == "online"  # type: ignore[union-attr]


def test_a_record_never_overrides_what_this_process_heard(directory: Directory, clock: FakeClock) -> None:
    announce(directory, "a-1", "echo")
    clock.advance(10)
    info = directory.restore(stored("a-1"), clock.wall() - timedelta(hours=1))
    assert info is not None and info.status == "online" and info.capabilities == ("echo",)


def test_a_record_from_the_future_counts_as_now(directory: Directory, clock: FakeClock) -> None:
    info = directory.restore(stored("a-1"), clock.wall() + timedelta(hours=1))  # clocks disagree
    assert info is not None and info.status == "online" and info.last_seen == clock.wall()
    clock.advance(GRACE + 1)
    assert directory.get("a-1").status == "offline"  # type: ignore[union-attr]
