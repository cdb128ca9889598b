# Load balancers: picks in C over per-cluster host arrays (csrc/fp_lb.c), rebuilt on membership
# change, never per request.

from libc.stdint cimport int32_t, uint32_t, uint64_t

cdef extern from "fp_lb.h" nogil:
    ctypedef struct fp_lb_t:
        pass

    enum:
        FP_LB_ROUND_ROBIN
        FP_LB_LEAST_REQUEST
        FP_LB_RANDOM
        FP_LB_RING_HASH
        FP_LB_MAGLEV
        FP_LB_DEFAULT_OVERPROVISIONING_FACTOR
        FP_LB_DEFAULT_PANIC_THRESHOLD
        FP_LB_DEFAULT_CHOICE_COUNT
        FP_LB_OK
        FP_LB_ENOMEM
        FP_LB_EPOLICY
        FP_LB_EWEIGHT
        FP_LB_EPRIORITY
        FP_LB_ECHOICES
        FP_LB_EBIAS
        FP_LB_ERING
        FP_LB_ETABLE
        FP_LB_EKEYS
        FP_LB_ELOCALITY
        FP_LB_MAX_PRIORITY

    ctypedef struct fp_lb_config_t:
        int policy
        uint64_t seed
        uint32_t choice_count
        double active_request_bias
        int bias_forces_weighted
        uint32_t overprovisioning_factor
        uint32_t panic_threshold
        uint64_t min_ring_size
        uint64_t max_ring_size
        int hash_function
        uint64_t table_size
        const char *const *host_keys
        const uint32_t *host_key_lens
        double slow_start_window
        double slow_start_aggression
        double slow_start_min_weight
        const double *host_start
        double now
        int manual_clock
        const uint32_t *host_locality
        const uint32_t *locality_weights
        uint32_t num_localities

    void fp_lb_config_init(fp_lb_config_t *config, int policy, uint64_t seed)
    fp_lb_t *fp_lb_new(const fp_lb_config_t *config, uint32_t num_hosts, const uint32_t *weights,
                       const uint32_t *priorities, int *err)
    void fp_lb_free(fp_lb_t *lb)
    int32_t fp_lb_pick(fp_lb_t *lb)
    int32_t fp_lb_pick_hash(fp_lb_t *lb, uint64_t hash)
    int fp_lb_uses_hash(const fp_lb_t *lb)
    uint64_t fp_lb_table_size(const fp_lb_t *lb, uint32_t priority)
    void fp_lb_request_started(fp_lb_t *lb, int32_t host)
    void fp_lb_request_finished(fp_lb_t *lb, int32_t host)
    uint32_t fp_lb_active_requests(const fp_lb_t *lb, int32_t host)
    int fp_lb_set_healthy(fp_lb_t *lb, int32_t host, int healthy)
    int fp_lb_slow_start_refresh(fp_lb_t *lb, double now)
    int fp_lb_set_host_start(fp_lb_t *lb, int32_t host, double start)
    double fp_lb_host_start(const fp_lb_t *lb, int32_t host)
    int fp_lb_in_slow_start(const fp_lb_t *lb)
    double fp_lb_effective_weight(const fp_lb_t *lb, int32_t host)
    double fp_lb_monotonic()
    uint32_t fp_lb_num_hosts(const fp_lb_t *lb)
    uint32_t fp_lb_num_priorities(const fp_lb_t *lb)
    uint32_t fp_lb_priority_load(const fp_lb_t *lb, uint32_t priority)
    int fp_lb_priority_panic(const fp_lb_t *lb, uint32_t priority)
    int fp_lb_priority_weighted(const fp_lb_t *lb, uint32_t priority)
    uint32_t fp_lb_num_localities(const fp_lb_t *lb)
    double fp_lb_locality_effective_weight(const fp_lb_t *lb, uint32_t locality)

cdef extern from "fp_hash_lb.h" nogil:
    enum:
        FP_RING_HASH_XX
        FP_RING_HASH_MURMUR2
        FP_RING_DEFAULT_MIN_SIZE
        FP_RING_DEFAULT_MAX_SIZE
        FP_MAGLEV_DEFAULT_TABLE_SIZE

cdef extern from "fp_hash.h" nogil:
    uint64_t FP_MURMUR_STD_SEED
    uint64_t fp_xxhash64(const void *data, size_t len, uint64_t seed)
    uint64_t fp_murmur2_64(const void *data, size_t len, uint64_t seed)

cdef class LoadBalancer:
    cdef fp_lb_t *lb
    cdef readonly int num_hosts
    cdef readonly str policy
    cdef readonly bint uses_hash        # RING_HASH / MAGLEV: picks follow the request's hash
    cdef list host_ids                  # slow start: the hosts' identities (host_ids=), or None
    # Pick a host; returns its index into the cluster's host list, or -1 when none is available.
    cdef int pick(self) noexcept
    # Pick with the request's hash (RING_HASH, MAGLEV); other policies ignore it and pick().
    # For RING_HASH / MAGLEV, pick() is a pick with a random hash (Envoy's behaviour when the
    # route has no hash policy or none of its policies produced a hash).
    cdef int pick_hash(self, uint64_t hash) noexcept
    # Active request bookkeeping: kept for every policy, read by LEAST_REQUEST. Call
    # request_finished once for each request_started, with the index pick() returned.
    cdef void request_started(self, int host) noexcept
    cdef void request_finished(self, int host) noexcept
