"""A cluster's circuit_breakers (envoy.config.cluster.v3.CircuitBreakers) -> the compiled model.

Envoy applies its default thresholds to every cluster, configured or not (1024 connections, 1024
pending requests, 1024 requests, 3 retries, per priority), so every compiled cluster gets a
`CircuitBreakers` with both priorities filled in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .common import enum_name, wrapped
from .errors import Errors, join

DEFAULT = 0  # envoy.config.core.v3.RoutingPriority
HIGH = 1
PRIORITY_NAMES = ("default", "high")  # as in the stats: circuit_breakers.<name>.*

# Envoy's default budget when retry_budget is set without values.
DEFAULT_BUDGET_PERCENT = 20.0
DEFAULT_MIN_RETRY_CONCURRENCY = 3


@dataclass
class Thresholds:
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3
    # retry_budget: when set, it replaces max_retries (Envoy ignores max_retries then)
    budget_percent: Optional[float] = None
    min_retry_concurrency: int = DEFAULT_MIN_RETRY_CONCURRENCY
    track_remaining: bool = False


@dataclass
class CircuitBreakers:
    # indexed by priority (DEFAULT, HIGH)
    thresholds: list[Thresholds] = field(default_factory=lambda: [Thresholds(), Thresholds()])
    # the cluster's place in the shared-memory block of breaker counters (its index among the
    # bootstrap's clusters; see fastproxy.stats.limits)
    slot: int = -1


def circuit_breakers(cl, path: str, errors: Errors) -> CircuitBreakers:
    out = CircuitBreakers()
    if not cl.HasField("circuit_breakers"):
        return out
    cb = cl.circuit_breakers
    cpath = join(path, "circuit_breakers")
    if len(cb.per_host_thresholds):
        errors.add(join(cpath, "per_host_thresholds"), "not supported")
    for i, th in enumerate(cb.thresholds):
        tpath = f"{join(cpath, 'thresholds')}[{i}]"
        prio = enum_name(th, "priority")
        index = HIGH if prio == "HIGH" else DEFAULT
        if th.HasField("max_connection_pools"):
            errors.add(join(tpath, "max_connection_pools"), "not supported")
        t = Thresholds(
            max_connections=wrapped(th, "max_connections", 1024),
            max_pending_requests=wrapped(th, "max_pending_requests", 1024),
            max_requests=wrapped(th, "max_requests", 1024),
            max_retries=wrapped(th, "max_retries", 3),
            track_remaining=th.track_remaining,
        )
        if th.HasField("retry_budget"):
            rb = th.retry_budget
            t.budget_percent = (rb.budget_percent.value if rb.HasField("budget_percent")
                                else DEFAULT_BUDGET_PERCENT)
            t.min_retry_concurrency = wrapped(rb, "min_retry_concurrency",
                                              DEFAULT_MIN_RETRY_CONCURRENCY)
        out.thresholds[index] = t  # a later entry for the same priority wins, as in Envoy
    return out


def assign_slots(bootstrap) -> None:
    """Number the clusters' breaker blocks in bootstrap order (main and workers agree)."""
    for i, cluster in enumerate(bootstrap.clusters):
        cb = getattr(cluster, "circuit_breakers", None)
        if cb is not None:
            cb.slot = i
