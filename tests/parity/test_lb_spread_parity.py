"""Load spreads compared with real Envoy on the same config: round robin, weighted round robin,
least request and random over the same origins; each proxy's share per host within a statistical
tolerance of the expected share and of the other's."""
import pytest

from helpers import free_port, make_bootstrap, parse_response, raw_request
from helpers.scripted import ScriptedOrigin

N = 400


def _config(port, admin, origins, policy, weights):
    endpoints = [{"endpoint": {"address": {"socket_address": {
        "address": "127.0.0.1", "port_value": o.port}}}, "load_balancing_weight": w}
        for o, w in zip(origins, weights)]
    cfg = make_bootstrap(port, admin, clusters={"c": [("127.0.0.1", origins[0].port)]})
    cluster = cfg["static_resources"]["clusters"][0]
    cluster["lb_policy"] = policy
    cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": endpoints}]
    return cfg


def _shares(factory, policy, weights):
    origins = [ScriptedOrigin() for _ in weights]
    try:
        port, admin = free_port(), free_port()
        factory(_config(port, admin, origins, policy, weights))
        for _ in range(N):  # one connection per request: no reuse bias
            assert parse_response(raw_request(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))[0] == 200
        return [o.count / N for o in origins]
    finally:
        for o in origins:
            o.close()


@pytest.mark.parametrize("policy,weights", [
    ("ROUND_ROBIN", [1, 1, 1]),
    ("ROUND_ROBIN", [1, 3]),
    ("LEAST_REQUEST", [1, 1, 1]),
    ("LEAST_REQUEST", [1, 3]),
    ("RANDOM", [1, 1]),
])
def test_spread_matches_envoy(policy, weights, envoy_factory, fastproxy_factory):
    expected = [w / sum(weights) for w in weights]
    if policy == "RANDOM":
        expected = [1 / len(weights)] * len(weights)  # Envoy's random ignores weights
    envoy = _shares(envoy_factory, policy, weights)
    fast = _shares(fastproxy_factory, policy, weights)
    tolerance = 0.02 if policy == "ROUND_ROBIN" else 0.08
    for e, f, x in zip(envoy, fast, expected):
        assert abs(e - x) <= tolerance, (policy, weights, envoy)
        assert abs(f - x) <= tolerance, (policy, weights, fast)
        assert abs(f - e) <= 2 * tolerance, (envoy, fast)
