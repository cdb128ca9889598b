"""gRPC parity: the same config on real Envoy and on fastproxy, each with its own grpcio echo
server (tests/helpers/grpc_peers.py) behind an HTTP/2 upstream cluster; the same calls through
both; what the gRPC client observes (status code, details, initial and trailing metadata less
the values that vary with time) and what the upstream saw must be the same.

One proxy pair serves the whole module; each case picks its route with the request header
(metadata) "x-case".

GRPC_PARITY_SELF_CHECK=1 runs real Envoy in fastproxy's place too (Envoy against itself): a
check of the tests themselves, e.g. while fastproxy cannot run them yet.
"""
from __future__ import annotations

import os
import time

import pytest

grpc = pytest.importorskip("grpc")

from helpers import EnvoyProcess, find_envoy, free_port, free_ports, make_bootstrap  # noqa: E402
from helpers.grpc_peers import STATUS_BY_CODE, GrpcClient, GrpcEchoServer  # noqa: E402
from parity_common import ParityPair  # noqa: E402

pytestmark = pytest.mark.parity

T = 10  # seconds: the default timeout of a call

HTTP2_UPSTREAM = {
    "typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
}
RETRY_POLICY = {"retry_on": "unavailable", "num_retries": 2,
                "retry_back_off": {"base_interval": "0.005s", "max_interval": "0.01s"}}

# metadata whose values differ from run to run; their names are still compared
VARIABLE = {"date", "x-envoy-upstream-service-time"}

# What Envoy 1.40 answers (grpc-message of its local replies), checked on the Envoy side so
# that the expectations are explicit.
ENVOY_NO_HEALTHY_UPSTREAM = "no healthy upstream"
# (unlike the text/plain body of the same local reply to a non-gRPC request, the grpc-message
# does not carry the ", transport failure reason: delayed connect error: ..." suffix)
ENVOY_CONNECT_REFUSED = ("upstream connect error or disconnect/reset before headers. "
                         "reset reason: remote connection failure")
ENVOY_UPSTREAM_TIMEOUT = "upstream request timeout"  # route timeout: UNAVAILABLE
ENVOY_DURATION_TIMEOUT = "downstream duration timeout"  # max_stream_duration: DEADLINE_EXCEEDED


def _case_route(case: str, cluster: str, **action) -> dict:
    return {"match": {"prefix": "/", "headers": [{"name": "x-case", "string_match": {"exact": case}}]},
            "route": {"cluster": cluster, **action}}


def _config(listener_port, admin_port, side):
    server = side.extra["grpc"]
    dead = free_port()  # nothing listens there
    clusters = {
        "grpc": [server.address],
        "grpc_retry": [server.address],
        "grpc_retry_ok": [server.address],
        "dead": [("127.0.0.1", dead)],
        "empty": [],
    }
    routes = [
        _case_route("dead", "dead"),
        _case_route("empty", "empty"),
        _case_route("timeout", "grpc", timeout="0.2s"),
        _case_route("msd0", "grpc", max_stream_duration={"grpc_timeout_header_max": "0s"}),
        _case_route("msdcap", "grpc", max_stream_duration={"grpc_timeout_header_max": "0.3s"}),
        _case_route("msdoffset", "grpc", max_stream_duration={"grpc_timeout_header_max": "0s",
                                                              "grpc_timeout_header_offset": "0.2s"}),
        _case_route("msdfixed", "grpc", max_stream_duration={"max_stream_duration": "0.3s"}),
        _case_route("retry", "grpc_retry", retry_policy=RETRY_POLICY),
        _case_route("retry_ok", "grpc_retry_ok", retry_policy=RETRY_POLICY),
        {"match": {"prefix": "/"}, "route": {"cluster": "grpc"}},
    ]
    return make_bootstrap(listener_port, admin_port, clusters,
                          virtual_hosts=[{"name": "v", "domains": ["*"], "routes": routes}],
                          cluster_extra={name: HTTP2_UPSTREAM for name in clusters})


class _EnvoyTwicePair(ParityPair):
    """A ParityPair whose "fastproxy" side runs real Envoy as well (GRPC_PARITY_SELF_CHECK)."""

    def __enter__(self):
        try:
            envoy_bin = find_envoy()
            for side in self.sides:
                for n, factory in self.servers.items():
                    side.extra[n] = self._stack.enter_context(factory())
            ports = free_ports(4)
            for side, (listen, admin) in zip(self.sides, (ports[:2], ports[2:])):
                side.proxy = self._stack.enter_context(
                    EnvoyProcess(self.config_fn(listen, admin, side), admin, envoy_bin=envoy_bin))
        except BaseException:
            self._stack.close()
            raise
        return self


@pytest.fixture(scope="module")
def pair():
    self_check = os.environ.get("GRPC_PARITY_SELF_CHECK", "").lower() in ("1", "true", "yes")
    cls = _EnvoyTwicePair if self_check else ParityPair
    with cls(_config, origin_names=(), servers={"grpc": lambda: GrpcEchoServer(max_workers=64)}) as p:
        for side in p.sides:
            side.client = GrpcClient(side.port)
        try:
            yield p
        finally:
            for side in p.sides:
                side.client.close()


