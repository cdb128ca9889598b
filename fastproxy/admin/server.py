"""The admin server: Envoy's administration interface (the subset fastproxy implements).

It runs in the main process on ``bootstrap.admin.address`` as an asyncio server speaking
HTTP/1.1; requests are parsed with picohttpparser through the ``fastproxy._picohttp`` cffi module.

Endpoints and their output formats follow Envoy's:

- ``GET /ready``: ``LIVE`` with 200, or the server state (``PRE_INITIALIZING``, ``INITIALIZING``,
  ``DRAINING``) with 503.
- ``GET /server_info``: JSON shaped like Envoy's ``admin.v3.ServerInfo``.
- ``GET /stats``: ``name: value`` lines sorted by name; ``filter`` (a regular expression, searched
  anywhere in the name), ``usedonly``, ``type`` (All, Counters, Gauges, Histograms, TextReadouts)
  and ``format`` (text, json, prometheus).
- ``GET /stats/prometheus``: Prometheus text exposition with Envoy's default tag extraction.
- ``POST /quitquitquit``: ``OK``, then a graceful shutdown.
- ``GET /`` and ``GET /help``: the list of endpoints.

The ``provider`` object supplies the data:

- ``stats()`` -> iterable of ``(name, kind, value, used)``; kind is ``"counter"`` or ``"gauge"``.
- ``server_state()`` -> ``"LIVE"``, ``"PRE_INITIALIZING"``, ``"INITIALIZING"`` or ``"DRAINING"``.
- ``server_info()`` -> dict, rendered as JSON as it is (keys in the order given).
- ``request_shutdown()``: called once the reply to ``/quitquitquit`` has been written.

Filters use Python's ``re`` syntax rather than RE2; the two agree on the common subset.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import socket
from email.utils import formatdate
from typing import Callable, Iterable, Optional
from urllib.parse import parse_qsl

from fastproxy._picohttp import ffi, lib

log = logging.getLogger("fastproxy.admin")

MAX_HEADERS = 64
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024

# (path, method required or None, description, [(param, description)])
ENDPOINTS = [
    ("/", None, "Admin home page", []),
    ("/help", None, "print out list of admin commands", []),
    ("/quitquitquit", "POST", "exit the server", []),
    ("/ready", None, "print server state, return 200 if LIVE, otherwise return 503", []),
    ("/server_info", None, "print server version/status information", []),
    ("/stats", None, "print server stats", [
        ("usedonly", "Only include stats that have been written by system since restart"),
        ("filter", "Regular expression for filtering stats"),
        ("format", "Format to use; One of (text, json, prometheus)"),
        ("type", "Stat types to include.; One of (All, Counters, Histograms, Gauges, "
                 "TextReadouts)"),
    ]),
    ("/stats/prometheus", None, "print server stats in prometheus format", [
        ("usedonly", "Only include stats that have been written by system since restart"),
        ("filter", "Regular expression for filtering stats"),
    ]),
]

TEXT = "text/plain; charset=UTF-8"
JSON = "application/json"

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def help_text() -> str:
    lines = []
    for path, method, description, params in ENDPOINTS:
        suffix = " (%s)" % method if method else ""
        lines.append("  %s%s: %s\n" % (path, suffix, description))
        for name, text in params:
            lines.append("      %s: %s\n" % (name, text))
    return "".join(lines)


# ---------------------------------------------------------------------------------------------
# Stats rendering

def render_text(stats) -> str:
    return "".join("%s: %d\n" % (name, value) for name, _kind, value in stats)


def render_json(stats) -> str:
    return json.dumps({"stats": [{"name": name, "value": value} for name, _kind, value in stats]},
                      separators=(",", ":"))


# Envoy's default tag extractors for the families fastproxy emits.  Each is matched against the
# full stat name; group 1 is the text removed from the name, group 2 the tag's value.  Tags are
# listed in this order, as Envoy does.
_ADDRESS = r"(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)"
_TAG_VALUE = r"[^.]+"
_TAG_EXTRACTORS = [
    ("envoy_response_code", re.compile(r"_rq(_(\d{3}))$"), None),
    ("envoy_response_code_class", re.compile(r"_rq_((\d))xx$"), None),
    ("envoy_cluster_name", re.compile(r"^cluster\.((%s)\.)(?=.)" % _TAG_VALUE), None),
    ("envoy_http_conn_manager_prefix",
     re.compile(r"^listener\..*?\.http\.((%s)\.)" % _TAG_VALUE), None),
    ("envoy_http_conn_manager_prefix", re.compile(r"^http\.((%s)\.)(?=.)" % _TAG_VALUE), None),
    ("envoy_worker_id",
     re.compile(r"^(?:listener\.(?:%s|%s)\.|server\.|listener_manager\.)worker_((\d+)\.)"
                % (_ADDRESS, _TAG_VALUE)), None),
    ("envoy_listener_address", re.compile(r"^listener\.((%s|%s)\.)" % (_ADDRESS, _TAG_VALUE)),
     "admin"),
]
_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def extract_tags(name: str) -> tuple[str, list[tuple[str, str]]]:
    """Split a stat name into its tag-extracted name and tags, with Envoy's default extractors."""
    tags: list[tuple[str, str]] = []
    cuts: list[tuple[int, int]] = []
    seen: set[str] = set()
    for tag, regex, excluded in _TAG_EXTRACTORS:
        if tag in seen:
            continue
        m = regex.search(name)
        if m is None or m.group(2) == excluded:
            continue
        seen.add(tag)
        tags.append((tag, m.group(2)))
        cuts.append(m.span(1))
    if not cuts:
        return name, tags
    out = []
    pos = 0
    for start, end in sorted(cuts):
        if start < pos:  # overlapping cuts cannot happen with these extractors; be safe anyway
            start = pos
        out.append(name[pos:start])
        pos = max(pos, end)
    out.append(name[pos:])
    return "".join(out), tags


