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