def _norm(metadata) -> list:
    return [(m.key, "<var>" if m.key in VARIABLE else m.value) for m in metadata or ()]


def observe(method, request: bytes, *, case: str | None = None, metadata=(), timeout=T) -> dict:
    """Call `method` and return what the client observed, plus the time it took."""
    md = [*metadata, *([("x-case", case)] if case else [])]
    start = time.monotonic()
    try:
        resp, call = method.with_call(request, metadata=md, timeout=timeout)
        out = {"code": call.code().name, "details": call.details(), "response": resp,
               "initial": _norm(call.initial_metadata()), "trailing": _norm(call.trailing_metadata())}
    except grpc.RpcError as e:
        out = {"code": e.code().name, "details": e.details(), "response": None,
               "initial": _norm(e.initial_metadata()), "trailing": _norm(e.trailing_metadata())}
    out["elapsed"] = time.monotonic() - start
    return out


def both(pair, fn):
    """fn(side) on each side -> (envoy's, fastproxy's)."""
    return tuple(fn(side) for side in pair.sides)


def _without(d: dict, *keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def _server(side) -> GrpcEchoServer:
    return side.extra["grpc"]


# --------------------------------------------------------------------------- pass-through


def test_unary_metadata(pair):
    md = [("x-echo-a", "1"), ("x-echo-b", "two words"), ("x-echo-c-bin", b"\x00\xffbin"),
          ("x-not-echoed", "z")]
    e, f = both(pair, lambda side: observe(side.client.unary, b"payload", metadata=md))
    assert e["code"] == "OK" and e["response"] == b"payload"
    assert ("x-echo-a", "1") in e["initial"] and ("x-trailer", "t1") in e["trailing"]
    assert _without(f, "elapsed") == _without(e, "elapsed")

    # what the upstream saw: the same header names in the same order, same values but the
    # variable ones (request id)
    def seen(side):
        return [(k, "<var>" if k == "x-request-id" else v) for k, v in _server(side).last("Unary").metadata]
    assert seen(pair.fastproxy) == seen(pair.envoy)


@pytest.mark.parametrize("code", range(1, 17))
def test_fail_status_codes(pair, code):
    details = f"status {code}: détails 100% \"q\""
    e, f = both(pair, lambda side: observe(side.client.fail, f"{code}:{details}".encode()))
    assert (e["code"], e["details"]) == (STATUS_BY_CODE[code].name, details)
    assert _without(f, "elapsed") == _without(e, "elapsed")


# --------------------------------------------------------------------------- local replies


@pytest.mark.parametrize("case,details", [("dead", ENVOY_CONNECT_REFUSED),
                                          ("empty", ENVOY_NO_HEALTHY_UPSTREAM)], ids=["refused", "empty"])
def test_no_upstream(pair, case, details):
    """No connection to be had: a trailers-only local reply, grpc-status 14 UNAVAILABLE."""
    e, f = both(pair, lambda side: observe(side.client.unary, b"x", case=case))
    assert (e["code"], e["details"]) == ("UNAVAILABLE", details)
    assert _without(f, "elapsed") == _without(e, "elapsed")
    cluster = f"cluster.{case}."
    keys = ["upstream_cx_connect_fail", "upstream_rq_pending_total", "upstream_cx_none_healthy",
            "upstream_rq_pending_failure_eject", "upstream_rq_503", "upstream_rq_completed",
            "upstream_cx_total"]
    e_stats, f_stats = both(pair, lambda side: {k: side.stats().get(cluster + k, 0) for k in keys})
    assert f_stats == e_stats


def test_route_timeout(pair):
    for side in pair.sides:
        _server(side).clear()
    e, f = both(pair, lambda side: observe(side.client.sleep, b"1000", case="timeout"))
    assert (e["code"], e["details"]) == ("UNAVAILABLE", ENVOY_UPSTREAM_TIMEOUT)
    assert e["elapsed"] < 0.9
    assert f["elapsed"] < 0.9
    assert _without(f, "elapsed") == _without(e, "elapsed")
    # the upstream call was abandoned (reset) by both
    for side in pair.sides:
        rec = _server(side).last("Sleep")
        assert rec.wait_ended(3) and rec.cancelled, side.name
    # the upstream was told of the route timeout (x-envoy-expected-rq-timeout-ms), while the
    # grpc-timeout it got stays the client's
    e_up, f_up = both(pair, lambda side: _upstream_seen(side, "Sleep"))
    assert ("x-envoy-expected-rq-timeout-ms", "200") in e_up[0]
    assert e_up[1] == pytest.approx(T, abs=0.15)
    assert f_up[0] == e_up[0]
    assert f_up[1] == pytest.approx(e_up[1], abs=0.15)


# Texts a DEADLINE_EXCEEDED may come with when several timers expire at the same moment: the
# proxy's (its local reply), the upstream server's (the grpc-timeout the proxy forwarded) and
# the client's own.
RACED_DEADLINE_DETAILS = {ENVOY_DURATION_TIMEOUT, "Deadline Exceeded", "Stream removed (Deadline Exceeded)"}


def _upstream_seen(side, method):
    rec = _server(side).wait_call(method)
    rec.wait_ended(3)
    md = [(k, "<var>" if k == "x-request-id" else v) for k, v in rec.metadata]
    return md, rec.time_remaining


@pytest.mark.parametrize("case,deadline,upstream_deadline,details", [
    # the client's deadline (grpc-timeout) is the call's timeout, uncapped: the proxy's timer,
    # the upstream's and the client's own all expire at 0.5 s
    ("msd0", 0.5, 0.5, RACED_DEADLINE_DETAILS),
    # capped at 0.3 s; the grpc-timeout sent upstream is rewritten to the cap
    ("msdcap", 5.0, 0.3, RACED_DEADLINE_DETAILS),
    # 0.8 s less the 0.2 s offset; the grpc-timeout sent upstream is rewritten to 0.6 s
    ("msdoffset", 0.8, 0.6, RACED_DEADLINE_DETAILS),
    # a fixed max_stream_duration (0.3 s): the grpc-timeout sent upstream is set to it as well
    # (with or without a client deadline)
    ("msdfixed", 10.0, 0.3, RACED_DEADLINE_DETAILS),
], ids=["header_max_0s", "header_max_cap", "header_offset", "fixed_duration"])
def test_grpc_timeout_header(pair, case, deadline, upstream_deadline, details):
    """max_stream_duration on the route: compare what the client sees and when, the deadline
    the upstream server was given and the headers it got."""
    for side in pair.sides:
        _server(side).clear()
    e, f = both(pair, lambda side: observe(side.client.sleep, b"3000", case=case, timeout=deadline))
    for r in (e, f):
        assert r["code"] == "DEADLINE_EXCEEDED", r
        assert r["details"] in details, r
        assert upstream_deadline - 0.05 < r["elapsed"] < upstream_deadline + 0.5, r
    e_up, f_up = both(pair, lambda side: _upstream_seen(side, "Sleep"))
    assert e_up[1] == pytest.approx(upstream_deadline, abs=0.15)
    assert f_up[1] == pytest.approx(e_up[1], abs=0.15)
    assert f_up[0] == e_up[0]


# --------------------------------------------------------------------------- retries


RETRY_STATS = ["upstream_rq_retry", "upstream_rq_retry_success", "upstream_rq_retry_limit_exceeded",
               "upstream_rq_total", "upstream_rq_completed", "upstream_rq_200"]


def _retry_stats(side, cluster):
    stats = side.stats()
    return {k: stats.get(f"cluster.{cluster}.{k}", 0) for k in RETRY_STATS}


def test_retry_on_unavailable_exhausted(pair):
    for side in pair.sides:
        _server(side).clear()
    e, f = both(pair, lambda side: observe(side.client.fail, b"14:x", case="retry"))
    assert (e["code"], e["details"]) == ("UNAVAILABLE", "x")
    assert _without(f, "elapsed") == _without(e, "elapsed")
    calls = both(pair, lambda side: _server(side).count("Fail"))
    assert calls == (3, 3)
    e_stats, f_stats = both(pair, lambda side: _retry_stats(side, "grpc_retry"))
    # Envoy: retry 2, retry_success 0, retry_limit_exceeded 1, rq_total 3, and only the
    # attempt that answered the client in rq_completed / rq_200 (1 each)
    assert e_stats["upstream_rq_retry"] == 2
    assert f_stats == e_stats


def test_retry_on_unavailable_then_ok(pair):
    for side in pair.sides:
        _server(side).clear()
    e, f = both(pair, lambda side: observe(side.client.flaky, b"k:2:14", case="retry_ok"))
    assert (e["code"], e["response"]) == ("OK", b"ok")
    assert _without(f, "elapsed") == _without(e, "elapsed")
    assert both(pair, lambda side: _server(side).count("Flaky")) == (3, 3)
    e_stats, f_stats = both(pair, lambda side: _retry_stats(side, "grpc_retry_ok"))
    assert e_stats["upstream_rq_retry"] == 2 and e_stats["upstream_rq_retry_success"] == 1
    assert f_stats == e_stats


def test_no_retry_on_other_codes(pair):
    """retry_on "unavailable" leaves other statuses alone (here INTERNAL)."""
    for side in pair.sides:
        _server(side).clear()
    e, f = both(pair, lambda side: observe(side.client.fail, b"13:internal", case="retry"))
    assert (e["code"], e["details"]) == ("INTERNAL", "internal")
    assert _without(f, "elapsed") == _without(e, "elapsed")
    assert both(pair, lambda side: _server(side).count("Fail")) == (1, 1)
