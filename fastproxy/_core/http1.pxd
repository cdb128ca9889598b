# HTTP/1.1 codec: sans-IO parsing of request and response heads (picohttpparser) and of
# message bodies (content-length, chunked, until-close), with Envoy's validation rules.
# Nothing here touches a socket; every pointer in a head points into the caller's buffer.

from libc.stdint cimport int64_t, uint64_t
from fastproxy._core.includes.picohttpparser cimport phr_header, phr_chunked_decoder

cdef enum:
    FP_MAX_HEADERS = 128
    FP_MAX_HEADERS_COUNT = 100  # Envoy's default max_headers_count: one more is answered 431

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
    # Added after the first contract:
    const char *target          # the request-target exactly as received
    size_t target_len
    const char *authority       # absolute-form ("http://a/x") or CONNECT target: the authority
    size_t authority_len        # (Envoy's :authority, it wins over Host); NULL/0 in origin-form

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
    # Added after the first contract:
    bint upgrade                # 101 Switching Protocols: the bytes after the head are the tunnel
    int te_index                # index of Transfer-Encoding, -1 if absent

# Parse a request head from buf[0:length].  Returns the head length (>0), PARSE_INCOMPLETE, or a
# negative PARSE_* code with out.error set to Envoy's response-code detail.  max_header_bytes is
# max_request_headers_kb * 1024; an incomplete head longer than that, or a complete one, is
# PARSE_TOO_LARGE ("http1.headers_too_large"); more than FP_MAX_HEADERS_COUNT headers is
# PARSE_TOO_MANY_HEADERS ("http1.too_many_headers").  Checks, in Envoy's order:
#   - HTTP/1.0 or 1.1 only; the method is one of the methods Envoy's HTTP/1 codec knows (it refuses
#     others); the request-target is origin-form, absolute-form, "*" (OPTIONS) or, for CONNECT,
#     authority-form ("http1.codec_error", "http1.invalid_characters" for control characters);
#   - header names are tokens, no obs-fold, no empty name ("http1.codec_error"); values have no
#     control characters but HTAB ("http1.invalid_characters"); values are trimmed of trailing
#     SP/HTAB in out.headers (picohttpparser already skips the leading ones);
#   - Content-Length: digits only, at most one Content-Length header (Envoy rejects duplicates
#     even when they are identical) -> "http1.codec_error";
#   - CONNECT with a Content-Length other than "0" -> "http1.body_disallowed";
#   - Content-Length with Transfer-Encoding -> "http1.content_length_and_chunked_not_allowed";
#   - Transfer-Encoding other than one header saying "chunked" (any case), or on CONNECT ->
#     PARSE_NOT_IMPLEMENTED "http1.invalid_transfer_encoding" (501).  HTTP/1.0 with chunked is
#     accepted, as Envoy does;
#   - "*" on a method other than OPTIONS, a CONNECT target that is not host:port, or an absolute
#     URL without a host -> "http1.invalid_url"; a scheme other than http/https ->
#     "http1.invalid_scheme";
#   - HTTP/1.1 without Host (and without an authority in the target) -> "missing_host_header".
#     HTTP/1.0 without Host is accepted with host_index -1 (Envoy: 400 missing_host_header unless
#     default_host_for_http_10 is set, which is the connection layer's call).
# On success: path is the origin-form path (for absolute-form: the part after the authority, "/"
# if there is none; for CONNECT: the target); target is the raw request-target; body_kind is
# BODY_NONE when there is no body (no CL/TE, Content-Length: 0, an upgrade or CONNECT: what
# follows the head is then tunnel data, not a body); content_length is -1 unless a
# Content-Length was given.  upgrade is set for Connection: upgrade + an Upgrade header, except
# h2c (Envoy ignores h2c upgrades).  expect_continue only for HTTP/1.1.
cdef int parse_request_head(const char *buf, size_t length, size_t max_header_bytes,
                            RequestHead *out) noexcept nogil

# Parse a response head; is_head_request makes the body BODY_NONE as for a HEAD request.
# Returns as parse_request_head.  Same header rules (names, values, obs-fold, Content-Length,
# Transfer-Encoding: "chunked" only, CL with TE an error); on error out.error is the http1.*
# detail of the cause (the connection layer answers 502 and flags upstream protocol error).
# body_kind: BODY_NONE for HEAD requests, 1xx, 204, 304; else BODY_CHUNKED, BODY_LENGTH
# (BODY_NONE if Content-Length: 0), or BODY_EOF (delimited by close, keep_alive then false).
cdef int parse_response_head(const char *buf, size_t length, size_t max_header_bytes,
                             bint is_head_request, ResponseHead *out) noexcept nogil

