"""Parity of what a client gets when the upstream fails: connection refused, the origin closing
or resetting without answering, a route timeout, an invalid response, a truncated body."""
from __future__ import annotations

import pytest

from helpers import free_port, make_bootstrap
from parity_common import ParityPair, RawServer, assert_same, req

pytestmark = pytest.mark.parity

CLOSE_WAIT = 1.5


def config(listen, admin, side):
    clusters = {
        "main": [side.origins["o1"].address],
        "refused": [("127.0.0.1", side.extra["refused_port"])],
        "garbage": [side.extra["garbage"].address],
        "badstatus": [side.extra["badstatus"].address],
        "truncated_head": [side.extra["truncated_head"].address],
        "http10": [side.extra["http10"].address],
    }
    routes = [
        {"match": {"prefix": "/refused"}, "route": {"cluster": "refused"}},
        {"match": {"prefix": "/timeout"}, "route": {"cluster": "main", "timeout": "0.3s"}},
        {"match": {"prefix": "/garbage"}, "route": {"cluster": "garbage"}},
        {"match": {"prefix": "/badstatus"}, "route": {"cluster": "badstatus"}},
        {"match": {"prefix": "/truncated-head"}, "route": {"cluster": "truncated_head"}},
        {"match": {"prefix": "/http10-upstream"}, "route": {"cluster": "http10"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "main"}},
    ]
    return make_bootstrap(listen, admin, clusters, [{"name": "all", "domains": ["*"], "routes": routes}])


class _Port:
    """A port nothing listens on (picked free; never bound by this test)."""

    def __init__(self):
        self.port = free_port()

    def __enter__(self):
        return self.port

    def __exit__(self, *exc):
        pass


@pytest.fixture(scope="module")
def pair():
    servers = {
        "refused_port": _Port,
        "garbage": lambda: RawServer(b"this is not http\r\n\r\n"),
        "badstatus": lambda: RawServer(b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n"),
        "truncated_head": lambda: RawServer(b"HTTP/1.1 200 OK\r\nContent-Le"),
        "http10": lambda: RawServer(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold-style body"),
    }
    with ParityPair(config, origin_names=("o1",), servers=servers) as p:
        yield p


def test_connection_refused_503(pair):
    assert_same(pair, req("GET", "/refused"), close_wait=CLOSE_WAIT)


def test_connection_refused_head(pair):
    assert_same(pair, req("HEAD", "/refused"), close_wait=CLOSE_WAIT)


def test_connection_refused_with_request_body(pair):
    assert_same(pair, req("POST", "/refused", headers=[("Content-Length", "4")], body=b"data"),
                close_wait=CLOSE_WAIT)


@pytest.mark.parametrize("how", ["1", "reset"])
def test_upstream_closes_without_answer(pair, how):
    assert_same(pair, req("GET", "/drop", headers=[("x-origin-drop", how)]), close_wait=CLOSE_WAIT)


def test_route_timeout_504(pair):
    assert_same(pair, req("GET", "/timeout", headers=[("x-origin-delay-ms", "1000"), ("x-origin-body", "late")]),
                close_wait=CLOSE_WAIT, timeout=3.0)


def test_route_timeout_not_reached(pair):
    assert_same(pair, req("GET", "/timeout", headers=[("x-origin-delay-ms", "50"), ("x-origin-body", "soon")]),
                close_wait=CLOSE_WAIT)


def test_route_timeout_head(pair):
    assert_same(pair, req("HEAD", "/timeout", headers=[("x-origin-delay-ms", "1000")]),
                close_wait=CLOSE_WAIT, timeout=3.0)


def test_invalid_response_from_upstream(pair):
    assert_same(pair, req("GET", "/garbage"), close_wait=CLOSE_WAIT)


def test_invalid_status_code_from_upstream(pair):
    assert_same(pair, req("GET", "/badstatus"), close_wait=CLOSE_WAIT)


def test_upstream_closes_inside_response_head(pair):
    assert_same(pair, req("GET", "/truncated-head"), close_wait=CLOSE_WAIT)


def test_http10_close_delimited_upstream(pair):
    assert_same(pair, req("GET", "/http10-upstream"), close_wait=CLOSE_WAIT)


def test_truncated_response_body(pair):
    """The origin sends the head and 5 of 20 body bytes, then closes: the client gets the head
    and what arrived, then the connection is closed."""
    assert_same(pair, req("GET", "/trunc", headers=[("x-origin-body-size", "20"), ("x-origin-drop-after", "5")]),
                close_wait=CLOSE_WAIT)


def test_truncated_chunked_response_body(pair):
    assert_same(pair, req("GET", "/truncc", headers=[("x-origin-body-size", "20"), ("x-origin-chunked", "1"),
                                                   ("x-origin-chunk-size", "5"), ("x-origin-drop-after", "12")]),
                close_wait=CLOSE_WAIT)


def test_keep_alive_survives_upstream_failure(pair):
    """After a 503 for a refused upstream, the client's connection serves the next request."""
    parts = [req("GET", "/refused"), req("GET", "/ok", headers=[("x-origin-body", "after")])]
    assert_same(pair, parts, responses=2, pause=0.3, close_wait=CLOSE_WAIT)
