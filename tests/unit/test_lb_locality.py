"""Locality weighted load balancing (fastproxy._core.lb with localities=/locality_weights=, and
the config's common_lb_config.locality_weighted_lb_config): the locality is drawn by EDF over
weight * availability, then the host within it by the cluster's policy."""
from collections import Counter

import pytest

from fastproxy._core.lb import LoadBalancer
import copy

from fastproxy.config import ConfigError, lb_config, load_dict, model

from test_config import BASE


def picks(lb, n):
    return [lb.pick_py() for _ in range(n)]


def by_locality(seq, localities):
    return Counter(localities[h] for h in seq)


# ---- spread over localities ----

@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"])
@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_localities_follow_weights_exactly_over_a_cycle(policy, seed):
    locs = [0, 0, 1, 1]
    lb = LoadBalancer(policy, [1] * 4, [0] * 4, seed, localities=locs, locality_weights=[1, 3])
    # EDF over weights 1 and 3: each full cycle of 4 picks holds exactly 1 pick of locality 0
    # and 3 of locality 1.
    for _ in range(50):
        c = by_locality(picks(lb, 4), locs)
        assert c == {0: 1, 1: 3}
    assert lb.num_localities == 2
    assert lb.locality_weights() == [1.0, 3.0]


def test_three_localities_unequal_sizes():
    locs = [0, 1, 1, 1, 2, 2]
    lb = LoadBalancer("ROUND_ROBIN", [1] * 6, [0] * 6, 3, localities=locs,
                      locality_weights=[2, 5, 3])
    for _ in range(20):
        assert by_locality(picks(lb, 10), locs) == {0: 2, 1: 5, 2: 3}


def test_host_weights_do_not_change_locality_share():
    locs = [0, 0, 1]
    lb = LoadBalancer("ROUND_ROBIN", [10, 30, 1], [0] * 3, 5, localities=locs,
                      locality_weights=[1, 1])
    seq = picks(lb, 800)
    assert by_locality(seq, locs) == {0: 400, 1: 400}
    c = Counter(seq)
    # within locality 0 the host weights 10:30 apply (EDF)
    assert c[0] == 100 and c[1] == 300


def test_without_localities_all_hosts_share_one_pool():
    lb = LoadBalancer("ROUND_ROBIN", [1] * 4, [0] * 4, 1)
    assert lb.num_localities == 0
    assert Counter(picks(lb, 400)) == {0: 100, 1: 100, 2: 100, 3: 100}


# ---- within-locality policy ----

def test_round_robin_within_locality_cycles():
    locs = [0, 0, 0, 1]
    lb = LoadBalancer("ROUND_ROBIN", [1] * 4, [0] * 4, 9, localities=locs, locality_weights=[3, 1])
    seq = picks(lb, 400)
    c = Counter(seq)
    assert c[3] == 100
    assert c[0] == c[1] == c[2] == 100
    in0 = [h for h in seq if h != 3]
    for a, b in zip(in0, in0[1:]):
        assert b == (a + 1) % 3


def test_least_request_within_locality_prefers_idle_host():
    locs = [0, 0, 1, 1]
    lb = LoadBalancer("LEAST_REQUEST", [1] * 4, [0] * 4, 4, localities=locs,
                      locality_weights=[1, 1], choice_count=2)
    for _ in range(5):
        lb.started(0)
        lb.started(2)
    c = Counter(picks(lb, 1000))
    assert by_locality(list(c.elements()), locs) == {0: 500, 1: 500}
    # two choices within the locality: the busy host only wins when sampled twice (1 in 4)
    assert c[1] > 2 * c[0] and c[3] > 2 * c[2]


def test_random_within_locality_spreads():
    locs = [0, 0, 1, 1]
    lb = LoadBalancer("RANDOM", [1] * 4, [0] * 4, 2, localities=locs, locality_weights=[1, 1])
    c = Counter(picks(lb, 4000))
    assert c[0] + c[1] == 2000
    for h in range(4):
        assert 850 < c[h] < 1150


# ---- health and availability ----

