"""Stat names, one table per component, in Envoy's naming.

The order of each table is part of the compiled core's ABI: fastproxy/_core/stats.pxd declares
an enum per table with the same members in the same order (tests/unit/test_stats.py checks it).
Append new stats at the end of a table and mirror them in the .pxd.
"""

COUNTER = "counter"
GAUGE = "gauge"

# server.*  (written by the main process, in slot 0)
SERVER_STATS = [
    ("live", GAUGE),
    ("concurrency", GAUGE),
    ("uptime", GAUGE),
    ("worker_restarts", COUNTER),
]

# listener.<address>_<port>.*
LISTENER_STATS = [
    ("downstream_cx_total", COUNTER),
    ("downstream_cx_active", GAUGE),
    ("downstream_cx_destroy", COUNTER),
    ("downstream_cx_overflow", COUNTER),
]

# http.<stat_prefix>.*  (connection manager, HTTP/1 codec and router)
HTTP_STATS = [
    ("downstream_cx_total", COUNTER),
    ("downstream_cx_active", GAUGE),
    ("downstream_cx_http1_total", COUNTER),
    ("downstream_cx_http1_active", GAUGE),
    ("downstream_cx_destroy", COUNTER),
    ("downstream_cx_destroy_remote", COUNTER),
    ("downstream_cx_destroy_local", COUNTER),
    ("downstream_cx_destroy_active_rq", COUNTER),
    ("downstream_cx_idle_timeout", COUNTER),
    ("downstream_cx_protocol_error", COUNTER),
    ("downstream_cx_rx_bytes_total", COUNTER),
    ("downstream_cx_tx_bytes_total", COUNTER),
    ("downstream_cx_upgrades_total", COUNTER),
    ("downstream_cx_upgrades_active", GAUGE),
    ("downstream_rq_total", COUNTER),
    ("downstream_rq_http1_total", COUNTER),
    ("downstream_rq_active", GAUGE),
    ("downstream_rq_completed", COUNTER),
    ("downstream_rq_1xx", COUNTER),
    ("downstream_rq_2xx", COUNTER),
    ("downstream_rq_3xx", COUNTER),
    ("downstream_rq_4xx", COUNTER),
    ("downstream_rq_5xx", COUNTER),
    ("downstream_rq_timeout", COUNTER),
    ("downstream_rq_idle_timeout", COUNTER),
    ("downstream_rq_too_large", COUNTER),
    ("downstream_rq_header_timeout", COUNTER),
    ("no_route", COUNTER),
    ("no_cluster", COUNTER),
    ("rq_redirect", COUNTER),
    ("rq_direct_response", COUNTER),
    ("rq_total", COUNTER),
    ("rq_reset_after_downstream_response_started", COUNTER),
    ("downstream_rq_non_relative_path", COUNTER),
    ("downstream_rq_max_duration_reached", COUNTER),
    ("downstream_cx_http2_total", COUNTER),
    ("downstream_cx_http2_active", GAUGE),
    ("downstream_rq_http2_total", COUNTER),
]

