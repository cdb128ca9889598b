"""envoy.filters.http.grpc_stats: config (what is accepted and refused), the stats layout it
makes, and the frame counter of the compiled core."""
from __future__ import annotations

import copy
import random
import struct
import subprocess

import pytest
import yaml

from fastproxy.config import load_dict, model
from fastproxy.stats import StatsLayout
from fastproxy.stats.names import GRPC_STATS

from helpers import find_envoy
from test_config import HCM_PATH, VH_PATH, base, errors_of, hcm, vh

GS_TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"
GS_NAME = "envoy.filters.http.grpc_stats"
GRPC_WEB = {"name": "envoy.filters.http.grpc_web", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"}}
LRL = {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    "stat_prefix": "rl"}}
FILTER_PATH = HCM_PATH + ".http_filters[0]"
ALLOWLIST = {"services": [{"name": "a.Svc", "method_names": ["Get", "Put", "Get"]},
                          {"name": "b.Other", "method_names": ["Call"]},
                          {"name": "a.Svc", "method_names": ["Put", "Del"]}]}


def gs(**config) -> dict:
    return {"name": GS_NAME, "typed_config": {"@type": GS_TYPE, **config}}


def with_filters(*filters) -> dict:
    d = base()
    hcm(d)["http_filters"][:0] = copy.deepcopy(list(filters))
    return d


def grpc_stats_of(d: dict) -> model.GrpcStats:
    return load_dict(d).listeners[0].hcm.grpc_stats


# --- accepted ------------------------------------------------------------------------------

def test_no_filter_no_grpc_stats():
    assert grpc_stats_of(base()) is None


@pytest.mark.parametrize("config", [{}, {"stats_for_all_methods": False},
                                    {"emit_filter_state": False, "enable_upstream_stats": False,
                                     "replace_dots_in_grpc_service_name": False}])
def test_per_cluster_stats(config):
    assert grpc_stats_of(with_filters(gs(**config))) == model.GrpcStats()


def test_allowlist_in_order_without_duplicates():
    g = grpc_stats_of(with_filters(gs(individual_method_stats_allowlist=ALLOWLIST)))
    assert g.allowlist == [("a.Svc", "Get"), ("a.Svc", "Put"), ("b.Other", "Call"),
                           ("a.Svc", "Del")]
    # an empty allowlist counts every method per cluster, as no allowlist does
    assert grpc_stats_of(with_filters(gs(individual_method_stats_allowlist={}))).allowlist == []


@pytest.mark.parametrize("order, before_rl, after_gw", [
    (["GS"], False, False),
    (["GS", "RL"], True, False),
    (["RL", "GS"], False, False),
    (["GW", "GS"], False, True),
    (["GS", "GW"], False, False),
    (["GW", "GS", "RL"], True, True),
    (["RL", "GW", "GS"], False, True),
    (["GS", "RL", "GW"], True, False),
])
def test_place_in_the_filter_chain(order, before_rl, after_gw):
    named = {"GS": gs(), "RL": LRL, "GW": GRPC_WEB}
    g = grpc_stats_of(with_filters(*(named[n] for n in order)))
    assert (g.before_ratelimit, g.after_grpc_web) == (before_rl, after_gw)


# --- refused -------------------------------------------------------------------------------

def test_stats_for_all_methods_refused():
    assert errors_of(with_filters(gs(stats_for_all_methods=True))) == [
        FILTER_PATH + ".typed_config.stats_for_all_methods: true not supported (stat names made "
                      "per method at run time; list the methods in "
                      "individual_method_stats_allowlist)"]


@pytest.mark.parametrize("field", ["emit_filter_state", "enable_upstream_stats",
                                   "replace_dots_in_grpc_service_name"])
def test_unimplemented_fields_refused(field):
    assert errors_of(with_filters(gs(**{field: True}))) == [
        f"{FILTER_PATH}.typed_config.{field}: not supported"]


def test_validation_rules_of_the_allowlist():
    d = with_filters(gs(individual_method_stats_allowlist={"services": [
        {"name": "", "method_names": ["M"]}, {"name": "S"}]}))
    assert errors_of(d) == [
        FILTER_PATH + ".typed_config.individual_method_stats_allowlist.services[0].name: value "
                      "length must be at least 1 characters",
        FILTER_PATH + ".typed_config.individual_method_stats_allowlist.services[1].method_names: "
                      "value must contain at least 1 item(s)"]


def test_filter_chain_refusals():
    assert errors_of(with_filters(gs(), gs())) == [
        HCM_PATH + ".http_filters[1]: only one gRPC stats filter is supported"]
    d = base()
    hcm(d)["http_filters"] = [gs()]  # no router
    assert errors_of(d) == [HCM_PATH + ".http_filters[0]: non-terminal filter named "
                                       f"{GS_NAME} of type {GS_NAME} is the last filter in a "
                                       "http filter chain."]


def test_per_route_config_refused():
    d = with_filters(gs())
    vh(d)["typed_per_filter_config"] = {GS_NAME: {"@type": GS_TYPE}}
    assert errors_of(d) == [f"{VH_PATH}.typed_per_filter_config.{GS_NAME}: type "
                            "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig does not "
                            "support virtual host or route specific configurations"]


# --- the stats layout ------------------------------------------------------------------------

def _two_clusters(d: dict) -> dict:
    c1 = copy.deepcopy(d["static_resources"]["clusters"][0])
    c1["name"] = c1["load_assignment"]["cluster_name"] = "c1"
    d["static_resources"]["clusters"].append(c1)
    return d


