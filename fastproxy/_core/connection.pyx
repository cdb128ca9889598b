"""One worker's data plane: HTTP/1.1 downstream connections, streams, upstream pool.

A downstream connection owns an input buffer and at most one active stream (HTTP/1 answers in
order, so pipelined requests wait, unparsed, in the buffer).  A request head is parsed in place
(http1), routed (router), a host picked (lb), and the upstream head is serialised into the worker's
scratch buffer in one pass; the only per-request Python objects on the common path are the bytes
written to each transport.  Bodies stream chunk by chunk; each side pauses the other's reading
when its write buffer passes the per-connection buffer limit.

Design notes: docs/architecture.md.
"""
import asyncio
import socket

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from libc.stdint cimport int64_t, uint64_t, uint32_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memchr, memcmp, strcmp

from fastproxy._core.includes.picohttpparser cimport phr_header
from fastproxy._core.http1 cimport (
    RequestHead, ResponseHead, BodyDecoder, parse_request_head, parse_response_head,
    body_decoder_init, body_decode, is_hop_by_hop, is_hop_by_hop_name, name_eq,
    PARSE_INCOMPLETE, PARSE_ERROR, PARSE_TOO_LARGE, PARSE_NOT_IMPLEMENTED, PARSE_TOO_MANY_HEADERS,
    BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_EOF,
)
from fastproxy._core.http1 cimport find_header
from fastproxy._core.router cimport (
    RouteTable, RouteDecision, HeaderOps, RouteEntry,
    ACTION_NONE, ACTION_ROUTE, ACTION_REDIRECT, ACTION_DIRECT_RESPONSE, ACTION_NO_CLUSTER,
)
from fastproxy._core.lb cimport LoadBalancer
from fastproxy._core.http2 cimport h2_preface_state, H2_PREFACE_NO, H2_PREFACE_PARTIAL
from fastproxy._core.stats cimport *
from fastproxy._core.hoststate cimport (
    HostState, LOCAL_CONNECT_FAILED, LOCAL_CONNECT_TIMEOUT, LOCAL_RESET, LOCAL_REQUEST_TIMEOUT)
from fastproxy._core.breakers cimport CircuitBreakers
from fastproxy._core.ratelimit cimport RequestFilters
from fastproxy._core.accesslog cimport (
    AccessLog, AccessLogEntry, RF_UH, RF_UT, RF_UF, RF_UC, RF_UO, RF_NR, RF_RL, RF_DC, RF_URX,
    RF_SI, RF_DPE, RF_DT, RF_UPE, RF_NC)

import time as _time
import struct as _struct
from binascii import a2b_base64, b2a_base64, Error as BinasciiError
from fastproxy._core.router import RouteTable as _RouteTable
from fastproxy._core.lb import LoadBalancer as _LoadBalancer
from fastproxy._core.stats import StatsSlot as _StatsSlot
from fastproxy._core.hoststate import make_host_state
from fastproxy._core.breakers import make_circuit_breakers
from fastproxy._core.ratelimit import make_request_filters

# Downstream states
cdef enum:
    S_HEAD = 0      # waiting for a request head
    S_BODY = 1      # forwarding the request body
    S_WAIT = 2      # request complete, response in progress; input waits in the buffer
    S_TUNNEL = 3    # upgraded: bytes pass both ways untouched
    S_CLOSED = 4

cdef bytes CRLF = b"\r\n"
cdef bytes LAST_CHUNK = b"0\r\n\r\n"
cdef bytes CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"

# Envoy's reason phrases (CodeUtility::toString).
REASONS = {
    100: "Continue", 101: "Switching Protocols", 102: "Processing", 103: "Early Hints",
    200: "OK", 201: "Created", 202: "Accepted", 203: "Non-Authoritative Information",
    204: "No Content", 205: "Reset Content", 206: "Partial Content", 207: "Multi-Status",
    208: "Already Reported", 226: "IM Used",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Found", 303: "See Other",
    304: "Not Modified", 305: "Use Proxy", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 409: "Conflict", 410: "Gone",
    411: "Length Required", 412: "Precondition Failed", 413: "Payload Too Large",
    414: "URI Too Long", 415: "Unsupported Media Type", 416: "Range Not Satisfiable",
    417: "Expectation Failed", 421: "Misdirected Request", 422: "Unprocessable Entity",
    423: "Locked", 424: "Failed Dependency", 425: "Too Early", 426: "Upgrade Required",
    428: "Precondition Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
    506: "Variant Also Negotiates", 507: "Insufficient Storage", 508: "Loop Detected",
    510: "Not Extended", 511: "Network Authentication Required",
}
# Pre-built status lines, indexed by status code.
cdef list STATUS_LINES = [None] * 1000
for _code in range(100, 1000):
    STATUS_LINES[_code] = ("HTTP/1.1 %d %s\r\n" % (_code, REASONS.get(_code, "Unknown"))).encode()

# Local reply bodies (Envoy's texts).
cdef bytes BODY_BAD_REQUEST = b"Bad Request"
cdef bytes BODY_UPGRADE_REQUIRED = b"Upgrade Required"
cdef bytes BODY_TOO_LARGE = b"Request Header Fields Too Large"
cdef bytes BODY_NOT_IMPLEMENTED = b"Not Implemented"
cdef bytes BODY_NO_HEALTHY = b"no healthy upstream"
cdef bytes BODY_TIMEOUT = b"upstream request timeout"
cdef bytes BODY_CONNECT_PREFIX = b"upstream connect error or disconnect/reset before headers. reset reason: "
cdef bytes BODY_STREAM_TIMEOUT = b"stream timeout"
cdef bytes BODY_REQUEST_TIMEOUT = b"request timeout"
cdef bytes BODY_DURATION_TIMEOUT = b"downstream duration timeout"
cdef bytes BODY_PAYLOAD_TOO_LARGE = b"Payload Too Large"
cdef bytes BODY_OVERFLOW = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
cdef list OVERLOADED = [(b"x-envoy-overloaded", b"true")]
cdef object _struct_frame = _struct.Struct(">BI")   # a gRPC frame header


# Why an attempt failed (for retry_on)
cdef enum:
    FAIL_CONNECT = 1
    FAIL_RESET = 2
    FAIL_PER_TRY_TIMEOUT = 3
    FAIL_REFUSED = 4        # the upstream refused the stream (HTTP/2 REFUSED_STREAM)

cdef frozenset RETRY_ON_CONNECT = frozenset(["5xx", "gateway-error", "reset", "connect-failure",
                                             "reset-before-request"])
cdef frozenset RETRY_ON_RESET = frozenset(["5xx", "gateway-error", "reset"])
cdef frozenset RETRY_ON_REFUSED = frozenset(["5xx", "gateway-error", "reset", "refused-stream"])
cdef frozenset RETRY_ON_PER_TRY = frozenset(["5xx", "gateway-error"])


DEF_WHEEL_SLOTS = 256
cdef double WHEEL_TICK = 0.01



# ---------------------------------------------------------------------------------------------
# Output buffer: the upstream request head and downstream response head are built here.

cdef int ob_reserve(OutBuf *b, size_t extra) except -1:
    cdef size_t need = b.length + extra
    cdef size_t cap
    cdef char *p
    if need <= b.capacity:
        return 0
    cap = b.capacity * 2 if b.capacity else 4096
    while cap < need:
        cap *= 2
    p = <char *>realloc(b.data, cap)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.capacity = cap
    return 0


cdef inline int ob_put(OutBuf *b, const char *s, size_t n) except -1:
    if b.length + n > b.capacity:
        ob_reserve(b, n)
    memcpy(b.data + b.length, s, n)
    b.length += n
    return 0


cdef inline int ob_put_bytes(OutBuf *b, bytes s) except -1:
    return ob_put(b, PyBytes_AS_STRING(s), <size_t>PyBytes_GET_SIZE(s))


cdef inline int ob_put_lower(OutBuf *b, const char *s, size_t n) except -1:
    cdef size_t i
    cdef char c
    if b.length + n > b.capacity:
        ob_reserve(b, n)
    for i in range(n):
        c = s[i]
        if c >= 65 and c <= 90:
            c = c + 32
        b.data[b.length + i] = c
    b.length += n
    return 0


cdef inline int ob_put_int(OutBuf *b, int64_t v) except -1:
    cdef char tmp[24]
    cdef int i = 24
    cdef bint neg = v < 0
    if neg:
        v = -v
    if v == 0:
        i -= 1
        tmp[i] = 48
    while v > 0:
        i -= 1
        tmp[i] = 48 + <char>(v % 10)
        v //= 10
    if neg:
        i -= 1
        tmp[i] = 45
    return ob_put(b, tmp + i, 24 - i)


cdef inline int ob_put_hex(OutBuf *b, uint64_t v) except -1:
    cdef char tmp[20]
    cdef int i = 20
    cdef const char *digits = b"0123456789abcdef"
    if v == 0:
        i -= 1
        tmp[i] = 48
    while v > 0:
        i -= 1
        tmp[i] = digits[v & 15]
        v >>= 4
    return ob_put(b, tmp + i, 20 - i)


cdef int ob_put_headers(OutBuf *b, list headers) except -1:
    """(name, value) pairs as header lines."""
    for name, value in headers:
        ob_put_bytes(b, name)
        ob_put(b, b": ", 2)
        ob_put_bytes(b, value)
        ob_put(b, b"\r\n", 2)
    return 0


cdef inline bytes ob_take(OutBuf *b):
    cdef bytes out = PyBytes_FromStringAndSize(b.data, b.length)
    b.length = 0
    return out


cdef inline bint lit_eq(const char *name, size_t n, const char *lower, size_t m) noexcept nogil:
    return name_eq(name, n, lower, m)


cdef bytes chunk_frame(const char *data, size_t n):
    """One chunk of a chunked body: size line, data, CRLF."""
    cdef OutBuf b
    b.data = NULL
    b.length = 0
    b.capacity = 0
    try:
        ob_reserve(&b, n + 24)
        ob_put_hex(&b, n)
        ob_put(&b, b"\r\n", 2)
        ob_put(&b, data, n)
        ob_put(&b, b"\r\n", 2)
        return PyBytes_FromStringAndSize(b.data, b.length)
    finally:
        free(b.data)


# ---------------------------------------------------------------------------------------------

cdef class ListenerRuntime:
    def __init__(self, Worker worker, model, int listener_base, int http_base):
        hcm = model.hcm
        self.worker = worker
        self.model = model
        self.routes = _RouteTable(hcm.route_config)
        self.listener_base = listener_base
        self.http_base = http_base
        self.max_header_bytes = hcm.max_request_headers_kb * 1024
        self.use_remote_address = hcm.use_remote_address
        self.xff_num_trusted_hops = hcm.xff_num_trusted_hops
        self.generate_request_id = hcm.generate_request_id
        self.idle_timeout = hcm.idle_timeout_ms / 1000.0
        self.stream_idle_timeout = hcm.stream_idle_timeout_ms / 1000.0
        self.request_timeout = hcm.request_timeout_ms / 1000.0
        self.max_stream_duration = hcm.max_stream_duration_ms / 1000.0
        idles = [r.route.idle_timeout_ms for vh in hcm.route_config.virtual_hosts
                 for r in vh.routes if r.route is not None and r.route.idle_timeout_ms]
        self.min_route_idle = min(idles) / 1000.0 if idles else 0
        self.buffer_limit = model.per_connection_buffer_limit_bytes
        self.server_name = hcm.server_name.encode()
        self.enable_trailers = getattr(hcm, "enable_trailers", False)
        self.upgrade_types = frozenset(u.encode() for u in hcm.upgrade_types)
        self.codec = {"AUTO": 0, "HTTP1": 1, "HTTP2": 2}.get(hcm.codec_type, 0)
        self.filters = make_request_filters(hcm, worker.shm_path, worker.index)
        self.grpc_web = getattr(hcm, "grpc_web", False)
        self.grpc_web_after_rl = getattr(hcm, "grpc_web_after_ratelimit", False)
        gs = getattr(hcm, "grpc_stats", None)
        self.grpc_stats = gs is not None
        self.gs_before_rl = gs is not None and gs.before_ratelimit
        self.gs_after_gw = gs is not None and gs.after_grpc_web
        self.gs_allow = None
        if gs is not None and gs.allowlist is not None:
            index = worker.layout.grpc_method_index
            self.gs_allow = {("%s/%s" % m).encode(): index[m] for m in gs.allowlist}
        self.access_logs = None
        self.log_wanted = ()
        if getattr(hcm, "access_logs", None):
            from fastproxy._core.accesslog import make_access_logs
            self.access_logs = make_access_logs(hcm)
            if self.access_logs:
                wanted = set()
                for log in self.access_logs:
                    wanted.update((<AccessLog>log).wanted)
                self.log_wanted = tuple(sorted(w.encode("latin-1") if isinstance(w, str) else w
                                               for w in wanted))
        self.server = None

    def protocol_factory(self):
        if self.codec == 2:
            from fastproxy._core.h2downstream import H2DownstreamConnection
            return H2DownstreamConnection(self)
        return DownstreamConnection(self)


cdef class UpstreamPool:
    cdef UpstreamConnection ready_stream(self, int host):
        return None

    cdef UpstreamConnection open_stream(self, int host, int priority):
        raise NotImplementedError

    cdef void set_hosts(self, list hosts):
        pass

    cdef void close(self):
        pass


cdef class ClusterRuntime:
    def __init__(self, Worker worker, model, int base):
        self.worker = worker
        self.name = model.name
        self.model = model
        self.base = base
        self.connect_timeout = model.connect_timeout_ms / 1000.0
        self.buffer_limit = model.per_connection_buffer_limit_bytes
        self.keepalive = model.tcp_keepalive
        self.dns_task = None
        self.hosts = []
        self.host_authority = []
        self.idle = []
        self.waiting = []
        self.priorities = []
        self.conn_count = {}
        self.lb = None
        self.state = make_host_state(model, worker.shm_path, worker.index)
        self.breakers = make_circuit_breakers(model, worker.shm_path, worker.index)
        self.grpc_base = getattr(worker.layout, "grpc_bases", {}).get(model.name, -1)
        self.grpc_method_bases = getattr(worker.layout, "grpc_method_bases", {}).get(model.name)
        self.h2pool = None
        if getattr(model, "http2", None) is not None:
            from fastproxy._core.h2upstream import H2Pool
            self.h2pool = H2Pool(self)

    async def resolve_initial(self):
        """Fill the host set: STATIC from the config, DNS clusters by resolving (and refreshing)."""
        m = self.model
        if m.type == "STATIC":
            self.set_hosts([(e.address.address, e.address.port) for e in m.endpoints],
                           [e.weight for e in m.endpoints], [e.priority for e in m.endpoints])
            return
        await self._resolve()
        self.dns_task = self.worker.loop.create_task(self._refresh_loop())

    async def _refresh_loop(self):
        while True:
            await asyncio.sleep(max(self.model.dns_refresh_rate_ms, 1) / 1000.0)
            try:
                await self._resolve()
            except Exception:
                pass  # keep the last good host set, as Envoy does on a failed refresh

    async def _resolve(self):
        m = self.model
        loop = self.worker.loop
        family = {"V4_ONLY": socket.AF_INET, "V6_ONLY": socket.AF_INET6}.get(
            m.dns_lookup_family, socket.AF_UNSPEC)
        hosts, weights, priorities, localities = [], [], [], []
        for e in m.endpoints:
            try:
                infos = await loop.getaddrinfo(e.address.address, e.address.port, family=family,
                                               type=socket.SOCK_STREAM)
            except OSError:
                infos = []
            addrs = []
            for fam, _, _, _, sa in infos:
                if (sa[0], sa[1]) not in addrs:
                    addrs.append((sa[0], sa[1]))
            if m.dns_lookup_family in ("AUTO", "V4_PREFERRED"):
                v4 = [a for a in addrs if ":" not in a[0]]
                if m.dns_lookup_family == "V4_PREFERRED" and v4:
                    addrs = v4
                elif m.dns_lookup_family == "AUTO":
                    v6 = [a for a in addrs if ":" in a[0]]
                    addrs = v6 or v4
            if m.type == "LOGICAL_DNS":
                addrs = addrs[:1]
            for a in addrs:
                hosts.append(a)
                weights.append(e.weight)
                priorities.append(e.priority)
                localities.append(getattr(e, "locality_index", 0))
            if m.type == "LOGICAL_DNS":
                break
        self.set_hosts(hosts, weights, priorities, localities)

    def set_hosts(self, list hosts, list weights, list priorities, list localities=None):
        """Install a new host set (start-up, DNS refresh); idle connections to gone hosts close."""
        cdef list old_idle = self.idle
        old_hosts = self.hosts
        keep = {}
        for i, h in enumerate(old_hosts):
            keep[h] = old_idle[i]
        self.hosts = list(hosts)
        self.host_authority = [
            (("[%s]:%d" if ":" in a else "%s:%d") % (a, p)).encode() for a, p in hosts]
        self.idle = [keep.pop(h, []) for h in hosts]
        self.priorities = list(priorities)
        old_waiting = {old_hosts[i]: q for i, q in enumerate(self.waiting) if i < len(old_hosts)}
        self.waiting = [old_waiting.pop(h, []) for h in hosts]
        for q in old_waiting.values():
            for st in q:
                (<Stream>st).downstream._upstream_failed(503, BODY_NO_HEALTHY)
        for conns in keep.values():
            for c in conns:
                (<UpstreamConnection>c)._close_transport()
        if self.state is not None:
            self.state.set_hosts(list(hosts))
        if self.h2pool is not None:
            self.h2pool.set_hosts(self.hosts)
        changed = old_hosts != self.hosts
        if hosts:
            opts = dict(self.model_lb_options())
            if self.model.type != "STATIC":
                opts["host_keys"] = list(self.host_authority)  # hash keys as Envoy forms them
                if localities is not None and "locality_weights" in opts:
                    opts["localities"] = localities  # per resolved host (locality weighted lb)
            # the old balancer hands over when each host joined (slow_start_config)
            self.lb = _LoadBalancer(self.model.lb_policy, weights, priorities,
                                    self.worker.random(), previous=self.lb,
                                    host_ids=self.hosts, **opts)
            if self.state is not None:
                self.state.poll(self.lb)
        else:
            self.lb = None
        v = self.worker.values
        if self.worker.index == 0:
            # gauges of the cluster, not of the worker: one worker writes them (the admin sums
            # every slot); the host state keeps membership_healthy when it tracks health
            v[self.base + CLUSTER_MEMBERSHIP_TOTAL] = len(hosts)
            if self.state is None:
                v[self.base + CLUSTER_MEMBERSHIP_HEALTHY] = len(hosts)
            if changed and old_hosts:
                v[self.base + CLUSTER_MEMBERSHIP_CHANGE] += 1

    def model_lb_options(self):
        """Extra LoadBalancer arguments from the cluster's config (lb_config and friends)."""
        return getattr(self.model, "lb_options", None) or {}

    cdef UpstreamConnection get_idle(self, int host):
        """An idle pooled connection to `host`, or None."""
        cdef list idle = <list>self.idle[host]
        cdef UpstreamConnection c
        if self.h2pool is not None:
            return self.h2pool.ready_stream(host)
        while idle:
            c = <UpstreamConnection>idle.pop()
            if not c.closed:
                return c
        return None

    cdef UpstreamConnection new_connection(self, int host, int priority):
        """A new connection to `host`, or None when max_connections says wait.  As in Envoy, a
        host without any connection always gets one."""
        cdef UpstreamConnection c
        cdef bint counted = False
        if self.h2pool is not None:
            return self.h2pool.open_stream(host, priority)
        address = self.hosts[host]
        if self.breakers is not None:
            counted = self.breakers.try_connection(priority)
            if not counted and self.conn_count.get(address, 0) > 0:
                self.worker.values[self.base + CLUSTER_UPSTREAM_CX_OVERFLOW] += 1
                return None
        c = UpstreamConnection(self, host)
        c.counted = counted
        c.priority = priority
        self.conn_count[address] = self.conn_count.get(address, 0) + 1
        c.start_connect()
        return c

    cdef void release(self, UpstreamConnection c):
        cdef Stream s
        if self.h2pool is not None:
            c._close_transport()  # an HTTP/2 stream: done (its connection stays in the pool)
            return
        if c.closed or c.host >= len(self.idle) or self.hosts[c.host] != c.address:
            c._close_transport()
            return
        c.state = U_IDLE
        c.stream = None
        cdef list q = <list>self.waiting[c.host]
        if q:
            # A request waits for a connection to this host: it gets this one.
            s = <Stream>q.pop(0)
            s.waiting = False
            s.downstream._attach_upstream(c)
            return
        (<list>self.idle[c.host]).append(c)

    cdef void connection_closed(self, UpstreamConnection c):
        """A connection is gone: free its breaker slot, and start one for a waiting request."""
        cdef Stream s
        cdef UpstreamConnection n
        if c.accounted:
            return
        c.accounted = True
        n_left = self.conn_count.get(c.address, 1) - 1
        if n_left > 0:
            self.conn_count[c.address] = n_left
        else:
            self.conn_count.pop(c.address, None)
        if c.counted:
            c.counted = False
            self.breakers.release_connection(c.priority)
        if c.host < len(self.waiting) and self.waiting[c.host] and self.hosts[c.host] == c.address:
            n = self.new_connection(c.host, (<Stream>(<list>self.waiting[c.host])[0]).priority)
            if n is not None:
                s = <Stream>(<list>self.waiting[c.host]).pop(0)
                s.waiting = False
                s.downstream._attach_upstream(n)


