"""Compiling a parsed (and support-checked) Bootstrap into `model.Bootstrap`.

Applies Envoy's defaults, checks the value-level limits of this release (which enum values, one
filter chain, which HTTP filters, ...) and the cross-references Envoy checks for static
configs (unknown clusters, duplicate names and addresses).  Problems are added to `errors` with the
path of the offending field; compiling goes on so that every problem is reported.
"""
from __future__ import annotations

from typing import Optional

from envoy.extensions.filters.http.grpc_stats.v3 import config_pb2 as grpc_stats_pb2
from envoy.extensions.filters.http.grpc_web.v3 import grpc_web_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from . import access_log, circuit_breakers, local_ratelimit, model
from .common import enum_name, is_ip, opt_duration_ms, socket_address, wrapped
from . import lb_config
from .errors import Errors, join
from .health import compile_health
from .loader import snake
from .routes import ClusterRefs, route_configuration
from .support import unpack_any

_HCM = hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name
_ROUTER = router_pb2.Router.DESCRIPTOR.full_name
_GRPC_WEB = grpc_web_pb2.GrpcWeb.DESCRIPTOR.full_name
_GRPC_WEB_FILTER = "envoy.filters.http.grpc_web"
_GRPC_STATS = grpc_stats_pb2.FilterConfig.DESCRIPTOR.full_name
_GRPC_STATS_FILTER = "envoy.filters.http.grpc_stats"
# The one typed_extension_protocol_options key (and type) of a cluster
_UPSTREAM_HTTP = http_protocol_options_pb2.HttpProtocolOptions.DESCRIPTOR.full_name
_UPSTREAM_IDLE_TIMEOUT_MS = 3_600_000  # Envoy's default for upstream connections: 1 h
_CODECS = {"AUTO", "HTTP1", "HTTP2"}
_CLUSTER_TYPES = {"STATIC", "STRICT_DNS", "LOGICAL_DNS"}
_LB_POLICIES = lb_config.LB_POLICIES
_ADMIN_NULL_LOG = "/dev/null"


def compile_bootstrap(bs, errors: Errors) -> model.Bootstrap:
    out = model.Bootstrap(node_id=bs.node.id, node_cluster=bs.node.cluster)
    if bs.HasField("admin"):
        out.admin = _admin(bs.admin, "admin", errors)
    sr = bs.static_resources
    refs: ClusterRefs = []
    listener_names: dict[str, int] = {}
    addresses: dict[tuple[str, int], str] = {}
    for i, lst in enumerate(sr.listeners):
        path = f"static_resources.listeners[{i}]"
        compiled = _listener(lst, path, errors, refs)
        if lst.name in listener_names:
            errors.add(join(path, "name"), f"duplicate listener name '{lst.name}'")
        listener_names.setdefault(lst.name, i)
        if compiled is None:
            continue
        key = (compiled.address.address, compiled.address.port)
        if compiled.address.port != 0:
            if key in addresses:
                errors.add(join(path, "address"),
                           f"error adding listener: '{lst.name}' has duplicate address "
                           f"'{_fmt_addr(compiled.address)}' as existing listener")
            addresses.setdefault(key, lst.name)
        out.listeners.append(compiled)
    cluster_names: set[str] = set()
    for i, cl in enumerate(sr.clusters):
        path = f"static_resources.clusters[{i}]"
        if cl.name and cl.name in cluster_names:
            errors.add(join(path, "name"), f"cluster manager: duplicate cluster '{cl.name}'")
        cluster_names.add(cl.name)
        out.clusters.append(_cluster(cl, path, errors))
    for path, name, weighted in refs:
        if name not in cluster_names:
            kind = "weighted cluster" if weighted else "cluster"
            errors.add(path, f"route: unknown {kind} '{name}'")
    circuit_breakers.assign_slots(out)
    local_ratelimit.assign_slots(out)
    return out


def _fmt_addr(a: model.SocketAddress) -> str:
    return f"[{a.address}]:{a.port}" if a.is_ipv6 else f"{a.address}:{a.port}"


def _admin(admin, path: str, errors: Errors) -> Optional[model.Admin]:
    if admin.access_log_path and admin.access_log_path != _ADMIN_NULL_LOG:
        errors.add(join(path, "access_log_path"),
                   f"only {_ADMIN_NULL_LOG} is supported (admin access logs are not written)")
    if not admin.HasField("address"):
        return None  # Envoy starts no admin listener without an address
    addr = socket_address(admin.address, join(path, "address"), errors)
    return model.Admin(addr) if addr is not None else None


