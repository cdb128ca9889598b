"""Outlier ejection and health-check decisions on the shared host table, with injected time."""
from __future__ import annotations

import random

import pytest

hs = pytest.importorskip("fastproxy._core.hoststate")

from fastproxy.config.health import HealthCheck, OutlierDetection  # noqa: E402
from fastproxy.upstream import health  # noqa: E402

S = 1_000_000_000
MS = 1_000_000


def table_with(n, **od):
    t = hs.SharedHostTable.private([("c", 16, None)])
    slots = [t.find(0, "10.0.0.%d:80" % i, True) for i in range(n)]
    for s in slots:
        t.add_members(0, s, hs.MAIN_MEMBER)
    cfg = hs.OutlierConfig(OutlierDetection(**od))
    return t, slots, cfg


def test_consecutive_5xx_counts_across_reports_and_resets_on_success():
    t, (a,), cfg = table_with(1, consecutive_5xx=3)
    assert [t.report_code(0, a, cfg, 500) for _ in range(2)] == [0, 0]
    t.report_code(0, a, cfg, 200)
    assert [t.report_code(0, a, cfg, 503) for _ in range(3)] == [0, 0, hs.EV_CONSECUTIVE_5XX]
    # 503 is also a gateway failure (default threshold 5)
    assert t.host(0, a)["cgw"] == 3


def test_local_failures_map_to_503_and_504_unless_split():
    t, (a,), cfg = table_with(1, consecutive_5xx=100, consecutive_gateway_failure=2)
    t.report_local_failure(0, a, cfg, False)
    assert t.report_local_failure(0, a, cfg, True) == hs.EV_CONSECUTIVE_GATEWAY_FAILURE
    t2, (b,), split = table_with(1, split_external_local_origin_errors=True,
                                 consecutive_local_origin_failure=2)
    t2.report_local_failure(0, b, split, False)
    assert t2.report_local_failure(0, b, split, True) == hs.EV_CONSECUTIVE_LOCAL_ORIGIN_FAILURE
    assert t2.host(0, b)["c5xx"] == 0


def test_ejection_time_grows_with_backoff_and_is_capped():
    t, (a, b), cfg = table_with(2, base_ejection_time_ms=1000, max_ejection_time_ms=2500,
                                max_ejection_percent=50)
    now = 100 * S
    durations = []
    for _ in range(4):
        r = t.eject(0, a, cfg, hs.EV_CONSECUTIVE_5XX, 2, now)
        assert r & hs.R_ENFORCED and r & hs.R_TOTAL
        d = 0
        while not t.uneject_due(0, a, cfg, now + d):
            d += 100 * MS
        durations.append(d / S)
        t.uneject(0, a, now + d)
        now += d
    assert durations == [1.0, 2.0, 2.5, 2.5]
    assert t.host(0, a)["num_ejections"] == 4


def test_backoff_decrements_while_healthy():
    t, (a, b), cfg = table_with(2, base_ejection_time_ms=1000, interval_ms=1000,
                                max_ejection_percent=50)
    c = health.ClusterHealth(_model(outlier_detection=OutlierDetection(
        base_ejection_time_ms=1000, interval_ms=1000, max_ejection_percent=50)), 0, None)
    det = health.OutlierDetector(t, c, lambda n, d: None)
    t.eject(0, a, cfg, hs.EV_CONSECUTIVE_5XX, 2, 0)
    det.tick(1 * S)  # unejected (1 s elapsed)
    assert t.host(0, a)["backoff"] == 1
    det.tick(2 * S)  # healthy for a whole interval: backoff decremented
    assert t.host(0, a)["backoff"] == 0


def test_max_ejection_percent_and_always_eject_one_host():
    t, slots, cfg = table_with(4, max_ejection_percent=30)
    assert t.eject(0, slots[0], cfg, hs.EV_CONSECUTIVE_5XX, 4, 0) & hs.R_ENFORCED  # 25 %
    assert t.eject(0, slots[1], cfg, hs.EV_CONSECUTIVE_5XX, 4, 0) == hs.R_OVERFLOW  # 50 %
    assert t.eject(0, slots[0], cfg, hs.EV_CONSECUTIVE_5XX, 4, 0) == hs.R_IGNORED
    t2, slots2, one = table_with(4, max_ejection_percent=0, always_eject_one_host=True)
    assert t2.eject(0, slots2[0], one, hs.EV_CONSECUTIVE_5XX, 4, 0) & hs.R_ENFORCED
    assert t2.eject(0, slots2[1], one, hs.EV_CONSECUTIVE_5XX, 4, 0) == hs.R_OVERFLOW


def test_enforcing_percentage_zero_detects_without_ejecting():
    t, (a, b), cfg = table_with(2, max_ejection_percent=100)  # gateway enforcing: 0 by default
    r = t.eject(0, a, cfg, hs.EV_CONSECUTIVE_GATEWAY_FAILURE, 2, 0)
    assert r == 0 and t.host(0, a)["flags"] == 0


def test_publish_merges_updates_within_the_window():
    t, (a, b), cfg = table_with(2, max_ejection_percent=100)
    window = 1 * S
    t.eject(0, a, cfg, hs.EV_CONSECUTIVE_5XX, 2, 10 * S)
    assert t.publish(0, 10 * S, window)  # first update: at once
    assert t.host(0, a)["published"] == hs.FAILED_OUTLIER_CHECK
    t.eject(0, b, cfg, hs.EV_CONSECUTIVE_5XX, 2, 10 * S + 400 * MS)
    assert not t.publish(0, 10 * S + 400 * MS, window)  # within the window: merged
    assert t.host(0, b)["published"] == 0
    assert not t.publish_due(0, 11 * S)
    assert t.publish_due(0, 11 * S + 400 * MS)
    assert t.host(0, b)["published"] == hs.FAILED_OUTLIER_CHECK


