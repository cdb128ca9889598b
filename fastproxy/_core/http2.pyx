"""HTTP/2 codec: a sans-IO session over nghttp2 for both sides of the proxy.

One job: turn received bytes into stream events and submitted heads/bodies into bytes to write,
with HTTP/2's flow control left to the owner (backpressure) and Envoy's flood protections.
No sockets, no timers: the connection layer owns both.

Theory of operation
-------------------
* nghttp2 does the framing, HPACK, stream states and RFC 9113 message checks.  Its session is
  created with automatic WINDOW_UPDATE off: a received DATA payload keeps counting against the
  stream and connection windows until the owner calls consume() for it, so a peer can never have
  more unforwarded body bytes in flight than the windows allow.  That is the whole inbound
  backpressure mechanism: stop consuming and the peer stops sending.
* Events reach the owner through the cdef methods of an H2Handler (no Python call per event on
  the C path beyond the header list).  Header blocks are gathered per stream into a Python list
  of (bytes, bytes) pairs, handed over when the block is complete.  DATA payloads are handed over
  as pointers into the caller's input buffer, valid during the call only.
* Outbound bodies: send_data() appends the caller's bytes object to a small per-stream ring.  An
  nghttp2 data provider reads from the ring with NGHTTP2_DATA_FLAG_NO_COPY: nghttp2 decides the
  DATA frame length (windows, max frame size) and then asks us, through the send-data callback,
  to emit the 9-byte frame header and the payload.  The payload goes to the output list as the
  queued object itself or a memoryview slice of it, never copied.  An empty ring defers the
  provider; send_data() resumes it.
* Output: frames nghttp2 serializes itself (HEADERS, SETTINGS, WINDOW_UPDATE, ...) are appended
  to a C accumulator, which is cut into a bytes object whenever a DATA payload is to follow and
  at the end of produce().  take_output() hands the pieces over for transport.writelines().
* Flood protections follow Envoy's ProtocolConstraints: outbound frames (and PING/SETTINGS ACKs
  and RST_STREAMs among them) are counted from production until the owner reports the transport
  flushed; inbound frames with an empty payload and no END_STREAM, PRIORITY frames per opened
  stream, and WINDOW_UPDATE frames against the DATA frames we sent are counted as they arrive.
  A violation is sticky: feed()/produce() return H2_ERR_FLOOD and `flood` names the stat.

The Python-visible parts at the end (RecordingHandler, is_h2_preface, receive_data,
update_settings, the properties, bench_exchange) exist for tests, tools and benchmarks.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_SIZE
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset
from fastproxy._core.includes.nghttp2 cimport *

# ---------------------------------------------------------------------------------------------
# Stream flags (H2Stream.flags)

cdef enum:
    H2S_PROVIDER = 0x01     # a data provider is attached (our side of the stream is open)
    H2S_DEFERRED = 0x02     # the provider returned NGHTTP2_ERR_DEFERRED: resume on new data
    H2S_EOS = 0x04          # the owner ended our side: EOF once the ring is empty
    H2S_GOT_HEAD = 0x08     # the final (non-1xx) head was received
    H2S_ANNOUNCED = 0x10    # the owner knows the stream: it gets a close/reset event
    H2S_RST_RECV = 0x20
    H2S_RST_SENT = 0x40
    H2S_OVERFLOW = 0x80     # the header block being received is over the limits

cdef enum:
    MAX_STACK_NV = 32
    ACC_INITIAL = 4096

cdef const char *PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
cdef const char *E_PROTOCOL = b"http2.protocol_error"
cdef const char *E_FLOOD_OUT = b"http2.outbound_frames_flood"
cdef const char *E_FLOOD_CONTROL = b"http2.outbound_control_frames_flood"
cdef const char *E_FLOOD_EMPTY = b"http2.inbound_empty_frames_flood"
cdef const char *E_FLOOD_PRIORITY = b"http2.inbound_priority_frames_flood"
cdef const char *E_FLOOD_WINDOW = b"http2.inbound_window_update_frames_flood"
cdef const char *E_CALLBACK = b"http2.callback_error"
cdef const char *E_INTERNAL = b"http2.internal_error"

_FLOOD_NAMES = {
    H2_FLOOD_NONE: None,
    H2_FLOOD_OUTBOUND: "outbound_flood",
    H2_FLOOD_OUTBOUND_CONTROL: "outbound_control_flood",
    H2_FLOOD_INBOUND_EMPTY: "inbound_empty_frames_flood",
    H2_FLOOD_INBOUND_PRIORITY: "inbound_priority_frames_flood",
    H2_FLOOD_INBOUND_WINDOW_UPDATE: "inbound_window_update_frames_flood",
}


cdef int h2_preface_state(const char *data, size_t length) noexcept nogil:
    cdef size_t n = length if length < 24 else 24
    if memcmp(data, PREFACE, n) != 0:
        return H2_PREFACE_NO
    return H2_PREFACE_YES if length >= 24 else H2_PREFACE_PARTIAL


cdef void h2_options_init(H2Options *o) noexcept nogil:
    memset(o, 0, sizeof(H2Options))
    o.max_concurrent_streams = 2147483647
    o.initial_stream_window_size = 268435456
    o.initial_connection_window_size = 268435456
    o.max_frame_size = 16384
    o.max_header_list_size = 60 * 1024
    o.max_headers_count = 100
    o.peer_max_concurrent_streams = 100
    o.max_outbound_frames = 10000
    o.max_outbound_control_frames = 1000
    o.max_consecutive_inbound_frames_with_empty_payload = 1
    o.max_inbound_priority_frames_per_stream = 100
    o.max_inbound_window_update_frames_per_data_frame_sent = 10
    o.allow_connect = False


# ---------------------------------------------------------------------------------------------
# The owner's interface: defaults ignore every event.

cdef class H2Handler:
    cdef int on_headers(self, int32_t stream_id, list headers, bint end_stream) noexcept:
        return 0

    cdef int on_data(self, int32_t stream_id, const char *data, size_t length) noexcept:
        return 0

    cdef int on_trailers(self, int32_t stream_id, list headers) noexcept:
        return 0

    cdef int on_stream_end(self, int32_t stream_id) noexcept:
        return 0

    cdef void on_stream_close(self, int32_t stream_id) noexcept:
        pass

    cdef void on_stream_reset(self, int32_t stream_id, uint32_t error_code, bint remote) noexcept:
        pass

    cdef void on_data_sent(self, int32_t stream_id, size_t queued) noexcept:
        pass

    cdef void on_settings(self) noexcept:
        pass

    cdef void on_ping_ack(self, uint64_t opaque) noexcept:
        pass

    cdef void on_goaway(self, int32_t last_stream_id, uint32_t error_code) noexcept:
        pass


# ---------------------------------------------------------------------------------------------
# Streams

cdef H2Stream *_stream_new(H2Session s) noexcept:
    cdef H2Stream *st = <H2Stream *>malloc(sizeof(H2Stream))
    if st == NULL:
        return NULL
    memset(st, 0, sizeof(H2Stream))
    st.chunks = st.inline_chunks
    st.chunk_cap = 4
    st.next = s.streams
    if s.streams != NULL:
        s.streams.prev = st
    s.streams = st
    s.stats.streams_active += 1
    return st


cdef void _stream_free(H2Session s, H2Stream *st) noexcept:
    cdef size_t i
    if st.prev != NULL:
        st.prev.next = st.next
    else:
        s.streams = st.next
    if st.next != NULL:
        st.next.prev = st.prev
    for i in range(st.chunk_count):
        Py_DECREF(<object>st.chunks[(st.chunk_head + i) % st.chunk_cap])
    if st.chunks != st.inline_chunks:
        free(st.chunks)
    Py_XDECREF(st.headers)
    Py_XDECREF(st.trailers)
    s.stats.streams_active -= 1
    free(st)


cdef int _stream_push(H2Stream *st, bytes data) noexcept:
    cdef PyObject **grown
    cdef size_t i
    if st.chunk_count == st.chunk_cap:
        grown = <PyObject **>malloc(2 * st.chunk_cap * sizeof(PyObject *))
        if grown == NULL:
            return -1
        for i in range(st.chunk_count):
            grown[i] = st.chunks[(st.chunk_head + i) % st.chunk_cap]
        if st.chunks != st.inline_chunks:
            free(st.chunks)
        st.chunks = grown
        st.chunk_head = 0
        st.chunk_cap *= 2
    Py_INCREF(data)
    st.chunks[(st.chunk_head + st.chunk_count) % st.chunk_cap] = <PyObject *>data
    st.chunk_count += 1
    st.queued += PyBytes_GET_SIZE(data)
    return 0


cdef inline H2Stream *_get_stream(nghttp2_session *session, int32_t stream_id) noexcept:
    return <H2Stream *>nghttp2_session_get_stream_user_data(session, stream_id)


cdef H2Stream *_lookup(H2Session s, int32_t stream_id) noexcept:
    """The owner's view: also finds a client stream whose HEADERS nghttp2 has not sent yet
    (nghttp2 creates its stream only then), by walking the live list."""
    cdef H2Stream *st = <H2Stream *>nghttp2_session_get_stream_user_data(s.session, stream_id)
    if st != NULL or stream_id <= 0:
        return st
    st = s.streams
    while st != NULL and st.id != stream_id:
        st = st.next
    return st


# ---------------------------------------------------------------------------------------------
# Header lists -> nghttp2_nv arrays (nghttp2 copies names and values when it takes them).

cdef Py_ssize_t _fill_nv(list headers, nghttp2_nv *nva) except -1:
    cdef Py_ssize_t i, n = PyList_GET_SIZE(headers)
    cdef tuple pair
    cdef bytes name, value
    for i in range(n):
        pair = <tuple?>headers[i]
        name = <bytes?>pair[0]
        value = <bytes?>pair[1]
        nva[i].name = <uint8_t *>PyBytes_AS_STRING(name)
        nva[i].namelen = PyBytes_GET_SIZE(name)
        nva[i].value = <uint8_t *>PyBytes_AS_STRING(value)
        nva[i].valuelen = PyBytes_GET_SIZE(value)
        nva[i].flags = NGHTTP2_NV_FLAG_NONE
    return n


# ---------------------------------------------------------------------------------------------
# nghttp2 callbacks.  All run inside feed() or produce(), with the GIL held; none raises.

cdef int _flood(H2Session s, int kind) noexcept:
    if s.flood == H2_FLOOD_NONE:
        s.flood = kind
        if kind == H2_FLOOD_OUTBOUND:
            s.stats.outbound_flood += 1
            s.error = E_FLOOD_OUT
        elif kind == H2_FLOOD_OUTBOUND_CONTROL:
            s.stats.outbound_control_flood += 1
            s.error = E_FLOOD_CONTROL
        elif kind == H2_FLOOD_INBOUND_EMPTY:
            s.stats.inbound_empty_frames_flood += 1
            s.error = E_FLOOD_EMPTY
        elif kind == H2_FLOOD_INBOUND_PRIORITY:
            s.stats.inbound_priority_frames_flood += 1
            s.error = E_FLOOD_PRIORITY
        else:
            s.stats.inbound_window_update_frames_flood += 1
            s.error = E_FLOOD_WINDOW
    return NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _track_inbound(H2Session s, size_t length, uint8_t type, uint8_t flags,
                        size_t padding) noexcept:
    """Envoy's inbound frame accounting; returns 0 or NGHTTP2_ERR_CALLBACK_FAILURE."""
    if type == NGHTTP2_HEADERS or type == NGHTTP2_CONTINUATION or type == NGHTTP2_DATA:
        if type != NGHTTP2_DATA and (flags & NGHTTP2_FLAG_END_HEADERS):
            s.inbound_streams += 1
        if length <= padding and not (flags & NGHTTP2_FLAG_END_STREAM):
            s.consecutive_empty_frames += 1
            if (s.consecutive_empty_frames >
                    s.opts.max_consecutive_inbound_frames_with_empty_payload):
                return _flood(s, H2_FLOOD_INBOUND_EMPTY)
        else:
            s.consecutive_empty_frames = 0
    elif type == NGHTTP2_PRIORITY:
        s.inbound_priority_frames += 1
        if (s.inbound_priority_frames >
                <uint64_t>s.opts.max_inbound_priority_frames_per_stream * (1 + s.inbound_streams)):
            return _flood(s, H2_FLOOD_INBOUND_PRIORITY)
    elif type == NGHTTP2_WINDOW_UPDATE:
        s.inbound_window_update_frames += 1
        if s.inbound_window_update_frames > 1 + 2 * (
                s.inbound_streams + <uint64_t>s.opts.max_inbound_window_update_frames_per_data_frame_sent
                * s.outbound_data_frames):
            return _flood(s, H2_FLOOD_INBOUND_WINDOW_UPDATE)
    return 0


