"""Config: HTTP/2 protocol options (connection manager and clusters), upstream HttpProtocolOptions,
gRPC timeouts on routes and the gRPC-Web filter."""
from __future__ import annotations

import copy
import subprocess

import pytest
import yaml

from fastproxy.config import load_dict, model, validate

from helpers import find_envoy
from test_config import BASE, HCM_PATH, VH_PATH, base, errors_of, hcm, vh

HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HPO_TYPE = "type.googleapis.com/" + HPO
GRPC_WEB_TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
GRPC_WEB = {"name": "envoy.filters.http.grpc_web", "typed_config": {"@type": GRPC_WEB_TYPE}}
LRL = {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    "stat_prefix": "rl"}}
CL_PATH = "static_resources.clusters[0]"
OPT_PATH = f"{CL_PATH}.typed_extension_protocol_options.{HPO}"
H2 = HCM_PATH + ".http2_protocol_options"
UP_H2 = OPT_PATH + ".explicit_http_config.http2_protocol_options"

ALL_H2 = {
    "max_concurrent_streams": 100, "initial_stream_window_size": 65535,
    "initial_connection_window_size": 1048576, "max_outbound_frames": 5000,
    "max_outbound_control_frames": 500, "max_consecutive_inbound_frames_with_empty_payload": 2,
    "max_inbound_priority_frames_per_stream": 50,
    "max_inbound_window_update_frames_per_data_frame_sent": 5, "allow_connect": True,
    "connection_keepalive": {"interval": "10s", "timeout": "2.5s"},
}
ALL_H2_MODEL = model.Http2Options(
    max_concurrent_streams=100, initial_stream_window_size=65535,
    initial_connection_window_size=1048576, max_outbound_frames=5000,
    max_outbound_control_frames=500, max_consecutive_inbound_frames_with_empty_payload=2,
    max_inbound_priority_frames_per_stream=50,
    max_inbound_window_update_frames_per_data_frame_sent=5, allow_connect=True,
    keepalive_interval_ms=10_000, keepalive_timeout_ms=2500)


def cluster(d: dict) -> dict:
    return d["static_resources"]["clusters"][0]


def with_options(options: dict) -> dict:
    d = base()
    cluster(d)["typed_extension_protocol_options"] = {HPO: {"@type": HPO_TYPE, **options}}
    return d


def route_action(route: dict) -> model.RouteAction:
    d = base()
    vh(d)["routes"] = [{"match": {"prefix": "/"}, "route": {"cluster": "c0", **route}}]
    return load_dict(d).listeners[0].hcm.route_config.virtual_hosts[0].routes[0].route


# --- defaults ------------------------------------------------------------------------------

def test_defaults_are_envoys():
    b = load_dict(base())
    h = b.listeners[0].hcm
    assert h.http2 == model.Http2Options()
    assert (h.http2.max_concurrent_streams, h.http2.initial_stream_window_size,
            h.http2.initial_connection_window_size) == (2147483647, 256 << 20, 256 << 20)
    assert (h.http2.keepalive_interval_ms, h.http2.keepalive_timeout_ms) == (0, 0)
    assert h.grpc_web is False
    c = b.clusters[0]
    assert (c.http2, c.max_requests_per_connection, c.upstream_idle_timeout_ms) == (
        None, 0, 3_600_000)
    r = h.route_config.virtual_hosts[0].routes[0].route
    assert (r.grpc_timeout_max_ms, r.grpc_timeout_offset_ms) == (None, 0)


# --- HttpConnectionManager.http2_protocol_options ------------------------------------------------

def test_hcm_http2_protocol_options():
    d = base()
    hcm(d)["http2_protocol_options"] = copy.deepcopy(ALL_H2)
    assert load_dict(d).listeners[0].hcm.http2 == ALL_H2_MODEL


def test_hcm_http2_empty_and_partial():
    d = base()
    hcm(d)["http2_protocol_options"] = {}
    assert load_dict(d).listeners[0].hcm.http2 == model.Http2Options()
    d = base()
    hcm(d)["http2_protocol_options"] = {"maxConcurrentStreams": 1,
                                        "connectionKeepalive": {"timeout": "1s"}}
    assert load_dict(d).listeners[0].hcm.http2 == model.Http2Options(
        max_concurrent_streams=1, keepalive_interval_ms=0, keepalive_timeout_ms=1000)


