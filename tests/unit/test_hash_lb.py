"""RING_HASH and MAGLEV load balancers (csrc/fp_hash_lb.c through fastproxy._core.lb): the
tables are built as Envoy builds them (checked here against step-by-step Python ports of
Envoy's construction and search), picks do not depend on the worker's seed, weights shape the
spread, and priorities, health and panic work as for the other policies."""
import math
import random
import subprocess
import sys

import pytest

from fastproxy._core.lb import LoadBalancer, murmur2_64, xxhash64

KEYS3 = ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"]


def keys(n):
    return [f"10.1.{i // 200}.{i % 200 + 1}:80" for i in range(n)]


def hashes(n, seed=7):
    rng = random.Random(seed)
    return [rng.getrandbits(64) for _ in range(n)]


# ---- reference ports of Envoy's construction (slow, plain Python) ----

def ref_ring(keys_, weights, min_size=1024, max_size=8 * 1024 * 1024, murmur=False):
    total = sum(weights)
    norm = [w * 1.0 / total for w in weights]
    min_w = min(norm)
    scale = min(math.ceil(min_w * min_size) / min_w, float(max_size))
    ring = []
    current = target = 0.0
    for host, (key, w) in enumerate(zip(keys_, norm)):
        target += scale * w
        i = 0
        while current < target:
            k = f"{key}_{i}".encode()
            ring.append((murmur2_64(k) if murmur else xxhash64(k), host))
            i += 1
            current += 1
    ring.sort(key=lambda e: e[0])
    return ring


def ref_ring_pick(ring, h):
    """Envoy's RingHashLoadBalancer::Ring::chooseHost (ketama_get_server), step for step."""
    low, high = 0, len(ring)
    while True:
        mid = (low + high) // 2
        if mid == len(ring):
            mid = 0
            break
        midval = ring[mid][0]
        midval1 = 0 if mid == 0 else ring[mid - 1][0]
        if midval1 < h <= midval:
            break
        if midval < h:
            low = mid + 1
        else:
            high = mid - 1
        if low > high:
            mid = 0
            break
    return ring[mid][1]


def ref_maglev(keys_, weights, size=65537):
    total = sum(weights)
    norm = [w * 1.0 / total for w in weights]
    max_w = max(norm)
    entries = sorted((k, host, w) for host, (k, w) in enumerate(zip(keys_, norm)))
    state = [{"host": host, "w": w, "target": 0.0, "next": 0,
              "offset": xxhash64(k.encode()) % size,
              "skip": xxhash64(k.encode(), 1) % (size - 1) + 1} for k, host, w in entries]
    table = [None] * size
    filled, turn = 0, 1
    while filled < size:
        for e in state:
            if filled >= size:
                break
            if turn * e["w"] < e["target"]:
                continue
            e["target"] += max_w
            c = (e["offset"] + e["skip"] * e["next"]) % size
            while table[c] is not None:
                e["next"] += 1
                c = (e["offset"] + e["skip"] * e["next"]) % size
            table[c] = e["host"]
            e["next"] += 1
            filled += 1
        turn += 1
    return table


# ---- construction matches Envoy's ----

@pytest.mark.parametrize("weights,opts", [
    ([1, 1, 1], {}),
    ([1, 2, 3], {}),
    ([5, 1, 2, 2, 3, 1, 4], {"hash_function": "MURMUR_HASH_2"}),
    ([1, 100], {"min_ring_size": 16, "max_ring_size": 64}),
    ([3, 7, 1, 1], {"min_ring_size": 10, "max_ring_size": 10}),
])
def test_ring_matches_envoy_construction_and_search(weights, opts):
    ks = keys(len(weights))
    lb = LoadBalancer("RING_HASH", weights, [0] * len(weights), 1, host_keys=ks, **opts)
    ring = ref_ring(ks, weights, opts.get("min_ring_size", 1024),
                    opts.get("max_ring_size", 8 * 1024 * 1024),
                    opts.get("hash_function") == "MURMUR_HASH_2")
    assert lb.table_sizes() == [len(ring)]
    # random hashes, every ring point, its neighbours, and the extremes
    probes = hashes(3000) + [0, 1, 2 ** 64 - 1]
    for point, _ in ring[:200] + ring[-50:]:
        probes += [point, max(point - 1, 0), min(point + 1, 2 ** 64 - 1)]
    for h in probes:
        assert lb.pick_hash_py(h) == ref_ring_pick(ring, h), h