# Chunked decoder states (BodyDecoder.chunk_state).
cdef enum:
    CHUNK_SIZE_START = 0    # expecting the first hex digit of a chunk size
    CHUNK_SIZE = 1          # in the hex digits
    CHUNK_EXT = 2           # after SP/HTAB/';': chunk extension, ignored up to CR
    CHUNK_SIZE_LF = 3       # CR seen, expecting LF
    CHUNK_DATA = 4
    CHUNK_DATA_CR = 5       # chunk data must be followed by CRLF
    CHUNK_DATA_LF = 6
    CHUNK_TRAILER_START = 7 # start of a trailer line, or of the final empty line
    CHUNK_TRAILER_NAME = 8
    CHUNK_TRAILER_VALUE = 9
    CHUNK_TRAILER_LF = 10   # CR seen in a trailer line
    CHUNK_FINAL_LF = 11     # CR seen on the final empty line
    CHUNK_DONE = 12

# Body decoding.  The decoder works in place on a writable buffer.  Chunked bodies are decoded
# by our own strict state machine rather than picohttpparser's phr_decode_chunked, which accepts
# garbage after a chunk size, bare LF, any run of CRs and unvalidated trailers (request
# smuggling material); `chunked` is kept zeroed for layout compatibility only.
cdef struct BodyDecoder:
    int kind
    int64_t remaining           # BODY_LENGTH: bytes still to come
    phr_chunked_decoder chunked # unused (see above)
    bint done
    # Added after the first contract:
    int chunk_state             # CHUNK_*
    uint64_t chunk_left         # bytes left in the current chunk (chunk sizes up to 2^64-1)
    size_t trailer_bytes        # trailer bytes seen so far
    size_t max_trailer_bytes    # limit on the trailer section (default 60 KiB), set after init
    const char *error           # on -1: "http1.codec_error", "http1.invalid_characters",
                                # or "http1.headers_too_large" (trailers over the limit)

cdef void body_decoder_init(BodyDecoder *d, int kind, int64_t content_length) noexcept nogil

# Decode buf[0:*length] in place.  Returns 0 while more body is expected, 1 when the body is
# complete, -1 on a framing error (d.error says why).  On return:
#   - *length is the number of decoded body bytes, now at buf[0:*length] (chunk framing removed;
#     for BODY_LENGTH/BODY_EOF the bytes are not moved);
#   - *consumed is the number of input bytes used: while 0 is returned it equals the input length
#     (partial framing is kept in the decoder's state, nothing needs to be kept by the caller);
#     when 1 is returned the bytes buf[*consumed : input length] are the start of the next
#     message, left exactly where they were (the decoder only writes below *consumed);
#     on -1 it is the offset of the offending byte.
# BODY_NONE is complete at once (nothing consumed); BODY_EOF takes everything and never
# completes (the caller ends it on connection close).  Calling again after completion returns 1
# and consumes nothing.
cdef int body_decode(BodyDecoder *d, char *buf, size_t *length, size_t *consumed) noexcept nogil

# Case-insensitive comparison of a header name with a lower-case literal.
cdef bint name_eq(const char *name, size_t name_len, const char *lower, size_t lower_len) noexcept nogil

# Find a header (lower-case name) in a parsed head; returns its index or -1.
cdef int find_header(const phr_header *headers, size_t num_headers,
                     const char *lower, size_t lower_len) noexcept nogil

# Hop-by-hop headers that a proxy never forwards (connection, keep-alive, proxy-connection,
# transfer-encoding, upgrade (unless tunnelling), te (except "trailers"), and any header the
# Connection header names).  Returns true if headers[i] must be dropped.  With keep_upgrade the
# Upgrade header is kept even if Connection names it; Connection itself is always dropped, so
# the caller writes "Connection: upgrade" when it forwards an upgrade.
cdef bint is_hop_by_hop(const phr_header *headers, size_t num_headers, size_t i,
                        bint keep_upgrade) noexcept nogil

# The fixed hop-by-hop names only (no Connection-nominated headers): what a proxy drops from a
# response, where Envoy keeps headers that the upstream's Connection header names.
cdef bint is_hop_by_hop_name(const phr_header *h, bint keep_upgrade) noexcept nogil
