# What csrc/fp_hoststate.h exports: the shared host-state table (health flags, outlier
# ejection bookkeeping, merged publishing to the load balancers).
from libc.stdint cimport int64_t, uint32_t, uint64_t

cdef extern from "fp_hoststate.h" nogil:
    enum:
        FP_HS_MAGIC
        FP_HS_VERSION
        FP_HS_NAME_MAX
        FP_HS_KEY_MAX
        FP_HS_FAILED_ACTIVE_HC
        FP_HS_FAILED_OUTLIER_CHECK
        FP_HS_FREE
        FP_HS_CLAIMED
        FP_HS_READY
        FP_HS_EV_CONSECUTIVE_5XX
        FP_HS_EV_CONSECUTIVE_GATEWAY_FAILURE
        FP_HS_EV_CONSECUTIVE_LOCAL_ORIGIN_FAILURE
        FP_HS_EV_SUCCESS_RATE
        FP_HS_EV_FAILURE_PERCENTAGE
        FP_HS_EV_SUCCESS_RATE_LOCAL_ORIGIN
        FP_HS_EV_FAILURE_PERCENTAGE_LOCAL_ORIGIN
        FP_HS_R_IGNORED
        FP_HS_R_OVERFLOW
        FP_HS_R_TOTAL
        FP_HS_R_ENFORCED
        FP_HS_LOCAL_CONNECT_FAILED
        FP_HS_LOCAL_TIMEOUT

    ctypedef struct fp_hs_header_t:
        uint32_t magic
        uint32_t version
        uint32_t num_clusters
        uint64_t size

    ctypedef struct fp_hs_cluster_t:
        char name[200]
        uint32_t capacity
        int64_t stats_base
        uint64_t generation
        int64_t last_publish_ns
        int64_t pending_ns
        uint32_t ejected

    ctypedef struct fp_hs_host_t:
        char key[64]
        uint32_t state
        uint32_t flags
        uint32_t published
        uint32_t c5xx
        uint32_t cgw
        uint32_t clocal
        uint64_t members
        uint32_t num_ejections
        uint32_t backoff
        int64_t ejected_at_ns
        int64_t unejected_at_ns
        int64_t jitter_ns
        uint64_t ext_total
        uint64_t ext_success
        uint64_t lo_total
        uint64_t lo_success

    ctypedef struct fp_hs_config_t:
        uint32_t consecutive_5xx
        uint32_t consecutive_gateway_failure
        uint32_t consecutive_local_origin_failure
        uint32_t enforcing_consecutive_5xx
        uint32_t enforcing_consecutive_gateway_failure
        uint32_t enforcing_consecutive_local_origin_failure
        uint32_t enforcing_success_rate
        uint32_t enforcing_failure_percentage
        uint32_t enforcing_local_origin_success_rate
        uint32_t enforcing_failure_percentage_local_origin
        uint32_t max_ejection_percent
        int always_eject_one_host
        int split_external_local_origin_errors
        int enabled
        int64_t base_ejection_ns
        int64_t max_ejection_ns
        int64_t max_ejection_jitter_ns

    int64_t fp_hs_now_ns()
    uint64_t fp_hs_size(uint32_t num_clusters, const uint32_t *capacities)
    void fp_hs_init(void *base, uint32_t num_clusters, const uint32_t *capacities)
    fp_hs_cluster_t *fp_hs_cluster(void *base, uint32_t index)
    fp_hs_host_t *fp_hs_hosts(void *base, const fp_hs_cluster_t *c)
    int fp_hs_lock(fp_hs_cluster_t *c)
    void fp_hs_unlock(fp_hs_cluster_t *c)
    fp_hs_host_t *fp_hs_find(void *base, fp_hs_cluster_t *c, const char *key, int create,
                             uint32_t initial_flags)
    int fp_hs_put_code(fp_hs_host_t *h, const fp_hs_config_t *cfg, int code)
    int fp_hs_put_local_failure(fp_hs_host_t *h, const fp_hs_config_t *cfg, int result)
    void fp_hs_reset_consecutive(fp_hs_host_t *h, int event)
    int fp_hs_eject(fp_hs_cluster_t *c, fp_hs_host_t *h, const fp_hs_config_t *cfg, int event,
                    uint32_t num_hosts, int64_t now, uint64_t rnd1, uint64_t rnd2)
    void fp_hs_uneject(fp_hs_cluster_t *c, fp_hs_host_t *h, int64_t now)
    int fp_hs_uneject_due(const fp_hs_host_t *h, const fp_hs_config_t *cfg, int64_t now)
    int fp_hs_publish(void *base, fp_hs_cluster_t *c, int64_t now, int64_t window_ns, int force)
    int fp_hs_publish_due(void *base, fp_hs_cluster_t *c, int64_t now)
    uint32_t fp_hs_load32(const uint32_t *p)
    uint64_t fp_hs_load64(const uint64_t *p)
    int64_t fp_hs_load_i64(const int64_t *p)
    uint64_t fp_hs_exchange64(uint64_t *p, uint64_t v)
    void fp_hs_or64(uint64_t *p, uint64_t bits)
    void fp_hs_and64(uint64_t *p, uint64_t bits)
