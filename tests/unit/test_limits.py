"""Circuit breakers and the local rate limit filter: config compilation, the shared-memory counts
and token buckets (several "workers" mapping one block), and the main process's derived stats."""
from __future__ import annotations

import time

import pytest

from fastproxy.config import ConfigError, load_dict, model
from fastproxy.config.circuit_breakers import CircuitBreakers, Thresholds
from fastproxy.config.local_ratelimit import LocalRateLimit
from fastproxy.stats import SharedStats, StatsLayout, limits
from fastproxy._core.breakers import (
    CircuitBreakers as NeverTrips,
    bench_request_pair,
    make_circuit_breakers,
    subtract_worker_counts,
)
from fastproxy._core.ratelimit import LocalRateLimit as Bucket, make_request_filters

from helpers import make_bootstrap

LRL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
HCM_PATH = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
ON = {"runtime_key": "rl_on", "default_value": {"numerator": 100}}


def rl_filter(**cfg):
    return {"name": "envoy.filters.http.local_ratelimit",
            "typed_config": {"@type": LRL, "stat_prefix": "rl", **cfg}}


def bootstrap(http_filters=(), vhosts=None, cluster_extra=None):
    return make_bootstrap(10000, 10001, {"c": [("127.0.0.1", 1)], "d": [("127.0.0.1", 2)]},
                          vhosts, http_filters=list(http_filters), cluster_extra=cluster_extra)


def errors_of(d):
    with pytest.raises(ConfigError) as exc:
        load_dict(d)
    return list(exc.value.errors)


# --------------------------------------------------------------------------- config


def test_envoy_default_thresholds_apply_to_every_cluster():
    b = load_dict(bootstrap())
    for i, c in enumerate(b.clusters):
        cb = c.circuit_breakers
        assert cb.slot == i
        for th in cb.thresholds:
            assert (th.max_connections, th.max_pending_requests, th.max_requests,
                    th.max_retries, th.budget_percent) == (1024, 1024, 1024, 3, None)


def test_thresholds_per_priority_and_retry_budget():
    b = load_dict(bootstrap(cluster_extra={"c": {"circuit_breakers": {"thresholds": [
        {"max_connections": 2, "max_requests": 5, "track_remaining": True,
         "retry_budget": {"min_retry_concurrency": 7}},
        {"priority": "HIGH", "max_pending_requests": 0, "max_retries": 9}]}}}))
    default, high = b.clusters[0].circuit_breakers.thresholds
    assert (default.max_connections, default.max_requests, default.track_remaining) == (2, 5, True)
    assert (default.budget_percent, default.min_retry_concurrency) == (20.0, 7)
    assert (high.max_pending_requests, high.max_retries, high.max_connections) == (0, 9, 1024)


def test_per_host_thresholds_refused():
    d = bootstrap(cluster_extra={"c": {"circuit_breakers": {"per_host_thresholds": [
        {"max_connections": 1}]}}})
    assert any("circuit_breakers.per_host_thresholds: not supported" in e for e in errors_of(d))


