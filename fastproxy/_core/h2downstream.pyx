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
from libc.stdint cimport int32_t, int64_t, uint32_t
from libc.stdlib cimport malloc, free

from fastproxy._core.http1 cimport (
    ResponseHead, BodyDecoder, parse_response_head, body_decoder_init, body_decode,
    is_hop_by_hop_name, PARSE_INCOMPLETE, BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_EOF,
)
from fastproxy._core.http2 cimport (
    H2Handler, H2Session, H2Options, h2_options_init, H2_OK, H2_ERR_PROTOCOL,
)
from fastproxy._core.connection cimport (
    DownstreamConnection, ListenerRuntime, Worker, Stream, UpstreamConnection,
)
from fastproxy._core.stats cimport *

import logging
_log = logging.getLogger("fastproxy.http2")

cdef uint32_t NGHTTP2_CANCEL = 8
cdef uint32_t NGHTTP2_INTERNAL_ERROR = 2

# Request headers that mean nothing on an HTTP/1 hop (RFC 9113 8.2.2 forbids most of them in
# HTTP/2 anyway; nghttp2 refuses those).
cdef frozenset SKIP_REQUEST = frozenset([b"connection", b"keep-alive", b"proxy-connection",
                                         b"transfer-encoding", b"upgrade", b"host"])


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
        c.flush()

    cdef void _translate(self):
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
                headers = [(b":status", str(head.status).encode())]
                for i in range(head.num_headers):
                    if is_hop_by_hop_name(&head.headers[i], False):
                        continue
                    headers.append((PyBytes_FromStringAndSize(head.headers[i].name,
                                                              head.headers[i].name_len).lower(),
                                    PyBytes_FromStringAndSize(head.headers[i].value,
                                                              head.headers[i].value_len)))
                end = head.body_kind == BODY_NONE or (head.body_kind == BODY_LENGTH
                                                      and head.content_length == 0)
                if end and self.stream.grpc:
                    # a trailers-only gRPC answer carries no content-length over HTTP/2
                    headers = [h for h in headers if h[0] != b"content-length"]
                body_decoder_init(&self.rbody, head.body_kind, head.content_length)
                del self.rbuf[:rc]
                self.head_sent = True
                c.session.submit_response(self.sid, headers, end)
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
            self.conn.flush()

    cdef void _close(self):
        # The HTTP/1 side wants the 'connection' closed: for a stream that means an end.  A
        # complete response needs nothing more; anything else resets the stream.
        self.closing = True
        if not self.response_done:
            self._reset(NGHTTP2_CANCEL)

    cdef void finished(self):
        """The HTTP/2 stream is gone (closed or reset).  A stream whose response was handed over
        completely needs nothing more; otherwise the HTTP/1 side is torn down on the next turn
        of the loop (this may run inside that side's own write, which must not see its stream
        vanish under it)."""
        self.gone = True
        if self.response_done or self.stream.response_complete:
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

    def __cinit__(self):
        self.rhead = <ResponseHead *>malloc(sizeof(ResponseHead))
        if self.rhead == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.rhead)

    def __init__(self, ListenerRuntime listener):
        cdef H2Options opts
        h2_options_init(&opts)
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
        self.flush()  # our SETTINGS

    def data_received(self, bytes data):
        cdef int rc
        self.worker.values[self.listener.http_base + HTTP_DOWNSTREAM_CX_RX_BYTES_TOTAL] += \
            PyBytes_GET_SIZE(data)
        rc = self.session.feed(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        if rc != H2_OK:
            self.worker.values[self.listener.http_base + HTTP_DOWNSTREAM_CX_PROTOCOL_ERROR] += 1
            if rc == H2_ERR_PROTOCOL:
                self.flush()
            self._close()
            return
        self.flush()

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        cdef int64_t *v = self.worker.values
        cdef ListenerRuntime lr = self.listener
        cdef H2StreamBridge b
        self.closed = True
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
        if self.transport is None:
            return
        self.session.produce()
        out = self.session.take_output()
        if out:
            for piece in out:
                self.worker.values[self.listener.http_base + HTTP_DOWNSTREAM_CX_TX_BYTES_TOTAL] += \
                    len(piece)
            self.transport.writelines(out)
        self.session.output_flushed()

    cdef void _close(self):
        if self.transport is not None and not self.closed:
            self.closed = True
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
        cdef H2StreamBridge b
        cdef int64_t *v = self.worker.values
        method = path = authority = None
        has_length = False
        lines = []
        cookies = []
        for name, value in headers:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                continue
            if name == b"cookie":
                cookies.append(value)  # HTTP/2 splits cookies; HTTP/1 joins them with "; "
                continue
            if name in SKIP_REQUEST:
                if name == b"host" and authority is None:
                    authority = value
                continue
            if name == b"content-length":
                has_length = True
            lines.append(name + b": " + value)
        if method is None or path is None:
            self.session.reset_stream(sid, 1)  # PROTOCOL_ERROR
            return
        b = H2StreamBridge(self.listener)
        b.conn = self
        b.sid = sid
        b.rbuf = bytearray()
        b.transport = self.transport
        b.write = _drop
        b.last_activity = 0
        b.chunked_request = not end_stream and not has_length
        if cookies:
            lines.append(b"cookie: " + b"; ".join(cookies))
        if b.chunked_request:
            lines.append(b"transfer-encoding: chunked")
        head = (method + b" " + path + b" HTTP/1.1\r\nhost: " + (authority or b"") + b"\r\n"
                + b"".join(l + b"\r\n" for l in lines) + b"\r\n")
        self.streams[sid] = b
        v[self.listener.http_base + HTTP_DOWNSTREAM_RQ_HTTP2_TOTAL] += 1
        b.data_received(head)
        # the HTTP/1 path counted this request as HTTP/1
        v[self.listener.http_base + HTTP_DOWNSTREAM_RQ_HTTP1_TOTAL] -= 1

    cdef int on_data(self, int32_t sid, const char *data, size_t length) noexcept:
        cdef H2StreamBridge b = self.streams.get(sid)
        try:
            if b is not None and not b.gone:
                piece = PyBytes_FromStringAndSize(data, length)
                if b.chunked_request:
                    piece = b"%x\r\n" % length + piece + b"\r\n"
                b.data_received(piece)
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
                b.data_received(b"0\r\n\r\n")
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
    transport.set_protocol(h2)
    h2.connection_made(transport, True)
    h2.data_received(received)
    return h2
