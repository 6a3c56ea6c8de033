"""Who may use the gateway: bearer tokens, Origin checks, the loopback rule and rate limits.

Tokens come in the ``Authorization: Bearer <token>`` header of the WebSocket upgrade and of
every Streamable HTTP request. A static token (``[mcp.auth] tokens``) grants every right. A
signed JWT (HS256 with ``jwt_secret``) carries ``agentId`` (the only agent the connection may
announce and act as), ``capabilities`` (the only capabilities it may announce) and ``exp``
(required). With neither configured, anyone who reaches the port may: that is why
:func:`check_bind` refuses a non-loopback address without authentication.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt

from flockrt.config import JWT_SECRET_MIN_BYTES, AuthConfig, McpConfig, exposure_problem
from flockrt.errors import Forbidden, GatewayConfigError, Unauthorized

__all__ = [
    "ANONYMOUS",
    "Authenticator",
    "Forbidden",
    "GatewayConfigError",
    "Principal",
    "TokenBucket",
    "Unauthorized",
    "allowed_hosts",
    "check_bind",
    "host_allowed",
    "origin_allowed",
]


@dataclass(frozen=True, slots=True)
class Principal:
    """What a connection's token lets it do.

    Attributes:
        agent_id: The one agent id it may announce and act as (None: any).
        capabilities: The capabilities it may announce (None: any).
        expires: Unix time after which the token is no longer accepted (None: never).
    """

    agent_id: str | None = None
    capabilities: frozenset[str] | None = None
    expires: float | None = None

    @property
    def expired(self) -> bool:
        """Whether the token has expired by now."""
        return self.expires is not None and time.time() >= self.expires

    def check_announce(self, agent_id: str, capabilities: list[str]) -> None:
        """Raise Forbidden unless the token allows announcing this agent with these capabilities."""
        if self.agent_id is not None and agent_id != self.agent_id:
            raise Forbidden(f"the token is for agent {self.agent_id!r}, not {agent_id!r}")
        if self.capabilities is not None:
            extra = sorted(set(capabilities) - self.capabilities)
            if extra:
                raise Forbidden(f"the token does not grant the capabilities {extra}")


ANONYMOUS = Principal()
"""Every right: a static token, or a gateway without authentication."""


class Authenticator:
    """Checks bearer tokens against ``[mcp.auth]``."""

    def __init__(self, config: AuthConfig) -> None:
        self._tokens = [token.encode() for token in config.tokens]
        self._secret = config.jwt_secret
        if self._secret and len(self._secret.encode()) < JWT_SECRET_MIN_BYTES:
            raise GatewayConfigError(
                f"[mcp.auth] jwt_secret is {len(self._secret.encode())} bytes; HS256 needs at least "
                f"{JWT_SECRET_MIN_BYTES} (RFC 7518 3.2)"
            )
        self.required = bool(self._tokens or self._secret)
        """Whether requests must carry a token at all."""

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` header value.

        Raises:
            Unauthorized: authentication is required and the header is missing, not a bearer
                token, or carries a token that is neither a configured one nor a valid JWT.
        """
        if not self.required:
            return ANONYMOUS
        if not authorization:
            raise Unauthorized("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        raw = token.strip().encode()
        # Constant-time comparison against each static token: no timing oracle on the prefix.
        if any(hmac.compare_digest(raw, known) for known in self._tokens):
            return ANONYMOUS
        if self._secret:
            return self._decode_jwt(token.strip())
        raise Unauthorized("unknown bearer token")

    def _decode_jwt(self, token: str) -> Principal:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._secret, algorithms=["HS256"], options={"require": ["exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        agent_id = claims.get("agentId", claims.get("sub"))
        capabilities = claims.get("capabilities")
        if agent_id is not None and not isinstance(agent_id, str):
            raise Unauthorized("invalid token: 'agentId' must be a string")
        if capabilities is not None and not (
            isinstance(capabilities, list) and all(isinstance(c, str) for c in capabilities)
        ):
            raise Unauthorized("invalid token: 'capabilities' must be a list of strings")
        return Principal(
            agent_id=agent_id,
            capabilities=frozenset(capabilities) if capabilities is not None else None,
            expires=float(claims["exp"]),
        )


def check_bind(config: McpConfig) -> None:
    """Refuse to serve beyond loopback without authentication, unless explicitly allowed
    (``load_config`` reports it too; this guards configs built in code).

    Raises:
        GatewayConfigError: ``host`` is not a loopback address, no token or JWT secret is
            configured, and ``allow_unauthenticated`` is false.
    """
    problem = exposure_problem(config)
    if problem is not None:
        raise GatewayConfigError(problem)


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _hostname(netloc: str) -> str | None:
    """The host name of a ``Host`` header value or URL netloc, without port or brackets
    (lowercase), or None when it cannot be parsed."""
    try:
        name = urlsplit(f"//{netloc.strip()}").hostname
    except ValueError:
        return None
    return name or None


def allowed_hosts(bind_host: str, allowed_origins: list[str]) -> frozenset[str]:
    """The host names the gateway may be reached as: the loopback names, the address it is bound
    to, and the hosts of ``allowed_origins`` (``*`` names none)."""
    names = set(_LOOPBACK_NAMES)
    bind = _hostname(f"[{bind_host}]" if ":" in bind_host else bind_host)
    if bind:
        names.add(bind)
    for origin in allowed_origins:
        name = urlsplit(origin).hostname if "//" in origin else _hostname(origin)
        if name:
            names.add(name)
    return frozenset(names)


def host_allowed(host: str | None, hosts: frozenset[str]) -> bool:
    """Whether a ``Host`` header names the gateway (any port). A page rebinding its own name to
    127.0.0.1 (DNS rebinding) sends its own name, which is not among ``hosts``."""
    name = _hostname(host) if host else None
    return name is not None and name in hosts


def origin_allowed(origin: str | None, hosts: frozenset[str], allowed: list[str]) -> bool:
    """Whether a browser at ``origin`` may use the gateway.

    No Origin header (a non-browser client) is allowed; so is an origin on one of the gateway's
    own host names (``hosts``: loopback, the bind address, any port) and any listed in
    ``allowed_origins`` (``*`` allows every origin). The Origin is never compared with the
    request's ``Host`` header, which a rebinding page controls as well.
    """
    if origin is None or "*" in allowed or origin.rstrip("/") in allowed:
        return True
    try:
        name = urlsplit(origin).hostname
    except ValueError:
        return False
    return name is not None and name in hosts


class TokenBucket:
    """A token bucket: ``rate`` tokens a second, up to ``burst`` banked.

    Args:
        rate: Refill per second (<= 0 disables the limit).
        burst: The most tokens the bucket holds.
        clock: Monotonic seconds (injected by tests).
    """

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self._clock = clock
        self._tokens = float(self.burst)
        self._last = clock()

    def take(self) -> bool:
        """Take one token; False when the bucket is empty (the request is over the limit)."""
        if self.rate <= 0:
            return True
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
