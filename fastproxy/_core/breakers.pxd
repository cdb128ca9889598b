# Circuit breakers of a cluster (envoy.config.cluster.v3.CircuitBreakers), per priority, shared
# by all workers (counters in shared memory, atomic updates).  Each try_* that returns True must
# be paired with its release_*; False means the threshold is reached (an overflow).
#
# `priority` is the request's routing priority (envoy.config.core.v3.RoutingPriority: 0 DEFAULT,
# 1 HIGH; any other value counts as DEFAULT), not the host's load-balancing priority.

from libc.stdint cimport int64_t

cdef class CircuitBreakers:
    cdef bint try_connection(self, int priority) noexcept
    cdef void release_connection(self, int priority) noexcept
    cdef bint try_pending(self, int priority) noexcept
    cdef void release_pending(self, int priority) noexcept
    cdef bint try_request(self, int priority) noexcept
    cdef void release_request(self, int priority) noexcept
    cdef bint try_retry(self, int priority) noexcept
    cdef void release_retry(self, int priority) noexcept

# Indexes of the four counts kept per priority (fastproxy/stats/limits.py has the block layout).
cdef enum:
    CB_CX = 0
    CB_PENDING = 1
    CB_RQ = 2
    CB_RETRY = 3

cdef class SharedCircuitBreakers(CircuitBreakers):
    cdef int64_t *totals[2]         # per priority: the four counts all workers share
    cdef int64_t *mine[2]           # per priority: this worker's part of them
    cdef int64_t limits[2][4]       # max_connections, max_pending_requests, max_requests, max_retries
    cdef double budget_percent[2]   # retry_budget, < 0 when not set
    cdef int64_t min_retry_concurrency[2]
    cdef int64_t local[16]          # the counts when no shared block is available
    cdef void *mapping
    cdef size_t mapping_size
    cdef readonly bint shared       # counting in the shared block (else in this process only)
    cdef bint _try(self, int priority, int what) noexcept
    cdef void _release(self, int priority, int what) noexcept
