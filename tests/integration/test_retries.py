"""Route retry policies through real sockets: which attempts reach which origin, what the client
gets, and Envoy's retry stats."""
import socket
import time

from helpers import free_port, make_bootstrap, parse_response, raw_request
from helpers.scripted import ScriptedOrigin


def _start(fastproxy_factory, origins, retry_policy, lb="ROUND_ROBIN"):
    port, admin = free_port(), free_port()
    cfg = make_bootstrap(
        port, admin, clusters={"svc": [("127.0.0.1", o.port) for o in origins]},
        virtual_hosts=[{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "svc", "retry_policy": retry_policy}}]}],
        cluster_extra={"svc": {"lb_policy": lb}})
    return fastproxy_factory(cfg)


def _get(port, body=b""):
    req = (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
           if body else b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    return parse_response(raw_request(port, req, timeout=5))


def test_retry_on_5xx_replays_the_body(fastproxy_factory):
    o = ScriptedOrigin([503, 503])
    try:
        p = _start(fastproxy_factory, [o], {"retry_on": "5xx", "num_retries": 2,
                                            "retry_back_off": {"base_interval": "0.01s"}})
        status, _, body = _get(p.port, b"payload")
        assert status == 200 and body.endswith(b":payload")
        assert o.count == 3
        stats = p.stats()
        assert stats["cluster.svc.upstream_rq_retry"] == 2
        assert stats["cluster.svc.upstream_rq_retry_success"] == 1
    finally:
        o.close()


def test_retries_exhausted_pass_the_last_answer_through(fastproxy_factory):
    o = ScriptedOrigin([503, 503, 503])
    try:
        p = _start(fastproxy_factory, [o], {"retry_on": "5xx", "num_retries": 1,
                                            "retry_back_off": {"base_interval": "0.01s"}})
        status, _, body = _get(p.port)
        assert status == 503 and body.startswith(b"%d:" % o.port)
        assert o.count == 2
        assert p.stats()["cluster.svc.upstream_rq_retry_limit_exceeded"] == 1
    finally:
        o.close()


def test_gateway_error_does_not_retry_500(fastproxy_factory):
    o = ScriptedOrigin([500])
    try:
        p = _start(fastproxy_factory, [o], {"retry_on": "gateway-error", "num_retries": 3})
        status, _, _ = _get(p.port)
        assert status == 500 and o.count == 1
    finally:
        o.close()


def test_reset_and_connect_failure_retry_to_another_host(fastproxy_factory):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens: connection refused
    good = ScriptedOrigin()

    class Dead:
        port = dead_port
    try:
        p = _start(fastproxy_factory, [Dead, good],
                   {"retry_on": "connect-failure", "num_retries": 2,
                    "retry_back_off": {"base_interval": "0.01s"},
                    "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                                              "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
                    "host_selection_retry_max_attempts": 5})
        for _ in range(6):
            status, _, body = _get(p.port)
            assert status == 200 and body.startswith(b"%d:" % good.port)
    finally:
        good.close()


def test_per_try_timeout_retries_then_504(fastproxy_factory):
    o = ScriptedOrigin()
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)  # accepts (kernel backlog) and never answers

    class Hang:
        port = hang.getsockname()[1]
    try:
        p = _start(fastproxy_factory, [Hang], {"retry_on": "5xx", "num_retries": 1,
                                              "per_try_timeout": "0.2s",
                                              "retry_back_off": {"base_interval": "0.01s"}})
        t0 = time.monotonic()
        status, _, body = _get(p.port)
        elapsed = time.monotonic() - t0
        assert status == 504 and body == b"upstream request timeout"
        assert 0.35 < elapsed < 2.0
        stats = p.stats()
        assert stats["cluster.svc.upstream_rq_per_try_timeout"] == 2
        assert stats["cluster.svc.upstream_rq_retry"] == 1
    finally:
        hang.close()
        o.close()


def test_per_try_idle_timeout_retries_a_silent_upstream(fastproxy_factory):
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)  # accepted by the kernel, never answered

    class Hang:
        port = hang.getsockname()[1]
    good = ScriptedOrigin()
    try:
        p = _start(fastproxy_factory, [Hang, good],
                   {"retry_on": "5xx", "num_retries": 1, "per_try_idle_timeout": "0.2s",
                    "retry_back_off": {"base_interval": "0.01s"}})
        t0 = time.monotonic()
        answers = [_get(p.port) for _ in range(2)]  # round robin: one of them hits Hang first
        assert [a[0] for a in answers] == [200, 200]
        assert all(a[2].startswith(b"%d:" % good.port) for a in answers)
        assert time.monotonic() - t0 < 3
        assert p.stats()["cluster.svc.upstream_rq_per_try_idle_timeout"] >= 1
    finally:
        hang.close()
        good.close()