@pytest.mark.parametrize("where", ["hcm", "cluster"])
@pytest.mark.parametrize("options,field,message", [
    ({"max_concurrent_streams": 0}, "max_concurrent_streams",
     "value must be inside range [1, 2147483647]"),
    ({"max_concurrent_streams": 2147483648}, "max_concurrent_streams",
     "value must be inside range [1, 2147483647]"),
    ({"initial_stream_window_size": 65534}, "initial_stream_window_size",
     "value must be inside range [65535, 2147483647]"),
    ({"initial_stream_window_size": 2147483648}, "initial_stream_window_size",
     "value must be inside range [65535, 2147483647]"),
    ({"initial_connection_window_size": 1000}, "initial_connection_window_size",
     "value must be inside range [65535, 2147483647]"),
    ({"max_outbound_frames": 0}, "max_outbound_frames", "value must be greater than or equal to 1"),
    ({"max_outbound_control_frames": 0}, "max_outbound_control_frames",
     "value must be greater than or equal to 1"),
    ({"max_inbound_window_update_frames_per_data_frame_sent": 0},
     "max_inbound_window_update_frames_per_data_frame_sent",
     "value must be greater than or equal to 1"),
    ({"connection_keepalive": {"interval": "1s"}}, "connection_keepalive.timeout",
     "value is required"),
    ({"connection_keepalive": {}}, "connection_keepalive.timeout", "value is required"),
    ({"connection_keepalive": {"interval": "0s", "timeout": "1s"}}, "connection_keepalive.interval",
     "value must be greater than or equal to 0.001s"),
    ({"connection_keepalive": {"timeout": "0s"}}, "connection_keepalive.timeout",
     "value must be greater than or equal to 0.001s"),
])
def test_http2_validation_rules(where, options, field, message):
    if where == "hcm":
        d = base()
        hcm(d)["http2_protocol_options"] = options
        path = H2
    else:
        d = with_options({"explicit_http_config": {"http2_protocol_options": options}})
        path = UP_H2
    assert errors_of(d) == [f"{path}.{field}: {message}"]


@pytest.mark.parametrize("options,field", [
    ({"hpack_table_size": 4096}, "hpack_table_size"),
    ({"allow_metadata": True}, "allow_metadata"),
    ({"override_stream_error_on_invalid_http_message": True},
     "override_stream_error_on_invalid_http_message"),
    ({"custom_settings_parameters": [{"identifier": 10, "value": 1}]}, "custom_settings_parameters"),
    ({"use_oghttp2_codec": True}, "use_oghttp2_codec"),
    ({"max_metadata_size": 1024}, "max_metadata_size"),
    ({"connection_keepalive": {"timeout": "1s", "interval_jitter": {"value": 10}}},
     "connection_keepalive.interval_jitter"),
    ({"connection_keepalive": {"timeout": "1s", "connection_idle_interval": "5s"}},
     "connection_keepalive.connection_idle_interval"),
])
def test_http2_refused_fields(options, field):
    d = base()
    hcm(d)["http2_protocol_options"] = options
    assert errors_of(d) == [f"{H2}.{field}: not supported"]
    d = with_options({"explicit_http_config": {"http2_protocol_options": options}})
    assert errors_of(d) == [f"{UP_H2}.{field}: not supported"]


def test_hcm_max_requests_per_connection_refused():
    d = base()
    hcm(d)["common_http_protocol_options"] = {"max_requests_per_connection": 3}
    assert errors_of(d) == [
        HCM_PATH + ".common_http_protocol_options.max_requests_per_connection: not supported"]


# --- Cluster.typed_extension_protocol_options ------------------------------------------------

def test_upstream_http2():
    d = with_options({"explicit_http_config": {"http2_protocol_options": copy.deepcopy(ALL_H2)},
                      "common_http_protocol_options": {"idle_timeout": "30s",
                                                       "max_requests_per_connection": 7}})
    c = load_dict(d).clusters[0]
    assert (c.http2, c.max_requests_per_connection, c.upstream_idle_timeout_ms) == (
        ALL_H2_MODEL, 7, 30_000)


