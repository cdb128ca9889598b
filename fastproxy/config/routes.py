"""Compiling a RouteConfiguration (virtual hosts, routes, actions) into the model.

Returns the compiled table plus every cluster name it references (with the path of the reference)
so that the caller can check them against the static clusters, as Envoy does for static routes.
"""
from __future__ import annotations

from typing import Optional

from . import model
from .common import duration_ms, wrapped
from .errors import Errors, join
from .headers import header_matcher, mutations, query_matcher
from .lb_config import hash_policies
from .loader import snake
from .local_ratelimit import TYPE_NAME as LOCAL_RATELIMIT_TYPE, per_filter_config, rate_limits
from .retry import apply_virtual_host_policies, retry_policy
from .support import unpack_any

# route.v3.RedirectAction.RedirectResponseCode -> HTTP status
REDIRECT_CODES = {0: 301, 1: 302, 2: 303, 3: 307, 4: 308}
DEFAULT_ROUTE_TIMEOUT_MS = 15_000
MAX_DIRECT_RESPONSE_BODY = 4096  # Envoy's default max_direct_response_body_size_bytes

# (path, cluster name, weighted?) for every static cluster reference
ClusterRefs = list[tuple[str, str, bool]]


def route_configuration(rc, path: str, errors: Errors, refs: ClusterRefs) -> model.RouteConfiguration:
    out = model.RouteConfiguration(name=rc.name, headers=mutations(rc, path, errors))
    seen_domains: set[str] = set()
    for i, vh in enumerate(rc.virtual_hosts):
        vpath = f"{join(path, 'virtual_hosts')}[{i}]"
        for j, domain in enumerate(vh.domains):
            key = domain.lower()
            if key in seen_domains:
                dpath = f"{join(vpath, 'domains')}[{j}]"
                if key == "*":
                    errors.add(dpath, f"Only a single wildcard domain is permitted in route {rc.name}")
                else:
                    errors.add(dpath, "Only unique values for domains are permitted. Duplicate "
                                      f"entry of domain {key} in route {rc.name}")
            seen_domains.add(key)
        out.virtual_hosts.append(virtual_host(vh, vpath, errors, refs))
    return out


def virtual_host(vh, path: str, errors: Errors, refs: ClusterRefs) -> model.VirtualHost:
    routes = [route(r, f"{join(path, 'routes')}[{i}]", errors, refs) for i, r in enumerate(vh.routes)]
    apply_virtual_host_policies(vh, routes, path, errors)
    _per_filter_types(vh, path, errors)
    return model.VirtualHost(vh.name, [d.lower() for d in vh.domains], routes,
                             mutations(vh, path, errors),
                             per_filter_config=per_filter_config(vh, path, errors),
                             rate_limits=rate_limits(vh, path, errors))


def route(r, path: str, errors: Errors, refs: ClusterRefs) -> model.Route:
    out = model.Route(match=route_match(r.match, join(path, "match"), errors), name=r.name,
                      headers=mutations(r, path, errors),
                      per_filter_config=per_filter_config(r, path, errors))
    _per_filter_types(r, path, errors)
    action = r.WhichOneof("action")
    if action == "route":
        out.route = route_action(r.route, join(path, "route"), errors, refs)
    elif action == "redirect":
        out.redirect = redirect_action(r.redirect, join(path, "redirect"), errors)
    elif action == "direct_response":
        out.direct_response = direct_response(r.direct_response, join(path, "direct_response"), errors)
    return out


def route_match(m, path: str, errors: Errors) -> model.RouteMatch:
    kind = m.WhichOneof("path_specifier") or "prefix"
    if kind == "safe_regex":
        value = m.safe_regex.regex
    elif kind in ("prefix", "path", "path_separated_prefix"):
        value = getattr(m, kind)
    else:
        errors.add(join(path, kind), "not supported")
        value = ""
    return model.RouteMatch(
        kind=kind,
        value=value,
        case_sensitive=wrapped(m, "case_sensitive", True),
        headers=[header_matcher(h, f"{join(path, 'headers')}[{i}]", errors)
                 for i, h in enumerate(m.headers)],
        query_parameters=[query_matcher(q, f"{join(path, 'query_parameters')}[{i}]", errors)
                          for i, q in enumerate(m.query_parameters)],
    )


def _regex_rewrite(msg, path: str) -> Optional[model.RegexRewrite]:
    if not msg.HasField("regex_rewrite"):
        return None
    rr = msg.regex_rewrite
    return model.RegexRewrite(rr.pattern.regex, rr.substitution)


