"""A bounded fuzz of the HTTP/2 input paths of a running fastproxy, through real sockets.

Downstream: after a valid client preface and SETTINGS, a fuzzed sequence of frames (valid
requests, frames with bad types, flags, lengths and stream ids, random HPACK, CONTINUATION
without HEADERS, WINDOW_UPDATE 0 / overflow, bad SETTINGS, PUSH_PROMISE from a client, unknown
types, raw noise), mixed with valid traffic so that it gets past the first connection error, is
sent in random chunks to a listener (codec AUTO or HTTP2) in front of an HTTP/1.1 origin, an
HTTP/2 gRPC server (helpers.grpc_peers.GrpcEchoServer) or nginx speaking h2c. Upstream: a fake
HTTP/2 upstream (a plain socket server) sends SETTINGS and then a fuzzed response to the proxy's
request, made by a well-formed HTTP/1.1 or HTTP/2 client.

The proxy's own behaviour is the spec: the properties are about robustness, not exact frames.

* Every byte the proxy sends parses: frames are well formed (known type, the right stream id
  class, fixed lengths, at most the frame size the peer allows), header blocks decode with an
  independent HPACK decoder (nghttp2's inflater through ctypes, not fastproxy's codec), responses
  open with a valid :status, nothing is sent on a stream the client never used or after its end.
* The proxy answers within a bounded time, or closes (GOAWAY then close, or just close): after
  the fuzz the input is completed to a frame boundary and a PING is sent; its ACK, or the end of
  the connection, must come promptly. A GOAWAY with an error is followed by the close.
* A connection the proxy kept open still works: a well-formed request on a new stream of it is
  answered.
* Other connections are not disturbed: a long-lived HTTP/2 connection makes a request during
  every example, and it must succeed.
* The worker never crashes (same PID, no restarts), its RSS stays bounded over the run, and
  after every example no request or connection of it is left active in the stats.
* When the whole input was valid, the connection stays up and every request the client
  completed is answered (a response head or a reset).
* Upstream: the client gets the upstream's answer or a 502/503/504 local reply (504: the route
  timeout), never a hang past the route timeout; a complete, valid response (possibly followed
  by garbage) reaches the client exactly.

Each test has a fixed seed and no example database, so CI runs the same inputs every time
(FP_H2_FUZZ_SEED=N explores others; FP_H2_FUZZ_EXAMPLES / FP_H2_FUZZ_UPSTREAM_EXAMPLES set the
number of examples).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import socket
import struct
import threading
import time
import zlib

import pytest
from hypothesis import HealthCheck, Phase, assume, given, seed, settings
from hypothesis import strategies as st

from helpers import free_port, make_bootstrap, parse_response, response_end, route_to
from helpers.grpc_peers import GrpcEchoServer, NginxH2c, grpc_frame

h2 = pytest.importorskip("fastproxy._core.http2")

# ---------------------------------------------------------------------------------------------
# Budget. The whole file runs in well under a minute on 2 cores.

EXAMPLES_DOWNSTREAM = int(os.environ.get("FP_H2_FUZZ_EXAMPLES", "100"))
EXAMPLES_UPSTREAM = int(os.environ.get("FP_H2_FUZZ_UPSTREAM_EXAMPLES", "120"))
ANSWER_TIMEOUT = 3.0        # a PING ACK, a close, a response head: each comes within this
ROUTE_TIMEOUT = 0.4         # the route timeout in front of the fake upstream
RSS_GROWTH_LIMIT = 32 << 20

SEED_SHIFT = int(os.environ.get("FP_H2_FUZZ_SEED", "0"))


def fixed_seed(name):
    return seed(zlib.crc32(name.encode()) + SEED_SHIFT)


FUZZ_SETTINGS = dict(
    deadline=None,          # the properties carry their own time bounds
    database=None,          # no replay of earlier failures: every run is the same (each test
                            # has a fixed @seed; FP_H2_FUZZ_SEED=N shifts them all)
    print_blob=False,
    # a failing example is printed as generated; set FP_H2_FUZZ_SHRINK=1 to have it shrunk
    # (slow: every shrink step runs against the proxy)
    phases=[Phase.explicit, Phase.generate]
    + ([Phase.shrink] if os.environ.get("FP_H2_FUZZ_SHRINK") else []),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much, HealthCheck.large_base_example],
)


@pytest.fixture(autouse=True)
def _no_core_dumps():
    """A worker crash (what the reproducers below guard against) leaves no core file in the
    repository: the proxies started by these tests inherit a core size limit of 0."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


# ---------------------------------------------------------------------------------------------
# Frames and HPACK (encoding by hand: literal fields, static table indexes)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
F_END_STREAM = F_ACK = 0x1
F_END_HEADERS = 0x4
F_PADDED = 0x8
F_PRIORITY = 0x20
DEFAULT_MAX_FRAME = 16384
SENTINEL = b"fzPING!!"
REQUEST_STREAM = -1         # in upstream scripts: the stream the proxy's request is on


def frame(ftype, flags, sid, payload=b"", length=None):
    n = len(payload) if length is None else length
    return (n.to_bytes(3, "big") + bytes([ftype & 0xFF, flags & 0xFF])
            + (sid & 0xFFFFFFFF).to_bytes(4, "big") + payload)


def settings_frame(entries=(), flags=0, sid=0):
    return frame(SETTINGS, flags, sid, b"".join(struct.pack(">HI", k, v) for k, v in entries))


CLIENT_SETTINGS = settings_frame()


def hpack_int(value, prefix_bits, first=0):
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes([first | value])
    out = [first | top]
    value -= top
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_string(s):
    return hpack_int(len(s), 7) + s


# (name, value) -> static table index, for the fields an encoder would index
STATIC = {(b":method", b"GET"): 2, (b":method", b"POST"): 3, (b":path", b"/"): 4,
          (b":scheme", b"http"): 6, (b":scheme", b"https"): 7, (b":status", b"200"): 8,
          (b":status", b"204"): 9, (b":status", b"404"): 13}


def hpack_field(name, value, how=0):
    """how: 0 literal without indexing, 1 with incremental indexing (fills the peer's dynamic
    table), 2 never indexed, 3 indexed from the static table when it can be."""
    if how == 3 and (name, value) in STATIC:
        return hpack_int(STATIC[(name, value)], 7, 0x80)
    first, bits = {0: (0x00, 4), 1: (0x40, 6), 2: (0x10, 4), 3: (0x00, 4)}[how]
    return hpack_int(0, bits, first) + hpack_string(name) + hpack_string(value)


def hpack_block(headers, hows=None):
    return b"".join(hpack_field(n, v, hows[i % len(hows)] if hows else 0)
                    for i, (n, v) in enumerate(headers))


def header_frames(sid, block, end_stream=True, cuts=(), end_headers=True, ftype=HEADERS):
    """HEADERS (or PUSH_PROMISE payload given as block) + CONTINUATION frames for a block cut
    at `cuts`; without end_headers the last frame lacks END_HEADERS."""
    points = sorted({c % (len(block) + 1) for c in cuts} | {0, len(block)})
    pieces = [block[a:b] for a, b in zip(points, points[1:])] or [b""]
    # no frame may exceed the default maximum frame size
    split = []
    for p in pieces:
        split += [p[i:i + DEFAULT_MAX_FRAME] for i in range(0, len(p), DEFAULT_MAX_FRAME)] or [b""]
    out = []
    for i, piece in enumerate(split):
        last = i == len(split) - 1
        flags = (F_END_HEADERS if last and end_headers else 0)
        if i == 0:
            if end_stream and ftype == HEADERS:
                flags |= F_END_STREAM
            out.append(frame(ftype, flags, sid, piece))
        else:
            out.append(frame(CONTINUATION, flags, sid, piece))
    return out


def frame_walk(data, max_frame=DEFAULT_MAX_FRAME):
    """How the receiver cuts `data` into frames: (bytes needed to end on a frame boundary,
    whether a frame header over max_frame came first)."""
    pos = 0
    while True:
        if pos + 9 > len(data):
            return (0 if pos == len(data) else pos + 9 - len(data)), False
        n = int.from_bytes(data[pos:pos + 3], "big")
        if n > max_frame:
            return 0, True
        pos += 9 + n
        if pos > len(data):
            return pos - len(data), False


def complete_to_boundary(data):
    """Zero bytes that complete a partial frame at the end of `data` (the receiver would wait
    for them); (padding, oversized): with an oversized frame header the receiver must give up."""
    pad = b""
    for _ in range(4):
        need, oversized = frame_walk(data + pad)
        if oversized or need == 0:
            return pad, oversized
        pad += b"\x00" * need
    return pad, frame_walk(data + pad)[1]


# ---------------------------------------------------------------------------------------------
# An independent HPACK decoder: nghttp2's inflater through ctypes

class _NV(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("value", ctypes.c_void_p),
                ("namelen", ctypes.c_size_t), ("valuelen", ctypes.c_size_t),
                ("flags", ctypes.c_uint8)]


