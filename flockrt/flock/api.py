"""The Flock interface: one API that every flock implementation offers, the same in-process
(:class:`~flockrt.flock.local.LocalFlock`) and over NATS (:class:`~flockrt.bus.flock.NatsFlock`).

Code above the flock (the MCP gateway, the metrics layer, the runtime, user code) is written
against this Protocol and never asks which implementation it holds. What differs between them is
where work can go, not what the calls mean:

- ``submit`` and ``submit_many`` hand tasks to *some* agent of the flock that handles the type
  (over NATS: one process of the queue group, perhaps this one);
- ``request_capability`` asks *some* agent that offers the capability (a local one first);
- ``send`` and ``query`` reach one agent by id, wherever it lives;
- ``broadcast`` reaches every agent of the flock, in every process;
- ``list_agents`` and ``get_agent`` read this process's directory, which over NATS also holds
  what other processes announced.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload, runtime_checkable

if TYPE_CHECKING:
    from flockrt.actors.ref import ActorRef
    from flockrt.actors.system import ActorSystem
    from flockrt.agents.agent import Agent, ProgressCallback
    from flockrt.flock.directory import AgentInfo, Directory, StatusFilter
    from flockrt.flock.stats import WorkStats
    from flockrt.supervisor.spec import Restart
    from flockrt.wire.schema import CapabilityResponse, Priority, TaskResult

__all__ = ["FlockAPI"]


@runtime_checkable
class FlockAPI(Protocol):
    """What every flock offers (see the module docstring for what each call reaches).

    Attributes:
        node: This process's name in the flock (unique across processes).
        system: The actor system its local agents live in.
        directory: The agents this process knows of, with their status.
        work_stats: Set by the metrics layer to count and time work by outcome; None (the
            default) costs the dispatcher one attribute check.
        tasks_finished: Tasks run by this process's agents, by outcome (``ok``, ``error``).
        invalid_messages: Rejected inbound messages by subject (always empty in-process).
    """

    node: str
    system: ActorSystem
    directory: Directory
    invalid_messages: Counter[str]

    @property
    def work_stats(self) -> WorkStats | None: ...

    @work_stats.setter
    def work_stats(self, stats: WorkStats | None) -> None: ...

    @property
    def tasks_finished(self) -> dict[str, int]: ...

    @property
    def queued_work(self) -> int:
        """Tasks and capability requests waiting in this process for a free local agent."""
        ...

    def durable_counts(self) -> Mapping[str, int]:
        """Durable-task events of this process (``submitted``, ``acked``, ...): empty unless
        tasks run through JetStream."""
        ...

    async def start(self) -> None:
        """Start serving (over NATS: subscribe); agents may be spawned before or after."""
        ...

    async def close(self) -> None:
        """Stop taking work from outside; what was queued to go out is sent first."""
        ...

    async def flush(self) -> None:
        """Wait until what the flock queued to send (announcements, results) has gone out."""
        ...

    async def submit(
        self,
        task_type: str,
        data: Any = None,
        *,
        priority: Priority = "medium",
        task_id: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        metadata: dict[str, Any] | None = None,
        check: bool = False,
    ) -> TaskResult | str:
        """Submit a task; its id, or with ``wait=True`` its TaskResult (a failed task is a
        TaskResult with ``status="error"``, not an exception).

        Without ``wait``, a task is handed on as fast as the flock can (over NATS: published,
        and nobody checks that any process takes it). ``check=True`` makes sure somebody
        handles ``task_type`` before returning the id, for callers that must tell a user (the
        gateway's submit_task tool, ``flockrt submit``): over NATS it costs one round trip to
        the server, whose no-responders status answers at once when no process consumes
        ``tasks.<type>``. In durable mode the stream keeps the task until a process takes it,
        so nothing is checked; in one process a task nobody handles is always refused.

        With ``wait`` and an agent in this process, the submitter owns its task: the handler
        runs in the submitter's own asyncio Task when an agent is free, and a submitter that
        is cancelled, or whose ``timeout`` passes, cancels the task (its result is an error,
        "cancelled"). Without ``wait`` the task is detached from its submitter.

        Raises:
            NoCapableAgent: nobody handles ``task_type`` (always in one process; over NATS with
                ``wait`` or ``check``).
            BusUnavailable: ``check`` over NATS while it is unreachable and no local agent
                handles ``task_type``.
            WorkTimeout: ``wait`` and no result within ``timeout`` seconds.
        """
        ...

    @overload
    async def submit_many(
        self,
        task_type: str,
        items: Iterable[Any],
        *,
        priority: Priority = "medium",
        metadata: dict[str, Any] | None = None,
        results: Literal["each"] = "each",
        timeout: float | None = None,
    ) -> list[str]: ...

    @overload
    async def submit_many(
        self,
        task_type: str,
        items: Iterable[Any],
        *,
        priority: Priority = "medium",
        metadata: dict[str, Any] | None = None,
        results: Literal["batch"],
        timeout: float | None = None,
    ) -> list[TaskResult]: ...

    async def submit_many(
        self,
        task_type: str,
        items: Iterable[Any],
        *,
        priority: Priority = "medium",
        metadata: dict[str, Any] | None = None,
        results: Literal["each", "batch"] = "each",
        timeout: float | None = None,
    ) -> list[str] | list[TaskResult]:
        """One task per item: their ids (``results="each"``), or all their TaskResults in
        order once every one is in (``results="batch"``)."""
        ...

    async def request_capability(
        self,
        capability: str,
        parameters: Any = None,
        *,
        timeout: float = 30.0,
        progress: ProgressCallback | None = None,
    ) -> Any:
        """Have an agent that offers ``capability`` do it; return its answer.

        The requester owns the work: cancelled, or past its ``timeout``, it stops the work.
        A free agent in this process runs the handler in the requester's own asyncio Task.

        Raises:
            NoCapableAgent: no agent offers it.
            WorkTimeout: no answer within ``timeout`` seconds.
            WorkFailed: the agent's handler raised.
        """
        ...

    async def request_capability_response(
        self,
        capability: str,
        parameters: Any = None,
        *,
        timeout: float = 30.0,
        progress: ProgressCallback | None = None,
    ) -> CapabilityResponse:
        """:meth:`request_capability`, answered with who did it (result, agent id, correlation id)."""
        ...

    async def send_message(
        self,
        to: str,
        message: Any,
        *,
        type: str = "command",
        sender: str = "flock",
        timeout: float = 30.0,
        metadata: dict[str, Any] | None = None,
    ) -> Any:
        """The AI Flock's ``sendMessage``: :meth:`query` for ``type="query"``, else :meth:`send`."""
        ...

    async def send(
        self,
        to: str,
        message: Any,
        *,
        type: str = "command",
        sender: str = "flock",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Deliver a direct message (not a query) to agent ``to``, here or in another process.

        Raises:
            UnknownAgent: no such agent (in-process), or nobody listens for it (over NATS).
            ValueError: ``type`` is ``"query"``: use :meth:`query`.
        """
        ...

    async def query(
        self,
        to: str,
        message: Any,
        *,
        sender: str = "flock",
        timeout: float = 30.0,
        metadata: dict[str, Any] | None = None,
    ) -> Any:
        """Ask agent ``to`` a question (a ``query`` direct message) and return its answer.

        Raises:
            UnknownAgent: no such agent.
            AskTimeout: no answer within ``timeout`` seconds (over NATS: WorkTimeout).
            WorkFailed: the agent answered with a failure.
        """
        ...

    async def broadcast(self, type: str, message: Any = None, data: Any = None) -> None:
        """Tell every agent of the flock (every process): a ``Broadcast``."""
        ...

    def list_agents(self, status: StatusFilter = "online", capability: str | None = None) -> list[AgentInfo]:
        """The agents this process knows of, by status and capability."""
        ...

    def get_agent(self, agent_id: str) -> AgentInfo | None:
        """One agent's info, or None."""
        ...

    async def wait_for_agents(
        self, count: int, *, capability: str | None = None, timeout: float = 10.0
    ) -> list[AgentInfo]:
        """Wait until at least ``count`` agents (with ``capability``) are online."""
        ...

    def on_result(self, listener: Callable[[TaskResult], None]) -> Callable[[], None]:
        """Call ``listener`` with the TaskResult of every task this process's agents run;
        returns the function that unsubscribes it."""
        ...

    def is_local(self, agent_id: str) -> bool:
        """Whether ``agent_id`` is an agent of this process."""
        ...

    async def spawn_pool(
        self,
        agent_class: type[Agent],
        count: int,
        *,
        id_prefix: str | None = None,
        restart: Restart = "permanent",
        **options: Any,
    ) -> ActorRef[Any]:
        """Start ``count`` agents of ``agent_class`` under a supervisor of their own; returns
        once other processes can reach them."""
        ...
