"""A small origin whose behaviour a test changes while it runs: for health checking and outlier
detection tests.

    o = FaultyOrigin("A").start()
    o.status = 503            # answer ordinary requests with 503
    o.hc_status = 503         # answer health checks (paths under /healthz) with 503
    o.mode = "hang"           # accept and read, never answer
    o.mode = "reset"          # read the request, then close with a TCP RST
    o.down()                  # stop listening: connections are refused; o.up() listens again

Every answer's body is the origin's name, so a test can tell which host served a request.
TCP health checks: a connection whose first bytes are `tcp_ping` is answered `tcp_pong` (unless
`tcp_answer` is False).  `requests` and `health_checks` record the monotonic time of each
request.
"""
from __future__ import annotations

import socket
import struct
import threading
import time

__all__ = ["FaultyOrigin"]


class FaultyOrigin:
    def __init__(self, name: str, port: int = 0):
        self.name = name
        self.status = 200
        self.hc_status = 200
        self.mode = "normal"  # normal | hang | reset
        self.tcp_ping = b"ping"
        self.tcp_pong = b"pong"
        self.tcp_answer = True
        self.requests: list[float] = []
        self.health_checks: list[float] = []
        self.tcp_checks: list[float] = []
        self.hc_heads: list[bytes] = []  # request heads of the health checks, as received
        self._port = port
        self._sock = None
        self._stop = False
        self._conns: set = set()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self):
        return ("127.0.0.1", self._port)

    def start(self) -> "FaultyOrigin":
        self.up()
        return self

    def up(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self._port))
        s.listen(128)
        self._port = s.getsockname()[1]
        self._sock = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def down(self) -> None:
        """Stop listening and drop open connections (new connections are refused)."""
        s, self._sock = self._sock, None
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            self._abort(c)

    def stop(self) -> None:
        self._stop = True
        self.down()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @staticmethod
    def _abort(c) -> None:
        try:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
        except OSError:
            pass

    def _accept(self, s) -> None:
        while not self._stop:
            try:
                c, _ = s.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    if buf.startswith(self.tcp_ping):
                        self.tcp_checks.append(time.monotonic())
                        buf = buf[len(self.tcp_ping):]
                        if self.tcp_answer and self.mode == "normal":
                            c.sendall(self.tcp_pong)
                        continue
                    data = c.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                path = head.split(b" ", 2)[1] if b" " in head else b"/"
                is_hc = path.startswith(b"/healthz")
                (self.health_checks if is_hc else self.requests).append(time.monotonic())
                if is_hc:
                    self.hc_heads.append(head)
                if self.mode == "hang":
                    while c.recv(65536):
                        pass
                    return
                if self.mode == "reset":
                    self._abort(c)
                    return
                status = self.hc_status if is_hc else self.status
                body = self.name.encode()
                c.sendall(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body))
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(c)
            try:
                c.close()
            except OSError:
                pass