cdef class Stream:
    def __cinit__(self):
        self.pending_writes = None
        self.deadline = 0
        self.gs_base = -1

    cdef void reset(self):
        self.upstream = None
        self.cluster = None
        self.host = -1
        self.request_complete = False
        self.response_started = False
        self.response_complete = False
        self.upgrade = False
        self.downstream_chunked = False
        self.status = 0
        self.deadline = 0
        self.pending_writes = None
        self.request_remaining = 0
        self.request_chunked = False
        self.waiting = False
        self.pending = False
        self.priority = 0
        self.holds_request = False
        self.response_headers = None
        self.retry = None
        self.retry_on = None
        self.retries_left = 0
        self.attempt = 1
        self.per_try_ms = 0
        self.head_bytes = None
        self.replay = None
        self.replay_size = 0
        self.tried = None
        self.per_try_timer = None
        self.per_try_idle_timer = None
        self.duration_timer = None
        self.hedges = None
        self.retry_timer = None
        self.flags = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.log_headers = None
        self.upstream_address = None
        self.flag_order = None
        self.fail_flag = 0
        self.holds_retry = False
        self.internal = -1
        self.request_trailers = None
        self.response_trailers = None
        self.grpc = False
        self.grpc_status = -1
        self.grpc_timeout = -1
        self.grpc_web = 0
        self.gw = None
        self.gs_base = -1


# ---------------------------------------------------------------------------------------------

