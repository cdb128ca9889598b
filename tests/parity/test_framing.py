"""Parity of HTTP/1.1 message framing through the proxy: keep-alive, pipelining, request bodies
(Content-Length, chunked), the origin's response framings (length, chunked, close-delimited),
HEAD, Expect: 100-continue, Connection: close, absolute-form targets, HTTP/1.0, missing Host."""
from __future__ import annotations

import pytest

from helpers import make_bootstrap
from parity_common import ParityPair, assert_same, describe, req

pytestmark = pytest.mark.parity

# Envoy closes a connection it answered with "connection: close" only after its delayed-close
# timeout (1 s by default), so seeing whether a connection gets closed takes a little longer.
CLOSE_WAIT = 1.5


def config(listen, admin, side):
    routes = [
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "direct"}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "main"}},
    ]
    return make_bootstrap(listen, admin, {"main": [side.origins["o1"].address]},
                          [{"name": "all", "domains": ["*"], "routes": routes}])


@pytest.fixture(scope="module")
def pair():
    with ParityPair(config, origin_names=("o1",)) as p:
        yield p


def get(path, **kw):
    return req("GET", path, **kw)


# ------------------------------------------------------------------------------ connections

def test_keep_alive_sequence(pair):
    parts = [get("/a", headers=[("x-origin-body", "one")]),
             get("/direct"),
             get("/b", headers=[("x-origin-body", "three")]),
             req("POST", "/c", headers=[("Content-Length", "3"), ("x-origin-body", "four")], body=b"xyz")]
    e, f = pair.exchange(parts, responses=4, pause=0.1)
    assert len(e.responses) == 4, describe(e, f)
    assert f.view() == e.view(), describe(e, f)


@pytest.mark.parametrize("n", [2, 5])
def test_pipelined_in_one_write(pair, n):
    data = b"".join(get(f"/p{i}", headers=[("x-origin-body", f"r{i}")]) for i in range(n))
    e, f = pair.exchange(data, responses=n)
    assert len(e.responses) == n, describe(e, f)
    assert f.view() == e.view(), describe(e, f)


@pytest.mark.parametrize("n", [2, 5])
def test_pipelined_mixed_local_and_upstream_in_one_write(pair, n):
    """DIFFERENCE (deliberate): Envoy answers at most two local replies queued from one read and
    then drops the connection ("dispatch error: Too many responses queued"); fastproxy answers
    every pipelined request, in order.  Where Envoy answers, the answers are the same."""
    data = b"".join(get(f"/p{i}", headers=[("x-origin-body", f"r{i}")]) if i % 2 == 0 else get("/direct")
                    for i in range(n))
    bodies = [f"r{i}".encode() if i % 2 == 0 else b"direct" for i in range(n)]
    _assert_all_answered_in_order(pair, data, bodies)


def test_pipelined_local_replies_in_one_write(pair):
    """DIFFERENCE (deliberate): as above, with 5 pipelined direct-response requests: Envoy gives
    2 answers and a close, fastproxy gives 5 answers and keeps the connection."""
    _assert_all_answered_in_order(pair, get("/direct") * 5, [b"direct"] * 5)


def _assert_all_answered_in_order(pair, data, bodies):
    e, f = pair.exchange(data, responses=len(bodies), close_wait=CLOSE_WAIT)
    assert not f.closed, describe(e, f)
    assert [r.body for r in f.responses] == bodies, describe(e, f)
    assert all(r.status == 200 for r in f.responses), describe(e, f)
    want = [r.view() for r in e.responses]
    assert [r.view() for r in f.responses][:len(want)] == want, describe(e, f)


def test_pipelined_with_bodies(pair):
    data = (req("POST", "/b1", headers=[("Content-Length", "5"), ("x-origin-body", "b1")], body=b"hello")
            + req("POST", "/b2", headers=[("Transfer-Encoding", "chunked"), ("x-origin-body", "b2")],
                  body=b"3\r\nabc\r\n0\r\n\r\n")
            + get("/b3", headers=[("x-origin-body", "b3")]))
    assert_same(pair, data, responses=3)


