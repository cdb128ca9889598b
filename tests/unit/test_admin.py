"""The admin server over real sockets, with a stand-in stats/state provider.

Requests go through the cffi picohttpparser binding (fastproxy._picohttp); build it first with
``python fastproxy/_cffi_build.py``.
"""
import asyncio
import json
import socket
import threading
import urllib.error
import urllib.request

import pytest

pytest.importorskip("fastproxy._picohttp", reason="cffi module not built: python fastproxy/_cffi_build.py")

from fastproxy.admin.server import AdminServer, extract_tags, render_prometheus  # noqa: E402

STATS = [
    # name, kind, value, used
    ("cluster.svc.upstream_rq_total", "counter", 5, True),
    ("cluster.svc.upstream_rq_200", "counter", 3, True),
    ("cluster.svc.upstream_rq_2xx", "counter", 3, True),
    ("cluster.svc.upstream_cx_active", "gauge", 0, False),
    ("http.ingress_http.downstream_rq_total", "counter", 7, True),
    ("http.ingress_http.downstream_rq_2xx", "counter", 7, True),
    ("http.ingress_http.downstream_rq_5xx", "counter", 0, False),
    ("listener.127.0.0.1_10000.downstream_cx_total", "counter", 4, True),
    ("listener.127.0.0.1_10000.http.ingress_http.downstream_rq_2xx", "counter", 2, True),
    ("listener.[__1]_10001.downstream_cx_total", "counter", 1, True),
    ("listener.admin.downstream_cx_total", "counter", 2, True),
    ("server.live", "gauge", 1, True),
    ("server.worker_restarts", "counter", 0, False),
]


class FakeProvider:
    def __init__(self):
        self.state = "LIVE"
        self.shutdowns = 0

    def stats(self):
        return list(STATS)

    def server_state(self):
        return self.state

    def server_info(self):
        return {"version": "fastproxy/test", "state": self.state,
                "uptime_current_epoch": "3s", "uptime_all_epochs": "3s",
                "command_line_options": {"concurrency": 2, "mode": "Serve"},
                "node": {"id": "n1", "cluster": "c1"}}

    def request_shutdown(self):
        self.shutdowns += 1