cdef class DownstreamConnection:
    def __init__(self, ListenerRuntime listener):
        self.listener = listener
        self.worker = listener.worker
        self.buf = bytearray()
        self.state = S_HEAD
        self.stream = Stream()
        self.stream.downstream = self
        self.stream.decision = RouteDecision()
        self.closing = False
        self.read_paused = False
        self.write_paused = False
        self.remote_ip = None
        self.transport = None

    # -- asyncio protocol -----------------------------------------------------------------------
    def connection_made(self, transport):
        cdef ListenerRuntime lr = self.listener
        cdef int64_t *v = self.worker.values
        self.transport = transport
        self.write = transport.write
        self.last_activity = now()
        transport.set_write_buffer_limits(high=lr.buffer_limit)
        set_decision_addresses(self.stream.decision, transport)
        self.worker.connections.add(self)
        v[lr.listener_base + LISTENER_DOWNSTREAM_CX_TOTAL] += 1
        v[lr.listener_base + LISTENER_DOWNSTREAM_CX_ACTIVE] += 1
        v[lr.http_base + HTTP_DOWNSTREAM_CX_TOTAL] += 1
        v[lr.http_base + HTTP_DOWNSTREAM_CX_ACTIVE] += 1
        v[lr.http_base + HTTP_DOWNSTREAM_CX_HTTP1_TOTAL] += 1
        v[lr.http_base + HTTP_DOWNSTREAM_CX_HTTP1_ACTIVE] += 1

    def data_received(self, bytes data):
        self.worker.values[self.listener.http_base + HTTP_DOWNSTREAM_CX_RX_BYTES_TOTAL] += \
            PyBytes_GET_SIZE(data)
        self._received(data)

    cdef int _received(self, bytes data) except -1:
        """Request bytes (HTTP/1): from the socket, or from an HTTP/2 stream's bridge."""
        cdef Stream s = self.stream
        cdef size_t n = PyBytes_GET_SIZE(data)
        self.last_activity = now()
        if self.state == S_TUNNEL:
            self._forward_upstream(data)
            return 0
        if self.state == S_CLOSED:
            return 0
        if not self.sniffed:
            if self.listener.codec == 0 and self._sniff_h2(data):
                return 0
        if (self.state == S_BODY and not s.request_chunked and PyByteArray_GET_SIZE(self.buf) == 0
                and <int64_t>n <= s.request_remaining):
            # Body bytes straight through, no copy into the buffer.
            s.request_remaining -= n
            s.bytes_received += n
            self._forward_upstream(data)
            if s.request_remaining == 0:
                self._request_complete()
            return 0
        self.buf += data
        self._process()
        return 0

    cdef bint _sniff_h2(self, bytes data) except -1:
        """codec_type AUTO: hand the connection to HTTP/2 when it opens with the preface."""
        cdef bytes seen = bytes(self.buf) + data if PyByteArray_GET_SIZE(self.buf) else data
        cdef int state = h2_preface_state(PyBytes_AS_STRING(seen), PyBytes_GET_SIZE(seen))
        if state == H2_PREFACE_PARTIAL:
            self.buf += data
            return True
        self.sniffed = True
        if state == H2_PREFACE_NO:
            if PyByteArray_GET_SIZE(self.buf):
                del self.buf[:]
                self.buf += seen[:len(seen) - len(data)]
            return False
        from fastproxy._core.h2downstream import switch_to_h2
        del self.buf[:]
        self.worker.connections.discard(self)
        transport = self.transport
        self.transport = None
        self.state = S_CLOSED
        switch_to_h2(self, transport, seen)
        return True

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        cdef ListenerRuntime lr = self.listener
        cdef int64_t *v = self.worker.values
        cdef Stream s = self.stream
        cdef bint active = self.state in (S_BODY, S_WAIT, S_TUNNEL) and not s.response_complete
        self.worker.connections.discard(self)
        v[lr.listener_base + LISTENER_DOWNSTREAM_CX_ACTIVE] -= 1
        v[lr.listener_base + LISTENER_DOWNSTREAM_CX_DESTROY] += 1
        v[lr.http_base + HTTP_DOWNSTREAM_CX_ACTIVE] -= 1
        v[lr.http_base + HTTP_DOWNSTREAM_CX_HTTP1_ACTIVE] -= 1
        v[lr.http_base + HTTP_DOWNSTREAM_CX_DESTROY] += 1
        if self.closing:
            v[lr.http_base + HTTP_DOWNSTREAM_CX_DESTROY_LOCAL] += 1
        else:
            v[lr.http_base + HTTP_DOWNSTREAM_CX_DESTROY_REMOTE] += 1
        if active:
            v[lr.http_base + HTTP_DOWNSTREAM_CX_DESTROY_ACTIVE_RQ] += 1
        if s.upgrade and self.state == S_TUNNEL:
            v[lr.http_base + HTTP_DOWNSTREAM_CX_UPGRADES_ACTIVE] -= 1
        if active:
            # (in its request state still, so that it is accounted and logged; without a
            # transport, so that it is flagged DC)
            self.transport = None
            self._abort_stream()
        self.state = S_CLOSED
        if not active and s.upstream is None:
            # Nothing reaches this stream through its connection any more: unlinking them
            # spares the cycle collector one cycle per connection (a connection per request
            # would otherwise feed it a steady stream of garbage cycles).
            s.downstream = None
        self.transport = None
        self.write = None

    def pause_writing(self):
        self.write_paused = True
        cdef UpstreamConnection up = self.stream.upstream
        if up is not None and up.transport is not None:
            up.transport.pause_reading()

    def resume_writing(self):
        self.write_paused = False
        cdef UpstreamConnection up = self.stream.upstream
        if up is not None and up.transport is not None and not up.closed:
            up.transport.resume_reading()

    # -- request path ---------------------------------------------------------------------------
    cdef int _process(self) except -1:
        cdef ListenerRuntime lr = self.listener
        cdef RequestHead *head = self.worker.req_head
        cdef Py_ssize_t n, skip
        cdef int rc
        while self.transport is not None:
            if self.state == S_HEAD:
                n = PyByteArray_GET_SIZE(self.buf)
                if n == 0:
                    return 0
                if PyByteArray_AS_STRING(self.buf)[0] == 13 or PyByteArray_AS_STRING(self.buf)[0] == 10:
                    skip = 0
                    while skip < n and (PyByteArray_AS_STRING(self.buf)[skip] == 13
                                        or PyByteArray_AS_STRING(self.buf)[skip] == 10):
                        skip += 1
                    del self.buf[:skip]
                    continue
                rc = parse_request_head(PyByteArray_AS_STRING(self.buf), n, lr.max_header_bytes, head)
                if rc == PARSE_INCOMPLETE:
                    return 0
                if rc < 0:
                    self._codec_error(rc)
                    return 0
                self._on_request_head(PyByteArray_AS_STRING(self.buf), n, rc)
            elif self.state == S_BODY:
                if PyByteArray_GET_SIZE(self.buf) == 0:
                    return 0
                self._on_request_body()
                if self.state == S_BODY:
                    return 0
            elif self.state == S_WAIT:
                # A pipelined request waits for the current response; bound what we hold.
                if <size_t>PyByteArray_GET_SIZE(self.buf) > lr.buffer_limit and not self.read_paused:
                    self.read_paused = True
                    self.transport.pause_reading()
                return 0
            else:
                return 0
        return 0

    cdef void _codec_error(self, int rc):
        cdef ListenerRuntime lr = self.listener
        cdef int64_t *v = self.worker.values
        cdef RequestHead *head = self.worker.req_head
        v[lr.http_base + HTTP_DOWNSTREAM_CX_PROTOCOL_ERROR] += 1
        v[lr.http_base + HTTP_DOWNSTREAM_RQ_TOTAL] += 1
        v[lr.http_base + HTTP_DOWNSTREAM_RQ_HTTP1_TOTAL] += 1
        v[lr.http_base + HTTP_DOWNSTREAM_RQ_ACTIVE] += 1
        self.stream.reset()
        set_flag(self.stream, RF_DPE)
        self.state = S_WAIT
        if rc == PARSE_TOO_LARGE or rc == PARSE_TOO_MANY_HEADERS:
            self._local_reply(431, BODY_TOO_LARGE, True, None)
        elif rc == PARSE_NOT_IMPLEMENTED:
            self._local_reply(501, BODY_NOT_IMPLEMENTED, True, None)
        elif head.error != NULL and strcmp(head.error, b"missing_host_header") == 0:
            # Envoy's connection manager (not its codec) refuses this one: no body.
            self._local_reply(400, None, True, None)
        else:
            self._local_reply(400, BODY_BAD_REQUEST, True, None)

    cdef int _on_request_head(self, const char *data, size_t length, int head_len) except -1:
        cdef ListenerRuntime lr = self.listener
        cdef Worker w = self.worker
        cdef int64_t *v = w.values
        cdef RequestHead *head = w.req_head
        cdef Stream s = self.stream
        cdef RouteDecision d = s.decision
        cdef int action
        cdef ClusterRuntime cluster
        cdef UpstreamConnection up
        cdef int host
        cdef bytes out
        cdef int64_t gw_length = -1

        s.reset()
        s.start_time = now()
        s.idle_timeout = lr.stream_idle_timeout
        if lr.access_logs is not None:
            s.wall_start = _time.time()
            s.log_headers = capture_headers(head, lr.log_wanted)
        s.is_head = head.is_head
        s.keep_alive = head.keep_alive and not self.closing
        self.minor_version = head.minor_version
        v[lr.http_base + HTTP_DOWNSTREAM_RQ_TOTAL] += 1
        v[lr.http_base + HTTP_DOWNSTREAM_RQ_HTTP1_TOTAL] += 1
        v[lr.http_base + HTTP_DOWNSTREAM_RQ_ACTIVE] += 1

        if head.minor_version == 0:
            # Envoy refuses HTTP/1.0 unless http_protocol_options.accept_http_10 is set.
            self._consume(head_len)
            self.state = S_WAIT
            return self._local_reply(426, BODY_UPGRADE_REQUIRED, True, None)
        if head.authority != NULL:
            v[lr.http_base + HTTP_DOWNSTREAM_RQ_NON_RELATIVE_PATH] += 1
            # absolute-form target: its authority is the request's :authority and wins over Host
            if head.host_index < 0:
                head.host_index = <int>head.num_headers
                head.headers[head.num_headers].name = b"host"
                head.headers[head.num_headers].name_len = 4
                head.num_headers += 1
            head.headers[head.host_index].value = head.authority
            head.headers[head.host_index].value_len = head.authority_len
        if head.host_index < 0 or memchr(head.target, 35, head.target_len) != NULL:
            # No authority, or a fragment in the target: Envoy answers 400 without a body.
            self._consume(head_len)
            self.state = S_WAIT
            return self._local_reply(400, None, True, None)
        if not valid_authority(head.headers[head.host_index].value,
                               head.headers[head.host_index].value_len):
            self._consume(head_len)
            self.state = S_WAIT
            return self._local_reply(400, BODY_BAD_REQUEST, True, None)
        if head.upgrade or head.is_connect:
            # Upgrades are tunnelled only when the connection manager lists their type in
            # upgrade_configs; otherwise Envoy answers 403 (upgrade_failed).
            if head.is_connect:
                # CONNECT is routed only by connect_matcher routes, which are not supported.
                self._consume(head_len)
                self.state = S_WAIT
                v[lr.http_base + HTTP_NO_ROUTE] += 1
                return self._local_reply(404, None, True, None)
            if head.upgrade_index < 0 or PyBytes_FromStringAndSize(
                    head.headers[head.upgrade_index].value,
                    head.headers[head.upgrade_index].value_len).lower() not in lr.upgrade_types:
                self._consume(head_len)
                self.state = S_WAIT
                return self._local_reply(403, None, True, None)
            s.upgrade = True

        v[lr.http_base + HTTP_RQ_TOTAL] += 1
        s.grpc = is_grpc(head)
        if lr.grpc_web:
            s.grpc_web = grpc_web_request(head)
        action = lr.routes.route(head, d, False, w.random())
        if lr.grpc_stats and action == ACTION_ROUTE and (
                s.grpc or (s.grpc_web and lr.gs_after_gw)):
            gs_start(s, lr, head)
        if lr.filters is not None:
            # HTTP filters before the router see every request, whatever the route says.
            rc = lr.filters.on_request(head, d)
            if rc:
                set_flag(s, RF_RL)
                if lr.grpc_web_after_rl:
                    s.grpc_web = 0  # answered before the gRPC-Web filter saw the request
                if not lr.gs_before_rl:
                    s.gs_base = -1  # answered before the gRPC stats filter saw the request
                self._consume(head_len)
                self.state = S_WAIT
                s.response_headers = lr.filters.reply_late_headers
                return self._local_reply(rc, lr.filters.reply_body, head.body_kind != BODY_NONE,
                                         lr.filters.reply_headers)
            s.response_headers = lr.filters.response_headers(d)
        if s.grpc_web:
            # the gRPC-Web filter (before the router) turns the request into a gRPC one
            s.grpc = True
            s.gw = GrpcWebState()
            gw_length = grpc_web_request_head(head)
        if action != ACTION_ROUTE:
            self._consume(head_len)
            self.state = S_WAIT
            if action == ACTION_NONE:
                v[lr.http_base + HTTP_NO_ROUTE] += 1
                set_flag(s, RF_NR)
                return self._local_reply(404, None, head.body_kind != BODY_NONE, None)
            if action == ACTION_DIRECT_RESPONSE:
                v[lr.http_base + HTTP_RQ_DIRECT_RESPONSE] += 1
                # Envoy sends the request's own URL as Location on 201 and 3xx direct responses
                return self._local_reply(d.status, d.body if d.body else None,
                                         head.body_kind != BODY_NONE,
                                         [(b"location", d.location)] if d.location else None,
                                         d.response_ops)
            if action == ACTION_REDIRECT:
                v[lr.http_base + HTTP_RQ_DIRECT_RESPONSE] += 1
                return self._local_reply(d.status, None, head.body_kind != BODY_NONE,
                                         [(b"location", d.location)], d.response_ops)
            v[lr.http_base + HTTP_NO_CLUSTER] += 1
            set_flag(s, RF_NC)
            return self._local_reply(503, None, head.body_kind != BODY_NONE, None)

        cluster = w.clusters.get(d.cluster)
        if cluster is None:
            self._consume(head_len)
            self.state = S_WAIT
            v[lr.http_base + HTTP_NO_CLUSTER] += 1
            set_flag(s, RF_NC)
            return self._local_reply(503, None, head.body_kind != BODY_NONE, None)
        self._setup_retry(head, d)
        host = self._pick_host(cluster, d, None)
        if host < 0:
            self._consume(head_len)
            self.state = S_WAIT
            v[cluster.base + CLUSTER_UPSTREAM_CX_NONE_HEALTHY] += 1
            # Envoy's router charges its 503 to the cluster
            v[cluster.base + CLUSTER_UPSTREAM_RQ_COMPLETED] += 1
            v[cluster.base + CLUSTER_UPSTREAM_RQ_5XX] += 1
            v[cluster.base + CLUSTER_UPSTREAM_RQ_100 + 403] += 1
            set_flag(s, RF_UH)
            return self._local_reply(503, BODY_NO_HEALTHY, head.body_kind != BODY_NONE, None)

        if cluster.breakers is not None:
            if not cluster.breakers.try_request(s.priority):
                self._consume(head_len)
                self.state = S_WAIT
                v[cluster.base + CLUSTER_UPSTREAM_RQ_ACTIVE_OVERFLOW] += 1
                set_flag(s, RF_UO)
                return self._local_reply(503, BODY_OVERFLOW, head.body_kind != BODY_NONE, OVERLOADED)
            s.holds_request = True
        s.cluster = cluster
        s.host = host
        cluster.lb.request_started(host)
        v[cluster.base + CLUSTER_UPSTREAM_RQ_ACTIVE] += 1

        if head.expect_continue:
            self.write(CONTINUE_100)

        out = self._serialize_request(head, d, cluster, host)
        s.request_chunked = head.body_kind == BODY_CHUNKED
        if head.body_kind == BODY_LENGTH and head.content_length > 0:
            if <int64_t>(length - head_len) >= head.content_length and head.content_length <= 65536:
                # The whole body is here: send it with the head in one write.
                out += PyBytes_FromStringAndSize(data + head_len, head.content_length)
                if s.gs_base >= 0:
                    gs_request_body(s, v, data + head_len, head.content_length)
                head_len += <int>head.content_length
                s.bytes_received += head.content_length
            else:
                s.request_remaining = head.content_length
        elif head.body_kind == BODY_CHUNKED:
            body_decoder_init(&self.body, BODY_CHUNKED, 0)
        if gw_length > 0:
            # gRPC-Web: a content-length body goes upstream chunked (Envoy drops the length)
            body_decoder_init(&self.body, BODY_LENGTH, gw_length)
        self._consume(head_len)

        if s.retries_left > 0:
            s.head_bytes = out
            s.replay = []
            s.tried = [host]
        if self._send_to_host(cluster, host, [out]):
            # max_pending_requests overflow
            set_flag(s, RF_UO)
            self.state = S_WAIT
            self._stream_stats_end(0)
            return self._local_reply(503, BODY_OVERFLOW, s.request_remaining > 0 or s.request_chunked,
                                     OVERLOADED)
        if s.request_remaining > 0 or s.request_chunked:
            self.state = S_BODY
        else:
            self.state = S_WAIT
            self._request_complete()
        return 0

    cdef int _send_to_host(self, ClusterRuntime c, int host, list writes) except -1:
        """Send the request (`writes`) to `host` on an idle connection, a new one, or after
        waiting for one (max_connections).  A request without a ready connection is pending, as
        in Envoy (max_pending_requests); returns 1 when that overflows, else 0."""
        cdef Stream s = self.stream
        cdef int64_t *v = self.worker.values
        cdef UpstreamConnection up = c.get_idle(host)
        if up is None:
            if c.breakers is not None and not c.breakers.try_pending(s.priority):
                v[c.base + CLUSTER_UPSTREAM_RQ_PENDING_OVERFLOW] += 1
                return 1
            s.pending = True
            v[c.base + CLUSTER_UPSTREAM_RQ_PENDING_TOTAL] += 1
            v[c.base + CLUSTER_UPSTREAM_RQ_PENDING_ACTIVE] += 1
            up = c.new_connection(host, s.priority)
            if up is None:
                s.waiting = True
                s.pending_writes = list(writes)
                (<list>c.waiting[host]).append(s)
                return 0
        s.upstream = up
        up.attach(s)
        for data in writes:
            up.send(data)
        return 0

    cdef void _end_pending(self):
        """The request has a ready connection (or is gone): it is no longer pending."""
        cdef Stream s = self.stream
        cdef ClusterRuntime c = s.cluster
        if not s.pending:
            return
        s.pending = False
        if c is not None:
            self.worker.values[c.base + CLUSTER_UPSTREAM_RQ_PENDING_ACTIVE] -= 1
            if c.breakers is not None:
                c.breakers.release_pending(s.priority)

    cdef int _pick_host(self, ClusterRuntime cluster, RouteDecision d, list avoid) except -2:
        """A host for this request; with `avoid` (previous_hosts), re-pick up to
        host_selection_retry_max_attempts times to find one not tried yet."""
        cdef int host, tries = 1
        if cluster.lb is None:
            return -1
        if avoid is not None:
            tries = max(1, self.stream.retry.host_selection_retry_max_attempts)
        while True:
            host = cluster.lb.pick_hash(d.hash_value) if d.has_hash else cluster.lb.pick()
            tries -= 1
            if host < 0 or avoid is None or host not in avoid or tries <= 0:
                return host

    cdef int _setup_retry(self, RequestHead *head, RouteDecision d) except -1:
        """The route's retry policy, and for an internal request the x-envoy-* request headers
        that adjust it (x-envoy-retry-on, x-envoy-max-retries, x-envoy-upstream-rq-timeout-ms,
        x-envoy-upstream-rq-per-try-timeout-ms), as Envoy's router reads them."""
        cdef Stream s = self.stream
        cdef size_t i
        cdef const phr_header *h
        cdef bint envoy_headers = False
        cdef double duration = self.listener.max_stream_duration
        rp = None
        if d.entry is not None:
            action = (<RouteEntry>d.entry).source.route
            if action is not None:
                rp = action.retry_policy
                s.priority = 1 if action.priority == 1 else 0
                if action.idle_timeout_ms is not None:
                    s.idle_timeout = action.idle_timeout_ms / 1000.0
                if action.new_timeouts:
                    d.timeout_ms = 0  # Envoy's router then leaves the route timeout unset
                    if action.max_stream_duration_ms is not None:
                        duration = action.max_stream_duration_ms / 1000.0
                if s.grpc and action.grpc_timeout_max_ms is not None:
                    duration = self._grpc_timeout(head, action, duration, d)
                if s.grpc and action.new_timeouts and duration > 0:
                    # the upstream is told the stream's deadline
                    s.grpc_timeout = <int64_t>(duration * 1000 + 0.5)
        if duration > 0:
            s.duration_timer = self.worker.loop.call_at(
                self.worker.loop.time() + duration - (now() - s.start_time), self._on_max_duration)
        if rp is not None:
            s.retry = rp
            s.retry_on = rp.retry_on
            s.retries_left = rp.num_retries
            s.per_try_ms = rp.per_try_timeout_ms
        for i in range(head.num_headers):
            h = &head.headers[i]
            if h.name_len > 8 and lit_eq(h.name, 8, b"x-envoy-", 8):
                envoy_headers = True
                break
        if not envoy_headers or not self._request_internal(head):
            return 0
        for i in range(head.num_headers):
            h = &head.headers[i]
            if h.name_len <= 8 or not lit_eq(h.name, 8, b"x-envoy-", 8):
                continue
            value = PyBytes_FromStringAndSize(h.value, h.value_len)
            if h.name_len == 16 and lit_eq(h.name, 16, b"x-envoy-retry-on", 16):
                extra = frozenset(c.strip().decode("latin-1") for c in value.split(b",") if c.strip())
                if s.retry is None:
                    s.retry = _DEFAULT_RETRY
                    s.retries_left = 1
                s.retry_on = (s.retry_on or frozenset()) | extra
            elif h.name_len == 19 and lit_eq(h.name, 19, b"x-envoy-max-retries", 19) and value.isdigit():
                s.retries_left = int(value)
            elif h.name_len == 30 and lit_eq(h.name, 30, b"x-envoy-upstream-rq-timeout-ms", 30) \
                    and value.isdigit():
                d.timeout_ms = int(value)
            elif h.name_len == 38 and \
                    lit_eq(h.name, 38, b"x-envoy-upstream-rq-per-try-timeout-ms", 38) and value.isdigit():
                s.per_try_ms = int(value)
        return 0

    cdef double _grpc_timeout(self, RequestHead *head, action, double duration,
                              RouteDecision d) except? -2:
        cdef Stream s = self.stream
        """The grpc-timeout request header as Envoy's router reads it for a route with
        max_grpc_timeout (it becomes the route timeout) or with max_stream_duration's
        grpc_timeout_header_max (it becomes the stream's duration).  Returns the duration."""
        cdef int i = find_header(head.headers, head.num_headers, b"grpc-timeout", 12)
        cdef int64_t t = -1
        cdef int64_t cap = action.grpc_timeout_max_ms
        cdef int64_t offset = action.grpc_timeout_offset_ms
        if i >= 0:
            t = parse_grpc_timeout(head.headers[i].value, head.headers[i].value_len)
        if action.new_timeouts:
            if t < 0:
                return duration
            if cap > 0 and t > cap:
                t = cap
            t = t - offset if t > offset else 0
            return t / 1000.0 if t > 0 else 1e-6  # 0: at once, as Envoy's zero-length timer
        if t < 0:
            t = 0
        if offset and offset < t:
            t -= offset
        if cap > 0 and (t == 0 or t > cap):
            t = cap
        d.timeout_ms = t
        s.grpc_timeout = 0  # the expected timeout, once known (_serialize_request)
        return duration

    cdef bint _request_internal(self, RequestHead *head):
        """Envoy's internal request: the client address (the peer's with use_remote_address,
        else the last x-forwarded-for entry) is RFC 1918 or unique-local; loopback is not."""
        cdef Stream s = self.stream
        cdef int i
        if s.internal >= 0:
            return s.internal == 1
        if self.listener.use_remote_address:
            s.internal = is_internal_ip(self._remote_ip())
            return s.internal == 1
        s.internal = 0
        i = find_header(head.headers, head.num_headers, b"x-forwarded-for", 15)
        if i >= 0:
            xff = PyBytes_FromStringAndSize(head.headers[i].value, head.headers[i].value_len)
            hops = [a.strip() for a in xff.split(b",")]
            k = len(hops) - 1 - self.listener.xff_num_trusted_hops
            if k >= 0:
                s.internal = is_internal_ip(hops[k])
        return s.internal == 1

    cdef void _consume(self, Py_ssize_t n):
        del self.buf[:n]

    cdef bytes _serialize_request(self, RequestHead *head, RouteDecision d,
                                  ClusterRuntime cluster, int host):
        """The upstream request head, as Envoy writes it: host first, the client's headers in
        order (names lower-cased, hop-by-hop and internal-only ones dropped), then Envoy's
        additions, the route's header mutations, and the codec's framing header last."""
        cdef ListenerRuntime lr = self.listener
        cdef Worker w = self.worker
        cdef OutBuf *b = &w.out
        cdef size_t i
        cdef const phr_header *h
        cdef bint seen_xfp = False, seen_rid = False, seen_xff = False, seen_cl = False
        cdef bint edge = lr.use_remote_address
        cdef bint external = edge and not self._request_internal(head)
        cdef bint rewrote_path = False
        cdef RouteEntry entry = <RouteEntry>d.entry if d.entry is not None else None
        cdef int64_t expected = self.stream.per_try_ms if self.stream.per_try_ms > 0 and (
            d.timeout_ms == 0 or self.stream.per_try_ms < d.timeout_ms) else d.timeout_ms
        cdef int64_t grpc_timeout = self.stream.grpc_timeout
        if grpc_timeout == 0:
            grpc_timeout = expected if expected > 0 else -1  # max_grpc_timeout
        b.length = 0
        ob_put(b, head.method, head.method_len)
        ob_put(b, b" ", 1)
        if d.path is not None:
            ob_put_bytes(b, d.path)
        else:
            ob_put(b, head.path, head.path_len)
        ob_put(b, b" HTTP/1.1\r\nhost: ", 17)
        if d.host is not None:
            ob_put_bytes(b, d.host)
        elif d.auto_host_rewrite:
            ob_put_bytes(b, <bytes>cluster.host_authority[host])
        else:
            h = &head.headers[head.host_index]
            ob_put(b, h.value, h.value_len)
            for i in range(head.num_headers):
                # Repeated Host headers travel as one, comma-joined, as Envoy's :authority does.
                if <int>i != head.host_index and head.headers[i].name_len == 4 and \
                        lit_eq(head.headers[i].name, 4, b"host", 4):
                    ob_put(b, b",", 1)
                    ob_put(b, head.headers[i].value, head.headers[i].value_len)
        ob_put(b, b"\r\n", 2)
        for i in range(head.num_headers):
            if <int>i == head.host_index:
                continue
            h = &head.headers[i]
            if is_hop_by_hop(head.headers, head.num_headers, i, self.stream.upgrade):
                continue
            if h.name_len == 4 and lit_eq(h.name, 4, b"host", 4):
                continue
            if h.name_len == 6 and lit_eq(h.name, 6, b"expect", 6) and head.expect_continue:
                continue
            if h.name_len == 14 and lit_eq(h.name, 14, b"content-length", 14):
                seen_cl = True
            elif h.name_len == 17 and lit_eq(h.name, 17, b"x-forwarded-proto", 17):
                if edge:
                    continue
                seen_xfp = True
            elif h.name_len == 12 and lit_eq(h.name, 12, b"x-request-id", 12):
                if edge or h.value_len == 0:
                    continue
                seen_rid = True
            elif h.name_len == 15 and lit_eq(h.name, 15, b"x-forwarded-for", 15) and edge:
                seen_xff = True
                ob_put(b, b"x-forwarded-for: ", 17)
                ob_put(b, h.value, h.value_len)
                ob_put(b, b",", 1)
                ob_put_bytes(b, self._remote_ip())
                ob_put(b, b"\r\n", 2)
                continue
            elif grpc_timeout > 0 and h.name_len == 12 and lit_eq(h.name, 12, b"grpc-timeout", 12):
                ob_put(b, b"grpc-timeout: ", 14)
                put_grpc_timeout(b, grpc_timeout)
                grpc_timeout = -1
                continue
            elif h.name_len > 8 and lit_eq(h.name, 8, b"x-envoy-", 8):
                # Internal-only headers: dropped unless the request is internal; the router's
                # own (read above, or set below) never travel on.
                if not self._request_internal(head) or consumed_envoy_header(h.name, h.name_len):
                    continue
            ob_put_lower(b, h.name, h.name_len)
            ob_put(b, b": ", 2)
            ob_put(b, h.value, h.value_len)
            ob_put(b, b"\r\n", 2)
        if self.stream.upgrade:
            ob_put(b, b"connection: upgrade\r\n", 21)
        if edge and not seen_xff:
            ob_put(b, b"x-forwarded-for: ", 17)
            ob_put_bytes(b, self._remote_ip())
            ob_put(b, b"\r\n", 2)
        if external:
            ob_put(b, b"x-envoy-external-address: ", 26)
            ob_put_bytes(b, self._remote_ip())
            ob_put(b, b"\r\n", 2)
        elif edge:
            ob_put(b, b"x-envoy-internal: true\r\n", 24)
        if not seen_xfp:
            ob_put(b, b"x-forwarded-proto: http\r\n", 25)
        if not seen_rid and lr.generate_request_id:
            ob_put(b, b"x-request-id: ", 14)
            w.put_uuid4(b)
            ob_put(b, b"\r\n", 2)
        if self.stream.grpc_web:
            grpc_web_request_headers(b, head)
        if expected > 0:
            ob_put(b, b"x-envoy-expected-rq-timeout-ms: ", 32)
            ob_put_int(b, expected)
            ob_put(b, b"\r\n", 2)
        if grpc_timeout > 0:
            ob_put(b, b"grpc-timeout: ", 14)
            put_grpc_timeout(b, grpc_timeout)
        if d.request_ops:
            apply_ops(b, d.request_ops)
        if d.host is not None or d.auto_host_rewrite:
            h = &head.headers[head.host_index]
            ob_put(b, b"x-envoy-original-host: ", 23)
            ob_put(b, h.value, h.value_len)
            ob_put(b, b"\r\n", 2)
        if entry is not None and (entry.prefix_rewrite is not None or entry.regex_rewrite is not None):
            ob_put(b, b"x-envoy-original-path: ", 23)
            ob_put(b, head.path, head.path_len)
            ob_put(b, b"\r\n", 2)
        if head.body_kind == BODY_CHUNKED:
            ob_put(b, b"transfer-encoding: chunked\r\n", 28)
        elif head.body_kind == BODY_NONE and not seen_cl and not self.stream.upgrade \
                and needs_empty_length(head.method, head.method_len):
            ob_put(b, b"content-length: 0\r\n", 19)
        ob_put(b, b"\r\n", 2)
        return ob_take(b)

    cdef bytes _remote_ip(self):
        if self.remote_ip is None:
            peer = self.transport.get_extra_info("peername")
            self.remote_ip = (peer[0] if peer else "").encode()
        return self.remote_ip

    cdef int _on_request_body(self) except -1:
        cdef Stream s = self.stream
        cdef Py_ssize_t n = PyByteArray_GET_SIZE(self.buf)
        cdef size_t length, consumed
        cdef int rc
        cdef bytes piece
        if not s.request_chunked:
            if n > s.request_remaining:
                n = s.request_remaining
            piece = bytes(self.buf[:n])
            del self.buf[:n]
            s.request_remaining -= n
            s.bytes_received += n
            if s.gs_base >= 0:
                gs_request_body(s, self.worker.values, PyBytes_AS_STRING(piece), n)
            self._forward_upstream(piece)
            if s.request_remaining == 0:
                self._request_complete()
            return 0
        length = n
        rc = body_decode(&self.body, PyByteArray_AS_STRING(self.buf), &length, &consumed)
        if rc < 0:
            # A bad chunk: nothing more of this connection can be trusted.  Answer 400 if the
            # response has not started, as Envoy's codec does, then close.
            self.worker.values[self.listener.http_base + HTTP_DOWNSTREAM_CX_PROTOCOL_ERROR] += 1
            del self.buf[:]
            if s.response_started:
                self._abort_stream()
                self._close()
            else:
                s.keep_alive = False
                self._upstream_failed(400, BODY_BAD_REQUEST)
            return 0
        if s.grpc_web & GW_TEXT_IN:
            if not self._grpc_web_decode(length, rc == 1):
                return 0  # answered: bad base64
        elif length > 0:
            s.bytes_received += length
            if s.gs_base >= 0:
                gs_request_body(s, self.worker.values, PyByteArray_AS_STRING(self.buf), length)
            self._forward_upstream(chunk_frame(PyByteArray_AS_STRING(self.buf), length))
        del self.buf[:consumed]
        if rc == 1:
            self._forward_upstream(LAST_CHUNK)
            self._request_complete()
        return 0

    cdef void _request_complete(self):
        cdef Stream s = self.stream
        s.request_complete = True
        if self.state == S_BODY:
            self.state = S_WAIT
        if s.decision.timeout_ms > 0 and not s.response_complete:
            self.worker.arm_timeout(s, s.decision.timeout_ms / 1000.0)
        self._start_per_try_timer()

    cdef void _start_per_try_timer(self):
        cdef Stream s = self.stream
        if s.per_try_ms > 0 and not s.response_started and s.upstream is not None:
            if s.per_try_timer is not None:
                s.per_try_timer.cancel()
            s.per_try_timer = self.worker.loop.call_later(s.per_try_ms / 1000.0, self._on_per_try_timeout)
        if s.retry is not None and s.retry.per_try_idle_timeout_ms > 0 and s.upstream is not None:
            if s.per_try_idle_timer is not None:
                s.per_try_idle_timer.cancel()
            s.per_try_idle_timer = self.worker.loop.call_later(
                s.retry.per_try_idle_timeout_ms / 1000.0, self._on_per_try_idle)

    def _on_max_duration(self):
        """max_stream_duration (route or connection manager): Envoy's 504 "downstream duration
        timeout" (408 while the request is still arriving), or a reset once the response began."""
        cdef Stream s = self.stream
        s.duration_timer = None
        if s.response_complete or self.transport is None:
            return
        self.worker.values[self.listener.http_base + HTTP_DOWNSTREAM_RQ_MAX_DURATION_REACHED] += 1
        set_flag(s, RF_DT)
        s.grpc_status = 4  # DEADLINE_EXCEEDED
        self._upstream_failed(504 if s.request_complete else 408, BODY_DURATION_TIMEOUT)

    def _on_per_try_idle(self):
        """per_try_idle_timeout: no byte to or from this attempt's upstream for that long.  The
        timer is re-armed lazily for the rest of the interval after activity, so reads and
        writes cost nothing."""
        cdef Stream s = self.stream
        cdef UpstreamConnection up = s.upstream
        cdef double idle = s.retry.per_try_idle_timeout_ms / 1000.0 if s.retry is not None else 0
        s.per_try_idle_timer = None
        if s.response_complete or up is None or s.cluster is None or idle <= 0:
            return
        cdef double quiet = now() - up.last_activity
        if quiet < idle:
            s.per_try_idle_timer = self.worker.loop.call_later(idle - quiet, self._on_per_try_idle)
            return
        self.worker.values[s.cluster.base + CLUSTER_UPSTREAM_RQ_PER_TRY_IDLE_TIMEOUT] += 1
        if s.response_started:
            self._upstream_failed(504, BODY_TIMEOUT)  # closes: the response cannot complete
            return
        self._attempt_failed(FAIL_PER_TRY_TIMEOUT, 504, BODY_TIMEOUT)

    def _on_per_try_timeout(self):
        cdef Stream s = self.stream
        s.per_try_timer = None
        if s.response_started or s.response_complete or s.cluster is None:
            return
        if s.retry is not None and s.retry.hedge_on_per_try_timeout:
            # Hedging: this attempt goes on (so it is no per-try timeout in Envoy's stats);
            # another one starts.  The first answer wins.
            if s.upstream is not None and s.retries_left > 0:
                if s.hedges is None:
                    s.hedges = []
                s.hedges.append(s.upstream)
                s.upstream = None
                if not self._retry():
                    s.upstream = s.hedges.pop()
            return
        self.worker.values[s.cluster.base + CLUSTER_UPSTREAM_RQ_PER_TRY_TIMEOUT] += 1
        self._attempt_failed(FAIL_PER_TRY_TIMEOUT, 504, BODY_TIMEOUT)

    cdef void _drop_hedges(self):
        cdef Stream s = self.stream
        cdef UpstreamConnection h
        if s.hedges is None:
            return
        for h in s.hedges:
            h.stream = None
            h._close_transport()
        s.hedges = None

    cdef void _attempt_failed(self, int kind, int status, bytes body):
        """One attempt failed before a response: retry when the policy says so, else answer."""
        cdef Stream s = self.stream
        cdef frozenset conditions
        cdef UpstreamConnection up
        if s.retry is not None and not s.response_started and s.retry_on:
            conditions = RETRY_ON_CONNECT if kind == FAIL_CONNECT else (
                RETRY_ON_RESET if kind == FAIL_RESET else
                RETRY_ON_REFUSED if kind == FAIL_REFUSED else RETRY_ON_PER_TRY)
            if not conditions.isdisjoint(s.retry_on):
                up = s.upstream
                if up is not None:
                    up.stream = None
                    up._close_transport()
                    s.upstream = None
                if self._retry():
                    return
        self._upstream_failed(status, body)

    cdef bint _retriable_status(self, int status):
        cdef Stream s = self.stream
        on = s.retry_on
        if not on:
            return False
        if status >= 500 and "5xx" in on:
            return True
        if (status == 502 or status == 503 or status == 504) and "gateway-error" in on:
            return True
        if status == 409 and "retriable-4xx" in on:
            return True
        if "retriable-status-codes" in on and status in s.retry.retriable_status_codes:
            return True
        return False

    cdef bint _retry(self):
        """Schedule the next attempt after Envoy's jittered exponential back-off; False when no
        attempt is left (or the retry circuit breaker is open)."""
        cdef Stream s = self.stream
        cdef ClusterRuntime c = s.cluster
        cdef int64_t *v = self.worker.values
        cdef uint64_t interval, cap
        if c is None or s.retries_left <= 0 or s.replay is None or not s.request_complete:
            if c is not None and s.retries_left <= 0 and s.retry is not None:
                v[c.base + CLUSTER_UPSTREAM_RQ_RETRY_LIMIT_EXCEEDED] += 1
                set_flag(s, RF_URX)
            return False
        if c.breakers is not None and not s.holds_retry:
            if not c.breakers.try_retry(s.priority):
                v[c.base + CLUSTER_UPSTREAM_RQ_RETRY_OVERFLOW] += 1
                return False
            s.holds_retry = True
        if s.per_try_timer is not None:
            s.per_try_timer.cancel()
            s.per_try_timer = None
        s.retries_left -= 1
        v[c.base + CLUSTER_UPSTREAM_RQ_RETRY] += 1
        v[c.base + CLUSTER_UPSTREAM_RQ_RETRY_BACKOFF_EXPONENTIAL] += 1
        cap = <uint64_t>s.retry.max_interval_ms
        interval = (<uint64_t>s.retry.base_interval_ms) * ((<uint64_t>1 << min(s.attempt, 30)) - 1)
        if interval > cap:
            interval = cap
        interval = self.worker.random() % interval if interval > 0 else 0
        s.retry_timer = self.worker.loop.call_later(interval / 1000.0, self._do_retry)
        return True

    def _do_retry(self):
        cdef Stream s = self.stream
        cdef ClusterRuntime c = s.cluster
        cdef RouteDecision d = s.decision
        cdef UpstreamConnection up
        cdef int host
        s.retry_timer = None
        if s.response_complete or self.transport is None or c is None:
            return
        host = self._pick_host(c, d, s.tried if s.retry.previous_hosts else None)
        if host < 0:
            self._upstream_failed(503, BODY_NO_HEALTHY)
            return
        c.lb.request_finished(s.host)
        c.lb.request_started(host)
        s.host = host
        s.tried.append(host)
        s.attempt += 1
        if self._send_to_host(c, host, [s.head_bytes] + s.replay):
            self._upstream_failed(503, BODY_OVERFLOW)
            return
        self._start_per_try_timer()

    def _on_timeout(self):
        cdef Stream s = self.stream
        cdef ClusterRuntime c = s.cluster
        s.deadline = 0
        if s.response_complete or c is None:
            return
        self.worker.values[c.base + CLUSTER_UPSTREAM_RQ_TIMEOUT] += 1
        set_flag(s, RF_UT)
        if c.state is not None:
            c.state.report_local_failure(s.host, LOCAL_REQUEST_TIMEOUT)
        self._upstream_failed(504, BODY_TIMEOUT)

    cdef int _forward_upstream(self, object data) except -1:
        cdef Stream s = self.stream
        cdef UpstreamConnection up = s.upstream
        if s.replay is not None:
            s.replay_size += len(data)
            if s.replay_size > self.listener.buffer_limit:
                s.replay = None  # too much to keep: this request cannot be retried
                s.retries_left = 0
            else:
                s.replay.append(data)
        if up is not None:
            up.send(data)
        elif s.waiting:
            s.pending_writes.append(data)
        return 0

    cdef void _attach_upstream(self, UpstreamConnection up):
        """A request that waited for a connection gets one: send what it queued."""
        cdef Stream s = self.stream
        cdef list queued = s.pending_writes
        s.pending_writes = None
        s.upstream = up
        if up.connected:
            self._end_pending()
        up.attach(s)
        if queued:
            for data in queued:
                up.send(data)

    # -- response path (called by the upstream connection) --------------------------------------
    cdef void _upstream_failed(self, int status, bytes body):
        """The upstream side of the stream failed: answer locally if we still can, else close."""
        cdef Stream s = self.stream
        if s.fail_flag:
            set_flag(s, s.fail_flag)  # the attempt's failure is the request's: flag it now
            s.fail_flag = 0
        cdef UpstreamConnection up = s.upstream
        if up is not None:
            up.stream = None
            up._close_transport()
        if s.response_started:
            self._stream_stats_end(0)
            self._close()
            return
        self._stream_stats_end(status if status >= 500 else 0)
        s.upstream = None
        s.cluster = None
        self._local_reply(status, body, not s.request_complete, None)

    cdef void _stream_stats_end(self, int status):
        cdef Stream s = self.stream
        cdef ClusterRuntime c = s.cluster
        cdef int64_t *v = self.worker.values
        s.deadline = 0
        if s.per_try_timer is not None:
            s.per_try_timer.cancel()
            s.per_try_timer = None
        if s.per_try_idle_timer is not None:
            s.per_try_idle_timer.cancel()
            s.per_try_idle_timer = None
        if s.duration_timer is not None:
            s.duration_timer.cancel()
            s.duration_timer = None
        self._drop_hedges()
        if s.retry_timer is not None:
            s.retry_timer.cancel()
            s.retry_timer = None
        if c is not None:
            if s.holds_retry:
                s.holds_retry = False
                c.breakers.release_retry(s.priority)
            if status and s.attempt > 1 and status < 500 and not s.flags & RF_URX:
                # (an answer the policy would still retry, out of retries, is no success)
                v[c.base + CLUSTER_UPSTREAM_RQ_RETRY_SUCCESS] += 1
            if s.waiting:
                s.waiting = False
                if s.host < len(c.waiting) and s in <list>c.waiting[s.host]:
                    (<list>c.waiting[s.host]).remove(s)
            self._end_pending()
            if s.holds_request:
                s.holds_request = False
                c.breakers.release_request(s.priority)
            v[c.base + CLUSTER_UPSTREAM_RQ_ACTIVE] -= 1
            if status:
                v[c.base + CLUSTER_UPSTREAM_RQ_COMPLETED] += 1
                v[c.base + CLUSTER_UPSTREAM_RQ_1XX + status // 100 - 1] += 1
                if 100 <= status < 600:
                    v[c.base + CLUSTER_UPSTREAM_RQ_100 + status - 100] += 1
            if c.lb is not None and s.host >= 0 and s.host < c.lb.num_hosts:
                c.lb.request_finished(s.host)
            s.cluster = None

    cdef int _local_reply(self, int status, bytes body, bint close, list extra,
                          tuple ops=None) except -1:
        """Answer from the proxy itself with Envoy's local-reply layout."""
        cdef Stream s = self.stream
        cdef Worker w = self.worker
        cdef OutBuf *b = &w.out
        cdef bytes out
        if self.transport is None:
            return 0
        if close or self.closing or not s.keep_alive:
            close = True
        b.length = 0
        if s.grpc_web:
            return self._grpc_web_local_reply(status, body, close, extra, ops)
        if s.grpc:
            return self._grpc_local_reply(status, body, close, extra, ops)
        ob_put_bytes(b, <bytes>STATUS_LINES[status] if 100 <= status < 1000 else STATUS_LINES[500])
        if extra:
            ob_put_headers(b, extra)
        if ops:
            apply_ops(b, ops)
        if body:
            ob_put(b, b"content-length: ", 16)
            ob_put_int(b, len(body))
            ob_put(b, b"\r\ncontent-type: text/plain\r\n", 28)
        if s.response_headers:
            # headers of the HTTP filters (x-ratelimit-*): after content-type, before date
            ob_put_headers(b, s.response_headers)
        self._put_reply_tail(b, close)
        if not body and status != 204 and status != 304 and status >= 200:
            if s.is_head:
                # Envoy's codec frames an empty HEAD answer as chunked.
                ob_put(b, b"transfer-encoding: chunked\r\n", 28)
            else:
                ob_put(b, b"content-length: 0\r\n", 19)
        ob_put(b, b"\r\n", 2)
        out = ob_take(b)
        if body and not s.is_head:
            out += body
            s.bytes_sent += len(body)
        s.status = status
        s.response_started = True
        self._write(out)
        if close:
            s.keep_alive = False
        self._finish_stream()
        return 0

    cdef int _grpc_local_reply(self, int status, bytes body, bint close, list extra,
                               tuple ops) except -1:
        """A local reply to a gRPC request, as Envoy sends it: a trailers-only response (200,
        content-type application/grpc, grpc-status from the HTTP status, grpc-message the
        body text percent-encoded)."""
        cdef Stream s = self.stream
        cdef Worker w = self.worker
        cdef OutBuf *b = &w.out
        cdef int code = s.grpc_status if s.grpc_status >= 0 else http_to_grpc_status(status)
        if s.gs_base >= 0:
            gs_status_code(w.values, s.gs_base, code)
        ob_put_bytes(b, <bytes>STATUS_LINES[200])
        ob_put(b, b"content-type: application/grpc\r\ngrpc-status: ", 45)
        ob_put_int(b, code)
        ob_put(b, b"\r\n", 2)
        if body and not s.is_head:
            ob_put(b, b"grpc-message: ", 14)
            ob_put_bytes(b, grpc_percent_encode(body))
            ob_put(b, b"\r\n", 2)
        if extra:
            ob_put_headers(b, extra)
        if ops:
            apply_ops(b, ops)
        if s.response_headers:
            ob_put_headers(b, s.response_headers)
        self._put_reply_tail(b, close)
        ob_put(b, b"content-length: 0\r\n\r\n", 21)
        s.status = 200  # what the client sees (Envoy's downstream stats and logs count it)
        s.response_started = True
        self._write(ob_take(b))
        if close:
            s.keep_alive = False
        self._finish_stream()
        return 0

    cdef int _grpc_web_local_reply(self, int status, bytes body, bint close, list extra,
                                   tuple ops) except -1:
        """A local reply to a gRPC-Web request, as Envoy's gRPC-Web filter turns it.  It is not
        a gRPC local reply (the request was not gRPC when the connection manager looked at it):
        the HTTP status stays, content-type becomes application/grpc-web(-text)+proto, and a body
        becomes grpc-message (percent-encoded) and grpc-status (from the HTTP status) headers,
        with content-length 0 and no body."""
        cdef Stream s = self.stream
        cdef Worker w = self.worker
        cdef OutBuf *b = &w.out
        cdef bint transform = body is not None and len(body) > 0 and not s.is_head
        cdef bytes ct = CT_GRPC_WEB_TEXT if s.grpc_web & GW_TEXT_OUT else CT_GRPC_WEB
        ob_put_bytes(b, <bytes>STATUS_LINES[status] if 100 <= status < 1000 else STATUS_LINES[500])
        if extra:
            ob_put_headers(b, extra)
        if ops:
            apply_ops(b, ops)
        if body:
            # the local reply's content-type, rewritten in place (its content-length dropped)
            ob_put(b, b"content-type: ", 14)
            ob_put_bytes(b, ct)
            ob_put(b, b"\r\n", 2)
        if s.response_headers:
            ob_put_headers(b, s.response_headers)
        if not body:
            ob_put(b, b"content-type: ", 14)
            ob_put_bytes(b, ct)
            ob_put(b, b"\r\n", 2)
        if transform:
            s.grpc_web |= GW_TRANSFORM
            put_grpc_web_status(b, status, body)
        self._put_reply_tail(b, close)
        if not transform and status != 204 and status != 304 and status >= 200:
            # the codec's framing of an answer without a body
            if s.is_head:
                ob_put(b, b"transfer-encoding: chunked\r\n", 28)
            else:
                ob_put(b, b"content-length: 0\r\n", 19)
        ob_put(b, b"\r\n", 2)
        s.status = status
        s.response_started = True
        self._write(ob_take(b))
        if close:
            s.keep_alive = False
        self._finish_stream()
        return 0

    cdef bint _grpc_web_decode(self, size_t length, bint last) except -1:
        """A piece of a gRPC-Web text request body (self.buf[:length]; `last`: the body ends
        with it).  As Envoy's filter: what makes whole groups of 4 characters (with what earlier
        pieces left) is base64-decoded and forwarded, the rest waits; a body whose length is not
        a multiple of 4 at its end, or that does not decode, is answered 400.  Returns False
        when it was answered."""
        cdef Stream s = self.stream
        cdef GrpcWebState st = <GrpcWebState>s.gw
        cdef bytes data = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self.buf), length)
        cdef bytes text, decoded = None
        cdef size_t have = PyBytes_GET_SIZE(st.b64_rest) + length, take
        cdef bint bad = False
        s.bytes_received += length
        if last:
            if have == 0:
                return True
            bad = have % 4 != 0
        elif have < 4:
            st.b64_rest += data
            return True
        if not bad:
            take = have // 4 * 4 - PyBytes_GET_SIZE(st.b64_rest)
            text = st.b64_rest + data[:take]
            st.b64_rest = data[take:]
            decoded = envoy_base64_decode(text)
            bad = decoded is None
        if bad:
            del self.buf[:]
            s.keep_alive = False
            self._upstream_failed(400, BODY_GRPC_WEB_BASE64)
            return False
        if s.gs_base >= 0:
            gs_request_body(s, self.worker.values, PyBytes_AS_STRING(decoded),
                            PyBytes_GET_SIZE(decoded))
        self._forward_upstream(chunk_frame(PyBytes_AS_STRING(decoded), PyBytes_GET_SIZE(decoded)))
        return True

    cdef int _put_reply_tail(self, OutBuf *b, bint close) except -1:
        """The date, server and (when closing) connection fields of a local reply."""
        ob_put(b, b"date: ", 6)
        ob_put_bytes(b, self.worker.date())
        ob_put(b, b"\r\nserver: ", 10)
        ob_put_bytes(b, self.listener.server_name)
        ob_put(b, b"\r\n", 2)
        if close:
            ob_put(b, b"connection: close\r\n", 19)
        return 0

    cdef void _write_chunk(self, bytes piece):
        """A piece of a response body the client gets chunked (downstream_chunked)."""
        self._write(chunk_frame(PyBytes_AS_STRING(piece), PyBytes_GET_SIZE(piece)))

    cdef void _write_last_chunk(self):
        """The end of a chunked response body."""
        self._write(last_chunk(self.stream, self))

    cdef void _write(self, bytes data):
        self.worker.values[self.listener.http_base + HTTP_DOWNSTREAM_CX_TX_BYTES_TOTAL] += \
            PyBytes_GET_SIZE(data)
        self.write(data)

    cdef int _finish_stream(self) except -1:
        """The response is fully written: account, then close or go on with the next request."""
        cdef ListenerRuntime lr = self.listener
        cdef int64_t *v = self.worker.values
        cdef Stream s = self.stream
        s.response_complete = True
        v[lr.http_base + HTTP_DOWNSTREAM_RQ_ACTIVE] -= 1
        v[lr.http_base + HTTP_DOWNSTREAM_RQ_COMPLETED] += 1
        if lr.access_logs is not None:
            self._write_access_log()
        if s.status >= 100:
            v[lr.http_base + HTTP_DOWNSTREAM_RQ_1XX + s.status // 100 - 1] += 1
        s.deadline = 0
        if s.duration_timer is not None:
            s.duration_timer.cancel()
            s.duration_timer = None
        if not s.keep_alive or (self.state == S_BODY and not s.request_complete):
            self._close()
            return 0
        self.state = S_HEAD
        s.upstream = None
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        if PyByteArray_GET_SIZE(self.buf):
            self._process()
        return 0

    cdef void _abort_stream(self):
        cdef Stream s = self.stream
        cdef UpstreamConnection up = s.upstream
        cdef ListenerRuntime lr = self.listener
        if up is not None:
            up.stream = None
            up._close_transport()
            s.upstream = None
        if not s.response_complete and self.state in (S_BODY, S_WAIT, S_TUNNEL):
            self._stream_stats_end(0)
            s.response_complete = True
            self.worker.values[lr.http_base + HTTP_DOWNSTREAM_RQ_ACTIVE] -= 1
            if s.response_started:
                self.worker.values[lr.http_base + HTTP_RQ_RESET_AFTER_DOWNSTREAM_RESPONSE_STARTED] += 1
            if self.transport is None:
                set_flag(s, RF_DC)  # the client went away first
            if lr.access_logs is not None:
                self._write_access_log()

    cdef void _write_access_log(self):
        cdef Stream s = self.stream
        cdef AccessLogEntry e = AccessLogEntry()
        e.start_time = s.wall_start
        e.duration = now() - s.start_time
        e.response_code = s.status if s.response_started else 0
        e.flags = s.flags
        e.flag_order = s.flag_order
        e.bytes_received = s.bytes_received
        e.bytes_sent = s.bytes_sent
        e.protocol = b"HTTP/1.1" if self.minor_version == 1 else b"HTTP/1.0"
        e.request_headers = s.log_headers or {}
        e.route_name = s.decision.route_name
        e.upstream_cluster = s.decision.cluster if s.decision.action == ACTION_ROUTE else None
        if s.upstream_address is not None:
            e.upstream_host = s.upstream_address
        e.downstream_remote_address = s.decision.remote_address
        e.downstream_local_address = s.decision.local_address
        for log in self.listener.access_logs:
            try:
                (<AccessLog>log).log(e)
            except Exception:
                pass  # a log that cannot be written never fails the request

    cdef void _close(self):
        if self.transport is not None and not self.closing:
            self.closing = True
            self.transport.close()
        self.closing = True

    def close_if_idle(self):
        """Drain: close now if no request is in flight, else after the current response."""
        self.closing = True
        if self.state == S_HEAD and PyByteArray_GET_SIZE(self.buf) == 0:
            self._close()

    def sweep(self, double t):
        """Idle and stream timeouts, checked by the worker's periodic sweep."""
        cdef ListenerRuntime lr = self.listener
        cdef int64_t *v = self.worker.values
        cdef Stream s = self.stream
        if self.transport is None:
            return
        if self.state == S_HEAD:
            if PyByteArray_GET_SIZE(self.buf) == 0:
                if lr.idle_timeout > 0 and t - self.last_activity >= lr.idle_timeout:
                    v[lr.http_base + HTTP_DOWNSTREAM_CX_IDLE_TIMEOUT] += 1
                    self._close()
            elif lr.request_timeout > 0 and t - self.last_activity >= lr.request_timeout:
                v[lr.http_base + HTTP_DOWNSTREAM_RQ_TIMEOUT] += 1
                self.state = S_WAIT
                v[lr.http_base + HTTP_DOWNSTREAM_RQ_ACTIVE] += 1
                s.reset()
                s.keep_alive = False
                self._local_reply(408, BODY_REQUEST_TIMEOUT, True, None)
            return
        if self.state in (S_BODY, S_WAIT) and not s.response_complete:
            if lr.request_timeout > 0 and not s.request_complete \
                    and t - s.start_time >= lr.request_timeout:
                v[lr.http_base + HTTP_DOWNSTREAM_RQ_TIMEOUT] += 1
                self._upstream_failed(408, BODY_REQUEST_TIMEOUT)
                return
            up_activity = s.upstream.last_activity if s.upstream is not None else 0.0
            last = max(self.last_activity, up_activity, s.start_time)
            if s.idle_timeout > 0 and t - last >= s.idle_timeout:
                v[lr.http_base + HTTP_DOWNSTREAM_RQ_IDLE_TIMEOUT] += 1
                set_flag(s, RF_SI)
                self._upstream_failed(504 if s.request_complete else 408, BODY_STREAM_TIMEOUT)


cdef int apply_ops(OutBuf *b, tuple ops_list) except -1:
    """Slow path for routes with header mutations: re-read the head written so far (start line
    and header lines, each ending in CRLF) as a list of (name, value), apply each HeaderOps as
    documented in router.pxd, and write it back, still open for more header lines."""
    cdef bytes raw = PyBytes_FromStringAndSize(b.data, b.length)
    b.length = 0
    lines = raw.split(b"\r\n")
    first = lines[0]
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b": ")
        headers.append([name, value])
    for ops in ops_list:
        remove = (<HeaderOps>ops).remove
        if remove:
            headers = [h for h in headers if h[0] not in remove]
        present = {h[0] for h in headers}
        appends = []
        overwrites = []
        for name, value, action, keep_empty in (<HeaderOps>ops).add:
            if action == 0:
                appends.append((name, value))
            elif action == 1:
                if name not in present:
                    appends.append((name, value))
            elif action == 2:
                overwrites.append((name, value))
            elif name in present:
                overwrites.append((name, value))
        for name, value in overwrites:
            headers = [h for h in headers if h[0] != name]
            headers.append([name, value])
        for name, value in appends:
            headers.append([name, value])
    parts = [first]
    for name, value in headers:
        parts.append(name + b": " + value)
    parts.append(b"")
    ob_put_bytes(b, b"\r\n".join(parts))
    return 0