def test_connection_close_from_client(pair):
    assert_same(pair, get("/close", headers=[("Connection", "close"), ("x-origin-body", "bye")]),
                close_wait=CLOSE_WAIT)


def test_connection_close_from_client_direct(pair):
    assert_same(pair, get("/direct", headers=[("Connection", "close")]), close_wait=CLOSE_WAIT)


def test_pipelined_after_connection_close_is_ignored(pair):
    data = get("/direct", headers=[("Connection", "close")]) + get("/direct")
    assert_same(pair, data, responses=2, close_wait=CLOSE_WAIT)


# ------------------------------------------------------------------------------ request bodies

def test_content_length_body(pair):
    assert_same(pair, req("POST", "/cl", headers=[("Content-Length", "11"), ("x-origin-body", "cl")],
                          body=b"hello world"))


def test_content_length_body_split_writes(pair):
    head = req("POST", "/cl2", headers=[("Content-Length", "10"), ("x-origin-body", "cl2")])
    assert_same(pair, [head, b"01234", b"56789"], pause=0.1)


def test_zero_content_length(pair):
    assert_same(pair, req("POST", "/cl0", headers=[("Content-Length", "0"), ("x-origin-body", "z")]))


def test_chunked_body_several_chunks_with_extensions(pair):
    body = b"5;ext=1\r\nhello\r\n1;a;b=\"q\"\r\n \r\nA\r\n0123456789\r\n0;last\r\n\r\n"
    assert_same(pair, req("POST", "/chunked", headers=[("Transfer-Encoding", "chunked"),
                                                       ("x-origin-body", "ch")], body=body))


def test_chunked_body_split_writes(pair):
    head = req("POST", "/chunked2", headers=[("Transfer-Encoding", "chunked"), ("x-origin-body", "ch2")])
    assert_same(pair, [head, b"3\r\nabc\r\n", b"4\r\ndefg\r\n", b"0\r\n\r\n"], pause=0.1)


def test_chunked_body_with_trailers(pair):
    body = b"3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
    assert_same(pair, req("POST", "/trailers", headers=[("Transfer-Encoding", "chunked"),
                                                        ("x-origin-body", "tr")], body=body))


def test_chunked_uppercase_hex_and_leading_zeros(pair):
    body = b"000A\r\n0123456789\r\n00\r\n\r\n"
    assert_same(pair, req("POST", "/hex", headers=[("Transfer-Encoding", "chunked"),
                                                   ("x-origin-body", "hex")], body=body))


def test_expect_100_continue(pair):
    head = req("POST", "/expect", headers=[("Content-Length", "4"), ("Expect", "100-continue"),
                                           ("x-origin-body", "ex")])
    e, f = pair.exchange([head, b"data"], pause=0.3)
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    assert (f.raw.startswith(interim), f.view()) == (e.raw.startswith(interim), e.view()), describe(e, f)


def test_expect_100_continue_body_sent_at_once(pair):
    data = req("POST", "/expect2", headers=[("Content-Length", "4"), ("Expect", "100-continue"),
                                            ("x-origin-body", "ex2")], body=b"data")
    e, f = pair.exchange(data)
    assert (f.raw[:40], f.view()) == (e.raw[:40], e.view()), describe(e, f)


# ------------------------------------------------------------------------------ response framings

def test_chunked_response_from_origin(pair):
    assert_same(pair, get("/rc", headers=[("x-origin-chunked", "1"), ("x-origin-body-size", "40"),
                                          ("x-origin-chunk-size", "7")]))


def test_chunked_response_from_origin_streamed(pair):
    assert_same(pair, get("/rcs", headers=[("x-origin-chunked", "1"), ("x-origin-body-size", "30"),
                                           ("x-origin-chunk-size", "10"), ("x-origin-chunk-delay-ms", "50")]))


def test_close_delimited_response_from_origin(pair):
    assert_same(pair, get("/nolen", headers=[("x-origin-no-length", "1"), ("x-origin-body-size", "25")]),
                close_wait=CLOSE_WAIT)


