"""What fastproxy implements, as a table of supported fields per message, and the walk that
refuses the rest.

`check_supported(bootstrap, unknown_any, errors)` visits every set field of the parsed Bootstrap
(`ListFields()`, descending into messages, lists and unpacked `Any` typed_configs).  A set field
missing from `SUPPORTED` is reported as "<path>: not supported"; an `Any` of a type not in the table
as "<path>: type <name> not supported".  Every visited message is also checked against Envoy's
protoc-gen-validate rules (`pgv.check`).  Value-level limits (which enum values, how many filter
chains, ...) are checked while compiling, in `compile.py`.
"""
from __future__ import annotations

from google.protobuf import symbol_database
from google.protobuf.descriptor import FieldDescriptor as FD

from . import pgv
from .errors import Errors, join
from .loader import PLACEHOLDER_TYPE

_R = "envoy.config.route.v3."
_CORE = "envoy.config.core.v3."
_M = "envoy.type.matcher.v3."
_HEADERS = {
    "request_headers_to_add", "request_headers_to_remove",
    "response_headers_to_add", "response_headers_to_remove",
}

# message full name -> supported field names (proto names).
SUPPORTED: dict[str, set[str]] = {
    "envoy.config.bootstrap.v3.Bootstrap": {"node", "static_resources", "admin"},
    "envoy.config.bootstrap.v3.Bootstrap.StaticResources": {"listeners", "clusters"},
    "envoy.config.bootstrap.v3.Admin": {"address", "access_log_path"},
    _CORE + "Node": {"id", "cluster"},
    _CORE + "Address": {"socket_address"},
    _CORE + "SocketAddress": {"address", "port_value", "protocol"},
    # Listener
    "envoy.config.listener.v3.Listener": {
        "name", "address", "filter_chains", "per_connection_buffer_limit_bytes",
    },
    "envoy.config.listener.v3.FilterChain": {"filters", "name"},
    "envoy.config.listener.v3.Filter": {"name", "typed_config"},
    # HTTP connection manager and its filters
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager": {
        "stat_prefix", "codec_type", "route_config", "http_filters",
        "common_http_protocol_options", "max_request_headers_kb", "stream_idle_timeout",
        "request_timeout", "use_remote_address", "xff_num_trusted_hops", "generate_request_id",
        "server_name", "upgrade_configs",
    },
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig": {
        "upgrade_type", "enabled",
    },
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter": {
        "name", "typed_config",
    },
    "envoy.extensions.filters.http.router.v3.Router": set(),
    _CORE + "HttpProtocolOptions": {"idle_timeout"},
    # Routing
    _R + "RouteConfiguration": {"name", "virtual_hosts"} | _HEADERS,
    _R + "VirtualHost": {"name", "domains", "routes"} | _HEADERS,
    _R + "Route": {"name", "match", "route", "redirect", "direct_response"} | _HEADERS,
    _R + "RouteMatch": {
        "prefix", "path", "safe_regex", "path_separated_prefix", "case_sensitive", "headers",
        "query_parameters",
    },
    _R + "HeaderMatcher": {
        "name", "exact_match", "safe_regex_match", "prefix_match", "suffix_match",
        "contains_match", "present_match", "string_match", "invert_match",
        "treat_missing_header_as_empty",
    },
    _R + "QueryParameterMatcher": {"name", "string_match", "present_match"},
    _M + "StringMatcher": {"exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"},
    _M + "RegexMatcher": {"google_re2", "regex"},
    _M + "RegexMatcher.GoogleRE2": set(),
    _M + "RegexMatchAndSubstitute": {"pattern", "substitution"},
    _R + "RouteAction": {
        "cluster", "cluster_header", "weighted_clusters", "prefix_rewrite", "regex_rewrite",
        "host_rewrite_literal", "auto_host_rewrite", "timeout",
    },
    _R + "WeightedCluster": {"clusters"},
    _R + "WeightedCluster.ClusterWeight": {"name", "weight", "host_rewrite_literal"} | _HEADERS,
    _R + "RedirectAction": {
        "https_redirect", "scheme_redirect", "host_redirect", "port_redirect", "path_redirect",
        "prefix_rewrite", "regex_rewrite", "response_code", "strip_query",
    },
    _R + "DirectResponseAction": {"status", "body"},
    _CORE + "DataSource": {"inline_string", "inline_bytes"},
    _CORE + "HeaderValueOption": {"header", "append", "append_action", "keep_empty_value"},
    _CORE + "HeaderValue": {"key", "value"},
    # Clusters
    "envoy.config.cluster.v3.Cluster": {
        "name", "type", "connect_timeout", "lb_policy", "load_assignment",
        "per_connection_buffer_limit_bytes", "upstream_connection_options", "dns_lookup_family",
        "dns_refresh_rate",
    },
    "envoy.config.endpoint.v3.ClusterLoadAssignment": {"cluster_name", "endpoints"},
    "envoy.config.endpoint.v3.LocalityLbEndpoints": {"lb_endpoints", "priority"},
    "envoy.config.endpoint.v3.LbEndpoint": {"endpoint", "load_balancing_weight"},
    "envoy.config.endpoint.v3.Endpoint": {"address"},
    "envoy.config.cluster.v3.UpstreamConnectionOptions": {"tcp_keepalive"},
    _CORE + "TcpKeepalive": {"keepalive_probes", "keepalive_time", "keepalive_interval"},
}

