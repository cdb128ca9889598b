"""HTTP/1.1 codec: sans-IO parsing of message heads and decoding of message bodies.

One job: turn bytes into a validated request or response head (pointers into the caller's
buffer, no copies) and turn body bytes into body data, with Envoy's HTTP/1 rules (its Balsa-based
codec) for what is malformed and which response-code detail explains it.  No sockets, no
allocation, no Python objects on the cdef side; everything is `noexcept nogil`.

Theory of operation
-------------------
* Heads: picohttpparser splits the head into method/target/version/header slices.  It is lenient
  (an old version: obs-fold lines come back with name == NULL, names are not checked against the
  token grammar, trailing whitespace is kept), so every rule Envoy enforces is checked here
  afterwards, in Envoy's order.  When picohttpparser itself refuses the head, a second pass over
  the bytes finds the first faulty line to tell "http1.invalid_characters" from
  "http1.codec_error" (and a 101st header from both), as Envoy would report them.
* Bodies: content-length bodies are counted, close-delimited bodies pass through, chunked bodies
  go through a strict byte-level state machine (see http1.pxd for why not phr_decode_chunked).
  Decoding compacts data towards the start of the buffer and never writes at or beyond the
  input position it has reached, so the bytes of a pipelined next message stay where they were,
  starting at *consumed.

The Python-visible functions at the end (parse_request, parse_response, decode_body,
forwarded_headers, BodyReader) exist for tests and fuzzing only; the proxy uses the cdef API.
"""

from libc.stdint cimport int64_t, uint64_t, INT64_MAX, UINT64_MAX
from libc.string cimport memmove, memset
from fastproxy._core.includes.picohttpparser cimport (
    phr_header, phr_parse_headers, phr_parse_request, phr_parse_response,
)

# ---------------------------------------------------------------------------------------------
# Response-code details (Envoy's strings)

cdef const char *E_CODEC = "http1.codec_error"
cdef const char *E_INVALID_CHARS = "http1.invalid_characters"
cdef const char *E_TOO_LARGE = "http1.headers_too_large"
cdef const char *E_TOO_MANY = "http1.too_many_headers"
cdef const char *E_CL_AND_TE = "http1.content_length_and_chunked_not_allowed"
cdef const char *E_INVALID_TE = "http1.invalid_transfer_encoding"
cdef const char *E_BODY_DISALLOWED = "http1.body_disallowed"
cdef const char *E_INVALID_URL = "http1.invalid_url"
cdef const char *E_INVALID_SCHEME = "http1.invalid_scheme"
cdef const char *E_MISSING_HOST = "missing_host_header"
cdef const char *E_TE_NOT_ALLOWED = "http1.transfer_encoding_not_allowed"
cdef const char *E_CL_NOT_ALLOWED = "http1.content_length_not_allowed"

cdef const char *SLASH = "/"

cdef enum:
    DEFAULT_MAX_TRAILER_BYTES = 60 * 1024

# ---------------------------------------------------------------------------------------------
# Character classes (filled once at import)

cdef unsigned char _TOKEN[256]     # RFC 9110 tchar
cdef unsigned char _VALUE[256]     # field-value octets: HTAB, SP, VCHAR, obs-text
cdef unsigned char _URL[256]       # path/query octets Envoy's codec accepts: HTAB, FF, '!'..'~'
cdef unsigned char _HOST[256]      # authority octets in an absolute URL / CONNECT target
cdef unsigned char _SCHEME[256]    # scheme octets after the first (ALPHA DIGIT + - .)
cdef signed char _HEX[256]

# Methods Envoy's HTTP/1 codec accepts (others: 400 http1.codec_error).  Most common first.
cdef const char *_METHODS[35]
cdef int _N_METHODS = 0


cdef void _add_method(const char *m) noexcept nogil:
    global _N_METHODS
    _METHODS[_N_METHODS] = m
    _N_METHODS += 1


cdef void _init_tables() noexcept:
    cdef int c
    memset(_TOKEN, 0, 256)
    memset(_VALUE, 0, 256)
    memset(_URL, 0, 256)
    memset(_HOST, 0, 256)
    memset(_SCHEME, 0, 256)
    for c in range(256):
        _HEX[c] = -1
    for c in range(ord('0'), ord('9') + 1):
        _TOKEN[c] = 1
        _HOST[c] = 1
        _SCHEME[c] = 1
        _HEX[c] = c - ord('0')
    for c in range(ord('a'), ord('z') + 1):
        _TOKEN[c] = 1
        _TOKEN[c - 32] = 1
        _HOST[c] = 1
        _HOST[c - 32] = 1
        _SCHEME[c] = 1
        _SCHEME[c - 32] = 1
    for c in range(6):
        _HEX[ord('a') + c] = 10 + c
        _HEX[ord('A') + c] = 10 + c
    for c in b"!#$%&'*+-.^_`|~":
        _TOKEN[c] = 1
    for c in b"!$%&'()*+,-.:;=@[]_~":
        _HOST[c] = 1
    for c in b"+-.":
        _SCHEME[c] = 1
    _VALUE[9] = 1
    for c in range(0x20, 0x7f):
        _VALUE[c] = 1
    for c in range(0x80, 0x100):
        _VALUE[c] = 1
    _URL[9] = 1
    _URL[12] = 1
    for c in range(0x21, 0x7f):
        _URL[c] = 1


