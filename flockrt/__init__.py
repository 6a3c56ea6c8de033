"""flockrt: an actor-model runtime for AI agents on pure asyncio.

The public API is re-exported here; ``tests/test_public_api.py`` keeps ``__all__`` in step.
"""

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
    AskTimeout,
    BusTimeout,
    BusUnavailable,
    FlockError,
    MailboxFull,
    NoResponders,
    RestartIntensityExceeded,
    SystemStopped,
)
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

__version__ = "0.1.0"

__all__ = [
    "Actor",
    "ActorContext",
    "ActorFailed",
    "ActorNameTaken",
    "ActorRef",
    "ActorStartFailed",
    "ActorStopped",
    "ActorSystem",
    "AskTimeout",
    "Backoff",
    "BusTimeout",
    "BusUnavailable",
    "ChildCounts",
    "ChildInfo",
    "ChildSpec",
    "ChildType",
    "DynamicSupervisor",
    "FlockError",
    "MailboxFull",
    "NoResponders",
    "Restart",
    "RestartIntensityExceeded",
    "RestartLimiter",
    "StopReason",
    "Strategy",
    "Supervisor",
    "SystemStats",
    "SystemStopped",
    "Terminated",
    "Timer",
]
