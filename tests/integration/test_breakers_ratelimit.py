"""Circuit breakers and the local rate limit filter through real sockets: overflows answered
503 and counted, requests waiting for a connection, token buckets with refill, per-route
overrides, and one bucket shared by all worker processes."""
from __future__ import annotations

import threading
import time

import pytest

from helpers import FastproxyProcess, Origin, free_port, make_bootstrap, parse_response, raw_request

LRL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ON = {"runtime_key": "rl_on", "default_value": {"numerator": 100}}
OVERFLOW = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"


def get(port, path="/", host="a", timeout=5.0):
    data = raw_request(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), timeout=timeout)
    return parse_response(data)


@pytest.fixture(scope="module")
def origin():
    with Origin() as o:
        yield o


def breaker_proxy(origin, thresholds):
    cfg = make_bootstrap(free_port(), free_port(), {"c": [origin.address]},
                         cluster_extra={"c": {"circuit_breakers": {"thresholds": [thresholds]}}})
    return FastproxyProcess(cfg, admin_port=cfg["admin"]["address"]["socket_address"]["port_value"])


def slow_then_fast(port, delay_ms=700):
    """Start a slow request, then (while it is in flight) a fast one; both responses."""
    out = {}

    def slow():
        out["slow"] = get(port, f"/?delay-ms={delay_ms}&body=slow")

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.25)
    t0 = time.monotonic()
    fast = get(port, "/?body=fast")
    waited = time.monotonic() - t0
    t.join()
    return out["slow"], fast, waited


def test_max_requests_overflow_is_503_and_counted(origin):
    with breaker_proxy(origin, {"max_requests": 1}) as fp:
        slow, fast, _ = slow_then_fast(fp.port)
        assert slow[0] == 200
        status, headers, body = fast
        assert status == 503 and body == OVERFLOW
        st = fp.stats()
        # Envoy 1.40 counts a max_requests overflow as upstream_rq_active_overflow
        assert st["cluster.c.upstream_rq_active_overflow"] + \
            st["cluster.c.upstream_rq_pending_overflow"] == 1
        assert st["cluster.c.circuit_breakers.default.rq_open"] == 0  # nothing in flight now


def test_max_connections_makes_the_request_wait(origin):
    with breaker_proxy(origin, {"max_connections": 1}) as fp:
        slow, fast, waited = slow_then_fast(fp.port)
        assert slow[0] == 200 and fast[0] == 200 and fast[2] == b"fast"
        assert waited > 0.2  # it waited for the busy connection
        st = fp.stats()
        assert st["cluster.c.upstream_cx_overflow"] == 1
        assert st["cluster.c.circuit_breakers.default.cx_open"] == 1  # the one connection is open


def test_no_room_to_wait_is_503(origin):
    with breaker_proxy(origin, {"max_connections": 1, "max_pending_requests": 0}) as fp:
        slow, fast, waited = slow_then_fast(fp.port)
        assert fast[0] == 503 and fast[2] == OVERFLOW and waited < 0.3
        assert fp.stats()["cluster.c.upstream_rq_pending_overflow"] >= 1


def test_remaining_gauges_with_track_remaining(origin):
    with breaker_proxy(origin, {"max_requests": 5, "track_remaining": True}) as fp:
        assert get(fp.port)[0] == 200
        st = fp.stats()
        assert st["cluster.c.circuit_breakers.default.remaining_rq"] == 5
        assert st["cluster.c.circuit_breakers.default.remaining_cx"] == 1023
        assert "cluster.c.circuit_breakers.high.remaining_rq" not in st


# --------------------------------------------------------------------------- local rate limit


def rl_config(origin, filter_cfg, vhosts=None):
    rl = {"name": "envoy.filters.http.local_ratelimit",
          "typed_config": {"@type": LRL, "stat_prefix": "rl", "filter_enabled": ON,
                           "filter_enforced": ON, **filter_cfg}}
    return make_bootstrap(free_port(), free_port(), {"c": [origin.address]}, vhosts,
                          http_filters=[rl])


def start(cfg, concurrency=1):
    return FastproxyProcess(cfg, concurrency=concurrency,
                            admin_port=cfg["admin"]["address"]["socket_address"]["port_value"])


