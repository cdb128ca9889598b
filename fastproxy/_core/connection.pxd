# Connections of one worker: downstream HTTP/1.1 connections (uvloop protocols), the stream that
# carries one request through the router, upstream connections and their per-host keep-alive pool.

from libc.stdint cimport int64_t, uint64_t, uint32_t, uint8_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from fastproxy._core.http1 cimport RequestHead, ResponseHead, BodyDecoder
from fastproxy._core.router cimport RouteTable, RouteDecision
from fastproxy._core.lb cimport LoadBalancer
from fastproxy._core.stats cimport StatsSlot
from fastproxy._core.hoststate cimport HostState
from fastproxy._core.breakers cimport CircuitBreakers
from fastproxy._core.ratelimit cimport RequestFilters

# The monotonic clock of the data plane (seconds), for activity times and timeouts.
cdef inline double now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


# UpstreamConnection.state
cdef enum:
    U_CONNECTING = 0
    U_IDLE = 1
    U_HEAD = 2
    U_BODY = 3
    U_TUNNEL = 4
    U_CLOSED = 5

# Stream.grpc_web: a gRPC-Web request (envoy.filters.http.grpc_web), as flags
cdef enum:
    GW_ON = 1          # content-type application/grpc-web[-text][+proto]: sent upstream as gRPC
    GW_TEXT_IN = 2     # -text: the request body is base64, decoded on its way
    GW_TEXT_OUT = 4    # accept: application/grpc-web-text[+proto]: the response is base64'd
    GW_TRANSFORM = 8   # the answer is not gRPC: its body became grpc-status/grpc-message headers


# envoy.filters.http.grpc_stats: where a body is in its length-prefixed gRPC frames
cdef struct GrpcFrames:
    uint32_t remaining          # payload bytes of the current frame still to pass
    uint32_t length             # the length being read from a frame header
    uint8_t hdr                 # 0: at a frame's flag byte; 1..4: reading its length bytes
    uint8_t stopped             # (responses) a Connect end-of-stream frame: count no more


cdef struct OutBuf:
    char *data
    size_t length
    size_t capacity


cdef class ListenerRuntime:
    cdef Worker worker
    cdef object model
    cdef RouteTable routes
    cdef int listener_base
    cdef int http_base
    cdef size_t max_header_bytes
    cdef bint use_remote_address
    cdef int xff_num_trusted_hops
    cdef bint generate_request_id
    cdef double idle_timeout
    cdef double stream_idle_timeout
    cdef double request_timeout
    cdef double min_route_idle       # smallest route idle_timeout, for the sweep's period
    cdef double max_stream_duration  # common_http_protocol_options.max_stream_duration
    cdef bint enable_trailers        # http_protocol_options.enable_trailers (HTTP/1 clients)
    cdef size_t buffer_limit
    cdef bytes server_name
    cdef frozenset upgrade_types
    cdef int codec                  # 0 AUTO (HTTP/1, or HTTP/2 on its preface), 1 HTTP1, 2 HTTP2
    cdef RequestFilters filters     # HTTP filters before the router, None when there are none
    cdef list access_logs           # AccessLog objects, None when there are none
    cdef tuple log_wanted           # request headers the access logs read
    cdef bint grpc_web             # envoy.filters.http.grpc_web in the filter chain
    cdef bint grpc_web_after_rl    # ... after local_ratelimit (whose 429s it then never sees)
    cdef bint grpc_stats           # envoy.filters.http.grpc_stats in the filter chain
    cdef bint gs_before_rl         # ... before local_ratelimit (it counts the 429s of gRPC calls)
    cdef bint gs_after_gw          # ... after grpc_web (it counts gRPC-Web calls as gRPC)
    cdef dict gs_allow             # b"service/method" of its allowlist -> index into each
                                   # ClusterRuntime.grpc_method_bases; None without allowlist
    cdef object server


cdef class UpstreamPool:
    """A multiplexed (HTTP/2) pool: hands out per-request stream objects that behave as
    UpstreamConnections towards the request path (h2upstream.H2Pool)."""
    # A stream on a connected connection with room, or None.
    cdef UpstreamConnection ready_stream(self, int host)
    # A stream on a connecting or new connection (never None: over the limits, the least busy
    # connection takes it and the codec queues it).
    cdef UpstreamConnection open_stream(self, int host, int priority)
    cdef void set_hosts(self, list hosts)
    cdef void close(self)


