"""Hedging (hedge_on_per_try_timeout) on fastproxy and real Envoy: on a per-try timeout the
first attempt keeps running while a second starts; the first answer wins."""
import time

import pytest

from helpers import free_port, make_bootstrap, parse_response, raw_request
from helpers.scripted import ScriptedOrigin


def _config(port, admin, origin_port):
    return make_bootstrap(port, admin, clusters={"svc": [("127.0.0.1", origin_port)]},
                          virtual_hosts=[{"name": "v", "domains": ["*"],
                                          "hedge_policy": {"hedge_on_per_try_timeout": True},
                                          "routes": [{"match": {"prefix": "/"}, "route": {
                                              "cluster": "svc", "timeout": "3s",
                                              "retry_policy": {
                                                  "retry_on": "5xx", "num_retries": 2,
                                                  "per_try_timeout": "0.2s",
                                                  "retry_back_off": {"base_interval": "0.005s",
                                                                     "max_interval": "0.005s"}}}}]}])


def _run(factory, delays, script=()):
    o = ScriptedOrigin(script, delays)
    try:
        port, admin = free_port(), free_port()
        p = factory(_config(port, admin, o.port))
        t0 = time.monotonic()
        status, _, body = parse_response(raw_request(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                                                     timeout=5))
        elapsed = time.monotonic() - t0
        stats = p.stats()
        keys = ["upstream_rq_per_try_timeout", "upstream_rq_retry", "upstream_rq_completed",
                "upstream_rq_200"]
        return (status, body.replace(b"%d:" % o.port, b""), round(elapsed, 1),
                {k: stats.get("cluster.svc." + k, 0) for k in keys})
    finally:
        o.close()


@pytest.mark.parametrize("delays", [
    [0.7, 0],        # the hedge answers first (at ~0.2 s)
    [0.3, 1.0],      # the first attempt answers first (at ~0.3 s), after the hedge started
])
def test_hedge_parity(delays, envoy_factory, fastproxy_factory):
    e = _run(envoy_factory, list(delays))
    f = _run(fastproxy_factory, list(delays))
    assert (f[0], f[1], f[3]) == (e[0], e[1], e[3])
    assert abs(f[2] - e[2]) <= 0.15, (f, e)
