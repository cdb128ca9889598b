"""Micro-benchmarks of the request path's compiled pieces, each against the plain alternative.

- parse a request head: http1.parse_request_head (picohttpparser + Envoy's checks) in a C loop,
  against httptools-free plain Python (bytes.split) parsing the same head;
- the upstream head: parse + route + write the head with Envoy's additions, without and with
  route header mutations (the latter takes the slow path that rebuilds the header list).

Every figure is measured inside a compiled loop (the `bench_*` entry points), so the Python call
overhead is amortised; pytest-benchmark times the loop, and `extra_info` records ns per item.

    pytest bench/micro --benchmark-only
    pytest bench/micro --benchmark-only --benchmark-storage=bench/micro/baselines --benchmark-save=baseline
    pytest bench/micro --benchmark-only --benchmark-storage=bench/micro/baselines \
        --benchmark-compare --benchmark-compare-fail=median:25%
"""
import os
import tempfile

import pytest

from fastproxy.config import model as m

http1 = pytest.importorskip("fastproxy._core.http1")
connection = pytest.importorskip("fastproxy._core.connection")
from fastproxy.stats import SharedStats, StatsLayout  # noqa: E402

REQUEST = (b"GET /api/v1/items/42?expand=true HTTP/1.1\r\nHost: api.example.com\r\n"
           b"User-Agent: bench/1.0\r\nAccept: */*\r\nAccept-Encoding: gzip\r\n"
           b"X-Trace: abc123\r\nCookie: a=b; c=d\r\nConnection: keep-alive\r\n\r\n")
ITER = 20000


def plain_python_parse(data):
    head, _, _ = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method, path, version = lines[0].split(b" ")
    headers = [tuple(x.strip() for x in line.split(b":", 1)) for line in lines[1:]]
    return method, path, version, headers


def test_parse_request_head(benchmark):
    per = benchmark(http1.bench_parse_request, REQUEST, ITER)
    benchmark.extra_info["ns_per_parse"] = per * 1e9


def test_parse_request_head_plain_python(benchmark):
    def loop():
        for _ in range(ITER // 10):
            plain_python_parse(REQUEST)
    benchmark(loop)
    benchmark.extra_info["ns_per_parse"] = benchmark.stats.stats.median / (ITER // 10) * 1e9


def _worker(tmp, with_mutations):
    headers = m.HeaderMutations()
    if with_mutations:
        headers = m.HeaderMutations(
            request_add=[m.HeaderValueOption("x-added", "1"),
                         m.HeaderValueOption("x-trace", "replaced", m.OVERWRITE_IF_EXISTS_OR_ADD)],
            request_remove=["cookie"])
    route = m.Route(match=m.RouteMatch("prefix", "/api/"), route=m.RouteAction(cluster="c"),
                    headers=headers)
    rc = m.RouteConfiguration(virtual_hosts=[m.VirtualHost("v", ["*"], [route])])
    listener = m.Listener("l", m.SocketAddress("127.0.0.1", 0),
                          m.HttpConnectionManager("bench", rc))
    cluster = m.Cluster("c", endpoints=[m.Endpoint(m.SocketAddress("127.0.0.1", 1))])
    boot = m.Bootstrap(listeners=[listener], clusters=[cluster])
    layout = StatsLayout(boot)
    path = os.path.join(tmp, "stats")
    SharedStats.create(path, 2, layout)
    w = connection.Worker(boot, layout, path, 0, [0], loop=object())
    w.clusters["c"].set_hosts([("127.0.0.1", 1)], [1], [0])
    return w


@pytest.mark.parametrize("mutations", [False, True], ids=["plain", "header_mutations"])
def test_upstream_head(benchmark, mutations):
    with tempfile.TemporaryDirectory() as tmp:
        w = _worker(tmp, mutations)
        per, out = benchmark(connection.bench_upstream_head, w, REQUEST, ITER)
        assert out.startswith(b"GET /api/v1/items/42?expand=true HTTP/1.1\r\nhost: api.example.com")
        assert (b"x-added: 1" in out) == mutations
        benchmark.extra_info["ns_per_request"] = per * 1e9