cdef class ClusterRuntime:
    cdef Worker worker
    cdef readonly str name
    cdef object model
    cdef LoadBalancer lb
    cdef list hosts            # list of (address, port) for each LB host index
    cdef list host_authority   # bytes "addr:port" per host, for auto_host_rewrite
    cdef list idle             # per host: list of idle UpstreamConnection (LIFO)
    cdef int base              # stats block base
    cdef double connect_timeout
    cdef size_t buffer_limit
    cdef object keepalive
    cdef object dns_task
    cdef list priorities       # priority of each LB host
    cdef list waiting          # per host: streams waiting for a connection (max_connections)
    cdef HostState state       # shared health / outlier state, None when not configured
    cdef CircuitBreakers breakers  # None when the cluster has no limits
    cdef UpstreamPool h2pool       # HTTP/2 upstream (multiplexed pool), or None for HTTP/1.1
    cdef int grpc_base             # cluster.<name>.grpc.* (grpc_stats), -1 without the filter
    cdef list grpc_method_bases    # cluster.<name>.grpc.<service>.<method>.* by method index

    cdef dict conn_count       # connections (open or opening) per host address
    cdef UpstreamConnection get_idle(self, int host)
    cdef UpstreamConnection new_connection(self, int host, int priority)
    cdef void release(self, UpstreamConnection c)
    cdef void connection_closed(self, UpstreamConnection c)


cdef class Stream:
    cdef DownstreamConnection downstream
    cdef UpstreamConnection upstream
    cdef ClusterRuntime cluster
    cdef RouteDecision decision
    cdef int host
    cdef bint keep_alive
    cdef bint is_head
    cdef bint request_complete
    cdef bint response_started
    cdef bint response_complete
    cdef bint upgrade
    cdef bint downstream_chunked    # re-framing the response as chunked for the client
    cdef int status
    cdef double start_time
    cdef double deadline        # route timeout (in the worker's timer wheel); 0 = not armed
    cdef list pending_writes        # upstream writes queued while connecting
    cdef int64_t request_remaining  # request body bytes still to forward (content-length)
    cdef bint request_chunked
    cdef bint waiting           # queued for a connection (circuit breaker max_connections)
    cdef bint pending           # no ready connection yet (max_pending_requests, pending stats)
    cdef bint holds_request     # holds a breakers.try_request slot
    cdef list response_headers  # headers request filters add to the response, or None
    # retries (route retry_policy)
    cdef object retry           # model.RetryPolicy, or None
    cdef object retry_on        # frozenset of conditions
    cdef int retries_left
    cdef int attempt            # 1 for the first try
    cdef int64_t per_try_ms
    cdef bytes head_bytes       # the upstream head, kept for a retry
    cdef list replay            # body bytes sent so far, kept for a retry; None = cannot replay
    cdef size_t replay_size
    cdef list tried             # hosts tried, for the previous_hosts predicate
    cdef object per_try_timer
    cdef object per_try_idle_timer
    cdef object retry_timer
    cdef bint holds_retry
    cdef int priority           # the route's RoutingPriority (circuit breaker thresholds)
    cdef int internal           # -1 unknown, 0 external, 1 internal request
    cdef double idle_timeout    # stream idle timeout (the route's idle_timeout or the HCM's)
    cdef object duration_timer  # max_stream_duration
    cdef list hedges            # earlier attempts still running (hedge_on_per_try_timeout)
    # access logging (only filled when the connection manager has access logs)
    cdef int flags              # response flags (accesslog.pxd RF_*), always kept
    cdef int64_t bytes_received
    cdef int64_t bytes_sent
    cdef double wall_start
    cdef dict log_headers
    cdef bytes upstream_address # b"ip:port" of the host the request went to last
    cdef list flag_order        # response flags in the order they were set (None: none yet)
    cdef int fail_flag          # the flag of the last attempt's failure, set if it is final
    # HTTP/2 trailers travel beside the HTTP/1 bytes of the bridges: (name, value) lists
    cdef list request_trailers  # from an HTTP/2 client, for an HTTP/2 upstream
    cdef list response_trailers # from an HTTP/2 upstream, for an HTTP/2 client
    cdef bint grpc              # content-type application/grpc*: local replies are gRPC errors
    cdef int grpc_status        # a local reply's grpc-status when not derived from the HTTP one
    cdef int64_t grpc_timeout   # the grpc-timeout (ms) to send upstream in place of the
                                # client's (max_grpc_timeout / max_stream_duration), or -1
    cdef int grpc_web           # GW_* flags of a gRPC-Web request (0: not one); grpc is then
                                # set too (the router sees application/grpc)
    cdef object gw              # GrpcWebState of a gRPC-Web request (codec state), or None
    # envoy.filters.http.grpc_stats: the stats block a gRPC call is counted in (-1: it is not
    # one the filter counts), whether its answer is gRPC (its frames are counted), and where
    # the request and response bodies are in their frames
    cdef int gs_base
    cdef bint gs_resp
    cdef GrpcFrames gs_req
    cdef GrpcFrames gs_rsp

    cdef void reset(self)