def _load_nghttp2():
    for name in (ctypes.util.find_library("nghttp2"), "libnghttp2.so.14", "libnghttp2.so"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.nghttp2_hd_inflate_new.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        lib.nghttp2_hd_inflate_new.restype = ctypes.c_int
        lib.nghttp2_hd_inflate_del.argtypes = [ctypes.c_void_p]
        lib.nghttp2_hd_inflate_del.restype = None
        lib.nghttp2_hd_inflate_hd2.argtypes = [ctypes.c_void_p, ctypes.POINTER(_NV),
                                               ctypes.POINTER(ctypes.c_int), ctypes.c_void_p,
                                               ctypes.c_size_t, ctypes.c_int]
        lib.nghttp2_hd_inflate_hd2.restype = ctypes.c_ssize_t
        lib.nghttp2_hd_inflate_end_headers.argtypes = [ctypes.c_void_p]
        lib.nghttp2_hd_inflate_end_headers.restype = ctypes.c_int
        return lib
    return None


_NGHTTP2 = _load_nghttp2()
if _NGHTTP2 is None:
    pytest.skip("libnghttp2 not loadable with ctypes", allow_module_level=True)


class HpackDecoder:
    """One connection's HPACK decoding context (dynamic table)."""

    def __init__(self):
        self._ptr = ctypes.c_void_p()
        if _NGHTTP2.nghttp2_hd_inflate_new(ctypes.byref(self._ptr)) != 0:
            raise MemoryError("nghttp2_hd_inflate_new")

    def __del__(self):
        if getattr(self, "_ptr", None) and self._ptr.value:
            _NGHTTP2.nghttp2_hd_inflate_del(self._ptr)
            self._ptr = None

    def decode(self, block: bytes) -> list:
        buf = ctypes.create_string_buffer(bytes(block), len(block) or 1)
        base = ctypes.addressof(buf)
        off, out = 0, []
        nv, flags = _NV(), ctypes.c_int()
        while True:
            flags.value = 0
            rv = _NGHTTP2.nghttp2_hd_inflate_hd2(self._ptr, ctypes.byref(nv), ctypes.byref(flags),
                                                 base + off, len(block) - off, 1)
            if rv < 0:
                raise ValueError(f"HPACK decoding failed ({rv}) on {bytes(block)[:64]!r}")
            off += rv
            if flags.value & 0x02:  # NGHTTP2_HD_INFLATE_EMIT
                out.append((ctypes.string_at(nv.name, nv.namelen),
                            ctypes.string_at(nv.value, nv.valuelen)))
            if flags.value & 0x01:  # NGHTTP2_HD_INFLATE_FINAL
                _NGHTTP2.nghttp2_hd_inflate_end_headers(self._ptr)
                return out
            if not flags.value & 0x02 and off >= len(block):
                raise ValueError("HPACK block ended without FINAL")


# ---------------------------------------------------------------------------------------------
# A strict reader of what the proxy sends on one HTTP/2 connection

class ProtocolViolation(AssertionError):
    pass


SERVER_FRAME_TYPES = {DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE,
                      CONTINUATION}
CONNECTION_SPECIFIC = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                       b"upgrade"}


class PeerOutput:
    """Frames the proxy sent, checked as they are parsed. role "server": the proxy answers our
    requests (downstream); role "client": the proxy sends requests to us (upstream)."""

    def __init__(self, role, known_stream=None):
        self.role = role
        self.known_stream = known_stream  # sid -> bool: did our side use this stream
        self.buf = bytearray()
        self.preface_seen = role == "server"
        self.hpack = HpackDecoder()
        self.block = None             # (sid, bytearray, end_stream) of a header block in progress
        self.max_frame = DEFAULT_MAX_FRAME
        self.frames = []              # (type, flags, sid, length)
        self.heads = {}               # sid -> [header lists]
        self.final = {}               # sid -> the final head
        self.ended = set()            # END_STREAM seen
        self.data = {}                # sid -> bytes
        self.resets = {}              # sid -> error code
        self.goaway = None            # (last sid, error code)
        self.ping_acks = []
        self.settings = 0
        self.last_request_sid = 0

    def fail(self, why):
        raise ProtocolViolation(f"proxy sent a malformed frame sequence: {why}; "
                                f"frames so far {self.frames[-12:]}")

    def feed(self, data):
        self.buf += data
        if not self.preface_seen:
            if len(self.buf) < len(PREFACE):
                if PREFACE[:len(self.buf)] != bytes(self.buf):
                    self.fail(f"bad client preface {bytes(self.buf)!r}")
                return
            if bytes(self.buf[:len(PREFACE)]) != PREFACE:
                self.fail(f"bad client preface {bytes(self.buf[:24])!r}")
            del self.buf[:len(PREFACE)]
            self.preface_seen = True
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[:3], "big")
            if n > self.max_frame:
                self.fail(f"frame of {n} bytes over the maximum {self.max_frame}")
            if len(self.buf) < 9 + n:
                break
            t, fl = self.buf[3], self.buf[4]
            sid = int.from_bytes(self.buf[5:9], "big")
            payload = bytes(self.buf[9:9 + n])
            del self.buf[:9 + n]
            self.frames.append((t, fl, sid, n))
            self._frame(t, fl, sid, payload)

    def finish(self, reset):
        """The connection ended (reset: ECONNRESET, which may cut the last frame)."""
        if reset:
            return
        if self.buf or not self.preface_seen:
            self.fail(f"connection closed inside a frame ({len(self.buf)} bytes left)")
        if self.block is not None:
            self.fail("connection closed inside a header block")

    def _frame(self, t, fl, sid, payload):
        if sid & 0x80000000:
            self.fail("reserved bit set in the stream id")
        if self.block is not None and (t != CONTINUATION or sid != self.block[0]):
            self.fail(f"frame type {t} on stream {sid} inside a header block on {self.block[0]}")
        if t not in SERVER_FRAME_TYPES:
            self.fail(f"frame type {t}")
        if t in (SETTINGS, PING, GOAWAY):
            if sid != 0:
                self.fail(f"type {t} on stream {sid}")
        elif t == RST_STREAM and self.role == "client" and sid and sid % 2 == 0:
            pass  # the proxy refuses a stream the upstream promised (PUSH_PROMISE)
        elif t != WINDOW_UPDATE:
            if sid == 0 or sid % 2 == 0:
                self.fail(f"type {t} on stream {sid}")
        if t == SETTINGS:
            if fl & F_ACK:
                if payload:
                    self.fail("SETTINGS ACK with a payload")
            elif len(payload) % 6:
                self.fail(f"SETTINGS of {len(payload)} bytes")
            else:
                self.settings += 1
        elif t == PING:
            if len(payload) != 8:
                self.fail(f"PING of {len(payload)} bytes")
            if fl & F_ACK:
                self.ping_acks.append(payload)
        elif t == GOAWAY:
            if len(payload) < 8:
                self.fail(f"GOAWAY of {len(payload)} bytes")
            last, code = struct.unpack(">II", payload[:8])
            if self.goaway is not None and (last & 0x7FFFFFFF) > self.goaway[0]:
                self.fail(f"GOAWAY last stream grew from {self.goaway[0]} to {last}")
            self.goaway = (last & 0x7FFFFFFF, code)
        elif t == WINDOW_UPDATE:
            if len(payload) != 4:
                self.fail(f"WINDOW_UPDATE of {len(payload)} bytes")
            if int.from_bytes(payload, "big") & 0x7FFFFFFF == 0:
                self.fail("WINDOW_UPDATE with increment 0")
        elif t == RST_STREAM:
            if len(payload) != 4:
                self.fail(f"RST_STREAM of {len(payload)} bytes")
            if not (self.role == "client" and sid % 2 == 0):
                self._check_known(sid, t)
            self.resets[sid] = int.from_bytes(payload, "big")
        elif t == DATA:
            self._check_known(sid, t)
            if sid not in self.final:
                self.fail(f"DATA on stream {sid} before its head")
            if sid in self.ended:
                self.fail(f"DATA on stream {sid} after its end")
            if fl & F_PADDED:
                if not payload or payload[0] > len(payload) - 1:
                    self.fail("bad DATA padding")
                payload = payload[1:len(payload) - payload[0]]
            self.data[sid] = self.data.get(sid, b"") + payload
            if fl & F_END_STREAM:
                self.ended.add(sid)
        elif t == HEADERS:
            self._check_known(sid, t)
            if sid in self.ended:
                self.fail(f"HEADERS on stream {sid} after its end")
            if fl & F_PADDED:
                if not payload or payload[0] > len(payload) - 1:
                    self.fail("bad HEADERS padding")
                payload = payload[1:len(payload) - payload[0]]
            if fl & F_PRIORITY:
                payload = payload[5:]
            self.block = (sid, bytearray(payload), bool(fl & F_END_STREAM))
            if fl & F_END_HEADERS:
                self._block_done()
        elif t == CONTINUATION:
            if self.block is None:
                self.fail("CONTINUATION without HEADERS")
            self.block[1].extend(payload)
            if fl & F_END_HEADERS:
                self._block_done()

    def _check_known(self, sid, t):
        if self.known_stream is not None and not self.known_stream(sid):
            self.fail(f"frame type {t} on stream {sid}, which the peer never used")

    def _block_done(self):
        sid, block, end = self.block
        self.block = None
        try:
            headers = self.hpack.decode(bytes(block))
        except ValueError as e:
            self.fail(str(e))
        self._check_fields(headers)
        self.heads.setdefault(sid, []).append(headers)
        pseudo = [h for h in headers if h[0][:1] == b":"]
        if sid in self.final:
            # trailers: no pseudo-header, and they end the stream
            if pseudo or not end:
                self.fail(f"second header block on stream {sid} is not trailers: {headers}")
        elif self.role == "server":
            if not headers or headers[0][0] != b":status" or len(pseudo) != 1:
                self.fail(f"response head without a single leading :status: {headers}")
            status = headers[0][1]
            if len(status) != 3 or not status.isdigit():
                self.fail(f"bad :status {status!r}")
            if status[:1] == b"1":
                if end:
                    self.fail("1xx head with END_STREAM")
            else:
                self.final[sid] = headers
        else:
            names = [n for n, _ in pseudo]
            if sorted(names) != sorted([b":method", b":scheme", b":authority", b":path"]) \
                    or headers[:len(pseudo)] != pseudo:
                self.fail(f"request pseudo-headers {names}")
            if sid <= self.last_request_sid:
                self.fail(f"request on stream {sid} after {self.last_request_sid}")
            self.last_request_sid = sid
            self.final[sid] = headers
        if end:
            self.ended.add(sid)

    def _check_fields(self, headers):
        seen_regular = False
        for name, value in headers:
            if not name or name != name.lower():
                self.fail(f"header name {name!r}")
            if name[:1] == b":":
                if seen_regular:
                    self.fail(f"pseudo-header {name!r} after a regular field")
            else:
                seen_regular = True
                if name in CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
                    self.fail(f"connection-specific field {name!r}: {value!r}")
            if any(c in value for c in b"\r\n\x00"):
                self.fail(f"field {name!r} has CR, LF or NUL: {value!r}")

    def status(self, sid):
        head = self.final.get(sid)
        return int(head[0][1]) if head else None


def recv_into(sock, out: PeerOutput, until, timeout):
    """Read into `out` until until() holds (True), the peer closes ("eof"/"reset") or the
    time is up (False)."""
    deadline = time.monotonic() + timeout
    while not until():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            out.finish(reset=True)
            return "reset"
        if not data:
            out.finish(reset=False)
            return "eof"
        out.feed(data)
    return True


