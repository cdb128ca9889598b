"""Request filters before the router (see ratelimit.pxd).  This base class lets all through."""
from fastproxy._core.http1 cimport RequestHead
from fastproxy._core.router cimport RouteDecision


cdef class RequestFilters:
    cdef int on_request(self, RequestHead *head, RouteDecision d) except -1:
        return 0

    cdef list response_headers(self, RouteDecision d):
        return None


def make_request_filters(hcm_model, str shm_path, int worker_index):
    """The RequestFilters for a connection manager in a worker, or None when it has none."""
    return None