cdef int _on_begin_frame(nghttp2_session *session, const nghttp2_frame_hd *hd,
                         void *user_data) noexcept:
    cdef H2Session s = <H2Session>user_data
    if s.flood:
        return NGHTTP2_ERR_CALLBACK_FAILURE
    # HEADERS are counted once their padding is known (begin headers), DATA on receipt.
    if hd.type == NGHTTP2_HEADERS or hd.type == NGHTTP2_DATA:
        return 0
    return _track_inbound(s, hd.length, hd.type, hd.flags, 0)


cdef int _on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame,
                           void *user_data) noexcept:
    cdef H2Session s = <H2Session>user_data
    cdef H2Stream *st
    cdef list block
    cdef int rv = _track_inbound(s, frame.hd.length, frame.hd.type, frame.hd.flags,
                                 frame.headers.padlen)
    if rv != 0:
        return rv
    st = _get_stream(session, frame.hd.stream_id)
    if st == NULL:
        if frame.headers.cat != NGHTTP2_HCAT_REQUEST:
            return 0    # push responses and the like: ignored (push is disabled anyway)
        st = _stream_new(s)
        if st == NULL:
            return NGHTTP2_ERR_CALLBACK_FAILURE
        st.id = frame.hd.stream_id
        nghttp2_session_set_stream_user_data(session, st.id, st)
    Py_XDECREF(st.headers)
    block = []
    Py_INCREF(block)
    st.headers = <PyObject *>block
    st.header_bytes = 0
    st.header_count = 0
    st.flags &= ~H2S_OVERFLOW
    return 0


