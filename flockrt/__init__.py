"""flockrt: an actor-model runtime for AI agents on pure asyncio.

The public API is re-exported here; ``tests/test_public_api.py`` keeps ``__all__`` in step.
The actor kernel and the errors are imported with the package; everything else (supervisors
included) is imported when first used (see :func:`__getattr__`).
"""

import importlib
from typing import TYPE_CHECKING, Any

from flockrt._version import __version__ as __version__
from flockrt.actors import (
    Actor,
    ActorContext,
    ActorRef,
    ActorSystem,
    StopReason,
    SystemStats,
    Terminated,
    Timer,
)
from flockrt.errors import (
    ActorFailed,
    ActorNameTaken,
    ActorStartFailed,
    ActorStopped,
    AgentDisconnected,
    AskTimeout,
    BusTimeout,
    BusUnavailable,
    CircuitOpen,
    ClaudeError,
    ConfigError,
    FlockError,
    Forbidden,
    GatewayConfigError,
    GatewayError,
    GatewayUnavailable,
    InvalidMessage,
    InvalidParameters,
    JetStreamError,
    JsonRpcError,
    ListenError,
    MailboxFull,
    NatsServerError,
    NatsServerNotFound,
    NoCapableAgent,
    NoResponders,
    NotAuthorized,
    OutsideAgentFailed,
    RemoteAgentUnreachable,
    RemoteFailure,
    RestartIntensityExceeded,
    SystemStopped,
    ToolError,
    Unauthorized,
    UnknownAgent,
    WorkFailed,
    WorkTimeout,
)

if TYPE_CHECKING:
    from flockrt.agents.agent import (
        Agent,
        AgentCard,
        AgentPort,
        ProgressCallback,
        Work,
        capability,
        handles_task,
    )
    from flockrt.breaker import BreakerState, CircuitBreaker
    from flockrt.client import FlockClient
    from flockrt.config import FlockConfig, load_config
    from flockrt.flock.local import LocalFlock
    from flockrt.mcp import Gateway, OutsideAgent
    from flockrt.runtime import Flock
    from flockrt.supervisor import (
        Backoff,
        ChildCounts,
        ChildInfo,
        ChildSpec,
        ChildType,
        DynamicSupervisor,
        Restart,
        RestartLimiter,
        Strategy,
        Supervisor,
    )
    from flockrt.wire.schema import AgentEvent, Broadcast, DirectMessage, TaskMessage, TaskResult

_LAZY: dict[str, str] = {
    "Backoff": "flockrt.supervisor",
    "ChildCounts": "flockrt.supervisor",
    "ChildInfo": "flockrt.supervisor",
    "ChildSpec": "flockrt.supervisor",
    "ChildType": "flockrt.supervisor",
    "DynamicSupervisor": "flockrt.supervisor",
    "Restart": "flockrt.supervisor",
    "RestartLimiter": "flockrt.supervisor",
    "Strategy": "flockrt.supervisor",
    "Supervisor": "flockrt.supervisor",
    "Agent": "flockrt.agents.agent",
    "AgentCard": "flockrt.agents.agent",
    "AgentPort": "flockrt.agents.agent",
    "ProgressCallback": "flockrt.agents.agent",
    "Work": "flockrt.agents.agent",
    "capability": "flockrt.agents.agent",
    "handles_task": "flockrt.agents.agent",
    "BreakerState": "flockrt.breaker",
    "CircuitBreaker": "flockrt.breaker",
    "AgentEvent": "flockrt.wire.schema",
    "Broadcast": "flockrt.wire.schema",
    "DirectMessage": "flockrt.wire.schema",
    "TaskMessage": "flockrt.wire.schema",
    "TaskResult": "flockrt.wire.schema",
    "FlockConfig": "flockrt.config",
    "load_config": "flockrt.config",
    "LocalFlock": "flockrt.flock.local",
    "Gateway": "flockrt.mcp",
    "OutsideAgent": "flockrt.mcp",
    "FlockClient": "flockrt.client",
    "Flock": "flockrt.runtime",
}

__all__ = [
    "Actor",
    "ActorContext",
    "ActorFailed",
    "ActorNameTaken",
    "ActorRef",
    "ActorStartFailed",
    "ActorStopped",
    "ActorSystem",
    "Agent",
    "AgentCard",
    "AgentDisconnected",
    "AgentEvent",
    "AgentPort",
    "AskTimeout",
    "Backoff",
    "BreakerState",
    "Broadcast",
    "BusTimeout",
    "BusUnavailable",
    "ChildCounts",
    "ChildInfo",
    "ChildSpec",
    "ChildType",
    "CircuitBreaker",
    "CircuitOpen",
    "ClaudeError",
    "ConfigError",
    "DirectMessage",
    "DynamicSupervisor",
    "Flock",
    "FlockClient",
    "FlockConfig",
    "FlockError",
    "Forbidden",
    "Gateway",
    "GatewayConfigError",
    "GatewayError",
    "GatewayUnavailable",
    "InvalidMessage",
    "InvalidParameters",
    "JetStreamError",
    "JsonRpcError",
    "ListenError",
    "LocalFlock",
    "MailboxFull",
    "NatsServerError",
    "NatsServerNotFound",
    "NoCapableAgent",
    "NoResponders",
    "NotAuthorized",
    "OutsideAgent",
    "OutsideAgentFailed",
    "ProgressCallback",
    "RemoteAgentUnreachable",
    "RemoteFailure",
    "Restart",
    "RestartIntensityExceeded",
    "RestartLimiter",
    "StopReason",
    "Strategy",
    "Supervisor",
    "SystemStats",
    "SystemStopped",
    "TaskMessage",
    "TaskResult",
    "Terminated",
    "Timer",
    "ToolError",
    "Unauthorized",
    "UnknownAgent",
    "Work",
    "WorkFailed",
    "WorkTimeout",
    "capability",
    "handles_task",
    "load_config",
]


def __getattr__(name: str) -> Any:
    """Import the heavier parts of the public API on first use (PEP 562), so that a user of
    plain actors (``import flockrt.actors``) loads none of msgspec, nats, aiohttp,
    prometheus_client, jwt or anthropic."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flockrt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
