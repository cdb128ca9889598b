"""Upgrade (WebSocket) tunnelling, on fastproxy and on real Envoy with the same config.

An upgrade is tunnelled only when the connection manager lists its type in upgrade_configs; the
origin here answers 101 and then echoes every byte, so the test can see bytes cross the tunnel
both ways after the switch (including bytes the client sent right behind its request head).
"""
import socket
import threading

import pytest

from helpers import free_port, make_bootstrap, route_to


class EchoUpgradeOrigin:
    """Answers an upgrade request with 101, then echoes; answers anything else with 200."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.heads = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            self.heads.append(head)
            if b"\nupgrade: websocket" not in head.lower():
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nno")
                return
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\n\r\n")
            if rest:
                conn.sendall(rest)
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                conn.sendall(chunk)

    def close(self):
        self._stop = True
        self.sock.close()


@pytest.fixture(scope="module")
def echo_origin():
    o = EchoUpgradeOrigin()
    yield o
    o.close()


def _config(port, admin, origin_port, upgrade):
    extra = {"upgrade_configs": [{"upgrade_type": "websocket"}]} if upgrade else {}
    return make_bootstrap(port, admin, clusters={"ws": [("127.0.0.1", origin_port)]},
                          virtual_hosts=[{"name": "v", "domains": ["*"],
                                          "routes": [route_to("ws")]}],
                          hcm_extra=extra)


UPGRADE = (b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def _read_until(s, marker, limit=65536):
    data = b""
    while marker not in data and len(data) < limit:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("proxy", ["fastproxy", "envoy"])
def test_websocket_tunnel(proxy, echo_origin, fastproxy_factory, envoy_factory):
    port, admin = free_port(), free_port()
    cfg = _config(port, admin, echo_origin.port, upgrade=True)
    p = (fastproxy_factory if proxy == "fastproxy" else envoy_factory)(cfg)
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(UPGRADE + b"early-bytes")
        data = _read_until(s, b"early-bytes")
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols")
        lower = head.lower()
        assert b"\r\nupgrade: websocket" in lower and b"\r\nconnection: upgrade" in lower
        assert rest == b"early-bytes"
        for i in range(50):
            msg = b"frame-%d|" % i * 100
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += s.recv(65536)
            assert got == msg
    forwarded = echo_origin.heads[-1].lower()
    assert b"\r\nupgrade: websocket" in forwarded and b"\r\nconnection: upgrade" in forwarded


@pytest.mark.parametrize("proxy", ["fastproxy", "envoy"])
def test_upgrade_not_configured_is_refused(proxy, echo_origin, fastproxy_factory, envoy_factory):
    port, admin = free_port(), free_port()
    cfg = _config(port, admin, echo_origin.port, upgrade=False)
    p = (fastproxy_factory if proxy == "fastproxy" else envoy_factory)(cfg)
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(UPGRADE)
        data = _read_until(s, b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 403 Forbidden\r\n"), data