def test_locality_without_healthy_hosts_gets_nothing():
    locs = [0, 0, 1, 1, 2, 2]
    lb = LoadBalancer("ROUND_ROBIN", [1] * 6, [0] * 6, 1, localities=locs,
                      locality_weights=[1, 1, 2])
    lb.set_healthy(0, False)
    lb.set_healthy(1, False)
    assert lb.locality_weights() == [0.0, 1.0, 2.0]
    assert lb.priority_panic() == [False]  # 4 of 6 healthy * 1.4 > 50% threshold
    for _ in range(30):
        assert by_locality(picks(lb, 3), locs) == {1: 1, 2: 2}


def test_partial_availability_scales_the_locality_weight():
    # locality 0: 1 of 4 hosts healthy -> availability min(1, 1.4 * 0.25) = 0.35
    locs = [0, 0, 0, 0, 1, 1, 1, 1]
    lb = LoadBalancer("ROUND_ROBIN", [1] * 8, [0] * 8, 1, localities=locs,
                      locality_weights=[1, 1], healthy_panic_threshold=0)
    for h in (0, 1, 2):
        lb.set_healthy(h, False)
    w = lb.locality_weights()
    assert w[0] == pytest.approx(0.35) and w[1] == 1.0
    c = by_locality(picks(lb, 2700), locs)
    assert c[0] == pytest.approx(2700 * 0.35 / 1.35, abs=2)
    # 3 of 4 healthy -> 1.4 * 0.75 > 1: full weight
    lb.set_healthy(0, True)
    lb.set_healthy(1, True)
    assert lb.locality_weights() == [1.0, 1.0]
    assert by_locality(picks(lb, 1000), locs) == {0: 500, 1: 500}


def test_overprovisioning_factor_applies_to_localities():
    locs = [0, 0, 1, 1]
    lb = LoadBalancer("ROUND_ROBIN", [1] * 4, [0] * 4, 1, localities=locs,
                      locality_weights=[1, 1], overprovisioning_factor=100,
                      healthy_panic_threshold=0)
    lb.set_healthy(0, False)
    assert lb.locality_weights() == [0.5, 1.0]
    assert by_locality(picks(lb, 300), locs) == {0: 100, 1: 200}


def test_zero_weight_locality_gets_nothing():
    locs = [0, 1, 1]
    lb = LoadBalancer("ROUND_ROBIN", [1] * 3, [0] * 3, 1, localities=locs, locality_weights=[0, 1])
    assert set(picks(lb, 100)) == {1, 2}


def test_all_localities_at_zero_fall_back_to_healthy_hosts():
    locs = [0, 1]
    lb = LoadBalancer("ROUND_ROBIN", [1] * 2, [0] * 2, 1, localities=locs, locality_weights=[0, 0])
    assert Counter(picks(lb, 100)) == {0: 50, 1: 50}


def test_panic_ignores_localities():
    locs = [0, 0, 0, 1]
    lb = LoadBalancer("ROUND_ROBIN", [1] * 4, [0] * 4, 1, localities=locs, locality_weights=[1, 9])
    for h in (0, 1, 3):
        lb.set_healthy(h, False)
    assert lb.priority_panic() == [True]
    assert lb.locality_weights() == [0.0, 0.0]
    assert Counter(picks(lb, 400)) == {0: 100, 1: 100, 2: 100, 3: 100}


def test_priorities_then_localities():
    # P0: localities 0 (w1) and 1 (w1); P1: locality 2. P0 half healthy -> 70% P0, 30% P1.
    locs = [0, 0, 1, 1, 2]
    prios = [0, 0, 0, 0, 1]
    lb = LoadBalancer("ROUND_ROBIN", [1] * 5, prios, 3, localities=locs,
                      locality_weights=[1, 1, 1])
    lb.set_healthy(0, False)
    lb.set_healthy(1, False)
    assert lb.priority_loads() == [70, 30]
    assert lb.locality_weights() == [0.0, 1.0, 1.0]
    c = Counter(picks(lb, 10000))
    assert c[0] == c[1] == 0
    assert 6500 < c[2] + c[3] < 7500


