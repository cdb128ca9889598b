"""DNS cluster types with a "localhost" endpoint."""
import contextlib
import json

import pytest

from helpers import Origin, build_request, parse_response, route_to
from integration_util import Client, simple_proxy_config, start_proxy


def _dns_cluster(name, kind, ports, **extra):
    return {
        "type": kind,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "localhost", "port_value": p}}}}
            for p in ports]}]},
        **extra,
    }


@pytest.fixture(scope="module")
def env():
    with contextlib.ExitStack() as stack:
        o1 = stack.enter_context(Origin())
        o2 = stack.enter_context(Origin())
        extra = {
            "strict": _dns_cluster("strict", "STRICT_DNS", [o1.port]),
            "strict_v4": _dns_cluster("strict_v4", "STRICT_DNS", [o1.port], dns_lookup_family="V4_ONLY"),
            "strict_two": _dns_cluster("strict_two", "STRICT_DNS", [o1.port, o2.port]),
            "logical": _dns_cluster("logical", "LOGICAL_DNS", [o2.port]),
            "logical_v4": _dns_cluster("logical_v4", "LOGICAL_DNS", [o2.port],
                                       dns_lookup_family="V4_ONLY", dns_refresh_rate="1s"),
        }
        # make_bootstrap wants endpoints; the DNS clusters replace them through cluster_extra
        clusters = {name: [("127.0.0.1", 1)] for name in extra}
        cfg = simple_proxy_config(
            clusters, cluster_extra=extra,
            virtual_hosts=[{"name": "dns", "domains": ["*"],
                            "routes": [route_to(n, prefix=f"/{n}/") for n in extra]}])
        fp = start_proxy(cfg, 1)
        stack.callback(fp.stop)
        yield fp, o1, o2


@pytest.mark.parametrize("cluster,which", [
    ("strict", 0), ("strict_v4", 0), ("logical", 1), ("logical_v4", 1)])
def test_dns_cluster_with_localhost_endpoint(env, cluster, which):
    fp, o1, o2 = env
    target = (o1, o2)[which]
    target.clear()
    with Client(fp.port) as c:
        for i in range(5):
            status, _, body = parse_response(c.request(build_request("GET", f"/{cluster}/{i}")))
            assert status == 200, body
            assert json.loads(body)["path"] == f"/{cluster}/{i}"
    assert [r.path for r in target.requests] == [f"/{cluster}/{i}" for i in range(5)]
    stats = fp.stats(f"cluster.{cluster}.")
    assert stats[f"cluster.{cluster}.membership_total"] == 1
    assert stats[f"cluster.{cluster}.membership_healthy"] == 1
    assert stats[f"cluster.{cluster}.upstream_rq_2xx"] >= 5


def test_strict_dns_with_two_localhost_endpoints_balances(env):
    fp, o1, o2 = env
    o1.clear()
    o2.clear()
    with Client(fp.port) as c:
        for i in range(20):
            assert parse_response(c.request(build_request("GET", f"/strict_two/{i}")))[0] == 200
    n1 = sum(1 for r in o1.requests if r.path.startswith("/strict_two/"))
    n2 = sum(1 for r in o2.requests if r.path.startswith("/strict_two/"))
    assert (n1, n2) == (10, 10)
    assert fp.stats("cluster.strict_two.membership_total")["cluster.strict_two.membership_total"] == 2
