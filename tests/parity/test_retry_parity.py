"""Retry policies on fastproxy and real Envoy with the same config and the same scripted origin:
same answers, same number of attempts, same retry stats."""
import pytest

from helpers import free_port, make_bootstrap, parse_response, raw_request
from helpers.scripted import ScriptedOrigin

CASES = {
    # name: (retry policy, origin script, request body)
    "5xx_then_ok": ({"retry_on": "5xx", "num_retries": 2}, [503, 500], b"x"),
    "exhausted": ({"retry_on": "5xx", "num_retries": 1}, [503, 502, 503], b""),
    "gateway_error_skips_500": ({"retry_on": "gateway-error", "num_retries": 2}, [500], b""),
    "retriable_4xx": ({"retry_on": "retriable-4xx", "num_retries": 1}, [409], b""),
    "status_codes": ({"retry_on": "retriable-status-codes", "retriable_status_codes": [418],
                      "num_retries": 1}, [418], b""),
    "reset": ({"retry_on": "reset", "num_retries": 1}, [0], b"body"),
}
# retriable-headers needs a header in the answer: the scripted origin sends none, so the
# 5xx-free "never matches" case checks that nothing is retried.
CASES["retriable_headers_no_match"] = ({"retry_on": "retriable-headers", "num_retries": 2,
                                        "retriable_headers": [{"name": "x-retry",
                                                               "present_match": True}]}, [503], b"")


def _config(port, admin, origin_port, policy):
    policy = dict(policy, retry_back_off={"base_interval": "0.005s"})
    return make_bootstrap(port, admin, clusters={"svc": [("127.0.0.1", origin_port)]},
                          virtual_hosts=[{"name": "v", "domains": ["*"], "routes": [
                              {"match": {"prefix": "/"},
                               "route": {"cluster": "svc", "retry_policy": policy}}]}])


def _run(factory, name):
    policy, script, body = CASES[name]
    o = ScriptedOrigin(script)
    try:
        port, admin = free_port(), free_port()
        p = factory(_config(port, admin, o.port, policy))
        req = (b"POST /r HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
               if body else b"GET /r HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, rbody = parse_response(raw_request(port, req, timeout=5))
        stats = p.stats()
        keys = ["upstream_rq_retry", "upstream_rq_retry_success", "upstream_rq_retry_limit_exceeded",
                "upstream_rq_total", "upstream_rq_completed"]
        picked = {k: stats.get("cluster.svc." + k, 0) for k in keys}
        return status, rbody.replace(b"%d:" % o.port, b"<origin>:"), o.count, picked
    finally:
        o.close()


@pytest.mark.parametrize("name", list(CASES))
def test_retry_parity(name, envoy_factory, fastproxy_factory):
    envoy = _run(envoy_factory, name)
    fast = _run(fastproxy_factory, name)
    assert fast == envoy