_init_tables()
# The method table needs C string constants, so it is filled with literals here.
_add_method("GET"); _add_method("POST"); _add_method("HEAD"); _add_method("PUT")
_add_method("DELETE"); _add_method("OPTIONS"); _add_method("PATCH"); _add_method("CONNECT")
_add_method("TRACE"); _add_method("ACL"); _add_method("BIND"); _add_method("CHECKOUT")
_add_method("COPY"); _add_method("LINK"); _add_method("LOCK"); _add_method("MERGE")
_add_method("MKACTIVITY"); _add_method("MKCALENDAR"); _add_method("MKCOL"); _add_method("MOVE")
_add_method("MSEARCH"); _add_method("NOTIFY"); _add_method("PROPFIND"); _add_method("PROPPATCH")
_add_method("PURGE"); _add_method("QUERY"); _add_method("REBIND"); _add_method("REPORT")
_add_method("SEARCH"); _add_method("SOURCE"); _add_method("SUBSCRIBE"); _add_method("UNBIND")
_add_method("UNLINK"); _add_method("UNLOCK"); _add_method("UNSUBSCRIBE")


# ---------------------------------------------------------------------------------------------
# Small helpers

cdef inline unsigned char _lower(unsigned char c) noexcept nogil:
    if c >= 65 and c <= 90:
        return c + 32
    return c


cdef inline bint _bytes_eq(const char *a, size_t n, const char *b, size_t m) noexcept nogil:
    cdef size_t i
    if n != m:
        return False
    for i in range(n):
        if a[i] != b[i]:
            return False
    return True


cdef inline size_t _clen(const char *s) noexcept nogil:
    cdef size_t n = 0
    while s[n] != 0:
        n += 1
    return n


cdef bint name_eq(const char *name, size_t name_len, const char *lower,
                  size_t lower_len) noexcept nogil:
    cdef size_t i
    if name_len != lower_len or name == NULL:
        return False
    for i in range(name_len):
        if _lower(<unsigned char>name[i]) != <unsigned char>lower[i]:
            return False
    return True


cdef int find_header(const phr_header *headers, size_t num_headers,
                     const char *lower, size_t lower_len) noexcept nogil:
    cdef size_t i
    for i in range(num_headers):
        if name_eq(headers[i].name, headers[i].name_len, lower, lower_len):
            return <int>i
    return -1


cdef bint _is_ows(char c) noexcept nogil:
    return c == b' ' or c == b'\t'


cdef bint _has_token(const char *v, size_t n, const char *tok, size_t tok_len) noexcept nogil:
    """Whether the comma-separated list v[0:n] holds tok (lower-case), case-insensitively."""
    return _has_token_ci(v, n, tok, tok_len)


cdef bint _method_known(const char *m, size_t n) noexcept nogil:
    cdef int i
    cdef const char *k
    for i in range(_N_METHODS):
        k = _METHODS[i]
        if k[0] == m[0] and _bytes_eq(m, n, k, _clen(k)):
            return True
    return False


cdef int _parse_content_length(const char *v, size_t n, int64_t *out) noexcept nogil:
    """Digits only, no sign, no list, fits int64 (Envoy takes up to 2^64-1; beyond int64 is
    refused here).  Returns 0 or -1."""
    cdef int64_t acc = 0
    cdef int d
    cdef size_t i
    if n == 0:
        return -1
    for i in range(n):
        d = <unsigned char>v[i] - 48
        if d < 0 or d > 9:
            return -1
        if acc > (INT64_MAX - d) // 10:
            return -1
        acc = acc * 10 + d
    out[0] = acc
    return 0


# ---------------------------------------------------------------------------------------------
# Head validation shared by requests and responses

cdef struct _HeadInfo:
    int cl_index
    int cl_count
    int te_index
    int te_count
    int host_index
    int upgrade_index
    int expect_index
    bint conn_close
    bint conn_keep_alive
    bint conn_upgrade
    int64_t content_length


cdef int _classify_refused_head(const char *buf, size_t length, const char **error) noexcept nogil:
    """picohttpparser refused the head: find the first faulty line, as Envoy would see it."""
    cdef size_t pos = 0, line_end, eff_end, j, k
    cdef int count = 0
    cdef unsigned char c
    while pos < length and (buf[pos] == b'\r' or buf[pos] == b'\n'):
        pos += 1
    line_end = pos
    while line_end < length and buf[line_end] != b'\n':
        line_end += 1
    for j in range(pos, line_end):
        c = <unsigned char>buf[j]
        if c == 13 and j + 1 == line_end:
            continue
        if (c < 0x20 and c != 9) or c == 0x7f:
            error[0] = E_INVALID_CHARS
            return PARSE_ERROR
    pos = line_end + 1
    while pos < length:
        line_end = pos
        while line_end < length and buf[line_end] != b'\n':
            line_end += 1
        eff_end = line_end
        if eff_end > pos and buf[eff_end - 1] == b'\r':
            eff_end -= 1
        if eff_end == pos:
            break
        if count == FP_MAX_HEADERS_COUNT:
            error[0] = E_TOO_MANY
            return PARSE_TOO_MANY_HEADERS
        j = pos
        if _is_ows(buf[j]):
            break
        while j < eff_end and buf[j] != b':':
            if not _TOKEN[<unsigned char>buf[j]]:
                error[0] = E_CODEC
                return PARSE_ERROR
            j += 1
        if j == eff_end or j == pos:
            break
        for k in range(j + 1, eff_end):
            if not _VALUE[<unsigned char>buf[k]]:
                error[0] = E_INVALID_CHARS
                return PARSE_ERROR
        count += 1
        pos = line_end + 1
    error[0] = E_CODEC
    return PARSE_ERROR