cdef int _on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                    size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                    void *user_data) noexcept:
    cdef H2Session s = <H2Session>user_data
    cdef H2Stream *st = _get_stream(session, frame.hd.stream_id)
    if st == NULL or st.headers == NULL:
        return 0
    st.header_bytes += namelen + valuelen
    st.header_count += 1
    if st.header_bytes > s.opts.max_header_list_size or st.header_count > s.opts.max_headers_count:
        if not (st.flags & H2S_OVERFLOW):
            st.flags |= H2S_OVERFLOW
            s.stats.header_overflow += 1
        # nghttp2 resets the stream (INTERNAL_ERROR), as Envoy's codec does.
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    try:
        (<list>st.headers).append((PyBytes_FromStringAndSize(<const char *>name, namelen),
                                   PyBytes_FromStringAndSize(<const char *>value, valuelen)))
    except BaseException:
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                        const uint8_t *data, size_t length, void *user_data) noexcept:
    cdef H2Session s = <H2Session>user_data
    cdef H2Stream *st = _get_stream(session, stream_id)
    if st == NULL or not (st.flags & H2S_ANNOUNCED):
        nghttp2_session_consume(session, stream_id, length)
        return 0
    if s.handler.on_data(stream_id, <const char *>data, length) < 0:
        s.cb_failed = 1
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef uint64_t _be64(const uint8_t *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return v


cdef int _on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame,
                        void *user_data) noexcept:
    cdef H2Session s = <H2Session>user_data
    cdef H2Stream *st
    cdef uint8_t t = frame.hd.type
    cdef int32_t sid = frame.hd.stream_id
    cdef bint end_stream = (frame.hd.flags & NGHTTP2_FLAG_END_STREAM) != 0
    cdef list headers
    cdef int rv = 0
    cdef bytes status
    if t == NGHTTP2_DATA:
        rv = _track_inbound(s, frame.hd.length, t, frame.hd.flags, frame.data.padlen)
        if rv != 0:
            return rv
        if end_stream:
            st = _get_stream(session, sid)
            if st != NULL and (st.flags & H2S_ANNOUNCED):
                rv = s.handler.on_stream_end(sid)
    elif t == NGHTTP2_HEADERS:
        st = _get_stream(session, sid)
        if st == NULL or st.headers == NULL:
            return 0
        headers = <list>st.headers
        Py_DECREF(headers)      # the local reference keeps it alive
        st.headers = NULL
        if not (st.flags & H2S_GOT_HEAD):
            if s.is_server:
                st.flags |= H2S_GOT_HEAD
            else:
                # nghttp2 checked the response head: it opens with :status.
                status = <bytes>(<tuple>headers[0])[1] if headers else b""
                if not status.startswith(b"1"):
                    st.flags |= H2S_GOT_HEAD
            st.flags |= H2S_ANNOUNCED
            rv = s.handler.on_headers(sid, headers, end_stream)
        else:
            s.stats.trailers += 1
            rv = s.handler.on_trailers(sid, headers)
        if rv >= 0 and end_stream:
            rv = s.handler.on_stream_end(sid)
    elif t == NGHTTP2_RST_STREAM:
        s.stats.rx_reset += 1
        st = _get_stream(session, sid)
        if st != NULL:
            st.flags |= H2S_RST_RECV
    elif t == NGHTTP2_SETTINGS:
        if not (frame.hd.flags & NGHTTP2_FLAG_ACK):
            s.handler.on_settings()
    elif t == NGHTTP2_PING:
        if frame.hd.flags & NGHTTP2_FLAG_ACK:
            s.handler.on_ping_ack(_be64(frame.ping.opaque_data))
    elif t == NGHTTP2_GOAWAY:
        s.goaway_received = True
        s.handler.on_goaway(frame.goaway.last_stream_id, frame.goaway.error_code)
    if rv < 0:
        s.cb_failed = 1
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                          void *user_data) noexcept:
    cdef H2Session s = <H2Session>user_data
    cdef H2Stream *st = _get_stream(session, stream_id)
    cdef uint32_t flags
    if st == NULL:
        return 0
    flags = st.flags
    nghttp2_session_set_stream_user_data(session, stream_id, NULL)
    _stream_free(s, st)
    if flags & H2S_ANNOUNCED:
        if flags & H2S_RST_RECV:
            s.handler.on_stream_reset(stream_id, error_code, True)
        elif flags & H2S_RST_SENT:
            s.handler.on_stream_reset(stream_id, error_code, False)
        elif error_code != NGHTTP2_NO_ERROR:
            s.handler.on_stream_reset(
                stream_id, error_code,
                error_code == NGHTTP2_REFUSED_STREAM and s.goaway_received)
        else:
            s.handler.on_stream_close(stream_id)
    return 0