cdef inline bint is_grpc(RequestHead *head) noexcept:
    """Envoy's gRPC request test: content-type application/grpc, alone or followed by '+' or
    ';' (application/grpc-web is not gRPC)."""
    cdef int i = find_header(head.headers, head.num_headers, b"content-type", 12)
    cdef const char *v
    cdef size_t n
    if i < 0:
        return False
    v = head.headers[i].value
    n = head.headers[i].value_len
    return n >= 16 and memcmp(v, b"application/grpc", 16) == 0 and (
        n == 16 or v[16] == 43 or v[16] == 59)


cdef int put_grpc_timeout(OutBuf *b, int64_t ms) except -1:
    """A grpc-timeout value as Envoy writes it: milliseconds, or a coarser unit to stay within
    eight digits; with CRLF."""
    cdef const char *units = b"mSMH"
    cdef int u = 0
    cdef int64_t div
    while ms > 99999999 and u < 3:
        div = 1000 if u == 0 else 60
        ms = (ms + div - 1) // div
        u += 1
    ob_put_int(b, ms)
    ob_put(b, units + u, 1)
    ob_put(b, b"\r\n", 2)
    return 0


cdef int64_t parse_grpc_timeout(const char *v, size_t n) noexcept:
    """A grpc-timeout value (1 to 8 digits and a unit: H M S m u n) in milliseconds, rounded
    up; -1 when malformed."""
    cdef int64_t x = 0
    cdef size_t i
    cdef char unit
    if n < 2 or n > 9:
        return -1
    for i in range(n - 1):
        if v[i] < 48 or v[i] > 57:
            return -1
        x = x * 10 + (v[i] - 48)
    unit = v[n - 1]
    if unit == 72:       # H
        return x * 3600000
    if unit == 77:       # M
        return x * 60000
    if unit == 83:       # S
        return x * 1000
    if unit == 109:      # m
        return x
    if unit == 117:      # u
        return (x + 999) // 1000
    if unit == 110:      # n
        return (x + 999999) // 1000000
    return -1


