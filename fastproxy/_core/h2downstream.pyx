"""HTTP/2 downstream connections (h2c with prior knowledge), first step: each stream is bridged
onto the HTTP/1 request machinery.

An `H2DownstreamConnection` owns an `H2Session` (server mode).  Every stream it accepts becomes
an `H2StreamBridge`: a `DownstreamConnection` of its own that receives the request as HTTP/1
bytes synthesised from the HTTP/2 head (and its DATA, framed as the head says) and whose
responses, written as HTTP/1 bytes by the unchanged response path, are parsed back into HEADERS
and DATA frames.  Routing, filters, load balancing, pools, retries and timeouts are therefore the
HTTP/1 ones, unchanged; the price is one serialise-and-parse round trip per request head, which
bench/micro measures.  Streams of one connection run concurrently, each with its own upstream
connection from the pool.

Flow control: received DATA is acknowledged (consume) once it is handed to the upstream side;
response DATA is queued in the session, and the upstream connection stops being read while a
stream has more than the listener's buffer limit queued.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, free

from fastproxy._core.http1 cimport (
    RequestHead, ResponseHead, BodyDecoder, FP_MAX_HEADERS, parse_response_head, body_decoder_init, body_decode,
    is_hop_by_hop_name, name_eq, PARSE_INCOMPLETE, BODY_NONE, BODY_LENGTH, BODY_CHUNKED,
    BODY_EOF, CHUNK_SIZE_START,
)
from fastproxy._core.includes.picohttpparser cimport phr_header
from fastproxy._core.includes.nghttp2 cimport nghttp2_nv, NGHTTP2_NV_FLAG_NONE
from libc.stdint cimport uint8_t
from cpython.list cimport PyList_GET_SIZE
from fastproxy._core.http2 cimport (
    H2Handler, H2Session, H2Options, h2_options_init, H2_OK, H2_ERR_PROTOCOL,
    h2_options_from_model, H2Keepalive,
)
from fastproxy._core.connection cimport (
    now,
    DownstreamConnection, ListenerRuntime, Worker, Stream, UpstreamConnection, GW_TRANSFORM,
)
from fastproxy._core.stats cimport *
from fastproxy._core.router cimport RouteDecision

import logging
_log = logging.getLogger("fastproxy.http2")



cdef enum:
    FP_NV_MAX = 132  # FP_MAX_HEADERS (128) + pseudo-headers

cdef uint32_t NGHTTP2_INTERNAL_ERROR = 2

# Request headers that mean nothing on an HTTP/1 hop (RFC 9113 8.2.2 forbids most of them in
# HTTP/2 anyway; nghttp2 refuses those).
cdef frozenset SKIP_REQUEST = frozenset([b"connection", b"keep-alive", b"proxy-connection",
                                         b"transfer-encoding", b"upgrade", b"host"])


# Streams of finished HTTP/2 requests, for the next ones: besides the allocation, this bounds
# what the worker's timer wheel keeps alive (its entries for finished requests are dropped
# lazily, up to one turn of the wheel later).
cdef list _free_streams = []
cdef Py_ssize_t FREE_STREAMS_MAX = 4096


cdef H2StreamBridge new_bridge(ListenerRuntime listener):
    """DownstreamConnection.__init__ for a bridged stream, with a recycled Stream."""
    cdef H2StreamBridge b = H2StreamBridge.__new__(H2StreamBridge)
    cdef Stream s
    b.listener = listener
    b.worker = listener.worker
    b.buf = bytearray()
    b.state = 0  # S_HEAD
    if _free_streams:
        s = <Stream>_free_streams.pop()
    else:
        s = Stream()
        s.decision = RouteDecision()
    s.downstream = b
    b.stream = s
    b.closing = False
    b.read_paused = False
    b.write_paused = False
    b.remote_ip = None
    b.sniffed = True  # (codec AUTO: the connection itself was sniffed)
    return b


cdef size_t response_nv(ResponseHead *head, nghttp2_nv *nva, char *status,
                        bint drop_length) noexcept:
    """The HTTP/2 fields of a response head written by the response path (names already lower
    case), pointing into its buffer: :status, then the fields but the hop-by-hop ones."""
    cdef size_t i, k = 1
    cdef const phr_header *h
    cdef int code = head.status
    status[0] = <char>(48 + code // 100 % 10)
    status[1] = <char>(48 + code // 10 % 10)
    status[2] = <char>(48 + code % 10)
    nva[0].name = <uint8_t *>b":status"
    nva[0].namelen = 7
    nva[0].value = <uint8_t *>status
    nva[0].valuelen = 3
    nva[0].flags = NGHTTP2_NV_FLAG_NONE
    for i in range(head.num_headers):
        h = &head.headers[i]
        if is_hop_by_hop_name(h, False):
            continue
        if drop_length and h.name_len == 14 and name_eq(h.name, 14, b"content-length", 14):
            continue
        nva[k].name = <uint8_t *>h.name
        nva[k].namelen = h.name_len
        nva[k].value = <uint8_t *>h.value
        nva[k].valuelen = h.value_len
        nva[k].flags = NGHTTP2_NV_FLAG_NONE
        k += 1
    return k


def _drop(data):
    """What a bridged stream writes straight to its 'transport' (100-continue): nothing; HTTP/2
    clients do not wait for it."""


cdef class H2StreamBridge(DownstreamConnection):
    cdef H2DownstreamConnection conn
    cdef int32_t sid
    cdef bint chunked_request      # the request body is framed as chunked on the HTTP/1 side
    cdef bytearray rbuf            # response bytes (HTTP/1) not parsed yet
    cdef bint head_sent
    cdef bint response_done
    cdef bint gone                 # the HTTP/2 stream is closed or reset
    cdef bint paused_upstream
    cdef BodyDecoder rbody

    cdef void _write(self, bytes data):
        """The response path writes HTTP/1 bytes: turn them into HEADERS and DATA."""
        cdef H2DownstreamConnection c = self.conn
        if self.gone or self.response_done:
            return
        self.worker.values[self.listener.http_base + HTTP_DOWNSTREAM_CX_TX_BYTES_TOTAL] += \
            PyBytes_GET_SIZE(data)
        self.rbuf += data
        self._translate()
        c.flush_soon()

    cdef void _translate(self):
        cdef nghttp2_nv nva[FP_NV_MAX]
        cdef char status[4]
        cdef size_t nvlen
        cdef H2DownstreamConnection c = self.conn
        cdef ResponseHead *head = c.rhead
        cdef Py_ssize_t n
        cdef int rc
        cdef size_t length, consumed, i
        cdef list headers
        cdef bint end
        while not self.response_done:
            n = PyByteArray_GET_SIZE(self.rbuf)
            if not self.head_sent:
                if n == 0:
                    return
                rc = parse_response_head(PyByteArray_AS_STRING(self.rbuf), n, 1 << 20,
                                         self.stream.is_head, head)
                if rc == PARSE_INCOMPLETE:
                    return
                if rc < 0:
                    self._reset(NGHTTP2_INTERNAL_ERROR)
                    return
                if head.status < 200:
                    del self.rbuf[:rc]
                    continue
                end = head.body_kind == BODY_NONE or (head.body_kind == BODY_LENGTH
                                                      and head.content_length == 0)
                # The head's fields go to the codec straight from the buffer (it copies them);
                # a trailers-only gRPC answer carries no content-length over HTTP/2.
                nvlen = response_nv(head, nva, status,
                                end and self.stream.grpc and not self.stream.grpc_web & GW_TRANSFORM)
                body_decoder_init(&self.rbody, head.body_kind, head.content_length)
                self.head_sent = True
                if end and self.stream.grpc_web & GW_TRANSFORM:
                    # an answer the gRPC-Web filter made bodyless: Envoy ends it with an empty
                    # DATA frame, its content-length: 0 kept
                    c.session.submit_head_nv(self.sid, nva, nvlen, False, False)
                    del self.rbuf[:rc]
                    c.session.send_data(self.sid, b"", True)
                    self.response_done = True
                    return
                c.session.submit_head_nv(self.sid, nva, nvlen, end, False)
                del self.rbuf[:rc]
                if end:
                    self.response_done = True
                    return
                continue
            if n == 0:
                return
            length = n
            rc = body_decode(&self.rbody, PyByteArray_AS_STRING(self.rbuf), &length, &consumed)
            if rc < 0:
                self._reset(NGHTTP2_INTERNAL_ERROR)
                return
            piece = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self.rbuf), length)
            del self.rbuf[:consumed]
            if rc == 1:
                self.response_done = True
                trailers = self.stream.response_trailers
                if trailers:
                    # trailers of an HTTP/2 upstream (gRPC status) end the stream
                    if length:
                        c.session.send_data(self.sid, piece, False)
                    c.session.submit_trailers(self.sid, trailers)
                    return
            if length or rc == 1:
                c.session.send_data(self.sid, piece, rc == 1)
            if rc != 1:
                self._check_backpressure()
                return

    cdef bint _direct_body(self):
        """The response path may hand body pieces over as they are: the head went out, the
        body is chunked on the HTTP/1 side and nothing is half parsed."""
        return (self.head_sent and PyByteArray_GET_SIZE(self.rbuf) == 0
                and self.rbody.kind == BODY_CHUNKED and self.rbody.chunk_state == CHUNK_SIZE_START)

    cdef void _write_chunk(self, bytes piece):
        """A body piece straight to DATA (no chunk framing to add and parse again)."""
        cdef H2DownstreamConnection c = self.conn
        if self.gone or self.response_done:
            return
        if not self._direct_body():
            DownstreamConnection._write_chunk(self, piece)
            return
        if PyBytes_GET_SIZE(piece):
            self.worker.values[self.listener.http_base + HTTP_DOWNSTREAM_CX_TX_BYTES_TOTAL] += \
                PyBytes_GET_SIZE(piece)
            c.session.send_data(self.sid, piece, False)
            self._check_backpressure()
            c.flush_soon()

    cdef void _write_last_chunk(self):
        cdef H2DownstreamConnection c = self.conn
        if self.gone or self.response_done:
            return
        if not self._direct_body():
            DownstreamConnection._write_last_chunk(self)
            return
        self.response_done = True
        trailers = self.stream.response_trailers
        if trailers:
            c.session.submit_trailers(self.sid, trailers)  # (gRPC status) ends the stream
        else:
            c.session.send_data(self.sid, b"", True)
        c.flush_soon()

    cdef int _finish_stream(self) except -1:
        DownstreamConnection._finish_stream(self)
        # The request is answered: nothing reaches the stream through its downstream any more.
        # Unlinking them now spares the cycle collector one cycle per HTTP/2 request.
        self.stream.downstream = None
        return 0

    cdef void _check_backpressure(self):
        cdef UpstreamConnection up = self.stream.upstream
        if up is None or up.transport is None or self.paused_upstream:
            return
        if self.conn.session.queued_bytes(self.sid) > self.listener.buffer_limit:
            self.paused_upstream = True
            up.transport.pause_reading()

    cdef void data_sent(self, size_t queued):
        cdef UpstreamConnection up = self.stream.upstream
        if self.paused_upstream and queued <= self.listener.buffer_limit // 2:
            self.paused_upstream = False
            if up is not None and up.transport is not None:
                up.transport.resume_reading()

    cdef void _reset(self, uint32_t code):
        if not self.gone:
            self.gone = True
            self.conn.session.reset_stream(self.sid, code)
            self.conn.flush_soon()

    cdef void _close(self):
        # The HTTP/1 side wants the 'connection' closed: for a stream that means an end.  A
        # complete response needs nothing more; anything else resets the stream.
        self.closing = True
        if not self.response_done:
            self._reset(NGHTTP2_INTERNAL_ERROR)  # an aborted answer, as Envoy resets it

    cdef void finished(self):
        """The HTTP/2 stream is gone (closed or reset).  A stream whose response was handed over
        completely needs nothing more; otherwise the HTTP/1 side is torn down on the next turn
        of the loop (this may run inside that side's own write, which must not see its stream
        vanish under it)."""
        cdef Stream s = self.stream
        self.gone = True
        if self.response_done or s.response_complete:
            if s.response_complete and s.downstream is None and s.upstream is None \
                    and len(_free_streams) < FREE_STREAMS_MAX:
                _free_streams.append(s)  # the next stream's (see new_bridge)
            return
        self.worker.loop.call_soon(self._teardown)

    def _teardown(self):
        if not self.stream.response_complete and self.state != 4:
            self._abort_stream()
        self.transport = None
        self.write = None


cdef class H2DownstreamConnection(H2Handler):
    """An HTTP/2 (h2c) downstream connection: a uvloop protocol owning an H2Session."""
    cdef ListenerRuntime listener
    cdef Worker worker
    cdef H2Session session
    cdef object transport
    cdef dict streams
    cdef ResponseHead *rhead
    cdef bint closed
    cdef H2Keepalive keepalive     # connection_keepalive, or None
    cdef bint in_read              # inside data_received (its own flush follows)
    cdef bint flush_scheduled
    cdef int drain_step            # 0; 1 after the drain notice (GOAWAY 2^31-1); 2 after GOAWAY
    cdef double last_activity

    def __cinit__(self):
        self.rhead = <ResponseHead *>malloc(sizeof(ResponseHead))
        if self.rhead == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.rhead)

    def __init__(self, ListenerRuntime listener):
        cdef H2Options opts = h2_options_from_model(listener.model.hcm.http2)
        opts.max_header_list_size = listener.max_header_bytes
        self.listener = listener
        self.worker = listener.worker
        self.streams = {}
        self.session = H2Session.__new__(H2Session)
        self.session.setup(True, self, &opts)
        self.closed = False
        self.transport = None

    # -- asyncio protocol -----------------------------------------------------------------------
    def connection_made(self, transport, bint counted=False):
        cdef int64_t *v = self.worker.values
        cdef ListenerRuntime lr = self.listener
        self.transport = transport
        transport.set_write_buffer_limits(high=lr.buffer_limit)
        if not counted:
            v[lr.listener_base + LISTENER_DOWNSTREAM_CX_TOTAL] += 1
            v[lr.listener_base + LISTENER_DOWNSTREAM_CX_ACTIVE] += 1
            v[lr.http_base + HTTP_DOWNSTREAM_CX_TOTAL] += 1
            v[lr.http_base + HTTP_DOWNSTREAM_CX_ACTIVE] += 1
        v[lr.http_base + HTTP_DOWNSTREAM_CX_HTTP2_TOTAL] += 1
        v[lr.http_base + HTTP_DOWNSTREAM_CX_HTTP2_ACTIVE] += 1
        self.worker.connections.add(self)
        self.last_activity = now()
        self.flush()  # our SETTINGS
        ka = lr.model.hcm.http2
        if ka.keepalive_interval_ms > 0:
            self.keepalive = H2Keepalive(self.worker.loop, ka.keepalive_interval_ms / 1000.0,
                                         ka.keepalive_timeout_ms / 1000.0, self._send_ping,
                                         self._close_now)
        if self.worker.draining:
            self.close_if_idle()

    def _send_ping(self, opaque):
        self.session.ping(opaque)
        self.flush()

    def _close_now(self):
        self._close()

    cdef void on_ping_ack(self, uint64_t opaque) noexcept:
        if self.keepalive is not None:
            self.keepalive.acked(opaque)

    def close_if_idle(self):
        """Drain, as Envoy's codec: a GOAWAY announcing the shutdown (last stream 2^31-1), then
        at the next step a GOAWAY with the last stream taken; close once no stream is left."""
        if self.transport is None or self.closed:
            return
        if self.drain_step == 0:
            self.drain_step = 1
            self.session.shutdown_notice()
            self.flush()
            return
        if self.drain_step == 1:
            self.drain_step = 2
            self.session.goaway(0)
            self.flush()
        if not self.streams:
            self._close_after_goaway()

    def sweep(self, double t):
        """The connection's idle timeout, and each stream's timeouts."""
        cdef H2StreamBridge b
        cdef ListenerRuntime lr = self.listener
        if self.transport is None:
            return
        if self.streams:
            for b in list(self.streams.values()):
                b.sweep(t)
        elif lr.idle_timeout > 0 and t - self.last_activity >= lr.idle_timeout:
            self.worker.values[lr.http_base + HTTP_DOWNSTREAM_CX_IDLE_TIMEOUT] += 1
            self.session.goaway(0)
            self.flush()
            self._close_after_goaway()

    def data_received(self, bytes data):
        cdef int rc
        self.worker.values[self.listener.http_base + HTTP_DOWNSTREAM_CX_RX_BYTES_TOTAL] += \
            PyBytes_GET_SIZE(data)
        self.last_activity = now()
        self.in_read = True
        rc = self.session.feed(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        self.in_read = False
        if rc != H2_OK:
            self.worker.values[self.listener.http_base + HTTP_DOWNSTREAM_CX_PROTOCOL_ERROR] += 1
            if rc == H2_ERR_PROTOCOL:
                self.flush()
            self._close()
            return
        self.flush()

    cdef void flush_soon(self):
        """Write what the streams produced, once per turn of the loop: answers that come from
        several upstream reads of one turn leave in one write (inside our own read, the flush
        at its end covers them)."""
        if self.in_read or self.flush_scheduled or self.transport is None:
            return
        self.flush_scheduled = True
        self.worker.loop.call_soon(self._deferred_flush)

    def _deferred_flush(self):
        self.flush_scheduled = False
        self.flush()

    def eof_received(self):
        return False  # the client is done: close (also ends a delayed close)

    def connection_lost(self, exc):
        cdef int64_t *v = self.worker.values
        cdef ListenerRuntime lr = self.listener
        cdef H2StreamBridge b
        self.closed = True
        self.worker.connections.discard(self)
        if self.keepalive is not None:
            self.keepalive.stop()
            self.keepalive = None
        self.session.handler = None  # no more events; unlinked, the session and the response
                                     # bytes it still queues go with this object, without
                                     # waiting for the cycle collector
        for b in list(self.streams.values()):
            b.finished()
        self.streams.clear()
        v[lr.listener_base + LISTENER_DOWNSTREAM_CX_ACTIVE] -= 1
        v[lr.listener_base + LISTENER_DOWNSTREAM_CX_DESTROY] += 1
        v[lr.http_base + HTTP_DOWNSTREAM_CX_ACTIVE] -= 1
        v[lr.http_base + HTTP_DOWNSTREAM_CX_HTTP2_ACTIVE] -= 1
        v[lr.http_base + HTTP_DOWNSTREAM_CX_DESTROY] += 1
        self.transport = None

    def pause_writing(self):
        pass

    def resume_writing(self):
        pass

    cdef void flush(self):
        if self.transport is None or self.closed:
            return  # (after a GOAWAY and our FIN nothing more is written)
        self.session.produce()
        out = self.session.take_output()
        if out:
            for piece in out:
                self.worker.values[self.listener.http_base + HTTP_DOWNSTREAM_CX_TX_BYTES_TOTAL] += \
                    len(piece)
            self.transport.writelines(out)
        self.session.output_flushed()
        if not self.session.want_read() and not self.session.want_write():
            # nghttp2 is done with the connection (a GOAWAY either way and no stream left):
            # it would ignore anything more, so the connection goes
            self._close_after_goaway()

    cdef void _close(self):
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    cdef void _close_after_goaway(self):
        """Close once the GOAWAY is out, as Envoy's delayed close: our side is shut (FIN after
        the pending bytes) and the socket closes when the client closes its side, or after a
        second; closing at once could turn the client's late frames into a reset that discards
        the GOAWAY before it is read."""
        if self.transport is None or self.closed:
            return
        self.closed = True
        try:
            self.transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            self.transport.close()
            return
        self.worker.loop.call_later(1.0, self._close_late)

    def _close_late(self):
        if self.transport is not None:
            self.transport.close()

    # -- HTTP/2 events --------------------------------------------------------------------------
    cdef int on_headers(self, int32_t sid, list headers, bint end_stream) noexcept:
        try:
            self._on_request(sid, headers, end_stream)
        except BaseException:
            _log.debug("internal error in an HTTP/2 event", exc_info=True)
            self.session.reset_stream(sid, NGHTTP2_INTERNAL_ERROR)
        return 0

    cdef _on_request(self, int32_t sid, list headers, bint end_stream):
        """A request head: handed to the request path as a parsed HTTP/1 head (the worker's
        RequestHead pointing into the header list's bytes, which nghttp2 has validated; the
        :authority becomes Host, split cookies are joined), as if read from a socket."""
        cdef RequestHead *head = self.worker.req_head
        cdef H2StreamBridge b
        cdef int64_t *v = self.worker.values
        cdef Py_ssize_t i, n = PyList_GET_SIZE(headers)
        cdef size_t k = 1   # headers[0] is Host
        cdef Py_ssize_t nl
        cdef int64_t length = -1
        cdef bytes name, value, method = None, path = None, authority = None, cookie = None
        cdef list cookies = None
        for i in range(n):
            pair = <tuple>headers[i]
            name = <bytes>pair[0]
            value = <bytes>pair[1]
            nl = PyBytes_GET_SIZE(name)
            if PyBytes_AS_STRING(name)[0] == 58:  # ':'
                if nl == 7 and name == b":method":
                    method = value
                elif nl == 5 and name == b":path":
                    path = value
                elif nl == 10 and name == b":authority":
                    authority = value
                continue
            if nl == 6 and name == b"cookie":
                # HTTP/2 splits cookies; HTTP/1 joins them with "; "
                if cookies is None:
                    cookies = [value]
                else:
                    cookies.append(value)
                continue
            if name in SKIP_REQUEST:
                if nl == 4 and authority is None:  # host
                    authority = value
                continue
            if nl == 14 and name == b"content-length":
                length = int(value)  # nghttp2 checked that it is a number
            if k >= FP_MAX_HEADERS - 1:
                self.session.reset_stream(sid, 1)  # more than the codec lets through
                return
            head.headers[k].name = PyBytes_AS_STRING(name)
            head.headers[k].name_len = nl
            head.headers[k].value = PyBytes_AS_STRING(value)
            head.headers[k].value_len = PyBytes_GET_SIZE(value)
            k += 1
        if method is None or path is None:
            self.session.reset_stream(sid, 1)  # PROTOCOL_ERROR
            return
        if cookies:
            cookie = b"; ".join(cookies)
            head.headers[k].name = b"cookie"
            head.headers[k].name_len = 6
            head.headers[k].value = PyBytes_AS_STRING(cookie)
            head.headers[k].value_len = PyBytes_GET_SIZE(cookie)
            k += 1
        if authority is None:
            authority = b""
        head.headers[0].name = b"host"
        head.headers[0].name_len = 4
        head.headers[0].value = PyBytes_AS_STRING(authority)
        head.headers[0].value_len = PyBytes_GET_SIZE(authority)
        head.num_headers = k
        head.host_index = 0
        head.method = PyBytes_AS_STRING(method)
        head.method_len = PyBytes_GET_SIZE(method)
        head.path = PyBytes_AS_STRING(path)
        head.path_len = PyBytes_GET_SIZE(path)
        head.target = head.path
        head.target_len = head.path_len
        head.authority = NULL
        head.authority_len = 0
        head.minor_version = 1
        head.keep_alive = True
        head.expect_continue = False
        head.upgrade = False
        head.is_head = method == b"HEAD"
        head.is_connect = method == b"CONNECT"
        head.upgrade_index = -1
        head.te_index = -1
        head.error = NULL
        head.content_length = 0
        b = new_bridge(self.listener)
        if length > 0:
            head.body_kind = BODY_LENGTH
            head.content_length = length
        elif length == 0 or end_stream:
            head.body_kind = BODY_NONE
        else:
            head.body_kind = BODY_CHUNKED  # the DATA frames are framed as chunks for it
            b.chunked_request = True
        b.conn = self
        b.sid = sid
        b.rbuf = bytearray()
        b.transport = self.transport
        b.write = _drop
        b.last_activity = now()
        self.streams[sid] = b
        v[self.listener.http_base + HTTP_DOWNSTREAM_RQ_HTTP2_TOTAL] += 1
        b._on_request_head(NULL, 0, 0)
        # the HTTP/1 path counted this request as HTTP/1
        v[self.listener.http_base + HTTP_DOWNSTREAM_RQ_HTTP1_TOTAL] -= 1

    cdef int on_data(self, int32_t sid, const char *data, size_t length) noexcept:
        cdef H2StreamBridge b = self.streams.get(sid)
        try:
            if b is not None and not b.gone:
                piece = PyBytes_FromStringAndSize(data, length)
                if b.chunked_request:
                    piece = b"%x\r\n" % length + piece + b"\r\n"
                b._received(piece)
        except BaseException:
            _log.debug("internal error in an HTTP/2 event", exc_info=True)
            self.session.reset_stream(sid, NGHTTP2_INTERNAL_ERROR)
        self.session.consume(sid, length)
        return 0

    cdef int on_trailers(self, int32_t sid, list headers) noexcept:
        cdef H2StreamBridge b = self.streams.get(sid)
        if b is not None and not b.gone and b.chunked_request:
            # carried beside the HTTP/1 bytes to an HTTP/2 upstream (HTTP/1 ones drop them)
            b.stream.request_trailers = [(n, v) for n, v in headers if n[:1] != b":"]
        return 0

    cdef int on_stream_end(self, int32_t sid) noexcept:
        cdef H2StreamBridge b = self.streams.get(sid)
        try:
            if b is not None and not b.gone and b.chunked_request:
                b._received(b"0\r\n\r\n")
        except BaseException:
            _log.debug("internal error in an HTTP/2 event", exc_info=True)
            self.session.reset_stream(sid, NGHTTP2_INTERNAL_ERROR)
        return 0

    cdef void on_stream_close(self, int32_t sid) noexcept:
        cdef H2StreamBridge b = self.streams.pop(sid, None)
        if b is not None:
            try:
                b.finished()
            except BaseException:
                pass

    cdef void on_stream_reset(self, int32_t sid, uint32_t error_code, bint remote) noexcept:
        self.on_stream_close(sid)

    cdef void on_data_sent(self, int32_t sid, size_t queued) noexcept:
        cdef H2StreamBridge b = self.streams.get(sid)
        if b is not None:
            try:
                b.data_sent(queued)
            except BaseException:
                pass


def switch_to_h2(DownstreamConnection h1, transport, bytes received):
    """codec_type AUTO: the client opened with the HTTP/2 preface.  Hand the transport to an
    HTTP/2 connection and give it what was read so far."""
    cdef H2DownstreamConnection h2 = H2DownstreamConnection(h1.listener)
    cdef int64_t *v = h1.worker.values
    v[h1.listener.http_base + HTTP_DOWNSTREAM_CX_HTTP1_TOTAL] -= 1
    v[h1.listener.http_base + HTTP_DOWNSTREAM_CX_HTTP1_ACTIVE] -= 1
    h1.worker.connections.discard(h1)  # the HTTP/2 connection takes its place
    h1.transport = None
    transport.set_protocol(h2)
    h2.connection_made(transport, True)
    h2.data_received(received)
    return h2
