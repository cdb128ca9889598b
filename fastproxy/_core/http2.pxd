# HTTP/2 codec: a sans-IO session over nghttp2, for both sides of the proxy (server mode for
# downstream connections, client mode for upstream ones).  Bytes go in through feed(), events
# come out through the cdef methods of an H2Handler, bytes to write come out of produce() +
# take_output().  Nothing here touches a socket.  See docs/http2.md for the theory of operation.

cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, uint32_t, uint64_t
from fastproxy._core.includes.nghttp2 cimport nghttp2_session, nghttp2_nv

# Results of H2Session.feed() / produce() (0 is success).
cdef enum:
    H2_OK = 0
    H2_ERR_PROTOCOL = -1   # connection error: nghttp2 queued GOAWAY; produce(), write, close
    H2_ERR_FLOOD = -2      # a flood protection tripped (H2Session.flood says which): close
    H2_ERR_CALLBACK = -3   # an H2Handler method returned < 0: close
    H2_ERR_INTERNAL = -4   # out of memory or a fatal nghttp2 error: close without writing

# H2Session.flood: which protection tripped (Envoy's stat names, prefix "http2.").
cdef enum:
    H2_FLOOD_NONE = 0
    H2_FLOOD_OUTBOUND = 1              # outbound_flood: over max_outbound_frames
    H2_FLOOD_OUTBOUND_CONTROL = 2      # outbound_control_flood: over max_outbound_control_frames
    H2_FLOOD_INBOUND_EMPTY = 3         # inbound_empty_frames_flood
    H2_FLOOD_INBOUND_PRIORITY = 4      # inbound_priority_frames_flood
    H2_FLOOD_INBOUND_WINDOW_UPDATE = 5 # inbound_window_update_frames_flood

# Results of h2_preface_state() (codec_type AUTO).
cdef enum:
    H2_PREFACE_NO = -1       # not HTTP/2 prior knowledge: hand the bytes to the HTTP/1 codec
    H2_PREFACE_PARTIAL = 0   # a strict prefix of the 24-byte preface: read more
    H2_PREFACE_YES = 1       # the whole client connection preface is there

# The client connection preface, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" (24 bytes).
cdef int h2_preface_state(const char *data, size_t length) noexcept nogil

# Envoy's http2_protocol_options, with Envoy's defaults (h2_options_init).
cdef struct H2Options:
    uint32_t max_concurrent_streams               # 2147483647
    uint32_t initial_stream_window_size           # 268435456 (256 MiB)
    uint32_t initial_connection_window_size       # 268435456
    uint32_t max_frame_size                       # 16384 (advertised only if changed)
    uint32_t max_header_list_size                 # 60 KiB (max_request_headers_kb); enforced
    uint32_t max_headers_count                    # 100; enforced
    uint32_t peer_max_concurrent_streams          # 100: client's assumption before SETTINGS
    uint32_t max_outbound_frames                  # 10000
    uint32_t max_outbound_control_frames          # 1000
    uint32_t max_consecutive_inbound_frames_with_empty_payload   # 1
    uint32_t max_inbound_priority_frames_per_stream             # 100
    uint32_t max_inbound_window_update_frames_per_data_frame_sent  # 10
    bint allow_connect                            # SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441)

cdef void h2_options_init(H2Options *o) noexcept nogil

# Per-session counters, named as Envoy's http2.* codec stats.
cdef struct H2CodecStats:
    uint64_t outbound_flood
    uint64_t outbound_control_flood
    uint64_t inbound_empty_frames_flood
    uint64_t inbound_priority_frames_flood
    uint64_t inbound_window_update_frames_flood
    uint64_t rx_reset
    uint64_t tx_reset
    uint64_t header_overflow
    uint64_t trailers
    uint64_t goaway_sent
    uint64_t streams_active

# One stream's codec state (C memory, owned by the session; freed when the stream closes).
cdef struct H2Stream:
    int32_t id
    uint32_t flags              # H2S_* in http2.pyx
    H2Stream *prev              # the session's list of live streams
    H2Stream *next
    PyObject *headers           # header block being received: list of (bytes, bytes), or NULL
    size_t header_bytes
    uint32_t header_count
    PyObject *trailers          # trailers to send after the queued data, or NULL
    PyObject **chunks           # ring of bytes objects queued for DATA frames (owned references)
    size_t chunk_cap
    size_t chunk_head
    size_t chunk_count
    size_t chunk_off            # bytes of chunks[chunk_head] already framed
    size_t queued               # bytes in the ring not yet framed
    PyObject *inline_chunks[4]


