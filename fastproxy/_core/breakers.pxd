# Circuit breakers of a cluster (envoy.config.cluster.v3.CircuitBreakers), per priority, shared
# by all workers (counters in shared memory, atomic updates).  Each try_* that returns True must
# be paired with its release_*; False means the threshold is reached (an overflow).

cdef class CircuitBreakers:
    cdef bint try_connection(self, int priority) noexcept
    cdef void release_connection(self, int priority) noexcept
    cdef bint try_pending(self, int priority) noexcept
    cdef void release_pending(self, int priority) noexcept
    cdef bint try_request(self, int priority) noexcept
    cdef void release_request(self, int priority) noexcept
    cdef bint try_retry(self, int priority) noexcept
    cdef void release_retry(self, int priority) noexcept