def _listener(lst, path: str, errors: Errors, refs: ClusterRefs) -> Optional[model.Listener]:
    if not lst.HasField("address"):
        errors.add(join(path, "address"), "address is necessary")
        addr = None
    else:
        addr = socket_address(lst.address, join(path, "address"), errors)
    hcm = None
    chains = lst.filter_chains
    if len(chains) != 1:
        errors.add(join(path, "filter_chains"),
                   f"exactly one filter chain is supported (got {len(chains)})")
    if chains:
        hcm = _filter_chain(chains[0], f"{join(path, 'filter_chains')}[0]", errors, refs)
    if addr is None or hcm is None:
        return None
    return model.Listener(
        name=lst.name, address=addr, hcm=hcm,
        per_connection_buffer_limit_bytes=wrapped(lst, "per_connection_buffer_limit_bytes", 1 << 20),
    )


def _filter_chain(chain, path: str, errors: Errors, refs: ClusterRefs):
    filters = chain.filters
    fpath = join(path, "filters")
    if len(filters) != 1:
        errors.add(fpath, "exactly one network filter (envoy.filters.network.http_connection_manager)"
                          f" is supported (got {len(filters)})")
    if not filters:
        return None
    tpath = f"{fpath}[0].typed_config"
    flt = filters[0]
    if not flt.HasField("typed_config"):
        errors.add(tpath, "value is required")
        return None
    inner = unpack_any(flt.typed_config)
    if inner is None:
        return None  # reported by the support walk
    if inner.DESCRIPTOR.full_name != _HCM:
        errors.add(tpath, f"type {inner.DESCRIPTOR.full_name} not supported as a network filter")
        return None
    return _hcm(inner, tpath, errors, refs)


def _hcm(h, path: str, errors: Errors, refs: ClusterRefs) -> Optional[model.HttpConnectionManager]:
    codec = enum_name(h, "codec_type")
    if codec not in _CODECS:
        errors.add(join(path, "codec_type"), f"{codec} not supported")
    rl_name, rl, grpc_web, grpc_web_after_rl, grpc_stats = _http_filters(
        h, join(path, "http_filters"), errors)
    rc = route_configuration(h.route_config, join(path, "route_config"), errors, refs)
    if not h.HasField("route_config"):
        return None  # reported by the validation rules
    cpo = h.common_http_protocol_options
    if cpo.HasField("max_requests_per_connection"):  # supported for clusters only
        errors.add(join(path, "common_http_protocol_options.max_requests_per_connection"),
                   "not supported")
    return model.HttpConnectionManager(
        stat_prefix=h.stat_prefix,
        route_config=rc,
        codec_type=codec,
        idle_timeout_ms=opt_duration_ms(cpo, "idle_timeout", 3_600_000),
        max_stream_duration_ms=opt_duration_ms(cpo, "max_stream_duration", 0),
        max_request_headers_kb=wrapped(h, "max_request_headers_kb", 60),
        stream_idle_timeout_ms=opt_duration_ms(h, "stream_idle_timeout", 300_000),
        request_timeout_ms=opt_duration_ms(h, "request_timeout", 0),
        use_remote_address=wrapped(h, "use_remote_address", False),
        xff_num_trusted_hops=h.xff_num_trusted_hops,
        generate_request_id=wrapped(h, "generate_request_id", True),
        server_name=h.server_name or "envoy",
        upgrade_types=[u.upgrade_type.lower() for u in h.upgrade_configs
                       if wrapped(u, "enabled", True)],
        local_ratelimit=rl,
        local_ratelimit_name=rl_name,
        access_logs=access_log.compile_access_logs(h, join(path, "access_log"), errors),
        http2=http2_options(h.http2_protocol_options),
        grpc_web=grpc_web,
        grpc_web_after_ratelimit=grpc_web_after_rl,
        grpc_stats=grpc_stats,
        enable_trailers=h.http_protocol_options.enable_trailers,
    )


def http2_options(msg) -> model.Http2Options:
    """core.v3.Http2ProtocolOptions -> Http2Options (Envoy's defaults for unset fields; the
    ranges are Envoy's validation rules, checked by the support walk)."""
    d = model.Http2Options()
    names = ("max_concurrent_streams", "initial_stream_window_size",
             "initial_connection_window_size", "max_outbound_frames", "max_outbound_control_frames",
             "max_consecutive_inbound_frames_with_empty_payload",
             "max_inbound_priority_frames_per_stream",
             "max_inbound_window_update_frames_per_data_frame_sent")
    kw = {name: wrapped(msg, name, getattr(d, name)) for name in names}
    if msg.HasField("connection_keepalive"):
        ka = msg.connection_keepalive
        kw["keepalive_interval_ms"] = opt_duration_ms(ka, "interval", 0)
        kw["keepalive_timeout_ms"] = opt_duration_ms(ka, "timeout", 0)  # required by Envoy
    return model.Http2Options(allow_connect=msg.allow_connect, **kw)


