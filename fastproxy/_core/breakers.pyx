"""Circuit breakers (see breakers.pxd).  This base class never trips."""


cdef class CircuitBreakers:
    cdef bint try_connection(self, int priority) noexcept:
        return True

    cdef void release_connection(self, int priority) noexcept:
        pass

    cdef bint try_pending(self, int priority) noexcept:
        return True

    cdef void release_pending(self, int priority) noexcept:
        pass

    cdef bint try_request(self, int priority) noexcept:
        return True

    cdef void release_request(self, int priority) noexcept:
        pass

    cdef bint try_retry(self, int priority) noexcept:
        return True

    cdef void release_retry(self, int priority) noexcept:
        pass


def make_circuit_breakers(cluster_model, str shm_path, int worker_index):
    """The CircuitBreakers for a cluster in a worker, or None (no limits)."""
    return None