def test_close_delimited_response_then_next_request(pair):
    parts = [get("/nolen2", headers=[("x-origin-no-length", "1"), ("x-origin-body", "first")]),
             get("/direct")]
    assert_same(pair, parts, pause=0.3, responses=2, close_wait=CLOSE_WAIT)


def test_origin_connection_close_response(pair):
    assert_same(pair, get("/oclose", headers=[("x-origin-close", "1"), ("x-origin-body", "oc")]),
                close_wait=CLOSE_WAIT)


def test_large_response_body(pair):
    assert_same(pair, get("/big", headers=[("x-origin-body-size", "300000")]))


def test_large_chunked_response_body(pair):
    assert_same(pair, get("/bigc", headers=[("x-origin-body-size", "200000"), ("x-origin-chunked", "1"),
                                            ("x-origin-chunk-size", "65536")]))


def test_head_to_origin(pair):
    assert_same(pair, req("HEAD", "/head", headers=[("x-origin-body-size", "123")]))


def test_head_to_origin_chunked(pair):
    assert_same(pair, req("HEAD", "/headc", headers=[("x-origin-body-size", "10"), ("x-origin-chunked", "1")]))


def test_head_then_get_on_one_connection(pair):
    parts = [req("HEAD", "/h1", headers=[("x-origin-body", "abc")]), get("/h2", headers=[("x-origin-body", "def")])]
    e, f = pair.exchange(parts, head=False, pause=0.2, responses=1)
    # parse by hand: the first response is bodiless
    assert f.raw.count(b"HTTP/1.1 200") == e.raw.count(b"HTTP/1.1 200") == 2, describe(e, f)


# ------------------------------------------------------------------------------ request-line forms

def test_absolute_form_target(pair):
    assert_same(pair, get("http://abs.example/abs?q=1", host="other.example",
                          headers=[("x-origin-body", "abs")]))


def test_absolute_form_target_with_port(pair):
    assert_same(pair, get("http://abs.example:8080/abs2", host="abs.example:8080",
                          headers=[("x-origin-body", "abs2")]))


def test_absolute_form_target_no_path(pair):
    assert_same(pair, get("http://abs.example", host="abs.example", headers=[("x-origin-body", "abs3")]))


def test_absolute_form_https_scheme(pair):
    assert_same(pair, get("https://abs.example/s", host="abs.example", headers=[("x-origin-body", "abs4")]))


def test_http10_request_426(pair):
    assert_same(pair, get("/old", version="HTTP/1.0"), close_wait=CLOSE_WAIT)


def test_http10_request_without_host_426(pair):
    assert_same(pair, get("/old", host=None, version="HTTP/1.0"), close_wait=CLOSE_WAIT)


def test_http10_keep_alive_426(pair):
    assert_same(pair, get("/old", version="HTTP/1.0", headers=[("Connection", "keep-alive")]),
                close_wait=CLOSE_WAIT)


def test_request_without_host(pair):
    assert_same(pair, get("/nohost", host=None), close_wait=CLOSE_WAIT)


def test_request_with_two_hosts(pair):
    assert_same(pair, get("/twohosts", headers=[("Host", "b.example"), ("x-origin-body", "2h")]))


def test_options_star(pair):
    assert_same(pair, req("OPTIONS", "*"), close_wait=CLOSE_WAIT)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
def test_other_methods(pair, method):
    assert_same(pair, req(method, "/m", headers=[("x-origin-body", method)]))


def test_bare_lf_line_endings(pair):
    assert_same(pair, b"GET /lf HTTP/1.1\nHost: a\nx-origin-body: lf\n\n")


def test_leading_empty_lines_before_request(pair):
    assert_same(pair, b"\r\n\r\n" + get("/crlf", headers=[("x-origin-body", "crlf")]), close_wait=CLOSE_WAIT)


def test_header_value_whitespace_trimmed(pair):
    assert_same(pair, b"GET /ws HTTP/1.1\r\nHost: a\r\nX-Pad: \t v a l \t \r\nx-origin-body: ws\r\n\r\n")
