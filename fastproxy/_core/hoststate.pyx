"""Host health and outlier ejection shared across workers (see hoststate.pxd).

This base class is what a cluster without health checking or outlier detection gets: every host
is healthy, reports are ignored.
"""
from fastproxy._core.lb cimport LoadBalancer


cdef class HostState:
    cpdef set_hosts(self, list hosts):
        pass

    cdef void report_response(self, int host, int status) noexcept:
        pass

    cdef void report_local_failure(self, int host, int kind) noexcept:
        pass

    cdef int poll(self, LoadBalancer lb) except -1:
        return 0


def make_host_state(cluster_model, str shm_path, int worker_index):
    """The HostState for a cluster in a worker, or None when nothing is configured."""
    return None
