"""The A2A (Agent2Agent) edge: the flock as an A2A server, and outside A2A agents in the flock.

Through the official ``a2a-sdk`` (the optional extra ``flockrt[a2a]``); the only room that
imports it. What is here is the mapping between the two worlds:

- :mod:`flockrt.a2a.card`: the Agent Card, whose skills are the flock's capabilities;
- :mod:`flockrt.a2a.mapping`: messages to capability requests or tasks, results to artifacts;
- :mod:`flockrt.a2a.executor`: the SDK's ``AgentExecutor`` that runs them in the flock;
- :mod:`flockrt.a2a.server`: an aiohttp adapter in front of the SDK's request handler (JSON-RPC,
  with SSE for streaming), with the MCP gateway's auth and limits;
- :mod:`flockrt.a2a.remote`: ``[[a2a.remote]]`` agents as supervised proxy agents;
- :mod:`flockrt.a2a.edge`: all of it started and stopped as one part of a running flock.

Importing this package without the SDK installed raises :class:`~flockrt.errors.ConfigError`
saying how to install it.
"""

from __future__ import annotations

from flockrt.errors import ConfigError

try:
    import a2a.types  # noqa: F401  (the check: is the SDK there)
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ConfigError(
        f"[a2a] needs the a2a-sdk, which is not installed ({exc}): pip install 'flockrt[a2a]'"
    ) from None

__all__: list[str] = []
