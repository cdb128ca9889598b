"""The process model: several workers, worker restarts, shutdown by signal and by the admin,
validate mode, refusing unsupported configuration at start-up, and an IPv6 listener."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from helpers import (
    FastproxyProcess, Origin, build_request, free_port, is_listening, make_bootstrap,
    parse_response, raw_request,
)
from helpers.fastproxy_process import REPO_ROOT
from integration_util import Client, pid_alive, simple_proxy_config, start_proxy, wait_worker_pids


def _get_ok(port, path="/p", host="127.0.0.1"):
    raw = raw_request(port, build_request("GET", path, [("x-origin-body", "ok")]), host=host)
    status, _, body = parse_response(raw)
    return status == 200 and body == b"ok"


def _wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- two workers


@pytest.fixture(scope="module")
def two_workers():
    with Origin() as origin:
        fp = start_proxy(simple_proxy_config({"backend": [("127.0.0.1", origin.port)]}), 2)
        try:
            yield fp, origin
        finally:
            fp.stop()


def test_two_workers_serve_and_stats_are_summed(two_workers):
    fp, origin = two_workers
    pids = wait_worker_pids(fp.pid, 2)
    assert len(pids) == 2
    n = 60
    for i in range(n):  # one connection per request: the kernel spreads them over both workers
        assert _get_ok(fp.port, f"/w/{i}")
    # each worker has its own upstream pool; sequential requests reuse one connection per
    # worker, so two upstream connections mean both workers served requests
    assert origin.connections_total == 2, origin.connections_total
    stats = fp.stats()
    assert stats["http.ingress_http.downstream_rq_total"] == n
    assert stats["http.ingress_http.downstream_cx_total"] == n
    assert stats["cluster.backend.upstream_rq_total"] == n
    assert stats["cluster.backend.upstream_rq_2xx"] == n
    assert stats["server.concurrency"] == 2
    status, body = fp.admin_get("/stats?format=json")
    assert status == 200
    as_json = {s["name"]: s.get("value") for s in json.loads(body)["stats"] if "name" in s}
    assert as_json["http.ingress_http.downstream_rq_total"] == n
    assert as_json["cluster.backend.upstream_rq_total"] == n


def test_server_info(two_workers):
    fp, _ = two_workers
    status, body = fp.admin_get("/server_info")
    assert status == 200
    info = json.loads(body)
    assert info["state"] == "LIVE"
    assert info["command_line_options"]["concurrency"] == 2


def test_killed_worker_is_restarted(two_workers):
    fp, origin = two_workers
    pids = wait_worker_pids(fp.pid, 2)
    before = fp.stats()
    victim = pids[0]
    os.kill(victim, signal.SIGKILL)
    # (a connection that lands in the dying worker's accept queue before it is gone is lost:
    # that is the kernel's doing, so wait for the process to be gone first)
    _wait(lambda: not pid_alive(victim), 5, "the killed worker to be gone")
    # the surviving worker keeps serving while the other one comes back
    for i in range(10):
        assert _get_ok(fp.port, f"/during/{i}")
    _wait(lambda: fp.stats("server.worker_restarts")["server.worker_restarts"]
          == before["server.worker_restarts"] + 1, 10, "server.worker_restarts to increment")
    new_pids = wait_worker_pids(fp.pid, 2, exclude=(victim,))
    assert victim not in new_pids and len(new_pids) == 2
    _wait(lambda: fp.admin_get("/ready")[0] == 200, 10, "/ready to answer 200 again")
    for i in range(20):
        assert _get_ok(fp.port, f"/after/{i}")
    after = fp.stats()
    # counters of the restarted worker's slot keep growing from where they were
    assert (after["http.ingress_http.downstream_rq_total"]
            == before["http.ingress_http.downstream_rq_total"] + 30)
    assert after["server.live"] == 1


# --------------------------------------------------------------------------- shutdown


def _origin_proxy(origin, concurrency=2):
    return FastproxyProcess(simple_proxy_config({"backend": [("127.0.0.1", origin.port)]}),
                            concurrency).start()


def test_sigterm_drains_and_exits_zero(origin):
    fp = _origin_proxy(origin)
    try:
        workers = wait_worker_pids(fp.pid, 2)
        idle = Client(fp.port)  # an idle keep-alive client
        assert parse_response(idle.request(build_request("GET", "/x", [("x-origin-body", "ok")])))[2] == b"ok"
        start = time.monotonic()
        fp.proc.send_signal(signal.SIGTERM)
        rc = fp.proc.wait(10)
        elapsed = time.monotonic() - start
        idle.close()
        assert rc == 0, fp.logs()[-2000:]
        # drain time is 1 s (plus a 1 s kill grace)
        assert elapsed < 3.5, elapsed
        _wait(lambda: not any(pid_alive(p) for p in workers), 3, "workers to exit")
        assert not is_listening(fp.port)
    finally:
        fp.stop()


def test_sigterm_lets_an_in_flight_request_finish(origin):
    fp = _origin_proxy(origin, 1)
    try:
        s = socket.create_connection(("127.0.0.1", fp.port), timeout=5)
        s.sendall(build_request("GET", "/slow", [("x-origin-delay-ms", "500"),
                                                 ("x-origin-body", "finished")]))
        origin.wait_for_requests(1)
        fp.proc.send_signal(signal.SIGTERM)
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        s.close()
        status, _, body = parse_response(data)
        assert (status, body) == (200, b"finished")
        assert fp.proc.wait(10) == 0
    finally:
        fp.stop()


def test_quitquitquit_exits(origin):
    fp = _origin_proxy(origin)
    try:
        workers = wait_worker_pids(fp.pid, 2)
        status, body = fp.admin_request("POST", "/quitquitquit")
        assert status == 200
        rc = fp.proc.wait(10)
        assert rc == 0
        _wait(lambda: not any(pid_alive(p) for p in workers), 3, "workers to exit")
    finally:
        fp.stop()


# --------------------------------------------------------------------------- configuration


def _run_fastproxy(args, timeout=30):
    return subprocess.run([sys.executable, "-m", "fastproxy", *args], cwd=REPO_ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def _write(cfg: dict) -> str:
    fd, path = tempfile.mkstemp(suffix=".yaml", prefix="bootstrap-")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


UNSUPPORTED_PATH = ("static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
                    ".access_log[0].filter")


def _with_unsupported_field(cfg):
    # an access log filter: access logs are implemented, their filters are not
    tc = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    tc["access_log"] = [{"name": "envoy.access_loggers.stdout",
                         "filter": {"status_code_filter": {"comparison": {
                             "op": "GE", "value": {"default_value": 400, "runtime_key": "k"}}}},
                         "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"}}]
    return cfg


def test_validate_mode_good_config():
    path = _write(make_bootstrap(free_port(), free_port(), {"c": [("127.0.0.1", 9)]}))
    try:
        r = _run_fastproxy(["--mode", "validate", "-c", path])
    finally:
        os.unlink(path)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


@pytest.mark.parametrize("kind", ["unsupported", "unknown_cluster", "bad_field"])
def test_validate_mode_bad_config_names_the_path(kind):
    cfg = make_bootstrap(free_port(), free_port(), {"c": [("127.0.0.1", 9)]})
    if kind == "unsupported":
        _with_unsupported_field(cfg)
        want = UNSUPPORTED_PATH
    elif kind == "unknown_cluster":
        vh = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]["route_config"]["virtual_hosts"][0]
        vh["routes"][0]["route"]["cluster"] = "nope"
        want = "routes[0].route.cluster"
    else:
        cfg["static_resources"]["clusters"][0]["bogus_field"] = 1
        want = "bogus_field"
    path = _write(cfg)
    try:
        r = _run_fastproxy(["--mode", "validate", "-c", path])
    finally:
        os.unlink(path)
    assert r.returncode == 1
    assert want in r.stdout + r.stderr, r.stdout + r.stderr


def test_unsupported_field_refused_at_start_up():
    port = free_port()
    path = _write(_with_unsupported_field(make_bootstrap(port, free_port(), {"c": [("127.0.0.1", 9)]})))
    try:
        start = time.monotonic()
        r = _run_fastproxy(["-c", path, "--concurrency", "1"], timeout=30)
        elapsed = time.monotonic() - start
    finally:
        os.unlink(path)
    assert r.returncode == 1
    assert UNSUPPORTED_PATH in r.stdout + r.stderr, r.stdout + r.stderr
    assert elapsed < 20
    assert not is_listening(port)


# --------------------------------------------------------------------------- IPv6


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_ipv6_listener_and_upstream():
    with Origin(host="::1") as origin6:
        cfg = make_bootstrap(_free_port6(), free_port(),
                             {"v6": [("::1", origin6.port)]}, listener_address="::1",
                             hcm_extra={"use_remote_address": True})
        fp = FastproxyProcess(cfg, 1).start()
        try:
            raw = raw_request(fp.port, build_request("GET", "/six"), host="::1")
            status, _, body = parse_response(raw)
            assert status == 200, raw[:300]
            echo = json.loads(body)
            assert echo["path"] == "/six"
            assert dict((k.lower(), v) for k, v in echo["headers"])["x-forwarded-for"] == "::1"
            # the listener is on ::1 only
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", fp.port), timeout=1).close()
            stats = fp.stats()
            assert stats[f"listener.[__1]_{fp.port}.downstream_cx_total"] >= 1, \
                [k for k in stats if k.startswith("listener.")]
        finally:
            fp.stop()


def _free_port6() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]