def test_upstream_http2_defaults():
    c = load_dict(with_options({"explicit_http_config": {"http2_protocol_options": {}}})).clusters[0]
    assert (c.http2, c.max_requests_per_connection, c.upstream_idle_timeout_ms) == (
        model.Http2Options(), 0, 3_600_000)


def test_upstream_http1_explicit():
    d = with_options({"explicit_http_config": {"http_protocol_options": {}},
                      "common_http_protocol_options": {"idle_timeout": "0s"}})
    c = load_dict(d).clusters[0]
    assert (c.http2, c.max_requests_per_connection, c.upstream_idle_timeout_ms) == (None, 0, 0)


def test_cluster_deprecated_max_requests_per_connection():
    d = base()
    cluster(d)["max_requests_per_connection"] = 5
    assert load_dict(d).clusters[0].max_requests_per_connection == 5
    d = with_options({"explicit_http_config": {"http_protocol_options": {}},
                      "common_http_protocol_options": {"max_requests_per_connection": 1}})
    cluster(d)["max_requests_per_connection"] = 5
    assert errors_of(d) == [f"{CL_PATH}.max_requests_per_connection: Only one of "
                            "max_requests_per_connection from Cluster or HttpProtocolOptions can "
                            "be specified"]


@pytest.mark.parametrize("options,expected", [
    ({"use_downstream_protocol_config": {}}, OPT_PATH + ".use_downstream_protocol_config: not supported"),
    ({"auto_config": {"http2_protocol_options": {}}}, OPT_PATH + ".auto_config: not supported"),
    ({"explicit_http_config": {"http3_protocol_options": {}}},
     OPT_PATH + ".explicit_http_config.http3_protocol_options: not supported"),
    ({"explicit_http_config": {"http_protocol_options": {"accept_http_10": True}}},
     OPT_PATH + ".explicit_http_config.http_protocol_options.accept_http_10: not supported"),
    ({"explicit_http_config": {"http_protocol_options": {}},
      "upstream_http_protocol_options": {"auto_sni": True}},
     OPT_PATH + ".upstream_http_protocol_options: not supported"),
    ({"explicit_http_config": {"http_protocol_options": {}},
      "http_filters": [{"name": "envoy.filters.http.upstream_codec"}]},
     OPT_PATH + ".http_filters: not supported"),
    ({"explicit_http_config": {"http_protocol_options": {}},
      "common_http_protocol_options": {"max_stream_duration": "1s"}},
     OPT_PATH + ".common_http_protocol_options.max_stream_duration: not supported"),
    ({"explicit_http_config": {"http_protocol_options": {}},
      "common_http_protocol_options": {"max_connection_duration": "1s"}},
     OPT_PATH + ".common_http_protocol_options.max_connection_duration: not supported"),
    ({"explicit_http_config": {"http_protocol_options": {}},
      "common_http_protocol_options": {"max_headers_count": 10}},
     OPT_PATH + ".common_http_protocol_options.max_headers_count: not supported"),
    ({}, OPT_PATH + ": one of [explicit_http_config, use_downstream_protocol_config, auto_config] "
                    "is required"),
    ({"explicit_http_config": {}}, OPT_PATH + ".explicit_http_config: one of "
                                              "[http_protocol_options, http2_protocol_options, "
                                              "http3_protocol_options] is required"),
    ({"explicit_http_config": {"http_protocol_options": {}},
      "common_http_protocol_options": {"idle_timeout": "-1s"}},
     OPT_PATH + ".common_http_protocol_options.idle_timeout: "
                "Invalid duration: Expected positive duration"),
])
def test_upstream_protocol_options_refusals(options, expected):
    assert expected in errors_of(with_options(options))


