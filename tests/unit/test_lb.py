"""Load balancer picks (fastproxy._core.lb): ROUND_ROBIN, LEAST_REQUEST and RANDOM with Envoy's
semantics, priority loads with overprovisioning and panic, determinism under a seed."""
from collections import Counter

import pytest

from fastproxy._core.lb import LoadBalancer


def picks(lb, n):
    return [lb.pick_py() for _ in range(n)]


def chi_square(counts, n_hosts, total):
    expected = total / n_hosts
    return sum((counts.get(i, 0) - expected) ** 2 / expected for i in range(n_hosts))


# Chi-square critical values at p = 0.001 (the seeds are fixed, so these tests are deterministic;
# the threshold only says the spread is what a uniform draw would give).
CHI2_P001 = {3: 16.27, 4: 18.47, 9: 27.88, 19: 43.82}


# ---- round robin ----

def test_round_robin_equal_weights_cycles_in_order():
    lb = LoadBalancer("ROUND_ROBIN", [1] * 5, [0] * 5, seed=7)
    seq = picks(lb, 50)
    for a, b in zip(seq, seq[1:]):
        assert b == (a + 1) % 5
    assert Counter(seq) == {i: 10 for i in range(5)}


def test_round_robin_starts_at_a_seeded_offset():
    firsts = {LoadBalancer("ROUND_ROBIN", [1] * 5, [0] * 5, seed=s).pick_py() for s in range(100)}
    assert firsts == set(range(5))


def test_round_robin_equal_weights_other_than_one_are_unweighted():
    lb = LoadBalancer("ROUND_ROBIN", [7] * 4, [0] * 4, seed=1)
    assert lb.priority_weighted() == [False]
    seq = picks(lb, 8)
    assert seq[4:] == seq[:4] and sorted(seq[:4]) == [0, 1, 2, 3]


@pytest.mark.parametrize("weights", [[1, 2, 3, 5], [1, 1, 2], [3, 7], [1, 100, 7]])
def test_weighted_round_robin_is_exact_over_every_full_cycle(weights):
    cycle = sum(weights)
    for seed in range(20):
        lb = LoadBalancer("ROUND_ROBIN", weights, [0] * len(weights), seed=seed)
        assert lb.priority_weighted() == [True]
        for _ in range(5):
            counts = Counter(picks(lb, cycle))
            assert [counts[i] for i in range(len(weights))] == weights


def test_weighted_round_robin_stays_within_one_pick_of_the_weights():
    # Weights sharing a factor tie on deadlines; floating point decides the ties, as in Envoy, so
    # a window may be off by one at its edges but never drifts.
    weights = [10, 20, 30, 40]
    lb = LoadBalancer("ROUND_ROBIN", weights, [0] * 4, seed=3)
    counts = Counter()
    for k in range(1, 51):
        counts.update(picks(lb, sum(weights)))
        for i, w in enumerate(weights):
            assert abs(counts[i] - k * w) <= 1


def test_weighted_round_robin_spreads_a_heavy_host():
    # EDF interleaves: the light host's single pick per cycle lands between the heavy host's,
    # never more than one light pick in a row, and the heavy host never waits longer than a cycle.
    lb = LoadBalancer("ROUND_ROBIN", [1, 8], [0, 0], seed=11)
    seq = picks(lb, 900)
    assert all(not (a == 0 and b == 0) for a, b in zip(seq, seq[1:]))
    assert all(seq[i:i + 9].count(1) == 8 for i in range(0, 900, 9))


def test_single_host_is_always_picked():
    for policy in ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"):
        lb = LoadBalancer(policy, [5], [0], seed=1)
        assert picks(lb, 10) == [0] * 10


def test_no_hosts_picks_nothing():
    for policy in ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"):
        lb = LoadBalancer(policy, [], [], seed=1)
        assert lb.num_hosts == 0
        assert lb.pick_py() == -1


# ---- least request ----

def test_least_request_p2c_avoids_a_loaded_host():
    lb = LoadBalancer("LEAST_REQUEST", [1, 1, 1], [0] * 3, seed=5)
    for _ in range(10):
        lb.started(0)
    n = 90_000
    counts = Counter(picks(lb, n))
    # Host 0 wins only when both samples are host 0: probability 1/9.
    assert abs(counts[0] / n - 1 / 9) < 0.01
    assert abs(counts[1] - counts[2]) / n < 0.02