def _model(**kw):
    from fastproxy.config import model

    m = model.Cluster(name="c")
    for k, v in kw.items():
        setattr(m, k, v)
    return m


def test_success_rate_ejects_the_outlier():
    od = OutlierDetection(success_rate_minimum_hosts=5, success_rate_request_volume=10,
                          max_ejection_percent=50, interval_ms=1000)
    t, slots, cfg = table_with(5, **vars(od))
    c = health.ClusterHealth(_model(outlier_detection=od), 0, None)
    counted = []
    det = health.OutlierDetector(t, c, lambda n, d: counted.append(n), random.Random(1))
    for i, s in enumerate(slots):
        for k in range(20):
            t.report_code(0, s, cfg, 500 if (i == 4 and k < 10) else 200)
    det.tick(1 * S)
    flags = [t.host(0, s)["flags"] for s in slots]
    assert flags == [0, 0, 0, 0, hs.FAILED_OUTLIER_CHECK]
    assert "outlier_detection.ejections_enforced_success_rate" in counted
    assert "outlier_detection.ejections_detected_success_rate" in counted


def test_failure_percentage():
    od = OutlierDetection(failure_percentage_minimum_hosts=2, failure_percentage_request_volume=5,
                          failure_percentage_threshold=50, enforcing_failure_percentage=100,
                          max_ejection_percent=50)
    t, (a, b), cfg = table_with(2, **vars(od))
    c = health.ClusterHealth(_model(outlier_detection=od), 0, None)
    det = health.OutlierDetector(t, c, lambda n, d: None)
    for _ in range(6):
        t.report_code(0, a, cfg, 200)
        t.report_code(0, b, cfg, 404 if _ % 2 else 500)
    det.tick(1 * S)
    assert t.host(0, b)["flags"] == hs.FAILED_OUTLIER_CHECK
    assert t.host(0, a)["flags"] == 0


class _Owner:
    def __init__(self, table, traffic=True):
        self.table = table
        self.rng = random.Random(3)
        self.initialized = True
        self.counts = []
        self.traffic = traffic

    def count(self, c, name, delta=1):
        self.counts.append(name)

    def now(self):
        return 0

    def first_check_done(self):
        pass

    def refresh_healthy_gauge(self, c):
        pass

    def has_traffic(self, c):
        return self.traffic


def _session(**hc):
    t = hs.SharedHostTable.private([("c", 16, None)])
    slot = t.find(0, "10.0.0.1:80", True, hs.FAILED_ACTIVE_HC)
    check = HealthCheck(kind="http", timeout_ms=100, interval_ms=1000, unhealthy_threshold=2,
                        healthy_threshold=3, **hc)
    c = health.ClusterHealth(_model(health_checks=[check]), 0, None)
    owner = _Owner(t)
    return health.HealthCheckSession(owner, c, slot, "10.0.0.1:80"), t, slot, owner


def test_health_check_thresholds():
    s, t, slot, owner = _session()
    flags = lambda: t.host(0, slot)["flags"]  # noqa: E731
    assert s.apply(health.OK) == (True, health.CHANGED)  # first check: healthy at once
    assert flags() == 0
    assert s.apply(health.NETWORK_FAILURE) == (False, health.CHANGE_PENDING)
    assert s.apply(health.OK)[1] == health.UNCHANGED
    assert s.apply(health.NETWORK_FAILURE)[1] == health.CHANGE_PENDING
    assert s.apply(health.NETWORK_FAILURE)[1] == health.CHANGED  # unhealthy_threshold 2
    assert flags() == hs.FAILED_ACTIVE_HC
    assert [s.apply(health.OK)[1] for _ in range(3)] == [
        health.CHANGE_PENDING, health.CHANGE_PENDING, health.CHANGED]  # healthy_threshold 3
    assert s.apply(health.ACTIVE_FAILURE)[1] == health.CHANGED  # a bad status: at once
    assert owner.counts.count("health_check.network_failure") == 3


def test_health_check_intervals():
    s, t, slot, owner = _session(unhealthy_interval_ms=3000, unhealthy_edge_interval_ms=500,
                                 healthy_edge_interval_ms=700, no_traffic_interval_ms=60000)
    assert s.interval_ms(True, health.UNCHANGED) == 1000
    assert s.interval_ms(True, health.CHANGE_PENDING) == 700
    assert s.interval_ms(False, health.CHANGED) == 3000
    assert s.interval_ms(False, health.CHANGE_PENDING) == 500
    owner.traffic = False
    assert s.interval_ms(True, health.UNCHANGED) == 60000
    s.c.hc.interval_jitter_ms = 100
    owner.traffic = True
    assert all(1000 <= s.interval_ms(True, health.UNCHANGED) < 1100 for _ in range(20))


def test_http_request_bytes():
    from fastproxy.config import model

    s, *_ = _session(path="/hc", request_headers=[model.HeaderValueOption("x-a", "1")],
                     request_headers_to_remove=["user-agent"])
    assert s._http_request() == b"GET /hc HTTP/1.1\r\nhost: c\r\nx-a: 1\r\n\r\n"
