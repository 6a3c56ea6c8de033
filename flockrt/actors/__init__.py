"""The in-process actor kernel: actors, refs, contexts and the actor system."""

from flockrt.actors.actor import Actor
from flockrt.actors.context import ActorContext
from flockrt.actors.messages import StopReason, Terminated
from flockrt.actors.ref import ActorRef
from flockrt.actors.system import ActorSystem, SystemStats
from flockrt.actors.timers import Timer

__all__ = [
    "Actor",
    "ActorContext",
    "ActorRef",
    "ActorSystem",
    "StopReason",
    "SystemStats",
    "Terminated",
    "Timer",
]
