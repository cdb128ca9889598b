# Host state shared by all workers of a cluster: active health-check results and outlier
# ejections, decided once (health checks run in the main process; outlier detection aggregates
# what every worker reports) and applied to each worker's load balancer.

from fastproxy._core.lb cimport LoadBalancer

# report_local_failure kinds (Envoy's local-origin events)
cdef enum:
    LOCAL_CONNECT_FAILED = 1
    LOCAL_CONNECT_TIMEOUT = 2
    LOCAL_RESET = 3
    LOCAL_REQUEST_TIMEOUT = 4

cdef class HostState:
    # Called by the worker when its host set changes (start-up, DNS refresh): hosts are
    # (address, port) tuples in the load balancer's index order.
    cpdef set_hosts(self, list hosts)
    # An upstream answered host `host` with `status` (after the head arrived).
    cdef void report_response(self, int host, int status) noexcept
    # A local-origin failure talking to `host` (see the kinds above).
    cdef void report_local_failure(self, int host, int kind) noexcept
    # Apply shared health/ejection changes to this worker's balancer; called every ~100 ms and
    # cheap when nothing changed.  Returns 1 if the balancer changed.
    cdef int poll(self, LoadBalancer lb) except -1
