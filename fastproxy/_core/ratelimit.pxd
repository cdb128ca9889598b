# HTTP filters that run before the router on each request.  This release has one:
# envoy.filters.http.local_ratelimit (a token bucket per route, virtual host or connection
# manager, shared by all workers).

from libc.stdint cimport int64_t, uint64_t

from fastproxy._core.http1 cimport RequestHead
from fastproxy._core.router cimport RouteDecision

cdef class RequestFilters:
    # Run on a routed request (every action: route, direct response, redirect, and no route).
    # Returns 0 to go on; otherwise the status of a local reply, with `reply_body`,
    # `reply_headers` and `reply_late_headers` set for it.
    cdef int on_request(self, RequestHead *head, RouteDecision d) except -1
    # Headers to add to the response of the request on_request just let through (or None).
    # Envoy adds them last, after the route's response_headers_to_add (proxied responses), and
    # after content-type in local replies and direct responses.
    cdef list response_headers(self, RouteDecision d)
    cdef public bytes reply_body
    # Local reply headers, each a list of (name bytes, value bytes) or None:
    #   reply_headers       right after the status line (before content-length / content-type)
    #   reply_late_headers  after content-type, before date / server
    cdef public list reply_headers
    cdef public list reply_late_headers

# LocalRateLimit counters, in fastproxy.stats.names.LOCAL_RATE_LIMIT_STATS order.
cdef enum:
    RL_ENABLED = 0
    RL_ENFORCED = 1
    RL_OK = 2
    RL_RATE_LIMITED = 3
    RL_SHADOW_MODE = 4

cdef class LocalRateLimit:
    # One compiled LocalRateLimit config (the filter's, or a virtual host's or route's override).
    cdef int64_t *word              # the token bucket (fp_shared.h), NULL = no token bucket
    cdef int64_t *counters          # this worker's counters for the config's stat_prefix
    cdef double max_tokens
    cdef double rate_ns             # tokens per nanosecond
    cdef double fill_rate           # tokens per second
    cdef uint64_t enabled_num, enabled_den      # filter_enabled; den 0 = never
    cdef uint64_t enforced_num, enforced_den    # filter_enforced; den 0 = never
    cdef readonly int status
    cdef list headers_to_add        # response_headers_to_add, [(name, value)]
    cdef bint x_ratelimit_headers
    cdef bytes limit_value
    cdef int64_t local[16]          # bucket and counters when no shared block is available
    # descriptors: entries (tuple of (key bytes, value bytes)) -> DescriptorBucket; None = none
    cdef dict descriptors
    cdef list descriptor_list       # the DescriptorBuckets in config order
    cdef bint always_consume_default

    cdef list x_headers(self)

cdef class LocalRateLimitFilters(RequestFilters):
    cdef LocalRateLimit default     # the connection manager's filter config
    cdef dict by_route              # id(model.Route) -> LocalRateLimit
    cdef dict by_vhost              # virtual host name -> LocalRateLimit
    cdef dict by_entry              # RouteEntry -> LocalRateLimit (filled on first use)
    cdef list keep                  # the model.Route objects whose ids key by_route
    cdef LocalRateLimit last        # the config of the last request let through, for its headers
    cdef uint64_t rng
    cdef void *mapping
    cdef size_t mapping_size

    cdef dict policy_by_entry       # RouteEntry -> the rate_limits that apply (tuple, may be empty)
    cdef dict vhost_policies        # virtual host name -> its compiled rate_limits
    cdef list request_descriptors   # scratch: this request's descriptors
    cdef bint trust_xff             # use_remote_address false: the client is in x-forwarded-for
    cdef int xff_hops               # xff_num_trusted_hops
    cdef bytes _client_address(self, RequestHead *head, RouteDecision d)

    cdef LocalRateLimit lookup(self, RouteDecision d)
    cdef bint consume(self, LocalRateLimit lim, RequestHead *head, RouteDecision d) except -1
    cdef bint sample(self, uint64_t num, uint64_t den) noexcept
