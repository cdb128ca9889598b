"""Tests of the test helpers themselves: the origin, the raw client/parser, the bootstrap
generator and the Envoy runner."""
from __future__ import annotations

import json
import os
import socket
import time

import pytest
import yaml

from helpers import (
    EnvoyProcess,
    IncompleteResponse,
    Origin,
    build_request,
    find_envoy,
    free_port,
    header_value,
    header_values,
    is_listening,
    make_bootstrap,
    parse_response,
    parse_responses,
    raw_request,
    response_end,
    wait_for_listen,
    wait_for_port,
)

MiB = 1 << 20


def get(path="/", headers=(), host="t"):
    return build_request("GET", path, list(headers), host=host)


def roundtrip(port, data, **kw):
    raw = raw_request(port, data, **kw)
    return parse_response(raw, head_request=data.startswith(b"HEAD "))


# ---------------------------------------------------------------------------- parser
class TestParser:
    def test_content_length(self):
        st, hs, body = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabcEXTRA")
        assert st == 200 and body == b"abc"
        assert hs == [("Content-Length", "3"), ("X-A", "b")]

    def test_chunked_with_extensions_and_trailers(self):
        raw = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n")
        assert parse_response(raw) == (201, [("Transfer-Encoding", "chunked")], b"abcde")
        assert response_end(raw) == len(raw)

    def test_close_delimited(self):
        raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"
        assert parse_response(raw)[2] == b"until the end"
        assert response_end(raw) is None
        assert response_end(raw, eof=True) == len(raw)

    def test_head_and_bodiless_statuses(self):
        raw = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
        assert parse_response(raw, head_request=True)[2] == b""
        assert parse_response(b"HTTP/1.1 204 No Content\r\n\r\n")[0] == 204
        assert parse_response(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n")[2] == b""

    def test_interim_responses_skipped(self):
        raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
        assert parse_response(raw) == (200, [("Content-Length", "1")], b"x")

    def test_incomplete(self):
        with pytest.raises(IncompleteResponse):
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        with pytest.raises(IncompleteResponse):
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Le")
        with pytest.raises(ValueError):
            parse_response(b"garbage\r\n\r\n")

    def test_pipelined(self):
        raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        assert [r[0] for r in parse_responses(raw)] == [200, 404]

    def test_header_lookup(self):
        hs = [("Set-Cookie", "a"), ("X", "1"), ("set-cookie", "b")]
        assert header_values(hs, "SET-COOKIE") == ["a", "b"]
        assert header_value(hs, "x") == "1" and header_value(hs, "y", "d") == "d"

    def test_build_request(self):
        assert build_request("POST", "/p", [("X-B", "1")], b"hi", host="h") == (
            b"POST /p HTTP/1.1\r\nHost: h\r\nX-B: 1\r\nContent-Length: 2\r\n\r\nhi")


# ---------------------------------------------------------------------------- ports
def test_ports():
    port = free_port()
    assert not is_listening(port)
    with pytest.raises(TimeoutError):
        wait_for_port("127.0.0.1", port, timeout=0.2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert is_listening(port)
        wait_for_listen(port, timeout=1)
        wait_for_port("127.0.0.1", port, timeout=1)


# ---------------------------------------------------------------------------- origin
class TestOrigin:
    def test_echo_and_raw_head(self, origin):
        req = b"GET /a/b?c=d HTTP/1.1\r\nHost: x\r\nX-Zeta: 1\r\naLpHa: two words \r\nX-Zeta: 2\r\n\r\n"
        st, hs, body = roundtrip(origin.port, req)
        assert st == 200
        assert header_value(hs, "content-type") == "application/json"
        echo = json.loads(body)
        assert echo["method"] == "GET" and echo["path"] == "/a/b?c=d" and echo["version"] == "HTTP/1.1"
        assert echo["headers"] == [["Host", "x"], ["X-Zeta", "1"], ["aLpHa", "two words"], ["X-Zeta", "2"]]
        assert echo["body"] == "" and echo["conn_seq"] == 0
        rec = origin.wait_for_requests(1)[0]
        assert rec.raw_head == req
        assert rec.header("x-zeta") == "1" and rec.header_values("X-ZETA") == ["1", "2"]
        assert origin.last is rec

    def test_request_bodies(self, origin):
        st, _, body = roundtrip(origin.port, build_request("POST", "/", body=b"hello", host="h"))
        assert json.loads(body)["body"] == "hello"
        chunked = (b"PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
        st, _, body = roundtrip(origin.port, chunked)
        echo = json.loads(body)
        assert echo["body"] == "hello world" and echo["body_length"] == 11
        assert origin.last.trailers == [("X-Trailer", "t")]
        assert origin.last.raw_head == chunked[: chunked.index(b"\r\n\r\n") + 4]

    def test_expect_continue(self, origin):
        raw = raw_request(origin.port, b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok")
        assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
        assert json.loads(parse_response(raw)[2])["body"] == "ok"

    def test_status_and_body_size(self, origin):
        st, hs, body = roundtrip(origin.port, get(headers=[("x-origin-status", "503"), ("x-origin-body-size", "1000")]))
        assert st == 503 and body == Origin.pattern(1000)
        assert header_value(hs, "content-length") == "1000"
        st, hs, body = roundtrip(origin.port, get(headers=[("x-origin-body", "hi there")]))
        assert (st, body) == (200, b"hi there")

    def test_control_by_query(self, origin):
        st, hs, body = roundtrip(origin.port, get("/q?status=404&body_size=7&header=X-A:%201&header=X-B:2"))
        assert (st, body) == (404, Origin.pattern(7))
        assert header_value(hs, "x-a") == "1" and header_value(hs, "x-b") == "2"

    def test_response_headers_exact(self, origin):
        raw = raw_request(origin.port, get(headers=[
            ("x-origin-body", "x"), ("x-origin-header", "Set-Cookie: a=1"),
            ("x-origin-header", "Set-Cookie: b=2"), ("x-origin-header", "Content-Type: text/x")]))
        assert raw == (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
                       b"Content-Type: text/x\r\n\r\nx")

    def test_chunked(self, origin):
        raw = raw_request(origin.port, get(headers=[
            ("x-origin-chunked", "1"), ("x-origin-body-size", "100"), ("x-origin-chunk-size", "30")]))
        st, hs, body = parse_response(raw)
        assert header_value(hs, "transfer-encoding") == "chunked" and header_value(hs, "content-length") is None
        assert body == Origin.pattern(100)
        assert raw.endswith(b"\r\n1e\r\n" + Origin.pattern(100)[60:90] + b"\r\na\r\n" + Origin.pattern(100)[90:] + b"\r\n0\r\n\r\n")

    def test_large_bodies(self, origin):
        for extra in ([], [("x-origin-chunked", "1")]):
            st, hs, body = roundtrip(origin.port, get(headers=[("x-origin-body-size", str(MiB)), *extra]), timeout=10)
            assert st == 200 and len(body) == MiB and body == Origin.pattern(MiB)

    def test_slow_stream(self, origin):
        t0 = time.monotonic()
        st, _, body = roundtrip(origin.port, get(headers=[
            ("x-origin-body-size", "4000"), ("x-origin-chunk-size", "1000"), ("x-origin-chunk-delay-ms", "50")]))
        assert body == Origin.pattern(4000) and time.monotonic() - t0 >= 0.15

    def test_connection_close(self, origin):
        t0 = time.monotonic()
        raw = raw_request(origin.port, get(headers=[("x-origin-close", "1")]), read_until_close=True, timeout=5)
        assert time.monotonic() - t0 < 2  # closed by the origin, not by our timeout
        st, hs, _ = parse_response(raw)
        assert st == 200 and header_value(hs, "connection") == "close"
        # the client asking for close is honoured too
        raw = raw_request(origin.port, get(headers=[("Connection", "close")]), read_until_close=True, timeout=5)
        assert header_value(parse_response(raw)[1], "connection") == "close"

    def test_close_delimited(self, origin):
        raw = raw_request(origin.port, get(headers=[("x-origin-no-length", "1"), ("x-origin-body-size", "5000")]),
                          read_until_close=True, timeout=5)
        st, hs, body = parse_response(raw)
        assert header_value(hs, "content-length") is None and body == Origin.pattern(5000)

    def test_delay(self, origin):
        t0 = time.monotonic()
        st, _, _ = roundtrip(origin.port, get(headers=[("x-origin-delay-ms", "300")]))
        assert st == 200 and time.monotonic() - t0 >= 0.3

    def test_drop(self, origin):
        t0 = time.monotonic()
        assert raw_request(origin.port, get(headers=[("x-origin-drop", "1")]), timeout=5) == b""
        assert time.monotonic() - t0 < 2
        assert raw_request(origin.port, get("/?drop=reset"), timeout=5) == b""
        assert len(origin.wait_for_requests(2)) == 2

    def test_drop_after(self, origin):
        raw = raw_request(origin.port, get(headers=[("x-origin-body-size", "100"), ("x-origin-drop-after", "10")]),
                          read_until_close=True, timeout=5)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"Content-Length: 100" in head and body == Origin.pattern(10)
        with pytest.raises(IncompleteResponse):
            parse_response(raw)

    def test_head(self, origin):
        raw = raw_request(origin.port, build_request("HEAD", "/", [("x-origin-body-size", "50")], host="h"))
        assert raw == b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 50\r\n\r\n"

    def test_keepalive_and_pipelining(self, origin):
        data = get("/1") + get("/2", [("x-origin-body-size", "3")]) + get("/3")
        raw = raw_request(origin.port, data, responses=3)
        rs = parse_responses(raw)
        assert [r[0] for r in rs] == [200, 200, 200]
        first, third = json.loads(rs[0][2]), json.loads(rs[2][2])
        assert (first["conn_seq"], third["conn_seq"]) == (0, 2)
        assert first["conn_id"] == third["conn_id"]
        assert [r.path for r in origin.requests] == ["/1", "/2", "/3"]
        assert origin.connections_total == 1

    def test_bad_request(self, origin):
        raw = raw_request(origin.port, b"NONSENSE\r\n\r\n", read_until_close=True)
        assert parse_response(raw)[0] == 400

    def test_http10(self, origin):
        raw = raw_request(origin.port, b"GET / HTTP/1.0\r\n\r\n", read_until_close=True, timeout=5)
        st, hs, body = parse_response(raw)
        assert st == 200 and json.loads(body)["version"] == "HTTP/1.0"

    def test_several_origins(self, origin_factory):
        a, b = origin_factory(), origin_factory()
        assert a.port != b.port
        roundtrip(b.port, get())
        assert len(b.requests) == 1 and len(a.requests) == 0


# ---------------------------------------------------------------------------- bootstrap
def test_make_bootstrap_is_a_valid_v3_bootstrap():
    json_format = pytest.importorskip("google.protobuf.json_format")
    bootstrap_pb2 = pytest.importorskip("envoy.config.bootstrap.v3.bootstrap_pb2")
    pytest.importorskip("envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2")
    pytest.importorskip("envoy.extensions.filters.http.router.v3.router_pb2")
    cfg = make_bootstrap(10000, 9901, {"a": [("127.0.0.1", 1), ("127.0.0.1", 2)], "b": [("127.0.0.1", 3)]},
                         hcm_extra={"common_http_protocol_options": {"idle_timeout": "5s"}},
                         cluster_extra={"b": {"lb_policy": "LEAST_REQUEST"}})
    msg = json_format.ParseDict(cfg, bootstrap_pb2.Bootstrap())
    assert [c.name for c in msg.static_resources.clusters] == ["a", "b"]
    assert msg.static_resources.clusters[1].lb_policy == msg.static_resources.clusters[1].LEAST_REQUEST
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["stat_prefix"] == "ingress_http"
    assert hcm["http_filters"][-1]["typed_config"]["@type"].endswith("router.v3.Router")
    assert hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] == "a"
    assert hcm["common_http_protocol_options"] == {"idle_timeout": "5s"}


# ---------------------------------------------------------------------------- envoy
def test_find_envoy_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("ENVOY_BIN", str(tmp_path / "nope"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        find_envoy()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        find_envoy()


def test_envoy_proxies_to_origin(envoy_bin, origin):
    listen, admin = free_port(), free_port()
    cfg = make_bootstrap(listen, admin, {"origin": [origin.address]})
    with EnvoyProcess(cfg, admin, envoy_bin=envoy_bin) as envoy:
        assert envoy.port == listen and envoy.running()
        st, hs, body = roundtrip(listen, get("/hello?body_size=12", [("X-Test", "1")], host="svc"))
        assert st == 200 and body == Origin.pattern(12)
        assert header_value(hs, "server") == "envoy"
        rec = origin.wait_for_requests(1)[0]
        assert rec.path == "/hello?body_size=12" and rec.header("x-test") == "1"
        assert rec.header("host") == "svc" and rec.header("x-forwarded-proto") == "http"
        # a 1 MiB response streams through
        st, _, body = roundtrip(listen, get(headers=[("x-origin-body-size", str(MiB))]), timeout=10)
        assert st == 200 and body == Origin.pattern(MiB)
        stats = envoy.stats()
        assert stats["cluster.origin.upstream_rq_total"] >= 2
        assert stats["http.ingress_http.downstream_rq_total"] >= 2
        pid = envoy.pid
    assert not envoy.running() and envoy.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_envoy_yaml_config_and_free_admin_port(envoy_bin, origin):
    listen = free_port()
    text = yaml.safe_dump(make_bootstrap(listen, 0, {"o": [origin.address]}))
    with EnvoyProcess(text, envoy_bin=envoy_bin) as envoy:
        assert envoy.admin_port and envoy.admin_port != listen
        assert envoy.admin_get("/ready") == (200, "LIVE\n")
        assert roundtrip(listen, get())[0] == 200


def test_two_envoys_at_once(envoy_bin, origin):
    with EnvoyProcess(make_bootstrap(free_port(), free_port(), {"o": [origin.address]}), envoy_bin=envoy_bin) as e1, \
         EnvoyProcess(make_bootstrap(free_port(), free_port(), {"o": [origin.address]}), envoy_bin=envoy_bin) as e2:
        assert roundtrip(e1.port, get())[0] == 200
        assert roundtrip(e2.port, get())[0] == 200


def test_envoy_bad_config_reports_log(envoy_bin):
    cfg = make_bootstrap(free_port(), free_port(), {"o": [("127.0.0.1", 1)]},
                         cluster_extra={"o": {"lb_policy": "NO_SUCH_POLICY"}})
    with pytest.raises(RuntimeError, match="exited with status"):
        EnvoyProcess(cfg, envoy_bin=envoy_bin, startup_timeout=20).start()
