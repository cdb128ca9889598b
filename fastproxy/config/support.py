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
from .health import SUPPORTED as _health_supported
from .loader import PLACEHOLDER_TYPE, snake

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
        "server_name", "upgrade_configs", "access_log", "http2_protocol_options",
        "http_protocol_options",
    },
    # Access logs (config.access_log): no filter, text formats only
    "envoy.config.accesslog.v3.AccessLog": {"name", "typed_config"},
    "envoy.extensions.access_loggers.file.v3.FileAccessLog": {"path", "format", "log_format"},
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog": {"log_format"},
    _CORE + "SubstitutionFormatString": {"text_format", "text_format_source"},
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig": {
        "upgrade_type", "enabled",
    },
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter": {
        "name", "typed_config",
    },
    "envoy.extensions.filters.http.router.v3.Router": set(),
    "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb": set(),
    # stats_for_all_methods: only false (checked while compiling); emit_filter_state,
    # enable_upstream_stats and replace_dots_in_grpc_service_name are not implemented
    "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig": {
        "stats_for_all_methods", "individual_method_stats_allowlist",
    },
    _CORE + "GrpcMethodList": {"services"},
    _CORE + "GrpcMethodList.Service": {"name", "method_names"},
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit": {
        "stat_prefix", "status", "token_bucket", "filter_enabled", "filter_enforced",
        "response_headers_to_add", "enable_x_ratelimit_headers",
        "always_consume_default_token_bucket", "local_rate_limit_per_downstream_connection",
        "rate_limited_as_resource_exhausted", "descriptors",
    },
    "envoy.extensions.common.ratelimit.v3.LocalRateLimitDescriptor": {"entries", "token_bucket"},
    "envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry": {"key", "value"},
    _R + "RateLimit": {"actions"},
    _R + "RateLimit.Action": {"generic_key", "request_headers", "remote_address"},
    _R + "RateLimit.Action.GenericKey": {"descriptor_value", "descriptor_key"},
    _R + "RateLimit.Action.RequestHeaders": {"header_name", "descriptor_key", "skip_if_absent"},
    _R + "RateLimit.Action.RemoteAddress": set(),
    "envoy.type.v3.TokenBucket": {"max_tokens", "tokens_per_fill", "fill_interval"},
    "envoy.type.v3.HttpStatus": {"code"},
    "envoy.type.v3.FractionalPercent": {"numerator", "denominator"},
    "envoy.type.v3.Percent": {"value"},
    _CORE + "RuntimeFractionalPercent": {"default_value", "runtime_key"},
    # HttpProtocolOptions: max_stream_duration for connection managers only,
    # max_requests_per_connection for clusters only (checked while compiling)
    _CORE + "HttpProtocolOptions": {"idle_timeout", "max_stream_duration",
                                    "max_requests_per_connection"},
    _CORE + "Http1ProtocolOptions": {"enable_trailers"},  # the HCM's only (compile.py)
    _CORE + "Http2ProtocolOptions": {
        "max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size",
        "max_outbound_frames", "max_outbound_control_frames",
        "max_consecutive_inbound_frames_with_empty_payload",
        "max_inbound_priority_frames_per_stream",
        "max_inbound_window_update_frames_per_data_frame_sent", "allow_connect",
        "connection_keepalive",
    },
    _CORE + "KeepaliveSettings": {"interval", "timeout"},
    # Routing
    _R + "RouteConfiguration": {"name", "virtual_hosts"} | _HEADERS,
    _R + "VirtualHost": {"name", "domains", "routes", "retry_policy", "hedge_policy",
                         "typed_per_filter_config", "rate_limits"} | _HEADERS,
    _R + "Route": {"name", "match", "route", "redirect", "direct_response",
                   "typed_per_filter_config"} | _HEADERS,
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
        "host_rewrite_literal", "auto_host_rewrite", "timeout", "retry_policy", "idle_timeout",
        "priority",
        "max_stream_duration", "max_grpc_timeout", "grpc_timeout_offset",
        "hash_policy", "rate_limits",
    },
    _R + "RouteAction.HashPolicy": {
        "header", "cookie", "connection_properties", "query_parameter", "terminal",
    },
    _R + "RouteAction.HashPolicy.Header": {"header_name"},
    _R + "RouteAction.HashPolicy.Cookie": {"name", "ttl", "path", "attributes"},
    _R + "RouteAction.HashPolicy.CookieAttribute": {"name", "value"},
    _R + "RouteAction.HashPolicy.ConnectionProperties": {"source_ip"},
    _R + "RouteAction.HashPolicy.QueryParameter": {"name"},
    _R + "RetryPolicy": {
        "retry_on", "num_retries", "per_try_timeout", "per_try_idle_timeout", "retry_back_off",
        "retry_host_predicate", "host_selection_retry_max_attempts", "retriable_status_codes",
        "retriable_headers",
    },
    _R + "RetryPolicy.RetryBackOff": {"base_interval", "max_interval"},
    _R + "RouteAction.MaxStreamDuration": {
        "max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset",
    },
    _R + "HedgePolicy": {"hedge_on_per_try_timeout"},
    _R + "RetryPolicy.RetryHostPredicate": {"name", "typed_config"},
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate": set(),
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
        "dns_refresh_rate", "circuit_breakers",
        "ring_hash_lb_config", "maglev_lb_config", "least_request_lb_config",
        "round_robin_lb_config", "common_lb_config", "health_checks", "outlier_detection",
        "typed_extension_protocol_options", "max_requests_per_connection",
    },
    # typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "explicit_http_config", "common_http_protocol_options",
    },
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig": {
        "http_protocol_options", "http2_protocol_options",
    },
    "envoy.config.cluster.v3.Cluster.RingHashLbConfig": {
        "minimum_ring_size", "maximum_ring_size", "hash_function",
    },
    "envoy.config.cluster.v3.Cluster.MaglevLbConfig": {"table_size"},
    "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig": {
        "choice_count", "active_request_bias", "slow_start_config",
    },
    "envoy.config.cluster.v3.Cluster.RoundRobinLbConfig": {"slow_start_config"},
    "envoy.config.cluster.v3.Cluster.SlowStartConfig": {
        "slow_start_window", "aggression", "min_weight_percent",
    },
    "envoy.config.cluster.v3.Cluster.CommonLbConfig": {
        "healthy_panic_threshold", "locality_weighted_lb_config",
    },
    "envoy.config.cluster.v3.Cluster.CommonLbConfig.LocalityWeightedLbConfig": set(),
    "envoy.type.v3.Percent": {"value"},
    _CORE + "RuntimeDouble": {"default_value", "runtime_key"},
    "envoy.config.endpoint.v3.ClusterLoadAssignment.Policy": {"overprovisioning_factor"},
    "envoy.config.cluster.v3.CircuitBreakers": {"thresholds", "per_host_thresholds"},
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds": {
        "priority", "max_connections", "max_pending_requests", "max_requests", "max_retries",
        "retry_budget", "track_remaining", "max_connection_pools",
    },
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget": {
        "budget_percent", "min_retry_concurrency",
    },
    "envoy.config.endpoint.v3.ClusterLoadAssignment": {"cluster_name", "endpoints", "policy"},
    "envoy.config.endpoint.v3.LocalityLbEndpoints": {
        "lb_endpoints", "priority", "locality", "load_balancing_weight",
    },
    _CORE + "Locality": {"region", "zone", "sub_zone"},
    "envoy.config.endpoint.v3.LbEndpoint": {"endpoint", "load_balancing_weight"},
    "envoy.config.endpoint.v3.Endpoint": {"address"},
    "envoy.config.cluster.v3.UpstreamConnectionOptions": {"tcp_keepalive"},
    _CORE + "TcpKeepalive": {"keepalive_probes", "keepalive_time", "keepalive_interval"},
}
SUPPORTED.update(_health_supported)

