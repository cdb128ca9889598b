"""Slow start of ROUND_ROBIN and LEAST_REQUEST (Envoy's SlowStartConfig): the weights of hosts
that joined recently ramp up over the window; EDF is used while any host is in slow start."""
from __future__ import annotations

import time
from collections import Counter

import pytest

from fastproxy._core.lb import LoadBalancer

OLD = -1000.0  # joined long before the window


def make(policy="ROUND_ROBIN", weights=(1, 1), added_at=None, now=0.0, **kw):
    kw.setdefault("slow_start_window", 10.0)
    return LoadBalancer(policy, list(weights), [0] * len(weights), 7, added_at=added_at,
                        now=now, manual_clock=True, **kw)


def shares(lb, picks=30000):
    c = Counter(lb.pick_py() for _ in range(picks))
    return [c[i] / picks for i in range(lb.num_hosts)]


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST"])
def test_weight_ramps_over_the_window(policy):
    lb = make(policy, added_at=[OLD, 0.0])
    assert lb.in_slow_start
    assert lb.effective_weight(0) == 1.0
    assert lb.effective_weight(1) == pytest.approx(0.1)  # 1 ms of 10 s, floored at 10%
    for t, factor in [(2.0, 0.2), (5.0, 0.5), (9.0, 0.9)]:
        assert lb.refresh_slow_start(t)
        assert lb.effective_weight(1) == pytest.approx(factor)
        assert shares(lb)[1] == pytest.approx(factor / (1 + factor), abs=0.01)
    assert not lb.refresh_slow_start(10.0)
    assert lb.effective_weight(1) == 1.0


def test_weights_scale_the_configured_weight():
    lb = make(weights=(4, 2), added_at=[0.0, OLD], now=2.5)
    assert lb.effective_weight(0) == pytest.approx(1.0)  # 4 * 0.25
    assert lb.effective_weight(1) == 2.0


def test_min_weight_percent_floor():
    lb = make(added_at=[OLD, 0.0], now=1.0, slow_start_min_weight_percent=30)
    assert lb.effective_weight(1) == pytest.approx(0.3)
    lb.refresh_slow_start(4.0)
    assert lb.effective_weight(1) == pytest.approx(0.4)
    lb = make(added_at=[OLD, 0.0], now=1.0, slow_start_min_weight_percent=0)
    assert lb.effective_weight(1) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        make(slow_start_min_weight_percent=101)


def test_aggression():
    lb = make(added_at=[OLD, 0.0], now=2.5, slow_start_aggression=2.0)
    assert lb.effective_weight(1) == pytest.approx(0.5)  # (0.25) ^ (1/2)
    lb = make(added_at=[OLD, 0.0], now=5.0, slow_start_aggression=0.5)
    assert lb.effective_weight(1) == pytest.approx(0.25)  # (0.5) ^ 2
    # Envoy takes a non-positive aggression as 1.0.
    lb = make(added_at=[OLD, 0.0], now=2.5, slow_start_aggression=0.0)
    assert lb.effective_weight(1) == pytest.approx(0.25)


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST"])
def test_all_hosts_equal_after_the_window(policy):
    lb = make(policy, weights=(1, 1, 1), added_at=[0.0, 3.0, 6.0], now=7.0)
    assert lb.priority_weighted() == [True]
    assert [lb.effective_weight(i) for i in range(3)] == pytest.approx([0.7, 0.4, 0.1])
    assert not lb.refresh_slow_start(16.0)
    assert not lb.in_slow_start
    assert lb.priority_weighted() == [False]
    assert [lb.effective_weight(i) for i in range(3)] == [1.0, 1.0, 1.0]
    assert shares(lb, 3000) == pytest.approx([1 / 3] * 3, abs=0.03)


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST"])
def test_edf_forced_during_slow_start(policy):
    # Equal weights normally pick unweighted; any host in slow start forces EDF.
    assert make(policy, added_at=[OLD, OLD]).priority_weighted() == [False]
    lb = make(policy, added_at=[OLD, 5.0], now=5.0)
    assert lb.priority_weighted() == [True]


