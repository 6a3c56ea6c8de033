"""Prometheus metrics (prometheus-client), all named ``flockrt_*``, in flockrt's own registry.

The only module that imports prometheus_client. Every series is listed in docs/metrics.md.

How the parts report:

- **The kernel and the flock** keep plain counters (``ActorSystem.stats()``, the bus's
  ``BusStats``, the flock's :class:`~flockrt.flock.stats.WorkStats`) and, while instrumented, cheap
  histograms (:class:`~flockrt.actors.histogram.Histogram`). One collector reads them at scrape
  time, so tells and asks never touch prometheus. The runtime calls :func:`instrument` per
  actor system (with its flock and NATS connection) when ``[metrics]`` is enabled, and closes
  what it returns on stop. Series carry a ``system`` label (the system's name, made unique in
  the process), never a per-actor one.
- **The MCP gateway** (``flockrt/web.py``) serves :func:`exposition` at ``/metrics`` and calls::

      observe_mcp_request(method, outcome, seconds)   # once per JSON-RPC request
      MCP_CONNECTIONS.labels(transport).inc() / .dec()  # "websocket", "http", "sse"

  ``method`` is the JSON-RPC method (``tools/call``...; unknown ones count as ``other``);
  ``outcome`` is one of :data:`MCP_OUTCOMES`.
- **The A2A server and remotes** (``flockrt/a2a/``) call::

      observe_a2a_request(method, outcome, seconds)   # once per JSON-RPC request to the server
      observe_a2a_remote(remote, outcome)             # once per request to a [[a2a.remote]]
      observe_a2a_remote_cancel(remote, outcome)      # once per cancel sent to a remote

  ``remote`` is the proxy agent's id (one per configured remote: a bounded set).
- **The Claude agent** (``flockrt/agents/claude.py``) keeps plain counters in ``flockrt.agents.claude.USAGE``,
  read here at scrape time (``flockrt_claude_*``): nothing to call.

Example::

    with instrument(system):
        ...
        body, content_type = exposition()
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from flockrt._version import __version__
from flockrt.actors import histogram
from flockrt.actors.system import ActorSystem
from flockrt.flock.stats import WorkStats

if TYPE_CHECKING:
    from flockrt.bus.connection import NatsConnection
    from flockrt.flock.api import FlockAPI

__all__ = [
    "MCP_CONNECTIONS",
    "MCP_METHODS",
    "MCP_OUTCOMES",
    "A2A_METHODS",
    "A2A_OUTCOMES",
    "A2A_REMOTE_OUTCOMES",
    "REGISTRY",
    "Instrumentation",
    "exposition",
    "instrument",
    "observe_a2a_remote",
    "observe_a2a_remote_cancel",
    "observe_a2a_request",
    "observe_mcp_request",
]

REGISTRY = CollectorRegistry(auto_describe=True)
"""Every flockrt metric; ``/metrics`` serves this registry (not prometheus-client's global one)."""


def exposition() -> tuple[bytes, str]:
    """The registry in the Prometheus text format, and its content type, for ``/metrics``.

    Call it on the event loop thread of the instrumented systems (an aiohttp handler is): the
    collector reads their counters and the flock's directory without locks. It takes about
    0.5 ms per system, however many actors it has.
    """
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# ---------------------------------------------------------------------- process

ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
Info("flockrt_build", "The flockrt version of this process.", registry=REGISTRY).info(
    {"version": __version__}
)

# ---------------------------------------------------------------------- MCP gateway

MCP_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/read",
        "resources/templates/list",
        "prompts/list",
        "prompts/get",
        "logging/setLevel",
        "completion/complete",
        "notifications/initialized",
        "notifications/cancelled",
    }
)
"""MCP methods counted by name; any other method is counted as ``other`` (a client must not be
able to create series at will)."""

MCP_OUTCOMES = frozenset({"ok", "error", "timeout", "unauthorized", "rate_limited", "invalid"})
"""``ok``; ``error`` (the tool or flock failed); ``timeout``; ``unauthorized`` (auth or
capability denied); ``rate_limited``; ``invalid`` (malformed request). Others count as error."""

