"""HTTP/2 upstreams: the multiplexed connection pool of a cluster whose
typed_extension_protocol_options choose HTTP/2 (explicit_http_config.http2_protocol_options).

`H2Pool` keeps, per host address, client `H2UpstreamSession`s (one TCP connection and one
nghttp2 client session each).  Every request gets an `H2UpstreamStream`: an UpstreamConnection
to the request path (the same attach/send/_fail/_response_done contract as a pooled HTTP/1.1
connection, so routing, retries, hedging, timeouts, breakers and outlier detection apply
unchanged), bound to one HTTP/2 stream of a session.  It takes the HTTP/1 request bytes the
request path writes, turns the head into an HTTP/2 header list and the body into DATA frames,
and turns the response events back into the HTTP/1 bytes the response path parses.  Trailers
travel beside the bytes (Stream.request_trailers / response_trailers), so an HTTP/2 client
reaches an HTTP/2 upstream with its trailers in both directions (gRPC).

Flow control: response DATA is acknowledged to the upstream (H2Session.consume) as it is
handed to the client side, except while the client side asked the stream to pause reading
(its write buffer is full); request DATA queued in the session over the cluster's buffer limit
pauses reading from the client.  Memory per stream is thus bounded by the windows and the
buffer limits, and one slow stream does not stop the others on the same connection.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, free

from fastproxy._core.includes.picohttpparser cimport phr_header
from fastproxy._core.http1 cimport (
    RequestHead, ResponseHead, BodyDecoder, parse_request_head, body_decoder_init, body_decode,
    is_hop_by_hop, name_eq, PARSE_INCOMPLETE, BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_EOF,
    FP_MAX_HEADERS,
)
from cpython.list cimport PyList_GET_SIZE
from fastproxy._core.http2 cimport (
    H2Handler, H2Session, H2Options, h2_options_init, H2_OK, H2_ERR_PROTOCOL,
    h2_options_from_model, H2Keepalive,
)
from fastproxy._core.connection cimport (
    now,
    UpstreamPool, UpstreamConnection, ClusterRuntime, Stream, Worker, set_keepalive,
    start_connect, count_connect_failure,
    U_CONNECTING, U_HEAD, U_BODY, U_CLOSED,
)
from fastproxy._core.stats cimport *
from fastproxy._core.hoststate cimport LOCAL_CONNECT_FAILED, LOCAL_CONNECT_TIMEOUT, LOCAL_RESET

from libc.stdint cimport uint8_t
from fastproxy._core.includes.nghttp2 cimport nghttp2_nv, NGHTTP2_NV_FLAG_NONE

import logging
_log = logging.getLogger("fastproxy.http2")

cdef enum:
    FP_NV_MAX = 132  # FP_MAX_HEADERS (128) + pseudo-headers

cdef uint32_t NGHTTP2_NO_ERROR = 0
cdef uint32_t NGHTTP2_INTERNAL_ERROR = 2
cdef uint32_t NGHTTP2_REFUSED_STREAM = 7
cdef uint32_t NGHTTP2_CANCEL = 8
cdef int32_t SETTINGS_MAX_CONCURRENT_STREAMS = 3

cdef bytes SCHEME = b"http"


cdef class H2UpstreamStream(UpstreamConnection):
    cdef H2UpstreamSession sess
    cdef int32_t sid            # 0 until the request head is submitted
    cdef bytearray reqbuf       # request bytes (HTTP/1) not translated yet
    cdef bint head_done
    cdef BodyDecoder reqbody
    cdef bint local_ended       # our side of the stream ended (END_STREAM or trailers sent)
    cdef bint remote_ended      # the upstream's side ended
    cdef bint open_body         # the response body goes to the request path unframed (its
                                # end is the stream's)
    cdef bint resp_head_seen
    cdef bint paused            # the client side cannot take more: hold the acknowledgements
    cdef bint paused_down       # we paused reading from the client (request backpressure)
    cdef size_t unconsumed      # response bytes delivered but not acknowledged yet
    cdef bint bound             # counted in sess.active
    cdef bint resp_complete     # the request path has the whole response

    # -- the UpstreamConnection contract --------------------------------------------------------
    cdef void start_connect(self):
        pass  # the session connects; streams wait in its list

    cdef void attach(self, Stream s):
        UpstreamConnection.attach(self, s)
        if self.connected:
            s.downstream._end_pending()

    cdef int _response_done(self) except -1:
        self.resp_complete = True
        return UpstreamConnection._response_done(self)

    cdef void send(self, object data):
        cdef Stream s = self.stream
        self.last_activity = now()
        if not self.connected:
            if s is not None and s.pending_writes is not None:
                s.pending_writes.append(data)
            return
        if self.closed or self.sess is None:
            return
        self.cluster.worker.values[self.cluster.base + CLUSTER_UPSTREAM_CX_TX_BYTES_TOTAL] += \
            len(data)
        try:
            self._translate(data)
        except _Refused as e:
            self._fail(str(e), 503)
            return
        self.sess.flush_soon()

    cdef void _connect_failed(self, str reason):
        cdef Stream s = self.stream
        if self.closed:
            return
        if s is not None:
            self.cluster.worker.values[self.cluster.base + CLUSTER_UPSTREAM_RQ_PENDING_FAILURE_EJECT] += 1
        self._fail(reason)

    cdef void _close_transport(self):
        """The request path is done with this stream (answered, failed, or abandoned): reset
        it if it is still open, and give its place back to the session."""
        cdef H2UpstreamSession sess = self.sess
        if not self.closed:
            self.closed = True
            if sess is not None and self.sid > 0 and not self.remote_ended and not (
                    self.resp_complete and self.local_ended):
                sess.session.reset_stream(self.sid, NGHTTP2_CANCEL)
                self.cluster.worker.values[self.cluster.base + CLUSTER_UPSTREAM_RQ_TX_RESET] += 1
                sess.flush_soon()
            if sess is not None and self.unconsumed:
                sess.session.consume(self.sid, self.unconsumed)
                self.unconsumed = 0
        self.state = U_CLOSED
        self.transport = None
        self._unbind()

    cdef void _unbind(self):
        cdef H2UpstreamSession sess = self.sess
        if sess is None:
            return
        self.sess = None
        if self.sid > 0:
            sess.streams.pop(self.sid, None)
        elif self in sess.waiting:
            sess.waiting.remove(self)
        if self.bound:
            self.bound = False
            sess.stream_done()

    # The request path pauses/resumes "reading" from the upstream through .transport.
    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False
        if self.unconsumed and self.sess is not None and self.sid > 0:
            self.sess.session.consume(self.sid, self.unconsumed)
            self.unconsumed = 0
            self.sess.flush_soon()

    def close(self):
        self._close_transport()

    cdef void ready(self):
        """The session is connected: send what the request path queued meanwhile."""
        cdef Stream s = self.stream
        cdef ClusterRuntime c = self.cluster
        self.connected = True
        self.transport = self
        if s is None:
            self._close_transport()
            return
        s.downstream._end_pending()
        self.state = U_HEAD
        c.worker.values[c.base + CLUSTER_UPSTREAM_RQ_TOTAL] += 1
        pending = s.pending_writes
        s.pending_writes = None
        if pending:
            for data in pending:
                self.send(data)
                if self.closed:
                    return

    # -- request: HTTP/1 bytes -> HTTP/2 ---------------------------------------------------------
    cdef int _translate(self, object data) except -1:
        cdef RequestHead *head
        cdef nghttp2_nv nva[FP_NV_MAX]
        cdef size_t nvlen
        cdef int rc
        cdef Py_ssize_t n
        cdef bytearray work
        cdef size_t length, consumed
        cdef Stream s = self.stream
        cdef H2Session session = self.sess.session
        if not self.head_done:
            if self.reqbuf is None:
                self.reqbuf = bytearray(data)
            else:
                self.reqbuf += data
            n = PyByteArray_GET_SIZE(self.reqbuf)
            head = self.sess.pool.head
            rc = parse_request_head(PyByteArray_AS_STRING(self.reqbuf), n, 1 << 20, head)
            if rc == PARSE_INCOMPLETE:
                return 0
            if rc < 0 or (s is not None and s.upgrade):
                # (an upgrade would need extended CONNECT over HTTP/2: not done)
                raise _Refused("protocol error")
            self.head_done = True
            end = head.body_kind == BODY_NONE
            nvlen = request_nv(head, nva)
            body_decoder_init(&self.reqbody, head.body_kind, head.content_length)
            if s is not None and s.request_trailers and head.body_kind == BODY_CHUNKED:
                pass
            sid = session.submit_request_nv(nva, nvlen, end)
            if sid <= 0:
                raise _Refused("remote refused stream reset")
            self.sid = sid
            self.sess.streams[sid] = self
            if end:
                self.local_ended = True
                self.reqbuf = None
                return 0
            work = self.reqbuf[rc:]
            self.reqbuf = None
            if PyByteArray_GET_SIZE(work) == 0:
                return 0
        else:
            if self.local_ended:
                return 0
            if self.reqbody.kind == BODY_LENGTH and type(data) is bytes:
                n = PyBytes_GET_SIZE(data)
                if n >= self.reqbody.remaining:
                    if n > self.reqbody.remaining:
                        data = data[:self.reqbody.remaining]
                    self.reqbody.remaining = 0
                    self.local_ended = True
                    session.send_data(self.sid, data, True)
                    return 0
                self.reqbody.remaining -= n
                session.send_data(self.sid, data, False)
                self._check_queued()
                return 0
            work = bytearray(data)
        length = PyByteArray_GET_SIZE(work)
        rc = body_decode(&self.reqbody, PyByteArray_AS_STRING(work), &length, &consumed)
        if rc < 0:
            raise _Refused("protocol error")
        if rc == 1:
            self.local_ended = True
            trailers = s.request_trailers if s is not None else None
            if trailers:
                if length:
                    session.send_data(self.sid, bytes(work[:length]), False)
                session.submit_trailers(self.sid, trailers)
            else:
                session.send_data(self.sid, bytes(work[:length]), True)
        elif length:
            session.send_data(self.sid, bytes(work[:length]), False)
            self._check_queued()
        return 0

    cdef void _check_queued(self):
        if not self.paused_down and \
                self.sess.session.queued_bytes(self.sid) > self.cluster.buffer_limit:
            self.paused_down = True
            self.pause_writing()

    cdef void data_sent(self, size_t queued):
        if self.paused_down and queued <= self.cluster.buffer_limit // 2:
            self.paused_down = False
            self.resume_writing()

    # -- response: HTTP/2 events -> HTTP/1 bytes --------------------------------------------------
    cdef int on_head(self, list headers, bint end_stream) except -1:
        """The response head, handed to the response path as a parsed HTTP/1 head (the
        worker's ResponseHead pointing into the header list's bytes, which nghttp2 has
        validated): no HTTP/1 text to write and parse again."""
        cdef ResponseHead *head = self.cluster.worker.resp_head
        cdef Stream s = self.stream
        cdef bint is_head = s.is_head
        cdef bint grpc = s.grpc
        cdef int status = 0
        cdef int64_t length = -1
        cdef size_t k = 0
        cdef bytes name, value
        cdef Py_ssize_t i, n = PyList_GET_SIZE(headers)
        for i in range(n):
            pair = <tuple>headers[i]
            name = <bytes>pair[0]
            value = <bytes>pair[1]
            if PyBytes_AS_STRING(name)[0] == 58:  # ':'
                if name == b":status":
                    status = int(value)
                continue
            if PyBytes_GET_SIZE(name) == 14 and name == b"content-length":
                if (end_stream and not is_head) or grpc:
                    # (a gRPC answer's trailers follow its body: delimited by the stream's
                    # end, the body does not end the response before they arrive)
                    continue
                length = int(value)  # nghttp2 checked it is a number
            if k == FP_MAX_HEADERS:
                raise _Refused("protocol error")
            head.headers[k].name = PyBytes_AS_STRING(name)
            head.headers[k].name_len = PyBytes_GET_SIZE(name)
            head.headers[k].value = PyBytes_AS_STRING(value)
            head.headers[k].value_len = PyBytes_GET_SIZE(value)
            k += 1
        if status < 200:
            return 0  # 1xx: the request path does not forward interim answers
        self.resp_head_seen = True
        head.status = status
        head.reason = b"OK"
        head.reason_len = 2
        head.minor_version = 1
        head.num_headers = k
        head.keep_alive = True
        head.error = NULL
        head.upgrade = False
        head.te_index = -1
        head.content_length = 0
        if end_stream:
            self.remote_ended = True
        if end_stream or is_head or status == 204 or status == 304:
            head.body_kind = BODY_NONE
            if end_stream and not is_head and status != 204 and status != 304:
                # an HTTP/1 answer without a body says so
                if k == FP_MAX_HEADERS:
                    raise _Refused("protocol error")
                head.headers[k].name = b"content-length"
                head.headers[k].name_len = 14
                head.headers[k].value = b"0"
                head.headers[k].value_len = 1
                head.num_headers = k + 1
        elif length >= 0:
            head.body_kind = BODY_LENGTH if length > 0 else BODY_NONE
            head.content_length = length
        else:
            # no length: the request path reads the body until its end, which comes with the
            # stream's (on_end)
            self.open_body = True
            head.body_kind = BODY_EOF
        self.last_activity = now()
        if self.state == U_HEAD and s is not None:
            self._on_response_head(NULL, 0, 0)
        return 0

    cdef int on_body(self, const char *data, size_t length) except -1:
        self._received(PyBytes_FromStringAndSize(data, length))
        return 0

    cdef int on_end(self) except -1:
        self.remote_ended = True
        if self.open_body and self.stream is not None and self.state == U_BODY:
            self._finish_body_eof()
        return 0


class _Refused(Exception):
    pass


cdef size_t request_nv(RequestHead *head, nghttp2_nv *nva) noexcept:
    """The HTTP/2 fields of a request head written by the request path (HTTP/1.1, names in
    lower case), pointing into its buffer: the pseudo-headers (Host becomes :authority), then
    the fields but the hop-by-hop ones and Expect."""
    cdef size_t i, k = 4
    cdef const phr_header *h
    _nv(&nva[0], b":method", 7, head.method, head.method_len)
    _nv(&nva[1], b":scheme", 7, b"http", 4)
    _nv(&nva[2], b":authority", 10, b"", 0)
    _nv(&nva[3], b":path", 5, head.path, head.path_len)
    for i in range(head.num_headers):
        h = &head.headers[i]
        if h.name_len == 4 and name_eq(h.name, 4, b"host", 4):
            nva[2].value = <uint8_t *>h.value
            nva[2].valuelen = h.value_len
            continue
        if is_hop_by_hop(head.headers, head.num_headers, i, False):
            continue
        if h.name_len == 6 and name_eq(h.name, 6, b"expect", 6):
            continue
        _nv(&nva[k], h.name, h.name_len, h.value, h.value_len)
        k += 1
    return k


cdef inline void _nv(nghttp2_nv *nv, const char *name, size_t namelen, const char *value,
                     size_t valuelen) noexcept:
    nv.name = <uint8_t *>name
    nv.namelen = namelen
    nv.value = <uint8_t *>value
    nv.valuelen = valuelen
    nv.flags = NGHTTP2_NV_FLAG_NONE




cdef class H2UpstreamSession(H2Handler):
    """One HTTP/2 connection to an upstream host (an asyncio protocol)."""
    cdef H2Pool pool
    cdef ClusterRuntime cluster
    cdef readonly object address
    cdef H2Session session
    cdef object transport
    cdef dict streams           # stream id -> H2UpstreamStream
    cdef list waiting           # streams bound before the connection is up
    cdef bint connected
    cdef bint closed
    cdef bint draining          # no new streams (GOAWAY, max_requests_per_connection)
    cdef int active             # streams bound to this connection
    cdef int64_t total          # streams ever bound
    cdef uint32_t peer_max      # the peer's SETTINGS_MAX_CONCURRENT_STREAMS
    cdef object connect_timer
    cdef object idle_timer
    cdef double idle_since
    cdef bint counted           # holds a breakers.try_connection slot
    cdef int priority
    cdef H2Keepalive keepalive  # connection_keepalive, or None
    cdef bint in_read           # inside data_received (its own flush follows)
    cdef bint close_after_read  # close() was asked for inside feed()
    cdef bint flush_scheduled

    def __init__(self, H2Pool pool, object address, int priority):
        cdef H2Options opts = pool.opts
        self.pool = pool
        self.cluster = pool.cluster
        self.address = address
        self.streams = {}
        self.waiting = []
        self.priority = priority
        # Before the peer's SETTINGS, as Envoy's pool: our own limit (the codec queues streams
        # over the peer's limit once it is known)
        self.peer_max = opts.max_concurrent_streams
        self.session = H2Session.__new__(H2Session)
        self.session.setup(False, self, &opts)

    cdef bint has_room(self):
        return (not self.draining and not self.closed
                and <uint32_t>self.active < self.peer_max
                and (self.pool.max_requests == 0 or self.total < self.pool.max_requests))

    cdef void bind(self, H2UpstreamStream st):
        cdef ClusterRuntime c = self.cluster
        st.sess = self
        st.bound = True
        st.accounted = True      # the cluster's connection accounting is the session's
        self.active += 1
        self.total += 1
        if self.pool.max_requests and self.total >= self.pool.max_requests:
            c.worker.values[c.base + CLUSTER_UPSTREAM_CX_MAX_REQUESTS] += 1
            self.drain()
        if self.connected:
            st.connected = True
            st.transport = st
        else:
            self.waiting.append(st)

    cdef void stream_done(self):
        self.active -= 1
        if self.active <= 0:
            self.active = 0
            if self.draining or self.closed:
                self.close()
            elif self.pool.idle_timeout > 0 and self.connected:
                # one timer per idle period at most: it re-arms itself for what is left
                self.idle_since = now()
                if self.idle_timer is None:
                    self.idle_timer = self.cluster.worker.loop.call_later(
                        self.pool.idle_timeout, self._on_idle)

    def _on_idle(self):
        cdef double left
        self.idle_timer = None
        if self.active or self.closed:
            return  # busy again: the next idle period arms a new timer
        left = self.idle_since + self.pool.idle_timeout - now()
        if left > 0:
            self.idle_timer = self.cluster.worker.loop.call_later(left, self._on_idle)
            return
        self.cluster.worker.values[self.cluster.base + CLUSTER_UPSTREAM_CX_IDLE_TIMEOUT] += 1
        self.close()

    cdef void drain(self):
        if not self.draining:
            self.draining = True
            self.pool.forget(self)
            if self.active == 0:
                self.close()

    cdef void close(self):
        if self.in_read:
            # inside feed(): nghttp2 must not be asked to send (nor the session be torn down)
            # while it is still receiving; data_received closes once feed() returns
            self.close_after_read = True
            return
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                if self.connected:
                    self.session.goaway(NGHTTP2_NO_ERROR)
                    self.flush()
                self.transport.close()

    cdef void flush_soon(self):
        """Write what the streams produced once per turn of the loop (requests of many
        clients leave in one write); inside our own read, its final flush covers them."""
        if self.in_read or self.flush_scheduled or self.transport is None:
            return
        self.flush_scheduled = True
        self.cluster.worker.loop.call_soon(self._deferred_flush)

    def _deferred_flush(self):
        self.flush_scheduled = False
        self.flush()

    cdef void flush(self):
        if self.transport is None:
            return
        if self.session.produce() != H2_OK:
            self._protocol_failure()
            return
        out = self.session.take_output()
        if out:
            n = 0
            for piece in out:
                n += len(piece)
            self.cluster.worker.values[self.cluster.base + CLUSTER_UPSTREAM_CX_TX_BYTES_TOTAL] += n
            self.transport.writelines(out)
        if self.transport.get_write_buffer_size() == 0:
            self.session.output_flushed()

    cdef void _protocol_failure(self):
        self.cluster.worker.values[self.cluster.base + CLUSTER_UPSTREAM_CX_PROTOCOL_ERROR] += 1
        self.draining = True
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.close()

    # -- connecting -----------------------------------------------------------------------------
    cdef void start(self):
        cdef ClusterRuntime c = self.cluster
        cdef Worker w = c.worker
        cdef int64_t *v = w.values
        v[c.base + CLUSTER_UPSTREAM_CX_TOTAL] += 1
        v[c.base + CLUSTER_UPSTREAM_CX_HTTP2_TOTAL] += 1
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
            self._gone("remote connection failure", LOCAL_CONNECT_FAILED)

    def _connect_timeout(self, task):
        cdef ClusterRuntime c = self.cluster
        self.connect_timer = None
        if self.connected:
            return
        task.cancel()
        count_connect_failure(c, True)
        self._gone("connection timeout", LOCAL_CONNECT_TIMEOUT)

    cdef void _gone(self, str reason, int local_failure):
        """The connection never came up: fail the streams that waited for it."""
        cdef ClusterRuntime c = self.cluster
        cdef int64_t *v = c.worker.values
        cdef H2UpstreamStream st
        if self.closed and self.transport is None and not self.waiting:
            return
        self.closed = True
        self.pool.forget(self)
        self.pool.release_connection(self)
        v[c.base + CLUSTER_UPSTREAM_CX_ACTIVE] -= 1
        v[c.base + CLUSTER_UPSTREAM_CX_DESTROY] += 1
        if c.state is not None and local_failure >= 0:
            i = self.pool.host_index(self.address)
            if i >= 0:
                c.state.report_local_failure(i, local_failure)
        waiting = self.waiting
        self.waiting = []
        for st in waiting:
            st.bound = False
            st.sess = None
            st._connect_failed(reason)

    # -- asyncio protocol -----------------------------------------------------------------------
    def connection_made(self, transport):
        cdef ClusterRuntime c = self.cluster
        cdef H2UpstreamStream st
        self.transport = transport
        if self.closed:
            transport.close()
            return
        self.connected = True
        transport.set_write_buffer_limits(high=c.buffer_limit)
        if c.keepalive is not None:
            set_keepalive(transport.get_extra_info("socket"), c.keepalive)
        self.flush()   # preface and SETTINGS
        if self.pool.keepalive_interval > 0:
            self.keepalive = H2Keepalive(c.worker.loop, self.pool.keepalive_interval,
                                         self.pool.keepalive_timeout, self._send_ping,
                                         self._keepalive_expired)
        waiting = self.waiting
        self.waiting = []
        for st in waiting:
            if st.sess is self:
                st.ready()
        if self.active == 0:
            self.stream_done_idle()

    cdef void stream_done_idle(self):
        self.active += 1
        self.stream_done()

    def _send_ping(self, opaque):
        self.session.ping(opaque)
        self.flush()

    def _keepalive_expired(self):
        if self.transport is not None:
            self.draining = True
            self.closed = True
            self.pool.forget(self)
            self.transport.close()

    cdef void on_ping_ack(self, uint64_t opaque) noexcept:
        if self.keepalive is not None:
            self.keepalive.acked(opaque)

    def data_received(self, bytes data):
        cdef ClusterRuntime c = self.cluster
        cdef int rc
        c.worker.values[c.base + CLUSTER_UPSTREAM_CX_RX_BYTES_TOTAL] += PyBytes_GET_SIZE(data)
        self.in_read = True
        rc = self.session.feed(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        self.in_read = False
        if self.close_after_read:
            self.close_after_read = False
            self.close()
            return
        if rc != H2_OK:
            if rc == H2_ERR_PROTOCOL:
                self.flush()
            self._protocol_failure()
            return
        self.flush()

    def eof_received(self):
        return False

    def pause_writing(self):
        cdef H2UpstreamStream st
        for st in list(self.streams.values()):
            if not st.paused_down:
                st.paused_down = True
                st.pause_writing()

    def resume_writing(self):
        cdef H2UpstreamStream st
        self.session.output_flushed()
        for st in list(self.streams.values()):
            if st.paused_down and self.session.queued_bytes(st.sid) <= c_half(self.cluster):
                st.paused_down = False
                st.resume_writing()

    def connection_lost(self, exc):
        cdef ClusterRuntime c = self.cluster
        cdef int64_t *v = c.worker.values
        cdef H2UpstreamStream st
        if self.connect_timer is not None:
            self.connect_timer.cancel()
            self.connect_timer = None
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.keepalive is not None:
            self.keepalive.stop()
            self.keepalive = None
        self.session.handler = None  # no more events; unlinked, the session and what it
                                     # queued go with this object, without the cycle collector
        was_closed = self.closed
        self.closed = True
        self.connected = False
        self.transport = None
        self.pool.forget(self)
        self.pool.release_connection(self)
        v[c.base + CLUSTER_UPSTREAM_CX_ACTIVE] -= 1
        v[c.base + CLUSTER_UPSTREAM_CX_DESTROY] += 1
        v[c.base + (CLUSTER_UPSTREAM_CX_DESTROY_LOCAL if was_closed
                    else CLUSTER_UPSTREAM_CX_DESTROY_REMOTE)] += 1
        streams = list(self.streams.values()) + self.waiting
        self.streams = {}
        self.waiting = []
        for st in streams:
            st.sid = 0
            st.bound = False
            st.sess = None
            if st.stream is not None and not st.closed:
                v[c.base + CLUSTER_UPSTREAM_RQ_RX_RESET] += 1
                if c.state is not None:
                    c.state.report_local_failure(st.host, LOCAL_RESET)
                st._fail("connection termination")

    # -- HTTP/2 events --------------------------------------------------------------------------
    cdef int on_headers(self, int32_t sid, list headers, bint end_stream) noexcept:
        cdef H2UpstreamStream st = self.streams.get(sid)
        if st is None or st.stream is None:
            return 0
        try:
            if st.resp_head_seen:
                return 0  # trailers come through on_trailers; a second head is not valid
            st.on_head(headers, end_stream)
        except BaseException:
            _log.debug("internal error in an HTTP/2 event", exc_info=True)
            self._stream_error(st)
        return 0

    cdef int on_data(self, int32_t sid, const char *data, size_t length) noexcept:
        cdef H2UpstreamStream st = self.streams.get(sid)
        if st is None or st.stream is None or st.closed:
            self.session.consume(sid, length)
            return 0
        try:
            st.on_body(data, length)
        except BaseException:
            _log.debug("internal error in an HTTP/2 event", exc_info=True)
            self._stream_error(st)
        if st.paused and not st.closed:
            st.unconsumed += length
        else:
            self.session.consume(sid, length)
        return 0

    cdef int on_trailers(self, int32_t sid, list headers) noexcept:
        cdef H2UpstreamStream st = self.streams.get(sid)
        if st is None or st.stream is None or not st.open_body:
            return 0
        st.stream.response_trailers = [(n, v) for n, v in headers if n[:1] != b":"]
        return 0

    cdef int on_stream_end(self, int32_t sid) noexcept:
        cdef H2UpstreamStream st = self.streams.get(sid)
        if st is None or st.stream is None:
            return 0
        try:
            st.on_end()
        except BaseException:
            _log.debug("internal error in an HTTP/2 event", exc_info=True)
            self._stream_error(st)
        return 0

    cdef void on_stream_close(self, int32_t sid) noexcept:
        cdef H2UpstreamStream st = self.streams.pop(sid, None)
        if st is None:
            return
        try:
            if st.stream is not None and not st.closed:
                # closed before the response was complete: the upstream broke off
                self.cluster.worker.values[self.cluster.base + CLUSTER_UPSTREAM_RQ_RX_RESET] += 1
                st._fail("remote reset")
            st.sid = 0
            st._unbind()
        except BaseException:
            _log.debug("internal error in an HTTP/2 event", exc_info=True)
            pass

    cdef void on_stream_reset(self, int32_t sid, uint32_t error_code, bint remote) noexcept:
        cdef H2UpstreamStream st = self.streams.pop(sid, None)
        cdef ClusterRuntime c = self.cluster
        if st is None:
            return
        try:
            st.sid = 0
            if st.stream is not None and not st.closed:
                c.worker.values[c.base + CLUSTER_UPSTREAM_RQ_RX_RESET] += 1
                if c.state is not None:
                    c.state.report_local_failure(st.host, LOCAL_RESET)
                if remote and error_code == NGHTTP2_REFUSED_STREAM:
                    st._fail("remote refused stream reset")
                elif remote:
                    st._fail("remote reset")
                else:
                    st._fail("protocol error", 502)
            st._unbind()
        except BaseException:
            _log.debug("internal error in an HTTP/2 event", exc_info=True)
            pass

    cdef void on_data_sent(self, int32_t sid, size_t queued) noexcept:
        cdef H2UpstreamStream st = self.streams.get(sid)
        if st is not None:
            try:
                st.data_sent(queued)
            except BaseException:
                pass

    cdef void on_settings(self) noexcept:
        # at most the peer's limit, and at most our own max_concurrent_streams (Envoy's
        # per-connection stream limit towards the upstream)
        self.peer_max = min(self.session.remote_setting(SETTINGS_MAX_CONCURRENT_STREAMS),
                            self.pool.opts.max_concurrent_streams)

    cdef void on_goaway(self, int32_t last_stream_id, uint32_t error_code) noexcept:
        try:
            self.draining = True
            self.pool.forget(self)
        except BaseException:
            _log.debug("internal error in an HTTP/2 event", exc_info=True)
            pass

    cdef void _stream_error(self, H2UpstreamStream st):
        if st.sid > 0:
            self.session.reset_stream(st.sid, NGHTTP2_INTERNAL_ERROR)
        st._fail("protocol error", 502)


cdef size_t c_half(ClusterRuntime c):
    return c.buffer_limit // 2


cdef class H2Pool(UpstreamPool):
    cdef ClusterRuntime cluster
    cdef H2Options opts
    cdef dict sessions          # address -> list of H2UpstreamSession taking new streams
    cdef dict counts            # address -> open or opening connections (all, incl. draining)
    cdef int64_t max_requests
    cdef double idle_timeout
    cdef double keepalive_interval
    cdef double keepalive_timeout
    cdef RequestHead *head      # scratch for translating request heads

    def __cinit__(self):
        self.head = <RequestHead *>malloc(sizeof(RequestHead))
        if self.head == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.head)

    def __init__(self, ClusterRuntime cluster):
        m = cluster.model
        self.cluster = cluster
        self.opts = h2_options_from_model(m.http2)
        self.keepalive_interval = m.http2.keepalive_interval_ms / 1000.0
        self.keepalive_timeout = m.http2.keepalive_timeout_ms / 1000.0
        self.sessions = {}
        self.counts = {}
        self.max_requests = getattr(m, "max_requests_per_connection", 0) or 0
        self.idle_timeout = (getattr(m, "upstream_idle_timeout_ms", 3_600_000) or 0) / 1000.0

    cdef int host_index(self, address):
        try:
            return self.cluster.hosts.index(address)
        except ValueError:
            return -1

    cdef H2UpstreamStream _stream(self, int host, H2UpstreamSession sess):
        # UpstreamConnection.__init__, without the Python call
        cdef H2UpstreamStream st = H2UpstreamStream.__new__(H2UpstreamStream)
        st.cluster = self.cluster
        st.host = host
        st.address = sess.address
        st.buf = bytearray()
        st.state = U_CONNECTING
        st.last_activity = now()
        sess.bind(st)
        return st

    cdef UpstreamConnection ready_stream(self, int host):
        cdef H2UpstreamSession sess
        cdef list lst = self.sessions.get(self.cluster.hosts[host])
        if lst:
            for sess in lst:
                if sess.connected and sess.has_room():
                    return self._stream(host, sess)
        return None

    cdef UpstreamConnection open_stream(self, int host, int priority):
        cdef ClusterRuntime c = self.cluster
        cdef H2UpstreamSession sess, best = None
        address = c.hosts[host]
        cdef list lst = self.sessions.get(address)
        if lst:
            for sess in lst:
                if sess.has_room():
                    return self._stream(host, sess)
                if best is None or sess.active < best.active:
                    best = sess
        counted = False
        if c.breakers is not None:
            counted = c.breakers.try_connection(priority)
            if not counted and best is not None:
                c.worker.values[c.base + CLUSTER_UPSTREAM_CX_OVERFLOW] += 1
                return self._stream(host, best)  # over max_connections: share (the codec queues)
        sess = H2UpstreamSession(self, address, priority)
        sess.counted = counted
        self.sessions.setdefault(address, []).append(sess)
        self.counts[address] = self.counts.get(address, 0) + 1
        c.conn_count[address] = c.conn_count.get(address, 0) + 1
        sess.start()
        return self._stream(host, sess)

    cdef void forget(self, H2UpstreamSession sess):
        """No new streams on this connection."""
        cdef list lst = self.sessions.get(sess.address)
        if lst is not None and sess in lst:
            lst.remove(sess)
            if not lst:
                del self.sessions[sess.address]

    cdef void release_connection(self, H2UpstreamSession sess):
        cdef ClusterRuntime c = self.cluster
        if sess.counted:
            sess.counted = False
            c.breakers.release_connection(sess.priority)
        n = c.conn_count.get(sess.address, 1) - 1
        if n > 0:
            c.conn_count[sess.address] = n
        else:
            c.conn_count.pop(sess.address, None)

    cdef void set_hosts(self, list hosts):
        cdef H2UpstreamSession sess
        keep = set(hosts)
        for address in list(self.sessions):
            if address not in keep:
                for sess in list(self.sessions[address]):
                    sess.drain()

    cdef void close(self):
        cdef H2UpstreamSession sess
        for lst in list(self.sessions.values()):
            for sess in list(lst):
                sess.close()
        self.sessions = {}