cdef int _check_headers(phr_header *headers, size_t num_headers, _HeadInfo *info,
                        const char **error) noexcept nogil:
    """Validate names and values, trim values, find the framing headers.  Returns 0 or a PARSE_*
    code with *error set."""
    cdef size_t i, j, n
    cdef phr_header *h
    cdef const char *v
    info.cl_index = -1
    info.cl_count = 0
    info.te_index = -1
    info.te_count = 0
    info.host_index = -1
    info.upgrade_index = -1
    info.expect_index = -1
    info.conn_close = False
    info.conn_keep_alive = False
    info.conn_upgrade = False
    info.content_length = -1
    for i in range(num_headers):
        if i == FP_MAX_HEADERS_COUNT:
            error[0] = E_TOO_MANY
            return PARSE_TOO_MANY_HEADERS
        h = &headers[i]
        if h.name == NULL or h.name_len == 0:
            # obs-fold continuation line (or an empty name): refused.
            error[0] = E_CODEC
            return PARSE_ERROR
        for j in range(h.name_len):
            if not _TOKEN[<unsigned char>h.name[j]]:
                error[0] = E_CODEC
                return PARSE_ERROR
        v = h.value
        n = h.value_len
        for j in range(n):
            if not _VALUE[<unsigned char>v[j]]:
                error[0] = E_INVALID_CHARS
                return PARSE_ERROR
        while n > 0 and _is_ows(v[n - 1]):
            n -= 1
        h.value_len = n
        # Framing and connection-management headers.
        if h.name_len == 14 and name_eq(h.name, 14, "content-length", 14):
            info.cl_count += 1
            if info.cl_count > 1:
                # Envoy (Balsa) refuses a repeated Content-Length, even an identical one.
                error[0] = E_CODEC
                return PARSE_ERROR
            info.cl_index = <int>i
            if _parse_content_length(v, n, &info.content_length) < 0:
                error[0] = E_CODEC
                return PARSE_ERROR
        elif h.name_len == 17 and name_eq(h.name, 17, "transfer-encoding", 17):
            info.te_count += 1
            if info.te_index < 0:
                info.te_index = <int>i
        elif h.name_len == 4 and name_eq(h.name, 4, "host", 4):
            if info.host_index < 0:
                info.host_index = <int>i
        elif h.name_len == 10 and name_eq(h.name, 10, "connection", 10):
            if _has_token(v, n, "close", 5):
                info.conn_close = True
            if _has_token(v, n, "keep-alive", 10):
                info.conn_keep_alive = True
            if _has_token(v, n, "upgrade", 7):
                info.conn_upgrade = True
        elif h.name_len == 7 and name_eq(h.name, 7, "upgrade", 7):
            if info.upgrade_index < 0:
                info.upgrade_index = <int>i
        elif h.name_len == 6 and name_eq(h.name, 6, "expect", 6):
            if info.expect_index < 0:
                info.expect_index = <int>i
    return 0


cdef bint _te_is_chunked(phr_header *headers, _HeadInfo *info) noexcept nogil:
    """Envoy accepts exactly one Transfer-Encoding whose (trimmed) value is "chunked"."""
    cdef phr_header *h
    if info.te_count != 1:
        return False
    h = &headers[info.te_index]
    return name_eq(h.value, h.value_len, "chunked", 7)


# ---------------------------------------------------------------------------------------------
# Request target (Envoy's URL rules, own code)