cdef int _on_frame_send(nghttp2_session *session, const nghttp2_frame *frame,
                        void *user_data) noexcept:
    cdef H2Session s = <H2Session>user_data
    cdef uint8_t t = frame.hd.type
    cdef H2Stream *st
    s.outbound_frames += 1
    if (((t == NGHTTP2_PING or t == NGHTTP2_SETTINGS) and (frame.hd.flags & NGHTTP2_FLAG_ACK))
            or t == NGHTTP2_RST_STREAM):
        s.outbound_control_frames += 1
    if t == NGHTTP2_DATA:
        s.outbound_data_frames += 1
    elif t == NGHTTP2_RST_STREAM:
        s.stats.tx_reset += 1
        st = _get_stream(session, frame.hd.stream_id)
        if st != NULL:
            st.flags |= H2S_RST_SENT
    elif t == NGHTTP2_GOAWAY:
        s.stats.goaway_sent += 1
        if frame.goaway.error_code != NGHTTP2_NO_ERROR and not s.goaway_submitted:
            s.terminated = True
    if s.outbound_frames > s.opts.max_outbound_frames:
        _flood(s, H2_FLOOD_OUTBOUND)
    elif s.outbound_control_frames > s.opts.max_outbound_control_frames:
        _flood(s, H2_FLOOD_OUTBOUND_CONTROL)
    return 0


cdef int _on_error(nghttp2_session *session, int lib_error_code, const char *msg, size_t length,
                   void *user_data) noexcept:
    cdef H2Session s = <H2Session>user_data
    cdef size_t n = length if length < sizeof(s.errmsg) - 1 else sizeof(s.errmsg) - 1
    memcpy(s.errmsg, msg, n)
    s.errmsg[n] = 0
    return 0


cdef ssize_t _read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                        uint32_t *data_flags, nghttp2_data_source *source,
                        void *user_data) noexcept:
    """Data provider: size the next DATA frame from the ring; the bytes go out in _send_body."""
    cdef H2Session s = <H2Session>user_data
    cdef H2Stream *st = <H2Stream *>source.ptr
    cdef size_t n = st.queued if st.queued < length else length
    cdef nghttp2_nv stack_nv[MAX_STACK_NV]
    cdef nghttp2_nv *nva
    cdef Py_ssize_t nvlen
    if n == 0 and not (st.flags & H2S_EOS):
        st.flags |= H2S_DEFERRED
        return NGHTTP2_ERR_DEFERRED
    data_flags[0] |= NGHTTP2_DATA_FLAG_NO_COPY
    if n == st.queued and (st.flags & H2S_EOS):
        data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
        st.flags &= ~H2S_PROVIDER
        if st.trailers != NULL:
            data_flags[0] |= NGHTTP2_DATA_FLAG_NO_END_STREAM
            nvlen = PyList_GET_SIZE(<list>st.trailers)
            nva = stack_nv
            if nvlen > MAX_STACK_NV:
                nva = <nghttp2_nv *>malloc(nvlen * sizeof(nghttp2_nv))
            if nva == NULL:
                return NGHTTP2_ERR_CALLBACK_FAILURE
            try:
                _fill_nv(<list>st.trailers, nva)
            except BaseException:
                nvlen = -1
            if nvlen >= 0:
                nghttp2_submit_trailer(session, stream_id, nva, nvlen)
            if nva != stack_nv:
                free(nva)
            Py_DECREF(<object>st.trailers)
            st.trailers = NULL
            if nvlen < 0:
                return NGHTTP2_ERR_CALLBACK_FAILURE
    return n


cdef int _acc_append(H2Session s, const void *data, size_t n) noexcept:
    cdef size_t cap
    cdef char *grown
    if s.acc_len + n > s.acc_cap:
        cap = s.acc_cap * 2 if s.acc_cap else ACC_INITIAL
        while cap < s.acc_len + n:
            cap *= 2
        grown = <char *>realloc(s.acc, cap)
        if grown == NULL:
            return -1
        s.acc = grown
        s.acc_cap = cap
    memcpy(s.acc + s.acc_len, data, n)
    s.acc_len += n
    return 0


cdef int _acc_flush(H2Session s) noexcept:
    if s.acc_len == 0:
        return 0
    try:
        s.out.append(PyBytes_FromStringAndSize(s.acc, s.acc_len))
    except BaseException:
        return -1
    s.acc_len = 0
    return 0


cdef int _send_body(nghttp2_session *session, nghttp2_frame *frame, const uint8_t *framehd,
                    size_t length, nghttp2_data_source *source, void *user_data) noexcept:
    """Emit one DATA frame: the 9-byte header, then `length` bytes taken from the ring."""
    cdef H2Session s = <H2Session>user_data
    cdef H2Stream *st = <H2Stream *>source.ptr
    cdef PyObject *chunk
    cdef size_t size, take
    cdef size_t left = length
    if _acc_append(s, framehd, 9) < 0 or _acc_flush(s) < 0:
        return NGHTTP2_ERR_CALLBACK_FAILURE
    try:
        while left:
            chunk = st.chunks[st.chunk_head]
            size = PyBytes_GET_SIZE(<bytes>chunk)
            take = size - st.chunk_off
            if take > left:
                take = left
            if st.chunk_off == 0 and take == size:
                s.out.append(<bytes>chunk)
            else:
                s.out.append(memoryview(<bytes>chunk)[st.chunk_off:st.chunk_off + take])
            left -= take
            st.chunk_off += take
            st.queued -= take
            if st.chunk_off == size:
                st.chunk_off = 0
                st.chunk_head = (st.chunk_head + 1) % st.chunk_cap
                st.chunk_count -= 1
                Py_DECREF(<object>chunk)
    except BaseException:
        return NGHTTP2_ERR_CALLBACK_FAILURE
    if length:
        s.handler.on_data_sent(frame.hd.stream_id, st.queued)
    return 0


cdef nghttp2_session_callbacks *_CALLBACKS = NULL


