"""Load balancer settings of a cluster and the hash policies of a route, compiled.

`lb_options(cl, cluster, path, errors)` turns a Cluster's lb_policy companions
(ring_hash_lb_config, maglev_lb_config, least_request_lb_config, round_robin_lb_config and their
slow_start_config, common_lb_config.healthy_panic_threshold and locality_weighted_lb_config,
load_assignment.policy.overprovisioning_factor) into the keyword arguments of the core's
`LoadBalancer`; `hash_policies(ra, path, errors)` turns a RouteAction's hash_policy list into
`model.HashPolicy` items. Values are checked as Envoy checks them when it builds the cluster;
fields not listed in `support.SUPPORTED` never get here.
"""
from __future__ import annotations

import dataclasses
import math

from . import model
from .common import enum_name, wrapped
from .errors import Errors, join

HASHING_POLICIES = {"RING_HASH", "MAGLEV"}
LB_POLICIES = {"ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"} | HASHING_POLICIES

MAX_RING_SIZE = 8 * 1024 * 1024  # Envoy's default maximum_ring_size (and the largest allowed)
DEFAULT_MIN_RING_SIZE = 1024
DEFAULT_TABLE_SIZE = 65537

# The lb_config oneof member each policy reads; a member set for another policy is ignored by
# Envoy (it only warns), and so is it here.
_POLICY_CONFIG = {
    "RING_HASH": "ring_hash_lb_config",
    "MAGLEV": "maglev_lb_config",
    "LEAST_REQUEST": "least_request_lb_config",
    "ROUND_ROBIN": "round_robin_lb_config",
}


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    d = 3
    while d * d <= n:
        if n % d == 0:
            return False
        d += 2
    return True


def host_key(address: model.SocketAddress) -> str:
    """The key a host hashes as: its address as Envoy prints it ("10.0.0.1:80", "[::1]:80")."""
    if address.is_ipv6:
        return f"[{address.address}]:{address.port}"
    return f"{address.address}:{address.port}"


def localities(endpoints: list[model.Endpoint]) -> tuple[list[int], list[int]]:
    """Locality weighted balancing: (per endpoint, its locality index; per locality, its weight).

    A locality is a (region, zone, sub_zone) within one priority: LocalityLbEndpoints entries
    naming the same locality at the same priority are one locality, as in Envoy, whose weight is
    the last one set (0 when none is: it then gets no traffic). Localities are numbered in
    (priority, region, zone, sub_zone) order, the order Envoy keeps them in."""
    keys = sorted({(e.priority,) + tuple(e.locality) for e in endpoints})
    index = {k: i for i, k in enumerate(keys)}
    weights = [0] * len(keys)
    ids = []
    for e in endpoints:
        i = index[(e.priority,) + tuple(e.locality)]
        ids.append(i)
        if e.locality_weight:
            weights[i] = e.locality_weight
    return ids, weights