def test_upstream_protocol_options_other_keys_refused():
    d = base()
    cluster(d)["typed_extension_protocol_options"] = {"foo": {
        "@type": HPO_TYPE, "explicit_http_config": {"http_protocol_options": {}}}}
    assert errors_of(d) == [f"{CL_PATH}.typed_extension_protocol_options.foo: protocol options for "
                            f"'foo' not supported (only {HPO})"]
    tcp = "envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions"
    d = base()
    cluster(d)["typed_extension_protocol_options"] = {tcp: {"@type": "type.googleapis.com/" + tcp}}
    assert errors_of(d) == [f"{CL_PATH}.typed_extension_protocol_options.{tcp}: type {tcp} not "
                            "supported"]
    d = base()
    cluster(d)["typed_extension_protocol_options"] = {HPO: {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    assert errors_of(d) == [f"{OPT_PATH}: type envoy.extensions.filters.http.router.v3.Router not "
                            f"supported as {HPO}"]


def test_http_protocol_options_type_refused_elsewhere():
    d = base()
    hcm(d)["http_filters"].insert(0, {"name": "x", "typed_config": {
        "@type": HPO_TYPE, "explicit_http_config": {"http_protocol_options": {}}}})
    assert errors_of(d) == [HCM_PATH + f".http_filters[0].typed_config: type {HPO} not supported "
                                       "as an HTTP filter"]


# --- RouteAction gRPC timeouts ------------------------------------------------------------

def test_max_grpc_timeout():
    r = route_action({"max_grpc_timeout": "5s", "grpc_timeout_offset": "0.1s"})
    assert (r.grpc_timeout_max_ms, r.grpc_timeout_offset_ms, r.timeout_ms) == (5000, 100, 15000)
    r = route_action({"max_grpc_timeout": "0s"})
    assert (r.grpc_timeout_max_ms, r.grpc_timeout_offset_ms) == (0, 0)
    # an offset without a max has no effect in Envoy
    r = route_action({"grpc_timeout_offset": "1s"})
    assert (r.grpc_timeout_max_ms, r.grpc_timeout_offset_ms) == (None, 0)


def test_grpc_timeout_header_max():
    r = route_action({"max_stream_duration": {"grpc_timeout_header_max": "3s",
                                              "grpc_timeout_header_offset": "0.05s"}})
    assert (r.grpc_timeout_max_ms, r.grpc_timeout_offset_ms, r.max_stream_duration_ms) == (
        3000, 50, None)
    r = route_action({"max_stream_duration": {"max_stream_duration": "10s",
                                              "grpc_timeout_header_max": "0s"}})
    assert (r.grpc_timeout_max_ms, r.grpc_timeout_offset_ms, r.max_stream_duration_ms) == (
        0, 0, 10_000)
    r = route_action({"max_stream_duration": {"grpc_timeout_header_offset": "1s"}})
    assert (r.grpc_timeout_max_ms, r.grpc_timeout_offset_ms) == (None, 0)


def test_grpc_timeout_header_max_wins_over_max_grpc_timeout():
    r = route_action({"max_grpc_timeout": "5s", "grpc_timeout_offset": "1s",
                      "max_stream_duration": {"grpc_timeout_header_max": "2s",
                                              "grpc_timeout_header_offset": "0.5s"}})
    assert (r.grpc_timeout_max_ms, r.grpc_timeout_offset_ms) == (2000, 500)
    # Envoy ignores the deprecated fields on any route that sets max_stream_duration
    r = route_action({"max_grpc_timeout": "5s",
                      "max_stream_duration": {"max_stream_duration": "10s"}})
    assert (r.grpc_timeout_max_ms, r.grpc_timeout_offset_ms) == (None, 0)


@pytest.mark.parametrize("route,field", [
    ({"max_grpc_timeout": "-1s"}, "max_grpc_timeout"),
    ({"max_grpc_timeout": "1s", "grpc_timeout_offset": "-0.5s"}, "grpc_timeout_offset"),
    ({"max_stream_duration": {"grpc_timeout_header_max": "-1s"}},
     "max_stream_duration.grpc_timeout_header_max"),
    ({"max_stream_duration": {"grpc_timeout_header_max": "1s",
                              "grpc_timeout_header_offset": "-1s"}},
     "max_stream_duration.grpc_timeout_header_offset"),
])
def test_negative_grpc_timeouts_refused(route, field):
    d = base()
    vh(d)["routes"][0]["route"].update(route)
    assert errors_of(d) == [f"{VH_PATH}.routes[0].route.{field}: "
                            "Invalid duration: Expected positive duration"]


# --- envoy.filters.http.grpc_web ----------------------------------------------------------

def test_grpc_web_filter():
    d = base()
    hcm(d)["http_filters"].insert(0, copy.deepcopy(GRPC_WEB))
    assert load_dict(d).listeners[0].hcm.grpc_web is True


@pytest.mark.parametrize("order", [[GRPC_WEB, LRL], [LRL, GRPC_WEB]])
def test_grpc_web_with_local_ratelimit_any_order(order):
    d = base()
    hcm(d)["http_filters"][:0] = copy.deepcopy(order)
    h = load_dict(d).listeners[0].hcm
    assert h.grpc_web is True and h.local_ratelimit is not None
    assert h.local_ratelimit_name == "envoy.filters.http.local_ratelimit"
    # a rate limit filter first answers its 429 before the gRPC-Web filter sees the request
    assert h.grpc_web_after_ratelimit is (order[0] is LRL)


def test_grpc_web_refusals():
    d = base()
    hcm(d)["http_filters"][:0] = [copy.deepcopy(GRPC_WEB), copy.deepcopy(GRPC_WEB)]
    assert errors_of(d) == [HCM_PATH + ".http_filters[1]: only one gRPC-Web filter is supported"]
    d = base()
    hcm(d)["http_filters"].append(copy.deepcopy(GRPC_WEB))  # after the router
    errs = errors_of(d)
    assert HCM_PATH + (".http_filters[0]: terminal filter named envoy.filters.http.router of type "
                       "envoy.filters.http.router must be the last filter in a http filter "
                       "chain.") in errs
    assert HCM_PATH + (".http_filters[1]: non-terminal filter named envoy.filters.http.grpc_web of "
                       "type envoy.filters.http.grpc_web is the last filter in a http filter "
                       "chain.") in errs
    d = base()
    hcm(d)["http_filters"][0]["typed_config"] = {"@type": GRPC_WEB_TYPE}  # no router at all
    assert errors_of(d) == [HCM_PATH + ".http_filters[0]: non-terminal filter named "
                                       "envoy.filters.http.router of type "
                                       "envoy.filters.http.grpc_web is the last filter in a http "
                                       "filter chain."]


@pytest.mark.parametrize("level", ["vh", "route"])
def test_per_route_config_of_filters_without_one_refused(level):
    d = base()
    hcm(d)["http_filters"].insert(0, copy.deepcopy(GRPC_WEB))
    target = vh(d) if level == "vh" else vh(d)["routes"][0]
    target["typed_per_filter_config"] = {"envoy.filters.http.grpc_web": {"@type": GRPC_WEB_TYPE}}
    path = VH_PATH if level == "vh" else VH_PATH + ".routes[0]"
    assert errors_of(d) == [f"{path}.typed_per_filter_config.envoy.filters.http.grpc_web: type "
                            "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb does not support "
                            "virtual host or route specific configurations"]


# --- the whole set against real Envoy -----------------------------------------------------

def full_config() -> dict:
    d = copy.deepcopy(BASE)
    h = hcm(d)
    h["codec_type"] = "AUTO"
    h["http2_protocol_options"] = copy.deepcopy(ALL_H2)
    h["http_filters"][:0] = [copy.deepcopy(GRPC_WEB), copy.deepcopy(LRL)]
    vh(d)["routes"] = [
        {"match": {"prefix": "/legacy"}, "route": {
            "cluster": "c0", "max_grpc_timeout": "5s", "grpc_timeout_offset": "0.1s"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "c1", "max_stream_duration": {
            "max_stream_duration": "60s", "grpc_timeout_header_max": "0s",
            "grpc_timeout_header_offset": "0.05s"}}},
    ]
    c0 = cluster(d)
    c0["typed_extension_protocol_options"] = {HPO: {
        "@type": HPO_TYPE,
        "explicit_http_config": {"http2_protocol_options": {
            "max_concurrent_streams": 50, "initial_stream_window_size": 1 << 20,
            "allow_connect": True, "connection_keepalive": {"timeout": "1s"}}},
        "common_http_protocol_options": {"idle_timeout": "30s", "max_requests_per_connection": 100},
    }}
    c1 = copy.deepcopy(c0)
    c1["name"] = c1["load_assignment"]["cluster_name"] = "c1"
    c1["typed_extension_protocol_options"] = {HPO: {
        "@type": HPO_TYPE, "explicit_http_config": {"http_protocol_options": {}},
        "common_http_protocol_options": {"idle_timeout": "0s"}}}
    c1["max_requests_per_connection"] = 10
    d["static_resources"]["clusters"].append(c1)
    return d


def test_full_config_model():
    b = load_dict(full_config())
    h = b.listeners[0].hcm
    assert h.http2 == ALL_H2_MODEL and h.grpc_web and h.local_ratelimit is not None
    legacy, new = (r.route for r in h.route_config.virtual_hosts[0].routes)
    assert (legacy.grpc_timeout_max_ms, legacy.grpc_timeout_offset_ms) == (5000, 100)
    assert (new.grpc_timeout_max_ms, new.grpc_timeout_offset_ms, new.max_stream_duration_ms) == (
        0, 50, 60_000)
    c0, c1 = b.clusters
    assert c0.http2 == model.Http2Options(max_concurrent_streams=50,
                                          initial_stream_window_size=1 << 20, allow_connect=True,
                                          keepalive_timeout_ms=1000)
    assert (c0.max_requests_per_connection, c0.upstream_idle_timeout_ms) == (100, 30_000)
    assert (c1.http2, c1.max_requests_per_connection, c1.upstream_idle_timeout_ms) == (None, 10, 0)


def _envoy_validate(envoy: str, d: dict, tmp_path) -> tuple[int, str]:
    f = tmp_path / "bootstrap.yaml"
    f.write_text(yaml.safe_dump(d))
    proc = subprocess.run([envoy, "--mode", "validate", "-c", str(f), "-l", "critical"],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


def _broken(name: str) -> dict:
    d = full_config()
    h = hcm(d)
    if name == "keepalive_without_timeout":
        h["http2_protocol_options"]["connection_keepalive"] = {"interval": "1s"}
    elif name == "window_too_small":
        cluster(d)["typed_extension_protocol_options"][HPO]["explicit_http_config"][
            "http2_protocol_options"]["initial_stream_window_size"] = 1000
    elif name == "grpc_web_last":
        h["http_filters"] = [copy.deepcopy(GRPC_WEB)]
    elif name == "grpc_web_per_route":
        vh(d)["typed_per_filter_config"] = {"envoy.filters.http.grpc_web": {"@type": GRPC_WEB_TYPE}}
    elif name == "unknown_protocol_options_key":
        opts = cluster(d)["typed_extension_protocol_options"]
        opts["foo"] = opts.pop(HPO)
    elif name == "no_upstream_protocol":
        del cluster(d)["typed_extension_protocol_options"][HPO]["explicit_http_config"]
    elif name == "both_max_requests_per_connection":
        cluster(d)["max_requests_per_connection"] = 1
    elif name == "negative_grpc_offset":
        vh(d)["routes"][0]["route"]["grpc_timeout_offset"] = "-1s"
    return d


BROKEN = ["keepalive_without_timeout", "window_too_small", "grpc_web_last", "grpc_web_per_route",
          "unknown_protocol_options_key", "no_upstream_protocol",
          "both_max_requests_per_connection", "negative_grpc_offset"]


def test_full_config_accepted_by_envoy(tmp_path):
    envoy = find_envoy()
    d = full_config()
    f = tmp_path / "full.yaml"
    f.write_text(yaml.safe_dump(d))
    assert validate(str(f)) == []
    rc, out = _envoy_validate(envoy, d, tmp_path)
    assert rc == 0, out


@pytest.mark.parametrize("name", BROKEN)
def test_refused_like_envoy(name, tmp_path):
    envoy = find_envoy()
    d = _broken(name)
    assert errors_of(copy.deepcopy(d))
    rc, out = _envoy_validate(envoy, d, tmp_path)
    assert rc != 0, out
