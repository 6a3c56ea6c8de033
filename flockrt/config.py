"""The flock's configuration: a TOML file decoded by msgspec into typed structs.

Errors name the key path and what was expected, for example
``agents[2].restart: expected one of permanent, transient, temporary, got "always"``.

Sections: ``[runtime]``, ``[nats]``, ``[mcp]`` (with ``[mcp.auth]``), ``[metrics]``,
``[claude]``, ``[supervisor]`` (the root of the tree), ``[[agents]]`` and ``[[supervisors]]``.

This module is plain data: it imports no actor, agent or user class. Turning a config into the
supervision tree it describes (and the checks that need the classes) is
:mod:`flockrt.assembly`'s job.
"""

from __future__ import annotations

import ipaddress
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeAlias, Union

import msgspec

from flockrt.errors import ConfigError

__all__ = [
    "A2aConfig",
    "A2aRemote",
    "AgentConfig",
    "AuthConfig",
    "ClaudeConfig",
    "ConfigError",
    "FlockConfig",
    "McpConfig",
    "MetricsConfig",
    "NatsConfig",
    "NatsLimits",
    "RuntimeConfig",
    "SupervisorConfig",
    "agent_entries",
    "config_problems",
    "decode_config",
    "load_config",
]

Restart: TypeAlias = Literal["permanent", "transient", "temporary"]
"""The restart values of ``flockrt.supervisor.spec.Restart``, spelled out again so that this
module stays plain data: it imports no part of the runtime."""

_LOG_LEVELS_LIST = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_LOG_LEVELS = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class RuntimeConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """``[runtime]``: the process itself."""

    name: str = "flock"
    log_level: _LOG_LEVELS = "INFO"
    loop: Literal["asyncio", "uvloop"] = "asyncio"
    mailbox_capacity: int = 1000
    shutdown_timeout: float = 10.0
    """Seconds a graceful stop (SIGINT/SIGTERM) may take before what is left is cancelled."""
    prefix_agent_ids: bool = False
    """Name every agent ``<name>-<id>``, so that nodes started from one config with different
    names (AGENT_ID) do not claim the same agent ids in a shared flock."""
    log_format: Literal["text", "json"] = "text"
    """``text``: one line per record; ``json``: one JSON object per line. Both carry the
    correlation id and agent of the record."""
    log_dir: str = ""
    """A directory for one log file per agent (``<agent id>.log``); "" = none."""


class SupervisorConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """``[supervisor]``: the root supervisor of the flock's tree."""

    strategy: Literal["one_for_one", "one_for_all", "rest_for_one"] = "one_for_one"
    max_restarts: int = 3
    max_seconds: float = 5.0


class NatsLimits(msgspec.Struct, kw_only=True, frozen=True):
    """What one process accepts from the NATS side, in seconds (docs/flock.md, "Limits").

    Built from the ``[nats]`` keys of the same names (milliseconds there) by
    :attr:`NatsConfig.limits`; the defaults are those of the keys.
    """

    max_id_length: int = 256
    """Longest agent id, agent name, capability name or reported status accepted."""
    max_capabilities: int = 256
    """Most capabilities one announcement may list."""
    directory_max_agents: int = 10000
    """Most agents the directory lists (online and offline)."""
    unannounced_ttl: float | None = None
    """Seconds of silence before an agent known only by heartbeats is forgotten (None: three
    heartbeat intervals, when it goes offline)."""
    offline_ttl: float = 3600.0
    """Seconds of silence before an offline agent is forgotten."""
    discover_interval: float = 1.0
    """A process answers ``agent.discover`` at most once per this many seconds."""


class NatsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """``[nats]``: the flock across processes. Without this section the flock stays in-process."""

    url: str = "embedded"
    """``embedded`` starts a nats-server with JetStream for this process; else a NATS URL."""
    port: int = 4222
    """Port of the embedded server (0 picks a free one)."""
    store_dir: str = ""
    """JetStream store of the embedded server ("" = a temporary directory)."""
    heartbeat_interval: int = 30000
    """Milliseconds between agent heartbeats (HEARTBEAT_INTERVAL)."""
    max_retries: int = 60
    """Reconnect attempts before the background loop takes over (MAX_RETRIES)."""
    buffer_limit: int = 10000
    """Publishes kept while NATS is unreachable."""
    durable: bool = False
    """Tasks go through a JetStream work-queue stream (acked after success, redelivered,
    dead-lettered on tasks.dead); every process of the flock must agree."""
    persist_directory: bool = False
    """Keep the agent directory in a JetStream key-value bucket, so a new process sees the
    flock at once."""
    credentials: str = ""
    """A NATS ``.creds`` file (user JWT and NKey seed), as the ``nats`` CLI takes it."""
    user: str = ""
    password: str = ""
    token: str = ""
    """Username and password, or a token, for servers configured with them."""
    tls_ca: str = ""
    """CA bundle that signed the server's certificate ("" = the system's, for tls:// URLs)."""
    tls_cert: str = ""
    tls_key: str = ""
    """Client certificate and its key, for servers that verify clients (mutual TLS)."""
    max_id_length: int = 256
    """Longest agent id, name, capability name or status accepted from NATS; longer
    announcements and heartbeats are rejected (counted as invalid)."""
    max_capabilities: int = 256
    """Most capabilities one announcement may list; more and it is rejected."""
    directory_max_agents: int = 10000
    """Most agents the directory lists; past it a newcomer replaces the longest silent offline
    or unannounced agent, or is refused (counted)."""
    unannounced_ttl: int = 0
    """Milliseconds of silence before an agent known only by heartbeats (it never announced)
    is forgotten (0: three heartbeat intervals)."""
    offline_ttl: int = 3600000
    """Milliseconds of silence before an offline agent is forgotten."""
    discover_interval: int = 1000
    """Milliseconds: this process answers ``agent.discover`` at most once per interval;
    requests in between share the next answer."""
    # JetStream replicas of FLOCK_TASKS and the directory bucket (1..5); an existing one is never weakened.
    replicas: int = 1
    # Milliseconds between the client's pings to its server; /readyz is 503 within two of silence.
    ping_interval: int = 10000
    # Unanswered pings before the client drops the connection and reconnects (after ~this+1 intervals).
    max_outstanding_pings: int = 2
    # HTTP monitoring port of the embedded server on 127.0.0.1 (/varz, /jsz): -1 off, 0 a free one.
    monitor_port: int = -1
    # Tasks of a type a process takes beyond its agents' free slots (NATS_PREFETCH).
    prefetch: int = 1
    # Core mode: tasks of a type held beyond slots + prefetch; more are refused (NATS_MAX_HELD).
    max_held: int = 10000
    # Milliseconds of a durable task without news before JetStream redelivers it (NATS_ACK_WAIT).
    ack_wait: int = 10000

    @property
    def limits(self) -> NatsLimits:
        """The limits of the keys above, in seconds."""
        return NatsLimits(
            max_id_length=self.max_id_length,
            max_capabilities=self.max_capabilities,
            directory_max_agents=self.directory_max_agents,
            unannounced_ttl=self.unannounced_ttl / 1000 if self.unannounced_ttl else None,
            offline_ttl=self.offline_ttl / 1000,
            discover_interval=self.discover_interval / 1000,
        )


class AuthConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """``[mcp.auth]``: who may use the gateway. With neither tokens nor a JWT secret, anyone
    who can reach the port may (so the gateway refuses to bind beyond loopback, unless
    ``allow_unauthenticated``)."""

    tokens: list[str] = msgspec.field(default_factory=list)
    """Static bearer tokens; each grants every right."""
    jwt_secret: str = ""
    """HS256 secret of signed bearer tokens carrying agentId, capabilities and exp."""
    allow_unauthenticated: bool = False
    """Permit binding beyond loopback with no authentication (a deliberate choice)."""


class McpConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """``[mcp]``: the MCP gateway (``/mcp``), which also serves ``/metrics``, ``/healthz`` and
    ``/readyz``. Without this section (or with MCP_ENABLED=false) there is no gateway."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 4002
    """0 picks a free port (MCP_PORT)."""
    timeout: int = 30000
    """Milliseconds a tool call may wait for the flock by default (MCP_TIMEOUT)."""
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    """Origins a browser may connect from, besides the gateway's own; others get 403."""
    max_message_bytes: int = 1048576
    """Largest WebSocket frame or HTTP body accepted."""
    rate_limit: float = 200.0
    """Requests per second per connection (token bucket) ..."""
    rate_burst: int = 400
    """... with bursts up to this many."""
    flood_refusals: int = 400
    """Messages a WebSocket may have refused for its rate in a row (no second without a
    refusal between them) before it is closed with 1008."""
    max_sessions: int = 10000
    """Sessions (WebSocket connections and Streamable HTTP sessions) held at once."""
    max_sessions_per_principal: int = 5000
    """Sessions one principal holds at once: a bearer token (when tokens are checked), else
    the peer address.
    A new session beyond it evicts that principal's uninitialized, then idle, sessions."""
    max_inflight: int = 64
    """Requests one session may have running at once."""
    init_timeout: float = 10.0
    """Seconds a session may go without initializing before it is closed."""
    session_idle_timeout: float = 600.0
    """Seconds a Streamable HTTP session may go without a request or an open server stream."""
    agent_idle_timeout: float = 30.0
    """Seconds a Streamable HTTP session carrying an outside agent may go without a request
    or an open server stream before it ends and its agent goes offline."""
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a listener on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


def exposure_problem(mcp: McpConfig) -> str | None:
    """Why this gateway config would serve other machines without authentication, or None."""
    auth = mcp.auth
    if is_loopback(mcp.host) or auth.tokens or auth.jwt_secret or auth.allow_unauthenticated:
        return None
    return (
        f"[mcp] host = {mcp.host!r} is reachable from other machines, but [mcp.auth] has no "
        "tokens and no jwt_secret: configure one (MCP_AUTH_TOKENS), bind 127.0.0.1, or set "
        "allow_unauthenticated = true if that is really meant"
    )


JWT_SECRET_MIN_BYTES = 32
"""HS256 keys shorter than the hash are refused (RFC 7518 3.2)."""


class MetricsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """``[metrics]``: Prometheus metrics, served at ``/metrics`` on the gateway; without a
    gateway, on a metrics-only listener at host:port."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9464


class ClaudeConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """``[claude]``: the Claude agent, started only when an API key is configured."""

    api_key: str = ""
    """Better left empty here and given as ANTHROPIC_API_KEY."""
    model: str = "claude-sonnet-5-5"
    """CLAUDE_MODEL overrides it."""
    max_tokens: int = 1024
    base_url: str = ""
    """Another Messages API endpoint ("" = Anthropic's)."""
    max_retries: int = 3
    """Retries of a call, by the Anthropic SDK's policy (408, 409, 429, 5xx, timeouts, connection
    errors; it obeys retry-after-ms, retry-after and x-should-retry), and of a stream that fails
    midway."""
    timeout: float = 60.0
    """Seconds one call may take."""


class A2aRemote(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    # ``[[a2a.remote]]``: an outside A2A agent that joins the flock as a proxy agent.
    url: str  # its base URL (the card is at <url>/.well-known/agent-card.json)
    token: str = ""  # bearer token sent to it ("" = none)
    timeout: float = 30.0  # seconds one request to it may take
    id: str = ""  # the proxy agent's id ("" = a2a-<host>-<port>)


class A2aConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    # ``[a2a]``: the flock as an A2A server on the gateway's app, and outside A2A agents.
    enabled: bool = True
    default_skill: str = ""  # capability for a message naming no skill ...
    default_task_type: str = ""  # ... or a task type for it (at most one of the two)
    public_url: str = ""  # the gateway's URL as clients reach it ("" = from the request)
    max_tasks: int = 10000  # finished tasks kept for tasks/get; the oldest go first
    refresh_interval: float = 30.0  # seconds between re-reads of each remote's card
    remote: list[A2aRemote] = msgspec.field(default_factory=list)

    def problems(self) -> list[str]:
        found = [f"a2a.{k}: expected > 0" for k in ("max_tasks", "refresh_interval") if getattr(self, k) <= 0]
        if self.default_skill and self.default_task_type:
            found.append("a2a.default_skill / a2a.default_task_type: set at most one")
        for i, r in enumerate(self.remote):
            if not re.match(r"^https?://[^/\s]+", r.url) or r.timeout <= 0:
                found.append(f"a2a.remote[{i}]: expected an http(s):// url and a timeout > 0, got {r.url!r}")
            if r.id and not re.fullmatch(r"[A-Za-z0-9_\-]+", r.id):
                found.append(f"a2a.remote[{i}].id: expected letters, digits, '_' or '-', got {r.id!r}")
        return found


class AgentConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """``[[agents]]``: ``count`` children of the root supervisor made from one class."""

    id: str
    class_: str = msgspec.field(name="class")
    """A built-in name (``echo``) or ``package.module:Class``."""
    count: int = 1
    restart: Restart = "permanent"
    shutdown: float = 5.0
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    """Keyword arguments for the class."""
    capabilities: list[str] | None = None
    """Offer only these of the class's capabilities (default: all it declares)."""


class GroupConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """``[[supervisors]]``: a supervisor of its own under the root, with its strategy, its
    restart intensity and its agents (``[[supervisors.agents]]``, as ``[[agents]]``)."""

    id: str
    strategy: Literal["one_for_one", "one_for_all", "rest_for_one"] = "one_for_one"
    max_restarts: int = 3
    max_seconds: float = 5.0
    restart: Restart = "permanent"
    """How the root restarts this supervisor when it gives up."""
    agents: list[AgentConfig] = msgspec.field(default_factory=list)


class FlockConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The whole file."""

    runtime: RuntimeConfig = msgspec.field(default_factory=RuntimeConfig)
    supervisor: SupervisorConfig = msgspec.field(default_factory=SupervisorConfig)
    nats: NatsConfig | None = None
    mcp: McpConfig | None = None
    metrics: MetricsConfig | None = None
    claude: ClaudeConfig = msgspec.field(default_factory=ClaudeConfig)
    a2a: A2aConfig | None = None
    agents: list[AgentConfig] = msgspec.field(default_factory=list)
    supervisors: list[GroupConfig] = msgspec.field(default_factory=list)


# Environment variables of the AI Flock design that override the file: (section, key, kind).
# Durations are in milliseconds, as there.
ENV_OVERRIDES: dict[str, tuple[str, str, type]] = {
    "NATS_URL": ("nats", "url", str),
    "HEARTBEAT_INTERVAL": ("nats", "heartbeat_interval", int),
    "MAX_RETRIES": ("nats", "max_retries", int),
    "NATS_REPLICAS": ("nats", "replicas", int),
    "NATS_PING_INTERVAL": ("nats", "ping_interval", int),
    "NATS_MAX_OUTSTANDING_PINGS": ("nats", "max_outstanding_pings", int),
    "NATS_MONITOR_PORT": ("nats", "monitor_port", int),
    "NATS_PREFETCH": ("nats", "prefetch", int),
    "NATS_MAX_HELD": ("nats", "max_held", int),
    "NATS_ACK_WAIT": ("nats", "ack_wait", int),
    "LOG_LEVEL": ("runtime", "log_level", str),
    "AGENT_ID": ("runtime", "name", str),
    "MCP_ENABLED": ("mcp", "enabled", bool),
    "MCP_PORT": ("mcp", "port", int),
    "MCP_TIMEOUT": ("mcp", "timeout", int),
    "NATS_PORT": ("nats", "port", int),
    "METRICS_PORT": ("metrics", "port", int),
    "ANTHROPIC_API_KEY": ("claude", "api_key", str),
    "CLAUDE_MODEL": ("claude", "model", str),
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_SECTIONS: dict[str, type[msgspec.Struct]] = {
    "runtime": RuntimeConfig,
    "nats": NatsConfig,
    "mcp": McpConfig,
    "claude": ClaudeConfig,
    "metrics": MetricsConfig,
}


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> FlockConfig:
    """Read and validate a config file, then apply the environment overrides.

    This checks what the file says; whether its classes exist and take their options is
    checked where they are imported, by :func:`flockrt.assembly.load` (what ``flockrt check``
    and ``flockrt run`` call) and when a :class:`~flockrt.runtime.Flock` starts.

    Args:
        path: The TOML file.
        env: Where to read the variables of :data:`ENV_OVERRIDES` (default: ``os.environ``).
            A variable for a section the file leaves out adds that section (NATS_URL adds
            ``[nats]``, MCP_ENABLED=true adds ``[mcp]``); MCP_ENABLED=false removes ``[mcp]``.
            MCP_AUTH_TOKENS (comma-separated, a flockrt addition) replaces ``mcp.auth.tokens``.

    Raises:
        ConfigError: unreadable file, bad TOML, or a value of the wrong type or range (a bad
            variable is named as such).
    """
    config = decode_config(path, env)
    problems = config_problems(config)
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return config


def decode_config(path: str | Path, env: Mapping[str, str] | None = None) -> FlockConfig:
    """Read a config file and apply the environment overrides: :func:`load_config` without
    the range checks (for a caller that adds checks of its own, see :func:`config_problems`).

    Raises:
        ConfigError: unreadable file, bad TOML, a value of the wrong type, or a bad variable.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    try:
        config = msgspec.toml.decode(data, type=FlockConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {_explain(str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return _apply_env(config, os.environ if env is None else env)


def _apply_env(config: FlockConfig, env: Mapping[str, str]) -> FlockConfig:
    sections: dict[str, dict[str, Any]] = {}
    for variable, (section, key, kind) in ENV_OVERRIDES.items():
        raw = env.get(variable, "").strip()
        if not raw:
            continue
        if kind is int:
            try:
                value: Any = int(raw)
            except ValueError:
                milliseconds = ("HEARTBEAT_INTERVAL", "MCP_TIMEOUT", "NATS_PING_INTERVAL", "NATS_ACK_WAIT")
                what = (
                    "milliseconds"
                    if variable in milliseconds
                    else "a port"
                    if variable.endswith("_PORT")
                    else "a count"
                )
                raise ConfigError(f"{variable}: expected an integer ({what}), got {raw!r}") from None
        elif kind is bool:
            if raw.lower() not in (*_TRUE, *_FALSE):
                raise ConfigError(f"{variable}: expected true or false, got {raw!r}")
            value = raw.lower() in _TRUE
        elif variable == "LOG_LEVEL":
            value = raw.upper()
            if value not in _LOG_LEVELS_LIST:
                raise ConfigError(f"{variable}: expected one of {', '.join(_LOG_LEVELS_LIST)}, got {raw!r}")
        else:
            value = raw
        sections.setdefault(section, {})[key] = value
    for name, values in sections.items():
        # A variable for a section the file leaves out (NATS_URL, MCP_ENABLED=true, ...) adds it.
        current: msgspec.Struct | None = getattr(config, name)
        if current is None:
            current = _SECTIONS[name]()
        config = msgspec.structs.replace(config, **{name: msgspec.structs.replace(current, **values)})
    tokens = [token.strip() for token in env.get("MCP_AUTH_TOKENS", "").split(",") if token.strip()]
    if tokens and config.mcp is not None:  # a flockrt addition: keeps secrets out of the file
        auth = msgspec.structs.replace(config.mcp.auth, tokens=tokens)
        config = msgspec.structs.replace(config, mcp=msgspec.structs.replace(config.mcp, auth=auth))
    if config.mcp is not None and not config.mcp.enabled:
        config = msgspec.structs.replace(config, mcp=None)
    return config


def config_problems(config: FlockConfig) -> list[str]:
    """Every value of ``config`` out of its range, as ``key: expected ..., got ...`` (empty
    when all is well); the checks that need no class imported."""
    problems = []
    if config.runtime.mailbox_capacity < 1:
        problems.append(f"runtime.mailbox_capacity: expected >= 1, got {config.runtime.mailbox_capacity}")
    if config.runtime.shutdown_timeout <= 0:
        problems.append(f"runtime.shutdown_timeout: expected > 0, got {config.runtime.shutdown_timeout}")
    if config.supervisor.max_restarts < 0:
        problems.append(f"supervisor.max_restarts: expected >= 0, got {config.supervisor.max_restarts}")
    if config.nats is not None:
        nats = config.nats
        if not 0 <= nats.port <= 65535:
            problems.append(f"nats.port: expected 0..65535, got {nats.port}")
        for key, low, high in (
            ("replicas", 1, 5),
            ("ping_interval", 1, 10**9),
            ("ack_wait", 1, 10**9),
            ("max_outstanding_pings", 1, 10**6),
        ):
            if not low <= getattr(nats, key) <= high:
                problems.append(f"nats.{key}: expected {low}..{high}, got {getattr(nats, key)}")
        if not -1 <= nats.monitor_port <= 65535:
            problems.append(
                f"nats.monitor_port: expected -1 (off), 0 (a free port) or a port, got {nats.monitor_port}"
            )
        if nats.heartbeat_interval <= 0:
            problems.append(
                f"nats.heartbeat_interval: expected > 0 (milliseconds), got {nats.heartbeat_interval}"
            )
        if nats.max_retries < 1:
            problems.append(f"nats.max_retries: expected >= 1, got {nats.max_retries}")
        for key in ("buffer_limit", "max_held", "prefetch"):
            if getattr(nats, key) < 0:
                problems.append(f"nats.{key}: expected >= 0, got {getattr(nats, key)}")
        for key in ("max_id_length", "max_capabilities", "directory_max_agents", "offline_ttl"):
            if getattr(nats, key) < 1:
                problems.append(f"nats.{key}: expected >= 1, got {getattr(nats, key)}")
        for key in ("unannounced_ttl", "discover_interval"):
            if getattr(nats, key) < 0:
                problems.append(f"nats.{key}: expected >= 0 (milliseconds), got {getattr(nats, key)}")
        for key in ("credentials", "tls_ca", "tls_cert", "tls_key"):
            value = getattr(nats, key)
            if value and not Path(value).is_file():
                problems.append(f"nats.{key}: no such file: {value!r}")
        if bool(nats.user) != bool(nats.password):
            problems.append("nats.user / nats.password: expected both or neither")
        if bool(nats.tls_cert) != bool(nats.tls_key):
            problems.append("nats.tls_cert / nats.tls_key: expected both or neither")
        if nats.url == "embedded" and (nats.credentials or nats.user or nats.token or nats.tls_ca):
            problems.append(
                "nats: credentials, user, token and TLS are for a server of your own, not the embedded one"
            )
        if nats.url != "embedded" and not all(
            re.match(r"^(nats|tls|ws|wss)://\S+$", server.strip()) for server in nats.url.split(",")
        ):
            problems.append(
                f'nats.url: expected "embedded" or nats:// URLs (comma-separated), got {nats.url!r}'
            )
    if config.mcp is not None:
        mcp = config.mcp
        if not 0 <= mcp.port <= 65535:
            problems.append(f"mcp.port: expected 0..65535, got {mcp.port}")
        if mcp.timeout <= 0:
            problems.append(f"mcp.timeout: expected > 0 (milliseconds), got {mcp.timeout}")
        if mcp.max_message_bytes < 1024:
            problems.append(f"mcp.max_message_bytes: expected >= 1024, got {mcp.max_message_bytes}")
        for key in ("flood_refusals", "max_sessions", "max_sessions_per_principal", "max_inflight"):
            if getattr(mcp, key) < 1:
                problems.append(f"mcp.{key}: expected >= 1, got {getattr(mcp, key)}")
        for key in ("init_timeout", "session_idle_timeout", "agent_idle_timeout"):
            if getattr(mcp, key) <= 0:
                problems.append(f"mcp.{key}: expected > 0 (seconds), got {getattr(mcp, key)}")
        exposed = exposure_problem(mcp)
        if exposed is not None:
            problems.append(exposed)
        secret = len(mcp.auth.jwt_secret.encode())
        if 0 < secret < JWT_SECRET_MIN_BYTES:
            problems.append(
                f"mcp.auth.jwt_secret: expected at least {JWT_SECRET_MIN_BYTES} bytes for HS256, got {secret}"
            )
        if mcp.rate_limit <= 0 or mcp.rate_burst < 1:
            problems.append("mcp.rate_limit / mcp.rate_burst: expected > 0 and >= 1")
    problems += config.a2a.problems() if config.a2a is not None else []
    if config.metrics is not None and not 0 <= config.metrics.port <= 65535:
        problems.append(f"metrics.port: expected 0..65535, got {config.metrics.port}")
    claude = config.claude
    if claude.max_tokens < 1:
        problems.append(f"claude.max_tokens: expected >= 1, got {claude.max_tokens}")
    if claude.max_retries < 0:
        problems.append(f"claude.max_retries: expected >= 0, got {claude.max_retries}")
    if claude.timeout <= 0:
        problems.append(f"claude.timeout: expected > 0 (seconds), got {claude.timeout}")
    if claude.base_url and not re.match(r"^https?://", claude.base_url):
        problems.append(f'claude.base_url: expected "" or an http(s):// URL, got {claude.base_url!r}')
    if config.supervisor.max_seconds <= 0:
        problems.append(f"supervisor.max_seconds: expected > 0, got {config.supervisor.max_seconds}")
    if config.runtime.prefix_agent_ids and not re.fullmatch(r"[A-Za-z0-9_\-]+", config.runtime.name):
        problems.append(
            "runtime.name: prefixes agent ids (prefix_agent_ids), so expected letters, digits, '_' or '-', "
            f"got {config.runtime.name!r}"
        )
    seen: set[str] = set()
    for where, entry in _entries(config):
        if isinstance(entry, GroupConfig):
            if not re.fullmatch(r"[A-Za-z0-9_\-]+", entry.id):
                problems.append(f"{where}.id: expected letters, digits, '_' or '-', got {entry.id!r}")
            if entry.id in seen:
                problems.append(f"{where}.id: {entry.id!r} is used twice")
            seen.add(entry.id)
            if entry.max_restarts < 0:
                problems.append(f"{where}.max_restarts: expected >= 0, got {entry.max_restarts}")
            if entry.max_seconds <= 0:
                problems.append(f"{where}.max_seconds: expected > 0, got {entry.max_seconds}")
            continue
        agent = entry
        if agent.count < 1:
            problems.append(f"{where}.count: expected >= 1, got {agent.count}")
        if agent.shutdown < 0:
            problems.append(f"{where}.shutdown: expected >= 0, got {agent.shutdown}")
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", agent.id):
            problems.append(f"{where}.id: expected letters, digits, '_', '-' or '.', got {agent.id!r}")
        if agent.id in seen:
            problems.append(f"{where}.id: {agent.id!r} is used twice")
        seen.add(agent.id)
    return problems


def agent_entries(config: FlockConfig) -> list[tuple[str, AgentConfig]]:
    """Every ``[[agents]]`` entry with its key path (``supervisors[0].agents[1]``), in tree
    order: the root's agents, then each supervisor's."""
    return [(where, entry) for where, entry in _entries(config) if isinstance(entry, AgentConfig)]


def _entries(config: FlockConfig) -> list[tuple[str, AgentConfig | GroupConfig]]:
    """The children in tree order with their key paths: the root's agents, then each
    supervisor followed by its agents."""
    entries: list[tuple[str, AgentConfig | GroupConfig]] = [
        (f"agents[{i}]", agent) for i, agent in enumerate(config.agents)
    ]
    for g, group in enumerate(config.supervisors):
        entries.append((f"supervisors[{g}]", group))
        entries += [(f"supervisors[{g}].agents[{i}]", agent) for i, agent in enumerate(group.agents)]
    return entries


# ---------------------------------------------------------------------- error messages

_PATH = re.compile(r"^(?P<what>.*) - at `\$(?P<path>.*)`$")


def _explain(message: str) -> str:
    """Rewrite msgspec's 'Invalid enum value 'x' - at `$.a[0].b`' as 'a[0].b: expected ...'."""
    match = _PATH.match(message)
    what, path = (match["what"], match["path"].lstrip(".")) if match else (message, "")
    enum = re.fullmatch(r"Invalid enum value (?P<value>.+)", what)
    if enum is not None:
        choices = _literal_choices(path)
        if choices:
            return (
                f"{path}: expected one of {', '.join(choices)}, got {enum['value'].replace(chr(39), chr(34))}"
            )
    unknown = re.fullmatch(r"Object contains unknown field `(?P<field>.+)`", what)
    if unknown is not None:
        key = f"{path}.{unknown['field']}" if path else unknown["field"]
        return f"{key}: unknown key (check its spelling and section)"
    typed = re.fullmatch(r"Expected `(?P<want>.+)`, got `(?P<got>.+)`", what)
    if typed is not None:
        return f"{path}: expected {typed['want']}, got {typed['got']}"
    return f"{path}: {what[0].lower()}{what[1:]}" if path else what


def _literal_choices(path: str) -> list[str]:
    """The allowed values of the Literal-typed field at ``path`` (like ``agents[2].restart``)."""
    tp: Any = FlockConfig
    for part in re.findall(r"[^.\[\]]+", path):
        if part.isdigit():
            args = typing.get_args(tp)
            tp = args[0] if args else Any
            continue
        if not (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
            return []
        fields = {field.encode_name: field.type for field in msgspec.structs.fields(tp)}
        tp = fields.get(part)
    while typing.get_origin(tp) in (Union, types.UnionType):
        tp = next(arg for arg in typing.get_args(tp) if arg is not type(None))
    if typing.get_origin(tp) is Literal:
        return [str(arg) for arg in typing.get_args(tp)]
    return []