cdef int http_to_grpc_status(int status) noexcept:
    """Envoy's mapping of a local reply's HTTP status to a gRPC status."""
    if status == 400:
        return 13   # INTERNAL
    if status == 401:
        return 16   # UNAUTHENTICATED
    if status == 403:
        return 7    # PERMISSION_DENIED
    if status == 404:
        return 12   # UNIMPLEMENTED
    if status == 429 or status == 502 or status == 503 or status == 504:
        return 14   # UNAVAILABLE
    return 2        # UNKNOWN


cdef bytes grpc_percent_encode(bytes text):
    """grpc-message encoding as Envoy's PercentEncoding::encode: bytes below ' ', from '~' up
    (Envoy escapes '~' too), and '%', as %XX."""
    cdef unsigned char c
    cdef bint plain = True
    for c in text:
        if c < 0x20 or c >= 0x7e or c == 0x25:
            plain = False
            break
    if plain:
        return text
    return b"".join(b"%%%02X" % c if (c < 0x20 or c >= 0x7e or c == 0x25) else bytes((c,))
                    for c in text)


# -- gRPC stats (envoy.filters.http.grpc_stats) ----------------------------------------------
#
# A gRPC request (as the filter sees it: after the gRPC-Web filter when it comes after it) to a
# cluster, whose path is /<service>/<method>, is counted in cluster.<name>.grpc.*, or in
# cluster.<name>.grpc.<service>.<method>.* when the method is in the filter's allowlist
# (Stream.gs_base).  As Envoy's filter: every grpc-status seen in a response head (trailers-only
# answers and local replies) or in the trailers charges total, success ("0") or failure, and
# grpc.<status>; an answer without one (a reset, a broken-off stream) charges nothing.  Messages
# count from the flag byte of each length-prefixed frame, across body pieces; response frames
# only of a gRPC answer (200, gRPC content-type).  Other requests pay one test of gs_base.

cdef inline int64_t grpc_frames(GrpcFrames *f, const char *p, size_t n,
                                bint response) noexcept nogil:
    """The gRPC frames that start in p[0:n], given where the body was (Envoy's FrameInspector:
    a frame counts from its flag byte; for a response, a frame with the Connect end-of-stream
    flag 0x02 counts not, nor any frame after it: Envoy's ResponseFrameCounter)."""
    cdef int64_t started = 0
    cdef size_t i = 0, take
    if f.stopped:
        return 0
    while i < n:
        if f.remaining:
            take = n - i
            if take > f.remaining:
                take = f.remaining
            f.remaining -= <uint32_t>take
            i += take
        elif f.hdr == 0:
            if response and (<unsigned char>p[i]) & 2:
                f.stopped = 1
                return started
            started += 1
            f.hdr = 1
            f.length = 0
            i += 1
        else:
            f.length = (f.length << 8) | <unsigned char>p[i]
            i += 1
            if f.hdr == 4:
                f.hdr = 0
                f.remaining = f.length
            else:
                f.hdr += 1
    return started


def grpc_frame_count(pieces, bint response=False):
    """The gRPC frames the stats filter counts in a body given as a sequence of bytes pieces
    (for tests)."""
    cdef GrpcFrames f
    cdef int64_t total = 0
    f.remaining = f.length = 0
    f.hdr = f.stopped = 0
    for piece in pieces:
        total += grpc_frames(&f, PyBytes_AS_STRING(piece), PyBytes_GET_SIZE(piece), response)
    return total


cdef void gs_start(Stream s, ListenerRuntime lr, RequestHead *head):
    """The gRPC stats filter on a gRPC request's head: counted when its route's cluster exists
    and its path (up to '?', split at '/', empty parts skipped) is exactly /service/method, as
    Envoy's Grpc::Common::resolveServiceAndMethod reads it."""
    cdef ClusterRuntime c = lr.worker.clusters.get(s.decision.cluster)
    cdef const char *p = head.path
    cdef size_t n = head.path_len, i = 0, j
    cdef size_t start[2]
    cdef size_t end[2]
    cdef int parts = 0
    cdef const char *q
    if c is None or c.grpc_base < 0:
        return
    q = <const char *>memchr(p, 63, n)  # '?'
    if q != NULL:
        n = q - p
    while i < n:
        if p[i] == 47:  # '/'
            i += 1
            continue
        if parts == 2:
            return
        j = i
        while j < n and p[j] != 47:
            j += 1
        start[parts] = i
        end[parts] = j
        parts += 1
        i = j
    if parts != 2:
        return
    cdef int base = c.grpc_base
    if lr.gs_allow is not None:
        index = lr.gs_allow.get(p[start[0]:end[0]] + b"/" + p[start[1]:end[1]])
        if index is not None:
            base = c.grpc_method_bases[index]
    s.gs_base = base
    s.gs_resp = False
    s.gs_req.remaining = s.gs_rsp.remaining = 0
    s.gs_req.hdr = s.gs_rsp.hdr = 0
    s.gs_req.stopped = s.gs_rsp.stopped = 0


cdef inline void gs_request_body(Stream s, int64_t *v, const char *p, size_t n) noexcept:
    cdef int64_t k = grpc_frames(&s.gs_req, p, n, False)
    if k:
        v[s.gs_base + GRPC_REQUEST_MESSAGE_COUNT] += k


cdef inline void gs_response_body(Stream s, int64_t *v, const char *p, size_t n) noexcept:
    cdef int64_t k = grpc_frames(&s.gs_rsp, p, n, True)
    if k:
        v[s.gs_base + GRPC_RESPONSE_MESSAGE_COUNT] += k


cdef inline void gs_status_code(int64_t *v, int base, int code) noexcept:
    v[base + GRPC_TOTAL] += 1
    v[base + (GRPC_SUCCESS if code == 0 else GRPC_FAILURE)] += 1
    if 0 <= code <= 16:
        v[base + GRPC_STATUS_0 + code] += 1