cdef const char *_check_target(RequestHead *out, const char **deferred) noexcept nogil:
    """Syntax errors are returned (http1.codec_error: they come first in Envoy); semantic ones
    (invalid_url / invalid_scheme, checked by Envoy after the framing headers) go to *deferred.
    Sets path/authority."""
    cdef const char *t = out.target
    cdef size_t n = out.target_len, i, host_start, host_end
    cdef unsigned char c
    cdef bint is_connect = out.is_connect
    deferred[0] = NULL
    out.authority = NULL
    out.authority_len = 0
    out.path = t
    out.path_len = n
    if n == 0:
        return E_CODEC
    if t[0] == b'/' or t[0] == b'*':
        for i in range(1, n):
            if not _URL[<unsigned char>t[i]]:
                return E_CODEC
        if is_connect:
            deferred[0] = E_INVALID_URL
        elif t[0] == b'*' and not _bytes_eq(out.method, out.method_len, "OPTIONS", 7):
            deferred[0] = E_INVALID_URL
        return NULL
    i = 0
    if not is_connect:
        c = <unsigned char>t[0]
        if not ((c >= 65 and c <= 90) or (c >= 97 and c <= 122)):
            return E_CODEC
        i = 1
        while i < n and _SCHEME[<unsigned char>t[i]]:
            i += 1
        if n - i < 3 or t[i] != b':' or t[i + 1] != b'/' or t[i + 2] != b'/':
            return E_CODEC
        if not (name_eq(t, i, "http", 4) or name_eq(t, i, "https", 5)):
            deferred[0] = E_INVALID_SCHEME
        i += 3
    host_start = i
    while i < n and t[i] != b'/' and t[i] != b'?':
        if not _HOST[<unsigned char>t[i]]:
            return E_CODEC
        if t[i] == b'@' and i > host_start and t[i - 1] == b'@':
            return E_CODEC
        i += 1
    host_end = i
    for i in range(host_end, n):
        if not _URL[<unsigned char>t[i]]:
            return E_CODEC
    out.authority = t + host_start
    out.authority_len = host_end - host_start
    if is_connect:
        # authority-form only: host ":" port
        if host_end != n or not _authority_has_port(t, n):
            if deferred[0] == NULL:
                deferred[0] = E_INVALID_URL
        return NULL
    if host_end == host_start and deferred[0] == NULL:
        deferred[0] = E_INVALID_URL
    if host_end == n:
        out.path = SLASH
        out.path_len = 1
    else:
        out.path = t + host_end
        out.path_len = n - host_end
    return NULL


cdef bint _authority_has_port(const char *a, size_t n) noexcept nogil:
    cdef size_t i = n, digits = 0
    while i > 0 and a[i - 1] >= b'0' and a[i - 1] <= b'9':
        i -= 1
        digits += 1
    return digits > 0 and digits <= 5 and i >= 2 and a[i - 1] == b':'


# ---------------------------------------------------------------------------------------------
# Requests

cdef inline int _fail(RequestHead *out, int code, const char *error) noexcept nogil:
    out.error = error
    return code


cdef int parse_request_head(const char *buf, size_t length, size_t max_header_bytes,
                            RequestHead *out) noexcept nogil:
    cdef size_t num_headers = FP_MAX_HEADERS
    cdef int rc, code
    cdef const char *err = NULL
    cdef const char *deferred = NULL
    cdef _HeadInfo info
    cdef phr_header *h

    out.error = NULL
    out.num_headers = 0
    out.body_kind = BODY_NONE
    out.content_length = -1
    out.keep_alive = False
    out.expect_continue = False
    out.upgrade = False
    out.is_head = False
    out.is_connect = False
    out.host_index = -1
    out.upgrade_index = -1
    out.te_index = -1
    out.target = NULL
    out.target_len = 0
    out.authority = NULL
    out.authority_len = 0

    rc = phr_parse_request(buf, length, &out.method, &out.method_len, &out.target,
                           &out.target_len, &out.minor_version, out.headers, &num_headers, 0)
    if rc == -2:
        if length > max_header_bytes:
            return _fail(out, PARSE_TOO_LARGE, E_TOO_LARGE)
        return PARSE_INCOMPLETE
    if rc < 0:
        code = _classify_refused_head(buf, length, &err)
        return _fail(out, code, err)
    if <size_t>rc > max_header_bytes:
        return _fail(out, PARSE_TOO_LARGE, E_TOO_LARGE)
    out.num_headers = num_headers

    # Request line.
    if out.minor_version > 1:
        return _fail(out, PARSE_ERROR, E_CODEC)
    if not _method_known(out.method, out.method_len):
        return _fail(out, PARSE_ERROR, E_CODEC)
    out.is_head = _bytes_eq(out.method, out.method_len, "HEAD", 4)
    out.is_connect = _bytes_eq(out.method, out.method_len, "CONNECT", 7)
    err = _check_target(out, &deferred)
    if err != NULL:
        return _fail(out, PARSE_ERROR, err)

    # Header fields.
    code = _check_headers(out.headers, num_headers, &info, &err)
    if code != 0:
        return _fail(out, code, err)
    out.host_index = info.host_index
    out.upgrade_index = info.upgrade_index
    out.te_index = info.te_index
    out.content_length = info.content_length

    # Upgrade: Connection names "upgrade" and an Upgrade header is present; h2c is ignored.
    if info.conn_upgrade and info.upgrade_index >= 0:
        h = &out.headers[info.upgrade_index]
        out.upgrade = not name_eq(h.value, h.value_len, "h2c", 3)

    # Framing, in Envoy's order.
    if out.is_connect and info.cl_index >= 0 and info.content_length != 0:
        return _fail(out, PARSE_ERROR, E_BODY_DISALLOWED)
    if info.te_count > 0 and info.cl_index >= 0:
        return _fail(out, PARSE_ERROR, E_CL_AND_TE)
    if info.te_count > 0 and (out.is_connect or not _te_is_chunked(out.headers, &info)):
        return _fail(out, PARSE_NOT_IMPLEMENTED, E_INVALID_TE)
    if deferred != NULL:
        return _fail(out, PARSE_ERROR, deferred)
    if out.minor_version == 1 and info.host_index < 0 and out.authority == NULL:
        return _fail(out, PARSE_ERROR, E_MISSING_HOST)

    if out.upgrade or out.is_connect:
        out.body_kind = BODY_NONE
    elif info.te_count > 0:
        out.body_kind = BODY_CHUNKED
    elif info.content_length > 0:
        out.body_kind = BODY_LENGTH
    else:
        out.body_kind = BODY_NONE

    if out.minor_version == 1:
        out.keep_alive = not info.conn_close
        if info.expect_index >= 0:
            h = &out.headers[info.expect_index]
            out.expect_continue = name_eq(h.value, h.value_len, "100-continue", 12)
    else:
        out.keep_alive = info.conn_keep_alive and not info.conn_close
    return rc


