"""How an agent and its flock see each other: the agent's card, and two small Protocols.

An agent knows its flock only through :class:`Membership` (registered as an extension of the
actor system: ``system.register_extension(Membership, flock)``): it joins with its card when it
starts, heartbeats, and leaves when it stops. Joining gives it a :class:`WorkSource`, the
dispatcher that hands it work and hears when a slot is free again, and through which the agent
asks other agents for capabilities. Nothing here knows how the flock is built (in one process or
over NATS), and no flock class is a base class of anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from flockrt.agents.here import Here
    from flockrt.agents.work import ProgressCallback, Work
    from flockrt.errors import WorkFailed
    from flockrt.wire.schema import CapabilitySchema, Heartbeat

__all__ = ["AgentCard", "Membership", "RunNow", "WorkSource"]

RunNow = Callable[[str, str, Any, "str | None"], "tuple[Any, WorkFailed | None] | None"]
"""``run_now(kind, key, payload, correlation)``: run a task (``payload``: the TaskMessage) or a
capability request (its parameters) whose handler never waits, here and now; ``(value, None)``
or ``(None, failure)``, or None when the agent cannot take work right now."""


@dataclass(frozen=True, slots=True)
class AgentCard:
    """What a flock knows of a local agent: identity, skills, capacity, its ref and its hooks."""

    id: str
    name: str
    capabilities: tuple[str, ...]
    task_types: tuple[str, ...]
    max_concurrent_tasks: int
    ref: Any  # ActorRef[Any]; Any keeps this module free of the kernel's types at run time
    take_work: Callable[[Work], bool] | None = None
    """Hands work to the agent directly, bypassing its mailbox (see :meth:`Agent.take_work`)."""
    run_now: RunNow | None = None
    """Runs a task or a capability request whose handler never waits here and now, with no Work."""
    run_here: Callable[[Work], Here | None] | None = None
    """Work to run in the current Task, its waiting submitter's, which awaits what this
    returns at once (see :meth:`Agent.run_here`); None when the agent cannot take it now."""
    inline_task_types: frozenset[str] = frozenset()
    """Task types whose handler never waits: the flock may hand it many of those tasks as one
    :class:`~flockrt.agents.work.TaskBatch`, which it runs in one go."""
    inline_capabilities: frozenset[str] = frozenset()
    """Capabilities whose handler never waits."""
    capability_schemas: dict[str, CapabilitySchema] | None = None
    """What the capabilities take, return and do, as the agent's announcement says."""


class WorkSource(Protocol):
    """The dispatcher an agent gets its work from (see :class:`Membership`)."""

    def work_done(self, agent_id: str) -> None:
        """One piece of work handed to the agent has finished: capacity is free."""
        ...

    async def request_capability(
        self,
        capability: str,
        parameters: Any = None,
        *,
        timeout: float = 30.0,
        progress: ProgressCallback | None = None,
    ) -> Any:
        """Have an agent of the flock that offers ``capability`` do it; return its answer."""
        ...


@runtime_checkable
class Membership(Protocol):
    """What an agent needs from the flock it lives in, registered with
    ``system.register_extension(Membership, flock)``."""

    heartbeat_interval: float
    """Seconds between heartbeats (HEARTBEAT_INTERVAL is in milliseconds)."""

    def agent_started(self, card: AgentCard) -> WorkSource:
        """The agent is ready for work (also after a restart); returns where its work comes from."""
        ...

    def agent_heartbeat(self, heartbeat: Heartbeat) -> None:
        """A sign of life with the agent's counters."""
        ...

    def agent_stopped(self, agent_id: str) -> None:
        """The agent takes no more work (it is stopping or restarting)."""
        ...
