# HTTP/1.1 codec: sans-IO parsing of request and response heads (picohttpparser) and of
# message bodies (content-length, chunked, until-close), with Envoy's validation rules.
# Nothing here touches a socket; every pointer in a head points into the caller's buffer.

from libc.stdint cimport int64_t
from fastproxy._core.includes.picohttpparser cimport phr_header, phr_chunked_decoder

cdef enum:
    FP_MAX_HEADERS = 128

# Results of parse_request_head / parse_response_head (a positive value is the head length).
cdef enum:
    PARSE_INCOMPLETE = 0
    PARSE_ERROR = -1            # malformed: 400 "Bad Request", connection closed
    PARSE_TOO_LARGE = -2        # head over max_header_bytes: 431
    PARSE_NOT_IMPLEMENTED = -3  # unsupported transfer-encoding: 501
    PARSE_TOO_MANY_HEADERS = -4 # over FP_MAX_HEADERS (or Envoy's 100): 431

# Body framing
cdef enum:
    BODY_NONE = 0      # no body follows the head
    BODY_LENGTH = 1    # content-length bytes follow
    BODY_CHUNKED = 2   # chunked transfer-coding
    BODY_EOF = 3       # response delimited by connection close

cdef struct RequestHead:
    const char *method
    size_t method_len
    const char *path
    size_t path_len
    int minor_version           # 0 or 1
    size_t num_headers
    phr_header headers[128]     # FP_MAX_HEADERS; names as received (compare case-insensitively)
    int body_kind               # BODY_NONE / BODY_LENGTH / BODY_CHUNKED
    int64_t content_length      # valid when body_kind == BODY_LENGTH
    bint keep_alive             # per version default and Connection header
    bint expect_continue        # Expect: 100-continue
    bint upgrade                # Connection: upgrade with an Upgrade header (websocket...)
    bint is_head                # method is HEAD
    bint is_connect             # method is CONNECT
    int host_index              # index of the Host header in headers, -1 if absent
    int upgrade_index           # index of the Upgrade header, -1 if absent
    int te_index                # index of Transfer-Encoding, -1 if absent
    const char *error           # on error: Envoy's response-code detail, e.g. "http1.codec_error"

cdef struct ResponseHead:
    int status
    const char *reason
    size_t reason_len
    int minor_version
    size_t num_headers
    phr_header headers[128]
    int body_kind               # for HEAD requests, 1xx, 204, 304: BODY_NONE
    int64_t content_length
    bint keep_alive             # false if the upstream said Connection: close or is HTTP/1.0 w/o keep-alive
    const char *error

# Parse a request head from buf[0:length].  Returns the head length (>0), PARSE_INCOMPLETE, or a
# negative PARSE_* code with out.error set.  max_header_bytes is max_request_headers_kb * 1024.
# Validates as Envoy does: one Content-Length (identical duplicates folded, differing ones an
# error), Transfer-Encoding only "chunked" (last) for HTTP/1.1, CL together with TE rejected,
# no obs-fold, no invalid characters in names or values, HTTP/1.1 requires Host.
cdef int parse_request_head(const char *buf, size_t length, size_t max_header_bytes,
                            RequestHead *out) noexcept nogil

# Parse a response head; is_head_request makes the body BODY_NONE as for a HEAD request.
cdef int parse_response_head(const char *buf, size_t length, size_t max_header_bytes,
                             bint is_head_request, ResponseHead *out) noexcept nogil

# Body decoding.  The decoder works in place on a writable buffer.
cdef struct BodyDecoder:
    int kind
    int64_t remaining           # BODY_LENGTH: bytes still to come
    phr_chunked_decoder chunked
    bint done

cdef void body_decoder_init(BodyDecoder *d, int kind, int64_t content_length) noexcept nogil

# Decode buf[0:*length] in place.  On return *length is the number of decoded body bytes now at
# buf[0:*length]; *consumed is how many input bytes were used (the rest belongs to the next
# message, for pipelining).  Returns 0 while more body is expected, 1 when the body is complete,
# -1 on a framing error (bad chunk size...).
cdef int body_decode(BodyDecoder *d, char *buf, size_t *length, size_t *consumed) noexcept nogil

# Case-insensitive comparison of a header name with a lower-case literal.
cdef bint name_eq(const char *name, size_t name_len, const char *lower, size_t lower_len) noexcept nogil

# Find a header (lower-case name) in a parsed head; returns its index or -1.
cdef int find_header(const phr_header *headers, size_t num_headers,
                     const char *lower, size_t lower_len) noexcept nogil

# Hop-by-hop headers that a proxy never forwards (connection, keep-alive, proxy-connection,
# transfer-encoding, upgrade (unless tunnelling), te (except "trailers"), and any header the
# Connection header names).  Returns true if headers[i] must be dropped.
cdef bint is_hop_by_hop(const phr_header *headers, size_t num_headers, size_t i,
                        bint keep_upgrade) noexcept nogil
