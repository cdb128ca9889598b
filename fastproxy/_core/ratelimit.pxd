# HTTP filters that run before the router on each request.  This release has one:
# envoy.filters.http.local_ratelimit (a token bucket per route, virtual host or connection
# manager, shared by all workers).

from fastproxy._core.http1 cimport RequestHead
from fastproxy._core.router cimport RouteDecision

cdef class RequestFilters:
    # Run on a routed request.  Returns 0 to go on; otherwise the status of a local reply, with
    # `reply_body` and `reply_headers` (list of (name bytes, value bytes)) set for it.
    cdef int on_request(self, RequestHead *head, RouteDecision d) except -1
    # Headers to add to the response of the request on_request just let through (or None).
    cdef list response_headers(self, RouteDecision d)
    cdef public bytes reply_body
    cdef public list reply_headers