# The owner's side of the event interface.  The connection layer subclasses this (cdef class)
# and overrides the methods it needs; the defaults ignore the event.  A method returning < 0
# makes feed()/produce() fail with H2_ERR_CALLBACK.  Methods may call the session's submit_*,
# send_data, reset_stream, consume, goaway and ping, but not feed() or produce().
cdef class H2Handler:
    # A request head (server) or response head (client; 1xx heads come here too, then the final
    # one).  headers: list of (name, value) bytes pairs as received, pseudo-headers first, names
    # lower-case.  end_stream: the peer sends no body (on_stream_end follows at once).
    cdef int on_headers(self, int32_t stream_id, list headers, bint end_stream) noexcept
    # A piece of body.  data points into the buffer given to feed(): it is valid only during the
    # call, so copy what must outlive it.  Every byte delivered here must later be passed to
    # H2Session.consume() (also for streams that have closed or been reset since): consume is
    # what opens the flow-control windows again.
    cdef int on_data(self, int32_t stream_id, const char *data, size_t length) noexcept
    # Trailers (always the end of the peer's side; on_stream_end follows).
    cdef int on_trailers(self, int32_t stream_id, list headers) noexcept
    # The peer finished its side of the stream (END_STREAM).
    cdef int on_stream_end(self, int32_t stream_id) noexcept
    # The stream is gone after both sides finished normally.  Last event of the stream.
    cdef void on_stream_close(self, int32_t stream_id) noexcept
    # The stream is gone abnormally: RST_STREAM received (remote), sent by us or by the codec
    # on a stream error (not remote), or refused by the peer's GOAWAY (remote, REFUSED_STREAM).
    # Last event of the stream, also for streams the owner reset itself.
    cdef void on_stream_reset(self, int32_t stream_id, uint32_t error_code, bint remote) noexcept
    # Some queued body bytes of the stream were framed; `queued` bytes remain queued.  The hook
    # for outbound backpressure (resume reading the source below a low-water mark).
    cdef void on_data_sent(self, int32_t stream_id, size_t queued) noexcept
    # The peer's SETTINGS arrived (read them with H2Session.remote_setting()).
    cdef void on_settings(self) noexcept
    # The peer acknowledged our PING carrying `opaque` (connection_keepalive).
    cdef void on_ping_ack(self, uint64_t opaque) noexcept
    # The peer sent GOAWAY: streams above last_stream_id will be reset as refused.
    cdef void on_goaway(self, int32_t last_stream_id, uint32_t error_code) noexcept


