"""http2_protocol_options through real sockets: the downstream SETTINGS, connection_keepalive
on both sides, GOAWAY on drain, and the HTTP/2 upstream pool's max_requests_per_connection and
idle_timeout."""
import os
import signal
import socket
import struct
import threading
import time

import pytest

from fastproxy._core import http2 as h2
from helpers import free_port, make_bootstrap
from helpers.grpc_peers import GrpcEchoServer, GrpcClient

H2_UPSTREAM = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
SETTINGS_MAX_CONCURRENT_STREAMS = 3
SETTINGS_INITIAL_WINDOW_SIZE = 4


def _h2_cluster(**common):
    opts = {"@type": H2_UPSTREAM, "explicit_http_config": {"http2_protocol_options": {}}}
    if common:
        opts["common_http_protocol_options"] = common
    return {"typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": opts}}


class H2Client:
    """A blocking HTTP/2 client over one socket, on fastproxy's own codec."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.handler = h2.RecordingHandler(auto_consume=True)
        self.session = h2.H2Session(False, self.handler)
        self.handler.session = self.session
        self.closed = False
        self.flush()

    def flush(self):
        out = self.session.data_to_send()
        if out:
            self.sock.sendall(out)

    def pump(self, until, timeout=5.0):
        """Read and feed until `until()` is true; False on timeout, sets closed on EOF."""
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return False
            except ConnectionError:
                data = b""
            if not data:
                self.closed = True
                return until()
            self.session.receive_data(data)
            self.flush()
        return True

    def events(self, kind):
        return [e for e in self.handler.events if e[0] == kind]

    def get(self, path="/"):
        sid = self.session.submit_request([(b":method", b"GET"), (b":scheme", b"http"),
                                           (b":authority", b"x"), (b":path", path.encode())], True)
        self.flush()
        assert self.pump(lambda: any(e[1] == sid for e in self.handler.events
                                     if e[0] in ("close", "reset")))
        return sid

    def close(self):
        self.sock.close()


def test_downstream_settings_follow_http2_protocol_options(fastproxy_factory, origin):
    port, admin = free_port(), free_port()
    p = fastproxy_factory(make_bootstrap(port, admin, {"o": [("127.0.0.1", origin.port)]},
                                         hcm_extra={"http2_protocol_options": {
                                             "max_concurrent_streams": 7,
                                             "initial_stream_window_size": 70000}}))
    c = H2Client(p.port)
    try:
        assert c.pump(lambda: c.events("settings"))
        assert c.session.remote_setting(SETTINGS_MAX_CONCURRENT_STREAMS) == 7
        assert c.session.remote_setting(SETTINGS_INITIAL_WINDOW_SIZE) == 70000
        sid = c.get("/x")
        assert [e for e in c.events("headers") if e[1] == sid][0][2][0] == (b":status", b"200")
    finally:
        c.close()


def _raw_h2_peer_that_ignores_pings(sock):
    """Client preface + empty SETTINGS, then read and never answer (no PING ack)."""
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack(">I", 0)[1:] + b"\x04\x00"
                 + b"\x00\x00\x00\x00")


def test_downstream_keepalive_closes_a_silent_client(fastproxy_factory, origin):
    port, admin = free_port(), free_port()
    p = fastproxy_factory(make_bootstrap(port, admin, {"o": [("127.0.0.1", origin.port)]},
                                         hcm_extra={"http2_protocol_options": {
                                             "connection_keepalive": {"interval": "0.2s",
                                                                      "timeout": "0.3s"}}}))
    # a client that acknowledges PINGs (nghttp2 does) stays connected
    good = H2Client(p.port)
    # a peer that never acknowledges is closed after interval (+15% jitter) + timeout
    bad = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    _raw_h2_peer_that_ignores_pings(bad)
    start = time.monotonic()
    seen = []
    result = {}

    def read_bad():
        while True:
            data = bad.recv(65536)
            if not data:
                break
            seen.append(data)
        result["elapsed"] = time.monotonic() - start

    reader = threading.Thread(target=read_bad, daemon=True)
    reader.start()
    try:
        # the good client keeps answering PINGs meanwhile
        assert good.pump(lambda: False, timeout=1.2) is False and not good.closed
        reader.join(5)
        assert 0.45 <= result["elapsed"] < 2.0, result
        assert b"\x06\x00" in b"".join(seen)  # a PING frame (type 6) came before the close
        good.get("/still-there")
    finally:
        bad.close()
        good.close()


def _frames(raw):
    """(type, flags, stream id, payload) of each frame in raw HTTP/2 bytes."""
    out, i = [], 0
    while i + 9 <= len(raw):
        n = int.from_bytes(raw[i:i + 3], "big")
        out.append((raw[i + 3], raw[i + 4], int.from_bytes(raw[i + 5:i + 9], "big") & 0x7FFFFFFF,
                    raw[i + 9:i + 9 + n]))
        i += 9 + n
    return out


def test_drain_sends_goaway(fastproxy_factory, origin):
    """SIGTERM: a GOAWAY announcing the shutdown (last stream 2^31-1), then one naming the last
    stream processed, then the connection closes (FIN, not a reset)."""
    port, admin = free_port(), free_port()
    p = fastproxy_factory(make_bootstrap(port, admin, {"o": [("127.0.0.1", origin.port)]}))
    c = H2Client(p.port)
    try:
        c.get("/before")
        os.kill(p.pid, signal.SIGTERM)
        raw = b""
        c.sock.settimeout(10)
        while True:
            data = c.sock.recv(65536)  # a reset would raise here
            if not data:
                break
            raw += data
        goaways = [(int.from_bytes(f[3][:4], "big"), int.from_bytes(f[3][4:8], "big"))
                   for f in _frames(raw) if f[0] == 7]
        assert goaways == [(2**31 - 1, 0), (1, 0)]
    finally:
        c.close()


def _upstream_stats(p, cluster="g"):
    return {k.split(".", 2)[2]: v for k, v in p.stats().items() if k.startswith(f"cluster.{cluster}.")}


def test_upstream_max_requests_per_connection(fastproxy_factory):
    with GrpcEchoServer() as srv:
        port, admin = free_port(), free_port()
        p = fastproxy_factory(make_bootstrap(
            port, admin, {"g": [srv.address]},
            cluster_extra={"g": _h2_cluster(max_requests_per_connection=3)}))
        with GrpcClient(port) as c:
            for i in range(7):
                assert c.unary(b"%d" % i, timeout=10) == b"%d" % i
        st = _upstream_stats(p)
        assert st["upstream_rq_total"] == 7
        assert st["upstream_cx_http2_total"] == 3
        assert st["upstream_cx_max_requests"] == 2  # the third connection has one request left


def test_upstream_idle_timeout(fastproxy_factory):
    with GrpcEchoServer() as srv:
        port, admin = free_port(), free_port()
        p = fastproxy_factory(make_bootstrap(
            port, admin, {"g": [srv.address]},
            cluster_extra={"g": _h2_cluster(idle_timeout="0.3s")}))
        with GrpcClient(port) as c:
            assert c.unary(b"a", timeout=10) == b"a"
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _upstream_stats(p)["upstream_cx_active"]:
                time.sleep(0.05)
            st = _upstream_stats(p)
            assert st["upstream_cx_active"] == 0
            assert st["upstream_cx_idle_timeout"] == 1
            assert c.unary(b"b", timeout=10) == b"b"  # a new connection
            assert _upstream_stats(p)["upstream_cx_http2_total"] == 2


def test_upstream_keepalive_closes_a_silent_upstream(fastproxy_factory):
    """An HTTP/2 upstream that stops answering PINGs is closed; the stream on it fails over to
    a local reply, and the next request opens a new connection."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    lsock.settimeout(0.1)
    accepted = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                s, _ = lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            accepted.append(s)
            s.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # SETTINGS, then silence

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    port, admin = free_port(), free_port()
    cluster = _h2_cluster()
    cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"][
        "http2_protocol_options"]["connection_keepalive"] = {"interval": "0.2s", "timeout": "0.2s"}
    p = fastproxy_factory(make_bootstrap(port, admin, {"g": [lsock.getsockname()]},
                                         cluster_extra={"g": cluster}))
    try:
        c = H2Client(p.port)
        start = time.monotonic()
        sid = c.get("/hang")
        elapsed = time.monotonic() - start
        head = [e for e in c.events("headers") if e[1] == sid][0][2]
        assert head[0] == (b":status", b"503")
        assert 0.35 <= elapsed < 2.0, elapsed
        st = _upstream_stats(p)
        assert st["upstream_cx_destroy_local"] == 1
        assert st["upstream_rq_rx_reset"] == 1
        c.close()
    finally:
        stop.set()
        server.join(5)
        lsock.close()
        for s in accepted:
            s.close()
