"""The NATS subjects of the AI Flock design, in one place."""

from __future__ import annotations

import re

__all__ = [
    "ANNOUNCE",
    "BATCH",
    "BROADCAST",
    "DISCOVER",
    "TASK_RESULT",
    "capability",
    "check_token",
    "events",
    "heartbeat",
    "inbox",
    "tasks",
]

ANNOUNCE = "agent.announce"
DISCOVER = "agent.discover"
"""Requests that every agent announce itself again (a flockrt addition)."""
TASK_RESULT = "task.result"
BROADCAST = "broadcast"
BATCH = "batch.messages"

# A subject token: no whitespace, no '.', and not a wildcard. Agent ids, task types and
# capability names all become tokens, so they are checked before use.
_TOKEN = re.compile(r"^[^\s.*>]+$")


def check_token(kind: str, value: str) -> str:
    """Return ``value`` if it can be one token of a subject, else raise ValueError."""
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise ValueError(f"{kind} {value!r} cannot be part of a NATS subject: no spaces, dots, '*' or '>'")
    return value


def tasks(task_type: str) -> str:
    """``tasks.<type>``: where tasks of one type are submitted."""
    return f"tasks.{check_token('task type', task_type)}"


def heartbeat(agent_id: str) -> str:
    """``agent.<id>.heartbeat``."""
    return f"agent.{check_token('agent id', agent_id)}.heartbeat"


def events(agent_id: str) -> str:
    """``agent.<id>.events``."""
    return f"agent.{check_token('agent id', agent_id)}.events"


def inbox(agent_id: str) -> str:
    """``agent.<id>.inbox``: direct messages to one agent."""
    return f"agent.{check_token('agent id', agent_id)}.inbox"


def capability(name: str) -> str:
    """``capability.<name>``: requests for a capability (request/reply)."""
    return f"capability.{check_token('capability', name)}"
