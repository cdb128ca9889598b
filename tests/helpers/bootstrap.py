"""Envoy v3 bootstrap configs for tests, valid for both real Envoy and fastproxy."""
from __future__ import annotations

import copy

__all__ = ["make_bootstrap", "route_to", "ROUTER_FILTER", "HCM_TYPE"]

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
ROUTER_FILTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}


def _address(host: str, port: int) -> dict:
    return {"socket_address": {"address": host, "port_value": int(port)}}


def route_to(cluster: str, prefix: str = "/", **route_extra) -> dict:
    """A route entry: prefix match -> cluster (extra keys go into the `route` action)."""
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster, **route_extra}}


def _deep_merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def make_bootstrap(
    listener_port: int,
    admin_port: int,
    clusters: dict | None = None,
    virtual_hosts: list | None = None,
    hcm_extra: dict | None = None,
    *,
    http_filters: list | None = None,
    cluster_extra: dict | None = None,
    listener_address: str = "127.0.0.1",
    admin_address: str = "127.0.0.1",
    bootstrap_extra: dict | None = None,
) -> dict:
    """Build a v3 Bootstrap dict with one HTTP listener.

    clusters:       {name: [(host, port), ...]} -> STATIC clusters with a load_assignment and
                    connect_timeout 1s. Default: none.
    virtual_hosts:  the route_config's virtual_hosts. Default: one virtual host "local" for
                    domains ["*"] routing prefix "/" to the first cluster.
    hcm_extra:      merged (deeply) into the http_connection_manager's typed_config.
    http_filters:   filters placed before the router filter (which always comes last).
    cluster_extra:  {name: {...}} merged into that cluster (lb_policy, circuit_breakers...).
    bootstrap_extra: merged into the top-level bootstrap.
    """
    clusters = clusters or {}
    if virtual_hosts is None:
        routes = [route_to(next(iter(clusters)))] if clusters else []
        virtual_hosts = [{"name": "local", "domains": ["*"], "routes": routes}]

    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "ingress_http",
        "codec_type": "AUTO",
        "route_config": {"name": "local_route", "virtual_hosts": copy.deepcopy(virtual_hosts)},
        "http_filters": [*copy.deepcopy(http_filters or []), copy.deepcopy(ROUTER_FILTER)],
    }
    if hcm_extra:
        _deep_merge(hcm, hcm_extra)

    cluster_list = []
    for name, endpoints in clusters.items():
        cluster = {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "lb_policy": "ROUND_ROBIN",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {"lb_endpoints": [{"endpoint": {"address": _address(h, p)}} for h, p in endpoints]}
                ],
            },
        }
        if cluster_extra and name in cluster_extra:
            _deep_merge(cluster, cluster_extra[name])
        cluster_list.append(cluster)

    bootstrap = {
        "admin": {"address": _address(admin_address, admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "listener_0",
                    "address": _address(listener_address, listener_port),
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                            ]
                        }
                    ],
                }
            ],
            "clusters": cluster_list,
        },
    }
    if bootstrap_extra:
        _deep_merge(bootstrap, bootstrap_extra)
    return bootstrap