# Messages whose content is a value (not walked field by field).
_LEAVES = {
    "google.protobuf.Duration", "google.protobuf.UInt32Value", "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value", "google.protobuf.Int64Value", "google.protobuf.BoolValue",
    "google.protobuf.StringValue", "google.protobuf.BytesValue", "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
}
_ANY = "google.protobuf.Any"
_DURATION = "google.protobuf.Duration"


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
        if field.message_type.GetOptions().map_entry:
            vfield = field.message_type.fields_by_name["value"]
            if vfield.type == FD.TYPE_MESSAGE:
                for key in sorted(value):  # paths as the loader writes them: field.key
                    _walk_value(value[key], f"{fpath}.{snake(key)}", unknown_any, errors)
            continue
        if field.is_repeated:
            for i, item in enumerate(value):
                _walk_value(item, f"{fpath}[{i}]", unknown_any, errors)
        else:
            _walk_value(value, fpath, unknown_any, errors)


def _walk_value(msg, path: str, unknown_any: dict[str, str], errors: Errors) -> None:
    name = msg.DESCRIPTOR.full_name
    if name in _LEAVES:
        if name == _DURATION and (msg.seconds < 0 or msg.nanos < 0):
            errors.add(path, "Invalid duration: Expected positive duration")  # as Envoy
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