def test_least_request_more_choices_find_the_idle_host():
    lb = LoadBalancer("LEAST_REQUEST", [1] * 4, [0] * 4, seed=5, choice_count=8)
    for host in (0, 1, 2):
        lb.started(host)
    counts = Counter(picks(lb, 10_000))
    # Host 3 loses only when all 8 samples miss it: (3/4)^8 ~ 10%.
    assert abs(counts[3] / 10_000 - (1 - 0.75 ** 8)) < 0.02


def test_least_request_p2c_spreads_uniformly_when_idle():
    lb = LoadBalancer("LEAST_REQUEST", [1] * 10, [0] * 10, seed=9)
    n = 100_000
    assert chi_square(Counter(picks(lb, n)), 10, n) < CHI2_P001[9]


def test_least_request_p2c_balances_active_requests():
    # Requests that stay open: P2C keeps the hosts' active counts close together.
    lb = LoadBalancer("LEAST_REQUEST", [1] * 20, [0] * 20, seed=13)
    for _ in range(2000):
        lb.started(lb.pick_py())
    active = [lb.active_requests(i) for i in range(20)]
    assert sum(active) == 2000
    assert max(active) - min(active) <= 4


def test_weighted_least_request_scales_weight_by_active_requests():
    # Weights 4:1. Idle, host 0 gets 4/5 of the picks; with 3 requests open on it its weight is
    # 4 / (3 + 1) = 1, level with host 1.
    idle = LoadBalancer("LEAST_REQUEST", [4, 1], [0, 0], seed=2)
    assert idle.priority_weighted() == [True]
    counts = Counter(picks(idle, 5000))
    assert counts == {0: 4000, 1: 1000}

    loaded = LoadBalancer("LEAST_REQUEST", [4, 1], [0, 0], seed=2)
    for _ in range(3):
        loaded.started(0)
    picks(loaded, 10)  # host 0's next entry in the schedule carries its new weight
    counts = Counter(picks(loaded, 5000))
    assert abs(counts[0] - counts[1]) <= 2


def test_weighted_least_request_bias():
    # bias 2: weight / (active + 1)^2 = 8 / 4 = 2 against host 1's 1.
    lb = LoadBalancer("LEAST_REQUEST", [8, 1], [0, 0], seed=2, active_request_bias=2.0)
    lb.started(0)
    picks(lb, 20)
    counts = Counter(picks(lb, 3000))
    assert abs(counts[0] - 2000) <= 2 and abs(counts[1] - 1000) <= 2


def test_least_request_bias_zero_is_weighted_round_robin():
    weights = [1, 2, 3, 5]
    rr = LoadBalancer("ROUND_ROBIN", weights, [0] * 4, seed=21)
    lr = LoadBalancer("LEAST_REQUEST", weights, [0] * 4, seed=21, active_request_bias=0.0)
    for i in range(4):
        for _ in range(i * 3):
            lr.started(i)
    assert picks(rr, 500) == picks(lr, 500)


def test_least_request_bias_forces_weighted_with_equal_weights():
    plain = LoadBalancer("LEAST_REQUEST", [1, 1, 1], [0] * 3, seed=1)
    forced = LoadBalancer("LEAST_REQUEST", [1, 1, 1], [0] * 3, seed=1, bias_forces_weighted=True)
    assert plain.priority_weighted() == [False]
    assert forced.priority_weighted() == [True]
    forced.started(0)
    forced.started(0)
    picks(forced, 3)
    counts = Counter(picks(forced, 7000))
    # Weights 1/3, 1, 1 once host 0's load is seen: 1000 / 3000 / 3000.
    assert abs(counts[0] - 1000) <= 2


def test_request_bookkeeping():
    lb = LoadBalancer("LEAST_REQUEST", [1, 1], [0, 0], seed=1)
    lb.started(1)
    lb.started(1)
    lb.finished(1)
    assert lb.active_requests(1) == 1
    lb.finished(0)  # more finishes than starts stay at zero
    assert lb.active_requests(0) == 0
    with pytest.raises(IndexError):
        lb.started(2)
    with pytest.raises(IndexError):
        lb.finished(-1)


# ---- random ----

def test_random_is_uniform():
    lb = LoadBalancer("RANDOM", [1] * 4, [0] * 4, seed=17)
    n = 100_000
    assert chi_square(Counter(picks(lb, n)), 4, n) < CHI2_P001[3]