cdef void gs_status(int64_t *v, int base, const char *value, size_t n) noexcept:
    """A grpc-status value as Envoy charges it: success when it is exactly "0", and grpc.<value>
    for the well-known statuses 0 .. 16 written as Envoy names them (Envoy makes a counter at
    run time for any other value: not kept here; total and failure still count)."""
    cdef int code = -1
    if n == 1 and 48 <= value[0] <= 57:
        code = value[0] - 48
    elif n == 2 and value[0] == 49 and 48 <= value[1] <= 54:  # "10" .. "16"
        code = 10 + value[1] - 48
    if code >= 0:
        gs_status_code(v, base, code)
    else:
        v[base + GRPC_TOTAL] += 1
        v[base + GRPC_FAILURE] += 1


cdef void gs_response_head(Stream s, int64_t *v, ResponseHead *head) noexcept:
    """The response head of a counted call: its grpc-status, if any, is charged; frames of the
    body are counted when it is a gRPC answer (200, gRPC content-type)."""
    cdef int i = find_header(head.headers, head.num_headers, b"grpc-status", 11)
    if i >= 0:
        gs_status(v, s.gs_base, head.headers[i].value, head.headers[i].value_len)
    i = find_header(head.headers, head.num_headers, b"content-type", 12)
    s.gs_resp = head.status == 200 and i >= 0 and _grpc_content_type(head.headers[i].value,
                                                                      head.headers[i].value_len)


