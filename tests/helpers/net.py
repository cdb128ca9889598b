"""Socket-level helpers for tests: ports, a raw HTTP/1.1 client and a small response parser.

The parser is deliberately independent of fastproxy's own codec, so that tests of the codec
and of the proxy do not check the code with itself.
"""
from __future__ import annotations

import socket
import time

__all__ = [
    "free_port",
    "wait_for_port",
    "wait_for_listen",
    "is_listening",
    "build_request",
    "raw_request",
    "parse_response",
    "parse_responses",
    "response_end",
    "header_values",
    "header_value",
    "IncompleteResponse",
]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0 and release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until a TCP connect to host:port succeeds; raise TimeoutError otherwise.

    Note that this opens (and closes) a connection, which a proxy counts in its stats;
    `wait_for_listen` does not.
    """
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as e:
            last_err = e
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} not accepting connections after {timeout}s: {last_err}")
        time.sleep(0.02)


def _listening_ports_proc() -> set[int] | None:
    ports: set[int] = set()
    found = False
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A":  # TCP_LISTEN
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports if found else None


def is_listening(port: int, host: str = "127.0.0.1") -> bool:
    """True if some socket listens on `port`, checked without connecting when possible."""
    ports = _listening_ports_proc()
    if ports is not None:
        return port in ports
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_listen(port: int, timeout: float = 10.0, host: str = "127.0.0.1", proc=None) -> None:
    """Wait until `port` is in LISTEN state (no connection made, so no stats side effects).

    If `proc` (a subprocess.Popen) exits meanwhile, raise RuntimeError at once.
    """
    deadline = time.monotonic() + timeout
    while not is_listening(port, host):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode} before listening on {port}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing listening on port {port} after {timeout}s")
        time.sleep(0.02)


def build_request(
    method: str = "GET",
    path: str = "/",
    headers: list[tuple[str, str]] | dict[str, str] | None = None,
    body: bytes = b"",
    host: str = "example.com",
    version: str = "HTTP/1.1",
) -> bytes:
    """Serialize a request. Adds Host (unless given) and Content-Length when there is a body
    and neither Content-Length nor Transfer-Encoding is given. Headers keep their order and case."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {k.lower() for k, _ in items}
    if "host" not in names and host is not None:
        items.insert(0, ("Host", host))
    if body and "content-length" not in names and "transfer-encoding" not in names:
        items.append(("Content-Length", str(len(body))))
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in items) + "\r\n"
    return head.encode("latin-1") + body


class IncompleteResponse(ValueError):
    """The bytes do not (yet) hold a complete response."""


def _parse_head(data: bytes, start: int):
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        raise IncompleteResponse("response head not complete")
    lines = data[start:end].split(b"\r\n")
    status_line = lines[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ValueError(f"bad status line: {status_line!r}")
    try:
        status = int(parts[1])
    except ValueError:
        raise ValueError(f"bad status line: {status_line!r}") from None
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ValueError(f"bad header line: {line!r}")
        headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return status, parts[0].decode(), headers, end + 4


def _decode_chunked(data: bytes, pos: int):
    body = bytearray()
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise IncompleteResponse("chunk size line not complete")
        size_str = data[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_str, 16)
        except ValueError:
            raise ValueError(f"bad chunk size: {data[pos:eol]!r}") from None
        pos = eol + 2
        if size == 0:
            # trailers until an empty line
            while True:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    raise IncompleteResponse("chunked trailer not complete")
                line = data[pos:eol]
                pos = eol + 2
                if not line:
                    return bytes(body), pos
        if len(data) < pos + size + 2:
            raise IncompleteResponse("chunk data not complete")
        body += data[pos : pos + size]
        if data[pos + size : pos + size + 2] != b"\r\n":
            raise ValueError("chunk data not followed by CRLF")
        pos += size + 2


def _parse_one(data: bytes, start: int, head_request: bool, eof: bool):
    """Parse one response (skipping 1xx interim responses). Returns (status, headers, body, end)."""
    while True:
        status, version, headers, pos = _parse_head(data, start)
        if 100 <= status < 200 and status != 101:
            start = pos
            continue
        break
    lower = [(k.lower(), v) for k, v in headers]
    te = [v.lower() for k, v in lower if k == "transfer-encoding"]
    cl = [v for k, v in lower if k == "content-length"]
    if head_request or status in (204, 304) or 100 <= status < 200:
        return status, headers, b"", pos
    if te and te[-1].split(",")[-1].strip() == "chunked":
        body, end = _decode_chunked(data, pos)
        return status, headers, body, end
    if cl:
        n = int(cl[0])
        if len(data) < pos + n:
            raise IncompleteResponse(f"body has {len(data) - pos} of {n} bytes")
        return status, headers, data[pos : pos + n], pos + n
    # delimited by the end of the connection
    if not eof:
        raise IncompleteResponse("close-delimited body: need end of connection")
    return status, headers, data[pos:], len(data)


def response_end(data: bytes, head_request: bool = False, eof: bool = False) -> int | None:
    """Offset just past the first complete response in `data`, or None if incomplete."""
    try:
        return _parse_one(data, 0, head_request, eof)[3]
    except IncompleteResponse:
        return None


def parse_response(data: bytes, head_request: bool = False):
    """Parse one HTTP/1.x response -> (status, [(name, value), ...], body).

    Handles Content-Length, chunked (body returned de-chunked) and close-delimited bodies
    (everything after the head is the body). 1xx interim responses are skipped. Header names
    keep their case and order. Raises IncompleteResponse / ValueError on bad input.
    """
    status, headers, body, _ = _parse_one(data, 0, head_request, eof=True)
    return status, headers, body


def parse_responses(data: bytes, head_request: bool = False):
    """Parse all responses in `data` (pipelining) -> list of (status, headers, body)."""
    out = []
    pos = 0
    while pos < len(data):
        status, headers, body, pos = _parse_one(data, pos, head_request, eof=True)
        out.append((status, headers, body))
    return out


def header_values(headers, name: str) -> list[str]:
    name = name.lower()
    return [v for k, v in headers if k.lower() == name]


def header_value(headers, name: str, default=None):
    vals = header_values(headers, name)
    return vals[0] if vals else default


def _count_complete(data: bytes, head_request: bool) -> int:
    n = 0
    pos = 0
    while pos < len(data):
        try:
            pos = _parse_one(data, pos, head_request, eof=False)[3]
        except IncompleteResponse:
            break
        except ValueError:
            break
        n += 1
    return n


def raw_request(
    port: int,
    data: bytes,
    timeout: float = 2.0,
    read_until_close: bool = False,
    host: str = "127.0.0.1",
    responses: int = 1,
) -> bytes:
    """Send `data` as-is on a new connection and return the bytes received.

    By default reading stops once `responses` complete responses have arrived (HEAD requests
    are recognised from the first bytes of `data`), at end of connection, or after `timeout`
    seconds without it (then whatever arrived is returned). With read_until_close=True it reads
    until the peer closes (or the timeout passes).
    """
    head_request = data[:5] == b"HEAD "
    buf = bytearray()
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if data:
            s.sendall(data)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
            if not read_until_close and _count_complete(bytes(buf), head_request) >= responses:
                break
    return bytes(buf)

