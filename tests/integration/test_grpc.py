"""gRPC through the proxy to an HTTP/2 (h2c) upstream: grpcio clients and server (raw-bytes
messages, tests/helpers/grpc_peers.py), HTTP/1.1 and HTTP/2 curl/raw clients, and nginx as a
plain h2c upstream.

Every test runs against fastproxy and, as the reference the expectations were checked on,
against real Envoy on the same config (the "envoy" parameter, marked `parity`; deselect it
with -m "not parity").
"""
from __future__ import annotations

import copy
import os
import queue
import shutil
import subprocess
import threading
import time

import pytest

grpc = pytest.importorskip("grpc")

from helpers import free_port, make_bootstrap, parse_response, parse_responses, raw_request  # noqa: E402
from helpers.grpc_peers import (  # noqa: E402
    STATUS_BY_CODE,
    GrpcClient,
    GrpcEchoServer,
    NginxH2c,
    grpc_frame,
    grpc_unframe,
)
from helpers.grpc_fixtures import start_proxy  # noqa: E402,F401 (a fixture)

CURL = shutil.which("curl")
T = 10  # seconds: the timeout of every gRPC call unless a test says otherwise
MiB = 1 << 20

HTTP2_UPSTREAM = {
    "typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def server():
    with GrpcEchoServer(max_workers=256) as s:
        yield s


def _second_listener(cfg: dict, port: int, hcm_extra: dict) -> None:
    lst = copy.deepcopy(cfg["static_resources"]["listeners"][0])
    lst["name"] = "listener_trailers"
    lst["address"]["socket_address"]["port_value"] = port
    hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["stat_prefix"] = "trailers_http"
    hcm.update(hcm_extra)
    cfg["static_resources"]["listeners"].append(lst)


def grpc_config(grpc_port: int, h2_port: int | None = None, *, trailers_port: int | None = None):
    """Listener 0 (codec AUTO): /fp.test.Echo/ -> cluster "grpc" (HTTP/2 upstream), everything
    else -> cluster "h2web" (HTTP/2 upstream, nginx) when h2_port is given. With trailers_port,
    a second listener with the same routes whose HTTP/1.1 codec forwards trailers
    (http_protocol_options.enable_trailers)."""
    port, admin = free_port(), free_port()
    clusters = {"grpc": [("127.0.0.1", grpc_port)]}
    routes = [{"match": {"prefix": "/fp.test.Echo/"}, "route": {"cluster": "grpc"}}]
    extra = {"grpc": HTTP2_UPSTREAM}
    if h2_port is not None:
        clusters["h2web"] = [("127.0.0.1", h2_port)]
        extra["h2web"] = HTTP2_UPSTREAM
        routes.append({"match": {"prefix": "/"}, "route": {"cluster": "h2web"}})
    cfg = make_bootstrap(port, admin, clusters,
                         virtual_hosts=[{"name": "v", "domains": ["*"], "routes": routes}],
                         cluster_extra=extra)
    if trailers_port is not None:
        _second_listener(cfg, trailers_port, {"http_protocol_options": {"enable_trailers": True}})
    return cfg


@pytest.fixture
def grpc_proxy(start_proxy, server):
    """(proxy, client) for the gRPC echo server behind the proxy."""
    p = start_proxy(grpc_config(server.port))
    with GrpcClient(p.port) as client:
        yield p, client


def _md(metadata) -> list:
    return [(m.key, m.value) for m in metadata or ()]


def _rpc_error(fn, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as ei:
        fn(*args, **kw)
    return ei.value


# --------------------------------------------------------------------------- unary, metadata


def test_unary(grpc_proxy, server):
    p, c = grpc_proxy
    for payload in (b"", b"hello", os.urandom(100_000)):
        resp, call = c.unary.with_call(payload, timeout=T)
        assert resp == payload
        assert call.code() == grpc.StatusCode.OK
    rec = server.last("Unary")
    md = rec.metadata_dict()
    assert md["user-agent"].startswith("grpc-python/")
    assert "x-request-id" in md  # added by the proxy
    assert md["x-forwarded-proto"] == "http"
    stats = p.stats()
    assert stats["cluster.grpc.upstream_cx_http2_total"] == 1
    assert stats.get("cluster.grpc.upstream_cx_http1_total", 0) == 0
    assert stats["cluster.grpc.upstream_rq_total"] == 3
    assert stats["http.ingress_http.downstream_rq_http2_total"] == 3


def test_metadata_both_ways_with_trailers(grpc_proxy, server):
    _, c = grpc_proxy
    binary = bytes(range(256))
    sent = [("x-echo-one", "1"), ("x-echo-two", "a b,c"), ("x-echo-data-bin", binary),
            ("x-other", "not echoed")]
    resp, call = c.unary.with_call(b"m", metadata=sent, timeout=T)
    assert resp == b"m"
    seen = server.last("Unary").metadata
    for kv in sent:
        assert kv in seen
    initial = _md(call.initial_metadata())
    assert [kv for kv in initial if kv[0].startswith("x-echo-")] == sent[:3]
    names = {k for k, _ in initial}
    assert "x-other" not in names
    # the proxy's own response headers reach the client as initial metadata
    assert ("server", "envoy") in initial
    trailing = _md(call.trailing_metadata())
    assert trailing == [("x-trailer", "t1"), ("x-echo-one-t", "1"), ("x-echo-two-t", "a b,c"),
                        ("x-echo-data-t-bin", binary)]


# --------------------------------------------------------------------------- streaming


def test_server_streaming(grpc_proxy, server):
    _, c = grpc_proxy
    call = c.server_stream(b"100:1024", timeout=T)
    got = list(call)
    assert len(got) == 100
    assert all(m == bytes([ord("a") + i % 26]) * 1024 for i, m in enumerate(got))
    assert call.code() == grpc.StatusCode.OK


def test_client_streaming(grpc_proxy, server):
    _, c = grpc_proxy
    msgs = [os.urandom(n) for n in (0, 1, 1000, 65536, 100_000)] * 10
    resp = c.client_stream(iter(msgs), timeout=T)
    assert resp == str(sum(map(len, msgs))).encode()
    assert server.last("ClientStream").messages == len(msgs)


def _queue_iter(q: queue.Queue):
    while True:
        item = q.get()
        if item is None:
            return
        yield item


def test_bidi_interleaved(grpc_proxy, server):
    """Each answer arrives before the next request message is sent: nothing is held back
    in either direction."""
    _, c = grpc_proxy
    q: queue.Queue = queue.Queue()
    call = c.bidi(_queue_iter(q), timeout=T)
    for i in range(50):
        msg = b"%d:" % i + os.urandom(i * 37)
        q.put(msg)
        assert next(call) == msg
    q.put(None)
    assert list(call) == []
    assert call.code() == grpc.StatusCode.OK
    assert server.last("Bidi").messages == 50


def test_large_messages(grpc_proxy, server):
    _, c = grpc_proxy
    big = os.urandom(8 * MiB)
    assert c.unary(big, timeout=30) == big
    assert server.last("Unary").request == big
    got = list(c.server_stream(b"2:%d" % (8 * MiB), timeout=30))
    assert [len(m) for m in got] == [8 * MiB, 8 * MiB]
    assert c.client_stream(iter([big, big]), timeout=30) == str(16 * MiB).encode()


# --------------------------------------------------------------------------- status codes


@pytest.mark.parametrize("code", range(1, 17))
def test_status_codes(grpc_proxy, server, code):
    _, c = grpc_proxy
    details = f"failed with {code}: 100% ünïcode ☃ \"quoted\"\ttab"
    err = _rpc_error(c.fail, f"{code}:{details}".encode(), timeout=T)
    assert err.code() == STATUS_BY_CODE[code]
    assert err.details() == details


# --------------------------------------------------------------------------- deadlines, cancellation


def test_client_deadline(grpc_proxy, server):
    _, c = grpc_proxy
    start = time.monotonic()
    err = _rpc_error(c.sleep, b"5000", timeout=0.5)
    elapsed = time.monotonic() - start
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 2.0
    rec = server.wait_call("Sleep")
    # the deadline travelled upstream (grpc-timeout header)
    assert rec.time_remaining is not None and 0 < rec.time_remaining < 0.55
    assert rec.wait_ended(3.0)
    assert rec.cancelled


def _blocking_iter(first: bytes, release: threading.Event):
    yield first
    release.wait(T)


@pytest.mark.parametrize("kind", ["server_stream", "client_stream", "bidi"])
def test_client_cancel_reaches_server(grpc_proxy, server, kind):
    _, c = grpc_proxy
    release = threading.Event()
    try:
        if kind == "server_stream":
            call = c.server_stream(b"100000:100:10", timeout=T)
            next(call), next(call)
            rec = server.last("ServerStream")
            call.cancel()
        elif kind == "client_stream":
            fut = c.client_stream.future(_blocking_iter(b"one", release), timeout=T)
            rec = server.wait_call("ClientStream")
            deadline = time.monotonic() + 5
            while rec.messages < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert rec.messages == 1
            fut.cancel()
            call = fut
        else:
            call = c.bidi(_blocking_iter(b"one", release), timeout=T)
            assert next(call) == b"one"
            rec = server.last("Bidi")
            call.cancel()
        assert call.code() == grpc.StatusCode.CANCELLED
        assert rec.wait_cancelled(3.0), f"the server did not see the {kind} call cancelled"
    finally:
        release.set()


# --------------------------------------------------------------------------- multiplexing


def test_many_concurrent_unary_calls(grpc_proxy, server):
    p, c = grpc_proxy
    payloads = [b"call-%d-" % i + os.urandom(i) for i in range(200)]
    futs = [c.unary.future(m, timeout=T) for m in payloads]
    assert [f.result() for f in futs] == payloads
    stats = p.stats()
    assert stats["cluster.grpc.upstream_rq_total"] == 200
    assert stats["cluster.grpc.upstream_cx_total"] == 1  # all on one HTTP/2 connection
    assert stats["http.ingress_http.downstream_cx_total"] == 1


def test_concurrent_streams_overlap_upstream(grpc_proxy, server):
    """200 calls that each take 300 ms, all in flight at once on one upstream connection."""
    p, c = grpc_proxy
    start = time.monotonic()
    futs = [c.sleep.future(b"300", timeout=T) for _ in range(200)]
    assert [f.result() for f in futs] == [b"ok"] * 200
    assert time.monotonic() - start < 5.0
    assert server.max_in_flight >= 100
    assert p.stats()["cluster.grpc.upstream_cx_total"] == 1


# --------------------------------------------------------------------------- HTTP/1.1 and curl clients


def _grpc_post(path: str, body: bytes, te: bool = True) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: grpc.test\r\nContent-Type: application/grpc\r\n"
            + ("TE: trailers\r\n" if te else "")
            + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _chunked_trailers(raw: bytes) -> list:
    """The trailer fields after the last chunk of an HTTP/1.1 chunked response."""
    head_end = raw.index(b"\r\n\r\n") + 4
    pos = head_end
    while True:
        eol = raw.index(b"\r\n", pos)
        size = int(raw[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            break
        pos += size + 2
    out = []
    while True:
        eol = raw.index(b"\r\n", pos)
        line = raw[pos:eol]
        pos = eol + 2
        if not line:
            return out
        k, _, v = line.partition(b":")
        out.append((k.decode().lower(), v.strip().decode()))


def test_http1_client_to_grpc_upstream(start_proxy, server):
    """An HTTP/1.1 POST of a framed gRPC message is translated to HTTP/2 upstream; the answer
    comes back chunked. Trailers only reach the client where the listener enables them."""
    tport = free_port()
    p = start_proxy(grpc_config(server.port, trailers_port=tport))
    msg = b"from http/1.1"
    req = _grpc_post("/fp.test.Echo/Unary", grpc_frame(msg))

    raw = raw_request(p.port, req, timeout=5)
    status, headers, body = parse_response(raw)
    hd = {k.lower(): v for k, v in headers}
    assert status == 200
    assert hd["content-type"] == "application/grpc"
    assert hd.get("transfer-encoding") == "chunked"
    assert grpc_unframe(body) == [msg]
    assert _chunked_trailers(raw) == []  # trailers dropped on a default HTTP/1.1 codec
    assert "grpc-status" not in hd

    raw = raw_request(tport, req, timeout=5)
    status, headers, body = parse_response(raw)
    assert status == 200 and grpc_unframe(body) == [msg]
    trailers = _chunked_trailers(raw)
    assert ("grpc-status", "0") in trailers and ("x-trailer", "t1") in trailers

    # a failing call: trailers-only upstream, the status arrives as response headers
    raw = raw_request(p.port, _grpc_post("/fp.test.Echo/Fail", grpc_frame(b"5:gone")), timeout=5)
    status, headers, body = parse_response(raw)
    hd = {k.lower(): v for k, v in headers}
    assert (status, hd["grpc-status"], hd["grpc-message"], body) == (200, "5", "gone", b"")
    assert server.count() == 3


def test_http1_client_without_te_trailers(start_proxy, server):
    """grpc servers reset a request without "te: trailers": the proxy answers the gRPC client
    with a local reply in gRPC form (HTTP 200, grpc-status 14)."""
    p = start_proxy(grpc_config(server.port))
    raw = raw_request(p.port, _grpc_post("/fp.test.Echo/Unary", grpc_frame(b"x"), te=False),
                      timeout=5)
    status, headers, body = parse_response(raw)
    hd = {k.lower(): v for k, v in headers}
    assert status == 200
    assert hd["content-type"] == "application/grpc"
    assert hd["grpc-status"] == "14"
    assert hd["grpc-message"] == ("upstream connect error or disconnect/reset before headers. "
                                  "reset reason: remote reset")
    assert body == b""


def _curl(*args, timeout=15):
    r = subprocess.run([CURL, "-sS", "-i", "--noproxy", "*", "--max-time", "10", *args],
                       capture_output=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _split_curl(out: bytes):
    head, _, rest = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (l.partition(":") for l in lines[1:])]
    return lines[0].split()[0], status, headers, rest


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize("version", ["--http2-prior-knowledge", "--http1.1"])
def test_curl_grpc_call(start_proxy, server, tmp_path, version):
    tport = free_port()
    p = start_proxy(grpc_config(server.port, trailers_port=tport))
    body = tmp_path / "req.bin"
    msg = os.urandom(3000)
    body.write_bytes(grpc_frame(msg))
    # curl prints the trailers it received after the body
    out = _curl(version, "-H", "content-type: application/grpc", "-H", "te: trailers",
                "--data-binary", f"@{body}", f"http://127.0.0.1:{tport}/fp.test.Echo/Unary")
    proto, status, headers, rest = _split_curl(out)
    assert proto == ("HTTP/2" if "http2" in version else "HTTP/1.1")
    assert status == 200 and ("content-type", "application/grpc") in headers
    n = 5 + len(msg)
    assert grpc_unframe(rest[:n]) == [msg]
    trailers = [tuple(x.strip() for x in l.split(":", 1)) for l in rest[n:].decode().split("\r\n") if l]
    assert ("grpc-status", "0") in trailers and ("x-trailer", "t1") in trailers


# --------------------------------------------------------------------------- plain HTTP/2 upstream


@pytest.fixture
def nginx_h2c():
    if not NginxH2c.available():
        pytest.skip("nginx with the http_v2 module is not available")
    with NginxH2c() as n:
        yield n


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize("version", ["--http2-prior-knowledge", "--http1.1"])
def test_plain_http2_upstream(start_proxy, server, nginx_h2c, version, tmp_path):
    p = start_proxy(grpc_config(server.port, h2_port=nginx_h2c.port))
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"x" * 300_000)
    out = _curl(version, "-H", "x-test: hello", f"http://127.0.0.1:{p.port}/info/a?b=1")
    _, status, headers, body = _split_curl(out)
    assert status == 200
    assert ("x-upstream-proto", "HTTP/2.0") in headers
    assert body == (f"proto=HTTP/2.0 method=GET uri=/info/a?b=1 host=127.0.0.1 "
                    f"len= x-test=hello\n").encode()

    out = _curl(version, "--data-binary", f"@{upload}", f"http://127.0.0.1:{p.port}/upload")
    _, status, _, body = _split_curl(out)
    assert (status, body) == (200, b"got 300000\n")

    out = _curl(version, f"http://127.0.0.1:{p.port}/1m")
    _, status, headers, body = _split_curl(out)
    assert status == 200 and body == b"x" * MiB

    for code in (201, 404, 503):
        _, status, _, body = _split_curl(_curl(version, f"http://127.0.0.1:{p.port}/status/{code}"))
        assert (status, body) == (code, b"s%d\n" % code)
    _, status, headers, body = _split_curl(_curl(version, f"http://127.0.0.1:{p.port}/status/204"))
    assert (status, body) == (204, b"")

    stats = p.stats()
    assert stats["cluster.h2web.upstream_cx_http2_total"] == 1
    assert stats.get("cluster.h2web.upstream_cx_http1_total", 0) == 0
    assert stats["cluster.h2web.upstream_rq_total"] == 7


def test_plain_http2_upstream_raw_http1(start_proxy, server, nginx_h2c):
    """Keep-alive HTTP/1.1 requests on one downstream connection, answered over HTTP/2."""
    p = start_proxy(grpc_config(server.port, h2_port=nginx_h2c.port))
    reqs = (b"GET /info/1 HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /status/404 HTTP/1.1\r\nHost: h\r\n\r\n")
    got = parse_responses(raw_request(p.port, reqs, timeout=5, responses=3))
    assert [(s, b) for s, _, b in got] == [
        (200, b"proto=HTTP/2.0 method=GET uri=/info/1 host=h len= x-test=\n"),
        (200, b"got 5\n"),
        (404, b"s404\n"),
    ]


# --------------------------------------------------------------------------- the peers themselves


def test_peers_without_proxy(server):
    """The echo server and client on their own (so that a helper fault is not taken for the
    proxy's)."""
    with GrpcClient(server.port) as c:
        resp, call = c.unary.with_call(b"d", metadata=[("x-echo-k", "v")], timeout=T)
        assert resp == b"d"
        assert _md(call.initial_metadata()) == [("x-echo-k", "v")]
        assert _md(call.trailing_metadata()) == [("x-trailer", "t1"), ("x-echo-k-t", "v")]
        assert len(list(c.server_stream(b"3:5", timeout=T))) == 3
        assert c.client_stream(iter([b"ab", b"c"]), timeout=T) == b"3"
        err = _rpc_error(c.fail, b"9:pre", timeout=T)
        assert (err.code(), err.details()) == (grpc.StatusCode.FAILED_PRECONDITION, "pre")
        err = _rpc_error(c.flaky, b"k:1:14", timeout=T)
        assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE, "flaky 1")
        assert c.flaky(b"k:1:14", timeout=T) == b"ok"
        _rpc_error(c.sleep, b"2000", timeout=0.2)
        rec = server.last("Sleep")
        assert rec.time_remaining < 0.25 and rec.wait_cancelled(3)
        assert server.last("Unary").request == b"d" and not server.last("Unary").cancelled