cdef void gs_trailers(Stream s, int64_t *v):
    """The trailers of a counted call (HTTP/2 upstreams): their grpc-status, if any.  They end
    the answer: nothing more is counted for the call."""
    cdef int base = s.gs_base
    s.gs_base = -1
    for name, value in s.response_trailers:
        if name == b"grpc-status":
            gs_status(v, base, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
            return


# -- gRPC-Web (envoy.filters.http.grpc_web) ----------------------------------------------------

cdef bytes CT_GRPC_WEB = b"application/grpc-web+proto"
cdef bytes CT_GRPC_WEB_TEXT = b"application/grpc-web-text+proto"
cdef const char *CT_GRPC = b"application/grpc"
cdef const char *CT_GRPC_WEB_C = b"application/grpc-web+proto"
cdef const char *CT_GRPC_WEB_TEXT_C = b"application/grpc-web-text+proto"
cdef bytes BODY_GRPC_WEB_BASE64 = b"Bad gRPC-web request, invalid base64 data."
cdef Py_ssize_t GRPC_WEB_MAX_MESSAGE = 16384   # Envoy's MAX_BUFFERED_PLAINTEXT_LENGTH
cdef bytes B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


cdef class GrpcWebState:
    """The codec state of one gRPC-Web stream."""
    cdef bytes b64_rest      # request (-text): base64 characters short of a group of 4
    cdef bytearray frame     # response (-text): an incomplete gRPC frame
    cdef bytes head_a        # an answer being turned into grpc-status/grpc-message: its head,
    cdef bytes head_b        # before and after the place of those headers
    cdef list held           # ... and the body so far (up to 16 KiB)
    cdef Py_ssize_t held_size

    def __cinit__(self):
        self.b64_rest = b""


cdef inline bint _value_is(const char *v, size_t n, const char *lit, size_t m) noexcept:
    return n == m and memcmp(v, lit, m) == 0


cdef int grpc_web_request(RequestHead *head) noexcept:
    """Envoy's gRPC-Web request test: content-type exactly application/grpc-web,
    application/grpc-web+proto, application/grpc-web-text or application/grpc-web-text+proto.
    Returns the GW_* flags (GW_TEXT_OUT when accept is exactly one of the -text ones), or 0."""
    cdef int i = find_header(head.headers, head.num_headers, b"content-type", 12)
    cdef int flags
    cdef const char *v
    cdef size_t n
    if i < 0:
        return 0
    v = head.headers[i].value
    n = head.headers[i].value_len
    if _value_is(v, n, b"application/grpc-web", 20) or \
            _value_is(v, n, b"application/grpc-web+proto", 26):
        flags = GW_ON
    elif _value_is(v, n, b"application/grpc-web-text", 25) or \
            _value_is(v, n, b"application/grpc-web-text+proto", 31):
        flags = GW_ON | GW_TEXT_IN
    else:
        return 0
    i = find_header(head.headers, head.num_headers, b"accept", 6)
    if i >= 0:
        v = head.headers[i].value
        n = head.headers[i].value_len
        if _value_is(v, n, b"application/grpc-web-text", 25) or \
                _value_is(v, n, b"application/grpc-web-text+proto", 31):
            flags |= GW_TEXT_OUT
    return flags


cdef int64_t grpc_web_request_head(RequestHead *head) noexcept:
    """The gRPC-Web filter on a request head, in place (after routing, as in Envoy):
    content-type application/grpc, content-length dropped (a header without a name is skipped
    as hop-by-hop).  A body with a length then goes upstream chunked: returns that length (for
    the body decoder), else -1."""
    cdef int i = find_header(head.headers, head.num_headers, b"content-type", 12)
    if i >= 0:
        head.headers[i].value = CT_GRPC
        head.headers[i].value_len = 16
    i = find_header(head.headers, head.num_headers, b"content-length", 14)
    if i >= 0:
        head.headers[i].name = NULL
        head.headers[i].name_len = 0
    if head.body_kind == BODY_LENGTH:
        head.body_kind = BODY_CHUNKED
        return head.content_length
    return -1


cdef int grpc_web_request_headers(OutBuf *b, RequestHead *head) except -1:
    """What the gRPC-Web filter adds to the upstream request (after the connection manager's
    own additions): te: trailers, unless the client's (kept) says so, and
    grpc-accept-encoding: identity unless the client sent one."""
    cdef int i = find_header(head.headers, head.num_headers, b"te", 2)
    if i < 0 or not name_eq(head.headers[i].value, head.headers[i].value_len, b"trailers", 8):
        ob_put(b, b"te: trailers\r\n", 14)
    if find_header(head.headers, head.num_headers, b"grpc-accept-encoding", 20) < 0:
        ob_put(b, b"grpc-accept-encoding: identity\r\n", 32)
    return 0


cdef bint _grpc_content_type(const char *v, size_t n) noexcept:
    """Envoy's gRPC content-type test (as is_grpc)."""
    return n >= 16 and memcmp(v, b"application/grpc", 16) == 0 and (
        n == 16 or v[16] == 43 or v[16] == 59)


cdef bint _grpc_web_proto_content_type(const char *v, size_t n) noexcept:
    """application/grpc-web or application/grpc-web+proto, any case, parameters ignored."""
    cdef size_t i, m = 0
    cdef const char *lit
    while m < n and v[m] != 59:   # ';'
        m += 1
    while m > 0 and (v[m - 1] == 32 or v[m - 1] == 9):
        m -= 1
    if m == 20:
        lit = b"application/grpc-web"
    elif m == 26:
        lit = b"application/grpc-web+proto"
    else:
        return False
    for i in range(m):
        if (v[i] | 0x20 if 65 <= v[i] <= 90 else v[i]) != lit[i]:
            return False
    return True


cdef int grpc_web_response_head(Stream s, ResponseHead *head) noexcept:
    """The gRPC-Web filter on the response head, in place: content-type (when there is one)
    becomes application/grpc-web(-text)+proto, content-length is dropped.  An answer with a body
    that is neither gRPC (200 and a gRPC content-type) nor proto-encoded gRPC-Web is flagged
    GW_TRANSFORM; a bodyless one is gRPC when it has a grpc-status (trailers-only) and is never
    transformed.  Returns the stream's GW_* flags."""
    cdef int ct = find_header(head.headers, head.num_headers, b"content-type", 12)
    cdef int i
    cdef bint grpc
    if head.body_kind != BODY_NONE:
        grpc = head.status == 200 and ct >= 0 and (
            _grpc_content_type(head.headers[ct].value, head.headers[ct].value_len) or
            _grpc_web_proto_content_type(head.headers[ct].value, head.headers[ct].value_len))
        if not grpc:
            s.grpc_web |= GW_TRANSFORM
    i = find_header(head.headers, head.num_headers, b"content-length", 14)
    if i >= 0:
        head.headers[i].name = NULL
        head.headers[i].name_len = 0
    if ct >= 0:
        if s.grpc_web & GW_TEXT_OUT:
            head.headers[ct].value = CT_GRPC_WEB_TEXT_C
            head.headers[ct].value_len = 31
        else:
            head.headers[ct].value = CT_GRPC_WEB_C
            head.headers[ct].value_len = 26
    return s.grpc_web


cdef int grpc_web_response_middle(Stream s, OutBuf *b, ResponseHead *head) except -1:
    """After the headers of the route and the filters: the gRPC-Web content-type when the
    upstream sent none; an answer being transformed keeps what is written so far (its
    grpc-status/grpc-message go here once the body is in)."""
    if find_header(head.headers, head.num_headers, b"content-type", 12) < 0:
        ob_put(b, b"content-type: ", 14)
        ob_put_bytes(b, CT_GRPC_WEB_TEXT if s.grpc_web & GW_TEXT_OUT else CT_GRPC_WEB)
        ob_put(b, b"\r\n", 2)
    if s.grpc_web & GW_TRANSFORM:
        (<GrpcWebState>s.gw).head_a = ob_take(b)
    return 0


cdef int grpc_web_response_framing(Stream s, OutBuf *b, ResponseHead *head) except -1:
    """The framing of a gRPC-Web answer to the client: a body goes chunked (its length changes),
    a bodyless answer gets the codec's content-length: 0.  A transformed answer gets its
    content-length: 0 with the grpc-* headers."""
    if s.grpc_web & GW_TRANSFORM:
        return 0
    if head.body_kind != BODY_NONE:
        s.downstream_chunked = True
        ob_put(b, b"transfer-encoding: chunked\r\n", 28)
    elif s.is_head:
        ob_put(b, b"transfer-encoding: chunked\r\n", 28)
    elif head.status != 204 and head.status != 304:
        ob_put(b, b"content-length: 0\r\n", 19)
    return 0


cdef int put_grpc_web_status(OutBuf *b, int status, bytes message) except -1:
    """The headers of an answer the gRPC-Web filter turned into a bodyless one."""
    ob_put(b, b"grpc-message: ", 14)
    ob_put_bytes(b, grpc_percent_encode(message))
    ob_put(b, b"\r\ngrpc-status: ", 15)
    ob_put_int(b, http_to_grpc_status(status))
    ob_put(b, b"\r\ncontent-length: 0\r\n", 21)
    return 0


cdef bytes grpc_web_trailers_frame(list trailers):
    """The trailers as a gRPC-Web body frame: flag 0x80, length, "name:value\\r\\n" lines."""
    cdef bytes text = b"".join([n + b":" + v + b"\r\n" for n, v in trailers])
    return _struct_frame.pack(0x80, len(text)) + text


cdef bytes grpc_web_text_frames(GrpcWebState st, bytes data):
    """Base64 of each gRPC frame completed by `data` (frames are encoded one by one, each with
    its padding, as Envoy's filter does); an incomplete frame waits in the state.  A frame with
    flags other than 0/1 stops the decoding as Envoy's decoder does: that piece then goes out
    raw, followed by the frames completed before the bad one (nothing when there are none)."""
    cdef bytearray buf
    cdef Py_ssize_t pos = 0, n
    cdef const unsigned char *p
    cdef uint64_t length
    cdef list out = []
    if st.frame is None:
        st.frame = bytearray(data)
    else:
        st.frame += data
    buf = st.frame
    n = PyByteArray_GET_SIZE(buf)
    p = <const unsigned char *>PyByteArray_AS_STRING(buf)
    while pos < n:
        if p[pos] & 0xFE:
            del buf[:]
            return data + b"".join(out) if out else b""
        if n - pos < 5:
            break
        length = (<uint64_t>p[pos + 1] << 24) | (<uint64_t>p[pos + 2] << 16) | \
            (<uint64_t>p[pos + 3] << 8) | p[pos + 4]
        if <uint64_t>(n - pos - 5) < length:
            break
        out.append(b2a_base64(PyByteArray_AS_STRING(buf)[pos:pos + 5 + length], newline=False))
        pos += 5 + <Py_ssize_t>length
    if pos:
        del buf[:pos]
    return b"".join(out)


cdef bytes envoy_base64_decode(bytes text):
    """Envoy's Base64::decode: a non-empty multiple of 4 characters of the standard alphabet,
    '=' only as the last one or two, the bits past the data zero.  None when invalid."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(text)
    cdef int pad
    if n == 0 or n % 4:
        return None
    try:
        out = a2b_base64(text, strict_mode=True)
    except BinasciiError:
        return None
    pad = (text[n - 1] == 61) + (text[n - 2] == 61)
    if pad and B64_ALPHABET.index(text[n - 1 - pad]) & (0x0F if pad == 2 else 0x03):
        return None  # bits past the data (binascii ignores them; Envoy refuses them)
    return out


cdef inline void set_flag(Stream s, int flag):
    """Set a response flag, remembering the order (Envoy's logs print flags in that order)."""
    if s.flags & flag:
        return
    s.flags |= flag
    if s.flag_order is None:
        s.flag_order = [flag]
    else:
        s.flag_order.append(flag)


cdef dict capture_headers(RequestHead *head, tuple wanted):
    """The request headers an access log reads, copied before the head's buffer is reused."""
    cdef dict out = {}
    cdef size_t i
    cdef bytes name
    if b":method" in wanted:
        out[":method"] = PyBytes_FromStringAndSize(head.method, head.method_len)
    if b":path" in wanted:
        out[":path"] = PyBytes_FromStringAndSize(head.target, head.target_len)
    for i in range(head.num_headers):
        name = PyBytes_FromStringAndSize(head.headers[i].name, head.headers[i].name_len).lower()
        if <int>i == head.host_index:
            name = b":authority"
        if name in wanted:
            key = name.decode("latin-1")
            if key not in out:
                out[key] = PyBytes_FromStringAndSize(head.headers[i].value,
                                                     head.headers[i].value_len)
    return out


cdef void set_decision_addresses(RouteDecision d, transport):
    """The client and listener addresses that hash policies read (set once per connection)."""
    peer = transport.get_extra_info("peername")
    local = transport.get_extra_info("sockname")
    if peer:
        ip = peer[0]
        d.source_ip = ip.encode()
        d.remote_address = (("[%s]:%d" if ":" in ip else "%s:%d") % (ip, peer[1])).encode()
    if local:
        d.local_address = (("[%s]:%d" if ":" in local[0] else "%s:%d") % (local[0], local[1])).encode()


cdef bytes last_chunk(Stream s, DownstreamConnection down):
    """The end of a chunked response: with the upstream's trailers when the connection
    manager enables them for HTTP/1 clients (an HTTP/2 client's bridge reads them from the
    stream itself)."""
    if s.response_trailers and down.listener.enable_trailers:
        return b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in s.response_trailers) \
            + b"\r\n"
    return LAST_CHUNK


cdef bint retriable_grpc(frozenset statuses, ResponseHead *head):
    """A trailers-only gRPC answer whose grpc-status is one of the retry_on conditions'."""
    cdef int i = find_header(head.headers, head.num_headers, b"grpc-status", 11)
    if i < 0:
        return False
    value = PyBytes_FromStringAndSize(head.headers[i].value, head.headers[i].value_len)
    return value.isdigit() and int(value) in statuses


cdef bint retriable_headers_match(matchers, ResponseHead *head):
    """retry_on retriable-headers: does any matcher match the response's headers?"""
    cdef size_t i
    headers = [(PyBytes_FromStringAndSize(head.headers[i].name, head.headers[i].name_len).lower()
                .decode("latin-1"),
                PyBytes_FromStringAndSize(head.headers[i].value, head.headers[i].value_len)
                .decode("latin-1")) for i in range(head.num_headers)]
    for m in matchers:
        values = [v for n, v in headers if n == m.name]
        if m.present is not None:
            hit = bool(values) == m.present
        elif not values:
            continue
        else:
            hit = any(string_match(m.matcher, v) for v in values)
        if hit != m.invert:
            return True
    return False


def string_match(sm, str value):
    a, b = (value.lower(), sm.value.lower()) if sm.ignore_case else (value, sm.value)
    if sm.kind == "exact":
        return a == b
    if sm.kind == "prefix":
        return a.startswith(b)
    if sm.kind == "suffix":
        return a.endswith(b)
    if sm.kind == "contains":
        return b in a
    import re
    return re.fullmatch(sm.value, value) is not None


class _DefaultRetry:
    """What a request gets from x-envoy-retry-on when its route has no retry policy."""
    retry_on = frozenset()
    num_retries = 1
    per_try_timeout_ms = 0
    per_try_idle_timeout_ms = 0
    base_interval_ms = 25
    max_interval_ms = 250
    previous_hosts = False
    host_selection_retry_max_attempts = 1
    retriable_status_codes = ()
    retriable_headers = ()


_DEFAULT_RETRY = _DefaultRetry()


def is_internal_ip(bytes ip):
    """RFC 1918 and IPv6 unique-local addresses (Envoy's internal addresses)."""
    if ip.startswith(b"10.") or ip.startswith(b"192.168."):
        return 1
    if ip.startswith(b"172."):
        parts = ip.split(b".")
        return 1 if len(parts) == 4 and parts[1].isdigit() and 16 <= int(parts[1]) <= 31 else 0
    return 1 if ip[:2].lower() in (b"fc", b"fd") else 0


cdef bint consumed_envoy_header(const char *n, size_t k) noexcept:
    """x-envoy-* request headers that Envoy reads and removes, or always sets itself."""
    return ((k == 16 and (lit_eq(n, 16, b"x-envoy-internal", 16) or lit_eq(n, 16, b"x-envoy-retry-on", 16)))
            or (k == 19 and lit_eq(n, 19, b"x-envoy-max-retries", 19))
            or (k == 21 and lit_eq(n, 21, b"x-envoy-retry-grpc-on", 21))
            or (k == 30 and (lit_eq(n, 30, b"x-envoy-upstream-rq-timeout-ms", 30)
                             or lit_eq(n, 30, b"x-envoy-expected-rq-timeout-ms", 30)))
            or (k == 38 and lit_eq(n, 38, b"x-envoy-upstream-rq-per-try-timeout-ms", 38)))


cdef bint needs_empty_length(const char *m, size_t n) noexcept:
    """Envoy's codec writes content-length: 0 for a body-less request unless the method is one
    that takes no body (GET, HEAD, DELETE, TRACE, CONNECT)."""
    if n == 3 and lit_eq(m, 3, b"get", 3):
        return False
    if n == 4 and lit_eq(m, 4, b"head", 4):
        return False
    if n == 6 and lit_eq(m, 6, b"delete", 6):
        return False
    if n == 5 and lit_eq(m, 5, b"trace", 5):
        return False
    if n == 7 and lit_eq(m, 7, b"connect", 7):
        return False
    return True


cdef bint valid_authority(const char *v, size_t n) noexcept:
    """Envoy refuses an authority with characters a host (or host:port, [v6]:port) cannot hold."""
    cdef size_t i
    cdef unsigned char c
    for i in range(n):
        c = <unsigned char>v[i]
        if c <= 32 or c >= 127 or c == 34 or c == 60 or c == 62 or c == 92 or c == 94 \
                or c == 96 or c == 123 or c == 124 or c == 125 or c == 47 or c == 63 or c == 35:
            return False
    return True


# ---------------------------------------------------------------------------------------------

cdef class UpstreamConnection:
    def __init__(self, ClusterRuntime cluster, int host):
        self.cluster = cluster
        self.host = host
        self.address = cluster.hosts[host]
        self.buf = bytearray()
        self.state = U_CONNECTING
        self.connected = False
        self.closed = False
        self.transport = None
        self.stream = None
        self.connect_timer = None
        self.requests = 0
        self.last_activity = now()

    cdef void start_connect(self):
        cdef ClusterRuntime c = self.cluster
        cdef Worker w = c.worker
        cdef int64_t *v = w.values
        v[c.base + CLUSTER_UPSTREAM_CX_TOTAL] += 1
        v[c.base + CLUSTER_UPSTREAM_CX_HTTP1_TOTAL] += 1
        v[c.base + CLUSTER_UPSTREAM_CX_ACTIVE] += 1
        self.connect_timer = start_connect(c, self, self.address, self._connect_done,
                                           self._connect_timeout)

    def _connect_done(self, task):
        cdef ClusterRuntime c = self.cluster
        if self.connect_timer is not None:
            self.connect_timer.cancel()
            self.connect_timer = None
        if task.cancelled():
            return
        if task.exception() is not None:
            count_connect_failure(c, False)
            if c.state is not None:
                c.state.report_local_failure(self.host, LOCAL_CONNECT_FAILED)
            self._connect_failed("remote connection failure")

    def _connect_timeout(self, task):
        cdef ClusterRuntime c = self.cluster
        self.connect_timer = None
        if self.connected:
            return
        task.cancel()
        count_connect_failure(c, True)
        if c.state is not None:
            c.state.report_local_failure(self.host, LOCAL_CONNECT_TIMEOUT)
        self._connect_failed("connection timeout")

    cdef void _connect_failed(self, str reason):
        cdef ClusterRuntime c = self.cluster
        cdef int64_t *v = c.worker.values
        if self.closed:
            return
        self.closed = True
        self.state = U_CLOSED
        c.connection_closed(self)
        v[c.base + CLUSTER_UPSTREAM_CX_ACTIVE] -= 1
        v[c.base + CLUSTER_UPSTREAM_CX_DESTROY] += 1
        if self.stream is not None:
            v[c.base + CLUSTER_UPSTREAM_RQ_PENDING_FAILURE_EJECT] += 1
        self._fail(reason)

    cdef void attach(self, Stream s):
        self.stream = s
        self.requests += 1
        s.upstream_address = <bytes>self.cluster.host_authority[self.host] \
            if self.host < len(self.cluster.host_authority) else None
        if self.connected:
            self.cluster.worker.values[self.cluster.base + CLUSTER_UPSTREAM_RQ_TOTAL] += 1
            self.state = U_HEAD
        elif s.pending_writes is None:
            s.pending_writes = []

    cdef void send(self, object data):
        cdef Stream s = self.stream
        self.last_activity = now()
        if self.connected:
            self.cluster.worker.values[self.cluster.base + CLUSTER_UPSTREAM_CX_TX_BYTES_TOTAL] += len(data)
            self.write(data)
        elif s is not None and s.pending_writes is not None:
            s.pending_writes.append(data)

    # -- asyncio protocol -----------------------------------------------------------------------
    def connection_made(self, transport):
        cdef ClusterRuntime c = self.cluster
        cdef Stream s = self.stream
        self.transport = transport
        self.write = transport.write
        self.connected = True
        if s is not None:
            s.downstream._end_pending()
        transport.set_write_buffer_limits(high=c.buffer_limit)
        if c.keepalive is not None:
            set_keepalive(transport.get_extra_info("socket"), c.keepalive)
        if self.closed:
            transport.close()
            return
        if s is None:
            # The stream went away while we connected: keep the connection for the next one.
            c.release(self)
            return
        self.state = U_HEAD
        c.worker.values[c.base + CLUSTER_UPSTREAM_RQ_TOTAL] += 1
        pending = s.pending_writes
        s.pending_writes = None
        if pending:
            for data in pending:
                self.send(data)
        if s.downstream.read_paused is False and self.transport is not None:
            pass

    def data_received(self, bytes data):
        self.cluster.worker.values[self.cluster.base + CLUSTER_UPSTREAM_CX_RX_BYTES_TOTAL] += \
            PyBytes_GET_SIZE(data)
        self._received(data)

    cdef int _received(self, bytes data) except -1:
        """Response bytes (HTTP/1) for the attached stream."""
        cdef ClusterRuntime c = self.cluster
        cdef ResponseHead *head
        cdef Py_ssize_t n
        cdef int rc
        self.last_activity = now()
        if self.stream is None:
            # Bytes from an idle upstream: it broke HTTP/1 framing; drop the connection.
            c.worker.values[c.base + CLUSTER_UPSTREAM_CX_PROTOCOL_ERROR] += 1
            self._close_transport()
            return 0
        if self.state == U_TUNNEL:
            self.stream.downstream._write(data)
            return 0
        if self.state == U_BODY and PyByteArray_GET_SIZE(self.buf) == 0:
            self._on_response_body(data)
            return 0
        self.buf += data
        while self.state == U_HEAD and self.stream is not None:
            n = PyByteArray_GET_SIZE(self.buf)
            if n == 0:
                return 0
            head = c.worker.resp_head
            rc = parse_response_head(PyByteArray_AS_STRING(self.buf), n, 81920,
                                     self.stream.is_head, head)
            if rc == PARSE_INCOMPLETE:
                return 0
            if rc < 0:
                c.worker.values[c.base + CLUSTER_UPSTREAM_CX_PROTOCOL_ERROR] += 1
                self._fail("protocol error", 502)
                return 0
            if head.status < 200 and head.status != 101:
                del self.buf[:rc]   # interim response: Envoy answers 100-continue itself
                continue
            self._on_response_head(PyByteArray_AS_STRING(self.buf), n, rc)
        if self.state == U_BODY and PyByteArray_GET_SIZE(self.buf) and self.stream is not None:
            rest = bytes(self.buf)
            del self.buf[:]
            self._on_response_body(rest)
        return 0

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        cdef ClusterRuntime c = self.cluster
        cdef int64_t *v = c.worker.values
        cdef Stream s = self.stream
        if self.connect_timer is not None:
            self.connect_timer.cancel()
            self.connect_timer = None
        was_closed = self.closed
        self.closed = True
        self.transport = None
        v[c.base + CLUSTER_UPSTREAM_CX_ACTIVE] -= 1
        v[c.base + CLUSTER_UPSTREAM_CX_DESTROY] += 1
        if was_closed:
            v[c.base + CLUSTER_UPSTREAM_CX_DESTROY_LOCAL] += 1
        else:
            v[c.base + CLUSTER_UPSTREAM_CX_DESTROY_REMOTE] += 1
        # Every connection that goes away frees its place (max_connections, the per-host
        # count), whether or not a request was on it.
        c.connection_closed(self)
        if s is None:
            return
        if self.state == U_TUNNEL:
            self.stream = None
            s.upstream = None
            s.downstream._close()
            return
        if self.state == U_BODY and self.body.kind == BODY_EOF:
            self.state = U_CLOSED
            self.keep_alive = False
            self._finish_body_eof()
            return
        if not was_closed:
            v[c.base + CLUSTER_UPSTREAM_RQ_RX_RESET] += 1
            if c.state is not None and s is not None:
                c.state.report_local_failure(self.host, LOCAL_RESET)
            if self.state == U_HEAD and PyByteArray_GET_SIZE(self.buf):
                # closed in the middle of a response head: a protocol error, as Envoy sees it
                self.state = U_CLOSED
                self._fail("protocol error", 502)
                return
            self.state = U_CLOSED
            self._fail("connection termination")
        self.state = U_CLOSED

    def pause_writing(self):
        cdef Stream s = self.stream
        if s is not None and s.downstream.transport is not None:
            s.downstream.read_paused = True
            s.downstream.transport.pause_reading()

    def resume_writing(self):
        cdef Stream s = self.stream
        if s is not None and s.downstream.transport is not None and s.downstream.read_paused:
            s.downstream.read_paused = False
            s.downstream.transport.resume_reading()

    # -- response -------------------------------------------------------------------------------
    cdef int _on_response_head(self, const char *data, size_t length, int head_len) except -1:
        cdef Stream s = self.stream
        cdef DownstreamConnection down = s.downstream
        cdef ListenerRuntime lr = down.listener
        cdef Worker w = self.cluster.worker
        cdef ResponseHead *head = w.resp_head
        cdef OutBuf *b = &w.out
        cdef size_t i
        cdef const phr_header *h
        cdef bint seen_server = False, seen_date = False
        cdef int body_kind = head.body_kind
        cdef bytes out
        cdef int gw = 0
        if self.cluster.state is not None:
            self.cluster.state.report_response(self.host, head.status)
        if s.hedges is not None:
            # hedged attempts: the first to answer wins, the others are reset
            if s.upstream is not self:
                s.hedges.remove(self)
                if s.upstream is not None:
                    s.upstream.stream = None
                    s.upstream._close_transport()
                if s.retry_timer is not None:
                    s.retry_timer.cancel()
                    s.retry_timer = None
                s.upstream = self
            down._drop_hedges()
        if s.retry is not None and (down._retriable_status(head.status) or (
                s.retry_on and "retriable-headers" in s.retry_on
                and retriable_headers_match(s.retry.retriable_headers, head)) or (
                s.grpc and s.retry.grpc_statuses and retriable_grpc(s.retry.grpc_statuses, head))):
            if s.retries_left > 0 and s.replay is not None and s.request_complete:
                # drop this answer and this connection, and try again
                self.stream = None
                s.upstream = None
                self._close_transport()
                if not down._retry():
                    down._upstream_failed(503, BODY_OVERFLOW)
                return 0
            self.cluster.worker.values[self.cluster.base + CLUSTER_UPSTREAM_RQ_RETRY_LIMIT_EXCEEDED] += 1
            set_flag(s, RF_URX)
        if s.gs_base >= 0:
            gs_response_head(s, w.values, head)
        s.status = head.status
        s.response_started = True
        self.keep_alive = head.keep_alive
        if s.grpc_web:
            gw = grpc_web_response_head(s, head)
        if s.per_try_timer is not None:
            s.per_try_timer.cancel()
            s.per_try_timer = None
        b.length = 0
        ob_put_bytes(b, <bytes>STATUS_LINES[head.status] if 100 <= head.status < 1000 else STATUS_LINES[500])
        cdef bint tunnel = head.status == 101 and s.upgrade
        for i in range(head.num_headers):
            h = &head.headers[i]
            if is_hop_by_hop_name(h, tunnel):
                continue
            if h.name_len == 6 and lit_eq(h.name, 6, b"server", 6):
                if seen_server:
                    continue
                seen_server = True
                ob_put(b, b"server: ", 8)
                ob_put_bytes(b, lr.server_name)
                ob_put(b, b"\r\n", 2)
                continue
            if h.name_len == 4 and lit_eq(h.name, 4, b"date", 4):
                seen_date = True
            ob_put_lower(b, h.name, h.name_len)
            ob_put(b, b": ", 2)
            ob_put(b, h.value, h.value_len)
            ob_put(b, b"\r\n", 2)
        ob_put(b, b"x-envoy-upstream-service-time: ", 31)
        ob_put_int(b, <int64_t>((now() - s.start_time) * 1000))
        ob_put(b, b"\r\n", 2)
        if s.decision.set_cookie is not None and self.cluster.lb is not None \
                and self.cluster.lb.uses_hash:
            # a cookie hash policy with a ttl generated this request's cookie
            ob_put(b, b"set-cookie: ", 12)
            ob_put_bytes(b, s.decision.set_cookie)
            ob_put(b, b"\r\n", 2)
        if s.decision.response_ops:
            apply_ops(b, s.decision.response_ops)
        if s.response_headers:
            ob_put_headers(b, s.response_headers)
        if gw:
            grpc_web_response_middle(s, b, head)
        if not seen_date:
            ob_put(b, b"date: ", 6)
            ob_put_bytes(b, w.date())
            ob_put(b, b"\r\n", 2)
        if not seen_server:
            ob_put(b, b"server: ", 8)
            ob_put_bytes(b, lr.server_name)
            ob_put(b, b"\r\n", 2)
        if s.upgrade and not tunnel:
            s.keep_alive = False  # the client's bytes after a refused upgrade are not a request
        if tunnel:
            ob_put(b, b"connection: upgrade\r\n", 21)
        elif not s.keep_alive or down.closing:
            s.keep_alive = False
            ob_put(b, b"connection: close\r\n", 19)
        if gw:
            grpc_web_response_framing(s, b, head)
        elif not tunnel and (body_kind == BODY_CHUNKED or body_kind == BODY_EOF):
            s.downstream_chunked = True
            ob_put(b, b"transfer-encoding: chunked\r\n", 28)
        elif s.is_head and head.te_index >= 0:
            ob_put(b, b"transfer-encoding: chunked\r\n", 28)
        # A body that is already here in full goes out with the head: one write, not two.
        cdef int64_t whole = 0
        if body_kind == BODY_LENGTH and not gw and \
                <int64_t>(length - head_len) >= head.content_length and head.content_length <= 65536:
            whole = head.content_length
        ob_put(b, b"\r\n", 2)
        if whole:
            ob_put(b, data + head_len, whole)
            if s.gs_base >= 0 and s.gs_resp:
                gs_response_body(s, w.values, data + head_len, whole)
        out = ob_take(b)
        del self.buf[:head_len + whole]
        s.bytes_sent += whole
        if gw & GW_TRANSFORM:
            # gRPC-Web, not a gRPC answer: the head waits for the body (its grpc-message)
            (<GrpcWebState>s.gw).head_b = out
            body_decoder_init(&self.body, body_kind, head.content_length)
            self.state = U_BODY
            return 0
        down._write(out)
        if whole:
            if <int64_t>(length - head_len) > whole:
                self.keep_alive = False  # bytes beyond the declared length: framing is broken
            return self._response_done()
        if tunnel:
            return self._start_tunnel()
        if body_kind == BODY_NONE:
            return self._response_done()
        body_decoder_init(&self.body, body_kind, head.content_length)
        self.state = U_BODY
        return 0

    cdef int _on_response_body(self, object data) except -1:
        cdef Stream s = self.stream
        cdef DownstreamConnection down = s.downstream
        cdef BodyDecoder *d = &self.body
        cdef Py_ssize_t n = len(data)
        cdef size_t length, consumed
        cdef int rc
        cdef bytearray work
        if s.grpc_web:
            return self._grpc_web_body(data)
        if d.kind == BODY_LENGTH:
            s.bytes_sent += min(n, d.remaining)
            if n >= d.remaining:
                if n > d.remaining:
                    # Bytes beyond the declared length: the upstream broke framing.
                    data = data[:d.remaining]
                    self.keep_alive = False
                d.remaining = 0
                if s.gs_base >= 0 and s.gs_resp:
                    gs_response_body(s, down.worker.values, PyBytes_AS_STRING(data), len(data))
                down._write(data)
                return self._response_done()
            d.remaining -= n
            if s.gs_base >= 0 and s.gs_resp:
                gs_response_body(s, down.worker.values, PyBytes_AS_STRING(data), n)
            down._write(data)
            return 0
        if d.kind == BODY_EOF:
            s.bytes_sent += n
            if n:
                if s.gs_base >= 0 and s.gs_resp:
                    gs_response_body(s, down.worker.values, PyBytes_AS_STRING(data), n)
                down._write_chunk(data)
            return 0
        # chunked: decode in place, re-frame for the client
        work = bytearray(data)
        length = n
        rc = body_decode(d, PyByteArray_AS_STRING(work), &length, &consumed)
        if rc < 0:
            self.cluster.worker.values[self.cluster.base + CLUSTER_UPSTREAM_CX_PROTOCOL_ERROR] += 1
            self._fail("protocol error", 502)
            return 0
        if length > 0:
            s.bytes_sent += length
            if s.gs_base >= 0 and s.gs_resp:
                gs_response_body(s, down.worker.values, PyByteArray_AS_STRING(work), length)
            down._write_chunk(PyBytes_FromStringAndSize(PyByteArray_AS_STRING(work), length))
        if rc == 1:
            if consumed < <size_t>n:
                self.keep_alive = False
            down._write_last_chunk()
            return self._response_done()
        return 0

    cdef int _grpc_web_body(self, object data) except -1:
        """Response body bytes of a gRPC-Web request: unframed here (content-length, chunked
        or until close), then translated by _grpc_web_data."""
        cdef BodyDecoder *d = &self.body
        cdef Py_ssize_t n = len(data)
        cdef size_t length, consumed
        cdef int rc
        cdef bytearray work
        if d.kind == BODY_LENGTH:
            if n >= d.remaining:
                if n > d.remaining:
                    data = data[:d.remaining]
                    self.keep_alive = False  # bytes beyond the declared length
                d.remaining = 0
                return self._grpc_web_data(bytes(data), True)
            d.remaining -= n
            return self._grpc_web_data(bytes(data), False)
        if d.kind == BODY_EOF:
            return self._grpc_web_data(bytes(data), False)
        work = bytearray(data)
        length = n
        rc = body_decode(d, PyByteArray_AS_STRING(work), &length, &consumed)
        if rc < 0:
            self.cluster.worker.values[self.cluster.base + CLUSTER_UPSTREAM_CX_PROTOCOL_ERROR] += 1
            self._fail("protocol error", 502)
            return 0
        if rc == 1 and consumed < <size_t>n:
            self.keep_alive = False
        return self._grpc_web_data(PyBytes_FromStringAndSize(PyByteArray_AS_STRING(work), length),
                                   rc == 1)

    cdef int _grpc_web_data(self, bytes payload, bint done) except -1:
        """A piece of the response body of a gRPC-Web request, as Envoy's gRPC-Web filter passes
        it on: an answer that is not gRPC is held (up to 16 KiB) to become the grpc-message of
        a bodyless answer; otherwise the body goes through (for -text, every gRPC frame
        base64-encoded on its own once complete) and the trailers (HTTP/2 upstreams) follow in
        the body as one more frame, flag 0x80, never as trailers."""
        cdef Stream s = self.stream
        cdef DownstreamConnection down = s.downstream
        cdef GrpcWebState st = <GrpcWebState>s.gw
        cdef OutBuf *b = &self.cluster.worker.out
        cdef bytes out
        cdef list trailers
        if s.gs_base >= 0:
            # the gRPC stats filter (after the gRPC-Web one) sees the upstream's answer
            if s.gs_resp and PyBytes_GET_SIZE(payload):
                gs_response_body(s, down.worker.values, PyBytes_AS_STRING(payload),
                                 PyBytes_GET_SIZE(payload))
            if done and s.response_trailers:
                gs_trailers(s, down.worker.values)
        if s.grpc_web & GW_TRANSFORM:
            if PyBytes_GET_SIZE(payload) and st.held_size < GRPC_WEB_MAX_MESSAGE:
                if st.held is None:
                    st.held = []
                st.held.append(payload)
                st.held_size += PyBytes_GET_SIZE(payload)
            if not done:
                return 0
            b.length = 0
            ob_put_bytes(b, st.head_a)
            put_grpc_web_status(b, s.status, b"".join(st.held)[:GRPC_WEB_MAX_MESSAGE]
                                if st.held is not None else b"")
            ob_put_bytes(b, st.head_b)
            st.held = None
            down._write(ob_take(b))
            return self._response_done()
        out = grpc_web_text_frames(st, payload) if s.grpc_web & GW_TEXT_OUT else payload
        if PyBytes_GET_SIZE(out):
            s.bytes_sent += PyBytes_GET_SIZE(out)
            down._write(chunk_frame(PyBytes_AS_STRING(out), PyBytes_GET_SIZE(out)))
        if not done:
            return 0
        trailers = s.response_trailers
        s.response_trailers = None  # in the body now: no HTTP/1 or HTTP/2 trailers follow
        if trailers:
            out = grpc_web_trailers_frame(trailers)
            if s.grpc_web & GW_TEXT_OUT:
                out = b2a_base64(out, newline=False)
            s.bytes_sent += PyBytes_GET_SIZE(out)
            # two writes, as Envoy sends two pieces: to an HTTP/2 client the frame is DATA and
            # the end an empty DATA frame with END_STREAM
            down._write(chunk_frame(PyBytes_AS_STRING(out), PyBytes_GET_SIZE(out)))
        down._write(LAST_CHUNK)
        return self._response_done()

    cdef int _start_tunnel(self) except -1:
        """101 Switching Protocols: from now on bytes pass through both ways untouched."""
        cdef Stream s = self.stream
        cdef DownstreamConnection down = s.downstream
        cdef int64_t *v = down.worker.values
        self.state = U_TUNNEL
        self.keep_alive = False
        down.state = S_TUNNEL
        v[down.listener.http_base + HTTP_DOWNSTREAM_CX_UPGRADES_TOTAL] += 1
        v[down.listener.http_base + HTTP_DOWNSTREAM_CX_UPGRADES_ACTIVE] += 1
        if PyByteArray_GET_SIZE(self.buf):
            rest = bytes(self.buf)
            del self.buf[:]
            down._write(rest)
        if PyByteArray_GET_SIZE(down.buf):
            early = bytes(down.buf)
            del down.buf[:]
            self.send(early)
        return 0

    cdef void _finish_body_eof(self):
        cdef Stream s = self.stream
        if s.grpc_web:
            self._grpc_web_data(b"", True)
            return
        if s.gs_base >= 0 and s.response_trailers:
            gs_trailers(s, s.downstream.worker.values)  # before the client sees them
        s.downstream._write_last_chunk()
        self._response_done()

    cdef int _response_done(self) except -1:
        cdef Stream s = self.stream
        cdef DownstreamConnection down = s.downstream
        cdef ClusterRuntime c = self.cluster
        if s.gs_base >= 0 and s.response_trailers:
            gs_trailers(s, down.worker.values)
        down._stream_stats_end(s.status)
        self.stream = None
        s.upstream = None
        if self.keep_alive and s.request_complete and not self.closed:
            c.release(self)
        else:
            self._close_transport()
        down._finish_stream()
        return 0

    cdef void _fail(self, str reason, int status=503):
        cdef Stream s = self.stream
        self.stream = None
        self._close_transport()
        if s is not None and s.downstream is not None and s.upstream is self:
            s.upstream = None
            s.fail_flag = RF_UPE if status == 502 else (RF_UF if not self.connected else RF_UC)
            if s.hedges:
                # an earlier hedged attempt is still running: it carries the request on
                s.upstream = <UpstreamConnection>s.hedges.pop()
                if not s.hedges:
                    s.hedges = None
                return
            s.downstream._attempt_failed(
                FAIL_CONNECT if not self.connected else (
                    FAIL_REFUSED if reason == "remote refused stream reset" else FAIL_RESET),
                status, BODY_CONNECT_PREFIX + reason.encode())
        elif s is not None and s.hedges is not None and self in s.hedges:
            s.hedges.remove(self)
            if not s.hedges:
                s.hedges = None

    cdef void _close_transport(self):
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self.state = U_CLOSED


cdef object start_connect(ClusterRuntime c, object protocol, object address, object done,
                          object timed_out):
    """Open a connection to an upstream `address` for `protocol` (HTTP/1.1 connection or
    HTTP/2 session): done(task) when the attempt ends, timed_out(task) after the cluster's
    connect_timeout.  Returns the timeout's handle, or None."""
    loop = c.worker.loop
    addr, port = address
    task = loop.create_task(loop.create_connection(lambda: protocol, addr, port))
    task.add_done_callback(done)
    if c.connect_timeout > 0:
        return loop.call_later(c.connect_timeout, timed_out, task)
    return None


cdef void count_connect_failure(ClusterRuntime c, bint timeout) noexcept:
    """A connection attempt that failed (refused, or over connect_timeout)."""
    cdef int64_t *v = c.worker.values
    v[c.base + CLUSTER_UPSTREAM_CX_CONNECT_FAIL] += 1
    if timeout:
        v[c.base + CLUSTER_UPSTREAM_CX_CONNECT_TIMEOUT] += 1
        v[c.base + CLUSTER_UPSTREAM_CX_DESTROY_LOCAL] += 1
    else:
        v[c.base + CLUSTER_UPSTREAM_CX_DESTROY_REMOTE] += 1


cdef set_keepalive(sock, ka):
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if ka.probes is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, ka.probes)
    if ka.time_s is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, ka.time_s)
    if ka.interval_s is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, ka.interval_s)


