# Access logs (envoy.access_loggers.file / stdout): the connection layer fills an
# AccessLogEntry per request and hands it to each AccessLog of its connection manager when the
# request ends.  Response flags are a bitmask here and Envoy's short codes in the log.

from libc.stdint cimport int64_t

# Response flags (Envoy's StreamInfo::CoreResponseFlag, in Envoy's order for the short string)
cdef enum:
    RF_LR = 1 << 0     # local reset
    RF_UH = 1 << 1     # no healthy upstream
    RF_UT = 1 << 2     # upstream request timeout
    RF_LH = 1 << 3     # failed local health check (unused)
    RF_UF = 1 << 4     # upstream connection failure
    RF_UC = 1 << 5     # upstream connection termination
    RF_UO = 1 << 6     # upstream overflow (circuit breaker)
    RF_NR = 1 << 7     # no route
    RF_DI = 1 << 8     # delay injected (unused)
    RF_FI = 1 << 9     # fault injected (unused)
    RF_RL = 1 << 10    # rate limited (local rate limit)
    RF_UAEX = 1 << 11  # unauthorized external service (unused)
    RF_RLSE = 1 << 12  # rate limit service error (unused)
    RF_DC = 1 << 13    # downstream connection termination
    RF_URX = 1 << 14   # upstream retry limit exceeded
    RF_SI = 1 << 15    # stream idle timeout
    RF_IH = 1 << 16    # invalid envoy request headers (unused)
    RF_DPE = 1 << 17   # downstream protocol error
    RF_UMSDR = 1 << 18 # upstream max stream duration reached
    RF_RFCF = 1 << 19  # response from cache filter (unused)
    RF_NFCF = 1 << 20  # no filter config found (unused)
    RF_DT = 1 << 21    # duration timeout (max_stream_duration)
    RF_UPE = 1 << 22   # upstream protocol error
    RF_NC = 1 << 23    # no cluster found
    RF_OM = 1 << 24    # overload manager (unused)

cdef class AccessLogEntry:
    cdef public double start_time         # wall clock, seconds since the epoch
    cdef public double duration           # seconds from the first byte of the request to the end
    cdef public int response_code         # 0 when no response was sent
    cdef public int flags                 # RF_* bits
    cdef public list flag_order           # the RF_* bits in the order they were set (Envoy
                                          # prints them so), or None for the bits' order
    cdef public int64_t bytes_received    # request body bytes
    cdef public int64_t bytes_sent        # response body bytes
    cdef public bytes protocol            # b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2"
    cdef public dict request_headers      # wanted request headers: lower-case name -> value
                                          # (":method", ":path", ":authority" included)
    cdef public object upstream_service_time  # ms (int) or None
    cdef public bytes upstream_host       # b"ip:port" or None
    cdef public object upstream_cluster   # str or None
    cdef public bytes downstream_remote_address  # b"ip:port"
    cdef public bytes downstream_local_address   # b"ip:port"
    cdef public object route_name         # str
    cdef public object response_code_details  # str or None (e.g. "via_upstream")

cdef class AccessLog:
    # Lower-case request header names the format reads (":method", ":path", ":authority" and
    # "x-envoy-original-path" included when used); the connection copies only these.
    cdef public tuple wanted
    cpdef log(self, AccessLogEntry entry)