# Messages whose content is a value (not walked field by field).
_LEAVES = {
    "google.protobuf.Duration", "google.protobuf.UInt32Value", "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value", "google.protobuf.Int64Value", "google.protobuf.BoolValue",
    "google.protobuf.StringValue", "google.protobuf.BytesValue", "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
}
_ANY = "google.protobuf.Any"


def unpack_any(any_msg):
    """The message inside an Any (its type must be registered), or None (also for the
    placeholder standing for an unregistered type, which the support walk reports)."""
    if any_msg.TypeName() == PLACEHOLDER_TYPE:
        return None
    try:
        cls = symbol_database.Default().GetSymbol(any_msg.TypeName())
    except KeyError:
        return None
    inner = cls()
    if not any_msg.Unpack(inner):
        return None
    return inner


def check_supported(root, unknown_any: dict[str, str], errors: Errors) -> None:
    _walk(root, "", unknown_any, errors)


def _walk(msg, path: str, unknown_any: dict[str, str], errors: Errors) -> None:
    name = msg.DESCRIPTOR.full_name
    allowed = SUPPORTED.get(name)
    if allowed is None:
        errors.add(path, f"{name} not supported")
        return
    pgv.check(msg, path, errors)
    for field, value in msg.ListFields():
        fpath = join(path, field.name)
        if field.name not in allowed:
            errors.add(fpath, "not supported")
            continue
        if field.type != FD.TYPE_MESSAGE:
            continue
        if field.is_repeated:
            for i, item in enumerate(value):
                _walk_value(item, f"{fpath}[{i}]", unknown_any, errors)
        else:
            _walk_value(value, fpath, unknown_any, errors)


def _walk_value(msg, path: str, unknown_any: dict[str, str], errors: Errors) -> None:
    name = msg.DESCRIPTOR.full_name
    if name in _LEAVES:
        return
    if name == _ANY:
        type_name = msg.TypeName()
        if type_name == PLACEHOLDER_TYPE and path in unknown_any:
            type_name = unknown_any[path]
        if not type_name:
            errors.add(path, "value is required (no @type)")
            return
        if type_name not in SUPPORTED or type_name == PLACEHOLDER_TYPE:
            errors.add(path, f"type {type_name} not supported")
            return
        inner = unpack_any(msg)
        if inner is None:
            errors.add(path, f"type {type_name} could not be decoded")
            return
        _walk(inner, path, unknown_any, errors)
        return
    _walk(msg, path, unknown_any, errors)