def _http_filters(h, path: str, errors: Errors):
    """http_filters: optional local rate limit, gRPC-Web and gRPC stats filters (at most one of
    each, in any order), then the router, which must come last (or no filters at all, as Envoy
    allows).  Returns (name, LocalRateLimit) of the rate limit filter, or ("", None), whether
    there is a gRPC-Web filter, whether it comes after the rate limit filter, and the
    model.GrpcStats of the gRPC stats filter (None without one)."""
    filters = h.http_filters
    found = ("", None)
    grpc_web = grpc_web_after_rl = False
    grpc_stats = None
    rl_at = gw_at = gs_at = -1
    for i, flt in enumerate(filters):
        tpath = f"{path}[{i}].typed_config"
        if not flt.HasField("typed_config"):
            errors.add(tpath, f"value is required (the implementation of '{flt.name}' is chosen "
                              "by its @type)")
            continue
        inner = unpack_any(flt.typed_config)
        if inner is None:
            continue  # reported by the support walk
        kind = inner.DESCRIPTOR.full_name
        last = i == len(filters) - 1
        if kind == _ROUTER:
            if not last:
                errors.add(f"{path}[{i}]", f"terminal filter named {flt.name} of type "
                                           "envoy.filters.http.router must be the last filter in "
                                           "a http filter chain.")
        elif kind == local_ratelimit.TYPE_NAME:
            if found[1] is not None:
                errors.add(f"{path}[{i}]", "only one local rate limit filter is supported")
            else:
                found = local_ratelimit.http_filter(flt, inner, tpath, errors)
                rl_at = i
            if last:
                errors.add(f"{path}[{i}]", f"non-terminal filter named {flt.name} of type "
                                           f"{local_ratelimit.FILTER_NAME} is the last filter in "
                                           "a http filter chain.")
        elif kind == _GRPC_WEB:
            if grpc_web:
                errors.add(f"{path}[{i}]", "only one gRPC-Web filter is supported")
            grpc_web = True
            grpc_web_after_rl = found[1] is not None
            gw_at = i
            if last:
                errors.add(f"{path}[{i}]", f"non-terminal filter named {flt.name} of type "
                                           f"{_GRPC_WEB_FILTER} is the last filter in a http "
                                           "filter chain.")
        elif kind == _GRPC_STATS:
            if grpc_stats is not None:
                errors.add(f"{path}[{i}]", "only one gRPC stats filter is supported")
            else:
                grpc_stats = _grpc_stats(inner, tpath, errors)
                gs_at = i
            if last:
                errors.add(f"{path}[{i}]", f"non-terminal filter named {flt.name} of type "
                                           f"{_GRPC_STATS_FILTER} is the last filter in a http "
                                           "filter chain.")
        else:
            errors.add(tpath, f"type {kind} not supported as an HTTP filter")
    if grpc_stats is not None:
        grpc_stats.before_ratelimit = gs_at < rl_at
        grpc_stats.after_grpc_web = 0 <= gw_at < gs_at
    return found[0], found[1], grpc_web, grpc_web_after_rl, grpc_stats


def _grpc_stats(msg, path: str, errors: Errors) -> model.GrpcStats:
    """envoy.filters.http.grpc_stats.  Only the configurations whose stat names are known at
    start-up: stats_for_all_methods false (the default) or individual_method_stats_allowlist.
    stats_for_all_methods true names stats after every method seen at run time: refused."""
    which = msg.WhichOneof("per_method_stat_specifier")
    if which == "stats_for_all_methods" and msg.stats_for_all_methods.value:
        errors.add(join(path, "stats_for_all_methods"),
                   "true not supported (stat names made per method at run time; list the methods "
                   "in individual_method_stats_allowlist)")
    out = model.GrpcStats()
    if which == "individual_method_stats_allowlist":
        out.allowlist = []
        for service in msg.individual_method_stats_allowlist.services:
            for method in service.method_names:
                if (service.name, method) not in out.allowlist:
                    out.allowlist.append((service.name, method))
    return out