@pytest.fixture
def admin():
    uvloop = pytest.importorskip("uvloop")
    provider = FakeProvider()
    loop = uvloop.new_event_loop()
    server = AdminServer(provider, "127.0.0.1", 0)
    started = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(5)
    yield provider, "http://127.0.0.1:%d" % server.port, server.port

    async def stop():
        server.close()
        await server.wait_closed()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def get(url, method="GET"):
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def raw(port, data: bytes, until_close=True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if not until_close:
                break
        return b"".join(chunks)


def test_ready_live(admin):
    _, base, _ = admin
    status, headers, body = get(base + "/ready")
    assert (status, body) == (200, "LIVE\n")
    assert headers["content-type"] == "text/plain; charset=UTF-8"
    assert headers["cache-control"] == "no-cache, max-age=0"


@pytest.mark.parametrize("state", ["PRE_INITIALIZING", "DRAINING"])
def test_ready_not_live(admin, state):
    provider, base, _ = admin
    provider.state = state
    assert get(base + "/ready")[::2] == (503, state + "\n")


def test_server_info(admin):
    _, base, _ = admin
    status, headers, body = get(base + "/server_info")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert body.startswith('{\n "version": "fastproxy/test",\n "state": "LIVE",\n')
    assert body.endswith("}\n")
    info = json.loads(body)
    assert info["command_line_options"]["concurrency"] == 2
    assert info["node"]["id"] == "n1"


def test_stats_text_sorted(admin):
    _, base, _ = admin
    status, _, body = get(base + "/stats")
    assert status == 200
    expected = "".join("%s: %d\n" % (n, v) for n, _k, v, _u in sorted(STATS))
    assert body == expected
    assert body.splitlines()[0] == "cluster.svc.upstream_cx_active: 0"


def test_stats_filter_usedonly_type(admin):
    _, base, _ = admin
    assert get(base + "/stats?filter=^cluster%5C.svc%5C.upstream_rq_2")[2] == (
        "cluster.svc.upstream_rq_200: 3\ncluster.svc.upstream_rq_2xx: 3\n")
    body = get(base + "/stats?usedonly&filter=http")[2]
    assert body == ("http.ingress_http.downstream_rq_2xx: 7\n"
                    "http.ingress_http.downstream_rq_total: 7\n"
                    "listener.127.0.0.1_10000.http.ingress_http.downstream_rq_2xx: 2\n")
    assert get(base + "/stats?type=Gauges")[2] == (
        "cluster.svc.upstream_cx_active: 0\nserver.live: 1\n")
    assert get(base + "/stats?filter=nomatch")[::2] == (200, "")
    assert get(base + "/stats?filter=(")[0] == 400
    assert get(base + "/stats?format=xml")[0] == 400


def test_stats_json(admin):
    _, base, _ = admin
    status, headers, body = get(base + "/stats?format=json&filter=server")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert body == ('{"stats":[{"name":"server.live","value":1},'
                    '{"name":"server.worker_restarts","value":0}]}')
    assert get(base + "/stats?format=json&filter=nomatch")[2] == '{"stats":[]}'


PROMETHEUS = """\
# TYPE envoy_cluster_upstream_rq counter
envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="svc"} 3
# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{envoy_cluster_name="svc"} 5
# TYPE envoy_cluster_upstream_rq_xx counter
envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="svc"} 3
# TYPE envoy_http_downstream_rq_total counter
envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress_http"} 7
# TYPE envoy_http_downstream_rq_xx counter
envoy_http_downstream_rq_xx{envoy_response_code_class="2",envoy_http_conn_manager_prefix="ingress_http"} 7
envoy_http_downstream_rq_xx{envoy_response_code_class="5",envoy_http_conn_manager_prefix="ingress_http"} 0
# TYPE envoy_listener_admin_downstream_cx_total counter
envoy_listener_admin_downstream_cx_total{} 2
# TYPE envoy_listener_downstream_cx_total counter
envoy_listener_downstream_cx_total{envoy_listener_address="127.0.0.1_10000"} 4
envoy_listener_downstream_cx_total{envoy_listener_address="[__1]_10001"} 1
# TYPE envoy_listener_http_downstream_rq_xx counter
envoy_listener_http_downstream_rq_xx{envoy_response_code_class="2",envoy_http_conn_manager_prefix="ingress_http",envoy_listener_address="127.0.0.1_10000"} 2
# TYPE envoy_server_worker_restarts counter
envoy_server_worker_restarts{} 0
# TYPE envoy_cluster_upstream_cx_active gauge
envoy_cluster_upstream_cx_active{envoy_cluster_name="svc"} 0
# TYPE envoy_server_live gauge
envoy_server_live{} 1
"""


def test_stats_prometheus(admin):
    _, base, _ = admin
    status, headers, body = get(base + "/stats/prometheus")
    assert status == 200
    assert headers["content-type"] == "text/plain; charset=UTF-8"
    assert body == PROMETHEUS
    assert get(base + "/stats?format=prometheus")[2] == PROMETHEUS
    assert get(base + "/stats/prometheus?filter=nomatch")[2] == ""


def test_prometheus_family_order_and_escaping():
    # Envoy orders families by the tag-extracted name: "cluster." sorts before "cluster_manager.".
    stats = [("cluster_manager.cluster_added", "counter", 1),
             ("cluster.a.upstream_cx_total", "counter", 2),
             ('cluster.we"ird.upstream_cx_total', "counter", 3)]
    assert render_prometheus(sorted(stats)) == (
        "# TYPE envoy_cluster_upstream_cx_total counter\n"
        'envoy_cluster_upstream_cx_total{envoy_cluster_name="a"} 2\n'
        'envoy_cluster_upstream_cx_total{envoy_cluster_name="we\\"ird"} 3\n'
        "# TYPE envoy_cluster_manager_cluster_added counter\n"
        "envoy_cluster_manager_cluster_added{} 1\n")


def test_extract_tags():
    assert extract_tags("cluster.svc.upstream_rq_503") == (
        "cluster.upstream_rq", [("envoy_response_code", "503"), ("envoy_cluster_name", "svc")])
    assert extract_tags("listener.admin.downstream_cx_total") == (
        "listener.admin.downstream_cx_total", [])
    assert extract_tags("server.live") == ("server.live", [])


def test_quitquitquit(admin):
    provider, base, _ = admin
    assert get(base + "/quitquitquit", method="POST")[::2] == (200, "OK\n")
    for _ in range(100):
        if provider.shutdowns:
            break
        threading.Event().wait(0.01)
    assert provider.shutdowns == 1


def test_quitquitquit_requires_post(admin):
    provider, base, _ = admin
    assert get(base + "/quitquitquit")[::2] == (405, "Method GET not allowed, POST required.")
    assert provider.shutdowns == 0


def test_home_and_404(admin):
    _, base, _ = admin
    status, _, body = get(base + "/")
    assert status == 200
    assert body.startswith("admin commands are:\n  /: Admin home page\n")
    assert "  /quitquitquit (POST): exit the server\n" in body
    assert "  /stats/prometheus: print server stats in prometheus format\n" in body
    status, _, body = get(base + "/nope")
    assert status == 404
    assert body.startswith("invalid path. admin commands are:\n  /: Admin home page\n")


def test_keep_alive_pipelining_and_bodies(admin):
    _, _, port = admin
    requests = (
        b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /ready HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /ready HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
        b"GET /stats?filter=server.live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    data = raw(port, requests)
    responses = data.split(b"HTTP/1.1 ")[1:]
    assert len(responses) == 4
    for r in responses[:3]:
        assert r.startswith(b"200 OK\r\n")
        assert r.endswith(b"\r\n\r\nLIVE\n")
    assert b"connection: close\r\n" in responses[3]
    assert responses[3].endswith(b"\r\n\r\nserver.live: 1\n")


def test_split_head_and_http10(admin):
    _, _, port = admin
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /rea")
        threading.Event().wait(0.05)
        sock.sendall(b"dy HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"content-length: 5\r\n" in data
    assert data.endswith(b"LIVE\n")


def test_malformed_request(admin):
    _, _, port = admin
    data = raw(port, b"GET / HTTP/1.1\r\nbad header line\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
