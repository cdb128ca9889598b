"""gRPC and HTTP/2 peers for tests: a grpcio echo server on raw bytes (no protoc), a client for
it, gRPC framing helpers for raw HTTP/1.1 clients, and an h2c (prior knowledge) nginx.

    with GrpcEchoServer() as server, GrpcClient(proxy_port) as client:
        assert client.unary(b"hi", timeout=10) == b"hi"
        server.last("Unary").metadata   # what the server saw

Service "fp.test.Echo" (request and response messages are bytes):

    Unary         echoes the request. Initial metadata: every request key starting "x-echo-"
                  (values as sent). Trailing metadata: ("x-trailer", "t1") and every "x-echo-"
                  key again with "-t" appended to its name (a "-bin" key keeps "-bin" last:
                  "x-echo-a-bin" -> "x-echo-a-t-bin").
    ServerStream  request b"<n>:<size>[:<delay_ms>]" -> n messages of `size` bytes (b"a"..b"z"
                  by message index), `delay_ms` between messages.
    ClientStream  -> the total length of all request messages, as ASCII digits.
    Bidi          echoes every message as it arrives.
    Fail          request b"<code>:<details>" -> aborts with that grpc.StatusCode number and
                  details (before sending anything, so the answer is trailers-only).
    StreamFail    request b"<n>:<code>:<details>" -> n messages (as ServerStream, 3 bytes each),
                  then aborts with that status: the status travels in the trailers, after data.
    Sleep         request b"<ms>" -> sleeps (waking early if the call ends), answers b"ok".
    Flaky         request b"<key>:<failures>:<code>" -> the first `failures` calls with this
                  key fail with status `code` (details "flaky <i>"), later ones answer b"ok".

Every call is recorded (`server.calls`, `server.last(method)`, `server.wait_call(...)`) with
its metadata, the time_remaining the server saw, and whether it ended cancelled.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc

__all__ = [
    "SERVICE", "MAX_MESSAGE", "CHANNEL_OPTIONS", "STATUS_BY_CODE",
    "GrpcEchoServer", "GrpcClient", "CallRecord",
    "grpc_frame", "grpc_unframe", "NginxH2c", "find_nginx",
]

SERVICE = "fp.test.Echo"
MAX_MESSAGE = 16 * 1024 * 1024
# Limits both ways; no HTTP proxy from the environment (grpcio honours http_proxy).
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.enable_http_proxy", 0),
    ("grpc.enable_retries", 0),
]
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.so_reuseport", 0),
]
# grpc.StatusCode by its number (0 OK .. 16 UNAUTHENTICATED)
STATUS_BY_CODE = {c.value[0]: c for c in grpc.StatusCode}


@dataclass
class CallRecord:
    """One call as the server saw it."""

    method: str
    metadata: list  # [(key, value)] as received (bytes values for "-bin" keys)
    time_remaining: float | None  # seconds until the call's deadline, at arrival (None: no deadline)
    started: float = field(default_factory=time.monotonic)
    request: bytes | None = None  # unary requests
    messages: int = 0  # messages received (streaming requests) or sent (streaming responses)
    ended: threading.Event = field(default_factory=threading.Event)
    cancelled_event: threading.Event = field(default_factory=threading.Event)
    ended_at: float | None = None

    @property
    def cancelled(self) -> bool:
        return self.cancelled_event.is_set()

    def metadata_dict(self) -> dict:
        return dict(self.metadata)

    def wait_cancelled(self, timeout: float) -> bool:
        return self.cancelled_event.wait(timeout)

    def wait_ended(self, timeout: float) -> bool:
        return self.ended.wait(timeout)


class GrpcEchoServer:
    """The fp.test.Echo service on 127.0.0.1:<ephemeral port> (insecure, i.e. h2c)."""

    def __init__(self, max_workers: int = 64, host: str = "127.0.0.1"):
        self.max_workers = max_workers
        self.host = host
        self.port: int | None = None
        self.calls: list[CallRecord] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._flaky: dict[bytes, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._server = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def start(self):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.max_workers),
                             options=SERVER_OPTIONS)
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self._server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self._client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self._bidi),
            "Fail": grpc.unary_unary_rpc_method_handler(self._fail),
            "StreamFail": grpc.unary_stream_rpc_method_handler(self._stream_fail),
            "Sleep": grpc.unary_unary_rpc_method_handler(self._sleep),
            "Flaky": grpc.unary_unary_rpc_method_handler(self._flaky_call),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port = server.add_insecure_port(f"{self.host}:0")
        if not port:
            raise RuntimeError("grpc server: could not bind a port")
        server.start()
        self._server = server
        self.port = port
        return self

    def stop(self, grace: float | None = 0):
        if self._server is not None:
            self._server.stop(grace).wait(5)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ inspection
    def clear(self):
        with self._lock:
            self.calls.clear()
            self._flaky.clear()
            self.max_in_flight = 0

    def count(self, method: str | None = None) -> int:
        with self._lock:
            return sum(1 for c in self.calls if method is None or c.method == method)

    def last(self, method: str | None = None) -> CallRecord | None:
        with self._lock:
            for c in reversed(self.calls):
                if method is None or c.method == method:
                    return c
        return None

    def wait_call(self, method: str, timeout: float = 5.0, count: int = 1) -> CallRecord:
        """Wait until at least `count` calls of `method` arrived; return the last one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [c for c in self.calls if c.method == method]
                if len(got) >= count:
                    return got[-1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"grpc server: {len(got)} of {count} {method} calls after {timeout}s")
                self._cond.wait(left)

    # ------------------------------------------------------------------ plumbing
    def _record(self, method: str, context, request: bytes | None = None) -> CallRecord:
        remaining = context.time_remaining()
        # grpcio reports a huge value (about 1e9 s) when the call has no deadline
        rec = CallRecord(method, list(context.invocation_metadata()),
                         remaining if remaining is not None and remaining < 1e8 else None,
                         request=request)
        state = getattr(context, "_state", None)

        def on_end():
            # grpcio's public API cannot tell "cancelled" from "completed" once the call ended;
            # its private state can (fall back on what the handler itself saw).
            if state is not None and getattr(state, "client", None) == "cancelled":
                rec.cancelled_event.set()
            rec.ended_at = time.monotonic()
            rec.ended.set()
            with self._lock:
                self.in_flight -= 1

        with self._cond:
            self.calls.append(rec)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._cond.notify_all()
        if not context.add_callback(on_end):
            # already over
            on_end()
            if not context.is_active():
                rec.cancelled_event.set()
        return rec

    # ------------------------------------------------------------------ methods
    def _unary(self, request, context):
        rec = self._record("Unary", context, request)
        echo = [(k, v) for k, v in rec.metadata if k.startswith("x-echo-")]
        context.send_initial_metadata(tuple(echo))
        trailers = [("x-trailer", "t1")]
        for k, v in echo:
            if k.endswith("-bin"):
                trailers.append((k[: -len("-bin")] + "-t-bin", v))
            else:
                trailers.append((k + "-t", v))
        context.set_trailing_metadata(tuple(trailers))
        return request

    def _server_stream(self, request, context):
        rec = self._record("ServerStream", context, request)
        parts = request.split(b":")
        n, size = int(parts[0]), int(parts[1])
        delay = int(parts[2]) / 1000.0 if len(parts) > 2 else 0.0
        for i in range(n):
            if not context.is_active():
                rec.cancelled_event.set()
                return
            if delay and i:
                time.sleep(delay)
            rec.messages += 1
            yield bytes([ord("a") + i % 26]) * size

    def _client_stream(self, request_iterator, context):
        rec = self._record("ClientStream", context)
        total = 0
        try:
            for msg in request_iterator:
                rec.messages += 1
                total += len(msg)
        except grpc.RpcError:
            rec.cancelled_event.set()
            raise
        return str(total).encode()

    def _bidi(self, request_iterator, context):
        rec = self._record("Bidi", context)
        try:
            for msg in request_iterator:
                rec.messages += 1
                yield msg
        except grpc.RpcError:
            rec.cancelled_event.set()
            return

    def _fail(self, request, context):
        self._record("Fail", context, request)
        code, _, details = request.partition(b":")
        context.abort(STATUS_BY_CODE[int(code)], details.decode("utf-8"))

    def _stream_fail(self, request, context):
        rec = self._record("StreamFail", context, request)
        n, code, details = request.split(b":", 2)
        for i in range(int(n)):
            rec.messages += 1
            yield bytes([ord("a") + i % 26]) * 3
        context.abort(STATUS_BY_CODE[int(code)], details.decode("utf-8"))

    def _sleep(self, request, context):
        rec = self._record("Sleep", context, request)
        end = time.monotonic() + int(request) / 1000.0
        while time.monotonic() < end:
            if not context.is_active():
                rec.cancelled_event.set()
                return b""
            time.sleep(min(0.01, max(0.0, end - time.monotonic())))
        return b"ok"

    def _flaky_call(self, request, context):
        self._record("Flaky", context, request)
        key, failures, code = request.split(b":")
        with self._lock:
            seen = self._flaky.get(key, 0)
            self._flaky[key] = seen + 1
        if seen < int(failures):
            context.abort(STATUS_BY_CODE[int(code)], f"flaky {seen + 1}")
        return b"ok"


