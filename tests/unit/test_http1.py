"""HTTP/1.1 codec (fastproxy._core.http1): exact byte literals in, exact results out.

The expected details and statuses are those Envoy 1.40 gives for the same bytes (its HTTP/1 codec
is Balsa-based); the few places where the codec is deliberately stricter are marked STRICTER.
"""
from __future__ import annotations

import pytest

from fastproxy._core import http1
from fastproxy._core.http1 import (
    KIND_CHUNKED,
    KIND_EOF,
    KIND_LENGTH,
    KIND_NONE,
    RESULT_ERROR,
    RESULT_INCOMPLETE,
    RESULT_NOT_IMPLEMENTED,
    RESULT_TOO_LARGE,
    RESULT_TOO_MANY_HEADERS,
    BodyError,
    BodyReader,
    decode_body,
    forwarded_headers,
    parse_request,
    parse_response,
)


def req(head: bytes, **kw) -> dict:
    return parse_request(head, **kw)


def ok(head: bytes, **kw) -> dict:
    r = parse_request(head, **kw)
    assert r["rc"] > 0, r
    assert r["error"] is None
    return r


def err(head: bytes, detail: str, rc: int = RESULT_ERROR) -> None:
    r = parse_request(head)
    assert (r["rc"], r["error"]) == (rc, detail)


# --------------------------------------------------------------------------------------------
# Request heads: success paths


def test_simple_get():
    raw = b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n"
    r = ok(raw)
    assert r["rc"] == len(raw)
    assert r["method"] == b"GET"
    assert r["path"] == b"/a?b=c"
    assert r["target"] == b"/a?b=c"
    assert r["authority"] is None
    assert r["version"] == (1, 1)
    assert r["headers"] == [(b"Host", b"example.com"), (b"User-Agent", b"t")]
    assert r["body_kind"] == KIND_NONE
    assert r["content_length"] == -1
    assert r["keep_alive"] is True
    assert r["expect_continue"] is False
    assert r["upgrade"] is False
    assert r["is_head"] is False and r["is_connect"] is False
    assert (r["host_index"], r["upgrade_index"], r["te_index"]) == (0, -1, -1)


def test_head_length_excludes_following_bytes():
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    assert ok(raw + b"GET /next HTTP/1.1\r\n")["rc"] == len(raw)


def test_incomplete_at_every_prefix():
    raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n"
    for i in range(len(raw)):
        assert req(raw[:i])["rc"] == RESULT_INCOMPLETE, raw[:i]
    assert ok(raw)["rc"] == len(raw)


def test_bare_lf_line_endings_accepted():
    r = ok(b"GET / HTTP/1.1\nHost: a\n\n")
    assert r["headers"] == [(b"Host", b"a")]


