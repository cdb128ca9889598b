"""Cluster gauges are the cluster's, not each worker's: with two workers, membership_total and
membership_healthy still count each host once (the admin sums every worker's slot)."""
from helpers import free_port, make_bootstrap


def test_membership_gauges_with_two_workers(origin_factory, fastproxy_factory):
    origins = [origin_factory() for _ in range(3)]
    port, admin = free_port(), free_port()
    p = fastproxy_factory(make_bootstrap(
        port, admin, clusters={"c": [("127.0.0.1", o.port) for o in origins]}), concurrency=2)
    stats = p.stats()
    assert stats["cluster.c.membership_total"] == 3
    assert stats["cluster.c.membership_healthy"] == 3
