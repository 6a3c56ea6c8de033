"""OTP supervision trees: supervisors, dynamic supervisors, child specs and restart limits."""

from flockrt.supervisor.limiter import RestartLimiter
from flockrt.supervisor.spec import Backoff, ChildSpec, ChildType, Restart, Strategy
from flockrt.supervisor.supervisor import ChildCounts, ChildInfo, DynamicSupervisor, Supervisor

__all__ = [
    "Backoff",
    "ChildCounts",
    "ChildInfo",
    "ChildSpec",
    "ChildType",
    "DynamicSupervisor",
    "Restart",
    "RestartLimiter",
    "Strategy",
    "Supervisor",
]
