"""Compiling a cluster's health_checks and outlier_detection."""
from __future__ import annotations

import copy

import pytest

from fastproxy.config import ConfigError, load_dict

from test_config import BASE


def cluster_with(**extra) -> dict:
    d = copy.deepcopy(BASE)
    d["static_resources"]["clusters"][0].update(extra)
    return d


def errors_of(d: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_dict(d)
    return info.value.errors


HC = {"timeout": "1s", "interval": "2s", "unhealthy_threshold": 3, "healthy_threshold": 2}


def test_http_health_check_defaults():
    c = load_dict(cluster_with(health_checks=[dict(HC, http_health_check={"path": "/h"})])).clusters[0]
    (hc,) = c.health_checks
    assert (hc.kind, hc.path, hc.host, hc.method) == ("http", "/h", "", "GET")
    assert (hc.timeout_ms, hc.interval_ms, hc.unhealthy_threshold, hc.healthy_threshold) == (1000, 2000, 3, 2)
    assert hc.expected_statuses == [(200, 201)]
    assert hc.no_traffic_interval_ms == 60_000 and hc.reuse_connection
    assert c.outlier_detection is None


def test_tcp_payloads_and_expected_statuses():
    c = load_dict(cluster_with(health_checks=[dict(HC, tcp_health_check={
        "send": {"text": "70696e67"}, "receive": [{"binary": "cG9uZw=="}]})])).clusters[0]
    assert c.health_checks[0].send == b"ping" and c.health_checks[0].receive == [b"pong"]
    c = load_dict(cluster_with(health_checks=[dict(HC, http_health_check={
        "path": "/", "expected_statuses": [{"start": 200, "end": 300}]})])).clusters[0]
    assert c.health_checks[0].expected_statuses == [(200, 300)]


def test_outlier_detection_defaults_and_values():
    c = load_dict(cluster_with(outlier_detection={})).clusters[0]
    od = c.outlier_detection
    assert (od.consecutive_5xx, od.interval_ms, od.base_ejection_time_ms, od.max_ejection_percent) == (5, 10_000, 30_000, 10)
    assert (od.max_ejection_time_ms, od.enforcing_consecutive_gateway_failure) == (300_000, 0)
    c = load_dict(cluster_with(outlier_detection={
        "consecutive_5xx": 2, "base_ejection_time": "400s", "max_ejection_percent": 50})).clusters[0]
    assert c.outlier_detection.max_ejection_time_ms == 400_000
    assert c.outlier_detection.consecutive_5xx == 2


def test_refused():
    errs = errors_of(cluster_with(health_checks=[dict(HC, grpc_health_check={})]))
    assert any("grpc_health_check" in e for e in errs)
    errs = errors_of(cluster_with(health_checks=[dict(HC, http_health_check={
        "path": "/", "retriable_statuses": [{"start": 500, "end": 501}]})]))
    assert any("retriable_statuses" in e and "not supported" in e for e in errs)
    errs = errors_of(cluster_with(outlier_detection={"base_ejection_time": "10s",
                                                     "max_ejection_time": "5s"}))
    assert any("max_ejection_time" in e for e in errs)