def _cluster(cl, path: str, errors: Errors) -> model.Cluster:
    ctype = enum_name(cl, "type") if cl.WhichOneof("cluster_discovery_type") != "cluster_type" else "CUSTOM"
    if ctype not in _CLUSTER_TYPES:
        errors.add(join(path, "type"), f"{ctype} not supported")
    lb = enum_name(cl, "lb_policy")
    if lb not in _LB_POLICIES:
        errors.add(join(path, "lb_policy"), f"{lb} not supported")
    out = model.Cluster(
        name=cl.name,
        type=ctype,
        lb_policy=lb,
        connect_timeout_ms=opt_duration_ms(cl, "connect_timeout", 5000),
        per_connection_buffer_limit_bytes=wrapped(cl, "per_connection_buffer_limit_bytes", 1 << 20),
        dns_lookup_family=enum_name(cl, "dns_lookup_family"),
        dns_refresh_rate_ms=opt_duration_ms(cl, "dns_refresh_rate", 5000),
        circuit_breakers=circuit_breakers.circuit_breakers(cl, path, errors),
    )
    if cl.upstream_connection_options.HasField("tcp_keepalive"):
        ka = cl.upstream_connection_options.tcp_keepalive
        out.tcp_keepalive = model.TcpKeepalive(
            probes=wrapped(ka, "keepalive_probes", None),
            time_s=wrapped(ka, "keepalive_time", None),
            interval_s=wrapped(ka, "keepalive_interval", None),
        )
    la = cl.load_assignment
    lpath = join(path, "load_assignment")
    n_hosts = 0
    for i, lle in enumerate(la.endpoints):
        epath = f"{join(lpath, 'endpoints')}[{i}]"
        for j, lbe in enumerate(lle.lb_endpoints):
            bpath = f"{join(epath, 'lb_endpoints')}[{j}]"
            n_hosts += 1
            ep = lbe.endpoint
            if not ep.HasField("address"):
                errors.add(join(join(bpath, "endpoint"), "address"), "value is required")
                continue
            apath = join(join(bpath, "endpoint"), "address")
            addr = socket_address(ep.address, apath, errors, need_ip=False)
            if addr is None:
                continue
            if ctype == "STATIC" and addr.address and not is_ip(addr.address):
                errors.add(join(join(apath, "socket_address"), "address"),
                           f"malformed IP address: {addr.address}. Consider setting resolver_name "
                           "or setting cluster type to 'STRICT_DNS' or 'LOGICAL_DNS'")
            out.endpoints.append(model.Endpoint(
                addr, wrapped(lbe, "load_balancing_weight", 1), lle.priority,
                (lle.locality.region, lle.locality.zone, lle.locality.sub_zone),
                wrapped(lle, "load_balancing_weight", 0)))
    if ctype == "LOGICAL_DNS" and (len(la.endpoints) != 1 or n_hosts != 1):
        errors.add(lpath, "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a "
                          "single lb_endpoint")
    out.lb_options = lb_config.lb_options(cl, out, path, errors)
    compile_health(cl, out, path, errors)
    _upstream_protocol(cl, out, path, errors)
    return out


def _upstream_protocol(cl, out: model.Cluster, path: str, errors: Errors) -> None:
    """typed_extension_protocol_options (only envoy.extensions.upstreams.http.v3.
    HttpProtocolOptions: explicit HTTP/1.1 or HTTP/2, idle_timeout, max_requests_per_connection)
    and the Cluster's deprecated max_requests_per_connection."""
    opath = join(path, "typed_extension_protocol_options")
    mrpc_path = None
    for key in sorted(cl.typed_extension_protocol_options):
        kpath = f"{opath}.{snake(key)}"  # as the support walk writes map entries
        inner = unpack_any(cl.typed_extension_protocol_options[key])
        if inner is None:
            continue  # reported by the support walk
        kind = inner.DESCRIPTOR.full_name
        if key != _UPSTREAM_HTTP:
            errors.add(kpath, f"protocol options for '{key}' not supported (only {_UPSTREAM_HTTP})")
            continue
        if kind != _UPSTREAM_HTTP:
            errors.add(kpath, f"type {kind} not supported as {_UPSTREAM_HTTP}")
            continue
        if inner.WhichOneof("upstream_protocol_options") == "explicit_http_config":
            ehc = inner.explicit_http_config
            if ehc.WhichOneof("protocol_config") == "http2_protocol_options":
                out.http2 = http2_options(ehc.http2_protocol_options)
            elif ehc.http_protocol_options.enable_trailers:
                errors.add(join(kpath, "explicit_http_config.http_protocol_options.enable_trailers"),
                           "not supported")
        cpo = inner.common_http_protocol_options
        cpath = join(kpath, "common_http_protocol_options")
        if cpo.HasField("max_stream_duration"):  # supported for connection managers only
            errors.add(join(cpath, "max_stream_duration"), "not supported")
        out.upstream_idle_timeout_ms = opt_duration_ms(cpo, "idle_timeout",
                                                       _UPSTREAM_IDLE_TIMEOUT_MS)
        if cpo.HasField("max_requests_per_connection"):
            out.max_requests_per_connection = cpo.max_requests_per_connection.value
            mrpc_path = join(cpath, "max_requests_per_connection")
    if cl.HasField("max_requests_per_connection"):  # deprecated, still accepted by Envoy 1.40
        if mrpc_path is not None:
            errors.add(join(path, "max_requests_per_connection"),
                       "Only one of max_requests_per_connection from Cluster or "
                       "HttpProtocolOptions can be specified")
        else:
            out.max_requests_per_connection = cl.max_requests_per_connection.value


