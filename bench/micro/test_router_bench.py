"""Micro-benchmarks of fastproxy._core.router.

Every figure goes through RouteTable.route_request, the Python entry point, so it includes the
cost of turning Python bytes into a RequestHead and of the Python call itself; the connection
layer calls the cdef route() directly on a parsed head and pays none of that.  `plain_python`
is the obvious alternative (a loop of str.startswith over the same prefixes) for comparison.

    pytest bench/micro/test_router_bench.py --benchmark-only
"""
import pytest

from fastproxy.config import model as m

router = pytest.importorskip("fastproxy._core.router")

HEADERS = [(b"host", b"api.example.com"), (b"user-agent", b"bench/1.0"), (b"accept", b"*/*")]


def prefix_table(n):
    routes = [m.Route(match=m.RouteMatch("prefix", f"/service-{i:04d}/"),
                      route=m.RouteAction(cluster=f"c{i}")) for i in range(n)]
    vhosts = [m.VirtualHost("other", ["other.example.com"], []),
              m.VirtualHost("api", ["api.example.com"], routes)]
    return router.RouteTable(m.RouteConfiguration(name="bench", virtual_hosts=vhosts))


@pytest.mark.parametrize("n", [100, 1000])
def test_prefix_match_last_route(benchmark, n):
    table = prefix_table(n)
    path = f"/service-{n - 1:04d}/items/42?x=1".encode()
    decision = router.RouteDecision()
    result = benchmark(table.route_request, b"GET", path, HEADERS, False, 0, decision)
    assert result.cluster == f"c{n - 1}"


@pytest.mark.parametrize("n", [100, 1000])
def test_prefix_match_first_route(benchmark, n):
    table = prefix_table(n)
    decision = router.RouteDecision()
    result = benchmark(table.route_request, b"GET", b"/service-0000/x", HEADERS, False, 0,
                       decision)
    assert result.cluster == "c0"


@pytest.mark.parametrize("n", [100, 1000])
def test_plain_python_match_last_route(benchmark, n):
    prefixes = [(f"/service-{i:04d}/", f"c{i}") for i in range(n)]
    domains = {"api.example.com": prefixes}
    path = f"/service-{n - 1:04d}/items/42?x=1"

    def plain(host, path):
        routes = domains.get(host.lower())
        if routes is None:
            return None
        p = path.split("?", 1)[0]
        for prefix, cluster in routes:
            if p.startswith(prefix):
                return cluster
        return None

    assert benchmark(plain, "api.example.com", path) == f"c{n - 1}"
