"""Load balancer settings and route hash policies in the config compiler
(fastproxy.config.lb_config): what reaches the core's LoadBalancer and RouteTable, and what is
refused with its path."""
from __future__ import annotations

import copy

import pytest

from fastproxy.config import ConfigError, load_dict, model

from test_config import BASE, VH_PATH

CL = "static_resources.clusters[0]"


def cluster(**extra):
    d = copy.deepcopy(BASE)
    c = d["static_resources"]["clusters"][0]
    c["load_assignment"]["endpoints"][0]["lb_endpoints"].append(
        {"endpoint": {"address": {"socket_address": {"address": "::1", "port_value": 81}}},
         "load_balancing_weight": 3})
    c.update(extra)
    return d


def compiled_cluster(**extra) -> model.Cluster:
    return load_dict(cluster(**extra)).clusters[0]


def errors_of(d) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_dict(d)
    return info.value.errors


def test_defaults_pass_nothing():
    assert compiled_cluster().lb_options == {}


def test_ring_hash():
    c = compiled_cluster(lb_policy="RING_HASH", ring_hash_lb_config={
        "minimum_ring_size": 16, "maximum_ring_size": 4096, "hash_function": "MURMUR_HASH_2"})
    assert c.lb_policy == "RING_HASH"
    assert c.lb_options == {"min_ring_size": 16, "max_ring_size": 4096,
                            "hash_function": "MURMUR_HASH_2",
                            "host_keys": ["127.0.0.1:8080", "[::1]:81"]}
    assert compiled_cluster(lb_policy="RING_HASH").lb_options["min_ring_size"] == 1024


def test_maglev():
    c = compiled_cluster(lb_policy="MAGLEV", maglev_lb_config={"table_size": 1021})
    assert c.lb_options == {"table_size": 1021, "host_keys": ["127.0.0.1:8080", "[::1]:81"]}
    assert compiled_cluster(lb_policy="MAGLEV").lb_options["table_size"] == 65537


def test_compiled_options_build_a_balancer():
    from fastproxy._core.lb import LoadBalancer
    c = compiled_cluster(lb_policy="RING_HASH", common_lb_config={
        "healthy_panic_threshold": {"value": 30.4}})
    lb = LoadBalancer(c.lb_policy, [e.weight for e in c.endpoints],
                      [e.priority for e in c.endpoints], 1, **c.lb_options)
    assert lb.uses_hash and lb.num_hosts == 2


def test_least_request_and_common():
    c = compiled_cluster(
        lb_policy="LEAST_REQUEST",
        least_request_lb_config={"choice_count": 3,
                                 "active_request_bias": {"default_value": 1.5,
                                                         "runtime_key": "k"}},
        common_lb_config={"healthy_panic_threshold": {"value": 30.4}},
    )
    assert c.lb_options == {"choice_count": 3, "active_request_bias": 1.5,
                            "bias_forces_weighted": True, "healthy_panic_threshold": 30.0}


def test_overprovisioning_factor():
    d = cluster()
    d["static_resources"]["clusters"][0]["load_assignment"]["policy"] = {
        "overprovisioning_factor": 200}
    assert load_dict(d).clusters[0].lb_options == {"overprovisioning_factor": 200}


def test_round_robin_config_without_slow_start():
    assert compiled_cluster(round_robin_lb_config={}).lb_options == {}
    # A zero window is no slow start, as in Envoy.
    assert compiled_cluster(round_robin_lb_config={
        "slow_start_config": {"slow_start_window": "0s"}}).lb_options == {}


def test_slow_start_config():
    c = compiled_cluster(round_robin_lb_config={"slow_start_config": {
        "slow_start_window": "5.5s", "aggression": {"default_value": 2.0, "runtime_key": "a"},
        "min_weight_percent": {"value": 25}}})
    assert c.lb_options == {"slow_start_window": 5.5, "slow_start_aggression": 2.0,
                            "slow_start_min_weight_percent": 25.0}
    c = compiled_cluster(lb_policy="LEAST_REQUEST", least_request_lb_config={
        "choice_count": 3, "slow_start_config": {"slow_start_window": "30s"}})
    assert c.lb_options == {"choice_count": 3, "slow_start_window": 30.0}
    from fastproxy._core.lb import LoadBalancer
    lb = LoadBalancer(c.lb_policy, [e.weight for e in c.endpoints],
                      [e.priority for e in c.endpoints], 1, **c.lb_options)
    assert lb.in_slow_start