cdef class DownstreamConnection:
    cdef ListenerRuntime listener
    cdef Worker worker
    cdef object transport
    cdef object write
    cdef bytearray buf               # unparsed input (partial head, pipelined requests, body)
    cdef int state
    cdef Stream stream
    cdef BodyDecoder body
    cdef bytes remote_ip
    cdef bint closing
    cdef bint read_paused
    cdef bint write_paused
    cdef double last_activity
    cdef int minor_version
    cdef bint sniffed               # codec AUTO: the first bytes were checked for the h2 preface

    cdef int _process(self) except -1
    cdef int _received(self, bytes data) except -1
    cdef bint _sniff_h2(self, bytes data) except -1
    cdef void _codec_error(self, int rc)
    cdef int _on_request_head(self, const char *data, size_t length, int head_len) except -1
    cdef void _consume(self, Py_ssize_t n)
    cdef bytes _serialize_request(self, RequestHead *head, RouteDecision d,
                                  ClusterRuntime cluster, int host)
    cdef bytes _remote_ip(self)
    cdef int _on_request_body(self) except -1
    cdef void _request_complete(self)
    cdef int _forward_upstream(self, object data) except -1
    cdef void _attach_upstream(self, UpstreamConnection up)
    cdef int _send_to_host(self, ClusterRuntime c, int host, list writes) except -1
    cdef void _end_pending(self)
    cdef void _upstream_failed(self, int status, bytes body)
    cdef void _attempt_failed(self, int kind, int status, bytes body)
    cdef bint _retriable_status(self, int status)
    cdef bint _retry(self)
    cdef void _start_per_try_timer(self)
    cdef void _drop_hedges(self)
    cdef bint _request_internal(self, RequestHead *head)
    cdef double _grpc_timeout(self, RequestHead *head, action, double duration,
                              RouteDecision d) except? -2
    cdef int _setup_retry(self, RequestHead *head, RouteDecision d) except -1
    cdef int _pick_host(self, ClusterRuntime cluster, RouteDecision d, list avoid) except -2
    cdef void _stream_stats_end(self, int status)
    cdef int _local_reply(self, int status, bytes body, bint close, list extra,
                          tuple ops=*) except -1
    cdef int _put_reply_tail(self, OutBuf *b, bint close) except -1
    cdef int _grpc_local_reply(self, int status, bytes body, bint close, list extra,
                               tuple ops) except -1
    cdef int _grpc_web_local_reply(self, int status, bytes body, bint close, list extra,
                                   tuple ops) except -1
    cdef bint _grpc_web_decode(self, size_t length, bint last) except -1
    cdef void _write(self, bytes data)
    cdef void _write_chunk(self, bytes piece)
    cdef void _write_last_chunk(self)
    cdef int _finish_stream(self) except -1
    cdef void _abort_stream(self)
    cdef void _write_access_log(self)
    cdef void _close(self)


cdef class UpstreamConnection:
    cdef ClusterRuntime cluster
    cdef int host
    cdef object transport
    cdef object write
    cdef Stream stream
    cdef bytearray buf
    cdef int state
    cdef BodyDecoder body
    cdef bint keep_alive
    cdef bint connected
    cdef bint closed
    cdef object connect_timer
    cdef int64_t requests
    cdef bint counted           # holds a breakers.try_connection slot
    cdef bint accounted         # its close has been accounted by the cluster
    cdef int priority           # the priority of the request that opened it
    cdef readonly object address
    cdef double last_activity

    cdef void start_connect(self)
    cdef void _connect_failed(self, str reason)
    cdef void attach(self, Stream s)
    cdef void send(self, object data)
    cdef int _on_response_head(self, const char *data, size_t length, int head_len) except -1
    cdef int _on_response_body(self, object data) except -1
    cdef int _grpc_web_body(self, object data) except -1
    cdef int _grpc_web_data(self, bytes payload, bint done) except -1
    cdef void _finish_body_eof(self)
    cdef int _start_tunnel(self) except -1
    cdef int _response_done(self) except -1
    cdef void _fail(self, str reason, int status=*)
    cdef void _close_transport(self)
    cdef int _received(self, bytes data) except -1


cdef set_keepalive(sock, ka)
# Open an upstream connection for `protocol`; the connect timeout's handle (or None).
cdef object start_connect(ClusterRuntime c, object protocol, object address, object done,
                          object timed_out)
cdef void count_connect_failure(ClusterRuntime c, bint timeout) noexcept


cdef class Worker:
    cdef object loop
    cdef object bootstrap
    cdef object layout
    cdef StatsSlot stats
    cdef int64_t *values
    cdef readonly dict clusters
    cdef readonly list listeners
    cdef list ports
    cdef set connections
    cdef RequestHead *req_head
    cdef ResponseHead *resp_head
    cdef OutBuf out
    cdef uint64_t rng[2]
    cdef bint draining
    cdef object sweeper
    cdef object health_timer
    # Route timeouts: a hashed timing wheel of 256 slots of WHEEL_TICK seconds.  Arming is a list
    # append; cancelling is clearing Stream.deadline (the entry is dropped when its slot comes up).
    cdef list wheel
    cdef int64_t wheel_tick     # last tick processed
    cdef Py_ssize_t wheel_count
    cdef object wheel_handle
    cdef readonly str shm_path
    cdef readonly int index
    cdef bytes date_value
    cdef double date_time

    cdef uint64_t random(self) noexcept
    cdef void put_uuid4(self, OutBuf *b) except *
    cdef void arm_timeout(self, Stream s, double delay)
    cdef bytes date(self)
    cdef double _sweep_interval_c(self)
