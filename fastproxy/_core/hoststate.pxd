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


# ---- the shared implementation (fastproxy/_core/hoststate.pyx; C in csrc/fp_hoststate.c) ----

from libc.stdint cimport int64_t, uint8_t, uint64_t
from fastproxy._core.includes.fp_hoststate cimport fp_hs_cluster_t, fp_hs_config_t, fp_hs_host_t

# The shared mapping (created by the main process, opened by the workers).
cdef class SharedHostTable:
    cdef void *base
    cdef size_t size
    cdef readonly str path
    cdef fp_hs_cluster_t *cluster_at(self, int index) except NULL
    cdef fp_hs_host_t *_host(self, int ci, int slot) except NULL

# Outlier detection settings in the C layout (from config.health.OutlierDetection).
cdef class OutlierConfig:
    cdef fp_hs_config_t c

# What a worker's cluster with health checks or outlier detection gets.
cdef class SharedHostState(HostState):
    cdef SharedHostTable table
    cdef fp_hs_cluster_t *cluster
    cdef fp_hs_host_t **hosts
    cdef uint8_t *applied
    cdef int n
    cdef OutlierConfig config
    cdef LoadBalancer lb
    cdef uint64_t generation
    cdef int healthy_count
    cdef bint has_health_checks
    cdef uint64_t member_bit
    cdef int64_t window_ns
    cdef uint64_t rng
    cdef object stats_map
    cdef int64_t *stats
    cdef bint writes_gauges         # the first worker writes the cluster's gauges
    cdef list keys
    cdef int apply(self) except -1
    cdef void on_events(self, fp_hs_host_t *h, int events) noexcept