def prometheus_metric_name(extracted: str) -> str:
    return "envoy_" + _INVALID_NAME_CHARS.sub("_", extracted)


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_prometheus(stats) -> str:
    """Prometheus text format as Envoy writes it: counters, then gauges; families sorted by their
    tag-extracted name (so ``cluster.*`` sorts before ``cluster_manager.*``), series within a
    family in stat-name order; ``{}`` for a series without tags."""
    families: dict[str, dict[str, tuple[str, list[tuple[str, str]]]]] = {}
    for name, kind, value in stats:
        extracted, tags = extract_tags(name)
        metric = prometheus_metric_name(extracted)
        labels = ",".join('%s="%s"' % (_INVALID_NAME_CHARS.sub("_", k), _escape_label_value(v))
                          for k, v in tags)
        family = families.setdefault(kind, {}).setdefault(metric, (extracted, []))
        family[1].append((name, "%s{%s} %d\n" % (metric, labels, value)))
    out = []
    for kind in ("counter", "gauge"):
        by_kind = families.get(kind, {})
        for metric in sorted(by_kind, key=lambda m: (by_kind[m][0], m)):
            out.append("# TYPE %s %s\n" % (metric, kind))
            out.extend(line for _name, line in sorted(by_kind[metric][1]))
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Request handling

class Response:
    __slots__ = ("status", "body", "content_type", "after")

    def __init__(self, status: int, body: str | bytes, content_type: str = TEXT,
                 after: Optional[Callable[[], None]] = None):
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.content_type = content_type
        self.after = after


class AdminHandler:
    """Turns (method, path with query) into a Response; no I/O, easy to test."""

    def __init__(self, provider):
        self.provider = provider

    def handle(self, method: str, target: str) -> Response:
        path, _, query = target.partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        if path == "/quitquitquit":
            if method != "POST":
                return Response(405, "Method %s not allowed, POST required." % method)
            return Response(200, "OK\n", after=self.provider.request_shutdown)
        if path in ("/", "/help"):
            return Response(200, "admin commands are:\n" + help_text())
        if path == "/ready":
            state = self.provider.server_state()
            return Response(200 if state == "LIVE" else 503, state + "\n")
        if path == "/server_info":
            return Response(200, json.dumps(self.provider.server_info(), indent=1) + "\n", JSON)
        if path == "/stats":
            return self._stats(params, params.get("format", "text"))
        if path == "/stats/prometheus":
            return self._stats(params, "prometheus")
        return Response(404, "invalid path. admin commands are:\n" + help_text())

    def _stats(self, params: dict, fmt: str) -> Response:
        if fmt not in ("text", "json", "prometheus"):
            return Response(400, "usage: /stats?format=(json|prometheus|text)\n\n")
        kinds = {"All": ("counter", "gauge"), "Counters": ("counter",), "Gauges": ("gauge",),
                 "Histograms": (), "TextReadouts": ()}.get(params.get("type", "All"))
        if kinds is None:
            return Response(400, "invalid type: %s\n" % params.get("type"))
        regex = None
        if params.get("filter"):
            try:
                regex = re.compile(params["filter"])
            except re.error as exc:
                return Response(400, "Invalid regex: %s\n" % exc)
        used_only = "usedonly" in params
        selected = []
        for name, kind, value, used in self.provider.stats():
            if kind not in kinds or (used_only and not used):
                continue
            if regex is not None and regex.search(name) is None:
                continue
            selected.append((name, kind, value))
        selected.sort()
        if fmt == "json":
            return Response(200, render_json(selected), JSON)
        if fmt == "prometheus":
            return Response(200, render_prometheus(selected))
        return Response(200, render_text(selected))