# ---------------------------------------------------------------------------------------------
# Responses

cdef int parse_response_head(const char *buf, size_t length, size_t max_header_bytes,
                             bint is_head_request, ResponseHead *out) noexcept nogil:
    cdef size_t num_headers = FP_MAX_HEADERS
    cdef int rc, code, status
    cdef const char *err = NULL
    cdef _HeadInfo info
    cdef size_t i

    out.error = NULL
    out.num_headers = 0
    out.status = 0
    out.body_kind = BODY_NONE
    out.content_length = -1
    out.keep_alive = False
    out.upgrade = False
    out.te_index = -1

    rc = phr_parse_response(buf, length, &out.minor_version, &out.status, &out.reason,
                            &out.reason_len, out.headers, &num_headers, 0)
    if rc == -2:
        if length > max_header_bytes:
            out.error = E_TOO_LARGE
            return PARSE_TOO_LARGE
        return PARSE_INCOMPLETE
    if rc == -1:
        # picohttpparser wants a SP after the status code; "HTTP/1.1 200\r\n" is common.
        rc = _parse_bare_status_line(buf, length, out, &num_headers)
        if rc == -2:
            if length > max_header_bytes:
                out.error = E_TOO_LARGE
                return PARSE_TOO_LARGE
            return PARSE_INCOMPLETE
    if rc < 0:
        code = _classify_refused_head(buf, length, &out.error)
        return code
    if <size_t>rc > max_header_bytes:
        out.error = E_TOO_LARGE
        return PARSE_TOO_LARGE
    out.num_headers = num_headers
    status = out.status
    if out.minor_version > 1 or status < 100 or status > 999:
        out.error = E_CODEC
        return PARSE_ERROR
    for i in range(out.reason_len):
        if not _VALUE[<unsigned char>out.reason[i]]:
            out.error = E_INVALID_CHARS
            return PARSE_ERROR

    code = _check_headers(out.headers, num_headers, &info, &out.error)
    if code != 0:
        return code
    out.te_index = info.te_index
    out.content_length = info.content_length

    if info.te_count > 0 and info.cl_index >= 0:
        out.error = E_CL_AND_TE
        return PARSE_ERROR
    if info.te_count > 0 and not _te_is_chunked(out.headers, &info):
        out.error = E_INVALID_TE
        return PARSE_NOT_IMPLEMENTED
    if status < 200 or status == 204:
        # Envoy's strict 1xx/204 rules: no Transfer-Encoding, no non-zero Content-Length.
        if info.te_count > 0:
            out.error = E_TE_NOT_ALLOWED
            return PARSE_ERROR
        if info.cl_index >= 0 and info.content_length != 0:
            out.error = E_CL_NOT_ALLOWED
            return PARSE_ERROR

    out.upgrade = status == 101
    if is_head_request or status < 200 or status == 204 or status == 304:
        out.body_kind = BODY_NONE
    elif info.te_count > 0:
        out.body_kind = BODY_CHUNKED
    elif info.cl_index >= 0:
        out.body_kind = BODY_LENGTH if info.content_length > 0 else BODY_NONE
    else:
        out.body_kind = BODY_EOF

    if out.minor_version == 1:
        out.keep_alive = not info.conn_close
    else:
        out.keep_alive = info.conn_keep_alive and not info.conn_close
    if out.body_kind == BODY_EOF:
        out.keep_alive = False
    return rc


cdef int _parse_bare_status_line(const char *buf, size_t length, ResponseHead *out,
                                 size_t *num_headers) noexcept nogil:
    """Status line without reason phrase nor the SP before it: "HTTP/1.x ddd" CRLF."""
    cdef size_t i, line
    cdef int rc
    if length < 13 or not _bytes_eq(buf, 7, "HTTP/1.", 7) or buf[8] != b' ':
        return -1
    if buf[7] != 48 and buf[7] != 49:  # '0' '1'
        return -1
    for i in range(9, 12):
        if buf[i] < 48 or buf[i] > 57:
            return -1
    if buf[12] == b'\n':
        line = 13
    elif buf[12] == b'\r':
        if length < 14:
            return -2
        if buf[13] != b'\n':
            return -1
        line = 14
    else:
        return -1
    num_headers[0] = FP_MAX_HEADERS
    rc = phr_parse_headers(buf + line, length - line, out.headers, num_headers, 0)
    if rc < 0:
        return rc
    out.minor_version = <int>buf[7] - 48
    out.status = (<int>buf[9] - 48) * 100 + (<int>buf[10] - 48) * 10 + (<int>buf[11] - 48)
    out.reason = buf + 12
    out.reason_len = 0
    return <int>line + rc


# ---------------------------------------------------------------------------------------------
# Hop-by-hop headers

