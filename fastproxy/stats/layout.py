"""Where each stat lives: a flat index per stat name, derived from the config.

Every process (main and workers) derives the same layout from the same config, so the index of a
stat is agreed without passing tables around.  A component's stats are a contiguous block in its
table's order; the core adds an enum member to the block's base.
"""
from __future__ import annotations

from .names import (
    CIRCUIT_BREAKER_REMAINING_STATS,
    CLUSTER_STATS,
    GRPC_STATS,
    HTTP_STATS,
    LISTENER_STATS,
    LOCAL_RATE_LIMIT_STATS,
    SERVER_STATS,
)


def listener_stat_prefix(address: str, port: int) -> str:
    # Envoy names listener stats after the bound address: listener.127.0.0.1_10000.
    # and listener.[__1]_10000. for IPv6 (colons become underscores inside brackets).
    if ":" in address:
        return "listener.[%s]_%d." % (address.replace(":", "_"), port)
    return "listener.%s_%d." % (address, port)


class StatsLayout:
    def __init__(self, bootstrap, listener_ports=None):
        self.names: list[str] = []
        self.kinds: list[str] = []
        # per stat: Envoy creates it on first use, so the admin lists it only once non-zero
        self.lazy: list[bool] = []
        self.server_base = self._block("server.", SERVER_STATS)
        self.listener_bases: list[int] = []
        self.http_bases: list[int] = []
        http_by_prefix: dict[str, int] = {}
        for i, listener in enumerate(bootstrap.listeners):
            port = listener_ports[i] if listener_ports else listener.address.port
            self.listener_bases.append(
                self._block(listener_stat_prefix(listener.address.address, port), LISTENER_STATS))
            prefix = listener.hcm.stat_prefix
            # Connection managers sharing a stat_prefix share their stats, as in Envoy.
            if prefix not in http_by_prefix:
                http_by_prefix[prefix] = self._block("http.%s." % prefix, HTTP_STATS)
            self.http_bases.append(http_by_prefix[prefix])
        self.cluster_bases: dict[str, int] = {}
        for cluster in bootstrap.clusters:
            self.cluster_bases[cluster.name] = self._block("cluster.%s." % cluster.name, CLUSTER_STATS)
        self._limits_blocks(bootstrap)
        self._grpc_blocks(bootstrap)
        self.index = {name: i for i, name in enumerate(self.names)}

    def _limits_blocks(self, bootstrap):
        # Blocks the main process fills from the circuit breaker and rate limit shared blocks
        # (fastproxy.stats.limits): remaining_* per tracked priority, and each local rate limit
        # stat_prefix's counters.
        from fastproxy.config import local_ratelimit
        from fastproxy.config.circuit_breakers import PRIORITY_NAMES

        self.remaining_bases: dict[tuple[str, int], int] = {}
        for cluster in bootstrap.clusters:
            cb = getattr(cluster, "circuit_breakers", None)
            for prio, th in enumerate(cb.thresholds if cb is not None else ()):
                if th.track_remaining:
                    self.remaining_bases[(cluster.name, prio)] = self._block(
                        "cluster.%s.circuit_breakers.%s." % (cluster.name, PRIORITY_NAMES[prio]),
                        CIRCUIT_BREAKER_REMAINING_STATS)
        self.ratelimit_bases: list[int] = [
            self._block("%s.http_local_rate_limit." % prefix, LOCAL_RATE_LIMIT_STATS)
            for prefix in local_ratelimit.stat_prefixes(bootstrap)]

    def _grpc_blocks(self, bootstrap):
        # envoy.filters.http.grpc_stats: when a connection manager has it, every cluster gets
        # cluster.<name>.grpc.*, and cluster.<name>.grpc.<service>.<method>.* for each method of
        # the filters' individual_method_stats_allowlists (their union: grpc_methods, whose index
        # the listeners map their own allowlist to).  Methods whose names join to the same stat
        # name share a block, as they share the counters in Envoy.
        self.grpc_bases: dict[str, int] = {}
        self.grpc_method_bases: dict[str, list[int]] = {}
        self.grpc_methods: list[tuple[str, str]] = []
        filters = [lst.hcm.grpc_stats for lst in bootstrap.listeners
                   if getattr(lst.hcm, "grpc_stats", None) is not None]
        for gs in filters:
            for method in gs.allowlist or ():
                if method not in self.grpc_methods:
                    self.grpc_methods.append(method)
        self.grpc_method_index = {m: i for i, m in enumerate(self.grpc_methods)}
        if not filters:
            return
        for cluster in bootstrap.clusters:
            prefix = "cluster.%s.grpc." % cluster.name
            self.grpc_bases[cluster.name] = self._block(prefix, GRPC_STATS, lazy=True)
            by_name: dict[str, int] = {}
            bases = self.grpc_method_bases[cluster.name] = []
            for service, method in self.grpc_methods:
                name = "%s.%s" % (service, method)
                if name not in by_name:
                    by_name[name] = self._block("%s%s." % (prefix, name), GRPC_STATS, lazy=True)
                bases.append(by_name[name])

    def _block(self, prefix, table, lazy=False):
        base = len(self.names)
        for name, kind in table:
            self.names.append(prefix + name)
            self.kinds.append(kind)
            self.lazy.append(lazy)
        return base

    @property
    def size(self) -> int:
        return len(self.names)