# ---------------------------------------------------------------------------------------------
# The worker: same process all along, bounded memory

def worker_pids(main_pid):
    pids = set()
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{main_pid}/task"):
            with open(f"/proc/{main_pid}/task/{tid}/children") as f:
                pids.update(int(x) for x in f.read().split())
    return pids


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class WorkerWatch:
    def __init__(self, proxy):
        self.proxy = proxy
        deadline = time.monotonic() + 5
        while True:
            self.pids = worker_pids(proxy.pid)
            if len(self.pids) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(self.pids) == 1, f"expected one worker, found {self.pids}"
        self.pid = next(iter(self.pids))
        self.rss = []

    def check(self, what=""):
        assert self.proxy.running(), f"fastproxy exited{what}:\n{self.proxy.logs()[-3000:]}"
        now = worker_pids(self.proxy.pid)
        assert now == self.pids, (f"worker {self.pid} replaced by {now}{what}:\n"
                                  f"{self.proxy.logs()[-3000:]}")

    def sample(self):
        self.rss.append(rss_bytes(self.pid))
        return self.rss[-1]

    def final_check(self):
        self.check()
        assert self.proxy.stats().get("server.worker_restarts", 0) == 0
        self.sample()
        growth = max(self.rss) - self.rss[0]
        assert growth < RSS_GROWTH_LIMIT, f"worker RSS grew by {growth >> 20} MiB: {self.rss}"
        return growth


def wait_stats_settle(proxy, names, timeout=5.0):
    """Wait until every stat in names (a list: 0 expected, or a {name: value} dict) has its
    value; return the stats."""
    want = names if isinstance(names, dict) else dict.fromkeys(names, 0)
    deadline = time.monotonic() + timeout
    while True:
        stats = proxy.stats()
        left = {n: stats.get(n) for n, v in want.items() if stats.get(n, 0) != v}
        if not left:
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"stats did not settle: {left}, expected {want}")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# A well-formed client on fastproxy's own codec (the bystander and the upstream fuzz's client)

PROBE_PATH = b"/fp.test.Echo/Unary"
PROBE_HEADERS = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"fuzz"),
                 (b":path", PROBE_PATH), (b"content-type", b"application/grpc"),
                 (b"te", b"trailers")]
PROBE_BODY = grpc_frame(b"probe")


class CodecClient:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.handler = h2.RecordingHandler(auto_consume=True)
        self.session = h2.H2Session(False, self.handler)
        self.handler.session = self.session
        self.closed = False
        self.flush()

    def flush(self):
        out = self.session.data_to_send()
        if out:
            self.sock.sendall(out)
        self.session.output_flushed()  # (the codec's outbound flood accounting)

    def request(self, headers, body=b""):
        sid = self.session.submit_request(headers, not body)
        assert sid > 0, sid
        if body:
            self.session.send_data(sid, body, True)
        self.flush()
        return sid

    def done(self, sid):
        return any(e[0] in ("close", "reset") and e[1] == sid for e in self.handler.events)

    def wait(self, sid, timeout=ANSWER_TIMEOUT):
        deadline = time.monotonic() + timeout
        while not self.done(sid):
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
                return self.done(sid)
            rc = self.session.receive_data(data)
            assert rc == 0, (f"the proxy sent bytes our codec refuses ({rc}: "
                             f"{self.session.error_detail}, {self.session.error_message})")
            self.flush()
        return True

    def result(self, sid):
        status, body, reset, trailers = None, b"", None, []
        for e in self.handler.events:
            if len(e) > 1 and e[1] == sid:
                if e[0] == "headers" and status is None:
                    status = int(dict(e[2])[b":status"])
                elif e[0] == "data":
                    body += e[2]
                elif e[0] == "reset":
                    reset = e[2]
                elif e[0] == "trailers":
                    trailers = e[2]
        return status, body, reset, trailers

    def close(self):
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# Strategies: client frames

SIDS = st.sampled_from([1, 1, 1, 3, 3, 5, 7, 9, 0, 2, 4, 0x7FFFFFFF, 0x80000003])
PATHS = [b"/", b"/a?x=1", b"/?body-size=20000", b"/?body-size=150000", b"/?delay-ms=30",
         b"/?status=503", b"/?chunked=1&body-size=3000", PROBE_PATH, b"/?drop=1",
         b"/?drop-after=10&body-size=1000", b"*", b"", b"noslash", b"/%00", b"/a b",
         b"/?chunk-delay-ms=5&chunk-size=100&body-size=500"]
H_NAMES = [b"content-length", b"te", b"connection", b"host", b"cookie", b"content-type",
           b"x-a", b"X-Upper", b":bogus", b":path", b"transfer-encoding", b"upgrade",
           b"grpc-timeout", b"", b"a b", b"expect", b"x-origin-status", b"keep-alive"]
H_VALUES = [b"0", b"5", b"-1", b"99999999999999999999", b"trailers", b"gzip",
            b"application/grpc", b"", b" lead", b"a\x00b", b"a\r\nb: c", b"x" * 3000,
            b"1S", b"100-continue", b"close", b"a=b", b"\xff\xfe"]

# response bodies a client that never sends WINDOW_UPDATE leaves queued in the proxy
BIG_BODY_PATHS = {b"/?body-size=150000", b"/1m"}

header_field = st.tuples(st.sampled_from(H_NAMES), st.sampled_from(H_VALUES))


@st.composite
def request_headers(draw):
    method = draw(st.sampled_from([b"GET", b"GET", b"POST", b"POST", b"HEAD", b"PUT",
                                   b"OPTIONS", b"CONNECT", b"get", b"", b"G T"]))
    fields = [(b":method", method),
              (b":scheme", draw(st.sampled_from([b"http", b"http", b"https", b"", b"ftp"]))),
              (b":authority", draw(st.sampled_from([b"x", b"x", b"a.b:80", b"", b"a b",
                                                    b"user@h"]))),
              (b":path", draw(st.sampled_from(PATHS)))]
    mutation = draw(st.sampled_from(["none"] * 4 + ["drop", "dup", "shuffle"]))
    if mutation == "drop":
        del fields[draw(st.integers(0, 3))]
    elif mutation == "dup":
        fields.append(fields[draw(st.integers(0, 3))])
    elif mutation == "shuffle":
        fields = draw(st.permutations(fields))
    extra = draw(st.lists(header_field, max_size=4))
    if draw(st.integers(0, 15)) == 0:
        extra += [(b"x-big", b"y" * 16000)] * draw(st.integers(1, 5))  # over the list limit
    if draw(st.integers(0, 15)) == 0:
        extra += [(b"x-many", b"z")] * draw(st.integers(90, 140))     # over the count limit
    if extra and draw(st.booleans()):
        return fields[:2] + extra + fields[2:]
    return fields + extra


@st.composite
def item_request(draw):
    """A request: HEADERS (+ CONTINUATION), sometimes padded or with a priority, sometimes
    followed by a body."""
    sid = draw(SIDS)
    block = hpack_block(draw(request_headers()),
                        draw(st.lists(st.integers(0, 3), min_size=1, max_size=4)))
    body = draw(st.sampled_from([None, None, b"", b"hello", PROBE_BODY, b"b" * 20000]))
    end_stream = body is None and draw(st.integers(0, 5)) > 0
    cuts = draw(st.lists(st.integers(0, 1 << 16), max_size=2))
    end_headers = draw(st.integers(0, 9)) > 0
    frames = header_frames(sid, block, end_stream, cuts, end_headers)
    decoration = draw(st.sampled_from(["none"] * 6 + ["pad", "badpad", "prio", "selfprio"]))
    if decoration != "none":
        first = frames[0]
        flags, payload = first[4], first[9:]
        if decoration in ("pad", "badpad"):
            padlen = draw(st.integers(0, 20))
            payload = bytes([padlen + (40 if decoration == "badpad" else 0)]) + payload \
                + b"\x00" * padlen
            flags |= F_PADDED
        else:
            dep = sid if decoration == "selfprio" else draw(SIDS)
            payload = struct.pack(">IB", dep & 0xFFFFFFFF, draw(st.integers(0, 255))) + payload
            flags |= F_PRIORITY
        frames[0] = frame(HEADERS, flags, sid, payload)
    if body is not None:
        body_flags = draw(st.sampled_from([F_END_STREAM, F_END_STREAM, 0]))
        pieces = [body[i:i + DEFAULT_MAX_FRAME] for i in range(0, len(body), DEFAULT_MAX_FRAME)]
        for i, piece in enumerate(pieces or [b""]):
            last = i == len(pieces or [b""]) - 1
            frames.append(frame(DATA, body_flags if last else 0, sid, piece))
    return b"".join(frames)


def item_random_hpack():
    return st.builds(lambda sid, fl, payload: frame(HEADERS, fl, sid, payload), SIDS,
                     st.sampled_from([F_END_HEADERS, F_END_HEADERS | F_END_STREAM, 0]),
                     st.binary(max_size=60))


@st.composite
def item_data(draw):
    sid = draw(SIDS)
    size = draw(st.sampled_from([0, 0, 1, 10, 100, 5000, DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME + 1]))
    payload = b"d" * size
    flags = draw(st.sampled_from([0, F_END_STREAM, F_PADDED, F_PADDED | F_END_STREAM]))
    if flags & F_PADDED:
        padlen = draw(st.integers(0, 255))
        payload = bytes([padlen]) + payload + b"\x00" * draw(st.sampled_from([padlen, 0]))
    return frame(DATA, flags, sid, payload)


def item_continuation():
    return st.builds(lambda sid, fl, payload: frame(CONTINUATION, fl, sid, payload), SIDS,
                     st.sampled_from([F_END_HEADERS, 0]),
                     st.one_of(st.binary(max_size=30),
                               st.just(hpack_field(b"x-c", b"1"))))


def item_rst():
    return st.builds(lambda sid, code, n: frame(RST_STREAM, 0, sid, struct.pack(">I", code)[:n]
                                                + b"\x00" * max(0, n - 4)),
                     SIDS, st.sampled_from([0, 1, 2, 7, 8, 0xFFFFFFFF]),
                     st.sampled_from([4, 4, 4, 0, 3, 5]))