class _Request:
    __slots__ = ("method", "target", "minor_version", "headers")

    def __init__(self, method, target, minor_version, headers):
        self.method = method
        self.target = target
        self.minor_version = minor_version
        self.headers = headers


class _HeadParser:
    """picohttpparser's phr_parse_request over cffi, with reused output cells."""

    def __init__(self):
        self._method = ffi.new("const char **")
        self._method_len = ffi.new("size_t *")
        self._path = ffi.new("const char **")
        self._path_len = ffi.new("size_t *")
        self._minor = ffi.new("int *")
        self._headers = ffi.new("struct phr_header[]", MAX_HEADERS)
        self._num_headers = ffi.new("size_t *")

    def parse(self, data: bytes):
        """(consumed, request) when complete; (0, None) when more bytes are needed; raises
        ValueError on a malformed head."""
        self._num_headers[0] = MAX_HEADERS
        buf = ffi.from_buffer(data)
        n = lib.phr_parse_request(buf, len(data), self._method, self._method_len, self._path,
                                  self._path_len, self._minor, self._headers, self._num_headers, 0)
        if n == -2:
            return 0, None
        if n < 0:
            raise ValueError("malformed request")
        headers = []
        for i in range(self._num_headers[0]):
            h = self._headers[i]
            if h.name == ffi.NULL:
                raise ValueError("header continuation lines are not supported")
            headers.append((ffi.unpack(h.name, h.name_len).decode("latin-1").lower(),
                            ffi.unpack(h.value, h.value_len).decode("latin-1")))
        request = _Request(ffi.unpack(self._method[0], self._method_len[0]).decode("latin-1"),
                           ffi.unpack(self._path[0], self._path_len[0]).decode("latin-1"),
                           self._minor[0], headers)
        del buf
        return n, request


class _ChunkedSkipper:
    """Consumes a chunked request body with phr_decode_chunked (the admin ignores bodies)."""

    def __init__(self):
        self._decoder = ffi.new("struct phr_chunked_decoder *")
        self._decoder.consume_trailer = b"\x01"
        self._size = ffi.new("size_t *")
        self.decoded = 0

    def feed(self, data: bytearray) -> Optional[int]:
        """Decode ``data`` in place; None if the body continues, else the number of bytes at the
        end of ``data`` that follow the body."""
        buf = ffi.from_buffer(data)
        self._size[0] = len(data)
        ret = lib.phr_decode_chunked(self._decoder, buf, self._size)
        if ret == -1:
            raise ValueError("malformed chunked body")
        self.decoded += self._size[0]
        if self.decoded > MAX_BODY_BYTES:
            raise ValueError("request body too large")
        if ret == -2:
            return None
        return ret