# ---------------------------------------------------------------------------------------------

cdef inline uint64_t rotl(uint64_t x, int k) noexcept nogil:
    return (x << k) | (x >> (64 - k))


cdef class Worker:
    """A worker process's data plane: its listeners, clusters, and connections."""

    def __cinit__(self):
        self.req_head = <RequestHead *>malloc(sizeof(RequestHead))
        self.resp_head = <ResponseHead *>malloc(sizeof(ResponseHead))
        self.out.data = NULL
        self.out.length = 0
        self.out.capacity = 0
        if self.req_head == NULL or self.resp_head == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.req_head)
        free(self.resp_head)
        free(self.out.data)

    def __init__(self, bootstrap, layout, str shm_path, int worker_index, list listener_ports,
                 loop=None):
        import os
        self.loop = loop if loop is not None else asyncio.get_event_loop()
        self.bootstrap = bootstrap
        self.layout = layout
        self.shm_path = shm_path
        self.index = worker_index
        self.stats = _StatsSlot(shm_path, worker_index + 1, layout)
        self.values = self.stats.values
        seed = int.from_bytes(os.urandom(16), "little")
        self.rng[0] = (seed & 0xFFFFFFFFFFFFFFFF) | 1
        self.rng[1] = (seed >> 64) | 2
        self.ports = list(listener_ports)
        self.connections = set()
        self.draining = False
        self.sweeper = None
        self.health_timer = None
        self.wheel = [[] for _ in range(DEF_WHEEL_SLOTS)]
        self.wheel_tick = <int64_t>(now() / WHEEL_TICK)
        self.wheel_count = 0
        self.wheel_handle = None
        self.date_value = None
        self.date_time = 0
        self.clusters = {}
        for cm in bootstrap.clusters:
            self.clusters[cm.name] = ClusterRuntime(self, cm, layout.cluster_bases[cm.name])
        self.listeners = []
        for i, lm in enumerate(bootstrap.listeners):
            self.listeners.append(
                ListenerRuntime(self, lm, layout.listener_bases[i], layout.http_bases[i]))

    cdef void arm_timeout(self, Stream s, double delay):
        """Arm the stream's route timeout `delay` seconds from now (at most one tick late)."""
        cdef double deadline = now() + delay
        cdef int64_t tick = <int64_t>(deadline / WHEEL_TICK) + 1
        s.deadline = deadline
        if tick <= self.wheel_tick:
            tick = self.wheel_tick + 1
        (<list>self.wheel[tick % DEF_WHEEL_SLOTS]).append(s)
        self.wheel_count += 1
        if self.wheel_handle is None:
            self.wheel_handle = self.loop.call_later(WHEEL_TICK, self._wheel_turn)

    def _wheel_turn(self):
        cdef double t = now()
        cdef int64_t target = <int64_t>(t / WHEEL_TICK)
        cdef int64_t tick
        cdef list due, keep
        cdef Stream s
        self.wheel_handle = None
        if target - self.wheel_tick > DEF_WHEEL_SLOTS:
            self.wheel_tick = target - DEF_WHEEL_SLOTS  # a long stall: every slot once is enough
        while self.wheel_tick < target:
            self.wheel_tick += 1
            due = <list>self.wheel[self.wheel_tick % DEF_WHEEL_SLOTS]
            if not due:
                continue
            self.wheel[self.wheel_tick % DEF_WHEEL_SLOTS] = keep = []
            for s in due:
                if s.deadline == 0:
                    self.wheel_count -= 1           # cancelled, or a stale entry
                elif s.deadline <= t:
                    self.wheel_count -= 1
                    s.deadline = 0
                    if s.downstream is not None and s.downstream.stream is s:
                        s.downstream._on_timeout()
                else:
                    tick = <int64_t>(s.deadline / WHEEL_TICK) + 1
                    if tick % DEF_WHEEL_SLOTS != self.wheel_tick % DEF_WHEEL_SLOTS:
                        # stale: the stream was re-armed since (keep-alive, a recycled HTTP/2
                        # stream), and its live entry sits in the slot of its new deadline
                        self.wheel_count -= 1
                    else:
                        keep.append(s)                  # a later turn of the wheel
        if self.wheel_count > 0:
            self.wheel_handle = self.loop.call_later(WHEEL_TICK, self._wheel_turn)

    cdef uint64_t random(self) noexcept:
        # xorshift128+
        cdef uint64_t s1 = self.rng[0]
        cdef uint64_t s0 = self.rng[1]
        self.rng[0] = s0
        s1 ^= s1 << 23
        self.rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26)
        return self.rng[1] + s0

    cdef void put_uuid4(self, OutBuf *b) except *:
        cdef uint64_t hi = self.random()
        cdef uint64_t lo = self.random()
        cdef char tmp[36]
        cdef const char *hexd = b"0123456789abcdef"
        cdef int i, j = 0
        cdef unsigned char byte
        cdef unsigned char raw[16]
        for i in range(8):
            raw[i] = (hi >> (8 * i)) & 0xFF
            raw[8 + i] = (lo >> (8 * i)) & 0xFF
        raw[6] = (raw[6] & 0x0F) | 0x40
        raw[8] = (raw[8] & 0x3F) | 0x80
        for i in range(16):
            if i == 4 or i == 6 or i == 8 or i == 10:
                tmp[j] = 45
                j += 1
            byte = raw[i]
            tmp[j] = hexd[byte >> 4]
            tmp[j + 1] = hexd[byte & 15]
            j += 2
        ob_put(b, tmp, 36)

    cdef bytes date(self):
        t = _time.time()
        if self.date_value is None or int(t) != int(self.date_time):
            self.date_time = t
            self.date_value = http_date(t)
        return self.date_value

    async def start(self):
        loop = self.loop
        for c in self.clusters.values():
            await (<ClusterRuntime>c).resolve_initial()
        for i, lr in enumerate(self.listeners):
            sock = make_listen_socket((<ListenerRuntime>lr).model.address, self.ports[i])
            (<ListenerRuntime>lr).server = await loop.create_server(
                (<ListenerRuntime>lr).protocol_factory, sock=sock, backlog=1024)
        self.sweeper = loop.call_later(self._sweep_interval(), self._sweep)
        if any((<ClusterRuntime>c).state is not None for c in self.clusters.values()):
            self.health_timer = loop.call_later(0.1, self._poll_host_state)

    def _poll_host_state(self):
        for c in self.clusters.values():
            if (<ClusterRuntime>c).state is not None and (<ClusterRuntime>c).lb is not None:
                (<ClusterRuntime>c).state.poll((<ClusterRuntime>c).lb)
        self.health_timer = self.loop.call_later(0.1, self._poll_host_state)

    cdef double _sweep_interval_c(self):
        cdef double interval = 1.0
        for lr in self.listeners:
            for t in ((<ListenerRuntime>lr).idle_timeout, (<ListenerRuntime>lr).stream_idle_timeout,
                      (<ListenerRuntime>lr).request_timeout, (<ListenerRuntime>lr).min_route_idle):
                if 0 < t and t / 4 < interval:
                    interval = t / 4
        return max(interval, 0.01)

    def _sweep_interval(self):
        return self._sweep_interval_c()

    def _sweep(self):
        cdef double t = now()
        for c in list(self.connections):
            c.sweep(t)  # HTTP/1 and HTTP/2 connections
        self.sweeper = self.loop.call_later(self._sweep_interval(), self._sweep)

    def stop_listening(self):
        for lr in self.listeners:
            srv = (<ListenerRuntime>lr).server
            if srv is not None:
                srv.close()
                (<ListenerRuntime>lr).server = None

    async def drain(self, double timeout_s):
        """Stop taking requests: idle connections close now, busy ones after their response."""
        self.draining = True
        self.stop_listening()
        deadline = now() + timeout_s
        while self.connections and now() < deadline:
            for c in list(self.connections):
                c.close_if_idle()
            await asyncio.sleep(0.05)

    def close(self):
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        if self.health_timer is not None:
            self.health_timer.cancel()
            self.health_timer = None
        if self.wheel_handle is not None:
            self.wheel_handle.cancel()
            self.wheel_handle = None
        self.stop_listening()
        for c in list(self.connections):
            if isinstance(c, DownstreamConnection):
                (<DownstreamConnection>c)._close()
            else:
                c._close_now()  # an HTTP/2 connection
        for cr in self.clusters.values():
            if (<ClusterRuntime>cr).dns_task is not None:
                (<ClusterRuntime>cr).dns_task.cancel()
            for conns in (<ClusterRuntime>cr).idle:
                for u in conns:
                    (<UpstreamConnection>u)._close_transport()
            if (<ClusterRuntime>cr).h2pool is not None:
                (<ClusterRuntime>cr).h2pool.close()


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(double t):
    """IMF-fixdate (RFC 9110), independent of the locale."""
    g = _time.gmtime(t)
    return ("%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[g.tm_wday], g.tm_mday, _MONTHS[g.tm_mon - 1], g.tm_year,
        g.tm_hour, g.tm_min, g.tm_sec)).encode()


def make_listen_socket(address, int port):
    family = socket.AF_INET6 if address.is_ipv6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((address.address, port))
    sock.setblocking(False)
    return sock


def bench_upstream_head(Worker w, bytes request, long iterations=100000):
    """Micro-benchmark: seconds per request to parse `request`, route it on the first listener
    and write the upstream head (Envoy's additions and the route's header mutations).  Used by
    bench/micro; not part of the data path."""
    cdef ListenerRuntime lr = <ListenerRuntime>w.listeners[0]
    cdef DownstreamConnection c = DownstreamConnection(lr)
    cdef RouteDecision d = c.stream.decision
    cdef const char *buf = request
    cdef size_t n = len(request)
    cdef long i
    cdef int rc
    cdef ClusterRuntime cluster
    cdef bytes out = None
    c.remote_ip = b"127.0.0.1"
    t0 = _time.perf_counter()
    for i in range(iterations):
        rc = parse_request_head(buf, n, lr.max_header_bytes, w.req_head)
        if rc <= 0:
            raise ValueError("request does not parse: %d" % rc)
        c.stream.reset()
        if lr.routes.route(w.req_head, d, False, w.random()) != ACTION_ROUTE:
            raise ValueError("request does not route to a cluster")
        cluster = <ClusterRuntime>w.clusters[d.cluster]
        out = c._serialize_request(w.req_head, d, cluster, 0)
    t1 = _time.perf_counter()
    return (t1 - t0) / iterations, out
