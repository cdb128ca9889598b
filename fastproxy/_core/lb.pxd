# Load balancers: picks in C over per-cluster host arrays (csrc/fp_lb.c), rebuilt on membership
# change, never per request.

cdef extern from "fp_lb.h" nogil:
    ctypedef struct fp_lb_t:
        pass

cdef class LoadBalancer:
    cdef fp_lb_t *lb
    cdef readonly int num_hosts
    # Pick a host; returns its index into the cluster's host list, or -1 when none is available.
    cdef int pick(self) noexcept
    # Least-request bookkeeping (no-ops for other policies).
    cdef void request_started(self, int host) noexcept
    cdef void request_finished(self, int host) noexcept