def item_priority():
    @st.composite
    def build(draw):
        sid = draw(SIDS)
        dep = sid if draw(st.booleans()) else draw(SIDS)
        payload = struct.pack(">IB", (dep & 0x7FFFFFFF) | (0x80000000 if draw(st.booleans())
                                                           else 0), draw(st.integers(0, 255)))
        n = draw(st.sampled_from([5, 5, 5, 4, 6]))
        return frame(PRIORITY, 0, sid, (payload + b"\x00")[:n])
    return build()


SETTING_IDS = st.sampled_from([1, 2, 3, 4, 5, 6, 8, 9, 0, 0x10, 0xFFFF])
SETTING_VALUES = st.sampled_from([0, 1, 2, 100, 4096, 16383, 16384, 65535, 65536, 1 << 24,
                                  (1 << 31) - 1, 1 << 31, 0xFFFFFFFF])


@st.composite
def item_settings(draw):
    entries = draw(st.lists(st.tuples(SETTING_IDS, SETTING_VALUES), max_size=4))
    flags = draw(st.sampled_from([0, 0, 0, F_ACK]))
    sid = draw(st.sampled_from([0, 0, 0, 1]))
    payload = b"".join(struct.pack(">HI", k, v) for k, v in entries)
    if draw(st.integers(0, 5)) == 0:
        payload += b"\x00"
    return frame(SETTINGS, flags, sid, payload)


def item_ping():
    return st.builds(lambda sid, fl, n: frame(PING, fl, sid, b"p" * n),
                     st.sampled_from([0, 0, 0, 1]), st.sampled_from([0, 0, F_ACK]),
                     st.sampled_from([8, 8, 8, 0, 7, 9]))


def item_goaway():
    return st.builds(lambda sid, last, code, debug, cut: frame(
        GOAWAY, 0, sid, (struct.pack(">II", last, code) + debug)[:cut]),
        st.sampled_from([0, 0, 0, 1]), st.sampled_from([0, 1, 3, 0x7FFFFFFF, 0xFFFFFFFF]),
        st.sampled_from([0, 1, 2, 11, 0xFFFF]), st.binary(max_size=10),
        st.sampled_from([1000, 1000, 7, 0]))


def item_window_update():
    return st.builds(lambda sid, inc, n: frame(WINDOW_UPDATE, 0, sid,
                                               (struct.pack(">I", inc) + b"\x00")[:n]),
                     SIDS, st.sampled_from([0, 1, 1000, (1 << 31) - 1, 0xFFFFFFFF, 0x80000001]),
                     st.sampled_from([4, 4, 4, 3, 5]))


@st.composite
def item_push_promise(draw):
    sid = draw(SIDS)
    promised = draw(st.sampled_from([2, 4, 0, 1]))
    block = hpack_block([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"),
                         (b":path", b"/pushed")])
    return frame(PUSH_PROMISE, draw(st.sampled_from([F_END_HEADERS, 0])), sid,
                 struct.pack(">I", promised) + block)


def item_unknown():
    return st.builds(lambda t, fl, sid, payload: frame(t, fl, sid, payload),
                     st.integers(10, 255), st.integers(0, 255), SIDS, st.binary(max_size=30))


@st.composite
def item_raw_frame(draw):
    """Any type, flags and stream, with a declared length that may not match the payload, or
    over the maximum frame size."""
    payload = draw(st.binary(max_size=40))
    mode = draw(st.sampled_from(["match", "short", "long", "oversized"]))
    length = {"match": len(payload), "short": max(0, len(payload) - draw(st.integers(1, 8))),
              "long": len(payload) + draw(st.integers(1, 40)),
              "oversized": draw(st.sampled_from([DEFAULT_MAX_FRAME + 1, 1 << 20,
                                                 (1 << 24) - 1]))}[mode]
    return frame(draw(st.integers(0, 12)), draw(st.integers(0, 255)), draw(SIDS), payload,
                 length=length)


client_items = st.one_of(
    item_request(), item_request(), item_request(), item_random_hpack(), item_data(),
    item_data(), item_continuation(), item_rst(), item_priority(), item_settings(), item_ping(),
    item_goaway(), item_window_update(), item_push_promise(), item_unknown(), item_raw_frame(),
    st.binary(min_size=1, max_size=12))

chunking = st.lists(st.integers(0, 1 << 20), max_size=6)

# Valid traffic, so that the fuzz reaches past the first connection error: requests with bodies
# and trailers, resets, window updates, priorities, pings and settings, on coherent streams.
# The requests suit the upstream: the origin's controls, nginx's locations, gRPC calls.
ORIGIN_PATHS = [b"/", b"/a?x=1", b"/?body-size=20000", b"/?body-size=150000", b"/?delay-ms=30",
                b"/?status=503", b"/?chunked=1&body-size=3000", PROBE_PATH, b"/?drop=1",
                b"/?drop-after=10&body-size=1000",
                b"/?chunk-delay-ms=5&chunk-size=100&body-size=500", b"/?status=204",
                b"/?header=x-b:%201"]
NGINX_PATHS = [b"/info", b"/info?x=1", b"/1m", b"/upload", b"/status/200", b"/status/204",
               b"/status/404", b"/status/503", b"/nothing-here"]
GRPC_CALLS = [(b"Unary", b"hi"), (b"ServerStream", b"3:100"), (b"ServerStream", b"2:40000"),
              (b"Sleep", b"20"), (b"Fail", b"14:boom"), (b"ClientStream", b"abc"),
              (b"Bidi", b"x"), (b"StreamFail", b"2:13:late"), (b"NoSuchMethod", b"")]
VALID_EXTRA = [(b"x-a", b"1"), (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"user-agent", b"fuzz"),
               (b"accept", b"*/*"), (b"x-long", b"v" * 2000), (b"x-echo-k", b"v")]


@st.composite
def valid_request(draw, backend):
    """(header list, request body or None for a bodyless request)."""
    authority = draw(st.sampled_from([b"x", b"a.example:80"]))
    extra = draw(st.lists(st.sampled_from(VALID_EXTRA), max_size=3))
    if backend == "grpc":
        method, message = draw(st.sampled_from(GRPC_CALLS))
        fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", authority),
                  (b":path", b"/fp.test.Echo/" + method), (b"content-type", b"application/grpc"),
                  (b"te", b"trailers")]
        if draw(st.booleans()):
            fields.append((b"grpc-timeout", draw(st.sampled_from([b"1S", b"10m", b"5000u"]))))
        return fields + extra, grpc_frame(message) * draw(st.integers(1, 2))
    method = draw(st.sampled_from([b"GET"] * 4 + [b"POST"] * 3 + [b"HEAD", b"PUT", b"DELETE",
                                                                  b"OPTIONS"]))
    paths = NGINX_PATHS if backend == "nginx" else ORIGIN_PATHS
    fields = [(b":method", method), (b":scheme", b"http"), (b":authority", authority),
              (b":path", draw(st.sampled_from(paths)))]
    body = None
    if method in (b"POST", b"PUT") and draw(st.booleans()):
        body = b"d" * draw(st.sampled_from([1, 5, 1000, DEFAULT_MAX_FRAME, 40000]))
        if draw(st.booleans()):
            fields.append((b"content-length", str(len(body)).encode()))
    return fields + extra, body


@st.composite
def client_sequence(draw, backend):
    """(bytes, mode, streams whose request the client completed and did not reset). Modes:
    "valid" (only valid frames), "one-bad" (valid frames and one bad item), "chaos" (any)."""
    mode = draw(st.sampled_from(["valid", "valid", "one-bad", "one-bad", "one-bad", "chaos"]))
    if mode == "chaos":
        return b"".join(draw(st.lists(client_items, min_size=1, max_size=8))), mode, set()
    n = draw(st.integers(1, 8))
    bad_at = draw(st.integers(0, n - 1)) if mode == "one-bad" else -1
    next_sid, window_updates = 1, 0
    open_ = {}          # stream -> the rest of its request body
    completed, streams, out = set(), [], []
    for i in range(n):
        if i == bad_at:
            out.append(draw(client_items))
            continue
        action = draw(st.sampled_from(["request"] * 4 + ["data"] * 3 + [
            "trailers", "rst", "wu", "prio", "ping", "settings", "unknown"]))
        if action == "request" or (action in ("data", "trailers") and not open_):
            fields, body = draw(valid_request(backend))
            sid, next_sid = next_sid, next_sid + 2
            streams.append(sid)
            block = hpack_block(fields, draw(st.lists(st.integers(0, 3), min_size=1, max_size=4)))
            out += header_frames(sid, block, body is None,
                                 draw(st.lists(st.integers(0, 1 << 16), max_size=2)))
            if body is None:
                completed.add(sid)
            else:
                open_[sid] = body
        elif action == "data":
            sid = draw(st.sampled_from(sorted(open_)))
            rest = open_[sid]
            size = min(len(rest), draw(st.sampled_from([1, 5, 1000, DEFAULT_MAX_FRAME])))
            # (an empty DATA must end the stream: two in a row without would be a flood)
            end = not rest or (size == len(rest) and draw(st.integers(0, 3)) > 0)
            out.append(frame(DATA, F_END_STREAM if end else 0, sid, rest[:size]))
            open_[sid] = rest[size:]
            if not open_[sid] and not end and draw(st.booleans()):
                out.append(frame(DATA, F_END_STREAM, sid))  # an empty DATA ends it
                end = True
            if end:
                del open_[sid]
                completed.add(sid)
        elif action == "trailers":
            sid = draw(st.sampled_from(sorted(open_)))
            if open_[sid]:
                out.append(frame(DATA, 0, sid, open_[sid][:DEFAULT_MAX_FRAME]))
                open_[sid] = open_[sid][DEFAULT_MAX_FRAME:]
                if open_[sid]:
                    continue
            out.append(frame(HEADERS, F_END_HEADERS | F_END_STREAM, sid,
                             hpack_block([(b"x-trailer", b"1")])))
            del open_[sid]
            completed.add(sid)
        elif action == "rst" and streams:
            sid = draw(st.sampled_from(streams))
            out.append(frame(RST_STREAM, 0, sid, struct.pack(">I", draw(st.sampled_from([0, 8])))))
            completed.discard(sid)
            open_.pop(sid, None)
        elif action == "wu" and window_updates + 1 <= 1 + 2 * len(streams):
            # (more would be an inbound WINDOW_UPDATE flood, which closes the connection)
            window_updates += 1
            out.append(frame(WINDOW_UPDATE, 0, draw(st.sampled_from([0] + streams)),
                             struct.pack(">I", draw(st.sampled_from([1, 1000, 1 << 20])))))
        elif action == "prio" and streams:
            sid = draw(st.sampled_from(streams))
            dep = draw(st.sampled_from([0] + [x for x in streams if x != sid]))
            out.append(frame(PRIORITY, 0, sid, struct.pack(">IB", dep, draw(st.integers(0, 255)))))
        elif action == "ping":
            out.append(frame(PING, 0, 0, draw(st.binary(min_size=8, max_size=8))))
        elif action == "settings":
            out.append(settings_frame(draw(st.lists(st.sampled_from([
                (1, 0), (1, 100), (1, 4096), (2, 0), (3, 100), (4, 0), (4, 65535), (4, 1 << 20),
                (5, 16384), (5, 65536), (6, 1000), (6, 1 << 20), (0x99, 5)]), max_size=3))))
        elif action == "unknown":
            out.append(draw(item_unknown()))
    if open_ and draw(st.booleans()):
        # finish the requests still open (gRPC calls mostly)
        for sid, rest in open_.items():
            for i in range(0, len(rest), DEFAULT_MAX_FRAME):
                out.append(frame(DATA, 0, sid, rest[i:i + DEFAULT_MAX_FRAME]))
            out.append(frame(DATA, F_END_STREAM, sid))
            completed.add(sid)
    return b"".join(out), mode, completed


