"""Parity of the local rate limit filter and circuit breaker overflows with Envoy: the bytes of
the 429 answer, the x-ratelimit-* headers, the 503 overflow answer and the counters."""
from __future__ import annotations

import threading
import time

import pytest

from helpers import make_bootstrap
from parity_common import describe, ParityPair, assert_same, converse, req

pytestmark = pytest.mark.parity

LRL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ON = {"runtime_key": "rl_on", "default_value": {"numerator": 100}}


def limit(prefix, max_tokens, fill_interval="60s", tokens_per_fill=None, **extra):
    bucket = {"max_tokens": max_tokens, "fill_interval": fill_interval}
    if tokens_per_fill:
        bucket["tokens_per_fill"] = tokens_per_fill
    return {"envoy.filters.http.local_ratelimit": {
        "@type": LRL, "stat_prefix": prefix, "filter_enabled": ON, "filter_enforced": ON,
        "token_bucket": bucket, **extra}}


def config(listen, admin, side):
    routes = [
        {"match": {"prefix": "/plain"}, "route": {"cluster": "main"},
         "typed_per_filter_config": limit("plain", 3, response_headers_to_add=[
             {"header": {"key": "x-local-rate-limit", "value": "true"}}])},
        {"match": {"prefix": "/xrl"}, "route": {"cluster": "main"},
         "typed_per_filter_config": limit("xrl", 2, "5s", 2,
                                          enable_x_ratelimit_headers="DRAFT_VERSION_03")},
        {"match": {"prefix": "/overflow"}, "route": {"cluster": "small"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "main"}},
    ]
    # The filter itself is present but not enabled: only the routes' overrides limit.
    rl = {"name": "envoy.filters.http.local_ratelimit",
          "typed_config": {"@type": LRL, "stat_prefix": "top"}}
    clusters = {"main": [side.origins["o1"].address], "small": [side.origins["o1"].address]}
    return make_bootstrap(listen, admin, clusters,
                          [{"name": "all", "domains": ["*"], "routes": routes}],
                          http_filters=[rl],
                          cluster_extra={"small": {"circuit_breakers": {"thresholds": [
                              {"max_requests": 1}]}}})


@pytest.fixture(scope="module")
def pair():
    with ParityPair(config, origin_names=("o1",)) as p:
        yield p


def test_429_answer_and_counters(pair):
    for i in range(3):
        e, f = assert_same(pair, req("GET", f"/plain/{i}", headers=[("x-origin-body", "ok")]))
        assert e.status == 200
    e, f = assert_same(pair, req("GET", "/plain/3"))
    assert e.status == 429 and e.responses[0].body == b"local_rate_limited"
    for name in ("enabled", "ok", "rate_limited", "enforced"):
        stat = "plain.http_local_rate_limit." + name
        assert pair.fastproxy.stats()[stat] == pair.envoy.stats()[stat], stat
    assert pair.fastproxy.stats()["top.http_local_rate_limit.enabled"] == 0


def test_x_ratelimit_headers_on_proxied_answers(pair):
    # 2 tokens per 5 s: remaining 1 then 0; reset 0 while a token is left, then 3 (2.5 s, up)
    for i in range(2):
        e, f = assert_same(pair, req("GET", f"/xrl/{i}", headers=[("x-origin-body", "ok")]))
        assert e.status == 200
    hdrs = dict(e.responses[0].headers)
    assert (hdrs["x-ratelimit-remaining"], hdrs["x-ratelimit-reset"]) == ("0", "3")


def test_x_ratelimit_headers_on_the_429(pair):
    e, f = pair.exchange(req("GET", "/xrl/limited"))
    assert e.status == f.status == 429
    assert e.responses[0].body == f.responses[0].body == b"local_rate_limited"
    # Envoy puts x-ratelimit-* after content-type (where its encoder filters add headers): the
    # filter hands them over as reply_late_headers.
    assert f.view() == e.view(), describe(e, f)


def test_overflow_answer(pair):
    def slow(side):
        converse(side.listener_port(0), req("GET", "/overflow/slow",
                                            headers=[("x-origin-delay-ms", "700")]))

    threads = [threading.Thread(target=slow, args=(s,)) for s in pair.sides]
    for t in threads:
        t.start()
    time.sleep(0.3)
    e, f = pair.exchange(req("GET", "/overflow/fast"))
    for t in threads:
        t.join()
    assert e.status == f.status == 503
    assert e.responses[0].body == f.responses[0].body
    assert f.view(received=False) == e.view(received=False), describe(e, f)


# --------------------------------------------------------------------------- descriptors


def _desc(entries, max_tokens, fill_interval="60s", tokens_per_fill=None):
    bucket = {"max_tokens": max_tokens, "fill_interval": fill_interval}
    if tokens_per_fill:
        bucket["tokens_per_fill"] = tokens_per_fill
    return {"entries": [{"key": k, "value": v} for k, v in entries], "token_bucket": bucket}