def test_hosts_of_the_first_build_start_together():
    # As in Envoy, hosts present when the balancer is first built start their window then:
    # all scaled alike, so the split is unchanged, but picks go through EDF.
    lb = make(weights=(1, 3), now=100.0)
    assert lb.in_slow_start and lb.priority_weighted() == [True]
    assert [lb.host_start(i) for i in range(2)] == [100.0, 100.0]
    assert shares(lb, 4000) == pytest.approx([0.25, 0.75], abs=0.02)


def test_start_times_survive_rebuilds():
    first = make(host_ids=["a", "b"], now=0.0)
    # 4 s later "c" joins and "a" leaves: "b" keeps its start, "c" starts now.
    second = make(weights=(1, 1), host_ids=["b", "c"], previous=first, now=4.0)
    assert [second.host_start(i) for i in range(2)] == [0.0, 4.0]
    assert second.effective_weight(0) == pytest.approx(0.4)
    assert second.effective_weight(1) == pytest.approx(0.1)
    # An explicit added_at wins.
    third = make(host_ids=["b", "c"], previous=second, added_at=[None, 1.0], now=4.0)
    assert [third.host_start(i) for i in range(2)] == [0.0, 1.0]


def test_health_decides_slow_start():
    lb = make(weights=(1, 1, 1), added_at=[OLD, OLD, 0.0], now=1.0)
    assert lb.in_slow_start
    lb.set_healthy(2, False)
    assert not lb.in_slow_start and lb.priority_weighted() == [False]
    # Becoming healthy (a health check pass at `since`) starts a new slow start.
    lb.set_healthy(2, True, since=1.0)
    assert lb.in_slow_start and lb.effective_weight(2) == pytest.approx(0.1)
    lb.refresh_slow_start(6.0)
    assert lb.effective_weight(2) == pytest.approx(0.5)


def test_priorities_each_use_edf():
    lb = LoadBalancer("ROUND_ROBIN", [1, 1, 1, 1], [0, 0, 1, 1], 3, slow_start_window=10.0,
                      added_at=[OLD, 0.0, OLD, OLD], now=5.0, manual_clock=True)
    assert lb.priority_weighted() == [True, True]


def test_disabled_and_other_policies():
    lb = LoadBalancer("ROUND_ROBIN", [1, 1], [0, 0], 1, added_at=[0.0, 0.0], now=0.0)
    assert not lb.in_slow_start and lb.priority_weighted() == [False]
    for policy in ("RANDOM", "RING_HASH", "MAGLEV"):
        lb = LoadBalancer(policy, [1, 1], [0, 0], 1, slow_start_window=10.0, now=0.0)
        assert not lb.in_slow_start
    with pytest.raises(ValueError):
        LoadBalancer("ROUND_ROBIN", [1, 1], [0, 0], 1, slow_start_window=10.0, added_at=[0.0])


def test_picks_refresh_from_the_clock():
    now = time.monotonic()
    lb = LoadBalancer("ROUND_ROBIN", [1, 1], [0, 0], 1, slow_start_window=0.3,
                      added_at=[now - 100.0, now])
    assert lb.in_slow_start
    time.sleep(0.45)
    lb.pick_py()
    assert not lb.in_slow_start and lb.priority_weighted() == [False]


def test_rebuilds_keep_the_rotation_going():
    # Frequent refreshes must not restart the schedule: with one pick between refreshes, the
    # picks still follow the weights.
    lb = make(weights=(1, 1, 1, 1), added_at=[OLD, OLD, OLD, 0.0], now=9.0)
    c = Counter()
    for k in range(400):
        lb.refresh_slow_start(9.0 + k * 1e-6)
        c[lb.pick_py()] += 1
    assert all(90 <= c[i] <= 110 for i in range(3))