def send_chunked(sock, data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for i, (a, b) in enumerate(zip(points, points[1:])):
        if i:
            time.sleep(0.002)  # separate reads on the proxy's side
        try:
            sock.sendall(data[a:b])
        except (BrokenPipeError, ConnectionResetError):
            return False
    return True


def frames_in(data):
    """(type, stream id) of the frames in data, as the receiver cuts them."""
    out, pos = [], 0
    while pos + 9 <= len(data):
        n = int.from_bytes(data[pos:pos + 3], "big")
        if n > DEFAULT_MAX_FRAME:
            break
        out.append((data[pos + 3], int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF))
        pos += 9 + n
    return out


# ---------------------------------------------------------------------------------------------
# Downstream fuzz

def _h2_upstream_cluster(**common):
    opts = {"@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}
    if common:
        opts["common_http_protocol_options"] = common
    return {"typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": opts}}


NGINX_PROBE = ([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"fuzz"),
                (b":path", b"/info")], b"")


@contextlib.contextmanager
def downstream_setup(fastproxy_factory, origin, codec, backend):
    """A proxy in front of the backend; yields (proxy, probe): probe is the (headers, body) of a
    request the backend answers with 200."""
    with contextlib.ExitStack() as stack:
        probe = (PROBE_HEADERS, PROBE_BODY)
        extra = None
        route = {}
        if backend == "h1":
            clusters = {"up": [("127.0.0.1", origin.port)]}
        elif backend == "grpc":
            clusters = {"up": [stack.enter_context(GrpcEchoServer()).address]}
            extra = {"up": _h2_upstream_cluster()}
        else:
            if not NginxH2c.available():
                pytest.skip("nginx with http_v2_module is needed")
            clusters = {"up": [stack.enter_context(NginxH2c()).address]}
            extra = {"up": _h2_upstream_cluster()}
            probe = NGINX_PROBE
            # nginx ends a connection with a GOAWAY after some answers (a 404 to a POST whose
            # body it does not read; 1000 requests): a bystander's request sent on it meanwhile
            # is refused. That is safe to retry, as Envoy would be configured to.
            route = {"retry_policy": {"retry_on": "refused-stream", "num_retries": 3}}
        port, admin = free_port(), free_port()
        proxy = fastproxy_factory(make_bootstrap(
            port, admin, clusters, cluster_extra=extra, hcm_extra={"codec_type": codec},
            virtual_hosts=[{"name": "v", "domains": ["*"], "routes": [route_to("up", **route)]}]))
        yield proxy, probe


def client_max_frame(data):
    """The largest valid SETTINGS_MAX_FRAME_SIZE the client's frames announce."""
    best, pos = DEFAULT_MAX_FRAME, 0
    while pos + 9 <= len(data):
        n = int.from_bytes(data[pos:pos + 3], "big")
        if n > DEFAULT_MAX_FRAME:
            break
        if data[pos + 3] == SETTINGS and not data[pos + 4] & F_ACK and n % 6 == 0:
            for i in range(pos + 9, pos + 9 + n, 6):
                k, v = struct.unpack(">HI", data[i:i + 6])
                if k == 5 and DEFAULT_MAX_FRAME <= v < (1 << 24):
                    best = max(best, v)
        pos += 9 + n
    return best


