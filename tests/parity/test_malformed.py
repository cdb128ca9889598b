"""Parity on malformed and ambiguous requests: each is sent on a fresh connection, and the
answer (status, headers, body), whether the connection gets closed, and what (if anything) the
origin received are compared.

Where fastproxy is deliberately stricter than Envoy (obs-fold, bare CR in a header value, chunk
data not followed by CRLF, some request-line edge cases), the test asserts fastproxy's own
answer and its docstring records what Envoy does instead."""
from __future__ import annotations

import pytest

from helpers import make_bootstrap
from parity_common import ParityPair, describe, exchange_many

pytestmark = pytest.mark.parity

# Envoy closes after its delayed-close timeout (1 s by default).
CLOSE_WAIT = 1.5


def config(listen, admin, side):
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "main"}}]
    return make_bootstrap(listen, admin, {"main": [side.origins["o1"].address]},
                          [{"name": "all", "domains": ["*"], "routes": routes}])


@pytest.fixture(scope="module")
def pair():
    with ParityPair(config, origin_names=("o1",)) as p:
        yield p


HEAD = b"POST /m HTTP/1.1\r\nHost: a\r\nx-origin-body: ok\r\n"
GET = b"GET /m HTTP/1.1\r\nHost: a\r\nx-origin-body: ok\r\n"

CASES = {
    "cl_and_te": HEAD + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te_and_cl": HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "two_different_cl": HEAD + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "two_identical_cl": HEAD + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "cl_list": HEAD + b"Content-Length: 3, 3\r\n\r\nabc",
    "bad_cl_alpha": HEAD + b"Content-Length: abc\r\n\r\n",
    "bad_cl_negative": HEAD + b"Content-Length: -1\r\n\r\n",
    "bad_cl_plus": HEAD + b"Content-Length: +3\r\n\r\nabc",
    "bad_cl_empty": HEAD + b"Content-Length: \r\n\r\n",
    "bad_cl_hex": HEAD + b"Content-Length: 0x3\r\n\r\nabc",
    "te_gzip": HEAD + b"Transfer-Encoding: gzip\r\n\r\n",
    "te_gzip_chunked": HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te_identity": HEAD + b"Transfer-Encoding: identity\r\n\r\n",
    "te_chunked_twice": HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_chunked_bad_size": HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "te_chunked_negative_size": HEAD + b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
    "te_chunked_size_overflow": HEAD + b"Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\nabc\r\n0\r\n\r\n",
    "te_chunked_size_space": HEAD + b"Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
    "te_chunked_uppercase": HEAD + b"Transfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "nul_in_value": GET + b"X-Bad: a\x00b\r\n\r\n",
    "ctl_in_value": GET + b"X-Bad: a\x01b\r\n\r\n",
    "del_in_value": GET + b"X-Bad: a\x7fb\r\n\r\n",
    "esc_in_value": GET + b"X-Bad: \x1b[0m\r\n\r\n",
    "high_byte_in_value": GET + b"X-Ok: caf\xc3\xa9\r\n\r\n",
    "space_in_header_name": GET + b"X Bad: a\r\n\r\n",
    "space_before_colon": GET + b"X-Bad : a\r\n\r\n",
    "tab_before_colon": GET + b"X-Bad\t: a\r\n\r\n",
    "empty_header_name": GET + b": a\r\n\r\n",
    "header_without_colon": GET + b"XBad\r\n\r\n",
    "paren_in_header_name": GET + b"X(y: a\r\n\r\n",
    "leading_space_first_header": b"GET /m HTTP/1.1\r\n Host: a\r\n\r\n",
    "bad_method_paren": b"G(T /m HTTP/1.1\r\nHost: a\r\n\r\n",
    "unknown_method": b"FOO /m HTTP/1.1\r\nHost: a\r\n\r\n",
    "lowercase_method": b"get /m HTTP/1.1\r\nHost: a\r\n\r\n",
    "space_in_target": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    "ctl_in_target": b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n",
    "high_byte_in_target": b"GET /a\xffb HTTP/1.1\r\nHost: a\r\n\r\n",
    "relative_target": b"GET m HTTP/1.1\r\nHost: a\r\n\r\n",
    "star_target_get": b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
    "ftp_scheme": b"GET ftp://b/ HTTP/1.1\r\nHost: a\r\n\r\n",
    "version_http110": b"GET /m HTTP/1.10\r\nHost: a\r\n\r\n",
    "version_lowercase": b"GET /m http/1.1\r\nHost: a\r\n\r\n",
    "version_garbage": b"GET /m FOO/1.1\r\nHost: a\r\n\r\n",
    "long_header_70k": GET + b"X-Long: " + b"a" * (70 * 1024) + b"\r\n\r\n",
    "long_target_70k": b"GET /" + b"a" * (70 * 1024) + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    "headers_100": b"GET /m HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(99)) + b"\r\n",
    "headers_101": b"GET /m HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(100)) + b"\r\n",
    "headers_200": b"GET /m HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(199)) + b"\r\n",
    "connect_method": b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    "upgrade_websocket_not_configured": GET + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "empty_host": b"GET /m HTTP/1.1\r\nHost: \r\nx-origin-body: ok\r\n\r\n",
    "host_with_space": b"GET /m HTTP/1.1\r\nHost: a b\r\n\r\n",
    "host_with_userinfo": b"GET /m HTTP/1.1\r\nHost: u@a\r\nx-origin-body: ok\r\n\r\n",
    "garbage_line": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 20,
}


