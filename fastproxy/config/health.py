"""A cluster's `health_checks` and `outlier_detection`: the compiled model and the compile step.

`HealthCheck` and `OutlierDetection` carry Envoy's defaults; `compile_health(cl, out, path,
errors)` fills `model.Cluster.health_checks` / `.outlier_detection` from the parsed Cluster.
What is not implemented is refused: by the support table (`SUPPORTED`, merged into
`support.SUPPORTED`) for whole fields, here for values (gRPC/custom checkers, more than one
health checker, HTTP/2 health checks, retriable_statuses).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .common import enum_name, opt_duration_ms, wrapped
from .errors import Errors, join
from .headers import header_value_option

_CORE = "envoy.config.core.v3."

SUPPORTED: dict[str, set[str]] = {
    _CORE + "HealthCheck": {
        "timeout", "interval", "initial_jitter", "interval_jitter", "interval_jitter_percent",
        "unhealthy_threshold", "healthy_threshold", "reuse_connection", "http_health_check",
        "tcp_health_check", "no_traffic_interval", "no_traffic_healthy_interval",
        "unhealthy_interval", "unhealthy_edge_interval", "healthy_edge_interval",
    },
    _CORE + "HealthCheck.HttpHealthCheck": {
        "host", "path", "request_headers_to_add", "request_headers_to_remove",
        "expected_statuses", "codec_client_type", "method",
    },
    _CORE + "HealthCheck.TcpHealthCheck": {"send", "receive"},
    _CORE + "HealthCheck.Payload": {"text", "binary"},
    "envoy.type.v3.Int64Range": {"start", "end"},
    "envoy.config.cluster.v3.OutlierDetection": {
        "consecutive_5xx", "interval", "base_ejection_time", "max_ejection_percent",
        "enforcing_consecutive_5xx", "enforcing_success_rate", "success_rate_minimum_hosts",
        "success_rate_request_volume", "success_rate_stdev_factor", "consecutive_gateway_failure",
        "enforcing_consecutive_gateway_failure", "split_external_local_origin_errors",
        "consecutive_local_origin_failure", "enforcing_consecutive_local_origin_failure",
        "enforcing_local_origin_success_rate", "failure_percentage_threshold",
        "enforcing_failure_percentage", "enforcing_failure_percentage_local_origin",
        "failure_percentage_minimum_hosts", "failure_percentage_request_volume",
        "max_ejection_time", "max_ejection_time_jitter",
        "successful_active_health_check_uneject_host", "always_eject_one_host",
    },
}

# Cluster fields this module compiles (added to the Cluster entry of the support table).
CLUSTER_FIELDS = {"health_checks", "outlier_detection"}


@dataclass
class HealthCheck:
    """core.v3.HealthCheck with one HTTP or TCP checker; times in milliseconds."""

    kind: str  # "http" | "tcp"
    timeout_ms: int
    interval_ms: int
    unhealthy_threshold: int
    healthy_threshold: int
    initial_jitter_ms: int = 0
    interval_jitter_ms: int = 0
    interval_jitter_percent: int = 0
    reuse_connection: bool = True
    no_traffic_interval_ms: int = 60_000
    no_traffic_healthy_interval_ms: Optional[int] = None  # default: no_traffic_interval
    unhealthy_interval_ms: Optional[int] = None  # default: interval
    unhealthy_edge_interval_ms: Optional[int] = None  # default: unhealthy_interval
    healthy_edge_interval_ms: Optional[int] = None  # default: interval
    # HTTP
    path: str = "/"
    host: str = ""  # empty: the cluster's name, as Envoy sends it
    method: str = "GET"
    request_headers: list = field(default_factory=list)  # [model.HeaderValueOption]
    request_headers_to_remove: list = field(default_factory=list)  # lower-cased
    expected_statuses: list = field(default_factory=lambda: [(200, 201)])  # [start, end)
    # TCP
    send: bytes = b""
    receive: list = field(default_factory=list)  # [bytes]: each found in order


@dataclass
class OutlierDetection:
    """cluster.v3.OutlierDetection with Envoy's defaults; times in milliseconds."""

    interval_ms: int = 10_000
    base_ejection_time_ms: int = 30_000
    max_ejection_time_ms: int = 300_000  # default: max(300 s, base_ejection_time)
    max_ejection_time_jitter_ms: int = 0
    max_ejection_percent: int = 10
    always_eject_one_host: bool = False
    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    consecutive_local_origin_failure: int = 5
    split_external_local_origin_errors: bool = False
    enforcing_consecutive_5xx: int = 100
    enforcing_consecutive_gateway_failure: int = 0
    enforcing_consecutive_local_origin_failure: int = 100
    enforcing_success_rate: int = 100
    enforcing_local_origin_success_rate: int = 100
    enforcing_failure_percentage: int = 0
    enforcing_failure_percentage_local_origin: int = 0
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900  # divided by 1000
    failure_percentage_threshold: int = 85
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    successful_active_health_check_uneject_host: bool = True


def _payload(p, path: str, errors: Errors) -> bytes:
    which = p.WhichOneof("payload")
    if which == "binary":
        return bytes(p.binary)
    try:
        return bytes.fromhex(p.text)
    except ValueError:
        errors.add(join(path, "text"), f"'{p.text}' is not a hex string")
        return b""


