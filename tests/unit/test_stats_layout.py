"""The stats tables and the compiled core agree, and the shared block sums per-process slots."""
import os
import re

from fastproxy.config import model as m
from fastproxy.stats import SharedStats, StatsLayout, listener_stat_prefix
from fastproxy.stats import names

PXD = os.path.join(os.path.dirname(names.__file__), "..", "_core", "stats.pxd")


def _enum_members(text, section):
    block = text.split("cdef enum:  # %s" % section, 1)[1].split("\n\n", 1)[0]
    return [(mm.group(1), int(mm.group(2)))
            for mm in re.finditer(r"^\s+([A-Z0-9_]+) = (\d+)", block, re.M)]


def test_pxd_is_generated_from_the_tables():
    from fastproxy.stats import pxdgen
    assert open(pxdgen.path()).read() == pxdgen.render(), \
        "stats.pxd is stale: run python -m fastproxy.stats.pxdgen"


def test_pxd_enums_mirror_the_name_tables():
    text = open(PXD).read()
    tables = [("server", "SERVER_", names.SERVER_STATS), ("listener", "LISTENER_", names.LISTENER_STATS),
              ("http", "HTTP_", names.HTTP_STATS), ("cluster", "CLUSTER_", names.CLUSTER_STATS),
              ("grpc", "GRPC_", names.GRPC_STATS)]
    for section, prefix, table in tables:
        members = _enum_members(text, section)
        fixed = [mm for mm in members if mm[0] not in ("CLUSTER_UPSTREAM_RQ_100", "GRPC_STATUS_0")]
        for (member, index), (name, _) in zip(fixed, table):
            assert member == prefix + name.upper().replace(".", "_")
            assert table[index][0] == name
        if section == "cluster":
            assert dict(members)["CLUSTER_UPSTREAM_RQ_100"] == names.CLUSTER_CODE_BASE
            assert table[names.CLUSTER_CODE_BASE][0] == "upstream_rq_100"
            assert table[-1][0] == "upstream_rq_599"
        elif section == "grpc":
            assert dict(members)["GRPC_STATUS_0"] == names.GRPC_CODE_BASE == len(fixed)
            assert [n for n, _ in table[names.GRPC_CODE_BASE:]] == [str(c) for c in range(17)]
        else:
            assert len(fixed) == len(table)


def _bootstrap():
    hcm = m.HttpConnectionManager("ingress", m.RouteConfiguration())
    return m.Bootstrap(
        listeners=[m.Listener("a", m.SocketAddress("127.0.0.1", 10000), hcm),
                   m.Listener("b", m.SocketAddress("::1", 10001), hcm)],
        clusters=[m.Cluster("c1"), m.Cluster("c2")])


def test_layout_uses_envoy_names():
    layout = StatsLayout(_bootstrap())
    assert "listener.127.0.0.1_10000.downstream_cx_total" in layout.index
    assert listener_stat_prefix("::1", 10001) == "listener.[__1]_10001."
    assert "http.ingress.downstream_rq_2xx" in layout.index
    assert "cluster.c2.upstream_rq_503" in layout.index
    # listeners sharing a stat_prefix share the http.* block
    assert layout.http_bases[0] == layout.http_bases[1]
    assert len(set(layout.names)) == layout.size


def test_shared_block_sums_slots(tmp_path):
    layout = StatsLayout(_bootstrap())
    path = str(tmp_path / "stats")
    shared = SharedStats.create(path, 3, layout)
    other = SharedStats.open(path, layout)
    shared.add(1, "cluster.c1.upstream_rq_total", 5)
    other.add(2, "cluster.c1.upstream_rq_total", 7)
    shared.set_gauge(0, "server.live", 1)
    totals = other.as_dict()
    assert totals["cluster.c1.upstream_rq_total"] == 12
    assert totals["server.live"] == 1
    other.close()
    shared.close()
    shared.unlink()
    assert not os.path.exists(path)


def test_worker_slot_writes_are_seen_by_the_reader(tmp_path):
    from fastproxy._core.stats import StatsSlot
    layout = StatsLayout(_bootstrap())
    path = str(tmp_path / "stats")
    shared = SharedStats.create(path, 3, layout)
    slot = StatsSlot(path, 2, layout)
    i = layout.index["http.ingress.downstream_rq_total"]
    slot.add(i, 3)
    assert shared.sum()[i] == 3
    assert slot.get(i) == 3
    shared.close()


def test_per_code_counters_are_hidden_until_used():
    from fastproxy.admin.server import stat_rows
    rows = stat_rows(["cluster.c.upstream_rq_200", "cluster.c.upstream_rq_503",
                      "cluster.c.upstream_rq_total"], ["counter"] * 3, [4, 0, 0])
    assert [r[0] for r in rows] == ["cluster.c.upstream_rq_200", "cluster.c.upstream_rq_total"]
