"""Micro-benchmark: the cost of one load balancer pick, per policy, for 3 and 1,000 hosts
(test_pick; test_pick_hash for RING_HASH and MAGLEV picks with a request hash).

Each round makes PICKS picks through LoadBalancer.bench_picks, a Cython loop over the cdef
`pick()` the connection layer calls, so Python's call overhead is spread over the whole batch;
the figure reported is ns per pick (extra_info["ns_per_pick"]). The plain alternative beside it
is a Python-level random.randrange pick.

Run: python -m pytest bench/micro/test_lb_bench.py --benchmark-only
"""
import random

import pytest

from fastproxy._core.lb import LoadBalancer

PICKS = 100_000

# (name, policy, weights(n), options)
CASES = [
    ("round_robin", "ROUND_ROBIN", lambda n: [1] * n, {}),
    ("round_robin_weighted_edf", "ROUND_ROBIN", lambda n: [1 + i % 7 for i in range(n)], {}),
    ("least_request_p2c", "LEAST_REQUEST", lambda n: [1] * n, {}),
    ("least_request_weighted_edf", "LEAST_REQUEST", lambda n: [1 + i % 7 for i in range(n)], {}),
    ("least_request_weighted_bias_1_5", "LEAST_REQUEST", lambda n: [1 + i % 7 for i in range(n)],
     {"active_request_bias": 1.5}),
    ("random", "RANDOM", lambda n: [1] * n, {}),
]


def _balancer(policy, weights, options):
    n = len(weights)
    lb = LoadBalancer(policy, weights, [0] * n, seed=12345, **options)
    # Some open requests so least-request comparisons and weights are not all trivial.
    for i in range(0, n, 3):
        lb.started(i)
    return lb


@pytest.mark.parametrize("num_hosts", [3, 1000])
@pytest.mark.parametrize("name,policy,weights,options", CASES, ids=[c[0] for c in CASES])
def test_pick(benchmark, name, policy, weights, options, num_hosts):
    lb = _balancer(policy, weights(num_hosts), options)
    lb.bench_picks(PICKS)  # warm the caches and the schedule
    benchmark.group = f"lb pick, {num_hosts} hosts"
    result = benchmark.pedantic(lb.bench_picks, args=(PICKS,), rounds=20, iterations=1,
                                warmup_rounds=2)
    assert 0 <= result < num_hosts
    ns_per_pick = benchmark.stats.stats.min * 1e9 / PICKS
    benchmark.extra_info["ns_per_pick"] = round(ns_per_pick, 1)
    benchmark.extra_info["picks_per_round"] = PICKS


# Consistent hashing: pick_hash with a new, well-spread hash per pick (a Weyl sequence in
# LoadBalancer.bench_pick_hashes), so ring searches and maglev lookups touch the whole table.
HASH_CASES = [
    ("ring_hash_xx", "RING_HASH", {}),
    ("ring_hash_murmur2", "RING_HASH", {"hash_function": "MURMUR_HASH_2"}),
    ("maglev", "MAGLEV", {}),
]


@pytest.mark.parametrize("num_hosts", [3, 1000])
@pytest.mark.parametrize("name,policy,options", HASH_CASES, ids=[c[0] for c in HASH_CASES])
def test_pick_hash(benchmark, name, policy, options, num_hosts):
    weights = [1 + i % 7 for i in range(num_hosts)]
    keys = [f"10.0.{i // 250}.{i % 250 + 1}:8080" for i in range(num_hosts)]
    lb = LoadBalancer(policy, weights, [0] * num_hosts, seed=12345, host_keys=keys, **options)
    lb.bench_pick_hashes(PICKS)
    benchmark.group = f"lb pick_hash, {num_hosts} hosts"
    result = benchmark.pedantic(lb.bench_pick_hashes, args=(PICKS,), rounds=20, iterations=1,
                                warmup_rounds=2)
    assert 0 <= result < num_hosts
    ns_per_pick = benchmark.stats.stats.min * 1e9 / PICKS
    benchmark.extra_info["ns_per_pick"] = round(ns_per_pick, 1)
    benchmark.extra_info["picks_per_round"] = PICKS
    benchmark.extra_info["table_size"] = lb.table_sizes()[0]


@pytest.mark.parametrize("num_hosts", [3, 1000])
def test_plain_python_random_pick(benchmark, num_hosts):
    """The plain alternative: a Python-level uniform pick, per call."""
    def loop():
        rr = random.randrange
        last = -1
        for _ in range(PICKS):
            last = rr(num_hosts)
        return last
    benchmark.group = f"lb pick, {num_hosts} hosts"
    benchmark.pedantic(loop, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["ns_per_pick"] = round(benchmark.stats.stats.min * 1e9 / PICKS, 1)