STRICTER_CASES = {
    "obs_fold": GET + b"X-Fold: a\r\n b\r\n\r\n",
    "obs_fold_tab": GET + b"X-Fold: a\r\n\tb\r\n\r\n",
    "bare_cr_in_value": GET + b"X-Bad: a\rb\r\n\r\n",
    "chunk_data_not_followed_by_crlf": HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
    "version_http12": b"GET /m HTTP/1.2\r\nHost: a\r\n\r\n",
    "version_http2": b"GET /m HTTP/2.0\r\nHost: a\r\n\r\n",
    "version_09": b"GET /m HTTP/0.9\r\nHost: a\r\n\r\n",
    "truncated_body": HEAD + b"Content-Length: 10\r\n\r\nabc",
    "missing_version": b"GET /m\r\nHost: a\r\n\r\n",
    "two_spaces_after_method": b"GET  /m HTTP/1.1\r\nHost: a\r\n\r\n",
}


def _marked(name: str, data: bytes) -> bytes:
    # the path names the case, so that what the origin got can be attributed to it
    return data.replace(b" /m ", b" /case." + name.encode() + b" ", 1)


@pytest.fixture(scope="module")
def results(pair):
    """All cases sent at once, each on a fresh connection to each proxy (the waits for Envoy's
    delayed close overlap instead of adding up)."""
    cases = {name: _marked(name, data) for name, data in {**CASES, **STRICTER_CASES}.items()}
    return exchange_many(pair, cases, close_wait=CLOSE_WAIT, timeout=2.0)


@pytest.mark.parametrize("name", list(CASES))
def test_malformed(results, name):
    e, f = results[name]
    assert f.view() == e.view(), describe(e, f)


def test_truncated_body_then_wait(results):
    """The client announces 10 bytes and sends 3: neither proxy answers within 2 s, neither
    closes, and the origin got the same (the head, if streamed)."""
    e, f = results["truncated_body"]
    assert f.view() == e.view(), describe(e, f)


# ------------------------------------------------------------------------------ STRICTER cases

def _fastproxy_refused(f):
    return f.status == 400 and f.closed and not f.received


def test_obs_fold_stricter(results):
    """STRICTER: Envoy accepts an obs-folded header line (joins it to the previous value and
    forwards the request: 200 here); fastproxy answers 400 and closes, as RFC 9112 permits."""
    e, f = results["obs_fold"]
    assert e.status == 200, describe(e, f)
    assert _fastproxy_refused(f), describe(e, f)


def test_obs_fold_tab_stricter(results):
    """STRICTER: as test_obs_fold_stricter, with a tab as the fold."""
    e, f = results["obs_fold_tab"]
    assert e.status == 200, describe(e, f)
    assert _fastproxy_refused(f), describe(e, f)


def test_bare_cr_in_value_stricter(results):
    """STRICTER: a bare CR inside a header value; fastproxy refuses with 400 and closes."""
    e, f = results["bare_cr_in_value"]
    assert _fastproxy_refused(f), describe(e, f)


def test_chunk_data_not_followed_by_crlf_stricter(results):
    """STRICTER: chunk data followed by something other than CRLF ("3\\r\\nabcX\\r\\n"). Envoy
    does not check the two bytes after the chunk data and forwards "abc" (200); fastproxy
    answers 400 and closes."""
    e, f = results["chunk_data_not_followed_by_crlf"]
    assert e.status == 200, describe(e, f)
    assert _fastproxy_refused(f), describe(e, f)


@pytest.mark.parametrize("name", ["version_http12", "version_http2", "version_09"])
def test_other_http_versions_stricter(results, name):
    """STRICTER: request-line versions HTTP/x.y other than 1.0/1.1 (HTTP/1.2, HTTP/2.0,
    HTTP/0.9). Envoy treats them as HTTP/1.0 (and so answers 426 Upgrade Required);
    fastproxy refuses them with 400 and closes."""
    e, f = results[name]
    assert e.status == 426, describe(e, f)
    assert _fastproxy_refused(f), describe(e, f)


def test_missing_version_stricter(results):
    """STRICTER: a request line without a version ("GET /m"): Envoy takes it as HTTP/0.9-ish
    HTTP/1.0 and answers 426 Upgrade Required; fastproxy answers 400 and closes."""
    e, f = results["missing_version"]
    assert e.status == 426, describe(e, f)
    assert _fastproxy_refused(f), describe(e, f)


def test_two_spaces_after_method_stricter(results):
    """STRICTER: "GET  /m HTTP/1.1" (two spaces): Envoy accepts and forwards "GET /m";
    fastproxy answers 400 and closes (RFC 9112 request-line grammar has exactly one SP)."""
    e, f = results["two_spaces_after_method"]
    assert e.status == 200, describe(e, f)
    assert _fastproxy_refused(f), describe(e, f)