cdef int _init_callbacks() except -1:
    global _CALLBACKS
    if nghttp2_session_callbacks_new(&_CALLBACKS) != 0:
        raise MemoryError()
    nghttp2_session_callbacks_set_on_begin_frame_callback(_CALLBACKS, _on_begin_frame)
    nghttp2_session_callbacks_set_on_begin_headers_callback(_CALLBACKS, _on_begin_headers)
    nghttp2_session_callbacks_set_on_header_callback(_CALLBACKS, _on_header)
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(_CALLBACKS, _on_data_chunk)
    nghttp2_session_callbacks_set_on_frame_recv_callback(_CALLBACKS, _on_frame_recv)
    nghttp2_session_callbacks_set_on_stream_close_callback(_CALLBACKS, _on_stream_close)
    nghttp2_session_callbacks_set_on_frame_send_callback(_CALLBACKS, _on_frame_send)
    nghttp2_session_callbacks_set_send_data_callback(_CALLBACKS, _send_body)
    nghttp2_session_callbacks_set_error_callback2(_CALLBACKS, _on_error)
    return 0


_init_callbacks()


# ---------------------------------------------------------------------------------------------
# The session

cdef class H2Session:
    """An HTTP/2 connection's protocol state, server or client side, without I/O.

    H2Session(server, handler, **options): options are H2Options field names (Envoy's
    http2_protocol_options names).  The cdef API (http2.pxd) is what the connection layer uses;
    the def/cpdef methods serve tests and tools.
    """

    def __cinit__(self):
        self.session = NULL
        self.streams = NULL
        self.acc = NULL
        self.out = []
        self.error = NULL
        self.errmsg[0] = 0

    def __init__(self, bint server, H2Handler handler=None, **options):
        cdef H2Options o
        h2_options_init(&o)
        for key, value in options.items():
            if key == "max_concurrent_streams":
                o.max_concurrent_streams = value
            elif key == "initial_stream_window_size":
                o.initial_stream_window_size = value
            elif key == "initial_connection_window_size":
                o.initial_connection_window_size = value
            elif key == "max_frame_size":
                o.max_frame_size = value
            elif key == "max_header_list_size":
                o.max_header_list_size = value
            elif key == "max_headers_count":
                o.max_headers_count = value
            elif key == "peer_max_concurrent_streams":
                o.peer_max_concurrent_streams = value
            elif key == "max_outbound_frames":
                o.max_outbound_frames = value
            elif key == "max_outbound_control_frames":
                o.max_outbound_control_frames = value
            elif key == "max_consecutive_inbound_frames_with_empty_payload":
                o.max_consecutive_inbound_frames_with_empty_payload = value
            elif key == "max_inbound_priority_frames_per_stream":
                o.max_inbound_priority_frames_per_stream = value
            elif key == "max_inbound_window_update_frames_per_data_frame_sent":
                o.max_inbound_window_update_frames_per_data_frame_sent = value
            elif key == "allow_connect":
                o.allow_connect = value
            else:
                raise TypeError(f"unknown HTTP/2 option {key!r}")
        self.setup(server, handler if handler is not None else H2Handler(), &o)

    cdef int setup(self, bint server, H2Handler handler, const H2Options *opts) except -1:
        cdef nghttp2_option *option
        cdef nghttp2_settings_entry iv[6]
        cdef size_t niv = 0
        cdef int rv
        if self.session != NULL:
            raise RuntimeError("H2Session already set up")
        self.is_server = server
        self.handler = handler
        self.opts = opts[0]
        if nghttp2_option_new(&option) != 0:
            raise MemoryError()
        nghttp2_option_set_no_auto_window_update(option, 1)
        # Closed streams are not kept for the priority tree (nghttp2 keeps up to the local
        # SETTINGS_MAX_CONCURRENT_STREAMS of them, which is 2^31-1 by Envoy's default)
        nghttp2_option_set_no_closed_streams(option, 1)
        nghttp2_option_set_peer_max_concurrent_streams(option, opts.peer_max_concurrent_streams)
        # nghttp2's own limit on queued, not yet serialized ACKs (PING/SETTINGS): past it
        # mem_recv fails with NGHTTP2_ERR_FLOODED, which we report as an outbound control flood.
        nghttp2_option_set_max_outbound_ack(option, opts.max_outbound_control_frames)
        if server:
            rv = nghttp2_session_server_new2(&self.session, _CALLBACKS, <void *>self, option)
        else:
            rv = nghttp2_session_client_new2(&self.session, _CALLBACKS, <void *>self, option)
        nghttp2_option_del(option)
        if rv != 0:
            self.session = NULL
            raise MemoryError(nghttp2_strerror(rv).decode())
        iv[niv].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        iv[niv].value = opts.max_concurrent_streams
        niv += 1
        iv[niv].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        iv[niv].value = opts.initial_stream_window_size
        niv += 1
        if opts.max_frame_size != 16384:
            iv[niv].settings_id = NGHTTP2_SETTINGS_MAX_FRAME_SIZE
            iv[niv].value = opts.max_frame_size
            niv += 1
        if not server:
            iv[niv].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
            iv[niv].value = 0
            niv += 1
        elif opts.allow_connect:
            iv[niv].settings_id = NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL
            iv[niv].value = 1
            niv += 1
        rv = nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, iv, niv)
        if rv != 0:
            raise ValueError(nghttp2_strerror(rv).decode())
        if opts.initial_connection_window_size > 65535:
            rv = nghttp2_session_set_local_window_size(
                self.session, NGHTTP2_FLAG_NONE, 0, <int32_t>opts.initial_connection_window_size)
            if rv != 0:
                raise ValueError(nghttp2_strerror(rv).decode())
        return 0

    def __dealloc__(self):
        cdef H2Stream *st
        if self.session != NULL:
            nghttp2_session_del(self.session)
            self.session = NULL
        while self.streams != NULL:
            st = self.streams
            _stream_free(self, st)
        free(self.acc)
        self.acc = NULL

    # -- input ------------------------------------------------------------------------------

    cdef int feed(self, const char *data, size_t length) noexcept:
        cdef ssize_t rv
        if self.flood:
            return H2_ERR_FLOOD
        if self.terminated:
            return H2_ERR_PROTOCOL
        if self.handler is None:
            return H2_ERR_INTERNAL  # the owner let go of the session (its connection is gone)
        rv = nghttp2_session_mem_recv(self.session, <const uint8_t *>data, length)
        if rv < 0:
            if self.flood:
                return H2_ERR_FLOOD
            if rv == NGHTTP2_ERR_FLOODED:
                _flood(self, H2_FLOOD_OUTBOUND_CONTROL)
                return H2_ERR_FLOOD
            if self.cb_failed:
                self.error = E_CALLBACK
                return H2_ERR_CALLBACK
            if rv == NGHTTP2_ERR_NOMEM or rv == NGHTTP2_ERR_CALLBACK_FAILURE:
                self.error = E_INTERNAL
                return H2_ERR_INTERNAL
            self.error = E_PROTOCOL     # e.g. NGHTTP2_ERR_BAD_CLIENT_MAGIC
            return H2_ERR_PROTOCOL
        # On a connection error nghttp2 does not fail: it queues GOAWAY and ignores the rest of
        # the input.  Serializing now both answers the peer promptly and reveals that GOAWAY.
        rv = self.produce()
        if rv < 0:
            return <int>rv
        if self.terminated:
            self.error = E_PROTOCOL
            return H2_ERR_PROTOCOL
        return H2_OK

    # -- output -----------------------------------------------------------------------------

    cpdef int produce(self) noexcept:
        cdef const uint8_t *p
        cdef ssize_t n
        if self.handler is None:
            return H2_ERR_INTERNAL  # the owner let go of the session (its connection is gone)
        while True:
            n = nghttp2_session_mem_send(self.session, &p)
            if n < 0:
                _acc_flush(self)
                if self.flood:
                    return H2_ERR_FLOOD
                self.error = E_INTERNAL
                return H2_ERR_INTERNAL
            if n == 0:
                break
            if _acc_append(self, p, n) < 0:
                self.error = E_INTERNAL
                return H2_ERR_INTERNAL
        if _acc_flush(self) < 0:
            self.error = E_INTERNAL
            return H2_ERR_INTERNAL
        if self.flood:
            return H2_ERR_FLOOD
        return H2_OK

    cpdef list take_output(self):
        cdef list out = self.out
        self.out = []
        return out

    cpdef bytes data_to_send(self):
        self.produce()
        return b"".join(self.take_output())

    cpdef void output_flushed(self) noexcept:
        self.outbound_frames = 0
        self.outbound_control_frames = 0

    # -- submitting ----------------------------------------------------------------------------

    cpdef int submit_request(self, list headers, bint end_stream) except? -1:
        cdef nghttp2_nv stack_nv[MAX_STACK_NV]
        cdef nghttp2_nv *nva = stack_nv
        cdef Py_ssize_t n = PyList_GET_SIZE(headers)
        if self.is_server:
            return NGHTTP2_ERR_INVALID_STATE
        if n > MAX_STACK_NV:
            nva = <nghttp2_nv *>malloc(n * sizeof(nghttp2_nv))
            if nva == NULL:
                raise MemoryError()
        try:
            _fill_nv(headers, nva)
            return self.submit_request_nv(nva, n, end_stream)
        finally:
            if nva != stack_nv:
                free(nva)

    cdef int submit_request_nv(self, const nghttp2_nv *nva, size_t n, bint end_stream) except? -1:
        cdef nghttp2_data_provider prd
        cdef H2Stream *st
        cdef int32_t sid
        if self.is_server:
            return NGHTTP2_ERR_INVALID_STATE
        st = _stream_new(self)
        if st == NULL:
            raise MemoryError()
        prd.source.ptr = st
        prd.read_callback = _read_body
        if not end_stream:
            st.flags |= H2S_PROVIDER
        st.flags |= H2S_ANNOUNCED | H2S_EOS * end_stream
        sid = nghttp2_submit_request(self.session, NULL, nva, n,
                                     NULL if end_stream else &prd, st)
        if sid < 0:
            _stream_free(self, st)
            return sid
        st.id = sid
        return sid

    cdef int _submit_head(self, int32_t stream_id, list headers, bint end_stream,
                          bint informational) except? -1:
        cdef nghttp2_nv stack_nv[MAX_STACK_NV]
        cdef nghttp2_nv *nva = stack_nv
        cdef Py_ssize_t n = PyList_GET_SIZE(headers)
        if n > MAX_STACK_NV:
            nva = <nghttp2_nv *>malloc(n * sizeof(nghttp2_nv))
            if nva == NULL:
                raise MemoryError()
        try:
            _fill_nv(headers, nva)
            return self.submit_head_nv(stream_id, nva, n, end_stream, informational)
        finally:
            if nva != stack_nv:
                free(nva)

    cdef int submit_head_nv(self, int32_t stream_id, const nghttp2_nv *nva, size_t n,
                            bint end_stream, bint informational) noexcept:
        cdef nghttp2_data_provider prd
        cdef H2Stream *st = _get_stream(self.session, stream_id)
        cdef int rv
        if not self.is_server:
            return NGHTTP2_ERR_INVALID_STATE
        if st == NULL:
            return NGHTTP2_ERR_STREAM_CLOSED
        if informational:
            rv = nghttp2_submit_headers(self.session, NGHTTP2_FLAG_NONE, stream_id, NULL,
                                        nva, n, NULL)
        else:
            prd.source.ptr = st
            prd.read_callback = _read_body
            rv = nghttp2_submit_response(self.session, stream_id, nva, n,
                                         NULL if end_stream else &prd)
            if rv == 0:
                if end_stream:
                    st.flags |= H2S_EOS
                else:
                    st.flags |= H2S_PROVIDER
        return rv if rv < 0 else 0

    cpdef int submit_response(self, int32_t stream_id, list headers, bint end_stream) except? -1:
        return self._submit_head(stream_id, headers, end_stream, False)

    cpdef int submit_informational(self, int32_t stream_id, list headers) except? -1:
        return self._submit_head(stream_id, headers, False, True)

    cpdef int submit_trailers(self, int32_t stream_id, list headers) except? -1:
        cdef H2Stream *st = _lookup(self, stream_id)
        if st == NULL:
            return NGHTTP2_ERR_STREAM_CLOSED
        if not (st.flags & H2S_PROVIDER) or (st.flags & H2S_EOS):
            return NGHTTP2_ERR_INVALID_STATE
        Py_INCREF(headers)
        st.trailers = <PyObject *>headers
        st.flags |= H2S_EOS
        return self._resume(st)

    cdef int _resume(self, H2Stream *st) noexcept:
        cdef int rv
        if st.flags & H2S_DEFERRED:
            st.flags &= ~H2S_DEFERRED
            rv = nghttp2_session_resume_data(self.session, st.id)
            if rv < 0 and rv != NGHTTP2_ERR_INVALID_ARGUMENT:
                return rv
        return 0

    cpdef int send_data(self, int32_t stream_id, bytes data, bint end_stream) except? -1:
        cdef H2Stream *st = _lookup(self, stream_id)
        if st == NULL:
            return NGHTTP2_ERR_STREAM_CLOSED
        if not (st.flags & H2S_PROVIDER) or (st.flags & H2S_EOS):
            return NGHTTP2_ERR_INVALID_STATE
        if data is not None and PyBytes_GET_SIZE(data) > 0:
            if _stream_push(st, data) < 0:
                raise MemoryError()
        if end_stream:
            st.flags |= H2S_EOS
        return self._resume(st)

    cpdef size_t queued_bytes(self, int32_t stream_id) noexcept:
        cdef H2Stream *st = _lookup(self, stream_id)
        return st.queued if st != NULL else 0

    cpdef int reset_stream(self, int32_t stream_id, uint32_t error_code) noexcept:
        return nghttp2_submit_rst_stream(self.session, NGHTTP2_FLAG_NONE, stream_id, error_code)

    cpdef int goaway(self, uint32_t error_code) noexcept:
        self.goaway_submitted = True
        return nghttp2_submit_goaway(self.session, NGHTTP2_FLAG_NONE,
                                     nghttp2_session_get_last_proc_stream_id(self.session),
                                     error_code, NULL, 0)

    cpdef int shutdown_notice(self) noexcept:
        if not self.is_server:
            return NGHTTP2_ERR_INVALID_STATE
        return nghttp2_submit_shutdown_notice(self.session)

    cpdef int ping(self, uint64_t opaque) noexcept:
        cdef uint8_t data[8]
        cdef int i
        for i in range(8):
            data[7 - i] = (opaque >> (8 * i)) & 0xff
        return nghttp2_submit_ping(self.session, NGHTTP2_FLAG_NONE, data)

    cpdef int consume(self, int32_t stream_id, size_t n) noexcept:
        if n == 0:
            return 0
        return nghttp2_session_consume(self.session, stream_id, n)

    cdef int submit_settings_entries(self, const uint32_t *ids, const uint32_t *values,
                                     size_t n) noexcept:
        cdef nghttp2_settings_entry iv[16]
        cdef size_t i
        if n > 16:
            return NGHTTP2_ERR_INVALID_ARGUMENT
        for i in range(n):
            iv[i].settings_id = <int32_t>ids[i]
            iv[i].value = values[i]
        return nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, iv, n)

    cpdef bint want_read(self) noexcept:
        return nghttp2_session_want_read(self.session) != 0

    cpdef bint want_write(self) noexcept:
        return nghttp2_session_want_write(self.session) != 0 or len(self.out) > 0

    cpdef uint32_t remote_setting(self, int32_t settings_id) noexcept:
        return nghttp2_session_get_remote_settings(self.session, settings_id)

    cpdef bint can_submit_request(self) noexcept:
        return nghttp2_session_check_request_allowed(self.session) != 0

    # -- Python-visible helpers (tests, tools) ------------------------------------------------

    def receive_data(self, data):
        """Feed bytes; returns H2_OK (0) or a negative H2_ERR_* code."""
        cdef const unsigned char[:] view = data
        if view.shape[0] == 0:
            return self.feed(b"", 0)
        return self.feed(<const char *>&view[0], view.shape[0])

    def update_settings(self, dict settings):
        """Submit SETTINGS: {settings id (int): value}."""
        cdef uint32_t ids[16]
        cdef uint32_t values[16]
        cdef size_t n = 0
        if len(settings) > 16:
            raise ValueError("too many settings")
        for k, v in settings.items():
            ids[n] = k
            values[n] = v
            n += 1
        return self.submit_settings_entries(ids, values, n)

    def local_window(self, int32_t stream_id=0):
        """Our receive window: how much more the peer may send (connection for 0)."""
        if stream_id == 0:
            return nghttp2_session_get_local_window_size(self.session)
        return nghttp2_session_get_stream_local_window_size(self.session, stream_id)

    def remote_window(self, int32_t stream_id=0):
        """The peer's receive window: how much more we may send (connection for 0)."""
        if stream_id == 0:
            return nghttp2_session_get_remote_window_size(self.session)
        return nghttp2_session_get_stream_remote_window_size(self.session, stream_id)

    @property
    def error_detail(self):
        return None if self.error == NULL else self.error.decode()

    @property
    def error_message(self):
        return self.errmsg.decode("latin-1")

    @property
    def flood_name(self):
        return _FLOOD_NAMES[self.flood]

    @property
    def codec_stats(self):
        return dict(self.stats)

    @property
    def outbound_frame_counts(self):
        return (self.outbound_frames, self.outbound_control_frames, self.outbound_data_frames)

    @property
    def active_streams(self):
        return self.stats.streams_active