def test_fourth_request_is_limited(origin):
    cfg = rl_config(origin, {
        "token_bucket": {"max_tokens": 3, "tokens_per_fill": 3, "fill_interval": "60s"},
        "response_headers_to_add": [{"header": {"key": "x-local-rate-limit", "value": "true"}}],
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03"})
    with start(cfg) as fp:
        answers = [get(fp.port, "/?body=ok") for _ in range(4)]
        assert [a[0] for a in answers] == [200, 200, 200, 429]
        assert [dict(a[1]).get("x-ratelimit-remaining") for a in answers[:3]] == ["2", "1", "0"]
        assert all(dict(a[1])["x-ratelimit-limit"] == "3" for a in answers[:3])
        status, headers, body = answers[3]
        assert body == b"local_rate_limited"
        assert headers[0] == ("x-local-rate-limit", "true")
        assert ("content-type", "text/plain") in headers
        st = fp.stats()
        assert (st["rl.http_local_rate_limit.enabled"], st["rl.http_local_rate_limit.ok"],
                st["rl.http_local_rate_limit.rate_limited"],
                st["rl.http_local_rate_limit.enforced"]) == (4, 3, 1, 1)


def test_tokens_come_back_after_the_fill_interval(origin):
    cfg = rl_config(origin, {"token_bucket": {"max_tokens": 1, "tokens_per_fill": 1,
                                              "fill_interval": "0.4s"}})
    with start(cfg) as fp:
        assert get(fp.port)[0] == 200
        assert get(fp.port)[0] == 429
        time.sleep(0.45)
        assert get(fp.port)[0] == 200
        assert get(fp.port)[0] == 429


def test_per_route_and_virtual_host_overrides(origin):
    def override(prefix, max_tokens):
        return {"envoy.filters.http.local_ratelimit": {
            "@type": LRL, "stat_prefix": prefix, "filter_enabled": ON, "filter_enforced": ON,
            "token_bucket": {"max_tokens": max_tokens, "fill_interval": "60s"}}}

    vhosts = [
        {"name": "strict", "domains": ["strict"], "typed_per_filter_config": override("vh", 2),
         "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]},
        {"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/one"}, "route": {"cluster": "c"},
             "typed_per_filter_config": override("route", 1)},
            {"match": {"prefix": "/"}, "route": {"cluster": "c"}}]},
    ]
    cfg = rl_config(origin, {"token_bucket": {"max_tokens": 3, "fill_interval": "60s"}}, vhosts)
    with start(cfg) as fp:
        assert [get(fp.port, "/one")[0] for _ in range(2)] == [200, 429]
        assert [get(fp.port, "/x", host="strict")[0] for _ in range(3)] == [200, 200, 429]
        assert [get(fp.port, "/other")[0] for _ in range(4)] == [200, 200, 200, 429]
        st = fp.stats()
        assert st["route.http_local_rate_limit.rate_limited"] == 1
        assert st["vh.http_local_rate_limit.ok"] == 2
        assert st["rl.http_local_rate_limit.ok"] == 3


def test_the_bucket_is_shared_by_all_workers(origin):
    cfg = rl_config(origin, {"token_bucket": {"max_tokens": 6, "fill_interval": "60s"}})
    with start(cfg, concurrency=2) as fp:
        results = []
        lock = threading.Lock()

        def client():
            for _ in range(6):
                s = get(fp.port)[0]
                with lock:
                    results.append(s)

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 24
        assert results.count(200) == 6 and results.count(429) == 18
        st = fp.stats()
        assert st["rl.http_local_rate_limit.ok"] == 6
        assert st["rl.http_local_rate_limit.rate_limited"] == 18


# --------------------------------------------------------------------------- descriptors


def get_h(port, path="/", headers=()):
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
    data = raw_request(port, f"GET {path} HTTP/1.1\r\nHost: a\r\n{extra}\r\n".encode())
    return parse_response(data)[0]


def descriptor(entries, max_tokens):
    return {"entries": [{"key": k, "value": v} for k, v in entries],
            "token_bucket": {"max_tokens": max_tokens, "fill_interval": "60s"}}


def descriptor_config(origin, always_consume_default=None):
    user = {"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}
    routes = [
        {"match": {"prefix": "/api"}, "route": {"cluster": "c", "rate_limits": [user]}},
        {"match": {"prefix": "/gk"}, "route": {"cluster": "c", "rate_limits": [
            {"actions": [{"generic_key": {"descriptor_value": "gk"}}]}]}},
        {"match": {"prefix": "/ip"}, "route": {"cluster": "c", "rate_limits": [
            {"actions": [{"remote_address": {}}]}]}},
        {"match": {"prefix": "/"}, "route": {"cluster": "c"}},
    ]
    vhosts = [{"name": "all", "domains": ["*"], "routes": routes, "rate_limits": [
        {"actions": [{"generic_key": {"descriptor_value": "vh"}}]}]}]
    filter_cfg = {"token_bucket": {"max_tokens": 100, "fill_interval": "60s"}, "descriptors": [
        descriptor([("user", "a")], 2),
        descriptor([("generic_key", "gk")], 1),
        descriptor([("generic_key", "vh")], 3),
        descriptor([("remote_address", "127.0.0.1")], 1)]}
    if always_consume_default is not None:
        filter_cfg["always_consume_default_token_bucket"] = always_consume_default
    return rl_config(origin, filter_cfg, vhosts)


def test_descriptor_buckets_limit_only_matching_requests(origin):
    with start(descriptor_config(origin), concurrency=2) as fp:
        a = [get_h(fp.port, "/api", [("x-user", "a")]) for _ in range(3)]
        b = [get_h(fp.port, "/api", [("x-user", "b")]) for _ in range(4)]
        assert (a, b) == ([200, 200, 429], [200] * 4)
        assert [get_h(fp.port, "/api") for _ in range(2)] == [200, 200]  # no descriptor
        assert [get_h(fp.port, "/gk") for _ in range(2)] == [200, 429]
        assert [get_h(fp.port, "/ip") for _ in range(2)] == [200, 429]
        # the route has no rate_limits: the virtual host's apply
        assert [get_h(fp.port, "/other") for _ in range(4)] == [200, 200, 200, 429]
        st = fp.stats()
        assert st["rl.http_local_rate_limit.rate_limited"] == 4


def test_default_bucket_is_consumed_too_unless_told_not_to(origin):
    cfg = descriptor_config(origin)
    cfg_filter = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    rl = cfg_filter["typed_config"]["http_filters"][0]["typed_config"]
    rl["token_bucket"]["max_tokens"] = 2
    with start(cfg) as fp:
        # both x-user: a requests take the default bucket's two tokens
        assert [get_h(fp.port, "/api", [("x-user", "a")]) for _ in range(2)] == [200, 200]
        assert get_h(fp.port, "/api", [("x-user", "b")]) == 429
    rl["always_consume_default_token_bucket"] = False
    with start(cfg) as fp:
        assert [get_h(fp.port, "/api", [("x-user", "a")]) for _ in range(3)] == [200, 200, 429]
        assert [get_h(fp.port, "/api", [("x-user", "b")]) for _ in range(3)] == [200, 200, 429]