def test_bad_locality_arguments():
    with pytest.raises(ValueError):
        LoadBalancer("ROUND_ROBIN", [1, 1], [0, 0], 1, localities=[0], locality_weights=[1])
    with pytest.raises(ValueError):
        LoadBalancer("ROUND_ROBIN", [1, 1], [0, 0], 1, localities=[0, 2], locality_weights=[1, 1])
    with pytest.raises(ValueError):  # one locality in two priorities
        LoadBalancer("ROUND_ROBIN", [1, 1], [0, 1], 1, localities=[0, 0], locality_weights=[1])


def test_hashing_policies_ignore_localities():
    lb = LoadBalancer("MAGLEV", [1] * 4, [0] * 4, 1, localities=[0, 0, 1, 1],
                      locality_weights=[1, 3], table_size=7)
    assert lb.num_localities == 0


# ---- config ----

def _endpoints(*specs):
    return [model.Endpoint(model.SocketAddress("127.0.0.1", 1000 + i), 1, prio, loc, w)
            for i, (prio, loc, w) in enumerate(specs)]


def test_config_locality_indexes_merge_and_order():
    eps = _endpoints((0, ("r", "b", ""), 3), (0, ("r", "a", ""), 1), (0, ("r", "b", ""), 0),
                     (1, ("r", "a", ""), 2), (0, ("r", "a", ""), 5))
    ids, weights = lb_config.localities(eps)
    # (0, a), (0, b), (1, a); the last weight set wins; an unset weight leaves it
    assert ids == [1, 0, 1, 2, 0]
    assert weights == [5, 3, 2]


def _locality_cluster(policy="ROUND_ROBIN", ctype=None, **common):
    d = copy.deepcopy(BASE)
    c = d["static_resources"]["clusters"][0]
    c["lb_policy"] = policy
    if ctype:
        c["type"] = ctype
    c["common_lb_config"] = {"locality_weighted_lb_config": {}, **common}

    def ep(port):
        return {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                            "port_value": port}}}}

    c["load_assignment"]["endpoints"] = [
        {"locality": {"region": "r", "zone": "b"}, "load_balancing_weight": 3,
         "lb_endpoints": [ep(81), ep(82)]},
        {"locality": {"region": "r", "zone": "a", "sub_zone": "s"}, "load_balancing_weight": 1,
         "lb_endpoints": [ep(83)]},
    ]
    return d


def test_config_passes_localities_to_the_balancer():
    cl = load_dict(_locality_cluster()).clusters[0]
    assert cl.lb_options["localities"] == [1, 1, 0]
    assert cl.lb_options["locality_weights"] == [1, 3]
    assert [e.locality for e in cl.endpoints] == [("r", "b", ""), ("r", "b", ""), ("r", "a", "s")]
    assert [e.locality_index for e in cl.endpoints] == [1, 1, 0]
    lb = LoadBalancer(cl.lb_policy, [e.weight for e in cl.endpoints],
                      [e.priority for e in cl.endpoints], 1, **cl.lb_options)
    assert by_locality(picks(lb, 400), cl.lb_options["localities"]) == {0: 100, 1: 300}


def test_config_dns_cluster_keeps_indexes_on_endpoints():
    d = _locality_cluster(ctype="STRICT_DNS")
    cl = load_dict(d).clusters[0]
    assert "localities" not in cl.lb_options
    assert cl.lb_options["locality_weights"] == [1, 3]
    assert [e.locality_index for e in cl.endpoints] == [1, 1, 0]


def test_config_without_locality_weighting_ignores_localities():
    d = _locality_cluster()
    del d["static_resources"]["clusters"][0]["common_lb_config"]
    cl = load_dict(d).clusters[0]
    assert "localities" not in cl.lb_options and "locality_weights" not in cl.lb_options


def test_config_refuses_locality_weighting_with_hashing_policies():
    with pytest.raises(ConfigError) as info:
        load_dict(_locality_cluster("MAGLEV"))
    assert any("locality_weighted_lb_config" in e for e in info.value.errors)


def test_config_locality_weight_must_be_positive():
    d = _locality_cluster()
    d["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0][
        "load_balancing_weight"] = 0
    with pytest.raises(ConfigError):
        load_dict(d)