MCP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_MCP_REQUESTS = Counter(
    "flockrt_mcp_requests",
    "MCP requests handled by the gateway, by JSON-RPC method and outcome.",
    ["method", "outcome"],
    registry=REGISTRY,
)
_MCP_SECONDS = Histogram(
    "flockrt_mcp_request_duration_seconds",
    "Seconds from an MCP request's arrival to its response, by JSON-RPC method.",
    ["method"],
    buckets=MCP_BUCKETS,
    registry=REGISTRY,
)
MCP_CONNECTIONS = Gauge(
    "flockrt_mcp_connections",
    "Open MCP client connections, by transport (websocket, http, sse).",
    ["transport"],
    registry=REGISTRY,
)
"""``MCP_CONNECTIONS.labels("websocket").inc()`` on connect, ``.dec()`` on disconnect."""
for _transport in ("websocket", "http", "sse"):
    MCP_CONNECTIONS.labels(_transport)  # present at 0 before the first connection

# Children resolved once per (method, outcome): labels() costs more than the observation.
_mcp_children: dict[tuple[str, str], tuple[Any, Any]] = {}


def observe_mcp_request(method: str, outcome: str, seconds: float) -> None:
    """Count one MCP request and its duration (the gateway calls this once per request).

    Args:
        method: The JSON-RPC method; one not in :data:`MCP_METHODS` counts as ``other``.
        outcome: One of :data:`MCP_OUTCOMES`; anything else counts as ``error``.
        seconds: From arrival to response.
    """
    if method not in MCP_METHODS:
        method = "other"
    if outcome not in MCP_OUTCOMES:
        outcome = "error"
    children = _mcp_children.get((method, outcome))
    if children is None:
        children = _mcp_children[method, outcome] = (
            _MCP_REQUESTS.labels(method, outcome),
            _MCP_SECONDS.labels(method),
        )
    children[0].inc()
    children[1].observe(seconds)


# ---------------------------------------------------------------------- A2A

A2A_METHODS = frozenset(
    {
        "SendMessage",
        "SendStreamingMessage",
        "GetTask",
        "ListTasks",
        "CancelTask",
        "SubscribeToTask",
        "CreateTaskPushNotificationConfig",
        "GetTaskPushNotificationConfig",
        "ListTaskPushNotificationConfigs",
        "DeleteTaskPushNotificationConfig",
        "GetExtendedAgentCard",
    }
)
"""A2A 1.0 JSON-RPC methods counted by name; any other counts as ``other``."""

A2A_OUTCOMES = frozenset({"ok", "error", "unauthorized", "rate_limited", "invalid"})
"""``ok``; ``error`` (a JSON-RPC error from the flock or the SDK: an unknown task, say);
``unauthorized`` (HTTP 401 or 403); ``rate_limited`` (429); ``invalid`` (a malformed request,
an unknown method, a missing version header, a body over the limit). Others count as error."""

A2A_REMOTE_OUTCOMES = frozenset({"ok", "failed", "unreachable", "timeout", "circuit_open", "cancelled"})
"""Of a request to a remote A2A agent: ``ok``; ``failed`` (its task ended failed, rejected,
canceled or asking for input); ``unreachable``; ``timeout`` (the remote's ``timeout``);
``circuit_open`` (refused at once by its breaker); ``cancelled`` (given up by its requester)."""

_A2A_REQUESTS = Counter(
    "flockrt_a2a_requests",
    "A2A requests handled by the flock's A2A server, by JSON-RPC method and outcome.",
    ["method", "outcome"],
    registry=REGISTRY,
)
_A2A_SECONDS = Histogram(
    "flockrt_a2a_request_duration_seconds",
    "Seconds from an A2A request's arrival to the end of its response (a stream's end), by method.",
    ["method"],
    buckets=MCP_BUCKETS,
    registry=REGISTRY,
)
_A2A_REMOTE_REQUESTS = Counter(
    "flockrt_a2a_remote_requests",
    "Requests sent to remote A2A agents ([[a2a.remote]]), by remote and outcome.",
    ["remote", "outcome"],
    registry=REGISTRY,
)
_A2A_REMOTE_CANCELS = Counter(
    "flockrt_a2a_remote_cancels",
    "Cancels sent to remote A2A agents for tasks whose request was given up, by remote and outcome.",
    ["remote", "outcome"],
    registry=REGISTRY,
)