def is_h2_preface(data):
    """True: the HTTP/2 client preface; None: a prefix of it (read more); False: not HTTP/2."""
    cdef const unsigned char[:] view = data
    cdef int rv
    if view.shape[0] == 0:
        return None
    rv = h2_preface_state(<const char *>&view[0], view.shape[0])
    return True if rv == H2_PREFACE_YES else (None if rv == H2_PREFACE_PARTIAL else False)


# ---------------------------------------------------------------------------------------------
# A recording handler for tests: every event becomes a tuple in `events`.

cdef class RecordingHandler(H2Handler):
    """Records events as tuples; with auto_consume, acknowledges body bytes at once."""
    cdef public list events
    cdef public object session
    cdef public bint auto_consume

    def __init__(self, auto_consume=False):
        self.events = []
        self.session = None
        self.auto_consume = auto_consume

    cdef int on_headers(self, int32_t stream_id, list headers, bint end_stream) noexcept:
        self.events.append(("headers", stream_id, headers, end_stream))
        return 0

    cdef int on_data(self, int32_t stream_id, const char *data, size_t length) noexcept:
        self.events.append(("data", stream_id, data[:length]))
        if self.auto_consume and self.session is not None:
            (<H2Session>self.session).consume(stream_id, length)
        return 0

    cdef int on_trailers(self, int32_t stream_id, list headers) noexcept:
        self.events.append(("trailers", stream_id, headers))
        return 0

    cdef int on_stream_end(self, int32_t stream_id) noexcept:
        self.events.append(("end", stream_id))
        return 0

    cdef void on_stream_close(self, int32_t stream_id) noexcept:
        self.events.append(("close", stream_id))

    cdef void on_stream_reset(self, int32_t stream_id, uint32_t error_code, bint remote) noexcept:
        self.events.append(("reset", stream_id, error_code, remote))

    cdef void on_data_sent(self, int32_t stream_id, size_t queued) noexcept:
        pass

    cdef void on_settings(self) noexcept:
        self.events.append(("settings",))

    cdef void on_ping_ack(self, uint64_t opaque) noexcept:
        self.events.append(("ping_ack", opaque))

    cdef void on_goaway(self, int32_t last_stream_id, uint32_t error_code) noexcept:
        self.events.append(("goaway", last_stream_id, error_code))