# cluster.<name>.*
CLUSTER_STATS = [
    ("upstream_cx_total", COUNTER),
    ("upstream_cx_active", GAUGE),
    ("upstream_cx_http1_total", COUNTER),
    ("upstream_cx_connect_fail", COUNTER),
    ("upstream_cx_connect_timeout", COUNTER),
    ("upstream_cx_destroy", COUNTER),
    ("upstream_cx_destroy_local", COUNTER),
    ("upstream_cx_destroy_remote", COUNTER),
    ("upstream_cx_protocol_error", COUNTER),
    ("upstream_cx_rx_bytes_total", COUNTER),
    ("upstream_cx_tx_bytes_total", COUNTER),
    ("upstream_cx_none_healthy", COUNTER),
    ("upstream_rq_total", COUNTER),
    ("upstream_rq_active", GAUGE),
    ("upstream_rq_completed", COUNTER),
    ("upstream_rq_1xx", COUNTER),
    ("upstream_rq_2xx", COUNTER),
    ("upstream_rq_3xx", COUNTER),
    ("upstream_rq_4xx", COUNTER),
    ("upstream_rq_5xx", COUNTER),
    ("upstream_rq_timeout", COUNTER),
    ("upstream_rq_pending_total", COUNTER),
    ("upstream_rq_pending_active", GAUGE),
    ("upstream_rq_rx_reset", COUNTER),
    ("upstream_rq_tx_reset", COUNTER),
    ("membership_total", GAUGE),
    ("membership_healthy", GAUGE),
    ("membership_change", COUNTER),
    ("upstream_rq_pending_failure_eject", COUNTER),
    ("upstream_cx_overflow", COUNTER),
    ("upstream_rq_pending_overflow", COUNTER),
    ("upstream_rq_retry", COUNTER),
    ("upstream_rq_retry_success", COUNTER),
    ("upstream_rq_retry_overflow", COUNTER),
    ("upstream_rq_retry_limit_exceeded", COUNTER),
    ("upstream_rq_retry_backoff_exponential", COUNTER),
    ("upstream_rq_per_try_timeout", COUNTER),
    ("upstream_rq_per_try_idle_timeout", COUNTER),
    ("upstream_rq_max_duration_reached", COUNTER),
    # circuit breakers: overflows (counted by the workers) and, per priority, whether each
    # threshold is reached (gauges the main process derives from the shared counts)
    ("upstream_rq_active_overflow", COUNTER),
    ("upstream_cx_pool_overflow", COUNTER),
    ("circuit_breakers.default.cx_open", GAUGE),
    ("circuit_breakers.default.cx_pool_open", GAUGE),
    ("circuit_breakers.default.rq_pending_open", GAUGE),
    ("circuit_breakers.default.rq_open", GAUGE),
    ("circuit_breakers.default.rq_retry_open", GAUGE),
    ("circuit_breakers.high.cx_open", GAUGE),
    ("circuit_breakers.high.cx_pool_open", GAUGE),
    ("circuit_breakers.high.rq_pending_open", GAUGE),
    ("circuit_breakers.high.rq_open", GAUGE),
    ("circuit_breakers.high.rq_retry_open", GAUGE),
    # active health checking (counted by the main process, which runs the checks)
    ("health_check.attempt", COUNTER),
    ("health_check.success", COUNTER),
    ("health_check.failure", COUNTER),
    ("health_check.network_failure", COUNTER),
    ("health_check.passive_failure", COUNTER),
    ("health_check.verify_cluster", COUNTER),
    ("health_check.healthy", GAUGE),
    ("health_check.degraded", GAUGE),
    # outlier detection: consecutive-error ejections are counted by the worker that saw the
    # last error, interval ejections and the gauge by the main process
    ("outlier_detection.ejections_active", GAUGE),
    ("outlier_detection.ejections_total", COUNTER),
    ("outlier_detection.ejections_overflow", COUNTER),
    ("outlier_detection.ejections_enforced_total", COUNTER),
    ("outlier_detection.ejections_consecutive_5xx", COUNTER),
    ("outlier_detection.ejections_success_rate", COUNTER),
    ("outlier_detection.ejections_detected_consecutive_5xx", COUNTER),
    ("outlier_detection.ejections_enforced_consecutive_5xx", COUNTER),
    ("outlier_detection.ejections_detected_consecutive_gateway_failure", COUNTER),
    ("outlier_detection.ejections_enforced_consecutive_gateway_failure", COUNTER),
    ("outlier_detection.ejections_detected_consecutive_local_origin_failure", COUNTER),
    ("outlier_detection.ejections_enforced_consecutive_local_origin_failure", COUNTER),
    ("outlier_detection.ejections_detected_success_rate", COUNTER),
    ("outlier_detection.ejections_enforced_success_rate", COUNTER),
    ("outlier_detection.ejections_detected_failure_percentage", COUNTER),
    ("outlier_detection.ejections_enforced_failure_percentage", COUNTER),
    ("outlier_detection.ejections_detected_local_origin_success_rate", COUNTER),
    ("outlier_detection.ejections_enforced_local_origin_success_rate", COUNTER),
    ("outlier_detection.ejections_detected_local_origin_failure_percentage", COUNTER),
    ("outlier_detection.ejections_enforced_local_origin_failure_percentage", COUNTER),
    ("outlier_detection.ejections_detected_degradation", COUNTER),
    # HTTP/2 upstream connections (the multiplexed pool)
    ("upstream_cx_http2_total", COUNTER),
    ("upstream_cx_max_requests", COUNTER),
    ("upstream_cx_idle_timeout", COUNTER),
]
# Per-status counters (upstream_rq_200...): Envoy creates them on first use; here they have fixed
# slots, and the admin lists one only once it is non-zero.
CLUSTER_CODE_BASE = len(CLUSTER_STATS)
CLUSTER_STATS += [("upstream_rq_%d" % code, COUNTER) for code in range(100, 600)]


# cluster.<name>.grpc.* and, for the methods of an individual_method_stats_allowlist,
# cluster.<name>.grpc.<service>.<method>.*  (envoy.filters.http.grpc_stats).  Blocks exist only
# when a connection manager has the filter; Envoy creates each of these counters on first use,
# so the admin lists one only once it is non-zero (StatsLayout.lazy).  grpc.<status> follow for
# the well-known statuses 0 (OK) .. 16 (UNAUTHENTICATED).
GRPC_STATS = [
    ("success", COUNTER),
    ("failure", COUNTER),
    ("total", COUNTER),
    ("request_message_count", COUNTER),
    ("response_message_count", COUNTER),
]
GRPC_CODE_BASE = len(GRPC_STATS)
GRPC_MAX_STATUS = 16
GRPC_STATS += [(str(code), COUNTER) for code in range(GRPC_MAX_STATUS + 1)]


def hidden_when_zero(name: str) -> bool:
    """Stats that Envoy would not have created yet while they are zero."""
    tail = name.rsplit(".", 1)[-1]
    return tail.startswith("upstream_rq_") and tail[12:].isdigit() and len(tail) == 15


# cluster.<name>.circuit_breakers.<priority>.*  (only for thresholds with track_remaining;
# written by the main process from the shared counts.  remaining_cx_pools is not kept: its
# unlimited default does not fit a signed 64-bit value.)
CIRCUIT_BREAKER_REMAINING_STATS = [
    ("remaining_cx", GAUGE),
    ("remaining_pending", GAUGE),
    ("remaining_rq", GAUGE),
    ("remaining_retries", GAUGE),
]

# <stat_prefix>.http_local_rate_limit.*  (envoy.filters.http.local_ratelimit; the workers count
# them in the rate limit block and the main process sums them into its slot)
LOCAL_RATE_LIMIT_STATS = [
    ("enabled", COUNTER),
    ("enforced", COUNTER),
    ("ok", COUNTER),
    ("rate_limited", COUNTER),
    ("shadow_mode", COUNTER),
]