def test_slow_start_config_of_another_policy_is_ignored():
    c = compiled_cluster(lb_policy="RANDOM", round_robin_lb_config={
        "slow_start_config": {"slow_start_window": "5s"}})
    assert c.lb_options == {}


@pytest.mark.parametrize("extra,error", [
    ({"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 65536}},
     CL + ".maglev_lb_config.table_size: The table size of maglev must be prime number"),
    ({"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": 100,
                                                        "maximum_ring_size": 10}},
     CL + ".ring_hash_lb_config: ring hash: minimum_ring_size (100) > maximum_ring_size (10)"),
    ({"round_robin_lb_config": {"slow_start_config": {"slow_start_window": "5s",
                                                      "min_weight_percent": {"value": 120}}}},
     CL + ".round_robin_lb_config.slow_start_config.min_weight_percent.value: value must be "
     "inside range [0.0, 100.0]"),
    ({"lb_policy": "RING_HASH",
      "common_lb_config": {"consistent_hashing_lb_config": {"use_hostname_for_hashing": True}}},
     CL + ".common_lb_config.consistent_hashing_lb_config: not supported"),
    ({"lb_policy": "RING_HASH", "common_lb_config": {"locality_weighted_lb_config": {}}},
     CL + ".common_lb_config.locality_weighted_lb_config: not supported with lb_policy RING_HASH"),
    ({"common_lb_config": {"zone_aware_lb_config": {}}},
     CL + ".common_lb_config.zone_aware_lb_config: not supported"),
    ({"lb_policy": "CLUSTER_PROVIDED"}, CL + ".lb_policy: CLUSTER_PROVIDED not supported"),
])
def test_refused(extra, error):
    assert error in errors_of(cluster(**extra))


def test_load_assignment_policy_fields_refused():
    d = cluster()
    d["static_resources"]["clusters"][0]["load_assignment"]["policy"] = {
        "weighted_priority_health": True}
    assert errors_of(d) == [
        CL + ".load_assignment.policy.weighted_priority_health: not supported"]


def route_with(hash_policy):
    d = copy.deepcopy(BASE)
    d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["virtual_hosts"][0]["routes"][0]["route"]["hash_policy"] = hash_policy
    return d


def test_hash_policies():
    d = route_with([
        {"header": {"header_name": "X-Key"}},
        {"cookie": {"name": "sess", "ttl": "60s", "path": "/p",
                    "attributes": [{"name": "SameSite", "value": "Lax"}]}, "terminal": True},
        {"cookie": {"name": "plain"}},
        {"query_parameter": {"name": "k"}},
        {"connection_properties": {"source_ip": True}},
        {"connection_properties": {"source_ip": False}},
    ])
    ra = load_dict(d).listeners[0].hcm.route_config.virtual_hosts[0].routes[0].route
    assert ra.hash_policy == [
        model.HashPolicy("header", "x-key"),
        model.HashPolicy("cookie", "sess", True, 60, "/p", (("SameSite", "Lax"),)),
        model.HashPolicy("cookie", "plain"),
        model.HashPolicy("query_parameter", "k"),
        model.HashPolicy("source_ip"),
    ]


@pytest.mark.parametrize("policy,error", [
    ({"filter_state": {"key": "k"}}, ".route.hash_policy[0].filter_state: not supported"),
    ({"header": {"header_name": "x", "regex_rewrite": {
        "pattern": {"regex": "a"}, "substitution": "b"}}},
     ".route.hash_policy[0].header.regex_rewrite: not supported"),
])
def test_hash_policies_refused(policy, error):
    assert VH_PATH + ".routes[0]" + error in errors_of(route_with([policy]))