cdef bint is_hop_by_hop_name(const phr_header *h, bint keep_upgrade) noexcept nogil:
    cdef const char *name = h.name
    cdef size_t n = h.name_len
    if name == NULL:
        return True
    if n == 10 and name_eq(name, n, "connection", 10):
        return True
    if n == 10 and name_eq(name, n, "keep-alive", 10):
        return True
    if n == 16 and name_eq(name, n, "proxy-connection", 16):
        return True
    if n == 17 and name_eq(name, n, "transfer-encoding", 17):
        return True
    if n == 7 and name_eq(name, n, "upgrade", 7):
        return not keep_upgrade
    if n == 2 and name_eq(name, n, "te", 2):
        return not name_eq(h.value, h.value_len, "trailers", 8)
    return False


cdef bint is_hop_by_hop(const phr_header *headers, size_t num_headers, size_t i,
                        bint keep_upgrade) noexcept nogil:
    cdef const phr_header *h = &headers[i]
    cdef const char *name = h.name
    cdef size_t n = h.name_len, k
    if is_hop_by_hop_name(h, keep_upgrade):
        return True
    # A kept Upgrade (tunnelling) and "TE: trailers" stay even though the Connection header names
    # them ("Connection: upgrade", "Connection: te"): that is what naming them is for.
    if (n == 7 and name_eq(name, n, "upgrade", 7)) or (n == 2 and name_eq(name, n, "te", 2)):
        return False
    # Any other header the Connection header names.
    for k in range(num_headers):
        if k != i and name_eq(headers[k].name, headers[k].name_len, "connection", 10):
            if _has_token_ci(headers[k].value, headers[k].value_len, name, n):
                return True
    return False


cdef bint _has_token_ci(const char *v, size_t n, const char *tok, size_t tok_len) noexcept nogil:
    """Like _has_token, with a token of any case."""
    cdef size_t i = 0, start, end, j
    cdef bint same
    while i < n:
        while i < n and (_is_ows(v[i]) or v[i] == b','):
            i += 1
        start = i
        while i < n and v[i] != b',':
            i += 1
        end = i
        while end > start and _is_ows(v[end - 1]):
            end -= 1
        if end - start == tok_len:
            same = True
            for j in range(tok_len):
                if _lower(<unsigned char>v[start + j]) != _lower(<unsigned char>tok[j]):
                    same = False
                    break
            if same:
                return True
    return False


# ---------------------------------------------------------------------------------------------
# Bodies

cdef void body_decoder_init(BodyDecoder *d, int kind, int64_t content_length) noexcept nogil:
    memset(d, 0, sizeof(BodyDecoder))
    d.kind = kind
    d.remaining = content_length if kind == BODY_LENGTH else 0
    d.chunk_state = CHUNK_SIZE_START
    d.max_trailer_bytes = DEFAULT_MAX_TRAILER_BYTES
    d.done = kind == BODY_NONE or (kind == BODY_LENGTH and content_length <= 0)
    if d.remaining < 0:
        d.remaining = 0


cdef inline int _chunk_fail(BodyDecoder *d, const char *error, size_t *length, size_t dst,
                            size_t *consumed, size_t src) noexcept nogil:
    d.error = error
    length[0] = dst
    consumed[0] = src
    return -1