def test_random_ignores_weights():
    # Envoy's RANDOM picks uniformly over the hosts whatever their weights.
    lb = LoadBalancer("RANDOM", [1, 100, 5, 1], [0] * 4, seed=17)
    n = 100_000
    assert chi_square(Counter(picks(lb, n)), 4, n) < CHI2_P001[3]


def test_random_many_hosts():
    lb = LoadBalancer("RANDOM", [1] * 20, [0] * 20, seed=4)
    n = 200_000
    assert chi_square(Counter(picks(lb, n)), 20, n) < CHI2_P001[19]


# ---- priorities ----

@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"])
def test_all_healthy_p0_takes_everything(policy):
    lb = LoadBalancer(policy, [1, 2, 1, 1], [0, 0, 1, 1], seed=3)
    assert lb.priority_loads() == [100, 0]
    assert set(picks(lb, 1000)) == {0, 1}


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"])
def test_empty_p0_sends_everything_to_p1(policy):
    lb = LoadBalancer(policy, [1, 1, 1], [1, 1, 2], seed=3)
    assert lb.num_priorities == 3
    assert lb.priority_loads() == [0, 100, 0]
    assert set(picks(lb, 1000)) == {0, 1}


def test_partly_healthy_p0_spills_to_p1():
    # 3 of 10 P0 hosts healthy: health 3 * 140 / 10 = 42; P1 takes the other 58.
    weights = [1] * 12
    lb = LoadBalancer("ROUND_ROBIN", weights, [0] * 10 + [1, 1], seed=3)
    for i in range(3, 10):
        lb.set_healthy(i, False)
    assert lb.priority_loads() == [42, 58]
    assert lb.priority_panic() == [False, False]
    n = 50_000
    counts = Counter(picks(lb, n))
    assert set(counts) == {0, 1, 2, 10, 11}
    p0 = counts[0] + counts[1] + counts[2]
    assert abs(p0 / n - 0.42) < 0.01


def test_overprovisioning_hides_a_few_unhealthy_hosts():
    # 8 of 10 healthy: 8 * 1.4 = 112%, capped at 100: P0 keeps all the load, on its healthy hosts.
    lb = LoadBalancer("RANDOM", [1] * 11, [0] * 10 + [1], seed=3)
    lb.set_healthy(0, False)
    lb.set_healthy(1, False)
    assert lb.priority_loads() == [100, 0]
    assert set(picks(lb, 2000)) == set(range(2, 10))


def test_health_recovery_restores_p0():
    lb = LoadBalancer("ROUND_ROBIN", [1, 1, 1], [0, 0, 1], seed=3)
    lb.set_healthy(0, False)
    lb.set_healthy(1, False)
    assert lb.priority_loads() == [0, 100]
    assert set(picks(lb, 10)) == {2}
    lb.set_healthy(1, True)
    assert lb.priority_loads() == [70, 30]
    lb.set_healthy(0, True)
    assert lb.priority_loads() == [100, 0]
    assert set(picks(lb, 10)) == {0, 1}


def test_panic_level_picks_from_all_its_hosts():
    # P0: 1 of 4 healthy (health 35, 25% < 50% threshold); P1: 2 of 2 healthy (health 100).
    # Total availability is 100, so no level panics: P0 gets 35% on its healthy host.
    lb = LoadBalancer("ROUND_ROBIN", [1] * 6, [0, 0, 0, 0, 1, 1], seed=3)
    for i in (1, 2, 3):
        lb.set_healthy(i, False)
    assert lb.priority_loads() == [35, 65]
    assert lb.priority_panic() == [False, False]
    assert set(picks(lb, 1000)) == {0, 4, 5}
    # P1 down to 1 of 2: health 70, availability 100 still.
    lb.set_healthy(5, False)
    assert lb.priority_loads() == [35, 65]
    # P1 fully down: availability 35 < 100, P0 below the threshold panics and uses all its
    # hosts; P1 (0%) panics too, so every level panics and the load follows host counts.
    lb.set_healthy(4, False)
    assert lb.priority_panic() == [True, True]
    assert lb.priority_loads() == [67, 33]  # 4/6 and 2/6, the rounding to P0
    assert set(picks(lb, 1000)) == set(range(6))


