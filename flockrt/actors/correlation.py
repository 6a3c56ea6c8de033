"""Context variables that say which request and which agent the running code works for.

Logs read them (``flockrt.logs``) so that every record carries the correlation id of the task,
capability request, query or MCP call it belongs to, and the agent it ran in. They travel:

- from a NATS message's ``Correlation-Id`` header into the work it starts, and from there into
  what that work sends on (capability requests, direct messages, results);
- through the flock's dispatcher: the id current when work is submitted is stored on the
  :class:`~flockrt.Work` and set again where the agent runs it (its runner Task, or for a
  handler that never waits, a context the agent keeps for that). Handlers run in the agent's
  contexts, not the submitter's: other context variables the submitter set are not carried;
- into a query's handler, from the DirectMessage's ``correlation_id``.

Actor mailboxes do not carry them (a context var set by a sender would otherwise leak into
whatever the receiving actor handles next); agents set them per piece of work instead.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["correlation", "correlation_id", "current_agent", "new_correlation_id", "unique_id"]

correlation_id: ContextVar[str | None] = ContextVar("flockrt_correlation_id", default=None)
"""The correlation id of the request being worked on, or None."""

current_agent: ContextVar[str | None] = ContextVar("flockrt_current_agent", default=None)
"""The id of the agent whose code is running, or None (per-agent log files use it)."""


class _Ids:
    """64 random bits drawn once per process (again in a forked child) and a counter."""

    prefix = os.urandom(8).hex()
    counter = itertools.count()

    @classmethod
    def renew(cls) -> None:
        cls.prefix = os.urandom(8).hex()
        cls.counter = itertools.count()


if hasattr(os, "register_at_fork"):  # (not on Windows, which has no fork)
    os.register_at_fork(after_in_child=_Ids.renew)


def unique_id() -> str:
    """A fresh id, 32 hex digits like ``uuid.uuid4().hex``, as unique for naming requests and
    messages: a random prefix per process and a counter. Not a secret (the counter shows how
    many came before); at an eighth of uuid4's cost, which reads the system's random source
    for every id."""
    return f"{_Ids.prefix}{next(_Ids.counter):016x}"


def new_correlation_id() -> str:
    """A fresh id: the current one if there is one (so it travels on), else a new one."""
    return correlation_id.get() or unique_id()


@contextlib.contextmanager
def correlation(value: str | None = None) -> Iterator[str]:
    """Run the block with ``value`` (default: a fresh one, see :func:`unique_id`) as the correlation id.

    For edges that start a request: an MCP call, a CLI command, a test.

    Example::

        with correlation("req-42"):
            await flock.request_capability("echo", "hi")  # its logs and headers carry req-42
    """
    value = value or unique_id()
    token = correlation_id.set(value)
    try:
        yield value
    finally:
        correlation_id.reset(token)
