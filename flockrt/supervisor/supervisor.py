"""Supervisor and DynamicSupervisor: OTP supervision trees on top of the actor kernel.

A supervisor is an actor. Its children are started in spec order (each ``spawn`` completes,
``on_start`` included, before the next begins) and stopped in reverse order, each within its
``shutdown`` seconds. When a child fails, the supervisor applies its strategy; every restart is
counted and more than ``max_restarts`` within ``max_seconds`` makes it give up: it stops all its
children in reverse start order and fails to its own parent with
:class:`~flockrt.errors.RestartIntensityExceeded`.

A restarted child keeps its ref and its mailbox (only the actor instance is new), so messages
queued at the time of the failure are handled by the new instance. A permanent child that stops
normally is started afresh, with a new ref.

Introspection and run-time changes go through the static methods (``which_children``,
``count_children``, ``start_child``, ``terminate_child``...) called with the supervisor's ref.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from flockrt.actors.actor import Actor
from flockrt.actors.context import RUNNING, STOPPING, ActorContext
from flockrt.actors.instance import quiesce, restart_instance, teardown
from flockrt.actors.messages import StopReason
from flockrt.actors.ref import DEFAULT_ASK_TIMEOUT, ActorRef
from flockrt.errors import FlockError, RestartIntensityExceeded
from flockrt.supervisor.limiter import RestartLimiter
from flockrt.supervisor.spec import Backoff, ChildSpec, ChildType, Restart, Strategy

__all__ = ["ChildCounts", "ChildInfo", "DynamicSupervisor", "Supervisor"]

log = logging.getLogger("flockrt.supervisor")


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """One entry of ``which_children``.

    Attributes:
        id: The child's spec id.
        ref: Its ref, or None when it is not running (terminated, or waiting for a restart).
        type: worker or supervisor.
        restart: Its restart type.
        state: running, restarting (failed, restart pending) or terminated.
        restarts: How many times this supervisor restarted it.
    """

    id: str
    ref: ActorRef[Any] | None
    type: ChildType
    restart: Restart
    state: Literal["running", "restarting", "terminated"]
    restarts: int


@dataclass(frozen=True, slots=True)
class ChildCounts:
    """``count_children``: specs known, children alive, and how many are supervisors/workers."""

    specs: int
    active: int
    supervisors: int
    workers: int


@dataclass(eq=False, slots=True)
class _Child:
    spec: ChildSpec
    cell: ActorContext[Any] | None = None
    restarts: int = 0
    backoff: asyncio.TimerHandle | None = None


@dataclass(frozen=True, slots=True)
class _Call:
    op: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class _CallError:
    error: Exception


@dataclass(frozen=True, slots=True)
class _RestartDue:
    child: _Child
    error: BaseException | None


async def _call(sup: ActorRef[Any], op: str, *args: Any, timeout: float | None = DEFAULT_ASK_TIMEOUT) -> Any:
    reply = await sup.ask(_Call(op, args), timeout=timeout)
    if isinstance(reply, _CallError):
        raise reply.error
    return reply


class _SupervisorBase(Actor[Any]):
    """Restart bookkeeping shared by Supervisor and DynamicSupervisor."""

    _flockrt_supervises = True
    # Whether a child that ended for good stays listed (as "terminated") for restart_child.
    _keep_terminated = True

    def __init__(
        self,
        *,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._children: list[_Child] = []  # in start order
        self._by_cell: dict[ActorContext[Any], _Child] = {}
        self._limiter = RestartLimiter(max_restarts, max_seconds, clock)
        self._backoff = backoff
        self._rng = rng or random.Random()

    # --------------------------------------------------------------- messages

    async def receive(self, message: Any) -> Any:
        if type(message) is _Call:
            handler = getattr(self, f"_op_{message.op}", None)
            if handler is None:
                return _CallError(ValueError(f"{type(self).__name__} has no operation {message.op!r}"))
            try:
                return await handler(*message.args)
            except (FlockError, ValueError, KeyError, TypeError) as exc:
                return _CallError(exc)  # the caller's mistake: raised there, not here
        if type(message) is _RestartDue:
            child = message.child
            child.backoff = None
            if child in self._children and (child.cell is None or child.cell._state != RUNNING):
                await self._apply_strategy(child, message.error)
            return None
        self.context.log.warning("supervisor ignores unexpected message %r", message)
        self.context._system._dead_letter(self.context, message)
        return None

    async def _op_which_children(self) -> list[ChildInfo]:
        return [self._info(child) for child in self._children]

    async def _op_count_children(self) -> ChildCounts:
        active = sum(1 for child in self._children if child.cell is not None and child.cell._state == RUNNING)
        supervisors = sum(1 for child in self._children if child.spec.type == "supervisor")
        return ChildCounts(
            specs=len(self._children),
            active=active,
            supervisors=supervisors,
            workers=len(self._children) - supervisors,
        )

    def _info(self, child: _Child) -> ChildInfo:
        cell = child.cell
        state: Literal["running", "restarting", "terminated"]
        if cell is None:
            state = "restarting" if child.backoff is not None else "terminated"
        else:
            state = "running" if cell._state == RUNNING else "restarting"
        return ChildInfo(
            id=child.spec.id,
            ref=cell._ref if cell is not None else None,
            type=child.spec.type,
            restart=child.spec.restart,
            state=state,
            restarts=child.restarts,
        )

    # --------------------------------------------------------------- starting and stopping

    def _child_name(self, child: _Child) -> str | None:
        return child.spec.id

    async def _start(self, child: _Child) -> ActorRef[Any]:
        spec = child.spec
        ref = await self.context.spawn(
            spec.factory,
            *spec.args,
            name=self._child_name(child),
            mailbox_capacity=spec.mailbox_capacity,
            shutdown_timeout=spec.shutdown,
        )
        child.cell = ref._cell
        self._by_cell[ref._cell] = child
        return ref

    async def _stop(self, child: _Child, reason: StopReason = "shutdown") -> None:
        if child.backoff is not None:
            child.backoff.cancel()
            child.backoff = None
        cell = child.cell
        if cell is None:
            return
        child.cell = None
        self._by_cell.pop(cell, None)
        await cell._stop_and_wait(reason, cell._shutdown_timeout)

    async def _flockrt_stop_children(self) -> None:
        for child in reversed(self._children):
            await self._stop(child)

    def on_stop(self) -> None:
        for child in self._children:
            if child.backoff is not None:
                child.backoff.cancel()
                child.backoff = None

    # --------------------------------------------------------------- failures

    async def _flockrt_child_failed(self, cell: ActorContext[Any], error: BaseException) -> None:
        child = self._by_cell.get(cell)
        if child is None:
            cell._request_stop(error)
            return
        if cell._state == RUNNING:
            return  # stale: a strategy already restarted it since this failure
        if child.spec.restart == "temporary":
            await self._stop(child, error)
            self._forget(child)
            return
        await self._restart_for(child, error)

    async def _flockrt_child_exited(self, cell: ActorContext[Any], reason: StopReason) -> None:
        child = self._by_cell.pop(cell, None)
        if child is None:
            return  # one we stopped ourselves
        child.cell = None
        restart = child.spec.restart
        error = reason if isinstance(reason, BaseException) else None
        if restart == "permanent" or (restart == "transient" and error is not None):
            await self._restart_for(child, error)
        elif restart == "temporary" or not self._keep_terminated:
            self._forget(child)
        # else: a transient child that stopped normally stays listed as terminated

    def _forget(self, child: _Child) -> None:
        if child in self._children:
            self._children.remove(child)

    async def _restart_for(self, child: _Child, error: BaseException | None) -> None:
        """Count a restart against the intensity, then restart now or after a backoff."""
        if not self._limiter.record():
            await self._give_up(error)
        backoff = self._backoff
        if backoff is not None:
            delay = backoff.delay(self._limiter.recent - 1, self._rng)
            if delay > 0:
                loop = self.context._system._loop
                due = _RestartDue(child, error)
                child.backoff = loop.call_later(delay, self.context._enqueue_unbounded, due)
                return
        await self._apply_strategy(child, error)

    async def _give_up(self, error: BaseException | None) -> None:
        limiter = self._limiter
        log.error(
            "supervisor %s: more than %d restarts within %g s; stopping its children",
            self.context.path,
            limiter.max_restarts,
            limiter.max_seconds,
        )
        await self._flockrt_stop_children()
        raise RestartIntensityExceeded(
            self.context.path, limiter.max_restarts, limiter.max_seconds
        ) from error

    async def _apply_strategy(self, child: _Child, error: BaseException | None) -> None:
        await self._revive([child], child, error)

    async def _revive(self, group: list[_Child], failed: _Child, error: BaseException | None) -> None:
        """End the current instances of ``group`` in reverse start order (the failed one
        included: it gets on_stop too), then (re)start the whole group in start order."""
        for other in reversed(group):
            cell = other.cell
            if cell is not None and cell._state < STOPPING:
                await quiesce(cell, cell._shutdown_timeout)
                await teardown(cell, cell._shutdown_timeout)
        for member in group:
            if member not in self._children:
                continue  # removed while we were stopping the group
            if member is not failed and member.spec.restart == "temporary":
                await self._stop(member)  # ended by a sibling's failure: never restarted
                self._forget(member)
                continue
            try:
                await self._revive_one(member, error if member is failed else None)
            except Exception as exc:
                kind = ("restart failed", type(exc), str(exc))  # a storm of them: counted (see repeats)
                path, child = self.context.path, member.spec.id
                failures = self.context._system.failure_log
                failures.log(
                    log, logging.ERROR, kind, "supervisor %s: restarting %s failed: %r", path, child, exc
                )
                await self._restart_for(member, exc)
                return  # that restart handled the rest of the group

    async def _revive_one(self, child: _Child, error: BaseException | None) -> None:
        if child.backoff is not None:
            child.backoff.cancel()
            child.backoff = None
        cell = child.cell
        if cell is not None and cell._state < STOPPING:
            await restart_instance(cell, error)
        else:
            if cell is not None:
                self._by_cell.pop(cell, None)
                child.cell = None
            await self._start(child)
        child.restarts += 1
        self.context._system._restarts += 1

    # --------------------------------------------------------------- introspection

    def _flockrt_describe(self) -> dict[str, Any]:
        nodes = []
        for child in self._children:
            cell = child.cell
            if cell is not None:
                node = cell._snapshot()
            else:
                node = {"name": child.spec.id, "path": None, "actor": None, "children": []}
            node.update(
                id=child.spec.id,
                type=child.spec.type,
                restart=child.spec.restart,
                restarts=child.restarts,
                state=self._info(child).state,
            )
            nodes.append(node)
        limiter = self._limiter
        return {
            "supervisor": {
                "strategy": self._strategy_name(),
                "max_restarts": limiter.max_restarts,
                "max_seconds": limiter.max_seconds,
            },
            "children": nodes,
        }

    def _strategy_name(self) -> str:
        return Strategy.ONE_FOR_ONE.value

    # --------------------------------------------------------------- public calls

    @staticmethod
    async def which_children(
        sup: ActorRef[Any], *, timeout: float | None = DEFAULT_ASK_TIMEOUT
    ) -> list[ChildInfo]:
        """The children of ``sup`` in start order, with state and restart counts."""
        result: list[ChildInfo] = await _call(sup, "which_children", timeout=timeout)
        return result

    @staticmethod
    async def count_children(
        sup: ActorRef[Any], *, timeout: float | None = DEFAULT_ASK_TIMEOUT
    ) -> ChildCounts:
        """How many children ``sup`` has (specs, active, supervisors, workers)."""
        result: ChildCounts = await _call(sup, "count_children", timeout=timeout)
        return result


class Supervisor(_SupervisorBase):
    """A supervisor of a fixed (but changeable at run time) list of children.

    Args:
        children: Child specs, started in this order when the supervisor starts.
        strategy: one_for_one (default), one_for_all or rest_for_one.
        max_restarts: Restarts allowed within ``max_seconds`` (default 3 in 5 s).
        max_seconds: The intensity window.
        backoff: Optional delay between restarts (exponential with jitter).
        clock: Monotonic clock for the intensity window (injectable for tests).

    Example::

        specs = [ChildSpec(id="db", factory=Db), ChildSpec(id="api", factory=Api)]
        root = await system.spawn(lambda: Supervisor(specs, strategy="rest_for_one"), name="root")
    """

    def __init__(
        self,
        children: Sequence[ChildSpec] = (),
        *,
        strategy: Strategy | str = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            max_restarts=max_restarts, max_seconds=max_seconds, backoff=backoff, clock=clock, rng=rng
        )
        try:
            self.strategy = Strategy(strategy)
        except ValueError:
            raise ValueError(
                f"strategy must be one of one_for_one, one_for_all, rest_for_one, got {strategy!r}"
            ) from None
        ids = [spec.id for spec in children]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate child ids: {', '.join(duplicates)}")
        self._children = [_Child(spec) for spec in children]

    async def on_start(self) -> None:
        started: list[_Child] = []
        try:
            for child in self._children:
                await self._start(child)
                started.append(child)
        except BaseException:
            for child in reversed(started):
                await self._stop(child)
            raise

    def _strategy_name(self) -> str:
        return self.strategy.value

    async def _apply_strategy(self, child: _Child, error: BaseException | None) -> None:
        if self.strategy is Strategy.ONE_FOR_ONE:
            group = [child]
        elif self.strategy is Strategy.ONE_FOR_ALL:
            group = list(self._children)
        else:
            group = self._children[self._children.index(child) :]
        await self._revive(group, child, error)

    def _find(self, child_id: str) -> _Child:
        if not isinstance(child_id, str):
            raise TypeError(f"expected a child id (str), got {child_id!r}")
        for child in self._children:
            if child.spec.id == child_id:
                return child
        raise KeyError(f"no child with id {child_id!r}")

    async def _op_start_child(self, spec: ChildSpec) -> ActorRef[Any]:
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"start_child needs a ChildSpec, got {spec!r}")
        if any(child.spec.id == spec.id for child in self._children):
            raise ValueError(f"a child with id {spec.id!r} already exists")
        child = _Child(spec)
        self._children.append(child)
        try:
            return await self._start(child)
        except BaseException:
            self._children.remove(child)
            raise

    async def _op_terminate_child(self, child_id: str) -> None:
        await self._stop(self._find(child_id))

    async def _op_restart_child(self, child_id: str) -> ActorRef[Any]:
        child = self._find(child_id)
        if child.cell is not None:
            raise ValueError(f"child {child_id!r} is running; terminate it first")
        return await self._start(child)

    async def _op_delete_child(self, child_id: str) -> None:
        child = self._find(child_id)
        if child.cell is not None:
            raise ValueError(f"child {child_id!r} is running; terminate it first")
        self._children.remove(child)

    @staticmethod
    async def start_child(
        sup: ActorRef[Any], spec: ChildSpec, *, timeout: float | None = DEFAULT_ASK_TIMEOUT
    ) -> ActorRef[Any]:
        """Add ``spec`` to ``sup`` and start it; returns the child's ref.

        Raises:
            ValueError: a child with that id exists.
            ActorStartFailed: the child failed to start (the spec is not kept).
        """
        ref: ActorRef[Any] = await _call(sup, "start_child", spec, timeout=timeout)
        return ref

    @staticmethod
    async def terminate_child(sup: ActorRef[Any], child_id: str, *, timeout: float | None = None) -> None:
        """Stop child ``child_id`` (within its shutdown timeout); its spec is kept."""
        await _call(sup, "terminate_child", child_id, timeout=timeout)

    @staticmethod
    async def restart_child(
        sup: ActorRef[Any], child_id: str, *, timeout: float | None = DEFAULT_ASK_TIMEOUT
    ) -> ActorRef[Any]:
        """Start a terminated child again from its kept spec."""
        ref: ActorRef[Any] = await _call(sup, "restart_child", child_id, timeout=timeout)
        return ref

    @staticmethod
    async def delete_child(
        sup: ActorRef[Any], child_id: str, *, timeout: float | None = DEFAULT_ASK_TIMEOUT
    ) -> None:
        """Forget the spec of a terminated child."""
        await _call(sup, "delete_child", child_id, timeout=timeout)


class DynamicSupervisor(_SupervisorBase):
    """A supervisor of many children from one template, started and stopped at run time
    (OTP's simple_one_for_one): agent pools, connection handlers.

    Each failed child is restarted alone (one_for_one) under the shared intensity limit.

    Args:
        template: The spec every child is made from; ``start_child`` appends its arguments to
            ``template.args``.
        max_children: Refuse ``start_child`` beyond this many children (None: no limit).
    """

    def __init__(
        self,
        template: ChildSpec,
        *,
        max_children: int | None = None,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            max_restarts=max_restarts, max_seconds=max_seconds, backoff=backoff, clock=clock, rng=rng
        )
        if max_children is not None and max_children < 0:
            raise ValueError(f"max_children must be >= 0, got {max_children!r}")
        self.template = template
        self.max_children = max_children
        self._names: dict[_Child, str | None] = {}

    _keep_terminated = False  # pool members that stop for good are forgotten

    def _child_name(self, child: _Child) -> str | None:
        return self._names.get(child)

    def _forget(self, child: _Child) -> None:
        super()._forget(child)
        self._names.pop(child, None)

    async def _op_start_dynamic_child(self, args: tuple[Any, ...], name: str | None) -> ActorRef[Any]:
        if self.max_children is not None and len(self._children) >= self.max_children:
            raise ValueError(f"dynamic supervisor is at max_children={self.max_children}")
        spec = dataclasses.replace(self.template, args=self.template.args + args)
        child = _Child(spec)
        self._names[child] = name
        self._children.append(child)
        try:
            return await self._start(child)
        except BaseException:
            self._forget(child)
            raise

    async def _op_terminate_dynamic_child(self, ref: ActorRef[Any]) -> None:
        if not isinstance(ref, ActorRef):
            raise TypeError(f"terminate_child needs the child's ActorRef, got {ref!r}")
        child = self._by_cell.get(ref._cell)
        if child is None:
            raise KeyError(f"{ref.path} is not a child of this supervisor")
        await self._stop(child)
        self._forget(child)

    @staticmethod
    async def start_child(
        sup: ActorRef[Any], *args: Any, name: str | None = None, timeout: float | None = DEFAULT_ASK_TIMEOUT
    ) -> ActorRef[Any]:
        """Start a child from the template with ``args`` appended; returns its ref."""
        ref: ActorRef[Any] = await _call(sup, "start_dynamic_child", args, name, timeout=timeout)
        return ref

    @staticmethod
    async def terminate_child(
        sup: ActorRef[Any], child: ActorRef[Any], *, timeout: float | None = None
    ) -> None:
        """Stop ``child`` and forget it (it is not restarted)."""
        await _call(sup, "terminate_dynamic_child", child, timeout=timeout)