def run_client_example(port, fuzz, cuts, bystander, valid_streams=None,
                       probe_request=(PROBE_HEADERS, PROBE_BODY)):
    """One example: preface + SETTINGS + fuzz (chunked), completed to a frame boundary, then a
    PING; checks the answer, a probe request on the same connection, and the bystander. With
    valid_streams (the input was all valid): the connection stays up and each of these requests
    is answered (a response head or a reset)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pad, oversized = complete_to_boundary(fuzz)
    seen = frames_in(fuzz + pad)
    used = {sid for _, sid in seen}
    # After the client's GOAWAY, once no stream is active, the proxy closes the connection
    # (nghttp2 would ignore any more input)
    client_goaway = any(t == GOAWAY for t, _ in seen)
    out = PeerOutput("server", known_stream=lambda sid: sid in used)
    out.max_frame = client_max_frame(fuzz + pad)
    probe_sid = None
    try:
        sent = send_chunked(sock, PREFACE + CLIENT_SETTINGS + fuzz + pad, cuts)
        # the bystander's request runs while this connection is being fuzzed
        by_sid = bystander.request(*probe_request)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if sent:
                sock.sendall(frame(PING, 0, 0, SENTINEL))
        ended = recv_into(sock, out, lambda: SENTINEL in out.ping_acks, ANSWER_TIMEOUT)
        assert ended, (
            f"no PING ACK and no close within {ANSWER_TIMEOUT}s (frames received "
            f"{out.frames[-10:]}, goaway {out.goaway})")
        if valid_streams is not None:
            assert ended is True and out.goaway is None, (
                f"valid input, yet the connection ended ({ended}, GOAWAY {out.goaway})")
            got = recv_into(sock, out, lambda: all(sid in out.final or sid in out.resets
                                                   for sid in valid_streams), ANSWER_TIMEOUT)
            assert got is True, (
                f"requests on streams {sorted(valid_streams - set(out.final) - set(out.resets))}"
                f" not answered ({got})")
        outcome = {False: "no answer", "eof": "closed", "reset": "closed (reset)",
                   True: "alive"}[ended]
        if ended in ("eof", "reset") and out.goaway is not None:
            outcome = f"GOAWAY {out.goaway[1]}, closed"
        if ended is True:
            assert not oversized, "a frame over SETTINGS_MAX_FRAME_SIZE was accepted"
            if out.goaway is not None and out.goaway[1] != 0:
                # an error GOAWAY: the close must follow
                closed = recv_into(sock, out, lambda: False, ANSWER_TIMEOUT)
                assert closed in ("eof", "reset"), f"GOAWAY {out.goaway} but no close"
                outcome = f"GOAWAY {out.goaway[1]}, closed"
            elif out.goaway is None and not client_goaway:
                # the connection is alive: a well-formed request on a new stream is answered
                probe = probe_sid = (max(used | {0}) | 1) + 2
                if probe < (1 << 31):
                    used.add(probe)
                    headers, body = probe_request
                    sock.sendall(b"".join(header_frames(probe, hpack_block(headers), not body))
                                 + (frame(DATA, F_END_STREAM, probe, body) if body else b"")
                                 + frame(PING, 0, 0, b"probe..."))
                    got = recv_into(sock, out, lambda: probe in out.final or probe in out.resets,
                                    ANSWER_TIMEOUT)
                    assert got is True, (f"probe request on stream {probe} not answered ({got}); "
                                         f"frames {out.frames[-10:]}, goaway {out.goaway}")
                    if out.goaway is None:
                        assert out.status(probe) == 200, (
                            f"probe request answered {out.status(probe)} / reset "
                            f"{out.resets.get(probe)}: {out.heads.get(probe)}")
                    outcome = "alive, probe answered"
        assert bystander.wait(by_sid), "the bystander's request was not answered"
        status, body, reset, _ = bystander.result(by_sid)
        assert (status, reset) == (200, None), f"bystander: {status}, reset {reset}, {body[:200]!r}"
        answered = len(set(out.final) - {probe_sid})
        return outcome, answered
    finally:
        sock.close()


@pytest.mark.parametrize("codec,backend", [("AUTO", "h1"), ("HTTP2", "h1"), ("AUTO", "grpc"),
                                           ("HTTP2", "nginx")],
                         ids=["auto-to-http1", "http2-to-http1", "auto-to-grpc", "http2-to-nginx"])
def test_fuzzed_client_frames(codec, backend, fastproxy_factory, origin):
    with downstream_setup(fastproxy_factory, origin, codec, backend) as (proxy, probe_request):
        watch = WorkerWatch(proxy)
        bystander = CodecClient(proxy.port)
        # warm-up, then the baseline for the memory check
        for _ in range(20):
            sid = bystander.request(*probe_request)
            assert bystander.wait(sid) and bystander.result(sid)[0] == 200
        watch.sample()
        counter = {"n": 0, "responses": 0}
        outcomes = {}

        @fixed_seed(f"client-{codec}-{backend}")
        @settings(max_examples=EXAMPLES_DOWNSTREAM, **FUZZ_SETTINGS)
        @given(client_sequence(backend), chunking)
        def example(sequence, cuts):
            fuzz, mode, completed = sequence
            outcome, answered = run_client_example(proxy.port, fuzz, cuts, bystander,
                                                   completed if mode == "valid" else None,
                                                   probe_request)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            counter["responses"] += answered
            watch.check(f" (fuzz {fuzz[:300]!r}, cuts {cuts})")
            # the fuzzed connection is closed (by us, if not by the proxy): nothing of it stays
            try:
                wait_stats_settle(proxy, {"http.ingress_http.downstream_rq_active": 0,
                                          "http.ingress_http.downstream_cx_active": 1}, 2.0)
            except AssertionError as e:
                raise AssertionError(f"{e} (fuzz {fuzz[:300]!r}, cuts {cuts})") from None
            counter["n"] += 1
            if counter["n"] % 10 == 0:
                watch.sample()

        example()
        bystander.close()
        watch.sample()
        growth = watch.final_check()
        # nothing left behind: no request in flight, no connection but closed ones
        wait_stats_settle(proxy, ["http.ingress_http.downstream_rq_active",
                                  "http.ingress_http.downstream_cx_active"])
        print(f"\n{codec}->{backend}: {counter['n']} examples, {counter['responses']} fuzzed "
              f"requests answered, outcomes {outcomes}, worker RSS "
              f"{watch.rss[0] >> 20} -> {watch.rss[-1] >> 20} MiB (+{growth >> 10} KiB)")


# ---------------------------------------------------------------------------------------------
# Deterministic cases: each kind of bad input once, always run (they double as readable
# examples of what the fuzz sends)

REQ = hpack_block([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"),
                   (b":path", b"/")])
DETERMINISTIC = {
    "data-on-idle-stream": frame(DATA, F_END_STREAM, 1, b"x"),
    "data-on-closed-stream": frame(HEADERS, F_END_HEADERS | F_END_STREAM, 1, REQ)
    + frame(DATA, 0, 1, b"late"),
    "continuation-without-headers": frame(CONTINUATION, F_END_HEADERS, 1, REQ),
    "headers-then-ping-not-continuation": frame(HEADERS, 0, 1, REQ),
    "random-hpack": frame(HEADERS, F_END_HEADERS, 1, b"\xff\xff\xff\xff\x7f"),
    "headers-on-stream-0": frame(HEADERS, F_END_HEADERS, 0, REQ),
    "headers-on-even-stream": frame(HEADERS, F_END_HEADERS | F_END_STREAM, 2, REQ),
    "window-update-0-connection": frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"),
    "window-update-0-stream": frame(HEADERS, F_END_HEADERS, 1, REQ)
    + frame(WINDOW_UPDATE, 0, 1, b"\x00\x00\x00\x00"),
    "window-update-overflow": frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", (1 << 31) - 1)) * 2,
    "window-update-bad-length": frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"),
    "rst-on-idle": frame(RST_STREAM, 0, 5, b"\x00\x00\x00\x08"),
    "rst-on-stream-0": frame(RST_STREAM, 0, 0, b"\x00\x00\x00\x08"),
    "priority-self-dependency": frame(PRIORITY, 0, 3, struct.pack(">IB", 3, 16)),
    "priority-bad-length": frame(PRIORITY, 0, 3, b"\x00\x00\x00"),
    "settings-bad-push": settings_frame([(2, 2)]),
    "settings-bad-window": settings_frame([(4, 1 << 31)]),
    "settings-bad-frame-size": settings_frame([(5, 100)]),
    "settings-bad-length": frame(SETTINGS, 0, 0, b"\x00\x01\x00"),
    "settings-ack-with-payload": frame(SETTINGS, F_ACK, 0, b"\x00\x01\x00\x00\x00\x00"),
    "settings-on-stream": settings_frame([(3, 10)], sid=1),
    "ping-short": frame(PING, 0, 0, b"1234567"),
    "ping-on-stream": frame(PING, 0, 1, b"12345678"),
    "goaway": frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)),
    "goaway-short": frame(GOAWAY, 0, 0, b"\x00\x00"),
    "push-promise-from-client": frame(PUSH_PROMISE, F_END_HEADERS, 1,
                                      struct.pack(">I", 2) + REQ),
    "unknown-type": frame(0xBB, 0xFF, 1, b"whatever"),
    "oversized-frame": frame(DATA, 0, 1, b"", length=DEFAULT_MAX_FRAME + 1),
    "empty-data-flood": frame(HEADERS, F_END_HEADERS, 1, REQ) + frame(DATA, 0, 1) * 3,
    "mismatched-length": frame(PING, 0, 0, b"12345678", length=20),
    "header-list-over-limit": b"".join(header_frames(
        1, hpack_block([*[(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"),
                          (b":path", b"/")], *[(b"x-big", b"y" * 16000)] * 5]))),
    "trailers-without-end-stream": frame(HEADERS, F_END_HEADERS, 1, REQ)
    + frame(HEADERS, F_END_HEADERS, 1, hpack_block([(b"x-t", b"1")])),
    "content-length-mismatch": frame(HEADERS, F_END_HEADERS, 1, hpack_block(
        [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/"),
         (b"content-length", b"2")])) + frame(DATA, F_END_STREAM, 1, b"toolong"),
    "stream-reuse-lower-id": frame(HEADERS, F_END_HEADERS | F_END_STREAM, 5, REQ)
    + frame(HEADERS, F_END_HEADERS | F_END_STREAM, 3, REQ),
    "rst-mid-response": frame(HEADERS, F_END_HEADERS | F_END_STREAM, 1, hpack_block(
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"),
         (b":path", b"/?body-size=150000")])) + frame(RST_STREAM, 0, 1, b"\x00\x00\x00\x08"),
}


def test_each_kind_of_bad_client_input(fastproxy_factory, origin):
    with downstream_setup(fastproxy_factory, origin, "AUTO", "h1") as (proxy, _):
        watch = WorkerWatch(proxy)
        bystander = CodecClient(proxy.port)
        outcomes = {}
        for name, fuzz in DETERMINISTIC.items():
            for cuts in ([], [1, 5, 9, 10, 17, 30]):
                try:
                    outcome, _ = run_client_example(proxy.port, fuzz, cuts, bystander)
                except AssertionError as e:
                    raise AssertionError(f"{name} (cuts {cuts}): {e}") from None
                watch.check(f" ({name})")
            outcomes[name] = outcome
        bystander.close()
        watch.final_check()
        wait_stats_settle(proxy, ["http.ingress_http.downstream_rq_active",
                                  "http.ingress_http.downstream_cx_active"])
        # connection errors among them end with a GOAWAY carrying an error code
        for name in ("continuation-without-headers", "headers-on-stream-0",
                     "window-update-0-connection", "window-update-overflow", "ping-short",
                     "push-promise-from-client", "oversized-frame", "data-on-idle-stream"):
            assert outcomes[name].startswith("GOAWAY") and not outcomes[name].startswith(
                "GOAWAY 0"), (name, outcomes[name])


# ---------------------------------------------------------------------------------------------
# Upstream fuzz: a fake HTTP/2 upstream

class FakeH2Upstream:
    """Accepts the proxy's connections one at a time; for each, reads the proxy's preface,
    SETTINGS and request HEADERS (checked with PeerOutput), then sends the current job's bytes
    (SETTINGS first, then the fuzzed response) in chunks, and ends as the job says: "close"
    (FIN, then read until the proxy closes), "reset" (RST) or "hang" (silent until released)."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.05)
        self.port = self.lsock.getsockname()[1]
        self.job = None
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.unexpected = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self):
        return ("127.0.0.1", self.port)

    def submit(self, job):
        with self.lock:
            self.job = job

    def close(self):
        self.stop_event.set()
        self.thread.join(5)
        self.lsock.close()

    def _serve(self):
        while not self.stop_event.is_set():
            try:
                conn, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                job, self.job = self.job, None
            try:
                if job is None:
                    self.unexpected.append("connection without a job")
                    continue
                job.run(conn)
            except BaseException as e:  # recorded for the test thread
                if job is not None:
                    job.error = e
            finally:
                if job is not None:
                    job.handled.set()
                conn.close()


class UpstreamJob:
    def __init__(self, path, build, cuts, end_mode):
        self.path = path
        self.build = build
        self.cuts = cuts
        self.end_mode = end_mode
        self.release = threading.Event()
        self.handled = threading.Event()
        self.error = None
        self.out = PeerOutput("client")
        self.request_sid = None

    def run(self, conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        out = self.out
        got = recv_into(conn, out, lambda: bool(out.final), ANSWER_TIMEOUT)
        if got is not True:
            raise AssertionError(f"no request head from the proxy ({got})")
        self.request_sid = sid = min(out.final)
        path = dict(out.final[sid]).get(b":path")
        if path != self.path:
            raise AssertionError(f"request for {path!r}, expected {self.path!r}")
        script = self.build(sid)
        used = {sid} | {s for _, s in frames_in(script)}
        out.known_stream = lambda s: s in used
        send_chunked(conn, script, self.cuts)
        if self.end_mode == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        if self.end_mode == "close":
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)
        # keep reading (and checking) what the proxy sends until it closes or we are released
        while not self.release.is_set():
            r = recv_into(conn, out, lambda: self.release.is_set(), 0.05)
            if r in ("eof", "reset"):
                return


STATUSES = [b"200", b"204", b"304", b"404", b"503", b"100", b"103", b"101", b"199", b"600",
            b"999", b"abc", b"20", b"2000", b""]
R_NAMES = [b"content-type", b"content-length", b"x-a", b"X-Up", b"connection",
           b"transfer-encoding", b"te", b"keep-alive", b":path", b":status", b"", b"set-cookie",
           b"grpc-status", b"location", b"a b", b"server"]
R_VALUES = [b"0", b"3", b"10", b"-1", b"text/plain", b"", b" x", b"a\x00b", b"a\r\nb: c",
            b"x" * 2000, b"trailers", b"chunked", b"\xff"]


# the stream of a fuzzed upstream frame: mostly the request's (REQUEST_STREAM), else stream 0,
# an even (push) stream, streams the proxy never opened
U_SIDS = [REQUEST_STREAM] * 6 + [0, 2, 3, 5, 0x7FFFFFFF]