def observe_a2a_request(method: str, outcome: str, seconds: float) -> None:
    """Count one request to the A2A server and its duration.

    Args:
        method: The JSON-RPC method; one not in :data:`A2A_METHODS` counts as ``other``.
        outcome: One of :data:`A2A_OUTCOMES`; anything else counts as ``error``.
        seconds: From arrival to the end of the response.
    """
    if method not in A2A_METHODS:
        method = "other"
    if outcome not in A2A_OUTCOMES:
        outcome = "error"
    _A2A_REQUESTS.labels(method, outcome).inc()
    _A2A_SECONDS.labels(method).observe(seconds)


def observe_a2a_remote(remote: str, outcome: str) -> None:
    """Count one request to the remote A2A agent ``remote`` (its proxy's id), by one of
    :data:`A2A_REMOTE_OUTCOMES` (anything else counts as ``failed``)."""
    _A2A_REMOTE_REQUESTS.labels(remote, outcome if outcome in A2A_REMOTE_OUTCOMES else "failed").inc()


def observe_a2a_remote_cancel(remote: str, ok: bool) -> None:
    """Count one cancel sent to the remote A2A agent ``remote``, done (``ok``) or failed."""
    _A2A_REMOTE_CANCELS.labels(remote, "ok" if ok else "failed").inc()


# ---------------------------------------------------------------------- Claude agent


class _ClaudeCollector(Collector):
    """Reads ``flockrt.agents.claude.USAGE`` (plain counters the Claude agent keeps) at scrape time.

    Only if that module is loaded: importing it here would import ``anthropic`` into every
    process, and a process that never loaded it has no Claude agent to report.
    """

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        tokens, requests, retries, opened = families = self._families()
        claude = sys.modules.get("flockrt.agents.claude")
        usage = getattr(claude, "USAGE", None)
        if usage is None:
            return families
        for kind, n in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_input_tokens),
            ("cache_creation", usage.cache_creation_input_tokens),
        ):
            tokens.add_metric([kind], n)
        for outcome, n in list(usage.requests.items()):
            requests.add_metric([outcome], n)
        retries.add_metric([], usage.retries)
        opened.add_metric([], usage.circuit_opened)
        return families

    @staticmethod
    def _families() -> list[CounterMetricFamily]:
        return [
            CounterMetricFamily(
                "flockrt_claude_tokens",
                "Tokens used by the Claude agents, by kind (input, output, cache_read, cache_creation).",
                labels=["kind"],
            ),
            CounterMetricFamily(
                "flockrt_claude_requests",
                "Messages API requests made by the Claude agents, by outcome (a retry is a request).",
                labels=["outcome"],
            ),
            CounterMetricFamily("flockrt_claude_retries", "Messages API requests that retried a failed one."),
            CounterMetricFamily(
                "flockrt_claude_circuit_opened", "Times a Claude agent's circuit breaker opened."
            ),
        ]


REGISTRY.register(_ClaudeCollector())


# ---------------------------------------------------------------------- systems, flocks, NATS


class Instrumentation:
    """An actor system (with its flock and NATS connection) reported in :data:`REGISTRY`.

    Returned by :func:`instrument`; :meth:`close` (or leaving the ``with`` block) takes its
    series out of the registry and turns its histograms off again.
    """

    def __init__(
        self,
        label: str,
        system: ActorSystem,
        flock: FlockAPI | None,
        bus: NatsConnection | None,
    ) -> None:
        self.label = label
        """The value of the ``system`` label on this system's series."""
        self.system = system
        self.flock = flock
        self.bus = bus

    @property
    def closed(self) -> bool:
        """True once its series have left the registry."""
        return _collector.targets.get(self.label) is not self

    def close(self) -> None:
        """Stop reporting: its series disappear from the next scrape. Idempotent."""
        if _collector.targets.get(self.label) is self:
            del _collector.targets[self.label]
            self.system.ask_latency = None
            if self.flock is not None:
                self.flock.work_stats = None

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def instrument(
    system: ActorSystem,
    *,
    flock: FlockAPI | None = None,
    bus: NatsConnection | None = None,
    label: str | None = None,
    ask_sampling: int = 8,
) -> Instrumentation:
    """Report ``system`` (and its flock and NATS connection) in :data:`REGISTRY`.

    Turns on the system's ask-latency histogram and the flock's work stats (they cost a little
    on their paths; everything else is read at scrape time). Instrumenting a system that is
    already instrumented replaces the earlier registration.

    Args:
        system: The actor system.
        flock: Its flock, for tasks, capability requests and agents.
        bus: Its NATS connection, for the ``flockrt_nats_*`` series.
        label: The ``system`` label (default: the system's name); if another system already
            reports under it, ``-2``, ``-3``... is appended so that two systems never clash.
        ask_sampling: Time one ask in this many for ``flockrt_ask_duration_seconds`` (1: every
            ask, which cost 13% more CPU time with 100 concurrent askers; 8 costs a few percent).
    """
    if ask_sampling < 1:
        raise ValueError(f"ask_sampling must be >= 1, got {ask_sampling!r}")
    for target in list(_collector.targets.values()):
        if target.system is system:
            target.close()
    base = label or system.name
    taken = _collector.targets
    label = next(
        name
        for name in itertools.chain([base], (f"{base}-{i}" for i in itertools.count(2)))
        if name not in taken
    )
    if system.ask_latency is None:
        system.ask_latency = histogram.Histogram(histogram.ASK_BUCKETS)
    system.ask_sampling = ask_sampling
    system._ask_countdown = 1  # the next ask is timed
    if flock is not None and flock.work_stats is None:
        flock.work_stats = WorkStats()
    target = Instrumentation(label, system, flock, bus)
    taken[label] = target
    return target


