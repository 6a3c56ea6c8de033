"""The tool-failure kinds: what the gateway reports a flock error as, and what the client
raises for it, are one mapping (flockrt.wire.failures), read in both directions."""

from __future__ import annotations

from typing import Any

import pytest

from flockrt.errors import (
    ActorFailed,
    AskTimeout,
    FlockError,
    NoCapableAgent,
    NotAuthorized,
    ToolError,
    UnknownAgent,
    WorkFailed,
    WorkTimeout,
)
from flockrt.wire.failures import FailureKind, failure_error


class _Ref:
    path = "/user/a-1"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (NoCapableAgent("capability", "echo"), "no_capable_agent"),
        (WorkTimeout("capability", "echo", 1.0), "timeout"),
        (AskTimeout(_Ref(), 1.0), "timeout"),  # type: ignore[arg-type]
        (UnknownAgent("a-1"), "unknown_agent"),
        (ActorFailed(_Ref(), UnknownAgent("a-2")), "unknown_agent"),  # type: ignore[arg-type]
        (ActorFailed(_Ref(), ValueError("bug")), "failed"),  # type: ignore[arg-type]
        (WorkFailed("a-1", "capability", "echo", ValueError("bug")), "failed"),
    ],
)
def test_the_gateway_reports_each_flock_error_as_its_kind(error: FlockError, kind: str) -> None:
    assert FailureKind.of(error) == kind
    assert FailureKind.of(error).value == kind  # what goes on the wire: the plain string


@pytest.mark.parametrize(
    ("kind", "tool", "arguments", "expected", "words"),
    [
        ("no_capable_agent", "request_capability", {"capability": "echo"}, NoCapableAgent, "'echo'"),
        ("no_capable_agent", "submit_task", {"type": "analysis"}, NoCapableAgent, "'analysis'"),
        ("timeout", "request_capability", {"capability": "echo"}, WorkTimeout, "capability 'echo'"),
        ("timeout", "send_message", {"to": "a-1"}, WorkTimeout, "query 'a-1'"),
        ("timeout", "submit_task", {"type": "analysis"}, WorkTimeout, "task 'analysis'"),
        ("unknown_agent", "get_agent_info", {"agent_id": "a-9"}, UnknownAgent, "'a-9'"),
        ("unknown_agent", "send_message", {"to": "a-8"}, UnknownAgent, "'a-8'"),
        ("forbidden", "send_response", {}, NotAuthorized, "send_response: nope"),
        ("failed", "request_capability", {"capability": "echo"}, WorkFailed, "agent a-1"),
        ("failed", "announce_agent", {"id": "a-1"}, ToolError, "announce_agent: failed: nope"),
        ("from_a_newer_gateway", "broadcast", {}, ToolError, "broadcast: from_a_newer_gateway"),
    ],
)
def test_the_client_raises_the_error_a_kind_stands_for(
    kind: str, tool: str, arguments: dict[str, Any], expected: type[FlockError], words: str
) -> None:
    error = failure_error(kind, tool, arguments, "nope", timeout=1.0, agent_id="a-1")
    assert type(error) is expected
    assert words in str(error)


def test_every_kind_comes_back_as_the_error_it_was_made_from() -> None:
    arguments = {"capability": "echo", "type": "analysis", "to": "a-1"}
    for error in (
        NoCapableAgent("capability", "echo"),
        WorkTimeout("capability", "echo", 1.0),
        UnknownAgent("a-1"),
    ):
        again = failure_error(FailureKind.of(error), "request_capability", arguments, str(error), timeout=1.0)
        assert type(again) is type(error) and str(again) == str(error)