def test_leading_empty_line_ignored():
    assert ok(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")["path"] == b"/"


def test_values_trimmed_both_sides():
    r = ok(b"GET / HTTP/1.1\r\nHost:   a \t \r\nX:\t b c  \r\nEmpty:\r\n\r\n")
    assert r["headers"] == [(b"Host", b"a"), (b"X", b"b c"), (b"Empty", b"")]


def test_tab_and_obs_text_in_values_accepted():
    r = ok(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\tb\xff\x80\r\n\r\n")
    assert r["headers"][1] == (b"X", b"a\tb\xff\x80")


def test_underscore_in_name_accepted():
    assert ok(b"GET / HTTP/1.1\r\nHost: a\r\nx_y: 1\r\n\r\n")["headers"][1] == (b"x_y", b"1")


@pytest.mark.parametrize("method", [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS",
                                    b"TRACE", b"PURGE", b"MSEARCH", b"QUERY", b"UNSUBSCRIBE",
                                    b"PROPFIND", b"LINK", b"SOURCE"])
def test_known_methods(method):
    assert ok(method + b" / HTTP/1.1\r\nHost: a\r\n\r\n")["method"] == method


def test_head_method_flag():
    assert ok(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")["is_head"] is True


def test_host_index_first_host():
    r = ok(b"GET / HTTP/1.1\r\nX: 1\r\nhOsT: a\r\nHost: b\r\n\r\n")
    assert r["host_index"] == 1


def test_empty_host_accepted():
    r = ok(b"GET / HTTP/1.1\r\nHost:\r\n\r\n")
    assert r["headers"][r["host_index"]] == (b"Host", b"")


def test_absolute_form():
    r = ok(b"GET http://b.example:8080/x?y HTTP/1.1\r\nHost: a\r\n\r\n")
    assert r["authority"] == b"b.example:8080"
    assert r["path"] == b"/x?y"
    assert r["target"] == b"http://b.example:8080/x?y"


def test_absolute_form_without_path_and_without_host_header():
    r = ok(b"GET HTTPS://b HTTP/1.1\r\n\r\n")
    assert (r["authority"], r["path"], r["host_index"]) == (b"b", b"/", -1)


def test_options_star():
    assert ok(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")["path"] == b"*"


def test_connect():
    r = ok(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n")
    assert r["is_connect"] is True
    assert r["authority"] == b"a.example:443"
    assert r["path"] == b"a.example:443"
    assert r["body_kind"] == KIND_NONE


def test_connect_without_host_header():
    assert ok(b"CONNECT a:443 HTTP/1.1\r\n\r\n")["host_index"] == -1


def test_connect_content_length_zero_ok():
    assert ok(b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")["body_kind"] == KIND_NONE


# --------------------------------------------------------------------------------------------
# Keep-alive, Expect, Upgrade


@pytest.mark.parametrize("raw, keep_alive", [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, CLOSE \r\n\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nHost: a\r\nConnection: Keep-Alive\r\n\r\n", True),
    (b"GET / HTTP/1.0\r\nHost: a\r\nConnection: x,keep-alive,y\r\n\r\n", True),
    (b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n", False),
])
def test_keep_alive(raw, keep_alive):
    assert ok(raw)["keep_alive"] is keep_alive


def test_http10_without_host_accepted():
    r = ok(b"GET / HTTP/1.0\r\n\r\n")
    assert (r["version"], r["host_index"]) == ((1, 0), -1)


@pytest.mark.parametrize("value, expected", [
    (b"100-continue", True), (b"100-Continue", True), (b" 100-CONTINUE ", True),
    (b"100-continue-x", False), (b"", False),
])
def test_expect_continue(value, expected):
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: " + value + b"\r\nContent-Length: 3\r\n\r\n"
    assert ok(raw)["expect_continue"] is expected


def test_expect_continue_ignored_in_http10():
    raw = b"POST / HTTP/1.0\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    assert ok(raw)["expect_continue"] is False


def test_websocket_upgrade():
    r = ok(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
           b"Upgrade: websocket\r\nContent-Length: 0\r\n\r\n")
    assert r["upgrade"] is True
    assert r["upgrade_index"] == 2
    assert r["body_kind"] == KIND_NONE


def test_upgrade_header_without_connection_token_is_not_upgrade():
    r = ok(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
    assert r["upgrade"] is False and r["upgrade_index"] == 1


def test_upgrade_with_body_framing_is_tunnel():
    # Envoy hands everything after an upgrade head to the tunnel, not to a body.
    r = ok(b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\n"
           b"Content-Length: 5\r\n\r\n")
    assert r["upgrade"] is True and r["body_kind"] == KIND_NONE


def test_h2c_upgrade_ignored():
    r = ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
    assert r["upgrade"] is False


# --------------------------------------------------------------------------------------------
# Framing headers


def test_content_length_body():
    r = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 003\r\n\r\n")
    assert (r["body_kind"], r["content_length"]) == (KIND_LENGTH, 3)


def test_content_length_zero_is_no_body():
    r = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert (r["body_kind"], r["content_length"]) == (KIND_NONE, 0)


def test_content_length_with_spaces():
    assert ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  3 \r\n\r\n")["content_length"] == 3


def test_content_length_max_int64():
    r = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n\r\n")
    assert r["content_length"] == 2**63 - 1


def test_get_with_content_length_has_body():
    assert ok(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")["body_kind"] == KIND_LENGTH


@pytest.mark.parametrize("value", [b"-1", b"+3", b"3a", b"", b"3, 3", b"0x10", b"3 3",
                                   b"99999999999999999999999", b"9223372036854775808"])
def test_invalid_content_length(value):
    # (Envoy takes values up to 2^64-1; beyond int64 we refuse: no real body is that long.)
    err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: " + value + b"\r\n\r\n",
        "http1.codec_error")


@pytest.mark.parametrize("second", [b"3", b"4", b"03"])
def test_duplicate_content_length_refused(second):
    # Envoy 1.40 refuses a second Content-Length even when it is identical.
    err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\ncontent-length: " + second
        + b"\r\n\r\nabc", "http1.codec_error")


@pytest.mark.parametrize("value", [b"chunked", b"CHUNKED", b"Chunked", b" chunked  "])
def test_chunked(value):
    r = ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + value + b"\r\n\r\n")
    assert (r["body_kind"], r["te_index"], r["content_length"]) == (KIND_CHUNKED, 1, -1)


def test_chunked_http10_accepted_as_envoy_does():
    r = ok(b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert r["body_kind"] == KIND_CHUNKED


@pytest.mark.parametrize("te", [
    b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
    b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\nContent-Length: 3\r\n",
    b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
])
def test_content_length_with_transfer_encoding(te):
    err(b"POST / HTTP/1.1\r\nHost: a\r\n" + te + b"\r\n",
        "http1.content_length_and_chunked_not_allowed")


def test_content_length_with_transfer_encoding_http10():
    raw = b"POST / HTTP/1.0\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    err(raw, "http1.content_length_and_chunked_not_allowed")


@pytest.mark.parametrize("te", [
    b"Transfer-Encoding: gzip\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Transfer-Encoding: chunked, chunked\r\n",
    b"Transfer-Encoding: identity\r\n",
    b"Transfer-Encoding: \r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
])
def test_unsupported_transfer_encoding_501(te):
    err(b"POST / HTTP/1.1\r\nHost: a\r\n" + te + b"\r\n", "http1.invalid_transfer_encoding",
        RESULT_NOT_IMPLEMENTED)


def test_connect_with_body_refused():
    err(b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", "http1.body_disallowed")


def test_connect_with_transfer_encoding_501():
    err(b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        "http1.invalid_transfer_encoding", RESULT_NOT_IMPLEMENTED)


# --------------------------------------------------------------------------------------------
# Malformed request heads


def test_missing_host_http11():
    err(b"GET / HTTP/1.1\r\n\r\n", "missing_host_header")


def test_obs_fold_refused():
    # STRICTER: Envoy joins folded lines; picohttpparser cannot, and RFC 9112 allows a 400.
    err(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", "http1.codec_error")
    err(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", "http1.codec_error")


def test_leading_whitespace_before_first_header():
    err(b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", "http1.codec_error")


@pytest.mark.parametrize("line", [b"X(y: a", b"X y: a", b"X : a", b"X\t: a", b": a", b"XYZ",
                                  b"X\x80: a", b"X\"y: a", b"X{y}: a"])
def test_invalid_header_name(line):
    err(b"GET / HTTP/1.1\r\nHost: a\r\n" + line + b"\r\n\r\n", "http1.codec_error")


@pytest.mark.parametrize("value", [b"a\x01b", b"a\x7fb", b"a\x00b", b"a\rb", b"\x1b[0m", b"a\x0bb"])
def test_invalid_characters_in_value(value):
    err(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + value + b"\r\n\r\n", "http1.invalid_characters")


@pytest.mark.parametrize("method", [b"FOO", b"get", b"G(T", b"M-SEARCH", b"PRI", b"LABEL"])
def test_unknown_or_invalid_method(method):
    err(method + b" / HTTP/1.1\r\nHost: a\r\n\r\n", "http1.codec_error")


@pytest.mark.parametrize("version", [b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1",
                                     b"HTTP/1.10", b"HTTP/1.1 "])
def test_bad_version(version):
    # (Envoy maps other HTTP/x.y to HTTP/1.0 and then 426s or serves them; we refuse.)
    err(b"GET / " + version + b"\r\nHost: a\r\n\r\n", "http1.codec_error")


@pytest.mark.parametrize("target, detail", [
    (b"/a\x01b", "http1.invalid_characters"),
    (b"/\x0c", "http1.invalid_characters"),
    (b"/\x7f", "http1.invalid_characters"),
    (b"/a\xffb", "http1.codec_error"),
    (b"x", "http1.codec_error"),
    (b"?a", "http1.codec_error"),
    (b"http://a@@b/", "http1.codec_error"),
    (b"http:/a", "http1.codec_error"),
    (b"1http://a/", "http1.codec_error"),
    (b"http://a b/", "http1.codec_error"),
    (b"ftp://b/", "http1.invalid_scheme"),
    (b"ht1p://b/", "http1.invalid_scheme"),
    (b"http:///x", "http1.invalid_url"),
    (b"*", "http1.invalid_url"),
])
def test_invalid_target(target, detail):
    err(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n", detail)


@pytest.mark.parametrize("target", [b"/x", b"a", b"http://a:80/", b"a:443/x", b":443", b"a:"])
def test_invalid_connect_target(target):
    err(b"CONNECT " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n", "http1.invalid_url")


def test_space_in_target():
    err(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", "http1.codec_error")


def test_error_order_framing_before_target_semantics():
    # Envoy checks CL+TE before the absolute URL's scheme.
    err(b"GET ftp://b/ HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "http1.content_length_and_chunked_not_allowed")


# --------------------------------------------------------------------------------------------
# Limits


def test_head_too_large_while_incomplete():
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 100
    assert req(raw, max_header_bytes=64) == {"rc": RESULT_TOO_LARGE,
                                             "error": "http1.headers_too_large"}
    assert req(raw, max_header_bytes=len(raw))["rc"] == RESULT_INCOMPLETE


def test_head_too_large_complete():
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 61 * 1024 + b"\r\n\r\n"
    err(raw, "http1.headers_too_large", RESULT_TOO_LARGE)
    assert req(raw, max_header_bytes=len(raw))["rc"] == len(raw)


def _many(n: int) -> bytes:
    return b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X%d: 1\r\n" % i for i in range(n - 1)) + b"\r\n"


def test_100_headers_ok():
    assert len(ok(_many(100))["headers"]) == 100


@pytest.mark.parametrize("n", [101, 128, 129, 300])
def test_too_many_headers(n):
    err(_many(n), "http1.too_many_headers", RESULT_TOO_MANY_HEADERS)


def test_bad_header_before_the_101st_is_a_400():
    raw = (b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: 1\r\n"
           + b"".join(b"X%d: 1\r\n" % i for i in range(200)) + b"\r\n")
    err(raw, "http1.codec_error")


# --------------------------------------------------------------------------------------------
# Responses


def resp(raw: bytes, **kw) -> dict:
    return parse_response(raw, **kw)


def test_response_content_length():
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    r = resp(raw + b"hello")
    assert r["rc"] == len(raw)
    assert (r["status"], r["reason"], r["body_kind"], r["content_length"], r["keep_alive"]) == (
        200, b"OK", KIND_LENGTH, 5, True)


def test_response_chunked():
    r = resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert (r["body_kind"], r["te_index"]) == (KIND_CHUNKED, 0)


def test_response_until_close():
    r = resp(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n")
    assert (r["body_kind"], r["keep_alive"]) == (KIND_EOF, False)


@pytest.mark.parametrize("status", [100, 102, 103, 204, 304])
def test_response_without_body(status):
    r = resp(b"HTTP/1.1 %d X\r\n\r\n" % status)
    assert (r["status"], r["body_kind"], r["keep_alive"]) == (status, KIND_NONE, True)


def test_response_304_with_content_length_has_no_body():
    r = resp(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n")
    assert (r["body_kind"], r["content_length"]) == (KIND_NONE, 10)


def test_response_to_head_has_no_body():
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    assert resp(raw, is_head_request=True)["body_kind"] == KIND_NONE
    r = resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", is_head_request=True)
    assert r["body_kind"] == KIND_NONE
    r = resp(b"HTTP/1.1 200 OK\r\n\r\n", is_head_request=True)
    assert (r["body_kind"], r["keep_alive"]) == (KIND_NONE, True)


def test_response_101_upgrade():
    r = resp(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert (r["upgrade"], r["body_kind"]) == (True, KIND_NONE)


@pytest.mark.parametrize("raw, keep_alive", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n", True),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n", False),  # until close
])
def test_response_keep_alive(raw, keep_alive):
    assert resp(raw)["keep_alive"] is keep_alive


def test_response_status_line_without_reason():
    raw = b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n"
    r = resp(raw + b"ok")
    assert (r["rc"], r["status"], r["reason"], r["content_length"]) == (len(raw), 200, b"", 2)
    r = resp(b"HTTP/1.1 200 \r\n\r\n")
    assert (r["status"], r["reason"]) == (200, b"")
    assert resp(b"HTTP/1.1 200\r")["rc"] == RESULT_INCOMPLETE


def test_response_incomplete_at_every_prefix():
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\n"
    for i in range(len(raw)):
        assert resp(raw[:i])["rc"] == RESULT_INCOMPLETE, raw[:i]


@pytest.mark.parametrize("raw, rc, detail", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", RESULT_ERROR,
     "http1.content_length_and_chunked_not_allowed"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", RESULT_NOT_IMPLEMENTED,
     "http1.invalid_transfer_encoding"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", RESULT_ERROR,
     "http1.codec_error"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", RESULT_ERROR, "http1.codec_error"),
    (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", RESULT_ERROR, "http1.codec_error"),
    (b"HTTP/1.1 200 OK\r\nX: a\x01\r\n\r\n", RESULT_ERROR, "http1.invalid_characters"),
    (b"HTTP/1.1 200 OK\r\nX y: a\r\n\r\n", RESULT_ERROR, "http1.codec_error"),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", RESULT_ERROR,
     "http1.content_length_not_allowed"),
    (b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", RESULT_ERROR,
     "http1.transfer_encoding_not_allowed"),
    (b"HTTP/1.1 099 X\r\n\r\n", RESULT_ERROR, "http1.codec_error"),
    (b"HTTP/1.1 2000 X\r\n\r\n", RESULT_ERROR, "http1.codec_error"),
    (b"HTTP/2.0 200 OK\r\n\r\n", RESULT_ERROR, "http1.codec_error"),
    (b"HTTP/1.2 200 OK\r\n\r\n", RESULT_ERROR, "http1.codec_error"),
    (b"HTTP/1.1 200 O\x01K\r\n\r\n", RESULT_ERROR, "http1.invalid_characters"),
    (b"HTTP/1.1 20x\r\n\r\n", RESULT_ERROR, "http1.codec_error"),
    (b"garbage\r\n\r\n", RESULT_ERROR, "http1.codec_error"),
])
def test_bad_responses(raw, rc, detail):
    assert resp(raw) == {"rc": rc, "error": detail}


def test_response_204_with_zero_content_length_ok():
    assert resp(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")["body_kind"] == KIND_NONE


def test_response_too_large_and_too_many():
    big = b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200
    assert resp(big, max_header_bytes=100) == {"rc": RESULT_TOO_LARGE,
                                               "error": "http1.headers_too_large"}
    many = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X%d: 1\r\n" % i for i in range(101)) + b"\r\n"
    assert resp(many) == {"rc": RESULT_TOO_MANY_HEADERS, "error": "http1.too_many_headers"}


# --------------------------------------------------------------------------------------------
# Hop-by-hop headers


def test_hop_by_hop_dropped():
    raw = (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret , close\r\n"
           b"Keep-Alive: 5\r\nProxy-Connection: x\r\nTE: gzip\r\nUpgrade: websocket\r\n"
           b"x-secret: s\r\nX-Other: o\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert forwarded_headers(raw) == [(b"Host", b"a"), (b"X-Other", b"o")]


def test_te_trailers_kept():
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n"
    assert forwarded_headers(raw) == [(b"Host", b"a"), (b"TE", b"trailers")]


def test_upgrade_kept_when_tunnelling():
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    assert forwarded_headers(raw, keep_upgrade=True) == [(b"Host", b"a"), (b"Upgrade", b"websocket")]
    assert forwarded_headers(raw) == [(b"Host", b"a")]


# --------------------------------------------------------------------------------------------
# Bodies: content-length


def test_length_body_exact():
    assert decode_body(KIND_LENGTH, 5, [b"hello"]) == (b"hello", True, b"")


def test_length_body_split_and_pipelined():
    assert decode_body(KIND_LENGTH, 5, [b"he", b"llo", b"GET"]) == (b"hello", True, b"GET")
    assert decode_body(KIND_LENGTH, 5, [b"hel", b"loGET /"]) == (b"hello", True, b"GET /")


def test_length_body_incomplete():
    assert decode_body(KIND_LENGTH, 5, [b"hel"]) == (b"hel", False, b"")


def test_length_zero_and_none_complete_at_once():
    assert decode_body(KIND_LENGTH, 0, [b"GET"]) == (b"", True, b"GET")
    assert decode_body(KIND_NONE, -1, [b"GET"]) == (b"", True, b"GET")


def test_eof_body_never_completes():
    assert decode_body(KIND_EOF, -1, [b"a", b"", b"bc"]) == (b"abc", False, b"")


def test_huge_content_length_counts_down():
    r = BodyReader(KIND_LENGTH, 2**63 - 1)
    assert r.feed(b"abc") == (b"abc", False, b"")


# --------------------------------------------------------------------------------------------
# Bodies: chunked

CHUNKED = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"


def test_chunked_simple():
    assert decode_body(KIND_CHUNKED, -1, [CHUNKED]) == (b"hello world", True, b"")


def test_chunked_pipelined_leftover_exact():
    assert decode_body(KIND_CHUNKED, -1, [CHUNKED + NEXT]) == (b"hello world", True, NEXT)


def test_chunked_consumed_and_in_place_layout():
    r = BodyReader(KIND_CHUNKED)
    body, done, rest = r.feed(CHUNKED + NEXT)
    assert (body, done, rest) == (b"hello world", True, NEXT)
    assert r.feed(b"more") == (b"", True, b"more")


def test_chunked_split_at_every_boundary():
    data = CHUNKED + NEXT
    for i in range(len(data) + 1):
        assert decode_body(KIND_CHUNKED, -1, [data[:i], data[i:]]) == (b"hello world", True, NEXT), i


def test_chunked_split_at_every_pair_of_boundaries():
    data = b"3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n" + b"NEXT"
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            got = decode_body(KIND_CHUNKED, -1, [data[:i], data[i:j], data[j:]])
            assert got == (b"abc", True, b"NEXT"), (i, j)


def test_chunked_byte_by_byte():
    data = CHUNKED + NEXT
    assert decode_body(KIND_CHUNKED, -1, [data[i:i + 1] for i in range(len(data))]) == (
        b"hello world", True, NEXT)


def test_chunked_incomplete():
    assert decode_body(KIND_CHUNKED, -1, [b"5\r\nhel"]) == (b"hel", False, b"")
    assert decode_body(KIND_CHUNKED, -1, [b"5\r\nhello\r\n0\r\n"]) == (b"hello", False, b"")
    assert decode_body(KIND_CHUNKED, -1, [b"5\r\nhello\r\n0\r\n\r"]) == (b"hello", False, b"")


@pytest.mark.parametrize("data", [
    b"5;name=value\r\nhello\r\n0\r\n\r\n",
    b"5 ;name\r\nhello\r\n0\r\n\r\n",
    b"5\t; a=\"b c\"\r\nhello\r\n0\r\n\r\n",
    b"5 junk\r\nhello\r\n0\r\n\r\n",
    b"5;\x01\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n0;last=1\r\n\r\n",
    b"00005\r\nhello\r\n000\r\n\r\n",
])
def test_chunk_extensions_ignored(data):
    assert decode_body(KIND_CHUNKED, -1, [data + b"X"]) == (b"hello", True, b"X")


def test_chunk_size_hex_upper_lower():
    assert decode_body(KIND_CHUNKED, -1, [b"a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n"])[0] == (
        b"0123456789" * 2)


@pytest.mark.parametrize("trailers", [
    b"X-T: 1\r\n",
    b"X-T: 1\r\nY: \r\nZ:z\r\n",
    b"X-T: 1\n",       # bare LF, as Envoy accepts
])
def test_chunked_trailers(trailers):
    data = b"3\r\nabc\r\n0\r\n" + trailers + b"\r\n" + NEXT
    assert decode_body(KIND_CHUNKED, -1, [data]) == (b"abc", True, NEXT)


def test_chunked_final_bare_lf_accepted():
    assert decode_body(KIND_CHUNKED, -1, [b"3\r\nabc\r\n0\r\n\nX"]) == (b"abc", True, b"X")


@pytest.mark.parametrize("data, detail, at", [
    (b"0x3\r\nabc\r\n0\r\n\r\n", "http1.codec_error", 1),
    (b"3z\r\nabc\r\n0\r\n\r\n", "http1.codec_error", 1),
    (b"-3\r\nabc\r\n0\r\n\r\n", "http1.codec_error", 0),
    (b" 3\r\nabc\r\n0\r\n\r\n", "http1.codec_error", 0),
    (b"\r\nabc\r\n0\r\n\r\n", "http1.codec_error", 0),
    (b"3\nabc\n0\n\n", "http1.codec_error", 1),
    (b"3\r\r\nabc\r\n0\r\n\r\n", "http1.codec_error", 2),
    (b"3;x\nabc\r\n0\r\n\r\n", "http1.codec_error", 3),
    (b"3\r\nabcX\r\n0\r\n\r\n", "http1.codec_error", 6),    # STRICTER than Envoy
    (b"3\r\nabc\r0\r\n\r\n", "http1.codec_error", 7),
    (b"3\r\nabc\n0\r\n\r\n", "http1.codec_error", 6),
    (b"3\r\nabc\r\n0\r\nX-T 1\r\n\r\n", "http1.codec_error", 14),
    (b"3\r\nabc\r\n0\r\nX-T: \x01\r\n\r\n", "http1.invalid_characters", 16),
    (b"3\r\nabc\r\n0\r\n: v\r\n\r\n", "http1.codec_error", 11),
    (b"3\r\nabc\r\n0\r\nX: a\r\n b\r\n\r\n", "http1.codec_error", 17),  # STRICTER
    (b"3\r\nabc\r\n0\r\n\rX", "http1.codec_error", 12),
])
def test_chunked_framing_errors(data, detail, at):
    with pytest.raises(BodyError) as e:
        decode_body(KIND_CHUNKED, -1, [data])
    assert e.value.args == (detail, at)


def test_chunk_size_overflow():
    # 2^64 and beyond: refused; up to 2^64-1 (leading zeros allowed): accepted.
    with pytest.raises(BodyError):
        decode_body(KIND_CHUNKED, -1, [b"10000000000000000\r\n"])
    with pytest.raises(BodyError):
        decode_body(KIND_CHUNKED, -1, [b"10000000000000003\r\nabc"])
    assert decode_body(KIND_CHUNKED, -1, [b"ffffffffffffffff\r\nabc"]) == (b"abc", False, b"")
    assert decode_body(KIND_CHUNKED, -1, [b"00000000000000000003\r\nabc\r\n0\r\n\r\n"]) == (
        b"abc", True, b"")


def test_chunked_trailers_limit():
    r = BodyReader(KIND_CHUNKED, -1, max_trailer_bytes=16)
    r.feed(b"0\r\nX: 1234567\r\n")
    with pytest.raises(BodyError) as e:
        r.feed(b"Y: 12345678\r\n\r\n")
    assert e.value.args[0] == "http1.headers_too_large"


def test_chunked_error_is_sticky_for_the_caller():
    # After a framing error the caller closes the connection; decoded bytes so far are exact.
    r = BodyReader(KIND_CHUNKED)
    assert r.feed(b"3\r\nab") == (b"ab", False, b"")
    with pytest.raises(BodyError) as e:
        r.feed(b"cXX")
    assert e.value.args == ("http1.codec_error", 1)


# --------------------------------------------------------------------------------------------
# Whole messages, pipelined


def test_pipelined_requests_walk():
    stream = (b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
              b"POST /2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"2\r\nde\r\n0\r\n\r\n"
              b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n"
              b"GET /4 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nZ")
    seen = []
    while stream:
        r = ok(stream)
        stream = stream[r["rc"]:]
        body, done, stream = decode_body(r["body_kind"], r["content_length"], [stream])
        assert done
        seen.append((r["path"], body))
    assert seen == [(b"/1", b"abc"), (b"/2", b"de"), (b"/3", b""), (b"/4", b"Z")]