def test_local_ratelimit_filter_and_per_route_configs():
    vhosts = [{"name": "v", "domains": ["*"],
               "typed_per_filter_config": {"envoy.filters.http.local_ratelimit": {
                   "@type": LRL, "stat_prefix": "vh",
                   "token_bucket": {"max_tokens": 5, "fill_interval": "2s"}}},
               "routes": [{"match": {"prefix": "/r"}, "route": {"cluster": "c"},
                           "typed_per_filter_config": {"envoy.filters.http.local_ratelimit": {
                               "@type": LRL, "stat_prefix": "rl", "filter_enabled": ON,
                               "token_bucket": {"max_tokens": 1, "tokens_per_fill": 2,
                                                "fill_interval": "1s"}}}},
                          {"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]
    d = bootstrap([rl_filter(token_bucket={"max_tokens": 3, "fill_interval": "1s"},
                             filter_enabled=ON, status={"code": 503},
                             enable_x_ratelimit_headers="DRAFT_VERSION_03",
                             response_headers_to_add=[{"header": {"key": "X-Limited",
                                                                  "value": "yes"}}])], vhosts)
    b = load_dict(d)
    h = b.listeners[0].hcm
    top = h.local_ratelimit
    assert h.local_ratelimit_name == "envoy.filters.http.local_ratelimit"
    assert (top.max_tokens, top.tokens_per_fill, top.fill_interval_ms, top.status) == (3, 1, 1000, 503)
    assert top.enabled == (100, 100) and top.enforced is None and top.x_ratelimit_headers
    assert [(x.key, x.value) for x in top.response_headers_to_add] == [("x-limited", "yes")]
    vcfg = h.route_config.virtual_hosts[0].per_filter_config["envoy.filters.http.local_ratelimit"]
    rcfg = h.route_config.virtual_hosts[0].routes[0].per_filter_config[
        "envoy.filters.http.local_ratelimit"]
    assert vcfg.enabled is None and rcfg.fill_rate == 2.0
    # buckets numbered in bootstrap order; configs sharing a stat_prefix share counters
    assert (top.bucket, vcfg.bucket, rcfg.bucket) == (0, 1, 2)
    assert (top.counters, vcfg.counters, rcfg.counters) == (0, 1, 0)
    names = StatsLayout(b).names
    assert "rl.http_local_rate_limit.enabled" in names
    assert "vh.http_local_rate_limit.rate_limited" in names


@pytest.mark.parametrize("cfg, message", [
    ({"descriptors": [{"entries": [{"key": "a", "value": ""}],
                       "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}]},
     "an empty value (any value of the key) is not supported"),
    ({"descriptors": [{"entries": [{"key": "a", "value": "b"}],
                       "token_bucket": {"max_tokens": n, "fill_interval": "1s"}} for n in (1, 2)]},
     "duplicate descriptor in the local rate descriptor: a=b"),
    ({"enable_x_ratelimit_headers": "DRAFT_VERSION_03",
      "token_bucket": {"max_tokens": 1, "fill_interval": "1s"},
      "descriptors": [{"entries": [{"key": "a", "value": "b"}],
                       "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}]},
     "not supported together with descriptors"),
    ({"token_bucket": {"max_tokens": 1, "fill_interval": "0.01s"}},
     "fill timer must be >= 50ms"),
    ({"local_rate_limit_per_downstream_connection": True},
     "only false (buckets shared by all connections) is supported"),
])
def test_local_ratelimit_refusals(cfg, message):
    assert any(message in e for e in errors_of(bootstrap([rl_filter(**cfg)])))


def test_per_route_config_needs_a_token_bucket():
    vhosts = [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "c"},
         "typed_per_filter_config": {"envoy.filters.http.local_ratelimit": {
             "@type": LRL, "stat_prefix": "x"}}}]}]
    errs = errors_of(bootstrap([rl_filter()], vhosts))
    assert any("typed_per_filter_config.envoy.filters.http.local_ratelimit: local rate limit "
               "token bucket must be set for per filter configs" in e for e in errs)


def test_router_must_be_last_and_ratelimit_must_not_be():
    d = bootstrap([rl_filter()])
    filters = d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["http_filters"]
    filters.reverse()
    errs = errors_of(d)
    assert any("must be the last filter in a http filter chain" in e for e in errs)
    assert any("is the last filter in a http filter chain" in e for e in errs)


def test_other_per_filter_config_types_refused():
    vhosts = [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "c"},
         "typed_per_filter_config": {"envoy.filters.http.cors": {
             "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"}}}]}]
    errs = errors_of(bootstrap(vhosts=vhosts))
    assert any("typed_per_filter_config.envoy.filters.http.cors: type "
               "envoy.extensions.filters.http.cors.v3.CorsPolicy not supported" in e for e in errs)


# --------------------------------------------------------------------------- breakers


@pytest.fixture
def block(tmp_path):
    """A stats path with breaker and rate limit blocks for two clusters and two workers."""
    path = str(tmp_path / "fp.stats")
    cb = CircuitBreakers(slot=1)
    cb.thresholds[0] = Thresholds(max_connections=1, max_pending_requests=1, max_requests=2,
                                  max_retries=1, track_remaining=True)
    cb.thresholds[1] = Thresholds(max_requests=1, budget_percent=50.0, min_retry_concurrency=1)
    clusters = [model.Cluster(name="a", circuit_breakers=CircuitBreakers(slot=0)),
                model.Cluster(name="b", circuit_breakers=cb)]
    bs = model.Bootstrap(clusters=clusters)
    limits.create_blocks(bs, path, 2)
    yield path, bs
    limits.close_blocks(path)
    limits.remove_blocks(path)


def test_thresholds_are_shared_by_workers(block):
    path, bs = block
    w0 = make_circuit_breakers(bs.clusters[1], path, 0)
    w1 = make_circuit_breakers(bs.clusters[1], path, 1)
    assert w0.shared and w1.shared
    assert w0.py_try("request") and w1.py_try("request")
    assert not w0.py_try("request") and not w1.py_try("request")  # max_requests 2, all workers
    assert w0.counts() == (0, 0, 2, 0) and w0.my_counts() == (0, 0, 1, 0)
    w1.py_release("request")
    assert w0.py_try("request")
    assert w0.py_try("connection") and not w1.py_try("connection")
    assert w1.py_try("pending") and not w0.py_try("pending")
    assert w0.py_try("retry") and not w1.py_try("retry")
    # the other cluster is untouched
    other = make_circuit_breakers(bs.clusters[0], path, 0)
    assert other.counts() == (0, 0, 0, 0)


def test_release_worker_gives_back_what_it_held(block):
    path, bs = block
    w0 = make_circuit_breakers(bs.clusters[1], path, 0)
    w1 = make_circuit_breakers(bs.clusters[1], path, 1)
    assert w1.py_try("request") and w1.py_try("connection") and w0.py_try("request")
    subtract_worker_counts(limits.cb_path(path), 1)  # worker 1 died
    assert w0.counts() == (0, 0, 1, 0) and w1.my_counts() == (0, 0, 0, 0)
    assert w0.py_try("connection")


def test_retry_budget(block):
    path, bs = block
    w = make_circuit_breakers(bs.clusters[1], path, 0)
    # HIGH: max_requests 1, budget 50% of (requests + pending), at least 1
    assert w.py_try("retry", 1) and not w.py_try("retry", 1)
    w.py_release("retry", 1)
    for _ in range(4):
        w.py_try("pending", 1)
    assert w.py_try("retry", 1) and w.py_try("retry", 1) and not w.py_try("retry", 1)


def test_without_a_block_counts_stay_in_the_process(tmp_path):
    cb = CircuitBreakers(slot=0)
    cb.thresholds[0].max_requests = 1
    b = make_circuit_breakers(model.Cluster(name="x", circuit_breakers=cb), str(tmp_path / "none"), 0)
    assert not b.shared
    assert b.py_try("request") and not b.py_try("request")
    assert make_circuit_breakers(model.Cluster(name="x"), "", 0) is None


def test_derived_gauges(block, tmp_path):
    path, bs = block
    layout = StatsLayout(bs)
    shared = SharedStats.create(path, 3, layout)
    try:
        w = make_circuit_breakers(bs.clusters[1], path, 0)
        assert w.py_try("connection") and w.py_try("request")
        limits.refresh(shared, layout, bs)
        s = shared.as_dict()
        assert s["cluster.b.circuit_breakers.default.cx_open"] == 1
        assert s["cluster.b.circuit_breakers.default.rq_open"] == 0
        assert s["cluster.b.circuit_breakers.default.remaining_cx"] == 0
        assert s["cluster.b.circuit_breakers.default.remaining_rq"] == 1
        assert s["cluster.b.circuit_breakers.default.remaining_pending"] == 1
        assert "cluster.b.circuit_breakers.high.remaining_rq" not in s
        assert "cluster.a.circuit_breakers.default.remaining_rq" not in s
        assert s["cluster.a.circuit_breakers.default.cx_open"] == 0
    finally:
        shared.close()


def test_breaker_cost_is_small(block):
    path, bs = block
    w = make_circuit_breakers(bs.clusters[0], path, 0)
    per_pair = min(bench_request_pair(w, 200_000) for _ in range(3))
    base = min(bench_request_pair(NeverTrips(), 200_000) for _ in range(3))
    assert per_pair - base < 500  # ns; two uncontended atomic adds measure ~20 ns


# --------------------------------------------------------------------------- token buckets


def lrl(**kw):
    cfg = LocalRateLimit(stat_prefix="rl", has_token_bucket=True, max_tokens=3, tokens_per_fill=1,
                         fill_interval_ms=1000, enabled=(100, 100), enforced=(100, 100),
                         x_ratelimit_headers=True)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_bucket_starts_full_and_refills_continuously():
    b = Bucket(lrl(max_tokens=2, tokens_per_fill=1, fill_interval_ms=100))
    assert b.py_remaining() == 2
    assert b.py_consume() and b.py_consume() and not b.py_consume()
    assert b.py_x_headers() == [(b"x-ratelimit-limit", b"2"), (b"x-ratelimit-remaining", b"0"),
                                (b"x-ratelimit-reset", b"1")]
    time.sleep(0.12)
    assert b.py_consume() and not b.py_consume()


def test_reset_header_is_seconds_to_the_next_token_rounded_up():
    # 2 tokens per 5 s: a token every 2.5 s -> reset 3 right after the last one was taken
    b = Bucket(lrl(max_tokens=2, tokens_per_fill=2, fill_interval_ms=5000))
    assert b.py_x_headers()[1:] == [(b"x-ratelimit-remaining", b"2"), (b"x-ratelimit-reset", b"0")]
    b.py_consume()
    b.py_consume()
    assert b.py_x_headers()[1:] == [(b"x-ratelimit-remaining", b"0"), (b"x-ratelimit-reset", b"3")]


def test_buckets_are_shared_through_the_block(tmp_path):
    d = bootstrap([rl_filter(token_bucket={"max_tokens": 3, "fill_interval": "60s"},
                             filter_enabled=ON, filter_enforced=ON)])
    bs = load_dict(d)
    path = str(tmp_path / "fp.stats")
    limits.create_blocks(bs, path, 2)
    try:
        hcm = bs.listeners[0].hcm
        f0 = make_request_filters(hcm, path, 0)
        f1 = make_request_filters(hcm, path, 1)
        b0, b1 = f0.default_limit, f1.default_limit
        taken = [b0.py_consume(), b1.py_consume(), b0.py_consume(), b1.py_consume()]
        assert taken == [True, True, True, False]
        assert b1.py_remaining() == 0
    finally:
        limits.close_blocks(path)
        limits.remove_blocks(path)


def test_no_filter_no_request_filters():
    assert make_request_filters(load_dict(bootstrap()).listeners[0].hcm, "", 0) is None


def test_descriptors_and_rate_limits_compile_and_limit():
    desc = [{"entries": [{"key": "user", "value": v}],
             "token_bucket": {"max_tokens": n, "fill_interval": "60s"}} for v, n in (("a", 1), ("b", 2))]
    vhosts = [{"name": "v", "domains": ["*"],
               "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "vh"}}]}],
               "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c", "rate_limits": [
                   {"actions": [{"request_headers": {"header_name": "X-User",
                                                     "descriptor_key": "user"}}]}]}}]}]
    b = load_dict(bootstrap([rl_filter(filter_enabled=ON, filter_enforced=ON, descriptors=desc,
                                       always_consume_default_token_bucket=False,
                                       token_bucket={"max_tokens": 1, "fill_interval": "60s"})],
                            vhosts))
    hcm = b.listeners[0].hcm
    cfg = hcm.local_ratelimit
    assert [(d.entries, d.max_tokens, d.bucket) for d in cfg.descriptors] == [
        ((("user", "a"),), 1, 1), ((("user", "b"),), 2, 2)]
    assert cfg.always_consume_default is False
    from fastproxy.config.local_ratelimit import num_buckets
    assert num_buckets(b) == 3
    vh = hcm.route_config.virtual_hosts[0]
    assert [a.kind for a in vh.rate_limits[0]] == ["generic_key"]
    action = vh.routes[0].route.rate_limits[0][0]
    assert (action.kind, action.key, action.value) == ("request_headers", "user", "x-user")