# ---------------------------------------------------------------------------------------------
# Benchmark entry point: request/response exchanges through a client/server pair in memory.

@cython.final
cdef class _BenchServer(H2Handler):
    cdef H2Session session
    cdef list response
    cdef bytes body

    cdef int on_headers(self, int32_t stream_id, list headers, bint end_stream) noexcept:
        self.session.submit_response(stream_id, self.response, False)
        self.session.send_data(stream_id, self.body, True)
        return 0


@cython.final
cdef class _BenchClient(H2Handler):
    cdef H2Session session
    cdef size_t done
    cdef size_t body_bytes

    cdef int on_data(self, int32_t stream_id, const char *data, size_t length) noexcept:
        self.body_bytes += length
        self.session.consume(stream_id, length)
        return 0

    cdef void on_stream_close(self, int32_t stream_id) noexcept:
        self.done += 1


cdef int _pump(H2Session src, H2Session dst) noexcept:
    cdef list pieces
    cdef object piece
    cdef const unsigned char[:] view
    if src.produce() < 0:
        return -1
    pieces = src.take_output()
    src.output_flushed()
    for piece in pieces:
        view = piece
        if view.shape[0] and dst.feed(<const char *>&view[0], view.shape[0]) < 0:
            return -1
    return 0


def bench_exchange(int n, int streams_per_round=1, bytes body=b"hello world!"):
    """Seconds per request/response exchange (GET, 200 with a 12-byte body by default), the
    whole loop compiled: client submits, bytes cross to the server, the server answers, bytes
    cross back, the client sees the stream close."""
    import time
    cdef _BenchServer sh = _BenchServer()
    cdef _BenchClient ch = _BenchClient()
    cdef H2Session server = H2Session(True, sh)
    cdef H2Session client = H2Session(False, ch)
    cdef list request = [(b":method", b"GET"), (b":scheme", b"http"),
                         (b":authority", b"api.example.com"), (b":path", b"/api/v1/items/42"),
                         (b"user-agent", b"bench/1.0"), (b"accept", b"*/*")]
    cdef int i, j
    sh.session = server
    ch.session = client
    sh.response = [(b":status", b"200"), (b"content-type", b"text/plain"),
                   (b"content-length", str(len(body)).encode())]
    sh.body = body
    if _pump(client, server) < 0 or _pump(server, client) < 0 or _pump(client, server) < 0:
        raise RuntimeError("handshake failed")
    t0 = time.perf_counter()
    for i in range(0, n, streams_per_round):
        for j in range(streams_per_round):
            client.submit_request(request, True)
        if _pump(client, server) < 0 or _pump(server, client) < 0:
            raise RuntimeError("exchange failed")
    elapsed = time.perf_counter() - t0
    _pump(client, server)
    if ch.done < <size_t>n:
        raise RuntimeError(f"only {ch.done} of {n} exchanges completed")
    return elapsed / n


