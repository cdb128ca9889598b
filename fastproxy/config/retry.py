"""Retry and hedge policies (route.v3.RetryPolicy, HedgePolicy) into model.RetryPolicy.

A route's retry_policy replaces its virtual host's entirely, as in Envoy; the virtual host's is
copied onto the routes that have none, so the core looks in one place.
"""
from __future__ import annotations

import dataclasses

from . import model
from .common import duration_ms, wrapped
from .errors import Errors, join
from .headers import header_matcher

# gRPC retry_on conditions: the grpc-status of a trailers-only answer
GRPC_RETRY_ON = {
    "cancelled": 1, "deadline-exceeded": 4, "resource-exhausted": 8, "internal": 13,
    "unavailable": 14,
}
# retry_on conditions this release implements
RETRY_ON = {
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "retriable-4xx",
    "refused-stream", "retriable-status-codes", "retriable-headers",
} | set(GRPC_RETRY_ON)
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"


def retry_policy(rp, path: str, errors: Errors) -> model.RetryPolicy:
    conditions = frozenset(c.strip() for c in rp.retry_on.split(",") if c.strip())
    for c in sorted(conditions - RETRY_ON):
        errors.add(join(path, "retry_on"), f"retry condition '{c}' not supported")
    out = model.RetryPolicy(retry_on=conditions,
                            num_retries=wrapped(rp, "num_retries", 1),
                            host_selection_retry_max_attempts=rp.host_selection_retry_max_attempts or 1,
                            retriable_status_codes=tuple(rp.retriable_status_codes),
                            grpc_statuses=frozenset(GRPC_RETRY_ON[c] for c in conditions
                                                    if c in GRPC_RETRY_ON))
    if rp.HasField("per_try_timeout"):
        out.per_try_timeout_ms = duration_ms(rp.per_try_timeout)
    if rp.HasField("per_try_idle_timeout"):
        out.per_try_idle_timeout_ms = duration_ms(rp.per_try_idle_timeout)
    if rp.HasField("retry_back_off"):
        bo = rp.retry_back_off
        out.base_interval_ms = duration_ms(bo.base_interval)
        if out.base_interval_ms <= 0:
            errors.add(join(path, "retry_back_off.base_interval"), "value must be greater than 0s")
        out.max_interval_ms = (duration_ms(bo.max_interval) if bo.HasField("max_interval")
                               else 10 * out.base_interval_ms)
        if out.max_interval_ms < out.base_interval_ms:
            errors.add(join(path, "retry_back_off.max_interval"),
                       "max_interval must be greater than or equal to the base_interval")
    for i, pred in enumerate(rp.retry_host_predicate):
        if pred.name != PREVIOUS_HOSTS:
            errors.add(f"{join(path, 'retry_host_predicate')}[{i}].name",
                       f"retry host predicate '{pred.name}' not supported")
        out.previous_hosts = True
    out.retriable_headers = [header_matcher(h, f"{join(path, 'retriable_headers')}[{i}]", errors)
                             for i, h in enumerate(rp.retriable_headers)]
    return out


def apply_virtual_host_policies(vh, routes: list, path: str, errors: Errors) -> None:
    """Give routes without a retry policy their virtual host's, and the virtual host's hedge
    policy (hedge_on_per_try_timeout) to every route's retry policy."""
    hedge = vh.HasField("hedge_policy") and vh.hedge_policy.hedge_on_per_try_timeout
    vh_policy = retry_policy(vh.retry_policy, join(path, "retry_policy"), errors) \
        if vh.HasField("retry_policy") else None
    for r in routes:
        if r.route is None:
            continue
        if r.route.retry_policy is None and vh_policy is not None:
            r.route.retry_policy = dataclasses.replace(vh_policy)
        if hedge and r.route.retry_policy is not None:
            r.route.retry_policy.hedge_on_per_try_timeout = True
