"""Ejection and recovery timelines compared with real Envoy: the same config and the same faulty
origins, one request every 100 ms; which host served each request over time must match within
timing tolerances (the outlier interval, and the workers' 100 ms poll)."""
from __future__ import annotations

import http.client
import time

import pytest

from helpers import EnvoyProcess, FastproxyProcess, find_envoy, free_port, make_bootstrap
from helpers.faulty_origin import FaultyOrigin

pytestmark = pytest.mark.parity

STEP = 0.1


def _get(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        conn.request("GET", "/")
        r = conn.getresponse()
        body = r.read().decode()
        return body if r.status == 200 else "%s%d" % (body[:1], r.status)
    finally:
        conn.close()


def timeline(proxy_cls, cluster: dict, steps: int, actions=None):
    """Run `steps` requests STEP apart; `actions` {step: fn(a, b)} change the origins.
    Returns [(seconds since the first request, served-by)] and the proxy's final stats."""
    envoy_bin = find_envoy() if proxy_cls is EnvoyProcess else None
    with FaultyOrigin("A") as a, FaultyOrigin("B") as b:
        if actions and "start" in actions:
            actions["start"](a, b)
        cfg = make_bootstrap(free_port(), free_port(), {"c": [a.address, b.address]},
                             cluster_extra={"c": cluster})
        kw = {"envoy_bin": envoy_bin} if envoy_bin else {}
        with proxy_cls(cfg, **kw) as proxy:
            t0 = time.monotonic()
            out = []
            for i in range(steps):
                if actions and i in actions:
                    actions[i](a, b)
                target = t0 + i * STEP
                time.sleep(max(0.0, target - time.monotonic()))
                out.append((round(time.monotonic() - t0, 2), _get(proxy.port)))
            return out, proxy.stats()


def runs(tl, host: str):
    """[(start time, end time, count)] of the stretches in which `host` kept being picked."""
    out, cur = [], None
    for t, who in tl:
        if who.startswith(host):
            if cur is None:
                cur = [t, t, 0]
            cur[1] = t
            cur[2] += 1
        elif cur is not None and t - cur[1] > 0.35:  # round robin: B every other request
            out.append(tuple(cur))
            cur = None
    if cur is not None:
        out.append(tuple(cur))
    return out


def settled(runs_, tl, margin: float = 0.6):
    """The runs that start early enough for the other proxy's matching run to be seen too."""
    return [r for r in runs_ if r[0] <= tl[-1][0] - margin]


def both(cluster, steps, actions=None):
    envoy, envoy_stats = timeline(EnvoyProcess, cluster, steps, actions)
    fp, fp_stats = timeline(FastproxyProcess, cluster, steps, actions)
    return envoy, fp, envoy_stats, fp_stats


def test_consecutive_5xx_ejection_and_recovery_timeline():
    cluster = {"outlier_detection": {"consecutive_5xx": 3, "interval": "0.25s",
                                     "base_ejection_time": "1s", "max_ejection_percent": 50}}
    envoy, fp, es, fs = both(cluster, 45, {"start": lambda a, b: setattr(b, "status", 503)})
    e_runs, f_runs = settled(runs(envoy, "B"), envoy), settled(runs(fp, "B"), fp)
    msg = "envoy %s\nfastproxy %s" % (envoy, fp)
    assert len(e_runs) == len(f_runs) >= 2, msg
    # the first ejection comes after exactly consecutive_5xx errors
    assert e_runs[0][2] == f_runs[0][2] == 3, msg
    for (es_, ee, en), (fs_, fe, fn) in zip(e_runs, f_runs):
        assert abs(es_ - fs_) <= 0.45, msg  # the interval (0.25 s) plus polling
        assert abs(en - fn) <= 2, msg  # merged updates keep a re-ejected host up to a window
    name = "cluster.c.outlier_detection."
    for stat in ("ejections_enforced_consecutive_5xx", "ejections_detected_consecutive_5xx",
                 "ejections_enforced_total", "ejections_total", "ejections_active"):
        assert abs(fs[name + stat] - es[name + stat]) <= 1, (stat, es[name + stat], fs[name + stat])


def test_http_health_check_timeline():
    hc = {"timeout": "0.5s", "interval": "0.2s", "no_traffic_interval": "0.2s",
          "unhealthy_threshold": 2, "healthy_threshold": 2,
          "http_health_check": {"path": "/healthz"}}
    actions = {5: lambda a, b: setattr(b, "hc_status", 503),
               20: lambda a, b: setattr(b, "hc_status", 200)}
    envoy, fp, es, fs = both({"health_checks": [hc]}, 32, actions)
    e_runs, f_runs = runs(envoy, "B"), runs(fp, "B")
    msg = "envoy %s\nfastproxy %s" % (envoy, fp)
    assert len(e_runs) == len(f_runs) == 2, msg
    assert abs(e_runs[0][1] - f_runs[0][1]) <= 0.35, msg  # when B stops being picked
    assert abs(e_runs[1][0] - f_runs[1][0]) <= 0.35, msg  # when it is back
    name = "cluster.c.health_check."
    assert fs[name + "healthy"] == es[name + "healthy"] == 2
    assert fs[name + "network_failure"] == es[name + "network_failure"] == 0
    assert abs(fs[name + "failure"] - es[name + "failure"]) <= 2
