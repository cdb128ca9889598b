"""Shared machinery of the parity tests: run Envoy and fastproxy side by side, each with its own
set of test origins (so what each proxy forwarded can be told apart), send them the same bytes
and compare normalised answers.

    with ParityPair(config_fn, origin_names=("o1", "o2")) as pair:
        envoy_result, fp_result = pair.exchange(b"GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n")
        assert fp_result.view() == envoy_result.view()

`config_fn(listener_port, admin_port, side)` returns the bootstrap for one proxy; `side.origins`
maps each origin name to a running Origin and `side.extra` holds per-side servers a module
started itself (see `Side.add_server`).
"""
from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field

from helpers import (
    EnvoyProcess,
    FastproxyProcess,
    Origin,
    find_envoy,
    free_ports,
    parse_responses,
)
from helpers.net import IncompleteResponse

# Values that legitimately differ between two runs; names, order and all other values are kept.
_VARIABLE_HEADERS = {
    "date": "<date>",
    "x-request-id": "<request-id>",
    "x-envoy-upstream-service-time": "<service-time>",
}


def normalise_headers(headers):
    out = []
    for name, value in headers:
        repl = _VARIABLE_HEADERS.get(name.lower())
        out.append((name, repl if repl is not None else value))
    return out


_HEAD_LINE = re.compile(rb"^([!#$%&'*+.^_`|~0-9A-Za-z-]+)(:[ \t]*)(.*)$")


def normalise_raw_head(raw: bytes) -> bytes:
    """A forwarded request head with variable header values replaced (bytes otherwise kept)."""
    lines = raw.split(b"\r\n")
    out = [lines[0]]
    for line in lines[1:]:
        m = _HEAD_LINE.match(line)
        if m:
            repl = _VARIABLE_HEADERS.get(m.group(1).decode("latin-1").lower())
            if repl is not None:
                line = m.group(1) + m.group(2) + repl.encode()
        out.append(line)
    return b"\r\n".join(out)


