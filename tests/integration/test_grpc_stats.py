"""envoy.filters.http.grpc_stats: cluster.<name>.grpc.* counters of gRPC calls, through the
proxy to the grpcio echo server (HTTP/2 upstream, tests/helpers/grpc_peers.py), to an HTTP/1.1
origin answering gRPC frames, and to clusters nobody listens on.

Every test runs against fastproxy and, as the reference the expectations were checked on,
against real Envoy on the same config (the "envoy" parameter, marked `parity`; deselect it
with -m "not parity"), and compares the grpc.* stats of the admin's /stats with the same
expected values.

What Envoy 1.40 does, as checked here:
- a request is counted when it is gRPC (content-type application/grpc, alone or followed by
  '+' or ';'; a gRPC-Web request too when the filter comes after the gRPC-Web filter), its
  route names a cluster that exists, and its path (up to '?', split at '/', empty parts
  skipped) is exactly /<service>/<method>;
- counters: success, failure, total, grpc.<status>, request_message_count,
  response_message_count, under cluster.<name>.grpc., or cluster.<name>.grpc.<service>.<method>.
  for the methods of individual_method_stats_allowlist (the others under cluster.<name>.grpc.);
  none exists before it is first charged;
- every grpc-status seen, in a response head (trailers-only answers, gRPC local replies: a dead
  cluster, a route timeout before the answer, no healthy upstream, a rate limit filter placed
  after this one) or in the trailers (also for HTTP/1.1 clients that do not get them), charges
  total, grpc.<status> and success ("0") or failure; an answer without one (a reset after the
  head, a cancelled call, a local reply to a gRPC-Web request, which is not a gRPC one) charges
  nothing; retried attempts are not seen, only the final answer;
- messages count from the first byte of each length-prefixed frame (frames spanning body
  pieces count once), in the request body and in the body of a gRPC answer (200 with a gRPC
  content-type); a response frame with the Connect end-of-stream flag (0x02) and every frame
  after it are not counted.
"""
from __future__ import annotations

import base64
import copy
import os
import re
import struct
import time
import urllib.parse

import pytest

grpc = pytest.importorskip("grpc")

from helpers import Origin, free_port, make_bootstrap, raw_request  # noqa: E402
from helpers.grpc_peers import GrpcClient, grpc_frame  # noqa: E402
from helpers.grpc_fixtures import server, start_proxy  # noqa: E402,F401 (fixtures)

T = 10  # seconds: the timeout of every gRPC call unless a test says otherwise
SERVICE = "fp.test.Echo"

HTTP2_UPSTREAM = {
    "typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
}
GS_TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"
GRPC_WEB = {"name": "envoy.filters.http.grpc_web",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http."
                                      "grpc_web.v3.GrpcWeb"}}
LRL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ALLOWLIST = {"individual_method_stats_allowlist": {"services": [
    {"name": SERVICE, "method_names": ["Unary", "ServerStream", "NotCalled"]},
    {"name": "dead.Svc", "method_names": ["Call"]},
]}}


def grpc_stats_filter(**config) -> dict:
    return {"name": "envoy.filters.http.grpc_stats", "typed_config": {"@type": GS_TYPE, **config}}


# --------------------------------------------------------------------------- fixtures, config


@pytest.fixture(scope="module")
def origin():
    with Origin() as o:
        yield o