class GrpcClient:
    """An insecure channel to 127.0.0.1:port with 16 MiB limits and callables per method:

        unary(bytes, timeout=, metadata=) -> bytes        (also .with_call / .future)
        server_stream(bytes, ...) -> iterator of bytes    (a call: .cancel(), .trailing_metadata())
        client_stream(iterator, ...) -> bytes
        bidi(iterator, ...) -> iterator of bytes
        fail / sleep / flaky: unary callables
    """

    def __init__(self, port: int, host: str = "127.0.0.1", options=()):
        self.target = f"{host}:{port}"
        self.channel = grpc.insecure_channel(self.target, options=[*CHANNEL_OPTIONS, *options])
        path = f"/{SERVICE}/"
        self.unary = self.channel.unary_unary(path + "Unary")
        self.server_stream = self.channel.unary_stream(path + "ServerStream")
        self.client_stream = self.channel.stream_unary(path + "ClientStream")
        self.bidi = self.channel.stream_stream(path + "Bidi")
        self.fail = self.channel.unary_unary(path + "Fail")
        self.sleep = self.channel.unary_unary(path + "Sleep")
        self.flaky = self.channel.unary_unary(path + "Flaky")

    def method(self, name: str, kind: str = "unary_unary"):
        return getattr(self.channel, kind)(f"/{SERVICE}/{name}")

    def wait_ready(self, timeout: float = 10.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------------------
# gRPC message framing, for raw HTTP/1.1 and curl clients
# ---------------------------------------------------------------------------------------------

def grpc_frame(message: bytes, compressed: bool = False) -> bytes:
    """One length-prefixed gRPC message: flag byte, 4-byte big-endian length, payload."""
    return struct.pack(">BI", 1 if compressed else 0, len(message)) + message


def grpc_unframe(data: bytes) -> list[bytes]:
    """The messages of a body made of length-prefixed gRPC messages (ValueError if not whole)."""
    out, pos = [], 0
    while pos < len(data):
        if len(data) - pos < 5:
            raise ValueError(f"truncated gRPC frame header at {pos}: {data[pos:]!r}")
        flag, n = struct.unpack_from(">BI", data, pos)
        if flag not in (0, 1):
            raise ValueError(f"bad gRPC compressed flag {flag} at {pos}")
        if len(data) - pos - 5 < n:
            raise ValueError(f"truncated gRPC message at {pos}: {len(data) - pos - 5} of {n} bytes")
        out.append(data[pos + 5: pos + 5 + n])
        pos += 5 + n
    return out


# ---------------------------------------------------------------------------------------------
# A plain HTTP/2 (h2c, prior knowledge) server: nginx
# ---------------------------------------------------------------------------------------------

def find_nginx() -> str | None:
    for cand in (os.environ.get("NGINX_BIN"), shutil.which("nginx"), "/usr/sbin/nginx"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NginxH2c:
    """nginx with one worker serving h2c with prior knowledge on 127.0.0.1:port (`listen ...
    http2` without TLS, nginx < 1.25), from a temporary directory. Locations:

        /info...    200, text: "proto=<$server_protocol> method=<m> uri=<uri> host=<host>
                    len=<content-length> x-test=<x-test header>\\n", header x-upstream-proto
        /1m         1 MiB of b"x" (a static file)
        /upload     reads the whole request body, answers "got <content-length>\\n"
        /status/N   answers status N (N in 200, 201, 204, 404, 503) with body "s<N>\\n"

    Use as a context manager; `.port`, `.address`. `available()` tells whether nginx is there.
    """

    def __init__(self, nginx: str | None = None):
        self.nginx = nginx or find_nginx()
        self.port = None
        self.proc = None
        self.dir = None

    @staticmethod
    def available() -> bool:
        nginx = find_nginx()
        if not nginx:
            return False
        out = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10)
        return "http_v2_module" in (out.stdout + out.stderr)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    STATUSES = (200, 201, 204, 404, 503)

    def _config(self, port: int, inner: int) -> str:
        d = self.dir
        status_locations = "\n".join(
            f'        location = /status/{n} {{ return {n} "s{n}\\n"; }}'
            for n in self.STATUSES)
        return f"""worker_processes 1;
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type text/plain;
    keepalive_timeout 60s;
    server {{
        listen 127.0.0.1:{port} http2;
        client_max_body_size 64m;
        client_body_buffer_size 16m;
        location /info {{
            add_header x-upstream-proto $server_protocol always;
            return 200 "proto=$server_protocol method=$request_method uri=$request_uri host=$host len=$content_length x-test=$http_x_test\\n";
        }}
        location = /1m {{ alias {d}/1m.bin; default_type application/octet-stream; }}
        location = /upload {{
            proxy_pass http://127.0.0.1:{inner}/_uploaded;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
{status_locations}
    }}
    server {{
        listen 127.0.0.1:{inner};
        client_max_body_size 64m;
        location = /_uploaded {{ return 200 "got $content_length\\n"; }}
    }}
}}
"""

    def start(self):
        if not self.nginx:
            raise RuntimeError("nginx not found")
        self.dir = tempfile.mkdtemp(prefix="nginx-h2c-")
        with open(os.path.join(self.dir, "1m.bin"), "wb") as f:
            f.write(b"x" * (1 << 20))
        self.port, inner = _free_port(), _free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(self._config(self.port, inner))
        self._log = open(os.path.join(self.dir, "stderr.log"), "wb")
        self.proc = subprocess.Popen([self.nginx, "-p", self.dir, "-c", conf, "-e",
                                      os.path.join(self.dir, "error.log")],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self.logs()}")
            with contextlib.suppress(OSError), socket.create_connection(self.address, 0.2):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("nginx did not start listening")
            time.sleep(0.02)

    def logs(self) -> str:
        out = ""
        for name in ("stderr.log", "error.log"):
            p = os.path.join(self.dir or "", name)
            if os.path.exists(p):
                with open(p, "rb") as f:
                    out += f.read().decode("utf-8", "replace")
        return out

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.proc = None
            self._log.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
