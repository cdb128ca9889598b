"""The compiled configuration model: plain data the core is built from.

`fastproxy.config.compile` turns an Envoy v3 Bootstrap (protobuf) into these classes; the
compiled core (`fastproxy._core`) builds its tables from them and never sees protobuf.  Every
default here is Envoy's default for the field it mirrors; durations are milliseconds, with 0
meaning "disabled" where Envoy treats a zero duration that way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

# HeaderValueOption.append_action, numbered as Envoy's enum.
APPEND_IF_EXISTS_OR_ADD = 0
ADD_IF_ABSENT = 1
OVERWRITE_IF_EXISTS_OR_ADD = 2
OVERWRITE_IF_EXISTS = 3


@dataclass(frozen=True)
class SocketAddress:
    address: str
    port: int

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.address


@dataclass(frozen=True)
class HeaderValueOption:
    """One header to add: `key` is lower-cased; `value` is a literal (format strings refused)."""

    key: str
    value: str
    append_action: int = APPEND_IF_EXISTS_OR_ADD
    keep_empty_value: bool = False


@dataclass
class HeaderMutations:
    """Header changes at one level (route config, virtual host, route or weighted cluster)."""

    request_add: list[HeaderValueOption] = field(default_factory=list)
    request_remove: list[str] = field(default_factory=list)  # lower-cased names
    response_add: list[HeaderValueOption] = field(default_factory=list)
    response_remove: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StringMatcher:
    """envoy.type.matcher.v3.StringMatcher; kind is exact|prefix|suffix|contains|regex."""

    kind: str
    value: str
    ignore_case: bool = False


@dataclass(frozen=True)
class HeaderMatcher:
    """route.v3.HeaderMatcher, normalised: exactly one of `matcher` or `present` is set.

    Legacy fields (exact_match, prefix_match, ...) become a StringMatcher; `present_match`
    becomes present=True/False.
    """

    name: str  # lower-cased
    matcher: Optional[StringMatcher] = None
    present: Optional[bool] = None
    invert: bool = False
    treat_missing_header_as_empty: bool = False


@dataclass(frozen=True)
class QueryParameterMatcher:
    name: str
    matcher: Optional[StringMatcher] = None
    present: bool = False  # present_match


@dataclass
class RouteMatch:
    """route.v3.RouteMatch; kind is prefix|path|safe_regex|path_separated_prefix."""

    kind: str
    value: str
    case_sensitive: bool = True
    headers: list[HeaderMatcher] = field(default_factory=list)
    query_parameters: list[QueryParameterMatcher] = field(default_factory=list)


@dataclass(frozen=True)
class RegexRewrite:
    pattern: str  # RE2 syntax as Envoy takes it
    substitution: str


@dataclass
class WeightedCluster:
    name: str
    weight: int
    headers: HeaderMutations = field(default_factory=HeaderMutations)
    host_rewrite_literal: Optional[str] = None


@dataclass
class RetryPolicy:
    """route.v3.RetryPolicy (route level, or the virtual host's when the route has none)."""

    retry_on: frozenset = frozenset()  # Envoy's condition names: 5xx, gateway-error, reset...
    num_retries: int = 1
    per_try_timeout_ms: int = 0
    per_try_idle_timeout_ms: int = 0
    base_interval_ms: int = 25
    max_interval_ms: int = 250  # default: 10 x base_interval
    previous_hosts: bool = False  # retry_host_predicate envoy.retry_host_predicates.previous_hosts
    host_selection_retry_max_attempts: int = 1
    retriable_status_codes: tuple = ()
    retriable_headers: list = field(default_factory=list)  # HeaderMatcher on the response
    grpc_statuses: frozenset = frozenset()  # grpc-status values of the gRPC retry_on conditions
    hedge_on_per_try_timeout: bool = False  # the virtual host's hedge_policy


@dataclass(frozen=True)
class HashPolicy:
    """route.v3.RouteAction.HashPolicy; kind is header|cookie|query_parameter|source_ip."""

    kind: str
    name: str = ""  # header name (lower-cased), cookie name or query parameter name
    terminal: bool = False
    ttl_s: Optional[int] = None  # cookie: generate one when absent (ttl set; 0 = session)
    path: str = ""  # cookie: Path of a generated cookie
    attributes: tuple = ()  # cookie: ((name, value), ...) of a generated cookie


@dataclass(frozen=True)
class Http2Options:
    """core.v3.Http2ProtocolOptions (the connection manager's http2_protocol_options, or a
    cluster's explicit_http_config.http2_protocol_options); every default is Envoy's."""

    max_concurrent_streams: int = 2147483647
    initial_stream_window_size: int = 268435456
    initial_connection_window_size: int = 268435456
    max_outbound_frames: int = 10000
    max_outbound_control_frames: int = 1000
    max_consecutive_inbound_frames_with_empty_payload: int = 1
    max_inbound_priority_frames_per_stream: int = 100
    max_inbound_window_update_frames_per_data_frame_sent: int = 10
    allow_connect: bool = False
    keepalive_interval_ms: int = 0   # connection_keepalive.interval; 0 = no keepalive PINGs
    keepalive_timeout_ms: int = 0    # connection_keepalive.timeout


@dataclass
class RouteAction:
    # exactly one of cluster / cluster_header / weighted_clusters
    cluster: Optional[str] = None
    cluster_header: Optional[str] = None  # lower-cased header name
    weighted_clusters: Optional[list[WeightedCluster]] = None
    prefix_rewrite: Optional[str] = None
    regex_rewrite: Optional[RegexRewrite] = None
    host_rewrite_literal: Optional[str] = None
    auto_host_rewrite: bool = False
    timeout_ms: int = 15000  # route.timeout; 0 disables
    retry_policy: Optional[RetryPolicy] = None
    priority: int = 0  # RoutingPriority: 0 DEFAULT, 1 HIGH (the circuit breakers' thresholds)
    idle_timeout_ms: Optional[int] = None  # route idle_timeout: overrides stream_idle_timeout
    max_stream_duration_ms: Optional[int] = None  # max_stream_duration.max_stream_duration
    # The grpc-timeout request header: None = not honoured; 0 = honoured without a cap; > 0 = capped
    # to that.  From max_stream_duration.grpc_timeout_header_max/_offset when the route sets
    # max_stream_duration (Envoy then ignores the deprecated fields), else from max_grpc_timeout /
    # grpc_timeout_offset.  The offset is 0 when grpc_timeout_max_ms is None.
    grpc_timeout_max_ms: Optional[int] = None
    grpc_timeout_offset_ms: int = 0
    # The route sets max_stream_duration (Envoy's "new timeouts"): the route timeout is unset,
    # and the grpc-timeout header (grpc_timeout_max_ms) bounds the stream's duration instead.
    new_timeouts: bool = False
    hash_policy: list[HashPolicy] = field(default_factory=list)  # for RING_HASH / MAGLEV
    # rate_limits: per entry, its actions (config.local_ratelimit.RateLimitAction)
    rate_limits: list = field(default_factory=list)


@dataclass
class RedirectAction:
    scheme_redirect: Optional[str] = None  # https_redirect sets "https"
    host_redirect: Optional[str] = None
    port_redirect: int = 0
    path_redirect: Optional[str] = None
    prefix_rewrite: Optional[str] = None
    regex_rewrite: Optional[RegexRewrite] = None
    response_code: int = 301  # the HTTP status, already mapped from Envoy's enum
    strip_query: bool = False


@dataclass
class DirectResponse:
    status: int
    body: Optional[bytes] = None


@dataclass
class Route:
    match: RouteMatch
    name: str = ""
    route: Optional[RouteAction] = None
    redirect: Optional[RedirectAction] = None
    direct_response: Optional[DirectResponse] = None
    headers: HeaderMutations = field(default_factory=HeaderMutations)
    # typed_per_filter_config: {HTTP filter name: that filter's compiled override}
    per_filter_config: dict = field(default_factory=dict)


@dataclass
class VirtualHost:
    name: str
    domains: list[str]
    routes: list[Route] = field(default_factory=list)
    headers: HeaderMutations = field(default_factory=HeaderMutations)
    per_filter_config: dict = field(default_factory=dict)  # as Route.per_filter_config
    rate_limits: list = field(default_factory=list)  # as RouteAction.rate_limits


@dataclass
class RouteConfiguration:
    name: str = ""
    virtual_hosts: list[VirtualHost] = field(default_factory=list)
    headers: HeaderMutations = field(default_factory=HeaderMutations)


@dataclass
class HttpConnectionManager:
    stat_prefix: str
    route_config: RouteConfiguration
    codec_type: str = "AUTO"  # AUTO, HTTP1 or HTTP2
    idle_timeout_ms: int = 3_600_000  # common_http_protocol_options.idle_timeout (1 h)
    max_request_headers_kb: int = 60
    stream_idle_timeout_ms: int = 300_000  # 5 min
    request_timeout_ms: int = 0  # disabled
    use_remote_address: bool = False
    xff_num_trusted_hops: int = 0
    generate_request_id: bool = True
    server_name: str = "envoy"
    max_stream_duration_ms: int = 0  # common_http_protocol_options.max_stream_duration; 0 = none
    upgrade_types: list[str] = field(default_factory=list)  # upgrade_configs, lower-cased
    # envoy.filters.http.local_ratelimit in http_filters (config.local_ratelimit.LocalRateLimit)
    local_ratelimit: Optional[object] = None
    local_ratelimit_name: str = ""  # its name in http_filters (the typed_per_filter_config key)
    # access_log entries (config.access_log.AccessLogConfig: kind, path, format)
    access_logs: list = field(default_factory=list)
    http2: Http2Options = field(default_factory=Http2Options)  # http2_protocol_options
    # http_protocol_options.enable_trailers: HTTP/1.1 clients get the trailers of a chunked
    # response (Envoy drops them by default)
    enable_trailers: bool = False
    grpc_web: bool = False  # envoy.filters.http.grpc_web in http_filters
    # the local rate limit filter comes before the gRPC-Web filter: its 429 replies are then
    # not translated to gRPC-Web (the gRPC-Web filter never saw the request)
    grpc_web_after_ratelimit: bool = False
    grpc_stats: Optional["GrpcStats"] = None  # envoy.filters.http.grpc_stats in http_filters


@dataclass
class GrpcStats:
    """envoy.filters.http.grpc_stats: cluster.<name>.grpc.* counters for gRPC requests."""
    # individual_method_stats_allowlist as (service, method) pairs in config order, duplicates
    # dropped; None when it is not set (every method is counted in cluster.<name>.grpc.*)
    allowlist: Optional[list] = None
    # its place in http_filters: before the local rate limit filter it sees (and counts) the
    # requests that filter refuses; after the gRPC-Web filter it sees gRPC-Web requests as gRPC
    before_ratelimit: bool = False
    after_grpc_web: bool = False


@dataclass
class Listener:
    name: str
    address: SocketAddress
    hcm: HttpConnectionManager
    per_connection_buffer_limit_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class Endpoint:
    address: SocketAddress  # for DNS clusters, address is the hostname to resolve
    weight: int = 1  # load_balancing_weight
    priority: int = 0
    locality: tuple = ("", "", "")  # LocalityLbEndpoints.locality: (region, zone, sub_zone)
    locality_weight: int = 0  # LocalityLbEndpoints.load_balancing_weight (0: not set)
    locality_index: int = 0  # its locality among the cluster's (config.lb_config.localities)


@dataclass(frozen=True)
class TcpKeepalive:
    probes: Optional[int] = None
    time_s: Optional[int] = None
    interval_s: Optional[int] = None


@dataclass
class Cluster:
    name: str
    type: str = "STATIC"  # STATIC | STRICT_DNS | LOGICAL_DNS
    lb_policy: str = "ROUND_ROBIN"  # ROUND_ROBIN | LEAST_REQUEST | RANDOM | RING_HASH | MAGLEV
    connect_timeout_ms: int = 5000
    endpoints: list[Endpoint] = field(default_factory=list)
    per_connection_buffer_limit_bytes: int = 1024 * 1024
    tcp_keepalive: Optional[TcpKeepalive] = None
    dns_lookup_family: str = "AUTO"  # AUTO | V4_ONLY | V6_ONLY | V4_PREFERRED | ALL
    dns_refresh_rate_ms: int = 5000
    # config.circuit_breakers.CircuitBreakers (Envoy's default thresholds when not configured)
    circuit_breakers: Optional[object] = None
    # Keyword arguments of the core's LoadBalancer (config.lb_config): ring sizes, hash_function,
    # table_size, choice_count, panic threshold, overprovisioning, host_keys...
    lb_options: dict = field(default_factory=dict)
    # config.health: [HealthCheck] (at most one) and OutlierDetection, when configured
    health_checks: list = field(default_factory=list)
    outlier_detection: Optional[object] = None
    # typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]:
    # explicit_http_config.http2_protocol_options (None: HTTP/1.1 upstream) and
    # common_http_protocol_options.max_requests_per_connection (0 = unlimited; or the Cluster's
    # deprecated max_requests_per_connection) and idle_timeout (1 h; 0 = disabled)
    http2: Optional[Http2Options] = None
    max_requests_per_connection: int = 0
    upstream_idle_timeout_ms: int = 3_600_000


@dataclass
class Admin:
    address: SocketAddress


@dataclass
class Bootstrap:
    listeners: list[Listener] = field(default_factory=list)
    clusters: list[Cluster] = field(default_factory=list)
    admin: Optional[Admin] = None
    node_id: str = ""
    node_cluster: str = ""