def normalise_echo(body: bytes):
    """If `body` is the origin's JSON echo, return it as a dict with the per-connection values
    (peer port, origin connection id and sequence: upstream connection reuse depends on
    timing) and variable header values replaced; else None."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or "conn_id" not in data or "peer_port" not in data:
        return None
    data["peer_port"] = "<port>"
    data["conn_id"] = "<conn>"
    data["conn_seq"] = "<seq>"
    data["headers"] = [list(h) for h in normalise_headers([tuple(h) for h in data["headers"]])]
    return data


@dataclass
class Response:
    status: int
    headers: list
    body: bytes

    def view(self):
        echo = normalise_echo(self.body)
        headers = normalise_headers(self.headers)
        if echo is not None:
            # the echo's length depends on the (normalised) connection values
            headers = [(k, "<len>") if k.lower() == "content-length" else (k, v) for k, v in headers]
            return (self.status, headers, echo)
        return (self.status, headers, self.body)


@dataclass
class Received:
    """One request an origin of the side recorded."""

    origin: str
    raw_head: bytes
    body: bytes

    def view(self):
        return (self.origin, normalise_raw_head(self.raw_head), self.body)


@dataclass
class Result:
    proxy: str
    raw: bytes
    responses: list = field(default_factory=list)  # [Response]
    parse_error: str | None = None
    closed: bool = False
    received: list = field(default_factory=list)  # [Received]

    @property
    def response(self) -> Response | None:
        return self.responses[0] if self.responses else None

    @property
    def status(self):
        return self.response.status if self.response else None

    def view(self, received: bool = True, closed: bool = True):
        """Everything compared between the two proxies."""
        v = {
            "responses": [r.view() for r in self.responses],
            "parse_error": self.parse_error,
        }
        if closed:
            v["closed"] = self.closed
        if received:
            v["received"] = [r.view() for r in self.received]
        return v


def _count_complete(data: bytes, head: bool) -> int:
    try:
        return len(parse_responses(data, head_request=head))
    except (IncompleteResponse, ValueError):
        # count what parses completely (parse_responses stops at the first incomplete one)
        n, pos = 0, 0
        from helpers.net import _parse_one  # the helper's own single-response parser
        while pos < len(data):
            try:
                pos = _parse_one(data, pos, head, eof=False)[3]
            except (IncompleteResponse, ValueError):
                break
            n += 1
        return n


KEEP_ALIVE_CLOSE_WAIT = 0.3


def converse(port: int, data, *, responses: int = 1, head: bool | None = None,
             timeout: float = 3.0, close_wait: float = 0.0, pause: float = 0.0):
    """Send `data` (bytes, or a list of bytes sent as separate writes `pause` seconds apart) on
    a new connection. Read until `responses` complete responses arrived, the peer closed, or
    `timeout`. Then wait up to `close_wait` seconds more to see whether the peer closes.
    Returns (raw bytes, closed)."""
    parts = [data] if isinstance(data, (bytes, bytearray)) else list(data)
    if head is None:
        head = bytes(parts[0][:5]) == b"HEAD "
    buf = bytearray()
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, part in enumerate(parts):
            if i and pause:
                time.sleep(pause)
            try:
                s.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        deadline = time.monotonic() + timeout
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
                closed = True
                break
            if not chunk:
                closed = True
                break
            buf += chunk
            if _count_complete(bytes(buf), head) >= responses:
                break
        if not closed and close_wait > 0:
            # A proxy that means to close says so ("connection: close"), or answered nothing
            # complete; otherwise a short wait is enough to see an unexpected close.
            if buf and _count_complete(bytes(buf), head) >= responses and b"connection: close" not in buf.lower():
                close_wait = min(close_wait, KEEP_ALIVE_CLOSE_WAIT)
            deadline = time.monotonic() + close_wait
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
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                buf += chunk
    return bytes(buf), closed


class RawServer:
    """A tiny TCP server that, for each connection, reads once (up to 64 KiB, 2 s) and then
    sends `reply` and closes. Used as an upstream answering with garbage."""

    def __init__(self, reply: bytes):
        self.reply = reply
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.address = ("127.0.0.1", self.port)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            self.connections += 1
            with conn:
                conn.settimeout(2.0)
                try:
                    conn.recv(65536)
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class Side:
    """One proxy with its own origins."""

    def __init__(self, name: str):
        self.name = name
        self.origins: dict[str, Origin] = {}
        self.extra: dict[str, object] = {}
        self.proxy = None

    @property
    def port(self) -> int:
        return self.proxy.port

    def listener_port(self, index: int) -> int:
        return self.proxy.listener_ports[index]

    def clear(self):
        for o in self.origins.values():
            o.clear()

    def received(self) -> list:
        items = []
        for name, o in self.origins.items():
            for r in list(o.requests):
                items.append((r.received_at, Received(name, r.raw_head, r.body)))
        items.sort(key=lambda t: t[0])
        return [r for _, r in items]

    def stats(self, filter=None):
        return self.proxy.stats(filter)


class ParityPair:
    """Envoy and fastproxy, each with its own origins named `origin_names`, both configured by
    `config_fn(listener_port, admin_port, side)`. `servers` maps a name to a factory returning a
    context manager with `.address` (one instance per side, in `side.extra[name]`)."""

    def __init__(self, config_fn, origin_names=("o1",), servers=None, fastproxy_kwargs=None):
        self.config_fn = config_fn
        self.origin_names = origin_names
        self.servers = servers or {}
        self.fastproxy_kwargs = fastproxy_kwargs or {}
        self.envoy = Side("envoy")
        self.fastproxy = Side("fastproxy")
        self._stack = contextlib.ExitStack()

    @property
    def sides(self):
        return (self.envoy, self.fastproxy)

    def __enter__(self):
        try:
            envoy_bin = find_envoy()
            for side in self.sides:
                for n in self.origin_names:
                    side.origins[n] = self._stack.enter_context(Origin())
                for n, factory in self.servers.items():
                    side.extra[n] = self._stack.enter_context(factory())
            e_listen, e_admin, f_listen, f_admin = free_ports(4)
            self.envoy.proxy = self._stack.enter_context(
                EnvoyProcess(self.config_fn(e_listen, e_admin, self.envoy), e_admin, envoy_bin=envoy_bin))
            self.fastproxy.proxy = self._stack.enter_context(
                FastproxyProcess(self.config_fn(f_listen, f_admin, self.fastproxy), 1,
                                 admin_port=f_admin, **self.fastproxy_kwargs))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc):
        self._stack.close()

    def exchange_one(self, side: Side, data, *, responses: int = 1, settle: float = 0.0,
                     listener: int = 0, **kw) -> Result:
        side.clear()
        raw, closed = converse(side.listener_port(listener), data, responses=responses, **kw)
        if settle:
            time.sleep(settle)
        res = Result(side.name, raw, closed=closed)
        _parse_into(res, raw, kw.get("head") or False)
        res.received = side.received()
        return res

    def exchange(self, data, **kw):
        """Send the same bytes to both; return (envoy Result, fastproxy Result)."""
        if isinstance(data, (bytes, bytearray)) and "head" not in kw:
            kw["head"] = bytes(data[:5]) == b"HEAD "
        # both at once: waits (timeouts, delayed closes) overlap
        out = [None, None]
        errors = []

        def run(i, side):
            try:
                out[i] = self.exchange_one(side, data, **kw)
            except BaseException as e:  # re-raised below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i, side)) for i, side in enumerate(self.sides)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if errors:
            raise errors[0]
        return tuple(out)


def exchange_many(pair: ParityPair, cases: dict, *, workers: int = 16, **kw) -> dict:
    """Send each case's bytes to both proxies, all cases at once (each on its own connection),
    and return {name: (envoy Result, fastproxy Result)}. Requests the origins receive are
    attributed to a case by the marker `case.<name>` somewhere in their head, so the cases
    must carry it (e.g. in the path) to be matched with what was forwarded."""
    from concurrent.futures import ThreadPoolExecutor

    for side in pair.sides:
        side.clear()

    def one(item):
        (name, data), side = item
        raw, closed = converse(side.listener_port(0), data, **kw)
        res = Result(side.name, raw, closed=closed)
        _parse_into(res, raw, bool(kw.get("head")))
        return name, side.name, res

    jobs = [((name, data), side) for name, data in cases.items() for side in pair.sides]
    out: dict = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for name, side_name, res in pool.map(one, jobs):
            out.setdefault(name, {})[side_name] = res
    time.sleep(0.1)
    for side in pair.sides:
        received = side.received()
        for name in cases:
            marker = b"case." + name.encode() + b" "
            out[name][side.name].received = [r for r in received if marker in r.raw_head.split(b"\r\n", 1)[0] + b" "]
    return {name: (v["envoy"], v["fastproxy"]) for name, v in out.items()}


def _parse_into(res: Result, raw: bytes, head: bool) -> None:
    from helpers.net import _parse_one
    try:
        res.responses = [Response(*r) for r in parse_responses(raw, head_request=head)] if raw else []
    except (IncompleteResponse, ValueError) as e:
        res.parse_error = f"{type(e).__name__}: {e}"
        pos = 0
        while pos < len(raw):
            try:
                st, hs, body, pos = _parse_one(raw, pos, head, eof=False)
            except (IncompleteResponse, ValueError):
                break
            res.responses.append(Response(st, hs, body))


def describe(e: Result, f: Result) -> str:
    return (f"\n--- envoy raw ({len(e.raw)} bytes, closed={e.closed}):\n{e.raw[:1500]!r}"
            f"\n--- fastproxy raw ({len(f.raw)} bytes, closed={f.closed}):\n{f.raw[:1500]!r}"
            f"\n--- envoy origin got: {[r.view() for r in e.received]!r}"
            f"\n--- fastproxy origin got: {[r.view() for r in f.received]!r}")


def assert_same(pair: ParityPair, data, *, received: bool = True, closed: bool | None = None, **kw):
    """Send `data` to both proxies and assert the normalised results are equal. Returns them.
    Whether the connection got closed is compared when `close_wait` (seconds to wait for the
    close after the last response) is given, or when closed=True."""
    if closed is None:
        closed = bool(kw.get("close_wait"))
    e, f = pair.exchange(data, **kw)
    assert f.view(received, closed) == e.view(received, closed), describe(e, f)
    return e, f


def req(method="GET", target="/", host="example.com", headers=(), body=b"", version="HTTP/1.1") -> bytes:
    """Serialise a request exactly (no header added except Host when `host` is not None)."""
    lines = [f"{method} {target} {version}".encode("latin-1")]
    if host is not None:
        lines.append(b"Host: " + host.encode("latin-1"))
    for k, v in headers:
        lines.append(f"{k}: {v}".encode("latin-1"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def add_listener(bootstrap: dict, name: str, port: int, route_config: dict, stat_prefix: str) -> None:
    """Append a second HTTP listener (a copy of the first one's connection manager with another
    route configuration and stat prefix) on `port`."""
    import copy
    first = bootstrap["static_resources"]["listeners"][0]
    lst = copy.deepcopy(first)
    lst["name"] = name
    lst["address"] = address("127.0.0.1", port)
    hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"] = route_config
    hcm["stat_prefix"] = stat_prefix
    bootstrap["static_resources"]["listeners"].append(lst)


def address(host, port):
    return {"socket_address": {"address": host, "port_value": int(port)}}
