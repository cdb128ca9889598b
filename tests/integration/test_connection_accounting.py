"""Every upstream connection that closes frees its place under max_connections, also when no
request is on it any more (closed after its answer, or while idle)."""
from helpers import free_port, make_bootstrap, parse_response, raw_request


def test_closed_connections_free_their_breaker_slot(origin, fastproxy_factory):
    port, admin = free_port(), free_port()
    p = fastproxy_factory(make_bootstrap(
        port, admin, clusters={"c": [origin.address]},
        cluster_extra={"c": {"circuit_breakers": {"thresholds": [{"max_connections": 2}]}}}))
    for i in range(12):
        # the origin answers with Connection: close, so each request needs a new connection
        status, _, _ = parse_response(raw_request(
            port, b"GET /%d HTTP/1.1\r\nHost: a\r\nx-origin-close: 1\r\n\r\n" % i, timeout=3))
        assert status == 200, i
    stats = p.stats()
    assert stats["cluster.c.upstream_cx_total"] == 12
    assert stats["cluster.c.upstream_cx_overflow"] == 0