@pytest.mark.parametrize("weights,size", [
    ([1, 1, 1], 65537), ([1, 2, 3], 65537), ([5, 1, 2, 2, 3, 1, 4], 1021), ([1, 9], 13),
])
def test_maglev_matches_envoy_construction(weights, size):
    ks = keys(len(weights))
    lb = LoadBalancer("MAGLEV", weights, [0] * len(weights), 1, host_keys=ks, table_size=size)
    table = ref_maglev(ks, weights, size)
    assert lb.table_sizes() == [size]
    for slot in list(range(min(size, 4000))) + [size - 1]:
        assert lb.pick_hash_py(slot) == table[slot]
    for h in hashes(2000):
        assert lb.pick_hash_py(h) == table[h % size]


def test_hash_functions():
    assert xxhash64(b"") == 0xEF46DB3751D8E999
    # libstdc++'s std::hash<std::string> is the same MurmurHash2 with Envoy's seed
    assert murmur2_64(b"hello") == 0x26553298FDBE39C8
    assert murmur2_64(b"abcdefghi") == 0xB4EC9257851C8AAF


# ---- consistency ----

@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_seed_does_not_matter(policy):
    a = LoadBalancer(policy, [1, 2, 3], [0, 0, 0], 1, host_keys=KEYS3)
    b = LoadBalancer(policy, [1, 2, 3], [0, 0, 0], 987654321, host_keys=KEYS3)
    for h in hashes(2000):
        assert a.pick_hash_py(h) == b.pick_hash_py(h)


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_same_picks_in_another_process(policy):
    probes = hashes(200)
    code = (
        "from fastproxy._core.lb import LoadBalancer\n"
        f"lb = LoadBalancer({policy!r}, [1, 2, 3], [0, 0, 0], 42, host_keys={KEYS3!r})\n"
        f"print([lb.pick_hash_py(h) for h in {probes!r}])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lb = LoadBalancer(policy, [1, 2, 3], [0, 0, 0], 7, host_keys=KEYS3)
    assert out.stdout.strip() == str([lb.pick_hash_py(h) for h in probes])


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_host_order_does_not_matter(policy):
    """The same hosts listed in another order own the same hashes (keys, not positions)."""
    ks = keys(7)
    w = [1, 2, 3, 1, 2, 3, 4]
    a = LoadBalancer(policy, w, [0] * 7, 1, host_keys=ks)
    perm = [3, 0, 6, 1, 5, 2, 4]
    b = LoadBalancer(policy, [w[i] for i in perm], [0] * 7, 1, host_keys=[ks[i] for i in perm])
    for h in hashes(2000):
        assert perm[b.pick_hash_py(h)] == a.pick_hash_py(h)


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_removing_a_host_moves_only_its_keys(policy):
    ks = keys(10)
    full = LoadBalancer(policy, [1] * 10, [0] * 10, 1, host_keys=ks)
    less = LoadBalancer(policy, [1] * 9, [0] * 9, 1, host_keys=ks[:9])
    moved = 0
    for h in hashes(5000):
        before = full.pick_hash_py(h)
        if before != 9:
            moved += less.pick_hash_py(h) != before
    # A few other keys move too: the other hosts' shares (ring points, maglev turns) grow.
    assert moved < 5000 * 0.1


# ---- spread ----

@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_weights_shape_the_spread(policy):
    w = [1, 2, 3, 4]
    lb = LoadBalancer(policy, w, [0] * 4, 1, host_keys=keys(4))
    counts = [0] * 4
    n = 40000
    for h in hashes(n):
        counts[lb.pick_hash_py(h)] += 1
    for i in range(4):
        assert counts[i] / n == pytest.approx(w[i] / 10, abs=0.03)


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_thousand_hosts(policy):
    lb = LoadBalancer(policy, [1] * 1000, [0] * 1000, 1, host_keys=keys(1000))
    seen = [0] * 1000
    for h in hashes(100000):
        seen[lb.pick_hash_py(h)] += 1
    assert min(seen) > 0
    # With the default minimum ring of 1024 points a host of 1,000 gets about 4 points (as in
    # Envoy), so the ring's spread is coarse; Maglev's 65537 slots keep it even.
    assert max(seen) < 100 * (8 if policy == "RING_HASH" else 2)


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_pick_without_hash_is_random(policy):
    lb = LoadBalancer(policy, [1, 1, 1], [0, 0, 0], 3, host_keys=KEYS3)
    assert lb.uses_hash
    assert {lb.pick_py() for _ in range(300)} == {0, 1, 2}


def test_other_policies_ignore_the_hash():
    lb = LoadBalancer("ROUND_ROBIN", [1, 1, 1], [0, 0, 0], 0)
    assert not lb.uses_hash
    assert sorted(lb.pick_hash_py(5) for _ in range(3)) == [0, 1, 2]


def test_default_keys_when_none_are_given():
    a = LoadBalancer("MAGLEV", [1, 1], [0, 0], 1)
    b = LoadBalancer("MAGLEV", [1, 1], [0, 0], 2, host_keys=["#0", "#1"])
    assert all(a.pick_hash_py(h) == b.pick_hash_py(h) for h in hashes(500))


# ---- health, panic, priorities ----

@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_unhealthy_host_is_left_out_and_others_keep_their_keys(policy):
    ks = keys(5)
    lb = LoadBalancer(policy, [1] * 5, [0] * 5, 1, host_keys=ks)
    before = {h: lb.pick_hash_py(h) for h in hashes(3000)}
    lb.set_healthy(2, False)   # 80% healthy: no panic
    moved = 0
    for h, host in before.items():
        now = lb.pick_hash_py(h)
        assert now != 2
        moved += host != 2 and now != host
    assert moved < len(before) * 0.1
    lb.set_healthy(2, True)
    assert all(lb.pick_hash_py(h) == host for h, host in before.items())


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_panic_uses_all_hosts(policy):
    lb = LoadBalancer(policy, [1] * 4, [0] * 4, 1, host_keys=keys(4))
    for i in range(3):
        lb.set_healthy(i, False)   # 25% healthy < 50%: panic, the table covers every host
    assert lb.priority_panic() == [True]
    assert {lb.pick_hash_py(h) for h in hashes(500)} == {0, 1, 2, 3}


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_priority_chosen_from_the_hash(policy):
    # P0 has one host of two healthy: 1.4 * 50 = 70% of the load stays on P0.
    lb = LoadBalancer(policy, [1, 1, 1, 1], [0, 0, 1, 1], 1, host_keys=keys(4),
                      healthy_panic_threshold=0)
    lb.set_healthy(1, False)
    assert lb.priority_loads() == [70, 30]
    for h in hashes(3000):
        host = lb.pick_hash_py(h)
        assert host == 0 if h % 100 + 1 <= 70 else host in (2, 3)


def test_invalid_settings():
    with pytest.raises(ValueError, match="prime"):
        LoadBalancer("MAGLEV", [1], [0], 1, host_keys=KEYS3[:1], table_size=65536)
    with pytest.raises(ValueError, match="minimum_ring_size"):
        LoadBalancer("RING_HASH", [1], [0], 1, host_keys=KEYS3[:1], min_ring_size=100,
                     max_ring_size=10)
    with pytest.raises(ValueError):
        LoadBalancer("RING_HASH", [1], [0], 1, host_keys=KEYS3[:1], hash_function="CRC")
    with pytest.raises(ValueError):
        LoadBalancer("RING_HASH", [1, 1], [0, 0], 1, host_keys=KEYS3[:1])


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_empty_cluster(policy):
    lb = LoadBalancer(policy, [], [], 1, host_keys=[])
    assert lb.pick_hash_py(5) == -1
    assert lb.pick_py() == -1


def test_bench_pick_hashes_uses_the_cdef_path():
    lb = LoadBalancer("RING_HASH", [1, 1, 1], [0, 0, 0], 1, host_keys=KEYS3)
    assert 0 <= lb.bench_pick_hashes(1000) < 3