@st.composite
def u_head(draw):
    status = draw(st.sampled_from(STATUSES))
    fields = [(b":status", status)]
    fields += draw(st.lists(st.tuples(st.sampled_from(R_NAMES), st.sampled_from(R_VALUES)),
                            max_size=4))
    if draw(st.integers(0, 4)) == 0:
        fields = draw(st.permutations(fields))
    if draw(st.integers(0, 12)) == 0:
        fields += [(b"x-big", b"y" * 16000)] * draw(st.integers(1, 5))
    return fields


@st.composite
def u_item(draw):
    """One fuzzed frame (or a few) from the upstream: a function (request stream) -> bytes."""
    sid = draw(st.sampled_from(U_SIDS))
    build = draw(u_frame())
    return lambda s: build(s if sid == REQUEST_STREAM else sid, s)


@st.composite
def u_frame(draw):
    """A function (stream, request stream) -> bytes."""
    kind = draw(st.sampled_from(["head", "head", "head", "data", "data", "trailers", "rst",
                                 "goaway", "push", "ping", "settings", "wu", "prio",
                                 "unknown", "raw", "hpack", "cont", "noise"]))
    if kind == "head":
        block = hpack_block(draw(u_head()), draw(st.lists(st.integers(0, 3), min_size=1,
                                                          max_size=3)))
        end_stream = draw(st.booleans())
        cuts = draw(st.lists(st.integers(0, 1 << 16), max_size=2))
        end_headers = draw(st.integers(0, 9)) > 0
        return lambda s, req: b"".join(header_frames(s, block, end_stream, cuts, end_headers))
    if kind == "data":
        payload = b"r" * draw(st.sampled_from([0, 0, 3, 10, 100, 3000, DEFAULT_MAX_FRAME + 1]))
        flags = draw(st.sampled_from([0, F_END_STREAM, F_END_STREAM, F_PADDED]))
        if flags & F_PADDED:
            payload = bytes([draw(st.integers(0, 255))]) + payload
        return lambda s, req: frame(DATA, flags, s, payload)
    if kind == "trailers":
        block = hpack_block(draw(st.sampled_from([
            [(b"grpc-status", b"0")], [(b"x-t", b"1")], [(b":status", b"200")], [],
            [(b"X-Bad", b"1")]])))
        flags = draw(st.sampled_from([F_END_HEADERS | F_END_STREAM, F_END_HEADERS]))
        return lambda s, req: frame(HEADERS, flags, s, block)
    if kind == "rst":
        code = draw(st.sampled_from([0, 1, 2, 7, 8, 11]))
        return lambda s, req: frame(RST_STREAM, 0, s, struct.pack(">I", code))
    if kind == "goaway":
        last = draw(st.sampled_from([0, REQUEST_STREAM, 0x7FFFFFFF]))
        code = draw(st.sampled_from([0, 1, 2, 11]))
        return lambda s, req: frame(GOAWAY, 0, 0, struct.pack(
            ">II", req if last == REQUEST_STREAM else last, code))
    if kind == "push":
        block = hpack_block([(b":method", b"GET"), (b":scheme", b"http"),
                             (b":authority", b"x"), (b":path", b"/p")])
        return lambda s, req: frame(PUSH_PROMISE, F_END_HEADERS, s,
                                    struct.pack(">I", 2) + block)
    if kind == "ping":
        fr = draw(item_ping())
        return lambda s, req: fr
    if kind == "settings":
        fr = draw(item_settings())
        return lambda s, req: fr
    if kind == "wu":
        inc = draw(st.sampled_from([0, 1, (1 << 31) - 1, 0xFFFFFFFF]))
        return lambda s, req: frame(WINDOW_UPDATE, 0, s, struct.pack(">I", inc))
    if kind == "prio":
        return lambda s, req: frame(PRIORITY, 0, s, struct.pack(">IB", s, 1))
    if kind == "unknown":
        fr = draw(item_unknown())
        return lambda s, req: fr
    if kind == "raw":
        fr = draw(item_raw_frame())
        return lambda s, req: fr
    if kind == "hpack":
        payload = draw(st.binary(max_size=40))
        return lambda s, req: frame(HEADERS, F_END_HEADERS, s, payload)
    if kind == "cont":
        return lambda s, req: frame(CONTINUATION, F_END_HEADERS, s, hpack_field(b"x-c", b"1"))
    noise = draw(st.binary(min_size=1, max_size=12))
    return lambda s, req: noise


@st.composite
def clean_response(draw):
    """A complete, valid response: (status, body, fn sid -> bytes)."""
    status = draw(st.sampled_from([200, 201, 204, 404, 500, 503]))
    body = b"" if status == 204 else draw(st.binary(max_size=3000))
    fields = [(b":status", str(status).encode()), (b"content-type", b"application/x-fuzz")]
    if status != 204 and draw(st.booleans()):
        fields.append((b"content-length", str(len(body)).encode()))
    fields.append((b"x-fuzz", b"clean"))
    block = hpack_block(fields, draw(st.lists(st.integers(0, 3), min_size=1, max_size=3)))
    informational = draw(st.sampled_from([None, None, b"100", b"103"]))
    trailers = draw(st.booleans()) and status != 204
    cuts = draw(st.lists(st.integers(0, 1 << 16), max_size=3))
    body_cuts = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})

    def build(s):
        out = []
        if informational:
            out.append(frame(HEADERS, F_END_HEADERS, s, hpack_block([(b":status", informational)])))
        if not body and not trailers:
            out += header_frames(s, block, True, cuts)
            return b"".join(out)
        out += header_frames(s, block, False, cuts)
        pieces = [body[a:b] for a, b in zip(body_cuts, body_cuts[1:])] or [b""]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            out.append(frame(DATA, F_END_STREAM if last and not trailers else 0, s, piece))
        if trailers:
            out.append(frame(HEADERS, F_END_HEADERS | F_END_STREAM, s,
                             hpack_block([(b"x-trailer", b"t")])))
        return b"".join(out)
    return status, body, build


@st.composite
def upstream_script(draw):
    """(expected, statuses, build): expected is (status, body) when the client must get exactly
    that response (a valid one came first), statuses what the upstream validly answered."""
    mode = draw(st.sampled_from(["clean", "clean+garbage", "fuzz", "fuzz", "fuzz"]))
    valid_settings = st.lists(
        st.tuples(st.sampled_from([1, 3, 4, 5, 6]),
                  st.sampled_from([0, 1, 100, 4096, 65535, 16384, 1 << 20])),
        max_size=3).filter(lambda e: all((k != 5 or v >= 16384) and (k != 3 or v > 0)
                                         for k, v in e)).map(lambda e: settings_frame(e))
    server_settings = draw(valid_settings if mode.startswith("clean")
                           else st.one_of(valid_settings, item_settings()))
    ack = draw(st.booleans())
    statuses = set()
    expected = None
    parts = []
    if mode.startswith("clean"):
        status, body, build = draw(clean_response())
        parts.append(build)
        statuses.add(status)
        expected = (status, body)
    if mode != "clean":
        items = draw(st.lists(u_item(), min_size=1, max_size=6))
        parts += items
    preamble = server_settings + (settings_frame(flags=F_ACK) if ack else b"")

    def build_all(sid):
        return preamble + b"".join(p(sid) for p in parts)
    # statuses a fuzzed head may validly carry
    statuses |= {int(s) for s in STATUSES if len(s) == 3 and s.isdigit() and int(s) >= 200}
    return expected, statuses, build_all


def upstream_config(fake, port, admin):
    return make_bootstrap(
        port, admin, {"fake": [fake.address]},
        virtual_hosts=[{"name": "v", "domains": ["*"], "routes": [
            route_to("fake", timeout=f"{ROUTE_TIMEOUT}s")]}],
        cluster_extra={"fake": _h2_upstream_cluster(
            max_requests_per_connection=1)})


def http1_request(port, path, method, timeout):
    """(status or None, body, complete, elapsed): a request on a new connection, read until a
    complete response, the close, or the timeout."""
    body = b"hello" if method == "POST" else b""
    req = (f"{method} {path} HTTP/1.1\r\nHost: f\r\n".encode()
           + (b"content-length: 5\r\n" if body else b"") + b"\r\n" + body)
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(req)
        raw = b""
        while True:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                return None, raw, False, time.monotonic() - start
            s.settimeout(left)
            try:
                data = s.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                break
            raw += data
            try:
                if response_end(raw) is not None:
                    status, _, rbody = parse_response(raw)
                    return status, rbody, True, time.monotonic() - start
            except ValueError:
                pass
    elapsed = time.monotonic() - start
    try:
        status, _, rbody = parse_response(raw)
    except ValueError:
        # a head cut short, or nothing at all
        status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") and \
            raw[9:12].isdigit() else None
        return status, raw, False, elapsed
    return status, rbody, False, elapsed