def stats_config(grpc_port: int, *, filters: list | None = None, origin_port: int | None = None,
                 svc_route: dict | None = None, rate_limit_tokens: int = 1) -> dict:
    """One listener (codec AUTO), filters (default: the gRPC stats filter alone) then the router:
    /dead. -> "dead" (HTTP/2, nobody listening), /empty. -> "empty" (no hosts), /h1. -> "h1"
    (the HTTP/1.1 origin, when origin_port is given), /direct. -> a direct response, /nocluster.
    -> a cluster_header naming no cluster, /fp.test.Echo and /only-one -> "svc" (the echo server,
    route timeout 1s, svc_route merged into the route action); nothing else is routed.
    Filter names "GS", "GW" and "RL" in `filters` stand for the gRPC stats filter without
    options, the gRPC-Web filter and a local rate limit filter (rate_limit_tokens tokens, never
    refilled)."""
    port, admin = free_port(), free_port()
    clusters = {"svc": [("127.0.0.1", grpc_port)], "dead": [("127.0.0.1", free_port())],
                "empty": []}
    extra = {"svc": HTTP2_UPSTREAM, "dead": HTTP2_UPSTREAM, "empty": HTTP2_UPSTREAM}
    routes = [
        {"match": {"prefix": "/dead."}, "route": {"cluster": "dead"}},
        {"match": {"prefix": "/empty."}, "route": {"cluster": "empty"}},
        {"match": {"prefix": "/direct."},
         "direct_response": {"status": 200, "body": {"inline_string": "direct"}}},
        {"match": {"prefix": "/nocluster."}, "route": {"cluster_header": "x-no-such-header"}},
        {"match": {"prefix": "/only-one"}, "route": {"cluster": "svc"}},
        {"match": {"prefix": "//"}, "route": {"cluster": "svc"}},
        {"match": {"prefix": "/fp.test.Echo"},
         "route": {"cluster": "svc", "timeout": "1s", **(svc_route or {})}},
    ]
    if origin_port is not None:
        clusters["h1"] = [("127.0.0.1", origin_port)]
        routes.insert(0, {"match": {"prefix": "/h1."}, "route": {"cluster": "h1"}})
    on = {"runtime_key": "rl_on", "default_value": {"numerator": 100}}
    named = {
        "GS": grpc_stats_filter(),
        "GW": GRPC_WEB,
        "RL": {"name": "envoy.filters.http.local_ratelimit",
               "typed_config": {"@type": LRL, "stat_prefix": "rl", "filter_enabled": on,
                                "filter_enforced": on,
                                "token_bucket": {"max_tokens": rate_limit_tokens,
                                                 "fill_interval": "3600s"}}},
    }
    filters = [named[f] if isinstance(f, str) else f for f in (filters or ["GS"])]
    return make_bootstrap(port, admin, clusters,
                          virtual_hosts=[{"name": "v", "domains": ["*"], "routes": routes}],
                          http_filters=filters, cluster_extra=extra)


_GRPC_STAT = re.compile(r"^cluster\.[a-z0-9]+\.grpc\.")


def grpc_stats(p) -> dict:
    """The cluster.<name>.grpc.* stats the admin lists."""
    return {k: v for k, v in p.stats().items() if _GRPC_STAT.match(k)}


def expect_stats(p, expected: dict, timeout: float = 3.0) -> None:
    """The grpc.* stats become exactly `expected` ({suffix after "cluster.": value}): the last
    counters of a call may be charged just after its client saw the end."""
    want = {"cluster." + k: v for k, v in expected.items()}
    deadline = time.monotonic() + timeout
    while True:
        got = grpc_stats(p)
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert got == want


def counted(cluster: str, *, ok: int = 0, codes: dict | None = None, rq: int = 0, rs: int = 0,
            prefix: str = "grpc") -> dict:
    """The stats of calls counted in cluster.<cluster>.<prefix>.*: `ok` successes, `codes`
    {status: calls} failures, rq / rs request / response messages (zero counters omitted,
    as they are never created)."""
    codes = dict(codes or {})
    if ok:
        codes[0] = codes.get(0, 0) + ok
    out = {}
    p = f"{cluster}.{prefix}."
    for code, n in codes.items():
        out[f"{p}{code}"] = n
    failures = sum(n for code, n in codes.items() if code != 0)
    for name, n in (("success", ok), ("failure", failures), ("total", ok + failures),
                    ("request_message_count", rq), ("response_message_count", rs)):
        if n:
            out[p + name] = n
    return out


def merged(*parts: dict) -> dict:
    out = {}
    for part in parts:
        for k, v in part.items():
            out[k] = out.get(k, 0) + v
    return out


