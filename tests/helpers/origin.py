"""A scriptable HTTP/1.1 origin server for tests.

It runs an asyncio (uvloop when available) server on its own thread, listens on 127.0.0.1 port 0
and reports the port it got (`Origin.port`). It records every request it reads, raw head bytes
included, so tests can assert exactly what a proxy forwarded.

    with Origin() as origin:
        raw_request(origin.port, b"GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n")
        origin.requests[0].raw_head     # b"GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n"

It can also run on its own: ``python origin.py --port 8081``.

Control protocol
================
Each request says how it wants to be answered, with request headers ``x-origin-<option>`` or
with query parameters ``<option>`` of the request path (underscores or dashes both work:
``?body_size=10``, ``?body-size=10``). When both are given the header wins. Options:

=========================  ================================================================
``status: N``              answer with status N (default 200)
``body-size: N``           body of N bytes of a fixed pattern (``Origin.pattern(N)``)
``body: TEXT``             body is TEXT (UTF-8)
``echo: 1``                body is the JSON echo described below; this is the default when
                           neither body-size nor body is given
``header: Name: value``    add this response header; repeat the header (or query
                           parameter) for several
``chunked: 1``             Transfer-Encoding: chunked instead of Content-Length
``chunk-size: N``          write the body in pieces of N bytes (also the chunk size;
                           default 16384)
``chunk-delay-ms: N``      sleep N ms between pieces (a slowly streamed body)
``no-length: 1``           neither Content-Length nor chunked: body delimited by closing
                           the connection
``close: 1``               send ``Connection: close`` and close after the response
``delay-ms: N``            wait N ms before sending the response head
``drop: 1|close|reset``    read the request, then close the connection without answering
                           (``reset`` closes with a TCP RST)
``drop-after: N``          send the head and only the first N bytes of the body as sent
                           on the wire (chunk framing included), then close: a truncated
                           response
=========================  ================================================================

The echo body is a JSON object::

    {"method": "POST", "path": "/x?y=1", "version": "HTTP/1.1",
     "headers": [["Host", "a"], ["Content-Length", "3"], ...],   # order and case as received
     "body": "abc",              # the request body (de-chunked), decoded as latin-1
     "body_length": 3, "conn_id": 1, "conn_seq": 0, "peer_port": 51234}

``conn_id`` numbers the origin's connections from 1 and ``conn_seq`` counts requests on that
connection from 0, so tests can see connection reuse.

Default response headers are only ``Content-Type`` and ``Content-Length`` or
``Transfer-Encoding`` (plus ``Connection: close`` when closing): no Date or Server, so
responses are byte-for-byte predictable. HEAD requests get the head that GET would get;
204 and 304 answers have no body. Requests with ``Expect: 100-continue`` get a
``100 Continue`` before their body is read. An HTTP/1.0 request without keep-alive, or any
request with ``Connection: close``, gets its answer and then the connection is closed.
Request bodies with Content-Length or chunked encoding are read in full (chunk extensions and
trailers accepted; trailers are kept in ``RecordedRequest.trailers``).
"""
from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency of fastproxy
    uvloop = None

__all__ = ["Origin", "RecordedRequest"]

_PATTERN_BLOCK = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_" * 1024)  # 64 KiB

_REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 202: "Accepted", 204: "No Content",
    206: "Partial Content", 301: "Moved Permanently", 302: "Found", 304: "Not Modified",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 413: "Payload Too Large",
    429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}

MAX_HEAD = 1 << 20


@dataclass
class RecordedRequest:
    method: str
    path: str
    version: str
    headers: list  # [(name, value)] as received: order and case kept
    raw_head: bytes  # request line + headers + final CRLF CRLF, exactly as received
    body: bytes = b""  # de-chunked
    trailers: list = field(default_factory=list)
    conn_id: int = 0
    conn_seq: int = 0
    peer: tuple = ()
    received_at: float = 0.0

    def header(self, name: str, default=None):
        """First value of header `name` (case-insensitive)."""
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_values(self, name: str) -> list:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def echo(self) -> dict:
        return {
            "method": self.method,
            "path": self.path,
            "version": self.version,
            "headers": [[k, v] for k, v in self.headers],
            "body": self.body.decode("latin-1"),
            "body_length": len(self.body),
            "conn_id": self.conn_id,
            "conn_seq": self.conn_seq,
            "peer_port": self.peer[1] if len(self.peer) > 1 else None,
        }


class _BadRequest(Exception):
    def __init__(self, status: int, msg: str):
        super().__init__(msg)
        self.status = status