def test_fuzzed_upstream_frames(fastproxy_factory):
    fake = FakeH2Upstream()
    try:
        port, admin = free_port(), free_port()
        proxy = fastproxy_factory(upstream_config(fake, port, admin))
        watch = WorkerWatch(proxy)
        watch.sample()
        h2client = CodecClient(proxy.port)  # one long-lived HTTP/2 client for all examples
        counter = {"n": 0, "local": 0, "upstream": 0, "cut": 0}
        last = {"desc": "none"}
        limit = ROUTE_TIMEOUT + 1.5

        @fixed_seed("upstream")
        @settings(max_examples=EXAMPLES_UPSTREAM, **FUZZ_SETTINGS)
        @given(upstream_script(), chunking,
               st.sampled_from(["close", "close", "close", "hang", "reset"]),
               st.sampled_from(["h1", "h1", "h2"]), st.sampled_from(["GET", "GET", "POST"]))
        def example(script, cuts, end_mode, client, method):
            watch.check(f" after the previous example ({last['desc']})")
            expected, statuses, build = script
            counter["n"] += 1
            path = f"/fuzz/{counter['n']}"
            job = UpstreamJob(path.encode(), build, cuts, end_mode)

            def desc():
                return (f"upstream sent {build(job.request_sid or 1)[:600]!r}; end {end_mode}, "
                        f"cuts {cuts}, client {client} {method}; proxy sent upstream "
                        f"{job.out.frames}")
            last["desc"] = f"upstream sent {build(1)[:600]!r}, end {end_mode}, cuts {cuts}, " \
                f"client {client} {method}"
            # each example gets a connection of its own: the previous one must be gone (the fake
            # closed it), which is a property too
            try:
                before = wait_stats_settle(proxy, ["cluster.fake.upstream_cx_active"], 2.0)
            except AssertionError as e:
                raise AssertionError(f"{e} after the previous example ({last['desc']})") from None
            rq_before = before.get("http.ingress_http.downstream_rq_active", 0)
            fake.submit(job)
            complete = False
            try:
                if client == "h1":
                    status, body, complete, elapsed = http1_request(proxy.port, path, method,
                                                                    limit + 1)
                    reset = None
                else:
                    start = time.monotonic()
                    sid = h2client.request(
                        [(b":method", method.encode()), (b":scheme", b"http"),
                         (b":authority", b"f"), (b":path", path.encode())],
                        b"hello" if method == "POST" else b"")
                    finished = h2client.wait(sid, limit + 1)
                    elapsed = time.monotonic() - start
                    assert not h2client.closed, "the proxy closed the downstream HTTP/2 connection"
                    status, body, reset, _ = h2client.result(sid)
                    complete = finished and reset is None
                assert elapsed < limit, (
                    f"answer after {elapsed:.2f}s (route timeout {ROUTE_TIMEOUT}s)")
                assert status is not None, (
                    f"no response head ({client}, reset {reset}, {body[:100]!r})")
                assert status in statuses | {502, 503, 504}, f"status {status}"
                if expected is not None:
                    assert (status, body) == expected and complete, (
                        f"expected {expected[0]} with {len(expected[1])} bytes, got {status} "
                        f"with {len(body)} bytes, complete {complete}, reset {reset}")
                counter["local" if status in (502, 503, 504) and expected is None
                        else "upstream"] += 1
                counter["cut"] += not complete
            except (AssertionError, OSError) as e:
                watch.check(f" ({desc()})")
                raise AssertionError(f"{e}\n  {desc()}") from None
            finally:
                job.release.set()
                handled = job.handled.wait(5)
            watch.check(f" ({desc()})")
            assert handled, f"the fake upstream never got the proxy's request ({desc()})"
            if job.error is not None:
                raise AssertionError(f"fake upstream: {job.error!r} ({desc()})")
            # the request is over on both sides: it must not stay active in the proxy
            leak_ok = False
            deadline = time.monotonic() + 2.0
            while True:
                rq_active = proxy.stats().get("http.ingress_http.downstream_rq_active", 0)
                if rq_active <= rq_before + leak_ok:
                    break
                assert time.monotonic() < deadline, (
                    f"downstream_rq_active went from {rq_before} to {rq_active} ({desc()})")
                time.sleep(0.02)
            if counter["n"] % 10 == 0:
                watch.sample()

        example()
        h2client.close()
        watch.sample()
        growth = watch.final_check()
        assert not fake.unexpected, fake.unexpected
        wait_stats_settle(proxy, ["cluster.fake.upstream_rq_active",
                                  "cluster.fake.upstream_cx_active"]
                          + ["http.ingress_http.downstream_rq_active"])
        print(f"\nupstream fuzz: {counter}, worker RSS +{growth >> 10} KiB")
    finally:
        fake.close()


# ---------------------------------------------------------------------------------------------
# Deterministic reproducers of what the fuzz found (each was a bug; they guard the fixes)

@pytest.mark.parametrize("tail", ["goaway", "goaway-first-then-rst"])
def test_malformed_upstream_response_then_goaway_keeps_the_worker(tail, fastproxy_factory):
    """An HTTP/2 upstream answers with a head nghttp2 refuses (no :status: a stream error, so
    nghttp2 queues RST_STREAM) and, in the same read, a GOAWAY that refuses the stream (or a
    GOAWAY first and then its own RST_STREAM). Default cluster options. Expected: a 502/503
    local reply, and the worker lives on."""
    bad_head = hpack_block([(b"x-t", b"1")])

    def script(sid):
        if tail == "goaway":
            return (settings_frame() + frame(HEADERS, F_END_HEADERS | F_END_STREAM, sid, bad_head)
                    + frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
        return (settings_frame() + frame(GOAWAY, 0, 0, struct.pack(">II", sid, 0))
                + frame(HEADERS, F_END_HEADERS | F_END_STREAM, sid, bad_head)
                + frame(RST_STREAM, 0, sid, struct.pack(">I", 11)))

    fake = FakeH2Upstream()
    try:
        port, admin = free_port(), free_port()
        proxy = fastproxy_factory(make_bootstrap(
            port, admin, {"fake": [fake.address]},
            cluster_extra={"fake": _h2_upstream_cluster()}))
        watch = WorkerWatch(proxy)
        job = UpstreamJob(b"/crash", script, [], "close")
        fake.submit(job)
        status, _, _, _ = http1_request(proxy.port, "/crash", "GET", 3)
        job.release.set()
        job.handled.wait(5)
        assert status in (502, 503)
        time.sleep(0.3)
        watch.check(" (malformed response head, then GOAWAY)")
    finally:
        fake.close()


@pytest.mark.parametrize("how", ["client-gone", "upstream-cut-after-head"])
def test_http1_request_ended_by_a_close_is_accounted(how, fastproxy_factory, origin):
    """An HTTP/1.1 request that ends with its connection (the client leaves while the origin is
    slow; or the origin closes after the head and part of the body, so the proxy closes the
    client) must not stay in http.*.downstream_rq_active."""
    port, admin = free_port(), free_port()
    proxy = fastproxy_factory(make_bootstrap(port, admin, {"o": [("127.0.0.1", origin.port)]}))
    path = "/?delay-ms=400" if how == "client-gone" else "/?drop-after=10&body-size=1000"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        if how == "client-gone":
            time.sleep(0.1)
        else:
            s.settimeout(3)
            with contextlib.suppress(OSError):
                while s.recv(65536):
                    pass
    time.sleep(0.6)  # (the origin's delay is over too)
    stats = proxy.stats()
    assert stats["http.ingress_http.downstream_cx_active"] == 0
    assert stats["http.ingress_http.downstream_rq_active"] == 0


def test_client_goaway_ends_the_connection(fastproxy_factory, origin):
    """A client's GOAWAY with no stream open: nghttp2 would ignore anything more, so the proxy
    answers or closes, and does not leave a connection that ignores everything."""
    port, admin = free_port(), free_port()
    proxy = fastproxy_factory(make_bootstrap(port, admin, {"o": [("127.0.0.1", origin.port)]}))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        out = PeerOutput("server", known_stream=lambda sid: False)
        sock.sendall(PREFACE + CLIENT_SETTINGS + frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
        assert recv_into(sock, out, lambda: out.settings >= 1, ANSWER_TIMEOUT) is True
        time.sleep(0.05)  # a separate read on the proxy's side
        sock.sendall(frame(PING, 0, 0, SENTINEL))
        got = recv_into(sock, out, lambda: SENTINEL in out.ping_acks, 2.0)
        assert got in (True, "eof", "reset"), "neither a PING ACK nor a close after 2 s"


def test_retry_on_refused_stream(fastproxy_factory):
    """Envoy: 'refused-stream: Envoy will attempt a retry if the upstream server resets the
    stream with a REFUSED_STREAM error code.' An HTTP/2 upstream refuses the first stream and
    answers the second: with retry_on refused-stream the client gets the 200."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    lsock.settimeout(5)
    done = threading.Event()

    def serve():
        with contextlib.suppress(OSError):
            conn, _ = lsock.accept()
            with conn:
                out = PeerOutput("client")
                conn.sendall(settings_frame())
                answered = set()
                while not done.is_set():
                    got = recv_into(conn, out, lambda: set(out.final) - answered, 0.1)
                    if got is not True:
                        if got is False:
                            continue
                        return
                    for sid in sorted(set(out.final) - answered):
                        answered.add(sid)
                        if len(answered) == 1:
                            conn.sendall(frame(RST_STREAM, 0, sid, struct.pack(">I", 7)))
                        else:
                            conn.sendall(frame(HEADERS, F_END_HEADERS | F_END_STREAM, sid,
                                               hpack_block([(b":status", b"200")])))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        port, admin = free_port(), free_port()
        proxy = fastproxy_factory(make_bootstrap(
            port, admin, {"up": [lsock.getsockname()]},
            cluster_extra={"up": _h2_upstream_cluster()},
            virtual_hosts=[{"name": "v", "domains": ["*"], "routes": [route_to(
                "up", retry_policy={"retry_on": "refused-stream", "num_retries": 2})]}]))
        status, body, complete, _ = http1_request(proxy.port, "/", "GET", 5)
        assert status == 200, (status, body)
    finally:
        done.set()
        lsock.close()
        server.join(5)


def test_closed_http2_connections_free_their_queued_responses(fastproxy_factory, origin):
    """40 HTTP/2 clients each ask for 1 MiB and leave without reading it (their flow-control
    window holds the proxy at 64 KiB sent): the proxy queues up to its buffer limit per stream.
    Once the connections are closed that memory must be free for the next ones: the worker's
    RSS must not grow by ~40 MiB."""
    port, admin = free_port(), free_port()
    proxy = fastproxy_factory(make_bootstrap(port, admin, {"o": [("127.0.0.1", origin.port)]}))
    watch = WorkerWatch(proxy)
    head = b"".join(header_frames(1, hpack_block([
        (b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"),
        (b":path", b"/?body-size=1048576")])))

    def leave_a_response_behind():
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            out = PeerOutput("server", known_stream=lambda sid: sid == 1)
            sock.sendall(PREFACE + CLIENT_SETTINGS + head)
            assert recv_into(sock, out, lambda: 1 in out.final, ANSWER_TIMEOUT) is True
            time.sleep(0.02)  # (the origin's body reaches the proxy)

    for _ in range(5):  # the allocator's working set for this pattern
        leave_a_response_behind()
    wait_stats_settle(proxy, ["http.ingress_http.downstream_cx_active"])
    before = watch.sample()
    for _ in range(40):
        leave_a_response_behind()
    wait_stats_settle(proxy, ["http.ingress_http.downstream_cx_active"])
    time.sleep(0.5)
    growth = watch.sample() - before
    watch.check()
    assert growth < 16 << 20, f"worker RSS grew by {growth >> 20} MiB for 40 closed connections"
