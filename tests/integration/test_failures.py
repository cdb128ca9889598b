"""Upstream failures and timeouts: connect refused, connect timeout, route timeout, an origin
dying in the middle of a response, idle_timeout, request_timeout and stream_idle_timeout."""
import contextlib
import socket
import threading
import time

import pytest

from helpers import Origin, build_request, header_value, parse_response, raw_request, route_to
from integration_util import Client, simple_proxy_config, start_proxy


def _delta(before: dict, after: dict, name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


def _read_until_close(sock: socket.socket, limit: float = 10.0):
    """Read until the peer closes; return (seconds, bytes, closed)."""
    start = time.monotonic()
    buf = b""
    sock.settimeout(limit)
    try:
        while True:
            d = sock.recv(65536)
            if not d:
                return time.monotonic() - start, buf, True
            buf += d
    except socket.timeout:
        return time.monotonic() - start, buf, False
    except ConnectionResetError:
        return time.monotonic() - start, buf, True


@contextlib.contextmanager
def _refusing_port():
    """A port bound but not listening: connecting to it is refused."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


@contextlib.contextmanager
def _blackhole_port():
    """A listening socket that never accepts, with its accept queue filled up first: further
    SYNs are dropped, so a connect attempt hangs until the connector gives up."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    port = ls.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        time.sleep(0.1)
        # check: a new connection attempt really hangs
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", port))
            hangs = False
        except socket.timeout:
            hangs = True
        finally:
            probe.close()
        assert hangs, "could not fill the accept queue of the black-hole listener"
        yield port
    finally:
        for s in fillers:
            s.close()
        ls.close()


class _RawOrigin:
    """Answers every request on a connection with fixed bytes, then closes it."""

    def __init__(self, response: bytes):
        self.response = response
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(2)
                    conn.recv(65536)
                    conn.sendall(self.response)
                except OSError:
                    pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


BAD_RESPONSES = {
    "garbage": b"THIS IS NOT HTTP\r\n\r\n",
    "cl_and_te": (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n0\r\n\r\n"),
    "body_on_204": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
}


@pytest.fixture(scope="module")
def env():
    with contextlib.ExitStack() as stack:
        origin = stack.enter_context(Origin())
        refused = stack.enter_context(_refusing_port())
        blackhole = stack.enter_context(_blackhole_port())
        clusters = {
            "backend": [("127.0.0.1", origin.port)],
            "refused": [("127.0.0.1", refused)],
            "blackhole": [("127.0.0.1", blackhole)],
        }
        for name, response in BAD_RESPONSES.items():
            clusters[name] = [("127.0.0.1", stack.enter_context(_RawOrigin(response)).port)]
        routes = [route_to(name, f"/{name}") for name in BAD_RESPONSES] + [
            route_to("refused", "/refused"),
            route_to("blackhole", "/blackhole"),
            route_to("backend", "/slow", timeout="0.5s"),
            route_to("backend", "/"),
        ]
        cfg = simple_proxy_config(
            clusters, cluster_extra={"blackhole": {"connect_timeout": "0.5s"}},
            virtual_hosts=[{"name": "f", "domains": ["*"], "routes": routes}])
        fp = start_proxy(cfg, 1)
        stack.callback(fp.stop)
        yield fp, origin


def _ok(c: Client):
    raw = c.request(build_request("GET", "/ok", [("x-origin-body", "fine")]))
    st, _, body = parse_response(raw)
    assert (st, body) == (200, b"fine"), raw[:300]


# --------------------------------------------------------------------------- connect failures


def test_connect_refused_gives_503_and_connect_fail_stat(env):
    fp, _ = env
    before = fp.stats("cluster.refused.")
    with Client(fp.port) as c:
        raw = c.request(build_request("GET", "/refused"))
        status, headers, body = parse_response(raw)
        assert status == 503
        assert body.startswith(b"upstream connect error or disconnect/reset before headers")
        # the downstream connection survives a local reply
        _ok(c)
    after = fp.stats("cluster.refused.")
    assert _delta(before, after, "cluster.refused.upstream_cx_connect_fail") == 1


def test_connect_refused_stats_like_envoy(env):
    """Envoy counts the local 503 in the cluster's upstream_rq_5xx and does not count an
    upstream request (upstream_rq_total) that never got a connection; the refused connection
    is destroyed by the remote side."""
    fp, _ = env
    before = fp.stats("cluster.refused.")
    raw_request(fp.port, build_request("GET", "/refused"))
    after = fp.stats("cluster.refused.")
    got = {k: _delta(before, after, k) for k in after}
    shown = " ".join(f"{k.rsplit('.', 1)[1]}=+{v}" for k, v in got.items() if v)
    assert got["cluster.refused.upstream_rq_5xx"] == 1, shown
    assert got["cluster.refused.upstream_rq_total"] == 0, shown
    assert got["cluster.refused.upstream_cx_destroy_remote"] == 1, shown


def test_connect_timeout_gives_503_after_connect_timeout(env):
    fp, _ = env
    before = fp.stats("cluster.blackhole.")
    start = time.monotonic()
    with Client(fp.port) as c:
        raw = c.request(build_request("GET", "/blackhole"))
        elapsed = time.monotonic() - start
        status, _, body = parse_response(raw)
        assert status == 503
        assert b"connection timeout" in body
        _ok(c)
    assert 0.4 <= elapsed <= 2.0, elapsed
    after = fp.stats("cluster.blackhole.")
    assert _delta(before, after, "cluster.blackhole.upstream_cx_connect_timeout") == 1
    assert _delta(before, after, "cluster.blackhole.upstream_cx_connect_fail") == 1


def test_connect_timeout_stats_like_envoy(env):
    """Envoy closes the timed-out connection itself: upstream_cx_destroy_local."""
    fp, _ = env
    before = fp.stats("cluster.blackhole.")
    raw_request(fp.port, build_request("GET", "/blackhole"), timeout=3)
    after = fp.stats("cluster.blackhole.")
    got = {k: _delta(before, after, k) for k in after}
    shown = " ".join(f"{k.rsplit('.', 1)[1]}=+{v}" for k, v in got.items() if v)
    assert got["cluster.blackhole.upstream_cx_destroy_local"] == 1, shown
    assert got["cluster.blackhole.upstream_rq_5xx"] == 1, shown


# --------------------------------------------------------------------------- route timeout


def test_route_timeout_gives_504_and_upstream_rq_timeout(env):
    fp, _ = env
    before = fp.stats("cluster.backend.upstream_rq_timeout")
    start = time.monotonic()
    with Client(fp.port) as c:
        raw = c.request(build_request("GET", "/slow", [("x-origin-delay-ms", "2000")]))
        elapsed = time.monotonic() - start
        status, _, body = parse_response(raw)
        assert (status, body) == (504, b"upstream request timeout")
        _ok(c)
    assert 0.45 <= elapsed <= 1.5, elapsed
    after = fp.stats("cluster.backend.upstream_rq_timeout")
    assert _delta(before, after, "cluster.backend.upstream_rq_timeout") == 1


def test_route_timeout_sets_expected_timeout_header(env):
    fp, origin = env
    origin.clear()
    raw = raw_request(fp.port, build_request("GET", "/slow-but-fine"))
    assert parse_response(raw)[0] == 200
    assert origin.last.header("x-envoy-expected-rq-timeout-ms") == "500"


# --------------------------------------------------------------------------- origin dies


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_origin_dying_mid_response_closes_client_connection(env, chunked):
    fp, _ = env
    q = "/die?body_size=100000&drop_after=50000" + ("&chunked=1" if chunked else "")
    with Client(fp.port) as c:
        c.send(build_request("GET", q))
        elapsed, data, closed = _read_until_close(c.sock, 5)
    data = c.buf + data
    assert closed, f"client connection left open after {elapsed:.1f}s ({len(data)} bytes)"
    assert data.startswith(b"HTTP/1.1 200")
    head_end = data.index(b"\r\n\r\n") + 4
    body = data[head_end:]
    if chunked:
        assert not body.endswith(b"0\r\n\r\n"), "a truncated chunked body must not be terminated"
    else:
        assert int(header_value(parse_response(data[:head_end], head_request=True)[1],
                                "content-length")) == 100000
        assert len(body) < 100000
    # and the proxy keeps serving
    with Client(fp.port) as c:
        for _ in range(3):
            _ok(c)


def test_origin_reset_before_response_gives_503(env):
    fp, _ = env
    with Client(fp.port) as c:
        raw = c.request(build_request("GET", "/reset", [("x-origin-drop", "reset")]))
        status, _, body = parse_response(raw)
        assert status == 503
        assert body.startswith(b"upstream connect error or disconnect/reset before headers")
        _ok(c)


# --------------------------------------------------------------------------- HCM timeouts


@pytest.fixture(scope="module")
def timeouts():
    with Origin() as origin:
        cfg = simple_proxy_config(
            {"backend": [("127.0.0.1", origin.port)]},
            virtual_hosts=[{"name": "t", "domains": ["*"],
                            "routes": [route_to("backend", "/", timeout="0s")]}],
            hcm_extra={"common_http_protocol_options": {"idle_timeout": "1s"},
                       "request_timeout": "1s", "stream_idle_timeout": "1s"})
        fp = start_proxy(cfg, 1)
        try:
            yield fp, origin
        finally:
            fp.stop()


def test_idle_timeout_closes_a_connection_without_requests(timeouts):
    fp, _ = timeouts
    before = fp.stats("http.ingress_http.downstream_cx_idle_timeout")
    with socket.create_connection(("127.0.0.1", fp.port)) as s:
        elapsed, data, closed = _read_until_close(s, 5)
    assert closed and data == b""
    assert 0.8 <= elapsed <= 2.5, elapsed
    after = fp.stats("http.ingress_http.downstream_cx_idle_timeout")
    assert _delta(before, after, "http.ingress_http.downstream_cx_idle_timeout") == 1


def test_idle_timeout_closes_a_connection_after_its_request(timeouts):
    fp, _ = timeouts
    before = fp.stats("http.ingress_http.downstream_cx_idle_timeout")
    with Client(fp.port) as c:
        _ok(c)
        elapsed, data, closed = _read_until_close(c.sock, 10)
    assert closed and data == b""
    # Envoy starts its drain sequence on the idle timeout (HTTP/1: close after drain_timeout)
    assert 0.8 <= elapsed <= 8.5, elapsed
    after = fp.stats("http.ingress_http.downstream_cx_idle_timeout")
    assert _delta(before, after, "http.ingress_http.downstream_cx_idle_timeout") == 1


def test_idle_timeout_does_not_cut_an_active_request(timeouts):
    fp, _ = timeouts
    with Client(fp.port, timeout=5) as c:
        raw = c.request(build_request("GET", "/", [("x-origin-delay-ms", "700"),
                                                   ("x-origin-body", "late")]))
        assert parse_response(raw)[2] == b"late"
        raw = c.request(build_request("GET", "/", [("x-origin-delay-ms", "700"),
                                                   ("x-origin-body", "late2")]))
        assert parse_response(raw)[2] == b"late2"


@pytest.mark.parametrize("partial", [
    b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabcde",
    b"GET /head HTTP/1.1\r\nHost: a\r\n",
], ids=["body", "head"])
def test_request_timeout_gives_408(timeouts, partial):
    fp, _ = timeouts
    before = fp.stats("http.ingress_http.downstream_rq_timeout")
    with socket.create_connection(("127.0.0.1", fp.port)) as s:
        s.sendall(partial)
        start = time.monotonic()
        s.settimeout(5)
        first = s.recv(65536)
        elapsed = time.monotonic() - start
        rest_time, rest, closed = _read_until_close(s, 5)
    data = first + rest
    status, headers, body = parse_response(data)
    assert (status, body) == (408, b"request timeout")
    assert header_value(headers, "connection") == "close"
    assert closed
    assert 0.8 <= elapsed <= 2.0, elapsed
    after = fp.stats("http.ingress_http.downstream_rq_timeout")
    assert _delta(before, after, "http.ingress_http.downstream_rq_timeout") == 1


def test_stream_idle_timeout_before_response_headers(timeouts):
    """Envoy: the request was fully received, so the idle stream is answered with 504
    "stream timeout" (408 only while the request is still incomplete)."""
    fp, _ = timeouts
    before = fp.stats("http.ingress_http.downstream_rq_idle_timeout")
    start = time.monotonic()
    with Client(fp.port, timeout=5) as c:
        raw = c.request(build_request("GET", "/", [("x-origin-delay-ms", "3000")]))
    elapsed = time.monotonic() - start
    status, _, body = parse_response(raw)
    assert body == b"stream timeout"
    assert 0.8 <= elapsed <= 2.0, elapsed
    after = fp.stats("http.ingress_http.downstream_rq_idle_timeout")
    assert _delta(before, after, "http.ingress_http.downstream_rq_idle_timeout") == 1
    assert status == 504


def test_stream_idle_timeout_in_the_middle_of_the_response_body(timeouts):
    fp, _ = timeouts
    before = fp.stats("http.ingress_http.downstream_rq_idle_timeout")
    with Client(fp.port) as c:
        c.send(build_request("GET", "/", [("x-origin-body-size", "1000"), ("x-origin-chunked", "1"),
                                          ("x-origin-chunk-size", "100"),
                                          ("x-origin-chunk-delay-ms", "3000")]))
        elapsed, data, closed = _read_until_close(c.sock, 6)
    assert closed
    assert 0.8 <= elapsed <= 2.5, elapsed
    assert data.startswith(b"HTTP/1.1 200")
    assert not data.endswith(b"0\r\n\r\n")
    after = fp.stats("http.ingress_http.downstream_rq_idle_timeout")
    assert _delta(before, after, "http.ingress_http.downstream_rq_idle_timeout") == 1


# --------------------------------------------------------------------------- bad upstream


@pytest.mark.parametrize("name", list(BAD_RESPONSES))
def test_malformed_upstream_response_gives_502(env, name):
    """Envoy answers an upstream protocol error before the response started with 502 Bad
    Gateway ("... reset reason: protocol error") and counts upstream_cx_protocol_error."""
    fp, _ = env
    before = fp.stats(f"cluster.{name}.")
    with Client(fp.port) as c:
        raw = c.request(build_request("GET", f"/{name}"))
        status, _, body = parse_response(raw)
        assert body.endswith(b"reset reason: protocol error"), raw
        _ok(c)
    after = fp.stats(f"cluster.{name}.")
    assert _delta(before, after, f"cluster.{name}.upstream_cx_protocol_error") == 1
    assert status == 502, raw[:200]
