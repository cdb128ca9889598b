"""Route priority selects the circuit breakers' thresholds (DEFAULT or HIGH), as in Envoy."""
import threading

from helpers import free_port, make_bootstrap, parse_response, raw_request
from helpers.scripted import ScriptedOrigin


def _two_at_once(port, path):
    out = []

    def one():
        out.append(parse_response(raw_request(
            port, b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path, timeout=5))[0])
    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(out)


def test_high_priority_route_uses_high_thresholds(fastproxy_factory):
    origin = ScriptedOrigin(delays=[0.4] * 10)
    try:
        port, admin = free_port(), free_port()
        p = fastproxy_factory(make_bootstrap(
            port, admin, clusters={"c": [("127.0.0.1", origin.port)]},
            virtual_hosts=[{"name": "v", "domains": ["*"], "routes": [
                {"match": {"prefix": "/high"}, "route": {"cluster": "c", "priority": "HIGH"}},
                {"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}],
            cluster_extra={"c": {"circuit_breakers": {"thresholds": [
                {"priority": "DEFAULT", "max_requests": 1},
                {"priority": "HIGH", "max_requests": 10}]}}}))
        assert _two_at_once(port, b"/default") == [200, 503]
        assert _two_at_once(port, b"/high") == [200, 200]
        assert p.stats()["cluster.c.upstream_rq_active_overflow"] == 1
    finally:
        origin.close()