class _Options:
    """The control options of one request (headers win over query parameters)."""

    def __init__(self, req: RecordedRequest):
        self.multi: dict[str, list[str]] = {}
        query = urlsplit(req.path).query
        from_query: dict[str, list[str]] = {}
        for k, v in parse_qsl(query, keep_blank_values=True):
            from_query.setdefault(k.lower().replace("_", "-"), []).append(v)
        from_headers: dict[str, list[str]] = {}
        for k, v in req.headers:
            k = k.lower()
            if k.startswith("x-origin-"):
                from_headers.setdefault(k[len("x-origin-"):], []).append(v)
        self.multi = {**from_query, **from_headers}

    def get(self, name: str, default=None):
        vals = self.multi.get(name)
        return vals[-1] if vals else default

    def int(self, name: str, default=None):
        v = self.get(name)
        if v is None or v == "":
            return default
        try:
            return int(v)
        except ValueError:
            raise _BadRequest(400, f"option {name} needs an integer, got {v!r}") from None

    def flag(self, name: str) -> bool:
        v = self.get(name)
        return v is not None and v.lower() not in ("0", "false", "no", "off")

    def all(self, name: str) -> list[str]:
        return self.multi.get(name, [])


class Origin:
    """The test origin. Use as a context manager, or call start()/stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        self.connections_total = 0
        self.connections_active = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._writers: set = set()

    # ------------------------------------------------------------------ public API
    @staticmethod
    def pattern(n: int) -> bytes:
        """The body that `body-size: n` produces."""
        if n <= len(_PATTERN_BLOCK):
            return _PATTERN_BLOCK[:n]
        reps, rest = divmod(n, len(_PATTERN_BLOCK))
        return _PATTERN_BLOCK * reps + _PATTERN_BLOCK[:rest]

    @property
    def address(self) -> tuple:
        return (self.host, self.port)

    @property
    def last(self) -> RecordedRequest | None:
        return self.requests[-1] if self.requests else None

    def clear(self) -> None:
        with self._cond:
            self.requests.clear()

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least n requests are recorded; return the list (TimeoutError if not)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"origin got {len(self.requests)} requests, wanted {n}")
                self._cond.wait(left)
            return list(self.requests)

    def start(self) -> "Origin":
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name=f"origin-{id(self):x}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("origin did not start within 10 s")
        if self._error is not None:
            raise RuntimeError(f"origin failed to start: {self._error!r}") from self._error
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> "Origin":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Origin {self.host}:{self.port} requests={len(self.requests)}>"

    # ------------------------------------------------------------------ server
    def _run(self) -> None:
        loop = uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        except BaseException as e:  # pragma: no cover - reported by start()
            self._error = e
            self._ready.set()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_HEAD, backlog=1024)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for w in list(self._writers):
                w.transport.abort()
            await asyncio.sleep(0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_total += 1
        self.connections_active += 1
        conn_id = self.connections_total
        self._writers.add(writer)
        peer = writer.get_extra_info("peername") or ()
        sock = writer.get_extra_info("socket")
        try:
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        seq = 0
        try:
            while True:
                keep = await self._one(reader, writer, conn_id, seq, tuple(peer))
                seq += 1
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self.connections_active -= 1
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    async def _read_request(self, reader, writer, conn_id, seq, peer) -> RecordedRequest | None:
        try:
            raw_head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            if e.partial.strip():
                raise _BadRequest(400, "connection closed inside the request head") from None
            return None  # clean close between requests
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "request head too large") from None
        lines = raw_head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise _BadRequest(400, f"bad request line {lines[0]!r}")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(400, f"bad header line {line!r}")
            headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        req = RecordedRequest(
            method=parts[0].decode("latin-1"),
            path=parts[1].decode("latin-1"),
            version=parts[2].decode("latin-1"),
            headers=headers,
            raw_head=bytes(raw_head),
            conn_id=conn_id,
            conn_seq=seq,
            peer=peer,
            received_at=time.time(),
        )
        if (req.header("expect") or "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        te = ",".join(req.header_values("transfer-encoding")).lower()
        if te:
            if te.rsplit(",", 1)[-1].strip() != "chunked":
                raise _BadRequest(400, f"unsupported transfer-encoding {te!r}")
            req.body, req.trailers = await self._read_chunked(reader)
        else:
            cls = set(req.header_values("content-length"))
            if len(cls) > 1:
                raise _BadRequest(400, "conflicting content-length")
            if cls:
                try:
                    n = int(cls.pop())
                except ValueError:
                    raise _BadRequest(400, "bad content-length") from None
                req.body = await reader.readexactly(n) if n else b""
        return req

    @staticmethod
    async def _read_chunked(reader):
        body = bytearray()
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line[:-2].split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest(400, f"bad chunk size line {line!r}") from None
            if size == 0:
                trailers = []
                while True:
                    line = await reader.readuntil(b"\r\n")
                    if line == b"\r\n":
                        return bytes(body), trailers
                    name, _, value = line[:-2].partition(b":")
                    trailers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
            body += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise _BadRequest(400, "chunk data not followed by CRLF")

    async def _one(self, reader, writer, conn_id, seq, peer) -> bool:
        """Serve one request; return whether to keep the connection open."""
        try:
            req = await self._read_request(reader, writer, conn_id, seq, peer)
        except _BadRequest as e:
            body = (str(e) + "\n").encode()
            writer.write(
                f"HTTP/1.1 {e.status} {_REASONS.get(e.status, 'Error')}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
            return False
        if req is None:
            return False
        with self._cond:
            self.requests.append(req)
            self._cond.notify_all()

        try:
            opts = _Options(req)
            return await self._respond(req, opts, writer)
        except _BadRequest as e:
            body = (str(e) + "\n").encode()
            writer.write(
                f"HTTP/1.1 {e.status} {_REASONS.get(e.status, 'Error')}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body
            )
            await writer.drain()
            return True

    async def _respond(self, req: RecordedRequest, opts: _Options, writer) -> bool:
        delay = opts.int("delay-ms", 0)
        if delay:
            await asyncio.sleep(delay / 1000)

        drop = opts.get("drop")
        if drop is not None and drop.lower() not in ("0", "false", "no", "off"):
            if drop.lower() == "reset":
                sock = writer.get_extra_info("socket")
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except (OSError, AttributeError):
                    pass
                writer.transport.abort()
            else:
                writer.close()
            return False

        status = opts.int("status", 200)
        body_size = opts.int("body-size")
        if body_size is not None:
            body = self.pattern(body_size)
            ctype = "application/octet-stream"
        elif opts.get("body") is not None and not opts.flag("echo"):
            body = opts.get("body").encode("utf-8")
            ctype = "text/plain"
        else:
            body = json.dumps(req.echo()).encode()
            ctype = "application/json"

        conn_hdr = (req.header("connection") or "").lower()
        tokens = {t.strip() for t in conn_hdr.split(",")}
        if req.version == "HTTP/1.0":
            keep = "keep-alive" in tokens
        else:
            keep = "close" not in tokens
        close = opts.flag("close")
        chunked = opts.flag("chunked") and req.version != "HTTP/1.0"
        no_length = opts.flag("no-length")
        if close or no_length:
            keep = False
        bodiless_status = status in (204, 304) or 100 <= status < 200
        send_body = req.method != "HEAD" and not bodiless_status

        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
        extra = []
        for h in opts.all("header"):
            name, sep, value = h.partition(":")
            if not sep:
                raise _BadRequest(400, f"header option needs 'Name: value', got {h!r}")
            extra.append((name.strip(), value.strip()))
        names = {k.lower() for k, _ in extra}
        if "content-type" not in names and not bodiless_status:
            head.append(f"Content-Type: {ctype}")
        if not bodiless_status:
            if chunked:
                head.append("Transfer-Encoding: chunked")
            elif not no_length:
                head.append(f"Content-Length: {len(body)}")
        head.extend(f"{k}: {v}" for k, v in extra)
        if not keep and "connection" not in names:
            head.append("Connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))

        if not send_body:
            await writer.drain()
            return keep
        drop_after = opts.int("drop-after")
        budget = drop_after if drop_after is not None else -1
        if drop_after is not None:
            keep = False
        piece = max(1, opts.int("chunk-size", 16384))
        pause = opts.int("chunk-delay-ms", 0) / 1000

        def pieces():
            view = memoryview(body)
            for off in range(0, len(body), piece):
                part = view[off : off + piece]
                yield (b"%x\r\n" % len(part) + bytes(part) + b"\r\n") if chunked else part
            if chunked:
                yield b"0\r\n\r\n"

        for part in pieces():
            if budget >= 0:
                part = part[:budget]
                budget -= len(part)
            if part:
                writer.write(part)
                await writer.drain()
            if budget == 0:
                break
            if pause:
                await asyncio.sleep(pause)
        await writer.drain()
        if not keep:
            writer.close()
        return keep


def main() -> None:  # pragma: no cover - manual use
    import argparse
    import signal

    ap = argparse.ArgumentParser(description="scriptable HTTP/1.1 test origin")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    origin = Origin(args.host, args.port).start()
    print(f"origin listening on {origin.host}:{origin.port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    origin.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
