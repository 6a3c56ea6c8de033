"""The in-process actor kernel: actors, refs, contexts and the actor system."""

from flockrt.actors.actor import Actor
from flockrt.actors.agent import (
    Agent,
    AgentCard,
    AgentPort,
    ProgressCallback,
    Work,
    capability,
    handles_task,
)
from flockrt.actors.context import ActorContext, Timer
from flockrt.actors.messages import StopReason, Terminated
from flockrt.actors.ref import ActorRef
from flockrt.actors.system import ActorSystem, SystemStats

__all__ = [
    "Actor",
    "ActorContext",
    "ActorRef",
    "ActorSystem",
    "Agent",
    "AgentCard",
    "AgentPort",
    "ProgressCallback",
    "StopReason",
    "SystemStats",
    "Terminated",
    "Timer",
    "Work",
    "capability",
    "handles_task",
]