def _health_check(hc, path: str, errors: Errors) -> Optional[HealthCheck]:
    which = hc.WhichOneof("health_checker")
    if which not in ("http_health_check", "tcp_health_check"):
        errors.add(join(path, which or "health_checker"),
                   "only http_health_check and tcp_health_check are supported")
        return None
    out = HealthCheck(
        kind="http" if which == "http_health_check" else "tcp",
        timeout_ms=opt_duration_ms(hc, "timeout", 0),
        interval_ms=opt_duration_ms(hc, "interval", 0),
        unhealthy_threshold=wrapped(hc, "unhealthy_threshold", 0),
        healthy_threshold=wrapped(hc, "healthy_threshold", 0),
        initial_jitter_ms=opt_duration_ms(hc, "initial_jitter", 0),
        interval_jitter_ms=opt_duration_ms(hc, "interval_jitter", 0),
        interval_jitter_percent=hc.interval_jitter_percent,
        reuse_connection=wrapped(hc, "reuse_connection", True),
        no_traffic_interval_ms=opt_duration_ms(hc, "no_traffic_interval", 60_000),
    )
    for name in ("no_traffic_healthy_interval", "unhealthy_interval", "unhealthy_edge_interval",
                 "healthy_edge_interval"):
        if hc.HasField(name):
            setattr(out, name + "_ms", opt_duration_ms(hc, name, 0))
    if which == "http_health_check":
        h = hc.http_health_check
        hpath = join(path, which)
        if enum_name(h, "codec_client_type") != "HTTP1":
            errors.add(join(hpath, "codec_client_type"), "only HTTP1 health checks are supported")
        out.path = h.path
        out.host = h.host
        method = enum_name(h, "method")
        out.method = "GET" if method == "METHOD_UNSPECIFIED" else method
        if out.method not in ("GET", "HEAD", "DELETE", "OPTIONS", "TRACE"):
            errors.add(join(hpath, "method"), f"{out.method} not supported (a request without a "
                                              "body is sent)")
        out.request_headers = [
            header_value_option(hv, f"{join(hpath, 'request_headers_to_add')}[{i}]", errors)
            for i, hv in enumerate(h.request_headers_to_add)]
        out.request_headers_to_remove = [n.lower() for n in h.request_headers_to_remove]
        if h.expected_statuses:
            out.expected_statuses = []
            for i, r in enumerate(h.expected_statuses):
                if not (100 <= r.start < r.end <= 600):
                    errors.add(f"{join(hpath, 'expected_statuses')}[{i}]",
                               f"invalid range [{r.start}, {r.end}): statuses are 100..599 and "
                               "start must be below end")
                out.expected_statuses.append((r.start, r.end))
    else:
        t = hc.tcp_health_check
        tpath = join(path, which)
        if t.HasField("send"):
            out.send = _payload(t.send, join(tpath, "send"), errors)
        out.receive = [_payload(p, f"{join(tpath, 'receive')}[{i}]", errors)
                       for i, p in enumerate(t.receive)]
    return out


def _outlier(od) -> OutlierDetection:
    out = OutlierDetection()
    for name in ("interval", "base_ejection_time", "max_ejection_time_jitter"):
        if od.HasField(name):
            setattr(out, name + "_ms", opt_duration_ms(od, name, 0))
    out.max_ejection_time_ms = opt_duration_ms(od, "max_ejection_time",
                                               max(300_000, out.base_ejection_time_ms))
    for name in ("max_ejection_percent", "consecutive_5xx", "consecutive_gateway_failure",
                 "consecutive_local_origin_failure", "enforcing_consecutive_5xx",
                 "enforcing_consecutive_gateway_failure",
                 "enforcing_consecutive_local_origin_failure", "enforcing_success_rate",
                 "enforcing_local_origin_success_rate", "enforcing_failure_percentage",
                 "enforcing_failure_percentage_local_origin", "success_rate_minimum_hosts",
                 "success_rate_request_volume", "success_rate_stdev_factor",
                 "failure_percentage_threshold", "failure_percentage_minimum_hosts",
                 "failure_percentage_request_volume", "always_eject_one_host",
                 "successful_active_health_check_uneject_host"):
        setattr(out, name, wrapped(od, name, getattr(out, name)))
    out.split_external_local_origin_errors = od.split_external_local_origin_errors
    return out


def compile_health(cl, out, path: str, errors: Errors) -> None:
    """Set `out.health_checks` and `out.outlier_detection` from the parsed Cluster `cl`."""
    if len(cl.health_checks) > 1:
        errors.add(join(path, "health_checks"),
                   f"at most one health checker per cluster is supported "
                   f"(got {len(cl.health_checks)})")
    for i, hc in enumerate(cl.health_checks[:1]):
        compiled = _health_check(hc, f"{join(path, 'health_checks')}[{i}]", errors)
        if compiled is not None:
            out.health_checks = [compiled]
    if cl.HasField("outlier_detection"):
        od = _outlier(cl.outlier_detection)
        if od.max_ejection_time_ms < od.base_ejection_time_ms:
            errors.add(join(path, "outlier_detection"),
                       "outlier detector's max_ejection_time cannot be smaller than "
                       "base_ejection_time")
        out.outlier_detection = od