cdef int body_decode(BodyDecoder *d, char *buf, size_t *length, size_t *consumed) noexcept nogil:
    cdef size_t n = length[0], src = 0, dst = 0, take
    cdef int state
    cdef int v
    cdef unsigned char c
    cdef uint64_t left

    if d.done:
        length[0] = 0
        consumed[0] = 0
        return 1
    if d.kind == BODY_LENGTH:
        take = n
        if <uint64_t>take > <uint64_t>d.remaining:
            take = <size_t>d.remaining
        d.remaining -= <int64_t>take
        length[0] = take
        consumed[0] = take
        if d.remaining == 0:
            d.done = True
            return 1
        return 0
    if d.kind == BODY_EOF:
        consumed[0] = n
        return 0
    if d.kind != BODY_CHUNKED:
        d.done = True
        length[0] = 0
        consumed[0] = 0
        return 1

    state = d.chunk_state
    while src < n:
        if state == CHUNK_DATA:
            left = d.chunk_left
            take = n - src
            if <uint64_t>take > left:
                take = <size_t>left
            if dst != src:
                memmove(buf + dst, buf + src, take)
            dst += take
            src += take
            d.chunk_left = left - take
            if d.chunk_left == 0:
                state = CHUNK_DATA_CR
            continue
        c = <unsigned char>buf[src]
        if state == CHUNK_SIZE_START or state == CHUNK_SIZE:
            v = _HEX[c]
            if v >= 0:
                if d.chunk_left > (UINT64_MAX >> 4):
                    d.chunk_state = state
                    return _chunk_fail(d, E_CODEC, length, dst, consumed, src)
                d.chunk_left = (d.chunk_left << 4) | <uint64_t>v
                state = CHUNK_SIZE
            elif state == CHUNK_SIZE_START:
                d.chunk_state = state
                return _chunk_fail(d, E_CODEC, length, dst, consumed, src)
            elif c == b'\r':
                state = CHUNK_SIZE_LF
            elif c == b';' or c == b' ' or c == b'\t':
                state = CHUNK_EXT
            else:
                d.chunk_state = state
                return _chunk_fail(d, E_CODEC, length, dst, consumed, src)
        elif state == CHUNK_EXT:
            if c == b'\r':
                state = CHUNK_SIZE_LF
            elif c == b'\n':
                d.chunk_state = state
                return _chunk_fail(d, E_CODEC, length, dst, consumed, src)
        elif state == CHUNK_SIZE_LF:
            if c != b'\n':
                d.chunk_state = state
                return _chunk_fail(d, E_CODEC, length, dst, consumed, src)
            state = CHUNK_DATA if d.chunk_left > 0 else CHUNK_TRAILER_START
        elif state == CHUNK_DATA_CR:
            if c != b'\r':
                d.chunk_state = state
                return _chunk_fail(d, E_CODEC, length, dst, consumed, src)
            state = CHUNK_DATA_LF
        elif state == CHUNK_DATA_LF:
            if c != b'\n':
                d.chunk_state = state
                return _chunk_fail(d, E_CODEC, length, dst, consumed, src)
            state = CHUNK_SIZE_START
        else:
            # Trailer section: "name: value" lines ended by CRLF (or a bare LF, as Envoy
            # accepts), then an empty line.  Names are tokens, values without control
            # characters, no obs-fold.
            d.trailer_bytes += 1
            if d.trailer_bytes > d.max_trailer_bytes:
                d.chunk_state = state
                return _chunk_fail(d, E_TOO_LARGE, length, dst, consumed, src)
            if state == CHUNK_TRAILER_START:
                if c == b'\r':
                    state = CHUNK_FINAL_LF
                elif c == b'\n':
                    src += 1
                    state = CHUNK_DONE
                    break
                elif _TOKEN[c]:
                    state = CHUNK_TRAILER_NAME
                else:
                    d.chunk_state = state
                    return _chunk_fail(d, E_CODEC, length, dst, consumed, src)
            elif state == CHUNK_TRAILER_NAME:
                if c == b':':
                    state = CHUNK_TRAILER_VALUE
                elif not _TOKEN[c]:
                    d.chunk_state = state
                    return _chunk_fail(d, E_CODEC, length, dst, consumed, src)
            elif state == CHUNK_TRAILER_VALUE:
                if c == b'\r':
                    state = CHUNK_TRAILER_LF
                elif c == b'\n':
                    state = CHUNK_TRAILER_START
                elif not _VALUE[c]:
                    d.chunk_state = state
                    return _chunk_fail(d, E_INVALID_CHARS, length, dst, consumed, src)
            elif state == CHUNK_TRAILER_LF:
                if c != b'\n':
                    d.chunk_state = state
                    return _chunk_fail(d, E_INVALID_CHARS, length, dst, consumed, src)
                state = CHUNK_TRAILER_START
            elif state == CHUNK_FINAL_LF:
                if c != b'\n':
                    d.chunk_state = state
                    return _chunk_fail(d, E_CODEC, length, dst, consumed, src)
                src += 1
                state = CHUNK_DONE
                break
            else:
                d.chunk_state = state
                return _chunk_fail(d, E_CODEC, length, dst, consumed, src)
        src += 1

    d.chunk_state = state
    length[0] = dst
    consumed[0] = src
    if state == CHUNK_DONE:
        d.done = True
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# Python-visible wrapper, for tests and fuzzing only (allocates freely).

MAX_HEADERS_COUNT = FP_MAX_HEADERS_COUNT
RESULT_INCOMPLETE = PARSE_INCOMPLETE
RESULT_ERROR = PARSE_ERROR
RESULT_TOO_LARGE = PARSE_TOO_LARGE
RESULT_NOT_IMPLEMENTED = PARSE_NOT_IMPLEMENTED
RESULT_TOO_MANY_HEADERS = PARSE_TOO_MANY_HEADERS
KIND_NONE = BODY_NONE
KIND_LENGTH = BODY_LENGTH
KIND_CHUNKED = BODY_CHUNKED
KIND_EOF = BODY_EOF


cdef bytes _slice(const char *base, const char *p, size_t n):
    if p == NULL:
        return None
    return p[:n] if n else b""


cdef list _headers_list(const phr_header *headers, size_t num):
    cdef size_t i
    out = []
    for i in range(num):
        out.append((_slice(NULL, headers[i].name, headers[i].name_len),
                     _slice(NULL, headers[i].value, headers[i].value_len)))
    return out


def parse_request(bytes data, size_t max_header_bytes=60 * 1024):
    """Parse a request head.  Returns a dict: "rc" (head length or a RESULT_* code), "error"
    (the response-code detail, or None) and, when rc > 0, the parsed fields."""
    cdef RequestHead head
    cdef const char *buf = data
    cdef size_t n = len(data)
    cdef int rc
    with nogil:
        rc = parse_request_head(buf, n, max_header_bytes, &head)
    res = {"rc": rc, "error": head.error.decode() if head.error != NULL else None}
    if rc <= 0:
        return res
    res.update(
        method=_slice(buf, head.method, head.method_len),
        path=_slice(buf, head.path, head.path_len),
        target=_slice(buf, head.target, head.target_len),
        authority=_slice(buf, head.authority, head.authority_len),
        version=(1, head.minor_version),
        headers=_headers_list(head.headers, head.num_headers),
        body_kind=head.body_kind,
        content_length=head.content_length,
        keep_alive=bool(head.keep_alive),
        expect_continue=bool(head.expect_continue),
        upgrade=bool(head.upgrade),
        is_head=bool(head.is_head),
        is_connect=bool(head.is_connect),
        host_index=head.host_index,
        upgrade_index=head.upgrade_index,
        te_index=head.te_index,
    )
    return res


