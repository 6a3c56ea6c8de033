"""Prometheus metrics (prometheus-client), all named ``flockrt_*``, in flockrt's own registry.

The kernel imports nothing from here: it keeps plain counters (``ActorSystem.stats()``), which
collectors read at scrape time, so an unscraped process pays nothing for them. The edges (the
bus, the gateway, the Claude agent) observe their own latency histograms and counters here.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["REGISTRY", "exposition"]

REGISTRY = CollectorRegistry(auto_describe=True)
"""Every flockrt metric; ``/metrics`` serves this registry (not prometheus-client's global one)."""


def exposition() -> tuple[bytes, str]:
    """The registry in the Prometheus text format, and its content type, for ``/metrics``."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
