"""Tests for fastproxy.config: loading, defaults, field mapping, refusals and cross-checks."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from fastproxy.config import ConfigError, load_bootstrap, load_dict, model, validate

ROOT = Path(__file__).resolve().parents[2]
HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM_PATH = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
VH_PATH = HCM_PATH + ".route_config.virtual_hosts[0]"

BASE = {
    "static_resources": {
        "listeners": [{
            "name": "l0",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": HCM_TYPE,
                    "stat_prefix": "ingress",
                    "route_config": {"virtual_hosts": [{
                        "name": "vh", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c0"}}],
                    }]},
                    "http_filters": [{"name": "envoy.filters.http.router",
                                      "typed_config": {"@type": ROUTER_TYPE}}],
                },
            }]}],
        }],
        "clusters": [{
            "name": "c0",
            "load_assignment": {"cluster_name": "c0", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                              "port_value": 8080}}}}]}]},
        }],
    }
}


def base() -> dict:
    return copy.deepcopy(BASE)


def hcm(d: dict) -> dict:
    return d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def vh(d: dict) -> dict:
    return hcm(d)["route_config"]["virtual_hosts"][0]


def errors_of(d: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_dict(d)
    return info.value.errors


def with_route(route: dict) -> model.Route:
    d = base()
    vh(d)["routes"] = [route]
    return load_dict(d).listeners[0].hcm.route_config.virtual_hosts[0].routes[0]


# --- loading -------------------------------------------------------------------------------

def test_yaml_and_json_give_the_same_model(tmp_path):
    y = tmp_path / "b.yaml"
    y.write_text(yaml.safe_dump(BASE))
    j = tmp_path / "b.json"
    j.write_text(json.dumps(BASE))
    other = tmp_path / "b.conf"  # unknown extension: JSON first, then YAML
    other.write_text(yaml.safe_dump(BASE))
    assert load_bootstrap(str(y)) == load_bootstrap(str(j)) == load_bootstrap(str(other))


def test_example_bootstrap_loads():
    b = load_bootstrap(str(ROOT / "examples" / "bootstrap.yaml"))
    assert b.admin.address == model.SocketAddress("127.0.0.1", 9901)
    (lst,) = b.listeners
    assert lst.address == model.SocketAddress("127.0.0.1", 10000)
    routes = lst.hcm.route_config.virtual_hosts[0].routes
    assert any(r.redirect for r in routes) and any(r.direct_response for r in routes)
    assert {r.route.cluster for r in routes if r.route} == {"demo"}
    (cl,) = b.clusters
    assert cl.name == "demo" and cl.type == "STATIC"
    assert cl.endpoints == [model.Endpoint(model.SocketAddress("127.0.0.1", 8080))]
    assert validate(str(ROOT / "examples" / "bootstrap.yaml")) == []


def test_camel_case_json_names_accepted():
    d = base()
    h = hcm(d)
    h["statPrefix"] = h.pop("stat_prefix")
    h["httpFilters"] = h.pop("http_filters")
    assert load_dict(d).listeners[0].hcm.stat_prefix == "ingress"


def test_missing_file_and_bad_syntax(tmp_path):
    with pytest.raises(ConfigError):
        load_bootstrap(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "invalid JSON" in validate(str(bad))[0]
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    assert "mapping" in validate(str(lst))[0]


# --- defaults ------------------------------------------------------------------------------

def test_defaults():
    b = load_dict(base())
    assert b.admin is None and b.node_id == "" and b.node_cluster == ""
    lst = b.listeners[0]
    assert lst.per_connection_buffer_limit_bytes == 1024 * 1024
    h = lst.hcm
    assert (h.codec_type, h.idle_timeout_ms, h.max_request_headers_kb) == ("AUTO", 3_600_000, 60)
    assert (h.stream_idle_timeout_ms, h.request_timeout_ms) == (300_000, 0)
    assert (h.use_remote_address, h.xff_num_trusted_hops) == (False, 0)
    assert (h.generate_request_id, h.server_name) == (True, "envoy")
    rc = h.route_config
    assert rc.name == "" and rc.headers == model.HeaderMutations()
    r = rc.virtual_hosts[0].routes[0]
    assert r.match == model.RouteMatch("prefix", "/")
    assert r.route == model.RouteAction(cluster="c0", timeout_ms=15000)
    c = b.clusters[0]
    assert (c.type, c.lb_policy, c.connect_timeout_ms) == ("STATIC", "ROUND_ROBIN", 5000)
    assert (c.per_connection_buffer_limit_bytes, c.tcp_keepalive) == (1024 * 1024, None)
    assert (c.dns_lookup_family, c.dns_refresh_rate_ms) == ("AUTO", 5000)
    assert c.endpoints[0].weight == 1 and c.endpoints[0].priority == 0


def test_empty_http_filters_means_router_only():
    d = base()
    del hcm(d)["http_filters"]
    load_dict(d)


# --- every supported field ---------------------------------------------------------------

def test_bootstrap_listener_hcm_fields():
    d = base()
    d["node"] = {"id": "n1", "cluster": "nc"}
    d["admin"] = {"address": {"socket_address": {"address": "::1", "port_value": 9901}},
                  "access_log_path": "/dev/null"}
    lst = d["static_resources"]["listeners"][0]
    lst["per_connection_buffer_limit_bytes"] = 32768
    lst["address"]["socket_address"]["port_value"] = 0
    lst["filter_chains"][0]["name"] = "chain"
    h = hcm(d)
    h.update({
        "codec_type": "HTTP1",
        "common_http_protocol_options": {"idle_timeout": "10s"},
        "max_request_headers_kb": 96,
        "stream_idle_timeout": "0s",
        "request_timeout": "2.5s",
        "use_remote_address": True,
        "xff_num_trusted_hops": 2,
        "generate_request_id": False,
        "server_name": "fp",
    })
    h["route_config"]["name"] = "rc"
    b = load_dict(d)
    assert (b.node_id, b.node_cluster) == ("n1", "nc")
    assert b.admin == model.Admin(model.SocketAddress("::1", 9901))
    assert b.admin.address.is_ipv6
    out = b.listeners[0]
    assert out.per_connection_buffer_limit_bytes == 32768 and out.address.port == 0
    m = out.hcm
    assert m.stat_prefix == "ingress" and m.route_config.name == "rc"
    assert (m.codec_type, m.idle_timeout_ms, m.max_request_headers_kb) == ("HTTP1", 10_000, 96)
    assert (m.stream_idle_timeout_ms, m.request_timeout_ms) == (0, 2500)
    assert (m.use_remote_address, m.xff_num_trusted_hops) == (True, 2)
    assert (m.generate_request_id, m.server_name) == (False, "fp")


def test_route_matches():
    r = with_route({"name": "r", "route": {"cluster": "c0"}, "match": {
        "path": "/exact", "case_sensitive": False,
        "headers": [
            {"name": "X-Exact", "exact_match": "a"},
            {"name": "x-re", "safe_regex_match": {"google_re2": {}, "regex": "a.*"}},
            {"name": "x-p", "prefix_match": "p", "invert_match": True},
            {"name": "x-s", "suffix_match": "s"},
            {"name": "x-c", "contains_match": "c"},
            {"name": "x-present", "present_match": True},
            {"name": "x-absent", "present_match": False},
            {"name": "x-sm", "string_match": {"exact": "E", "ignore_case": True},
             "treat_missing_header_as_empty": True},
            {"name": "x-smr", "string_match": {"safe_regex": {"regex": "^z$"}}},
            {"name": "x-none"},
        ],
        "query_parameters": [
            {"name": "q", "string_match": {"prefix": "v"}},
            {"name": "p", "present_match": True},
            {"name": "bare"},
        ],
    }})
    m = r.match
    assert r.name == "r"
    assert (m.kind, m.value, m.case_sensitive) == ("path", "/exact", False)
    S = model.StringMatcher
    H = model.HeaderMatcher
    assert m.headers == [
        H("x-exact", S("exact", "a")),
        H("x-re", S("regex", "a.*")),
        H("x-p", S("prefix", "p"), invert=True),
        H("x-s", S("suffix", "s")),
        H("x-c", S("contains", "c")),
        H("x-present", present=True),
        H("x-absent", present=False),
        H("x-sm", S("exact", "E", ignore_case=True), treat_missing_header_as_empty=True),
        H("x-smr", S("regex", "^z$")),
        H("x-none", present=True),
    ]
    Q = model.QueryParameterMatcher
    assert m.query_parameters == [Q("q", S("prefix", "v")), Q("p", None, True), Q("bare", None, True)]


@pytest.mark.parametrize("match,kind,value", [
    ({"prefix": "/a"}, "prefix", "/a"),
    ({"path": "/a"}, "path", "/a"),
    ({"safe_regex": {"google_re2": {}, "regex": "/a/[0-9]+"}}, "safe_regex", "/a/[0-9]+"),
    ({"safe_regex": {"regex": "/b"}}, "safe_regex", "/b"),
    ({"path_separated_prefix": "/api"}, "path_separated_prefix", "/api"),
])
def test_route_match_kinds(match, kind, value):
    r = with_route({"match": match, "route": {"cluster": "c0"}})
    assert (r.match.kind, r.match.value, r.match.case_sensitive) == (kind, value, True)


def test_route_action_fields():
    r = with_route({"match": {"prefix": "/"}, "route": {
        "cluster": "c0", "prefix_rewrite": "/x", "host_rewrite_literal": "h.example",
        "timeout": "0s"}})
    assert r.route == model.RouteAction(cluster="c0", prefix_rewrite="/x",
                                        host_rewrite_literal="h.example", timeout_ms=0)
    r = with_route({"match": {"prefix": "/"}, "route": {
        "cluster_header": "X-Cluster", "auto_host_rewrite": True, "timeout": "0.0005s",
        "regex_rewrite": {"pattern": {"google_re2": {}, "regex": "^/a"}, "substitution": "/b"}}})
    assert r.route == model.RouteAction(cluster_header="x-cluster", auto_host_rewrite=True,
                                        regex_rewrite=model.RegexRewrite("^/a", "/b"), timeout_ms=1)


def test_weighted_clusters():
    d = base()
    d["static_resources"]["clusters"].append({"name": "c1"})
    vh(d)["routes"] = [{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
        {"name": "c0", "weight": 80, "host_rewrite_literal": "a",
         "request_headers_to_add": [{"header": {"key": "X-W", "value": "0"}}],
         "request_headers_to_remove": ["X-R"],
         "response_headers_to_add": [{"header": {"key": "x-s", "value": "1"}}],
         "response_headers_to_remove": ["x-t"]},
        {"name": "c1", "weight": 20},
    ]}}}]
    wc = load_dict(d).listeners[0].hcm.route_config.virtual_hosts[0].routes[0].route.weighted_clusters
    assert wc[0].name == "c0" and wc[0].weight == 80 and wc[0].host_rewrite_literal == "a"
    assert wc[0].headers == model.HeaderMutations(
        [model.HeaderValueOption("x-w", "0")], ["x-r"], [model.HeaderValueOption("x-s", "1")], ["x-t"])
    assert wc[1] == model.WeightedCluster("c1", 20)


@pytest.mark.parametrize("code,status", [
    (None, 301), ("MOVED_PERMANENTLY", 301), ("FOUND", 302), ("SEE_OTHER", 303),
    ("TEMPORARY_REDIRECT", 307), ("PERMANENT_REDIRECT", 308),
])
def test_redirect_codes(code, status):
    redirect = {"path_redirect": "/new"}
    if code:
        redirect["response_code"] = code
    assert with_route({"match": {"prefix": "/"}, "redirect": redirect}).redirect.response_code == status


def test_redirect_fields():
    r = with_route({"match": {"prefix": "/"}, "redirect": {
        "https_redirect": True, "host_redirect": "h", "port_redirect": 8443,
        "prefix_rewrite": "/p", "strip_query": True}})
    assert r.redirect == model.RedirectAction(scheme_redirect="https", host_redirect="h",
                                              port_redirect=8443, prefix_rewrite="/p",
                                              strip_query=True)
    r = with_route({"match": {"prefix": "/"}, "redirect": {
        "scheme_redirect": "http",
        "regex_rewrite": {"pattern": {"regex": "a"}, "substitution": "b"}}})
    assert r.redirect == model.RedirectAction(scheme_redirect="http",
                                              regex_rewrite=model.RegexRewrite("a", "b"))


def test_direct_response():
    r = with_route({"match": {"prefix": "/"}, "direct_response": {"status": 404}})
    assert r.direct_response == model.DirectResponse(404, None)
    r = with_route({"match": {"prefix": "/"},
                    "direct_response": {"status": 200, "body": {"inline_string": "hé"}}})
    assert r.direct_response.body == "hé".encode()
    r = with_route({"match": {"prefix": "/"},
                    "direct_response": {"status": 503, "body": {"inline_bytes": "AAE="}}})
    assert r.direct_response.body == b"\x00\x01"


def test_header_mutations_at_every_level():
    d = base()
    rc = hcm(d)["route_config"]
    rc["request_headers_to_add"] = [
        {"header": {"key": "X-A", "value": "1"}},
        {"header": {"key": "x-b", "value": "50%%"}, "append": True},
        {"header": {"key": "x-c", "value": ""}, "append": False, "keep_empty_value": True},
        {"header": {"key": "x-d", "value": "v"}, "append_action": "ADD_IF_ABSENT"},
        {"header": {"key": "x-e", "value": "v"}, "append_action": "OVERWRITE_IF_EXISTS"},
    ]
    rc["response_headers_to_remove"] = ["Server"]
    vh(d)["response_headers_to_add"] = [{"header": {"key": "x-vh", "value": "1"},
                                         "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    vh(d)["request_headers_to_remove"] = ["X-Drop"]
    vh(d)["routes"][0]["response_headers_to_remove"] = ["x-r"]
    out = load_dict(d).listeners[0].hcm.route_config
    V = model.HeaderValueOption
    assert out.headers.request_add == [
        V("x-a", "1", model.APPEND_IF_EXISTS_OR_ADD),
        V("x-b", "50%", model.APPEND_IF_EXISTS_OR_ADD),
        V("x-c", "", model.OVERWRITE_IF_EXISTS_OR_ADD, keep_empty_value=True),
        V("x-d", "v", model.ADD_IF_ABSENT),
        V("x-e", "v", model.OVERWRITE_IF_EXISTS),
    ]
    assert out.headers.response_remove == ["server"]
    assert out.virtual_hosts[0].headers.response_add == [V("x-vh", "1", model.OVERWRITE_IF_EXISTS_OR_ADD)]
    assert out.virtual_hosts[0].headers.request_remove == ["x-drop"]
    assert out.virtual_hosts[0].routes[0].headers.response_remove == ["x-r"]


def test_cluster_fields():
    d = base()
    d["static_resources"]["clusters"] = [{
        "name": "c0", "type": "STRICT_DNS", "connect_timeout": "0.25s", "lb_policy": "LEAST_REQUEST",
        "per_connection_buffer_limit_bytes": 4096, "dns_lookup_family": "V4_ONLY",
        "dns_refresh_rate": "30s",
        "upstream_connection_options": {"tcp_keepalive": {
            "keepalive_probes": 3, "keepalive_time": 30, "keepalive_interval": 5}},
        "load_assignment": {"cluster_name": "c0", "endpoints": [
            {"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "a.example", "port_value": 80}}},
                 "load_balancing_weight": 3}]},
            {"priority": 1, "lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 81}}}}]},
        ]},
    }, {"name": "c1", "type": "LOGICAL_DNS", "lb_policy": "RANDOM", "load_assignment": {"cluster_name": "c1", "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "b.example",
                                                                          "port_value": 443}}}}]}]}}]
    c0, c1 = load_dict(d).clusters
    assert (c0.type, c0.lb_policy, c0.connect_timeout_ms) == ("STRICT_DNS", "LEAST_REQUEST", 250)
    assert (c0.per_connection_buffer_limit_bytes, c0.dns_lookup_family, c0.dns_refresh_rate_ms) == (
        4096, "V4_ONLY", 30_000)
    assert c0.tcp_keepalive == model.TcpKeepalive(3, 30, 5)
    assert c0.endpoints == [
        model.Endpoint(model.SocketAddress("a.example", 80), 3, 0),
        model.Endpoint(model.SocketAddress("10.0.0.1", 81), 1, 1),
    ]
    assert (c1.type, c1.lb_policy) == ("LOGICAL_DNS", "RANDOM")


# --- refusals ------------------------------------------------------------------------------

def test_unsupported_field_refused_with_path():
    d = base()
    hcm(d)["add_user_agent"] = True
    assert errors_of(d) == [HCM_PATH + ".add_user_agent: not supported"]


def test_unknown_typed_config_refused():
    d = base()
    hcm(d)["http_filters"].insert(0, {"name": "envoy.filters.http.cors", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}})
    errs = errors_of(d)
    assert (HCM_PATH + ".http_filters[0].typed_config: type envoy.extensions.filters.http.cors.v3.Cors"
            " not supported") in errs


def test_registered_but_misplaced_typed_config_refused():
    d = base()
    hcm(d)["http_filters"] = [{"name": "x", "typed_config": {"@type": HCM_TYPE, "stat_prefix": "s",
                                                             "route_config": {}}}]
    assert any("not supported as an HTTP filter" in e for e in errors_of(d))


def test_all_errors_reported():
    d = base()
    d["layered_runtime"] = {}
    lst = d["static_resources"]["listeners"][0]
    lst["listener_filters"] = [{"name": "tls_inspector"}]
    lst["filter_chains"][0]["filter_chain_match"] = {"server_names": ["a"]}
    hcm(d)["codec_type"] = "HTTP3"
    vh(d)["routes"][0]["route"]["cluster"] = "missing"
    d["static_resources"]["clusters"][0]["lb_policy"] = "CLUSTER_PROVIDED"
    errs = errors_of(d)
    assert set(errs) == {
        "layered_runtime: not supported",
        "static_resources.listeners[0].filter_chains[0].filter_chain_match: not supported",
        "static_resources.listeners[0].listener_filters: not supported",
        HCM_PATH + ".codec_type: HTTP3 not supported",
        VH_PATH + ".routes[0].route.cluster: route: unknown cluster 'missing'",
        "static_resources.clusters[0].lb_policy: CLUSTER_PROVIDED not supported",
    }
    assert len(errs) == 6


def test_unknown_cluster_refused():
    d = base()
    vh(d)["routes"][0]["route"]["cluster"] = "nope"
    assert errors_of(d) == [VH_PATH + ".routes[0].route.cluster: route: unknown cluster 'nope'"]
    d = base()
    vh(d)["routes"][0]["route"] = {"weighted_clusters": {"clusters": [{"name": "w", "weight": 1}]}}
    assert errors_of(d) == [VH_PATH + ".routes[0].route.weighted_clusters.clusters[0].name: "
                                      "route: unknown weighted cluster 'w'"]


def test_json_format_error_path_from_at_clause():
    d = base()
    hcm(d)["rds"] = {"route_config_name": "x"}
    (err,) = errors_of(d)
    assert err.startswith(HCM_PATH + ": ") and "route_specifier" in err


def test_json_format_errors_surface_with_path():
    d = base()
    d["static_resources"]["listeners"][0]["bogus"] = 1
    (err,) = errors_of(d)
    assert err.startswith("static_resources.listeners[0].bogus: unknown field")
    d = base()
    d["static_resources"]["clusters"][0]["connect_timeout"] = "soon"
    (err,) = errors_of(d)
    assert err.startswith("static_resources.clusters") and "connect_timeout" in err


@pytest.mark.parametrize("mutate,expected", [
    (lambda d: d["static_resources"]["listeners"][0].pop("address"),
     "static_resources.listeners[0].address: address is necessary"),
    (lambda d: d["static_resources"]["clusters"][0].update(name=""),
     "static_resources.clusters[0].name: value length must be at least 1 characters"),
    (lambda d: vh(d)["routes"][0]["route"].update(cluster=""),
     VH_PATH + ".routes[0].route.cluster: value length must be at least 1 characters"),
    (lambda d: d["static_resources"]["listeners"][0]["address"]["socket_address"].update(port_value=70000),
     "static_resources.listeners[0].address.socket_address.port_value: "
     "value must be less than or equal to 65535"),
    (lambda d: vh(d).update(domains=[]),
     VH_PATH + ".domains: value must contain at least 1 item(s)"),
    (lambda d: vh(d)["routes"][0].pop("route"),
     VH_PATH + ".routes[0]: one of [route, redirect, direct_response, filter_action, "
               "non_forwarding_action] is required"),
    (lambda d: vh(d)["routes"][0].update(route=None, direct_response={"status": 99}),
     VH_PATH + ".routes[0].direct_response.status: value must be inside range [200, 600)"),
    (lambda d: d["static_resources"]["clusters"][0].update(connect_timeout="0s"),
     "static_resources.clusters[0].connect_timeout: value must be greater than 0s"),
])
def test_envoy_validation_rules(mutate, expected):
    d = base()
    mutate(d)
    if vh(d)["routes"][0].get("route", 1) is None:
        del vh(d)["routes"][0]["route"]
    assert expected in errors_of(d)


@pytest.mark.parametrize("mutate,expected", [
    (lambda d: hcm(d).update(rds={"route_config_name": "x"}, route_config=None),
     HCM_PATH + ".rds: not supported"),
    (lambda d: d["static_resources"]["clusters"][0].update(type="EDS"),
     "static_resources.clusters[0].type: EDS not supported"),
    (lambda d: d["static_resources"]["listeners"][0]["filter_chains"].append(
        copy.deepcopy(d["static_resources"]["listeners"][0]["filter_chains"][0])),
     "static_resources.listeners[0].filter_chains: exactly one filter chain is supported (got 2)"),
    (lambda d: d["static_resources"]["listeners"][0]["filter_chains"][0].update(
        transport_socket={"name": "tls"}),
     "static_resources.listeners[0].filter_chains[0].transport_socket: not supported"),
    (lambda d: vh(d)["routes"][0]["route"].update(
        weighted_clusters={"clusters": [{"name": "c0", "weight": 1}], "total_weight": 1}, cluster=None),
     VH_PATH + ".routes[0].route.weighted_clusters.total_weight: not supported"),
    (lambda d: vh(d)["routes"][0].update(request_headers_to_add=[
        {"header": {"key": "x-id", "value": "%REQ(x-request-id)%"}}]),
     VH_PATH + ".routes[0].request_headers_to_add[0].header.value: header formatters not supported"),
    (lambda d: vh(d)["routes"][0].update(request_headers_to_add=[
        {"header": {"key": "Host", "value": "a"}}]),
     VH_PATH + ".routes[0].request_headers_to_add[0].header.key: "
               ":-prefixed or host headers may not be modified"),
    (lambda d: vh(d)["routes"][0].update(request_headers_to_add=[
        {"header": {"key": "x", "value": "a"}, "append": True, "append_action": "ADD_IF_ABSENT"}]),
     VH_PATH + ".routes[0].request_headers_to_add[0]: "
               "Both append and append_action are set and it's not allowed"),
    (lambda d: d["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0].update(
        proximity=1),
     "static_resources.clusters[0].load_assignment.endpoints[0].proximity: not supported"),
    (lambda d: d["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
     ["lb_endpoints"][0]["endpoint"]["address"]["socket_address"].update(address="localhost"),
     "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address."
     "socket_address.address: malformed IP address: localhost. Consider setting resolver_name or "
     "setting cluster type to 'STRICT_DNS' or 'LOGICAL_DNS'"),
    (lambda d: d["static_resources"]["clusters"].append(copy.deepcopy(d["static_resources"]["clusters"][0])),
     "static_resources.clusters[1].name: cluster manager: duplicate cluster 'c0'"),
    (lambda d: d.update(admin={"access_log_path": "/var/log/admin.log"}),
     "admin.access_log_path: only /dev/null is supported (admin access logs are not written)"),
    (lambda d: hcm(d)["http_filters"][0]["typed_config"].update(suppress_envoy_headers=True),
     HCM_PATH + ".http_filters[0].typed_config.suppress_envoy_headers: not supported"),
    (lambda d: vh(d)["routes"][0]["match"].update(grpc={}),
     VH_PATH + ".routes[0].match.grpc: not supported"),
    (lambda d: vh(d)["routes"][0].update(route=None, direct_response={
        "status": 200, "body": {"inline_string": "x" * 4097}}),
     VH_PATH + ".routes[0].direct_response.body: response body size is 4097 bytes; maximum is 4096"),
])
def test_refusals(mutate, expected):
    d = base()
    mutate(d)
    if hcm(d).get("route_config", 1) is None:
        del hcm(d)["route_config"]
        assert expected in errors_of(d)
        return
    route = vh(d)["routes"][0]
    for key in ("route", "cluster"):
        if route.get(key, 1) is None:
            del route[key]
        if isinstance(route.get("route"), dict) and route["route"].get(key, 1) is None:
            del route["route"][key]
    assert expected in errors_of(d)


def test_duplicate_listeners():
    d = base()
    lst = copy.deepcopy(d["static_resources"]["listeners"][0])
    d["static_resources"]["listeners"].append(lst)
    errs = errors_of(d)
    assert "static_resources.listeners[1].name: duplicate listener name 'l0'" in errs
    assert any(e.startswith("static_resources.listeners[1].address: error adding listener: 'l0' "
                            "has duplicate address '127.0.0.1:10000'") for e in errs)
    # port 0 listeners may share an address
    d = base()
    d["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = 0
    lst = copy.deepcopy(d["static_resources"]["listeners"][0])
    lst["name"] = "l1"
    d["static_resources"]["listeners"].append(lst)
    assert len(load_dict(d).listeners) == 2


def test_duplicate_domains():
    d = base()
    rc = hcm(d)["route_config"]
    rc["name"] = "rc"
    rc["virtual_hosts"].append({"name": "b", "domains": ["*", "a.example"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c0"}}]})
    rc["virtual_hosts"].append({"name": "c", "domains": ["A.example"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c0"}}]})
    assert errors_of(d) == [
        HCM_PATH + ".route_config.virtual_hosts[1].domains[0]: "
                   "Only a single wildcard domain is permitted in route rc",
        HCM_PATH + ".route_config.virtual_hosts[2].domains[0]: Only unique values for domains are "
                   "permitted. Duplicate entry of domain a.example in route rc",
    ]


def test_validate_lists_errors(tmp_path):
    d = base()
    hcm(d)["add_user_agent"] = True
    hcm(d)["codec_type"] = "HTTP3"
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(d))
    assert validate(str(f)) == [HCM_PATH + ".add_user_agent: not supported",
                                HCM_PATH + ".codec_type: HTTP3 not supported"]
