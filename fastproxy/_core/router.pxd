# Route table: virtual-host selection and route matching compiled once per config, evaluated per
# request against a parsed RequestHead without creating Python objects on the common path.

from libc.stdint cimport int64_t, uint64_t
from fastproxy._core.http1 cimport RequestHead

cdef enum:
    ACTION_NONE = 0            # no virtual host or no route matched: 404 (NR)
    ACTION_ROUTE = 1           # forward to decision.cluster
    ACTION_REDIRECT = 2        # answer decision.status with decision.location
    ACTION_DIRECT_RESPONSE = 3 # answer decision.status with decision.body
    ACTION_NO_CLUSTER = 4      # cluster_header absent/empty: Envoy's answer for that case

cdef class HeaderOps:
    # Header mutations of one level and direction, compiled.
    cdef readonly tuple remove   # lower-case bytes names
    cdef readonly tuple add      # (lower-case name bytes, value bytes, append_action int, keep_empty bool)

cdef class RouteEntry:
    # One compiled route (matcher + action); built once per config.
    pass

cdef class RouteDecision:
    # The result of routing one request; the connection keeps one per stream and reuses it.
    cdef public int action
    cdef public object cluster          # str cluster name (ACTION_ROUTE)
    cdef public bytes path              # path to send upstream; None = unchanged
    cdef public bytes host              # authority to send upstream; None = unchanged
    cdef public int64_t timeout_ms      # route timeout, 0 = none
    cdef public tuple request_ops       # HeaderOps to apply, in Envoy's order
    cdef public tuple response_ops      # HeaderOps to apply to the response, in Envoy's order
    cdef public int status              # redirect / direct response status
    cdef public bytes location          # redirect Location
    cdef public bytes body              # direct response body (None = empty)
    cdef public object route_name

cdef class RouteTable:
    cdef object config                  # the model.RouteConfiguration it was built from
    # Fill `out` for this request; returns out.action.  `is_tls` picks the scheme for redirects.
    cdef int route(self, RequestHead *head, RouteDecision out, bint is_tls, uint64_t random) except -1
