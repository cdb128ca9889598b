"""Active health checking and outlier detection through real sockets, with origins that answer
5xx, die, hang or stop answering health checks."""
from __future__ import annotations

import http.client
import time

import pytest

from helpers import FastproxyProcess, free_port, make_bootstrap
from helpers.faulty_origin import FaultyOrigin


def get(port: int, path: str = "/") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def served(port: int, n: int, gap: float = 0.0) -> list[str]:
    out = []
    for _ in range(n):
        status, body = get(port)
        out.append(body if status == 200 else "%s%d" % (body[:1], status))
        if gap:
            time.sleep(gap)
    return out


def wait_until(pred, timeout: float = 5.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


@pytest.fixture
def origins():
    a, b = FaultyOrigin("A").start(), FaultyOrigin("B").start()
    yield a, b
    a.stop()
    b.stop()


def config(a, b, **cluster):
    return make_bootstrap(free_port(), free_port(), {"c": [a.address, b.address]},
                          cluster_extra={"c": cluster})


OUTLIER = {"consecutive_5xx": 3, "interval": "0.2s", "base_ejection_time": "1s",
           "max_ejection_percent": 50}
HTTP_HC = {"timeout": "0.5s", "interval": "0.2s", "no_traffic_interval": "0.2s",
           "unhealthy_threshold": 2, "healthy_threshold": 2,
           "http_health_check": {"path": "/healthz"}}


@pytest.mark.parametrize("concurrency", [1, 2])
def test_consecutive_5xx_ejects_then_returns(origins, concurrency):
    a, b = origins
    b.status = 503
    with FastproxyProcess(config(a, b, outlier_detection=OUTLIER), concurrency) as fp:
        seq = served(fp.port, 12)
        if concurrency == 1:
            assert seq.count("B503") == 3, seq  # the third consecutive 5xx ejects B
        else:
            # the other worker applies the ejection at its next poll (every 100 ms): wait for
            # it, well inside the 1 s ejection
            assert 3 <= seq.count("B503") <= 9, seq
            deadline = time.monotonic() + 0.8
            seq = served(fp.port, 6)
            while seq[-6:] != ["A"] * 6 and time.monotonic() < deadline:
                time.sleep(0.05)
                seq = served(fp.port, 6)
        assert seq[-6:] == ["A"] * 6, seq
        stats = fp.stats("outlier_detection")
        assert stats["cluster.c.outlier_detection.ejections_active"] == 1
        assert stats["cluster.c.outlier_detection.ejections_enforced_consecutive_5xx"] == 1
        assert stats["cluster.c.outlier_detection.ejections_detected_consecutive_5xx"] == 1
        assert stats["cluster.c.outlier_detection.ejections_enforced_total"] == 1
        assert fp.stats("membership_healthy")["cluster.c.membership_healthy"] >= 1
        # base_ejection_time (1 s) later, at an interval tick, B is back.
        b.status = 200
        assert wait_until(lambda: "B" in served(fp.port, 4), timeout=3.0)
        assert wait_until(lambda: fp.stats("outlier_detection")[
            "cluster.c.outlier_detection.ejections_active"] == 0, timeout=2.0)


def test_connect_failures_eject_as_gateway_errors(origins):
    a, b = origins
    b.down()
    od = dict(OUTLIER, consecutive_5xx=100, consecutive_gateway_failure=2,
              enforcing_consecutive_gateway_failure=100)
    with FastproxyProcess(config(a, b, outlier_detection=od)) as fp:
        seq = served(fp.port, 10)
        assert seq.count("B503") <= 2 and seq[-6:] == ["A"] * 6, seq
        stats = fp.stats("outlier_detection")
        assert stats["cluster.c.outlier_detection.ejections_enforced_consecutive_gateway_failure"] == 1


def test_split_local_origin_failures(origins):
    a, b = origins
    b.down()
    od = dict(OUTLIER, split_external_local_origin_errors=True, consecutive_local_origin_failure=2)
    with FastproxyProcess(config(a, b, outlier_detection=od)) as fp:
        seq = served(fp.port, 10)
        assert seq[-6:] == ["A"] * 6, seq
        stats = fp.stats("outlier_detection")
        assert stats["cluster.c.outlier_detection.ejections_enforced_consecutive_local_origin_failure"] == 1
        assert stats["cluster.c.outlier_detection.ejections_enforced_consecutive_5xx"] == 0


def test_max_ejection_percent_overflow(origins):
    a, b = origins
    a.status = b.status = 500
    od = dict(OUTLIER, max_ejection_percent=10)
    with FastproxyProcess(config(a, b, outlier_detection=od)) as fp:
        served(fp.port, 8)
        stats = fp.stats("outlier_detection")
        assert stats["cluster.c.outlier_detection.ejections_active"] == 0
        assert stats["cluster.c.outlier_detection.ejections_overflow"] >= 2
        assert stats["cluster.c.outlier_detection.ejections_enforced_total"] == 0


@pytest.mark.parametrize("concurrency", [1, 2])
def test_http_health_check(origins, concurrency):
    a, b = origins
    with FastproxyProcess(config(a, b, health_checks=[HTTP_HC]), concurrency) as fp:
        assert set(served(fp.port, 4)) == {"A", "B"}
        t0 = time.monotonic()
        n0 = len(b.health_checks)
        b.hc_status = 503  # a failing status: unhealthy at once
        assert wait_until(lambda: fp.stats("health_check")["cluster.c.health_check.healthy"] == 1)
        time.sleep(0.15)  # the workers poll every 100 ms
        assert served(fp.port, 6) == ["A"] * 6
        stats = fp.stats("health_check")
        assert stats["cluster.c.health_check.failure"] >= 1
        assert stats["cluster.c.health_check.network_failure"] == 0
        # Checks run once per host, not once per worker: about one per interval.
        elapsed = time.monotonic() - t0
        assert len(b.health_checks) - n0 <= elapsed / 0.2 + 2
        b.hc_status = 200  # healthy again after healthy_threshold (2) successes
        assert wait_until(lambda: "B" in served(fp.port, 2), timeout=3.0)
        stats = fp.stats("health_check")
        assert stats["cluster.c.health_check.healthy"] == 2
        assert stats["cluster.c.health_check.attempt"] >= stats["cluster.c.health_check.success"]


def test_http_health_check_network_failures_need_threshold(origins):
    a, b = origins
    hc = dict(HTTP_HC, unhealthy_threshold=3, timeout="0.2s")
    with FastproxyProcess(config(a, b, health_checks=[hc])) as fp:
        served(fp.port, 2)
        b.mode = "hang"  # health checks time out: network failures
        t0 = time.monotonic()
        assert wait_until(lambda: fp.stats("health_check")["cluster.c.health_check.healthy"] == 1,
                          timeout=5.0)
        # three timeouts (0.2 s each) with 0.2 s intervals in between
        assert time.monotonic() - t0 >= 0.9
        stats = fp.stats("health_check")
        assert stats["cluster.c.health_check.network_failure"] >= 3
        b.mode = "normal"
        time.sleep(0.15)
        assert set(served(fp.port, 4)) == {"A"}


def test_tcp_health_check(origins):
    a, b = origins
    hc = {"timeout": "0.3s", "interval": "0.2s", "no_traffic_interval": "0.2s",
          "unhealthy_threshold": 2, "healthy_threshold": 1,
          "tcp_health_check": {"send": {"text": b"ping".hex()}, "receive": [{"text": b"pong".hex()}]}}
    with FastproxyProcess(config(a, b, health_checks=[hc])) as fp:
        assert set(served(fp.port, 4)) == {"A", "B"}
        assert len(b.tcp_checks) >= 1
        b.tcp_answer = False
        assert wait_until(lambda: fp.stats("health_check")["cluster.c.health_check.healthy"] == 1)
        time.sleep(0.15)
        assert served(fp.port, 4) == ["A"] * 4
        b.tcp_answer = True
        assert wait_until(lambda: "B" in served(fp.port, 2), timeout=3.0)


def test_health_check_request_as_envoy_sends_it(origins):
    a, b = origins
    hc = dict(HTTP_HC, http_health_check={
        "path": "/healthz/x", "host": "svc.local",
        "request_headers_to_add": [{"header": {"key": "x-probe", "value": "1"}}]})
    with FastproxyProcess(config(a, b, health_checks=[hc])) as fp:
        assert wait_until(lambda: len(a.hc_heads) >= 1)
        assert a.hc_heads[0] == (b"GET /healthz/x HTTP/1.1\r\nhost: svc.local\r\n"
                                 b"user-agent: Envoy/HC\r\nx-probe: 1")
        assert fp.stats("health_check")["cluster.c.health_check.success"] >= 2


def test_all_hosts_unhealthy_panics_to_all(origins):
    a, b = origins
    a.hc_status = b.hc_status = 500
    with FastproxyProcess(config(a, b, health_checks=[HTTP_HC])) as fp:
        # Envoy's panic threshold: with no healthy host, the balancer picks among all.
        assert set(served(fp.port, 4)) == {"A", "B"}
        assert fp.stats("health_check")["cluster.c.health_check.healthy"] == 0