@cython.final
cdef class H2Session:
    cdef nghttp2_session *session
    cdef readonly bint is_server
    cdef H2Handler handler
    cdef H2Options opts
    cdef H2CodecStats stats
    cdef readonly int flood            # H2_FLOOD_*; once set it stays set
    cdef const char *error             # Envoy-style detail of the last failure, or NULL
    cdef char errmsg[160]              # nghttp2's message for the last connection error
    cdef H2Stream *streams             # live streams known to the owner or being received
    cdef bint goaway_received
    cdef bint goaway_submitted
    cdef bint terminated               # nghttp2 sent GOAWAY with an error: a connection error
    cdef int cb_failed
    # Flood protection counters (Envoy's ProtocolConstraints).  Outbound frames count from the
    # moment they are produced until the owner reports with output_flushed() that everything
    # produced so far has left the process.
    cdef uint32_t outbound_frames
    cdef uint32_t outbound_control_frames
    cdef uint64_t outbound_data_frames
    cdef uint32_t consecutive_empty_frames
    cdef uint64_t inbound_streams
    cdef uint64_t inbound_priority_frames
    cdef uint64_t inbound_window_update_frames
    # Output: pieces produced so far (bytes / memoryview), plus the accumulator they are cut from.
    cdef list out
    cdef char *acc
    cdef size_t acc_len
    cdef size_t acc_cap

    cdef int setup(self, bint server, H2Handler handler, const H2Options *opts) except -1
    cdef int _submit_head(self, int32_t stream_id, list headers, bint end_stream,
                          bint informational) except? -1
    cdef int _resume(self, H2Stream *st) noexcept

    # Process received bytes.  Events are delivered before it returns; then, as Envoy's codec
    # does after each dispatch, everything nghttp2 may send is serialized into the pending
    # output (SETTINGS/PING ACKs, WINDOW_UPDATEs, what the handler submitted, a GOAWAY): the
    # owner follows with take_output().  Returns H2_OK or a negative H2_ERR_*; after
    # H2_ERR_PROTOCOL the owner writes the pending output (GOAWAY) and closes; after
    # H2_ERR_FLOOD it closes (Envoy sends nothing more to a flooding peer).
    cdef int feed(self, const char *data, size_t length) noexcept

    # Serialize everything nghttp2 may send now (respecting the peer's flow-control windows)
    # into the pending output.  Returns H2_OK or a negative H2_ERR_* (H2_ERR_FLOOD on an
    # outbound flood: close without writing more).
    cpdef int produce(self) noexcept
    # The pending output as a list of bytes-like pieces, in order, for transport.writelines();
    # DATA payloads are the queued bytes objects themselves (or memoryview slices of them): no
    # copy.  Empties the pending output.
    cpdef list take_output(self)
    # produce() + take_output() joined into one bytes object (one copy; for tests and tools).
    cpdef bytes data_to_send(self)
    # The owner's transport has written everything produced so far: release the outbound frame
    # counts of the flood protection.
    cpdef void output_flushed(self) noexcept

    # Client: start a request; headers are (name, value) bytes pairs, pseudo-headers first,
    # names lower-case.  Returns the new stream id (> 0) or a negative nghttp2 error code.
    # With end_stream false the body follows through send_data().
    cpdef int submit_request(self, list headers, bint end_stream) except? -1
    # The same over a C array (names lower-case, pseudo-headers first; nghttp2 copies the
    # strings): for callers that hold the header fields in a buffer, no Python object per field.
    cdef int submit_request_nv(self, const nghttp2_nv *nva, size_t n, bint end_stream) except? -1
    # Server: answer a stream.  Returns 0 or a negative nghttp2 error code.
    cpdef int submit_response(self, int32_t stream_id, list headers, bint end_stream) except? -1
    # submit_response / submit_informational over a C array.
    cdef int submit_head_nv(self, int32_t stream_id, const nghttp2_nv *nva, size_t n,
                            bint end_stream, bint informational) noexcept
    # Server: a 1xx head (100-continue, 103) before the response.
    cpdef int submit_informational(self, int32_t stream_id, list headers) except? -1
    # Trailers after the queued body; ends our side of the stream.  Requires end_stream false
    # on the head.  Returns 0 or a negative nghttp2 error code.
    cpdef int submit_trailers(self, int32_t stream_id, list headers) except? -1
    # Queue body bytes (the object is kept, not copied) and/or end our side of the stream.
    # Returns 0 or a negative nghttp2 error code (NGHTTP2_ERR_STREAM_CLOSED, ..._INVALID_STATE).
    cpdef int send_data(self, int32_t stream_id, bytes data, bint end_stream) except? -1
    # Body bytes queued on the stream and not yet framed (outbound backpressure).
    cpdef size_t queued_bytes(self, int32_t stream_id) noexcept
    cpdef int reset_stream(self, int32_t stream_id, uint32_t error_code) noexcept
    # GOAWAY with the last stream we processed; streams above it are refused.
    cpdef int goaway(self, uint32_t error_code) noexcept
    # Server drain, first step: GOAWAY with last stream id 2^31-1 (then goaway() later).
    cpdef int shutdown_notice(self) noexcept
    cpdef int ping(self, uint64_t opaque) noexcept
    # Flow control: the owner forwarded (or dropped) n bytes of the stream's body; nghttp2 sends
    # WINDOW_UPDATE for the stream and the connection once enough is consumed.
    cpdef int consume(self, int32_t stream_id, size_t n) noexcept
    # SETTINGS changes at run time.
    cdef int submit_settings_entries(self, const uint32_t *ids, const uint32_t *values,
                                     size_t n) noexcept
    cpdef bint want_read(self) noexcept
    cpdef bint want_write(self) noexcept
    cpdef uint32_t remote_setting(self, int32_t settings_id) noexcept
    # nghttp2's check: a new request can be submitted now (no GOAWAY, ids left).
    cpdef bint can_submit_request(self) noexcept


# H2Options from a config model's Http2Options (fastproxy.config.model; None: the defaults).
cdef H2Options h2_options_from_model(m)


# connection_keepalive for a connection's owner: send_ping(opaque) sends a PING (and writes it),
# expired() closes the connection; the owner forwards on_ping_ack to acked() and calls stop()
# when the connection goes away.
cdef class H2Keepalive:
    cdef object loop
    cdef double interval
    cdef double timeout
    cdef object send_ping
    cdef object expired
    cdef object timer
    cdef object ack_timer
    cdef uint64_t opaque

    cdef void _schedule(self)
    cdef void acked(self, uint64_t opaque)
    cdef void stop(self)