def _histogram_family(name: str, documentation: str, labels: Sequence[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, labels=labels)


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it (``+Inf``, ``0.005``, ``1e-05``)."""
    return "+Inf" if math.isinf(bound) else repr(bound)


def _add_histogram(family: HistogramMetricFamily, labels: list[str], hist: histogram.Histogram) -> None:
    buckets = [(_le(bound), float(count)) for bound, count in hist.cumulative()]
    family.add_metric(labels, buckets, hist.sum)


class _FlockCollector(Collector):
    """Reads every instrumented system's counters at scrape time (one collector per process,
    so the registry sees each family once however many systems there are)."""

    def __init__(self) -> None:
        self.targets: dict[str, Instrumentation] = {}

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        for target in list(self.targets.values()):
            self._collect_system(families, target)
            if target.flock is not None:
                self._collect_flock(families, target)
            if target.bus is not None:
                self._collect_bus(families, target)
        return families

    def _families(self) -> list[Metric]:
        def counter(name: str, doc: str, *labels: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=["system", *labels])

        def gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["system", *labels])

        families: list[Metric] = [
            gauge(
                "flockrt_actors", "Live actors by state (starting, running, suspended, stopping).", "state"
            ),
            counter("flockrt_actors_stopped", "Actors that have ended."),
            counter("flockrt_messages_processed", "Messages handled by actors."),
            counter("flockrt_actor_failures", "Actor handler failures."),
            counter("flockrt_actor_restarts", "Actor restarts made by supervisors."),
            counter("flockrt_dead_letters", "Messages that could not be delivered."),
            counter("flockrt_mailbox_overflows", "Tells refused with MailboxFull, plus dropped timer ticks."),
            counter("flockrt_ask_timeouts", "Asks that failed with AskTimeout."),
            _histogram_family(
                "flockrt_ask_duration_seconds",
                "Seconds from ask to reply (failures and timeouts included), of one ask in ask_sampling (8).",
                ["system"],
            ),
            counter(
                "flockrt_tasks", "Tasks run by this process's agents, by type and outcome.", "type", "outcome"
            ),
            _histogram_family(
                "flockrt_task_duration_seconds",
                "Seconds from a task's dispatch to its result (queueing included), by type.",
                ["system", "type"],
            ),
            counter(
                "flockrt_capability_requests",
                "Capability requests served by this process's agents, by capability and outcome.",
                "capability",
                "outcome",
            ),
            _histogram_family(
                "flockrt_capability_request_duration_seconds",
                "Seconds from a capability request's dispatch to its answer, by capability.",
                ["system", "capability"],
            ),
            gauge("flockrt_work_queued", "Tasks and capability requests waiting for a free local agent."),
            gauge("flockrt_agents", "Agents in the directory (local and remote) by status.", "status"),
            gauge("flockrt_nats_connected", "1 while the NATS connection is up, else 0."),
            counter("flockrt_nats_reconnects", "Reconnections to NATS."),
            counter("flockrt_nats_published", "Messages published to NATS."),
            counter("flockrt_nats_received", "Messages received from NATS."),
            gauge("flockrt_nats_buffered_publishes", "Publishes buffered while NATS is unreachable."),
            counter("flockrt_nats_flushed_publishes", "Buffered publishes sent after a reconnect."),
            counter(
                "flockrt_nats_dropped_publishes", "Publishes lost: buffer full, or still buffered at close."
            ),
            counter("flockrt_nats_handler_errors", "Subscription handlers that raised."),
            counter("flockrt_nats_invalid_messages", "Malformed messages rejected by the flock."),
            counter(
                "flockrt_durable_tasks",
                "Durable (JetStream) task events: submitted, duplicate, received, acked, redelivered, "
                "dead_lettered, invalid, unsettled.",
                "event",
            ),
            counter(
                "flockrt_intake_tasks",
                "Core-mode task intake events: taken, handed_back and refused (never started, at a "
                "graceful stop), keeper_changes, saturated (refused on arrival: [nats] max_held), "
                "handed_off and handed_in (moved to a process with room, on a NATS cluster).",
                "event",
            ),
        ]
        return families

    def _collect_system(self, families: list[Metric], target: Instrumentation) -> None:
        family = self._lookup(families)
        s = target.system.stats()
        label = [target.label]
        for state, n in s.by_state().items():
            family("flockrt_actors").add_metric([target.label, state], n)
        family("flockrt_actors_stopped").add_metric(label, s.stopped)
        family("flockrt_messages_processed").add_metric(label, s.processed)
        family("flockrt_actor_failures").add_metric(label, s.failures)
        family("flockrt_actor_restarts").add_metric(label, s.restarts)
        family("flockrt_dead_letters").add_metric(label, s.dead_letters)
        family("flockrt_mailbox_overflows").add_metric(label, s.mailbox_overflows)
        family("flockrt_ask_timeouts").add_metric(label, s.ask_timeouts)
        latency = target.system.ask_latency
        if latency is not None:
            _add_histogram(family("flockrt_ask_duration_seconds"), label, latency)

    def _collect_flock(self, families: list[Metric], target: Instrumentation) -> None:
        flock = target.flock
        assert flock is not None
        family = self._lookup(families)
        stats = flock.work_stats
        if stats is not None:
            for (kind, key, outcome), n in list(stats.outcomes.items()):
                name = "flockrt_tasks" if kind == "task" else "flockrt_capability_requests"
                family(name).add_metric([target.label, key, outcome], n)
            for (kind, key), hist in list(stats.durations.items()):
                name = (
                    "flockrt_task_duration_seconds"
                    if kind == "task"
                    else "flockrt_capability_request_duration_seconds"
                )
                _add_histogram(family(name), [target.label, key], hist)
        family("flockrt_work_queued").add_metric([target.label], flock.queued_work)
        by_status = {"online": 0, "offline": 0}
        for info in flock.directory.list("all"):
            by_status[info.status] = by_status.get(info.status, 0) + 1
        for status, n in by_status.items():
            family("flockrt_agents").add_metric([target.label, status], n)
        invalid = sum(flock.invalid_messages.values())  # always 0 in one process
        family("flockrt_nats_invalid_messages").add_metric([target.label], invalid)
        for event, n in flock.durable_counts().items():  # none unless tasks are durable
            family("flockrt_durable_tasks").add_metric([target.label, event], n)
        intake = getattr(flock, "intake", None)  # a NatsFlock's (metrics does not import bus/)
        if intake is not None:
            for event, n in intake.counts().items():
                family("flockrt_intake_tasks").add_metric([target.label, event], n)

    def _collect_bus(self, families: list[Metric], target: Instrumentation) -> None:
        bus = target.bus
        assert bus is not None
        family = self._lookup(families)
        stats, label = bus.stats, [target.label]
        family("flockrt_nats_connected").add_metric(label, 1 if bus.connected else 0)
        family("flockrt_nats_reconnects").add_metric(label, stats.reconnects)
        family("flockrt_nats_published").add_metric(label, stats.published)
        family("flockrt_nats_received").add_metric(label, stats.received)
        family("flockrt_nats_buffered_publishes").add_metric(label, stats.buffered)
        family("flockrt_nats_flushed_publishes").add_metric(label, stats.flushed)
        family("flockrt_nats_dropped_publishes").add_metric(label, stats.dropped)
        family("flockrt_nats_handler_errors").add_metric(label, stats.handler_errors)

    @staticmethod
    def _lookup(families: list[Metric]) -> Any:
        by_name = {family.name: family for family in families}
        return by_name.__getitem__


_collector = _FlockCollector()
REGISTRY.register(_collector)