def parse_response(bytes data, size_t max_header_bytes=60 * 1024, bint is_head_request=False):
    """Parse a response head; the same shape of dict as parse_request."""
    cdef ResponseHead head
    cdef const char *buf = data
    cdef size_t n = len(data)
    cdef int rc
    with nogil:
        rc = parse_response_head(buf, n, max_header_bytes, is_head_request, &head)
    res = {"rc": rc, "error": head.error.decode() if head.error != NULL else None}
    if rc <= 0:
        return res
    res.update(
        status=head.status,
        reason=_slice(buf, head.reason, head.reason_len),
        version=(1, head.minor_version),
        headers=_headers_list(head.headers, head.num_headers),
        body_kind=head.body_kind,
        content_length=head.content_length,
        keep_alive=bool(head.keep_alive),
        upgrade=bool(head.upgrade),
        te_index=head.te_index,
    )
    return res


def forwarded_headers(bytes data, bint keep_upgrade=False):
    """Parse a request head and return the headers a proxy forwards (hop-by-hop ones dropped)."""
    cdef RequestHead head
    cdef const char *buf = data
    cdef size_t i
    rc = parse_request_head(buf, len(data), len(data) + 1, &head)
    if rc <= 0:
        raise ValueError(head.error.decode() if head.error != NULL else "incomplete")
    out = []
    for i in range(head.num_headers):
        if not is_hop_by_hop(head.headers, head.num_headers, i, keep_upgrade):
            out.append((_slice(buf, head.headers[i].name, head.headers[i].name_len),
                        _slice(buf, head.headers[i].value, head.headers[i].value_len)))
    return out


def bench_parse_request(bytes data, long iterations=100000):
    """Seconds per parse_request_head call on `data` (no Python work inside the loop)."""
    import time
    cdef RequestHead head
    cdef const char *buf = data
    cdef size_t n = len(data)
    cdef long i
    cdef int rc = 0
    t0 = time.perf_counter()
    with nogil:
        for i in range(iterations):
            rc = parse_request_head(buf, n, 65536, &head)
    t1 = time.perf_counter()
    if rc <= 0:
        raise ValueError(head.error.decode() if head.error != NULL else "incomplete")
    return (t1 - t0) / iterations


def bench_decode_chunked(bytes data, long iterations=10000):
    """Seconds per body_decode call decoding `data` (a whole chunked body) in place."""
    import time
    cdef BodyDecoder d
    cdef bytearray work = bytearray(data)
    cdef char *buf = work
    cdef const char *src = data
    cdef size_t n = len(data), length, consumed
    cdef long i
    cdef int rc = 0
    t0 = time.perf_counter()
    with nogil:
        for i in range(iterations):
            memmove(buf, src, n)
            body_decoder_init(&d, BODY_CHUNKED, -1)
            length = n
            rc = body_decode(&d, buf, &length, &consumed)
    t1 = time.perf_counter()
    if rc != 1:
        raise ValueError("not a complete chunked body")
    return (t1 - t0) / iterations


class BodyError(ValueError):
    """A framing error in a body; args[0] is the response-code detail."""


cdef class BodyReader:
    """Feed body bytes piece by piece.  feed() returns (decoded bytes, done, leftover bytes)
    where leftover is what followed the end of the body in that piece."""
    cdef BodyDecoder dec

    def __init__(self, int kind, int64_t content_length=-1, size_t max_trailer_bytes=0):
        body_decoder_init(&self.dec, kind, content_length)
        if max_trailer_bytes:
            self.dec.max_trailer_bytes = max_trailer_bytes

    @property
    def done(self):
        return bool(self.dec.done)

    def feed(self, bytes piece):
        cdef bytearray work = bytearray(piece)
        cdef char *buf = work
        cdef size_t length = len(work), consumed = 0, n = len(work)
        cdef int rc
        with nogil:
            rc = body_decode(&self.dec, buf, &length, &consumed)
        if rc < 0:
            raise BodyError(self.dec.error.decode(), consumed)
        if consumed > n or length > consumed:
            raise AssertionError("decoder accounting broken")
        return bytes(work[:length]), rc == 1, bytes(work[consumed:n])


def decode_body(int kind, int64_t content_length, chunks):
    """Decode a body delivered as `chunks` (a list of bytes).  Returns (body, complete,
    leftover): leftover holds every byte after the end of the body (the rest of the piece in
    which it ended, and any later pieces).  Raises BodyError on a framing error."""
    reader = BodyReader(kind, content_length)
    body = []
    leftover = []
    complete = reader.done
    for piece in chunks:
        if complete:
            leftover.append(piece)
            continue
        data, complete, rest = reader.feed(piece)
        body.append(data)
        if rest:
            leftover.append(rest)
    return b"".join(body), complete, b"".join(leftover)