def test_layout_without_the_filter_has_no_grpc_stats():
    layout = StatsLayout(load_dict(_two_clusters(base())))
    assert not any(".grpc." in n for n in layout.names)
    assert layout.grpc_bases == {} and layout.grpc_methods == []


def test_layout_blocks_per_cluster_and_method():
    d = _two_clusters(with_filters(gs(individual_method_stats_allowlist=ALLOWLIST)))
    # a second listener whose filter has its own allowlist (one method shared)
    lst = copy.deepcopy(d["static_resources"]["listeners"][0])
    lst["name"], lst["address"]["socket_address"]["port_value"] = "l1", 10001
    lst["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0] = gs(
        individual_method_stats_allowlist={"services": [
            {"name": "b.Other", "method_names": ["Call", "More"]}]})
    d["static_resources"]["listeners"].append(lst)
    layout = StatsLayout(load_dict(d))
    assert layout.grpc_methods == [("a.Svc", "Get"), ("a.Svc", "Put"), ("b.Other", "Call"),
                                   ("a.Svc", "Del"), ("b.Other", "More")]
    for cluster in ("c0", "c1"):
        base_ = layout.grpc_bases[cluster]
        assert layout.names[base_:base_ + len(GRPC_STATS)] == [
            f"cluster.{cluster}.grpc.{n}" for n, _ in GRPC_STATS]
        for i, (service, method) in enumerate(layout.grpc_methods):
            mb = layout.grpc_method_bases[cluster][i]
            assert layout.names[mb] == f"cluster.{cluster}.grpc.{service}.{method}.success"
    assert "cluster.c0.grpc.0" in layout.index and "cluster.c1.grpc.16" in layout.index
    assert "cluster.c0.grpc.17" not in layout.index
    assert len(set(layout.names)) == layout.size
    # Envoy creates these counters on first use: the admin hides them while they are zero
    assert [layout.lazy[i] for i in (layout.index["cluster.c0.grpc.total"],
                                     layout.index["cluster.c1.grpc.a.Svc.Get.success"],
                                     layout.index["cluster.c0.upstream_rq_total"])] == [
        True, True, False]


def test_layout_methods_with_the_same_stat_name_share_a_block():
    d = with_filters(gs(individual_method_stats_allowlist={"services": [
        {"name": "a.b", "method_names": ["c"]}, {"name": "a", "method_names": ["b.c"]}]}))
    layout = StatsLayout(load_dict(d))
    assert layout.grpc_method_bases["c0"][0] == layout.grpc_method_bases["c0"][1]
    assert len(set(layout.names)) == layout.size


def test_admin_hides_lazy_stats_until_used():
    from fastproxy.admin.server import stat_rows
    rows = stat_rows(["cluster.c.grpc.total", "cluster.c.grpc.success", "cluster.c.x"],
                     ["counter"] * 3, [2, 0, 0], [True, True, False])
    assert [r[0] for r in rows] == ["cluster.c.grpc.total", "cluster.c.x"]


# --- the frame counter -------------------------------------------------------------------------

def _frame(flags: int, message: bytes) -> bytes:
    return struct.pack(">BI", flags, len(message)) + message


def test_frames_counted_across_any_split():
    from fastproxy._core.connection import grpc_frame_count
    rng = random.Random(7)
    messages = [b"", b"a", b"x" * 300, bytes(70_000), b"yz"] * 3
    body = b"".join(_frame(rng.choice((0, 1)), m) for m in messages)
    assert grpc_frame_count([body]) == len(messages)
    assert grpc_frame_count([body[i:i + 1] for i in range(len(body))]) == len(messages)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(body)), 6))
        pieces = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
        assert grpc_frame_count(pieces) == len(messages)
    # a frame counts from its first byte, as Envoy's FrameInspector counts it
    assert grpc_frame_count([_frame(0, b"abc")[:1]]) == 1


def test_connect_end_of_stream_frame_stops_the_response_count():
    from fastproxy._core.connection import grpc_frame_count
    body = _frame(0, b"a") + _frame(2, b"{}") + _frame(0, b"c")
    assert grpc_frame_count([body], response=True) == 1
    assert grpc_frame_count([body[:7], body[7:]], response=True) == 1
    assert grpc_frame_count([body], response=False) == 3  # requests: every frame


# --- against real Envoy ------------------------------------------------------------------------

def _envoy_validate(d: dict, tmp_path) -> tuple[int, str]:
    f = tmp_path / "bootstrap.yaml"
    f.write_text(yaml.safe_dump(d))
    proc = subprocess.run([find_envoy(), "--mode", "validate", "-c", str(f), "-l", "critical"],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


def test_accepted_configs_are_envoys(tmp_path):
    d = with_filters(GRPC_WEB, gs(individual_method_stats_allowlist=ALLOWLIST), LRL)
    assert grpc_stats_of(copy.deepcopy(d)).allowlist
    rc, out = _envoy_validate(d, tmp_path)
    assert rc == 0, out


@pytest.mark.parametrize("name", ["last", "no_service_name", "no_methods", "per_route"])
def test_refused_like_envoy(name, tmp_path):
    d = with_filters(gs())
    if name == "last":
        hcm(d)["http_filters"] = [gs()]
    elif name == "no_service_name":
        d = with_filters(gs(individual_method_stats_allowlist={"services": [
            {"name": "", "method_names": ["M"]}]}))
    elif name == "no_methods":
        d = with_filters(gs(individual_method_stats_allowlist={"services": [{"name": "S"}]}))
    elif name == "per_route":
        vh(d)["routes"][0]["typed_per_filter_config"] = {GS_NAME: {"@type": GS_TYPE}}
    assert errors_of(copy.deepcopy(d))
    rc, out = _envoy_validate(d, tmp_path)
    assert rc != 0, out