def _header_action(name, key, skip=False):
    return {"request_headers": {"header_name": name, "descriptor_key": key, "skip_if_absent": skip}}


def descriptor_config(listen, admin, side):
    user = {"actions": [_header_action("x-user", "user")]}
    routes = [
        {"match": {"prefix": "/user"}, "route": {"cluster": "main", "rate_limits": [user]}},
        {"match": {"prefix": "/both"}, "route": {"cluster": "main", "rate_limits": [
            user, {"actions": [{"generic_key": {"descriptor_value": "slow"}}]}]}},
        {"match": {"prefix": "/skip"}, "route": {"cluster": "main", "rate_limits": [
            {"actions": [{"generic_key": {"descriptor_key": "route", "descriptor_value": "skip"}},
                         _header_action("x-opt", "opt", skip=True)]}]}},
        {"match": {"prefix": "/ip"}, "route": {"cluster": "main", "rate_limits": [
            {"actions": [{"remote_address": {}}]}]}},
        {"match": {"prefix": "/override"}, "route": {"cluster": "main", "rate_limits": [user]},
         "typed_per_filter_config": {"envoy.filters.http.local_ratelimit": {
             "@type": LRL, "stat_prefix": "override", "filter_enabled": ON, "filter_enforced": ON,
             "token_bucket": {"max_tokens": 1, "fill_interval": "60s"},
             "always_consume_default_token_bucket": False,
             "descriptors": [_desc([("user", "a")], 2)]}}},
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200}},
        {"match": {"prefix": "/"}, "route": {"cluster": "main"}},
    ]
    rl = {"name": "envoy.filters.http.local_ratelimit",
          "typed_config": {"@type": LRL, "stat_prefix": "desc", "filter_enabled": ON,
                           "filter_enforced": ON,
                           "token_bucket": {"max_tokens": 100, "fill_interval": "60s"},
                           "descriptors": [
                               _desc([("user", "a")], 2),
                               _desc([("user", "c")], 2, "30s"),
                               _desc([("generic_key", "slow")], 1),
                               _desc([("route", "skip")], 1),
                               _desc([("route", "skip"), ("opt", "x")], 1),
                               _desc([("remote_address", "127.0.0.1")], 1),
                               _desc([("generic_key", "vh")], 2)]}}
    vhosts = [{"name": "all", "domains": ["*"], "routes": routes, "rate_limits": [
        {"actions": [{"generic_key": {"descriptor_value": "vh"}}]}]}]
    return make_bootstrap(listen, admin, {"main": [side.origins["o1"].address]}, vhosts,
                          http_filters=[rl])


@pytest.fixture(scope="module")
def descriptor_pair():
    with ParityPair(descriptor_config, origin_names=("o1",)) as p:
        yield p


def test_descriptor_statuses(descriptor_pair):
    sequence = (
        [("/user/1", [("x-user", "a")])] * 3 + [("/user/2", [("x-user", "b")])] * 2
        # the slower-filling "slow" bucket is consumed first: when it is empty, c keeps its token
        + [("/both", [("x-user", "c")])] * 2 + [("/user/3", [("x-user", "c")])]
        + [("/skip", [])] * 2 + [("/skip", [("x-opt", "x")])] * 2 + [("/skip", [("x-opt", "y")])]
        + [("/ip", [])] * 2
        + [("/other", [])] * 3  # no route rate_limits: the virtual host's
        + [("/direct", [])] * 3  # no route action: no descriptor
        + [("/override", [("x-user", "a")])] * 3 + [("/override", [("x-user", "b")])] * 2
    )
    statuses = []
    for path, headers in sequence:
        e, f = descriptor_pair.exchange(req("GET", path, headers=headers))
        assert e.status == f.status, (path, headers, describe(e, f))
        statuses.append(e.status)
    assert statuses == ([200, 200, 429] + [200, 200] + [200, 429, 200] + [200, 429, 200, 429, 200]
                        + [200, 429] + [200, 200, 429] + [200] * 3 + [200, 200, 429, 200, 429])
    for name in ("enabled", "ok", "rate_limited", "enforced"):
        for prefix in ("desc", "override"):
            stat = f"{prefix}.http_local_rate_limit.{name}"
            assert descriptor_pair.fastproxy.stats()[stat] == descriptor_pair.envoy.stats()[stat]


def test_remote_address_descriptor_follows_x_forwarded_for(descriptor_pair):
    """With use_remote_address false (the default), the client is the last x-forwarded-for
    entry: a request 'from' 10.9.9.9 does not match the 127.0.0.1 descriptor."""
    statuses = []
    for _ in range(3):
        e, f = descriptor_pair.exchange(req("GET", "/ip", headers=[("x-forwarded-for", "10.9.9.9")]))
        assert e.status == f.status, describe(e, f)
        statuses.append(e.status)
    assert 200 in statuses
