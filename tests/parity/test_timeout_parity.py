"""Stream timeouts on fastproxy and real Envoy with the same config and a silent origin: route
idle_timeout, route max_stream_duration, the connection manager's max_stream_duration."""
import socket

import pytest

from helpers import free_port, make_bootstrap, parse_response, raw_request


@pytest.fixture(scope="module")
def silent_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(128)  # the kernel accepts; nothing ever answers
    yield s.getsockname()[1]
    s.close()


def _config(port, admin, origin, hcm_extra=None):
    routes = [
        {"match": {"prefix": "/idle"}, "route": {"cluster": "silent", "idle_timeout": "0.3s"}},
        {"match": {"prefix": "/msd"},
         "route": {"cluster": "silent", "max_stream_duration": {"max_stream_duration": "0.3s"}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "silent", "timeout": "0.6s"}},
    ]
    return make_bootstrap(port, admin, clusters={"silent": [("127.0.0.1", origin)]},
                          virtual_hosts=[{"name": "v", "domains": ["*"], "routes": routes}],
                          hcm_extra=hcm_extra or {})


def _ask(factory, cfg_fn, path, stat):
    port, admin = free_port(), free_port()
    p = factory(cfg_fn(port, admin))
    status, headers, body = parse_response(
        raw_request(port, b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path, timeout=4))
    names = [k.lower() for k, _ in headers]
    return status, body, names, p.stats().get("http.ingress_http." + stat, 0)


@pytest.mark.parametrize("path,stat", [(b"/idle", "downstream_rq_idle_timeout"),
                                       (b"/msd", "downstream_rq_max_duration_reached")])
def test_route_stream_timeouts(path, stat, silent_port, envoy_factory, fastproxy_factory):
    def cfg(port, admin):
        return _config(port, admin, silent_port)
    e = _ask(envoy_factory, cfg, path, stat)
    f = _ask(fastproxy_factory, cfg, path, stat)
    assert f == e
    assert e[0] == 504 and e[3] == 1


def test_connection_manager_max_stream_duration(silent_port, envoy_factory, fastproxy_factory):
    def cfg(port, admin):
        return _config(port, admin, silent_port,
                       {"common_http_protocol_options": {"max_stream_duration": "0.3s"}})
    e = _ask(envoy_factory, cfg, b"/other", "downstream_rq_max_duration_reached")
    f = _ask(fastproxy_factory, cfg, b"/other", "downstream_rq_max_duration_reached")
    assert f == e
    assert e[1] == b"downstream duration timeout"