from random import random as _random


cdef H2Options h2_options_from_model(m):
    """H2Options from a config model Http2Options (None: Envoy's defaults)."""
    cdef H2Options o
    h2_options_init(&o)
    if m is not None:
        o.max_concurrent_streams = m.max_concurrent_streams
        o.initial_stream_window_size = m.initial_stream_window_size
        o.initial_connection_window_size = m.initial_connection_window_size
        o.max_outbound_frames = m.max_outbound_frames
        o.max_outbound_control_frames = m.max_outbound_control_frames
        o.max_consecutive_inbound_frames_with_empty_payload = \
            m.max_consecutive_inbound_frames_with_empty_payload
        o.max_inbound_priority_frames_per_stream = m.max_inbound_priority_frames_per_stream
        o.max_inbound_window_update_frames_per_data_frame_sent = \
            m.max_inbound_window_update_frames_per_data_frame_sent
        o.allow_connect = m.allow_connect
    return o


cdef class H2Keepalive:
    """connection_keepalive: a PING every `interval` (plus Envoy's default 15% jitter); the
    connection is closed when an acknowledgement takes longer than `timeout`."""

    def __init__(self, loop, double interval, double timeout, send_ping, expired):
        self.loop = loop
        self.interval = interval
        self.timeout = timeout
        self.send_ping = send_ping
        self.expired = expired
        self.timer = None
        self.ack_timer = None
        self.opaque = 0
        self._schedule()

    cdef void _schedule(self):
        self.timer = self.loop.call_later(self.interval * (1.0 + 0.15 * _random()),
                                          self._ping)

    def _ping(self):
        self.timer = None
        self.opaque += 1
        self.send_ping(self.opaque)
        self.ack_timer = self.loop.call_later(self.timeout, self._timed_out)

    def _timed_out(self):
        self.ack_timer = None
        self.stop()
        self.expired()

    cdef void acked(self, uint64_t opaque):
        if self.ack_timer is not None and opaque == self.opaque:
            self.ack_timer.cancel()
            self.ack_timer = None
            self._schedule()

    cdef void stop(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.ack_timer is not None:
            self.ack_timer.cancel()
            self.ack_timer = None
