"""The decorators that declare an agent's skills, and how an agent class collects them.

``@capability("text-analysis")`` on an ``async def`` method makes it the agent's handler of
that capability; ``@handles_task("analysis")`` makes it the handler of tasks of that type. A
handler whose body never awaits is found here too (:func:`never_waits`): the flock runs those
inline, without a Task.
"""

from __future__ import annotations

import dis
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from flockrt.wire.subjects import check_token

__all__ = ["CAPABILITY", "TASK_TYPE", "capability", "handles_task", "never_waits"]

F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])

ProgressCallback = Callable[[float, float | None, str | None], None]
"""``progress(done, total, message)``: how far a piece of work has come (MCP's progress
notification: ``done`` only grows; ``total`` is None when unknown). Called on the event loop;
it must not block and should not raise (an exception is logged and ignored)."""

CAPABILITY = "__flockrt_capability__"
TASK_TYPE = "__flockrt_task_type__"


def capability(name: str) -> Callable[[F], F]:
    """Mark an ``async def`` method as the agent's handler of capability ``name``.

    A request's parameters are passed as keyword arguments when they are a JSON object, else
    as the one positional argument; the return value is the answer. They are checked against
    the method's signature and type hints first (:mod:`flockrt.agents.params`): a request that
    does not fit fails with :class:`~flockrt.errors.InvalidParameters` and the method never runs.
    """
    return _skill_marker("capability", name, CAPABILITY)


def handles_task(task_type: str) -> Callable[[F], F]:
    """Mark an ``async def`` method as the agent's handler of tasks of ``task_type``.

    The method receives the :class:`~flockrt.wire.schema.TaskMessage`; its return value becomes
    the ``result`` of the TaskResult.
    """
    return _skill_marker("task type", task_type, TASK_TYPE)


def _skill_marker(kind: str, key: str, attribute: str) -> Callable[[F], F]:
    """The decorator behind capability/handles_task: checks the name, tags the method."""
    check_token(kind, key)
    decorator = "capability" if attribute == CAPABILITY else "handles_task"

    def mark(method: F) -> F:
        if not inspect.iscoroutinefunction(method):
            raise TypeError(f"@{decorator}({key!r}) needs an async def method, got {method!r}")
        setattr(method, attribute, key)
        return method

    return mark


_WAIT_OPCODES = frozenset(
    dis.opmap[name]
    for name in ("GET_AWAITABLE", "GET_AITER", "GET_ANEXT", "BEFORE_ASYNC_WITH", "YIELD_VALUE")
    if name in dis.opmap
)


def never_waits(method: Any) -> bool:
    """Whether ``method`` is an ``async def`` with no await, ``async for`` or ``async with``
    in its body: its coroutine then finishes in its first step, whatever it calls."""
    code = getattr(method, "__code__", None)
    if code is None or not inspect.iscoroutinefunction(method):
        return False
    return not any(instruction.opcode in _WAIT_OPCODES for instruction in dis.get_instructions(code))