def test_three_levels_spill_in_order():
    # P0: 1 of 4 healthy (25%, panics); P1: 1 of 3 healthy (health 46, 33% < 50%: panics too);
    # P2: 3 of 4 healthy (health 105, capped at 100). Availability = min(100, 35 + 46 + 100) = 100:
    # no level panics, whatever its healthy share.
    lb = LoadBalancer("RANDOM", [1] * 11, [0] * 4 + [1] * 3 + [2] * 4, seed=3)
    for i in (1, 2, 3, 5, 6, 7):
        lb.set_healthy(i, False)
    assert lb.priority_loads() == [35, 46, 19]
    assert lb.priority_panic() == [False, False, False]
    # Take P2 down to 1 of 4: health 35; availability = 35 + 46 + 35 = 116 -> 100 still.
    lb.set_healthy(8, False)
    lb.set_healthy(9, False)
    assert lb.priority_loads() == [35, 46, 19]
    # P2 to 0 of 4: availability 81: levels under 50% healthy panic; all do -> host counts.
    lb.set_healthy(10, False)
    assert lb.priority_panic() == [True, True, True]
    assert lb.priority_loads() == [37, 27, 36]  # 4/11, 3/11, 4/11; rounding to P0


def test_partial_panic_keeps_health_based_loads():
    # P0: 2 of 4 healthy (50%: not below the threshold); P1: 0 of 2. Availability 70.
    lb = LoadBalancer("ROUND_ROBIN", [1] * 6, [0] * 4 + [1] * 2, seed=3)
    for i in (2, 3, 4, 5):
        lb.set_healthy(i, False)
    assert lb.priority_panic() == [False, True]
    # P0 gets min(100, 70 * 100 / 70) = 100.
    assert lb.priority_loads() == [100, 0]
    assert set(picks(lb, 100)) == {0, 1}


def test_panic_disabled_with_nothing_healthy_picks_nothing():
    lb = LoadBalancer("ROUND_ROBIN", [1, 1], [0, 1], seed=3, healthy_panic_threshold=0)
    lb.set_healthy(0, False)
    lb.set_healthy(1, False)
    assert lb.priority_loads() == [100, 0]
    assert lb.pick_py() == -1


def test_everything_unhealthy_panics_onto_all_hosts():
    lb = LoadBalancer("LEAST_REQUEST", [1, 1, 1], [0, 0, 0], seed=3)
    for i in range(3):
        lb.set_healthy(i, False)
    assert lb.priority_panic() == [True]
    assert set(picks(lb, 300)) == {0, 1, 2}


def test_weighted_levels_get_their_own_schedules():
    lb = LoadBalancer("ROUND_ROBIN", [1, 3, 1, 1], [0, 0, 1, 1], seed=3)
    assert lb.priority_weighted() == [True, False]
    counts = Counter(picks(lb, 400))
    assert counts == {0: 100, 1: 300}


# ---- determinism and validation ----

@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"])
@pytest.mark.parametrize("weights", [[1] * 6, [1, 2, 3, 1, 2, 3]])
def test_same_seed_same_picks(policy, weights):
    def run(seed):
        lb = LoadBalancer(policy, weights, [0, 0, 0, 0, 1, 1], seed=seed)
        lb.set_healthy(0, False)
        lb.set_healthy(1, False)
        out = []
        for _ in range(500):
            host = lb.pick_py()
            out.append(host)
            lb.started(host)
            if len(out) % 3 == 0:
                lb.finished(out[-3])
        return out
    assert run(42) == run(42)
    assert run(42) != run(43)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        LoadBalancer("CLUSTER_PROVIDED", [1], [0], seed=1)
    with pytest.raises(ValueError):
        LoadBalancer("ROUND_ROBIN", [1, 0], [0, 0], seed=1)
    with pytest.raises(ValueError):
        LoadBalancer("ROUND_ROBIN", [1, 1], [0], seed=1)
    with pytest.raises(ValueError):
        LoadBalancer("ROUND_ROBIN", [1], [-1], seed=1)
    with pytest.raises(ValueError):
        LoadBalancer("ROUND_ROBIN", [1], [128], seed=1)
    with pytest.raises(ValueError):
        LoadBalancer("LEAST_REQUEST", [1], [0], seed=1, choice_count=1)
    with pytest.raises(ValueError):
        LoadBalancer("LEAST_REQUEST", [1], [0], seed=1, active_request_bias=-1.0)
    with pytest.raises(IndexError):
        LoadBalancer("ROUND_ROBIN", [1], [0], seed=1).set_healthy(1, False)


def test_bench_picks_uses_the_cdef_path():
    lb = LoadBalancer("ROUND_ROBIN", [1, 1, 1], [0, 0, 0], seed=1)
    first = lb.pick_py()
    assert lb.bench_picks(3) == first
