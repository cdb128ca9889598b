"""Parity of locality weighted load balancing: a cluster with common_lb_config.
locality_weighted_lb_config and two localities of weights 1 and 3 (two origins each) sends a
quarter of the requests to the first locality and three quarters to the second, in Envoy and in
fastproxy alike; within a locality the cluster's policy spreads them over its hosts.

Both proxies point at the same origins; each request carries a marker header naming the proxy,
and which origin recorded it tells where it went.
"""
from __future__ import annotations

import pytest

from helpers import make_bootstrap, parse_response, raw_request

pytestmark = pytest.mark.parity

REQUESTS = 400


def _run(both_proxies, origin_factory, policy):
    origins = [origin_factory() for _ in range(4)]

    def lb_endpoints(group):
        return [{"endpoint": {"address": {"socket_address": {
            "address": o.address[0], "port_value": o.address[1]}}}} for o in group]

    def config(lp, ap):
        cfg = make_bootstrap(lp, ap, {"c": [o.address for o in origins]},
                             cluster_extra={"c": {
                                 "lb_policy": policy,
                                 "common_lb_config": {"locality_weighted_lb_config": {}}}})
        cfg["static_resources"]["clusters"][0]["load_assignment"]["endpoints"] = [
            {"locality": {"region": "r1", "zone": "z1"}, "load_balancing_weight": 1,
             "lb_endpoints": lb_endpoints(origins[:2])},
            {"locality": {"region": "r1", "zone": "z2"}, "load_balancing_weight": 3,
             "lb_endpoints": lb_endpoints(origins[2:])},
        ]
        return cfg

    pair = both_proxies(config)
    for tag, proxy in (("e", pair.envoy), ("f", pair.fastproxy)):
        for i in range(REQUESTS):
            req = f"GET /x HTTP/1.1\r\nHost: a\r\nx-mark: {tag}-{i}\r\n\r\n".encode()
            status, _, _ = parse_response(raw_request(proxy.port, req))
            assert status == 200, (tag, i)
    hits = {}
    for tag in ("e", "f"):
        hits[tag] = [sum(1 for r in o.requests if (r.header("x-mark") or "").startswith(tag + "-"))
                     for o in origins]
        assert sum(hits[tag]) == REQUESTS, hits
    return hits


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"])
def test_locality_weights_split_traffic_like_envoy(both_proxies, origin_factory, policy):
    hits = _run(both_proxies, origin_factory, policy)
    fractions = {}
    for tag, h in hits.items():
        first = (h[0] + h[1]) / REQUESTS
        fractions[tag] = first
        assert abs(first - 0.25) <= 0.05, (tag, hits)
        assert abs((h[2] + h[3]) / REQUESTS - 0.75) <= 0.05, (tag, hits)
        # every host of each locality gets a share (the policy spreads within the locality)
        assert all(n > 0 for n in h), (tag, hits)
    assert abs(fractions["e"] - fractions["f"]) <= 0.05, hits
    if policy == "ROUND_ROBIN":
        # one worker each: the EDF schedule over 1:3 and round robin inside are exact
        assert hits["e"] == hits["f"] == [50, 50, 150, 150], hits
