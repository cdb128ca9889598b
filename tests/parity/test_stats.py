"""Parity of the admin /stats counters after the same known sequence of requests."""
from __future__ import annotations

import time

import pytest

from helpers import free_port, make_bootstrap
from parity_common import ParityPair, converse, req

pytestmark = pytest.mark.parity


def config(listen, admin, side):
    clusters = {
        "main": [side.origins["o1"].address],
        "alt": [side.origins["o2"].address],
        "refused": [("127.0.0.1", side.extra["refused_port"])],
    }
    routes = [
        {"match": {"prefix": "/redirect"}, "redirect": {"path_redirect": "/elsewhere"}},
        {"match": {"prefix": "/direct403"}, "direct_response": {"status": 403}},
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "d"}}},
        {"match": {"prefix": "/refused"}, "route": {"cluster": "refused"}},
        {"match": {"prefix": "/timeout"}, "route": {"cluster": "main", "timeout": "0.2s"}},
        {"match": {"prefix": "/by-header"}, "route": {"cluster_header": "x-cluster"}},
        {"match": {"prefix": "/alt"}, "route": {"cluster": "alt"}},
        {"match": {"prefix": "/up"}, "route": {"cluster": "main"}},
    ]
    return make_bootstrap(listen, admin, clusters, [{"name": "all", "domains": ["*"], "routes": routes}])


class _Port:
    def __init__(self):
        self.port = free_port()

    def __enter__(self):
        return self.port

    def __exit__(self, *exc):
        pass


# (request bytes, expected status) -- each sent on its own connection, in this order
SEQUENCE = [
    (req("GET", "/up/1", headers=[("x-origin-body", "a")]), 200),
    (req("GET", "/up/2", headers=[("x-origin-body", "b")]), 200),
    (req("POST", "/up/3", headers=[("Content-Length", "3"), ("x-origin-body", "c")], body=b"xyz"), 200),
    (req("GET", "/up/500", headers=[("x-origin-status", "500"), ("x-origin-body", "e")]), 500),
    (req("GET", "/up/404", headers=[("x-origin-status", "404"), ("x-origin-body", "n")]), 404),
    (req("GET", "/alt/1", headers=[("x-origin-body", "alt")]), 200),
    (req("GET", "/no/route"), 404),
    (req("GET", "/no/route/again"), 404),
    (req("GET", "/redirect/1"), 301),
    (req("GET", "/redirect/2"), 301),
    (req("GET", "/direct"), 200),
    (req("HEAD", "/direct"), 200),
    (req("GET", "/direct403"), 403),
    (req("GET", "/refused"), 503),
    (req("GET", "/timeout", headers=[("x-origin-delay-ms", "600")]), 504),
    (req("GET", "/by-header", headers=[("x-cluster", "nonexistent")]), 503),
    (req("GET", "/by-header", headers=[("x-cluster", "alt"), ("x-origin-body", "h")]), 200),
    (req("GET", "/up/old", version="HTTP/1.0"), 426),
    (req("GET", "/up/nohost", host=None), 400),
    (req("POST", "/up/bad", headers=[("Content-Length", "3"), ("Transfer-Encoding", "chunked")],
         body=b"0\r\n\r\n"), 400),
]


@pytest.fixture(scope="module")
def stats():
    """Run SEQUENCE through both proxies; return {"envoy": stats, "fastproxy": stats} and the
    statuses each answered."""
    with ParityPair(config, origin_names=("o1", "o2"), servers={"refused_port": _Port}) as pair:
        statuses = {}
        for side in pair.sides:
            got = []
            for data, _ in SEQUENCE:
                raw, _closed = converse(side.port, data, timeout=3.0,
                                        head=data.startswith(b"HEAD "))
                got.append(int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else None)
            statuses[side.name] = got
        time.sleep(0.5)
        yield {side.name: side.stats() for side in pair.sides}, statuses


def test_statuses_as_expected(stats):
    _, statuses = stats
    expected = [s for _, s in SEQUENCE]
    assert statuses["envoy"] == expected
    assert statuses["fastproxy"] == expected


HCM = "http.ingress_http."

CORE = [
    HCM + "downstream_rq_2xx", HCM + "downstream_rq_4xx", HCM + "downstream_rq_total",
    HCM + "no_route", HCM + "rq_redirect", HCM + "rq_direct_response",
    "cluster.main.upstream_rq_total", "cluster.main.upstream_cx_total",
    "cluster.alt.upstream_rq_total", "cluster.alt.upstream_cx_total",
    "cluster.refused.upstream_rq_total", "cluster.refused.upstream_cx_total",
]

MORE = [
    HCM + "downstream_rq_1xx", HCM + "downstream_rq_3xx", HCM + "downstream_rq_5xx",
    HCM + "downstream_rq_completed", HCM + "downstream_rq_http1_total",
    HCM + "downstream_cx_total", HCM + "downstream_cx_http1_total", HCM + "downstream_cx_protocol_error",
    HCM + "no_cluster", HCM + "rq_total",
    HCM + "downstream_rq_non_relative_path",
    "cluster.main.upstream_rq_2xx", "cluster.main.upstream_rq_4xx", "cluster.main.upstream_rq_5xx",
    "cluster.main.upstream_rq_200", "cluster.main.upstream_rq_500", "cluster.main.upstream_rq_404",
    "cluster.main.upstream_rq_504", "cluster.main.upstream_rq_timeout", "cluster.main.upstream_rq_completed",
    "cluster.refused.upstream_cx_connect_fail", "cluster.refused.upstream_rq_pending_failure_eject",
    "cluster.refused.upstream_rq_503",
    "cluster.alt.upstream_rq_2xx",
]


@pytest.mark.parametrize("name", CORE)
def test_core_counter(stats, name):
    values, _ = stats
    assert values["fastproxy"].get(name) == values["envoy"].get(name), name


@pytest.mark.parametrize("name", MORE)
def test_more_counters(stats, name):
    values, _ = stats
    assert values["fastproxy"].get(name) == values["envoy"].get(name), name