class AdminProtocol(asyncio.Protocol):
    def __init__(self, handler: AdminHandler):
        self.handler = handler
        self.parser = _HeadParser()
        self.buffer = bytearray()
        self.transport: Optional[asyncio.Transport] = None
        self.pending: Optional[tuple[_Request, bool]] = None  # request waiting for its body
        self.body_left = 0
        self.chunked: Optional[_ChunkedSkipper] = None
        self.closing = False

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.transport = None

    def data_received(self, data: bytes):
        if self.closing:
            return
        self.buffer += data
        try:
            self._process()
        except ValueError as exc:
            self._reply_error(400, "%s\n" % exc)

    def _process(self):
        while self.buffer and not self.closing:
            if self.pending is not None:
                if not self._skip_body():
                    return
                request, keep_alive = self.pending
                self.pending = None
                self._respond(request, keep_alive)
                continue
            consumed, request = self.parser.parse(bytes(self.buffer))
            if request is None:
                if len(self.buffer) > MAX_HEAD_BYTES:
                    self._reply_error(431, "request headers too large\n")
                return
            del self.buffer[:consumed]
            keep_alive = self._keep_alive(request)
            self._start_body(request)
            if self.body_left or self.chunked is not None:
                self.pending = (request, keep_alive)
                if not self.buffer:
                    return
                continue
            self._respond(request, keep_alive)

    def _start_body(self, request: _Request):
        self.body_left = 0
        self.chunked = None
        for name, value in request.headers:
            if name == "transfer-encoding" and value.strip().lower() == "chunked":
                self.chunked = _ChunkedSkipper()
                return
        for name, value in request.headers:
            if name == "content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    raise ValueError("invalid content-length") from None
                if length < 0:
                    raise ValueError("invalid content-length")
                if length > MAX_BODY_BYTES:
                    raise ValueError("request body too large")
                self.body_left = length

    def _skip_body(self) -> bool:
        """Consume body bytes from the buffer; True once the body is complete."""
        if self.chunked is not None:
            data = bytearray(self.buffer)
            rest = self.chunked.feed(data)
            if rest is None:
                self.buffer.clear()
                return False
            self.buffer = bytearray(self.buffer[len(self.buffer) - rest:]) if rest else bytearray()
            self.chunked = None
            return True
        take = min(self.body_left, len(self.buffer))
        del self.buffer[:take]
        self.body_left -= take
        return self.body_left == 0

    @staticmethod
    def _keep_alive(request: _Request) -> bool:
        connection = ""
        for name, value in request.headers:
            if name == "connection":
                connection = value.lower()
        if request.minor_version == 0:
            return "keep-alive" in connection
        return "close" not in connection

    def _respond(self, request: _Request, keep_alive: bool):
        try:
            response = self.handler.handle(request.method, request.target)
        except Exception:  # a bug in a handler must not take the admin down
            log.exception("admin request %s %s failed", request.method, request.target)
            response = Response(500, "internal error\n")
        self._write(response, keep_alive, head=request.method == "HEAD",
                    minor_version=request.minor_version)
        if response.after is not None:
            asyncio.get_running_loop().call_soon(response.after)

    def _reply_error(self, status: int, body: str):
        self._write(Response(status, body), keep_alive=False)

    def _write(self, response: Response, keep_alive: bool, head: bool = False,
               minor_version: int = 1):
        if self.transport is None:
            return
        lines = [
            "HTTP/1.%d %d %s" % (minor_version, response.status,
                                 _REASONS.get(response.status, "Unknown")),
            "content-type: " + response.content_type,
            "cache-control: no-cache, max-age=0",
            "x-content-type-options: nosniff",
            "date: " + formatdate(usegmt=True),
            "server: envoy",
            "content-length: %d" % len(response.body),
        ]
        if not keep_alive:
            lines.append("connection: close")
        elif minor_version == 0:
            lines.append("connection: keep-alive")
        head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.transport.write(head_bytes if head else head_bytes + response.body)
        if not keep_alive:
            self.closing = True
            self.transport.close()


class AdminServer:
    """The admin listener.  ``await start()`` binds it; ``port`` is the bound port afterwards."""

    def __init__(self, provider, host: str, port: int):
        self.handler = AdminHandler(provider)
        self.host = host
        self.port = port
        self._server: Optional[asyncio.base_events.Server] = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self._server = await loop.create_server(lambda: AdminProtocol(self.handler), sock=sock,
                                                backlog=128)
        self.port = sock.getsockname()[1]

    @property
    def address(self) -> str:
        return ("[%s]:%d" if ":" in self.host else "%s:%d") % (self.host, self.port)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


def stat_rows(names: Iterable[str], kinds: Iterable[str], values: Iterable[int],
              lazy: Optional[Iterable[bool]] = None):
    """Zip a layout's names and kinds with summed values into the rows ``stats()`` returns.
    "Used" is approximated as non-zero: the shared block keeps no written-since-start bit.
    Stats Envoy creates on first use are left out while zero: the per-status counters, and
    those `lazy` (the layout's flags, parallel to `names`) marks."""
    from fastproxy.stats.names import hidden_when_zero
    if lazy is None:
        lazy = itertools.repeat(False)
    return [(n, k, v, v != 0) for n, k, v, z in zip(names, kinds, values, lazy)
            if v != 0 or not (z or hidden_when_zero(n))]