def route_action(ra, path: str, errors: Errors, refs: ClusterRefs) -> model.RouteAction:
    out = model.RouteAction(rate_limits=rate_limits(ra, path, errors))
    spec = ra.WhichOneof("cluster_specifier")
    if spec == "cluster":
        out.cluster = ra.cluster
        if ra.cluster:
            refs.append((join(path, "cluster"), ra.cluster, False))
    elif spec == "cluster_header":
        out.cluster_header = ra.cluster_header.lower()
    elif spec == "weighted_clusters":
        out.weighted_clusters = _weighted(ra.weighted_clusters, join(path, "weighted_clusters"),
                                          errors, refs)
    if ra.prefix_rewrite:
        out.prefix_rewrite = ra.prefix_rewrite
    out.regex_rewrite = _regex_rewrite(ra, join(path, "regex_rewrite"))
    if out.prefix_rewrite is not None and out.regex_rewrite is not None:
        errors.add(path, "Cannot specify both prefix_rewrite and regex_rewrite")
    host = ra.WhichOneof("host_rewrite_specifier")
    if host == "host_rewrite_literal":
        out.host_rewrite_literal = ra.host_rewrite_literal
    elif host == "auto_host_rewrite":
        out.auto_host_rewrite = ra.auto_host_rewrite.value
    out.timeout_ms = duration_ms(ra.timeout) if ra.HasField("timeout") else DEFAULT_ROUTE_TIMEOUT_MS
    out.priority = ra.priority  # RoutingPriority: DEFAULT 0, HIGH 1
    if ra.HasField("idle_timeout"):
        out.idle_timeout_ms = duration_ms(ra.idle_timeout)
    if ra.HasField("max_stream_duration") and ra.max_stream_duration.HasField("max_stream_duration"):
        out.max_stream_duration_ms = duration_ms(ra.max_stream_duration.max_stream_duration)
    out.new_timeouts = ra.HasField("max_stream_duration")
    _grpc_timeout(ra, out)
    if ra.HasField("retry_policy"):
        out.retry_policy = retry_policy(ra.retry_policy, join(path, "retry_policy"), errors)
    out.hash_policy = hash_policies(ra, path, errors)
    return out


def _grpc_timeout(ra, out: model.RouteAction) -> None:
    """The grpc-timeout header's cap and offset.  As Envoy's RouteEntryImplBase: a route that sets
    max_stream_duration ("new timeouts") takes them from max_stream_duration.grpc_timeout_header_max
    and grpc_timeout_header_offset and ignores the deprecated max_grpc_timeout and
    grpc_timeout_offset; any other route takes those.  An offset without its max has no effect."""
    if ra.HasField("max_stream_duration"):
        msd = ra.max_stream_duration
        max_name, offset_name = "grpc_timeout_header_max", "grpc_timeout_header_offset"
    else:
        msd = ra
        max_name, offset_name = "max_grpc_timeout", "grpc_timeout_offset"
    if msd.HasField(max_name):
        out.grpc_timeout_max_ms = duration_ms(getattr(msd, max_name))
        if msd.HasField(offset_name):
            out.grpc_timeout_offset_ms = duration_ms(getattr(msd, offset_name))


def _per_filter_types(msg, path: str, errors: Errors) -> None:
    """typed_per_filter_config entries of a filter type without per-route configuration (Envoy
    refuses them); local rate limit overrides are compiled by `per_filter_config`."""
    for name in sorted(msg.typed_per_filter_config):
        inner = unpack_any(msg.typed_per_filter_config[name])
        if inner is None or inner.DESCRIPTOR.full_name == LOCAL_RATELIMIT_TYPE:
            continue  # other types are reported by the support walk
        errors.add(f"{join(path, 'typed_per_filter_config')}.{snake(name)}",
                   f"type {inner.DESCRIPTOR.full_name} does not support virtual host or route "
                   "specific configurations")


def _weighted(wc, path: str, errors: Errors, refs: ClusterRefs) -> list[model.WeightedCluster]:
    out = []
    total = 0
    for i, cw in enumerate(wc.clusters):
        cpath = f"{join(path, 'clusters')}[{i}]"
        if not cw.name:
            errors.add(join(cpath, "name"), "value is required")
        else:
            refs.append((join(cpath, "name"), cw.name, True))
        weight = wrapped(cw, "weight", 0)
        total += weight
        out.append(model.WeightedCluster(
            name=cw.name, weight=weight, headers=mutations(cw, cpath, errors),
            host_rewrite_literal=cw.host_rewrite_literal or None))
    if not wc.clusters:
        errors.add(join(path, "clusters"), "value must contain at least 1 item(s)")
    elif total == 0:
        errors.add(path, "Sum of weights in the weighted_cluster must be greater than 0.")
    return out


def redirect_action(ra, path: str, errors: Errors) -> model.RedirectAction:
    out = model.RedirectAction()
    scheme = ra.WhichOneof("scheme_rewrite_specifier")
    if scheme == "https_redirect" and ra.https_redirect:
        out.scheme_redirect = "https"
    elif scheme == "scheme_redirect":
        out.scheme_redirect = ra.scheme_redirect.lower()
    out.host_redirect = ra.host_redirect or None
    out.port_redirect = ra.port_redirect
    rewrite = ra.WhichOneof("path_rewrite_specifier")
    if rewrite == "path_redirect":
        out.path_redirect = ra.path_redirect
    elif rewrite == "prefix_rewrite":
        out.prefix_rewrite = ra.prefix_rewrite
    elif rewrite == "regex_rewrite":
        out.regex_rewrite = _regex_rewrite(ra, join(path, "regex_rewrite"))
    out.response_code = REDIRECT_CODES.get(ra.response_code, 301)
    out.strip_query = ra.strip_query
    return out


def direct_response(dr, path: str, errors: Errors) -> model.DirectResponse:
    body = None
    if dr.HasField("body"):
        kind = dr.body.WhichOneof("specifier")
        if kind == "inline_string":
            body = dr.body.inline_string.encode("utf-8")
        elif kind == "inline_bytes":
            body = bytes(dr.body.inline_bytes)
        if body is not None and len(body) > MAX_DIRECT_RESPONSE_BODY:
            errors.add(join(path, "body"), f"response body size is {len(body)} bytes; maximum is "
                                           f"{MAX_DIRECT_RESPONSE_BODY}")
    return model.DirectResponse(dr.status, body)