def lb_options(cl, cluster: model.Cluster, path: str, errors: Errors) -> dict:
    """LoadBalancer keyword arguments for the compiled `cluster` (its endpoints already filled)."""
    opts: dict = {}
    policy = cluster.lb_policy
    common = cl.common_lb_config
    if common.HasField("healthy_panic_threshold"):
        # Envoy rounds the percentage to an integer (PROTOBUF_PERCENT_TO_ROUNDED_INTEGER).
        opts["healthy_panic_threshold"] = float(math.floor(common.healthy_panic_threshold.value
                                                           + 0.5))
    if common.HasField("locality_weighted_lb_config"):
        if policy in HASHING_POLICIES:
            # Envoy scales the hashing tables' host weights by locality weight; not done here.
            errors.add(join(join(path, "common_lb_config"), "locality_weighted_lb_config"),
                       f"not supported with lb_policy {policy}")
        else:
            ids, weights = localities(cluster.endpoints)
            cluster.endpoints[:] = [dataclasses.replace(e, locality_index=i)
                                    for e, i in zip(cluster.endpoints, ids)]
            opts["locality_weights"] = weights
            if cluster.type == "STATIC":
                # STATIC hosts are the endpoints, in order; DNS clusters pass the localities of
                # their resolved hosts (Endpoint.locality_index) when they build the balancer.
                opts["localities"] = ids
    policy_cfg = cl.load_assignment.policy
    if cl.load_assignment.HasField("policy") and policy_cfg.HasField("overprovisioning_factor"):
        opts["overprovisioning_factor"] = policy_cfg.overprovisioning_factor.value

    member = cl.WhichOneof("lb_config")
    if member is None or _POLICY_CONFIG.get(policy) != member:
        member = None
    cfg = getattr(cl, member) if member else None
    if policy == "RING_HASH":
        lo = wrapped(cfg, "minimum_ring_size", DEFAULT_MIN_RING_SIZE) if cfg else DEFAULT_MIN_RING_SIZE
        hi = wrapped(cfg, "maximum_ring_size", MAX_RING_SIZE) if cfg else MAX_RING_SIZE
        if lo > hi:
            errors.add(join(path, "ring_hash_lb_config"),
                       f"ring hash: minimum_ring_size ({lo}) > maximum_ring_size ({hi})")
        opts["min_ring_size"] = lo
        opts["max_ring_size"] = hi
        opts["hash_function"] = enum_name(cfg, "hash_function") if cfg else "XX_HASH"
    elif policy == "MAGLEV":
        size = wrapped(cfg, "table_size", DEFAULT_TABLE_SIZE) if cfg else DEFAULT_TABLE_SIZE
        if not is_prime(size):
            errors.add(join(join(path, "maglev_lb_config"), "table_size"),
                       "The table size of maglev must be prime number")
        opts["table_size"] = size
    elif policy == "LEAST_REQUEST" and cfg is not None:
        if cfg.HasField("choice_count"):
            opts["choice_count"] = cfg.choice_count.value
        if cfg.HasField("active_request_bias"):
            # No runtime layer: the default value is the value.
            bias = cfg.active_request_bias.default_value
            if not bias >= 0.0:
                errors.add(join(join(path, "least_request_lb_config"), "active_request_bias"),
                           "must be a non-negative number")
            opts["active_request_bias"] = bias
            opts["bias_forces_weighted"] = True
    if policy in ("ROUND_ROBIN", "LEAST_REQUEST") and cfg is not None \
            and cfg.HasField("slow_start_config"):
        opts.update(slow_start(cfg.slow_start_config, join(join(path, member), "slow_start_config"),
                               errors))
    if policy in HASHING_POLICIES and cluster.type == "STATIC":
        # The hosts of a STATIC cluster are its endpoints, in order; DNS clusters hash their
        # resolved addresses, which the connection layer passes when it builds the balancer.
        opts["host_keys"] = [host_key(e.address) for e in cluster.endpoints]
    return opts


def slow_start(ss, path: str, errors: Errors) -> dict:
    """SlowStartConfig -> LoadBalancer slow start arguments ({} when the window is 0: Envoy then
    has no slow start)."""
    window = ss.slow_start_window
    if window.seconds < 0 or window.nanos < 0:
        errors.add(join(path, "slow_start_window"), "must be a non-negative duration")
        return {}
    # Envoy keeps whole milliseconds of the window.
    window_ms = window.seconds * 1000 + window.nanos // 1_000_000
    if window_ms == 0:
        return {}
    opts: dict = {"slow_start_window": window_ms / 1000.0}
    if ss.HasField("aggression"):
        # No runtime layer: the default value is the value. Envoy takes a value <= 0 (or NaN)
        # as 1.0 when it applies it, and so does the balancer.
        opts["slow_start_aggression"] = ss.aggression.default_value
    if ss.HasField("min_weight_percent"):
        # Envoy's Percent is within 0..100 (checked with the message's other constraints).
        opts["slow_start_min_weight_percent"] = min(max(ss.min_weight_percent.value, 0.0), 100.0)
    return opts


def hash_policies(ra, path: str, errors: Errors) -> list[model.HashPolicy]:
    """RouteAction.hash_policy -> model.HashPolicy list, in order (Envoy's HashPolicyImpl)."""
    out: list[model.HashPolicy] = []
    for i, hp in enumerate(ra.hash_policy):
        hpath = f"{join(path, 'hash_policy')}[{i}]"
        kind = hp.WhichOneof("policy_specifier")
        terminal = hp.terminal
        if kind == "header":
            out.append(model.HashPolicy("header", hp.header.header_name.lower(), terminal))
        elif kind == "cookie":
            c = hp.cookie
            ttl = c.ttl.seconds if c.HasField("ttl") else None
            attrs = tuple((a.name, a.value) for a in c.attributes)
            out.append(model.HashPolicy("cookie", c.name, terminal, ttl, c.path, attrs))
        elif kind == "query_parameter":
            out.append(model.HashPolicy("query_parameter", hp.query_parameter.name, terminal))
        elif kind == "connection_properties":
            # Envoy adds no policy when source_ip is false.
            if hp.connection_properties.source_ip:
                out.append(model.HashPolicy("source_ip", "", terminal))
        elif kind is not None:
            errors.add(join(hpath, kind), "not supported")
        else:
            errors.add(hpath, "policy_specifier: value is required")
    return out
