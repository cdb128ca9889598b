"""Small helpers local to the integration tests: worker discovery and memory sampling, a
fast counting/streaming origin on plain threads, and a keep-alive raw client."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import zlib

from helpers import FastproxyProcess, free_port, make_bootstrap, response_end

__all__ = [
    "worker_pids", "wait_worker_pids", "rss_bytes", "RssSampler", "CountingOrigin", "Client",
    "start_proxy", "simple_proxy_config", "gen_block",
]

MiB = 1 << 20


# --------------------------------------------------------------------------- processes


def worker_pids(pid: int) -> list[int]:
    """Pids of the direct children of `pid` (fastproxy's workers)."""
    out = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            out = [int(x) for x in f.read().split()]
        if out:
            return sorted(out)
    except OSError:
        pass
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(name))
    return sorted(out)


def wait_worker_pids(pid: int, n: int, timeout: float = 10.0, exclude=()) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in worker_pids(pid) if p not in exclude]
        if len(pids) >= n:
            return pids
        if time.monotonic() > deadline:
            raise TimeoutError(f"expected {n} workers of {pid}, found {pids}")
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class RssSampler:
    """Samples the RSS of one process every `interval` seconds on a thread; keeps the maximum."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid = pid
        self.interval = interval
        self.baseline = rss_bytes(pid)
        self.max = self.baseline
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                v = rss_bytes(self.pid)
            except (OSError, RuntimeError):
                return
            self.max = max(self.max, v)
            self.samples += 1
            self._stop.wait(self.interval)

    @property
    def growth(self) -> int:
        return self.max - self.baseline

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


# --------------------------------------------------------------------------- data


def gen_block(i: int, base: bytes) -> bytes:
    """Block number i of a generated stream: `base` with its first 8 bytes replaced by i, so
    that reordered or repeated blocks change the checksum."""
    return i.to_bytes(8, "big") + base[8:]


# --------------------------------------------------------------------------- origin


class _Reader:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self.big = bytearray(MiB)
        self.mv = memoryview(self.big)

    def _fill(self):
        n = self.sock.recv_into(self.big)
        if n == 0:
            raise EOFError
        self.buf += self.mv[:n]

    def read_until(self, sep: bytes, limit: int = 1 << 16) -> bytes | None:
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                out = bytes(self.buf[: i + len(sep)])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise ValueError("line too long")
            start = max(0, len(self.buf) - len(sep) + 1)
            try:
                self._fill()
            except EOFError:
                if not self.buf:
                    return None
                raise

    def consume(self, n: int, crc: int) -> int:
        """Read and discard n bytes, folding them into the crc32 `crc`; return the new crc."""
        take = min(n, len(self.buf))
        if take:
            crc = zlib.crc32(memoryview(self.buf)[:take], crc)
            del self.buf[:take]
            n -= take
        while n > 0:
            k = self.sock.recv_into(self.big, min(n, MiB))
            if k == 0:
                raise EOFError
            crc = zlib.crc32(self.mv[:k], crc)
            n -= k
        return crc


class CountingOrigin:
    """A thread-per-connection HTTP/1.1 origin on 127.0.0.1.

    - Any request with a body: the body (Content-Length or chunked) is read and counted, never
      kept; the answer is JSON {"bytes": N, "crc32": C, "conn_id": I, "chunks": K}.
    - POST /stall/S...: the body is left unread for S seconds first.
    - GET /download/N: N bytes (1 MiB generated blocks, see gen_block) with Content-Length,
      written as fast as the socket takes them; `sent` counts the bytes handed to the kernel.
    """

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.base = os.urandom(MiB)
        self.conns = 0
        self.sent = 0
        self.results: list[dict] = []
        self.errors: list[str] = []
        self.download_done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._closing = False
        self._lock = threading.Lock()
        self._accept = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self):
        self._accept.start()
        return self

    def __exit__(self, *exc):
        self._closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(5)
        self._accept.join(5)

    def _accept_loop(self):
        while not self._closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.conns += 1
                cid = self.conns
                self._socks.append(conn)
            t = threading.Thread(target=self._serve, args=(conn, cid), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, cid: int):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        r = _Reader(conn)
        try:
            while True:
                head = r.read_until(b"\r\n\r\n")
                if head is None:
                    return
                lines = head[:-4].decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                hdrs = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    hdrs[k.strip().lower()] = v.strip()
                if method == "GET" and path.startswith("/download/"):
                    self._download(conn, int(path.rsplit("/", 1)[1]))
                    continue
                if path.startswith("/stall/"):
                    # leave the request body unread for a while (a slow upstream)
                    time.sleep(float(path.rsplit("/", 1)[1]))
                crc = 0
                total = 0
                chunks = 0
                if "chunked" in hdrs.get("transfer-encoding", "").lower():
                    while True:
                        line = r.read_until(b"\r\n")
                        size = int(line[:-2].split(b";")[0], 16)
                        if size == 0:
                            while r.read_until(b"\r\n") != b"\r\n":
                                pass
                            break
                        chunks += 1
                        crc = r.consume(size, crc)
                        total += size
                        if r.read_until(b"\r\n") != b"\r\n":
                            raise ValueError("bad chunk end")
                else:
                    n = int(hdrs.get("content-length", "0"))
                    crc = r.consume(n, crc)
                    total = n
                result = {"bytes": total, "crc32": crc, "conn_id": cid, "chunks": chunks}
                self.results.append(result)
                body = json.dumps(result).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)
        except (OSError, EOFError, ValueError) as e:
            if not self._closing:
                self.errors.append(repr(e))
        finally:
            conn.close()

    def _download(self, conn: socket.socket, n: int):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: %d\r\n\r\n" % n)
        i = 0
        left = n
        while left > 0:
            block = gen_block(i, self.base)
            piece = block[: min(left, len(block))]
            conn.sendall(piece)
            self.sent += len(piece)
            left -= len(piece)
            i += 1
        self.download_done.set()


# --------------------------------------------------------------------------- client


class Client:
    """One client connection, used for several requests in turn (keep-alive)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.timeout = timeout

    def send(self, data: bytes):
        self.sock.sendall(data)

    def read_response(self, head_request: bool = False) -> bytes:
        """Read one complete response; return its raw bytes (the rest stays buffered)."""
        deadline = time.monotonic() + self.timeout
        while True:
            end = response_end(self.buf, head_request=head_request)
            if end is not None:
                out, self.buf = self.buf[:end], self.buf[end:]
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete response; got {self.buf[:300]!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; got {self.buf[:300]!r}")
            self.buf += chunk

    def request(self, data: bytes, head_request: bool = False) -> bytes:
        self.send(data)
        return self.read_response(head_request)

    def closed_by_peer(self, timeout: float) -> bool:
        """True if the peer closes (EOF or reset) within `timeout` seconds."""
        self.sock.settimeout(timeout)
        try:
            while True:
                d = self.sock.recv(65536)
                if not d:
                    return True
                self.buf += d
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- proxies


def simple_proxy_config(clusters: dict, **kw) -> dict:
    return make_bootstrap(free_port(), free_port(), clusters, **kw)


def start_proxy(config: dict, concurrency: int = 1, **kw) -> FastproxyProcess:
    return FastproxyProcess(config, concurrency, **kw).start()