def _rpc_error(fn, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as ei:
        fn(*args, **kw)
    return ei.value


def _call(client: GrpcClient, path: str, request: bytes = b"x", timeout: float = T):
    return client.channel.unary_unary(path)(request, timeout=timeout)


def _http1_grpc(path: str, body: bytes, *, chunks: list[bytes] | None = None,
                content_type: str = "application/grpc") -> bytes:
    """A gRPC request over HTTP/1.1: content-length, or chunked with the given pieces."""
    head = (f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\n"
            "te: trailers\r\n").encode()
    if chunks is None:
        return head + b"content-length: %d\r\n\r\n" % len(body) + body
    return head + b"transfer-encoding: chunked\r\n\r\n" + b"".join(
        b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def _frame(flags: int, message: bytes) -> bytes:
    return struct.pack(">BI", flags, len(message)) + message


# --------------------------------------------------------------------------- basics


def test_nothing_before_the_first_call_nor_for_other_requests(start_proxy, server):
    p = start_proxy(stats_config(server.port))
    assert grpc_stats(p) == {}
    assert p.stats()["cluster.svc.upstream_rq_total"] == 0  # the cluster's own stats are there
    # not gRPC: another content-type, and gRPC-Web without the gRPC-Web filter
    for ct in ("application/json", "application/grpc-web", "application/grpcx"):
        raw_request(p.port, _http1_grpc(f"/{SERVICE}/Unary", grpc_frame(b"a"), content_type=ct),
                    timeout=5)
    assert p.stats()["cluster.svc.upstream_rq_total"] == 3
    expect_stats(p, {})


def test_unary_ok(start_proxy, server):
    p = start_proxy(stats_config(server.port))
    with GrpcClient(p.port) as c:
        assert c.unary(b"hello", timeout=T) == b"hello"
        expect_stats(p, counted("svc", ok=1, rq=1, rs=1))
        assert c.unary(b"", timeout=T) == b""  # an empty message is still one frame
        expect_stats(p, counted("svc", ok=2, rq=2, rs=2))


def test_failure_codes(start_proxy, server):
    """Trailers-only answers from the server: their grpc-status is in the head."""
    p = start_proxy(stats_config(server.port))
    codes = [1, 2, 5, 5, 9, 13, 14, 16]
    with GrpcClient(p.port) as c:
        for code in codes:
            err = _rpc_error(c.fail, f"{code}:failed {code}".encode(), timeout=T)
            assert err.code().value[0] == code
        assert c.unary(b"ok", timeout=T) == b"ok"
    by_code = {code: codes.count(code) for code in codes}
    expect_stats(p, counted("svc", ok=1, codes=by_code, rq=len(codes) + 1, rs=1))


def test_streaming_message_counts(start_proxy, server):
    p = start_proxy(stats_config(server.port))
    with GrpcClient(p.port) as c:
        assert len(list(c.server_stream(b"7:10", timeout=T))) == 7
        assert c.client_stream(iter([b"a"] * 5), timeout=T) == b"5"
        assert list(c.bidi(iter([b"1", b"22", b"333", b""]), timeout=T)) == [
            b"1", b"22", b"333", b""]
        # messages, then a failure in the trailers
        call = c.method("StreamFail", "unary_stream")(b"3:9:after three", timeout=T)
        got = []
        with pytest.raises(grpc.RpcError) as ei:
            for m in call:
                got.append(m)
        assert len(got) == 3 and ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    expect_stats(p, counted("svc", ok=3, codes={9: 1}, rq=1 + 5 + 4 + 1, rs=7 + 1 + 4 + 3))


def test_frames_spanning_body_pieces(start_proxy, server):
    """Large messages arrive in many DATA frames and reads; each counts once."""
    p = start_proxy(stats_config(server.port))
    sizes = [100_000, 0, 70_000, 1, 300_000]
    with GrpcClient(p.port) as c:
        msgs = [os.urandom(n) for n in sizes]
        assert c.client_stream(iter(msgs), timeout=T) == str(sum(sizes)).encode()
        assert [len(m) for m in c.server_stream(b"3:200000", timeout=T)] == [200_000] * 3
        big = os.urandom(1 << 20)
        assert c.unary(big, timeout=T) == big
    expect_stats(p, counted("svc", ok=3, rq=len(sizes) + 1 + 1, rs=1 + 3 + 1))


def test_many_calls_on_two_workers(start_proxy, server):
    """Each worker counts in its own slot; the admin sums them."""
    p = start_proxy(stats_config(server.port), concurrency=2)
    clients = [GrpcClient(p.port) for _ in range(4)]  # connections spread over the workers
    try:
        futs = [c.unary.future(b"m%d" % i, timeout=T) for i in range(25) for c in clients]
        assert sorted(f.result() for f in futs) == sorted(b"m%d" % i for i in range(25)
                                                          for _ in clients)
    finally:
        for c in clients:
            c.close()
    expect_stats(p, counted("svc", ok=100, rq=100, rs=100))


# --------------------------------------------------------------------------- local replies


def test_dead_cluster_no_healthy_upstream_and_timeouts(start_proxy, server):
    """gRPC local replies carry a grpc-status (14 for 503 and 504): failures."""
    p = start_proxy(stats_config(server.port))
    with GrpcClient(p.port) as c:
        err = _rpc_error(_call, c, "/dead.Svc/Call")
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "remote connection failure" in err.details()
        err = _rpc_error(_call, c, "/empty.Svc/Call")
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert err.details() == "no healthy upstream"
        # the route timeout (1s) before the answer: a local reply
        err = _rpc_error(c.sleep, b"3000", timeout=T)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert err.details() == "upstream request timeout"
    expect_stats(p, merged(counted("dead", codes={14: 1}, rq=1),
                           # no healthy host: answered before the request body was read
                           counted("empty", codes={14: 1}),
                           counted("svc", codes={14: 1}, rq=1)))


def test_resets_and_cancels_charge_no_status(start_proxy, server):
    """The route timeout after the answer's head resets the stream; a client cancels: no
    grpc-status, so no total; the messages that passed count."""
    p = start_proxy(stats_config(server.port))
    with GrpcClient(p.port) as c:
        call = c.server_stream(b"3:10:2500", timeout=T)  # one message, then 2.5 s
        got = []
        with pytest.raises(grpc.RpcError) as ei:
            for m in call:
                got.append(m)
        # (RST_STREAM: INTERNAL_ERROR from Envoy, CANCEL from fastproxy)
        assert len(got) == 1 and ei.value.code() in (grpc.StatusCode.INTERNAL,
                                                     grpc.StatusCode.CANCELLED)
        expect_stats(p, counted("svc", rq=1, rs=1))
        call = c.server_stream(b"3:10:2500", timeout=T)
        assert next(call) == b"a" * 10
        call.cancel()
        time.sleep(0.3)
    expect_stats(p, counted("svc", rq=2, rs=2))


def test_grpc_deadline_local_reply(start_proxy, server):
    """max_stream_duration with grpc_timeout_header_max: the expiry's local reply is
    DEADLINE_EXCEEDED (4)."""
    p = start_proxy(stats_config(server.port, svc_route={"timeout": "0s", "max_stream_duration": {
        "grpc_timeout_header_max": "0s", "grpc_timeout_header_offset": "0.5s"}}))
    with GrpcClient(p.port) as c:
        err = _rpc_error(c.sleep, b"5000", timeout=1.5)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    expect_stats(p, counted("svc", codes={4: 1}, rq=1))


def test_not_counted_without_cluster_or_method(start_proxy, server):
    """No route, a direct response, a cluster that does not exist, a path that is not
    /service/method: the filter counts nothing (not even elsewhere)."""
    p = start_proxy(stats_config(server.port))
    with GrpcClient(p.port) as c:
        assert _rpc_error(_call, c, "/unrouted.Svc/Call").code() == grpc.StatusCode.UNIMPLEMENTED
        assert _rpc_error(_call, c, "/direct.Svc/Call").code() == grpc.StatusCode.UNKNOWN
        assert _rpc_error(_call, c, "/nocluster.Svc/Call").code() == grpc.StatusCode.UNAVAILABLE
        for path in ("/only-one", f"/{SERVICE}", f"/{SERVICE}/Unary/extra"):
            assert _rpc_error(_call, c, path).code() == grpc.StatusCode.UNIMPLEMENTED
        # ... but empty parts and the query are skipped: these are /fp.test.Echo/Unary
        for path in (f"/{SERVICE}/Unary?q=1", f"//{SERVICE}//Unary/"):
            assert _rpc_error(_call, c, path).code() == grpc.StatusCode.UNIMPLEMENTED
    expect_stats(p, counted("svc", codes={12: 2}, rq=2))


# --------------------------------------------------------------------------- allowlist


def test_individual_method_stats_allowlist(start_proxy, server):
    p = start_proxy(stats_config(server.port, filters=[grpc_stats_filter(**ALLOWLIST)]))
    method = "grpc.fp.test.Echo."
    with GrpcClient(p.port) as c:
        assert c.unary(b"a", timeout=T) == b"a"
        assert len(list(c.server_stream(b"4:3", timeout=T))) == 4
        # not listed: counted without the method
        assert _rpc_error(c.fail, b"7:no", timeout=T).code() == grpc.StatusCode.PERMISSION_DENIED
        assert list(c.bidi(iter([b"x", b"y"]), timeout=T)) == [b"x", b"y"]
        # listed, on another cluster; and a method of a listed service that is not listed
        assert _rpc_error(_call, c, "/dead.Svc/Call").code() == grpc.StatusCode.UNAVAILABLE
        assert _rpc_error(_call, c, "/dead.Svc/Other").code() == grpc.StatusCode.UNAVAILABLE
        # the same method after the path is split as Envoy splits it
        assert _rpc_error(_call, c, f"//{SERVICE}/Unary?x=1").code() == \
            grpc.StatusCode.UNIMPLEMENTED
    expect_stats(p, merged(
        counted("svc", ok=1, codes={12: 1}, rq=2, rs=1, prefix=method + "Unary"),
        counted("svc", ok=1, rq=1, rs=4, prefix=method + "ServerStream"),
        counted("svc", ok=1, codes={7: 1}, rq=3, rs=2),
        counted("dead", codes={14: 1}, rq=1, prefix="grpc.dead.Svc.Call"),
        counted("dead", codes={14: 1}, rq=1)))


def test_allowlisted_method_stats_hidden_until_used(start_proxy, server):
    p = start_proxy(stats_config(server.port, filters=[grpc_stats_filter(**ALLOWLIST)]))
    assert grpc_stats(p) == {}
    with GrpcClient(p.port) as c:
        assert c.unary(b"a", timeout=T) == b"a"
    expect_stats(p, counted("svc", ok=1, rq=1, rs=1, prefix="grpc.fp.test.Echo.Unary"))


def test_empty_allowlist_counts_per_cluster(start_proxy, server):
    p = start_proxy(stats_config(server.port, filters=[grpc_stats_filter(
        individual_method_stats_allowlist={}, )]))
    with GrpcClient(p.port) as c:
        assert c.unary(b"a", timeout=T) == b"a"
    expect_stats(p, counted("svc", ok=1, rq=1, rs=1))


# --------------------------------------------------------------------------- clients, upstreams


def test_http1_client(start_proxy, server):
    """An HTTP/1.1 client: frames split across chunks count once; the trailers' grpc-status
    counts although the client does not get the trailers."""
    p = start_proxy(stats_config(server.port))
    body = grpc_frame(b"abc") + grpc_frame(b"") + grpc_frame(b"x" * 100)
    pieces = [body[:2]] + [body[i:i + 7] for i in range(2, len(body), 7)]
    raw = raw_request(p.port, _http1_grpc(f"/{SERVICE}/ClientStream", body, chunks=pieces),
                      timeout=5)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and b"grpc-status" not in raw
    raw = raw_request(p.port, _http1_grpc(f"/{SERVICE}/StreamFail", grpc_frame(b"2:9:x"),
                                          content_type="application/grpc+proto"), timeout=5)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and b"grpc-status" not in raw
    # trailers-only: the status is in the head the client gets
    raw = raw_request(p.port, _http1_grpc(f"/{SERVICE}/Fail", grpc_frame(b"5:gone")), timeout=5)
    assert b"grpc-status: 5\r\n" in raw
    expect_stats(p, counted("svc", ok=1, codes={9: 1, 5: 1}, rq=5, rs=1 + 2))


def test_retries_count_the_final_answer(start_proxy, server):
    """Envoy's filter sees only the answer the router settles on."""
    p = start_proxy(stats_config(server.port, svc_route={
        "retry_policy": {"retry_on": "unavailable", "num_retries": 2}}))
    key = os.urandom(4).hex().encode()  # the server (and its Flaky keys) is the module's
    with GrpcClient(p.port) as c:
        assert c.flaky(key + b"a:2:14", timeout=T) == b"ok"  # two retried failures, then OK
        err = _rpc_error(c.flaky, key + b"b:5:14", timeout=T)  # out of retries
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        err = _rpc_error(c.flaky, key + b"c:1:13", timeout=T)  # not a retry_on status
        assert err.code() == grpc.StatusCode.INTERNAL
    assert server.count("Flaky") >= 2 + 1 + 3 + 1
    expect_stats(p, counted("svc", ok=1, codes={14: 1, 13: 1}, rq=3, rs=1))


def _origin_grpc_path(body: bytes, *headers: str) -> str:
    """/h1.S/M with the origin's control options: answer 200, content-type application/grpc,
    the given headers and body (bytes < 0x80: the origin encodes the text as UTF-8)."""
    q = [("header", "content-type: application/grpc")] + [("header", h) for h in headers]
    q.append(("body", body.decode("latin-1")))
    return "/h1.S/M?" + urllib.parse.urlencode(q)


def test_http1_upstream_answers(start_proxy, server, origin):
    """An HTTP/1.1 upstream answering gRPC frames (the path /h1.S/M is a gRPC method): its
    frames count up to a Connect end-of-stream frame (flag 0x02); a grpc-status in its head
    counts; an answer without one charges no status."""
    p = start_proxy(stats_config(server.port, origin_port=origin.port))

    def call(body: bytes, *headers: str, chunked: bool = False):
        path = _origin_grpc_path(body, *headers) + ("&chunked=1&chunk_size=3" if chunked else "")
        raw = raw_request(p.port, _http1_grpc(path, b""), timeout=5)
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n"), raw

    call(_frame(0, b"ab") + _frame(0, b"") + _frame(0, b"c"))
    call(_frame(0, b"ab") + _frame(0, b"") + _frame(0, b"c"), chunked=True)
    call(_frame(0, b"ab") + _frame(2, b"{}") + _frame(0, b"c"))  # counts 1
    call(_frame(4, b"a") + _frame(1, b"c"))                      # other flags count
    call(b"", "grpc-status: 0")
    call(b"", "grpc-status: 16")
    expected = counted("h1", ok=1, codes={16: 1}, rs=3 + 3 + 1 + 2)
    expect_stats(p, expected)
    # A grpc-status that is not a well-known one: total and failure; Envoy also makes a
    # counter grpc.<value> at run time, which fastproxy (fixed slots) does not keep.
    call(b"", "grpc-status: 99")
    expected = merged(expected, {"h1.grpc.failure": 1, "h1.grpc.total": 1})
    if p.name == "envoy":
        expected["h1.grpc.99"] = 1
    expect_stats(p, expected)


# --------------------------------------------------------------------------- filter order


def _grpc_web(p, path: str, message: bytes, *, text: bool = False) -> bytes:
    body = grpc_frame(message)
    ct = "application/grpc-web+proto"
    if text:
        body, ct = base64.b64encode(body), "application/grpc-web-text"
    return raw_request(p.port, _http1_grpc(path, body, content_type=ct), timeout=5)


@pytest.mark.parametrize("order", [["GW", "GS"], ["GS", "GW"]])
def test_grpc_web_counted_after_the_grpc_web_filter(start_proxy, server, order):
    """After the gRPC-Web filter, gRPC-Web calls are gRPC calls to this filter (the upstream's
    frames and trailers, before they are turned into gRPC-Web); before it, they are not gRPC.
    Local replies to gRPC-Web requests are not gRPC ones: no status."""
    p = start_proxy(stats_config(server.port, filters=order))
    assert _grpc_web(p, f"/{SERVICE}/Unary", b"hi").startswith(b"HTTP/1.1 200 OK")
    assert b"grpc-status: 7" in _grpc_web(p, f"/{SERVICE}/Fail", b"7:no")
    assert _grpc_web(p, f"/{SERVICE}/ServerStream", b"3:4", text=True).startswith(
        b"HTTP/1.1 200 OK")
    assert _grpc_web(p, "/dead.Svc/Call", b"x").startswith(b"HTTP/1.1 503")
    with GrpcClient(p.port) as c:  # and a gRPC call
        assert c.unary(b"x", timeout=T) == b"x"
    grpc_call = counted("svc", ok=1, rq=1, rs=1)
    if order[0] == "GW":
        expect_stats(p, merged(grpc_call, counted("svc", ok=2, codes={7: 1}, rq=3, rs=4),
                               counted("dead", rq=1)))
    else:
        expect_stats(p, grpc_call)


@pytest.mark.parametrize("order", [["GS", "RL"], ["RL", "GS"], ["GW", "GS", "RL"]])
def test_local_rate_limit_order(start_proxy, server, order):
    """A rate limit filter after this one answers calls it counts (a gRPC local reply,
    grpc-status 14; for gRPC-Web requests a plain one: no status); before it, they are never
    seen."""
    p = start_proxy(stats_config(server.port, filters=order, rate_limit_tokens=1))
    with GrpcClient(p.port) as c:
        assert c.unary(b"x", timeout=T) == b"x"
        for _ in range(2):
            err = _rpc_error(c.unary, b"x", timeout=T)
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert err.details() == "local_rate_limited"
    if "GW" in order:
        assert _grpc_web(p, f"/{SERVICE}/Unary", b"hi").startswith(b"HTTP/1.1 429")
    first = counted("svc", ok=1, rq=1, rs=1)
    if order.index("GS") < order.index("RL"):
        expect_stats(p, merged(first, counted("svc", codes={14: 2})))
    else:
        expect_stats(p, first)
