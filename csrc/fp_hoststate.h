/* Host state shared by the processes of one proxy: active health-check results and outlier
 * ejections per cluster and host, in one shared mapping.
 *
 * Layout: a header, then one fp_hs_cluster_t per cluster, then each cluster's host table (an
 * open-addressing table of fp_hs_host_t keyed by "address:port", `capacity` slots, a power of
 * two).  Hosts are never deleted: a host no worker lists any more keeps its slot (members == 0)
 * and gets it back if it returns.
 *
 * Concurrency: counters (consecutive errors, success-rate buckets) are updated with atomic
 * read-modify-write instructions, which work across processes on a shared mapping.  Everything
 * else (health flags, ejection bookkeeping, inserting a host, publishing) changes under the
 * cluster's spin lock; readers that only need the published flags load them atomically.
 *
 * Two sets of flags per host: `flags` is the decided state (what Envoy's main thread knows at
 * once), `published` is what the load balancers apply.  Publishing copies the first into the
 * second and bumps the cluster's generation; like Envoy's cluster manager it merges
 * health-only updates that come within `update_merge_window` of the previous one, delivering
 * them when the window ends (fp_hs_publish / fp_hs_publish_due).
 *
 * Plain C, no Python: the Cython side is fastproxy/_core/hoststate.pyx. */
#ifndef FP_HOSTSTATE_H
#define FP_HOSTSTATE_H

#include <stdint.h>

#define FP_HS_MAGIC 0x53485046u /* "FPHS" */
#define FP_HS_VERSION 1u
#define FP_HS_NAME_MAX 200
#define FP_HS_KEY_MAX 64

/* Host health flags (Envoy's Host::HealthFlag names). */
#define FP_HS_FAILED_ACTIVE_HC 1u
#define FP_HS_FAILED_OUTLIER_CHECK 2u

/* Slot states. */
#define FP_HS_FREE 0u
#define FP_HS_CLAIMED 1u
#define FP_HS_READY 2u

/* Outlier ejection types (envoy.data.cluster.v3.OutlierEjectionType, as bits so one report can
 * trigger several). */
#define FP_HS_EV_CONSECUTIVE_5XX 1
#define FP_HS_EV_CONSECUTIVE_GATEWAY_FAILURE 2
#define FP_HS_EV_CONSECUTIVE_LOCAL_ORIGIN_FAILURE 4
#define FP_HS_EV_SUCCESS_RATE 8
#define FP_HS_EV_FAILURE_PERCENTAGE 16
#define FP_HS_EV_SUCCESS_RATE_LOCAL_ORIGIN 32
#define FP_HS_EV_FAILURE_PERCENTAGE_LOCAL_ORIGIN 64

/* fp_hs_eject() result bits. */
#define FP_HS_R_IGNORED 1  /* already ejected: nothing happened, nothing to count */
#define FP_HS_R_OVERFLOW 2 /* max_ejection_percent reached (ejections_overflow) */
#define FP_HS_R_TOTAL 4    /* counts in the deprecated ejections_total */
#define FP_HS_R_ENFORCED 8 /* the host was ejected */

/* Local-origin results (Envoy's Outlier::Result). */
#define FP_HS_LOCAL_CONNECT_FAILED 1
#define FP_HS_LOCAL_TIMEOUT 2

typedef struct {
    uint32_t magic;
    uint32_t version;
    uint32_t num_clusters;
    uint32_t reserved;
    uint64_t size;
    uint64_t reserved2;
} fp_hs_header_t;

typedef struct {
    char name[FP_HS_NAME_MAX];
    uint32_t capacity;
    uint32_t lock;
    uint64_t hosts_offset;      /* from the start of the mapping */
    int64_t stats_base;         /* the cluster's first stat in the stats block, -1 if none */
    uint64_t generation;        /* bumped whenever `published` flags change */
    int64_t last_publish_ns;    /* CLOCK_MONOTONIC */
    int64_t pending_ns;         /* a merged update is due then; 0: none */
    uint32_t ejected;           /* hosts with FAILED_OUTLIER_CHECK */
    uint32_t reserved;
} fp_hs_cluster_t;

typedef struct {
    char key[FP_HS_KEY_MAX];    /* "address:port", NUL-terminated */
    uint32_t state;             /* FP_HS_FREE / CLAIMED / READY */
    uint32_t flags;             /* decided health flags */
    uint32_t published;         /* flags the load balancers apply */
    uint32_t c5xx;              /* consecutive 5xx */
    uint32_t cgw;               /* consecutive gateway failures (502, 503, 504) */
    uint32_t clocal;            /* consecutive local-origin failures (split mode) */
    uint64_t members;           /* bit w: worker w lists the host; bit 63: the main process */
    uint32_t num_ejections;
    uint32_t backoff;           /* Envoy's eject time backoff multiplier */
    int64_t ejected_at_ns;
    int64_t unejected_at_ns;    /* 0: never unejected */
    int64_t jitter_ns;
    uint64_t ext_total;         /* success-rate bucket of the current interval */
    uint64_t ext_success;
    uint64_t lo_total;          /* local-origin bucket (split mode) */
    uint64_t lo_success;
} fp_hs_host_t;

/* Outlier detection settings, as compiled from the cluster's config (times in ns). */
typedef struct {
    uint32_t consecutive_5xx;
    uint32_t consecutive_gateway_failure;
    uint32_t consecutive_local_origin_failure;
    uint32_t enforcing_consecutive_5xx;
    uint32_t enforcing_consecutive_gateway_failure;
    uint32_t enforcing_consecutive_local_origin_failure;
    uint32_t enforcing_success_rate;
    uint32_t enforcing_failure_percentage;
    uint32_t enforcing_local_origin_success_rate;
    uint32_t enforcing_failure_percentage_local_origin;
    uint32_t max_ejection_percent;
    int always_eject_one_host;
    int split_external_local_origin_errors;
    int enabled; /* outlier detection configured at all */
    int64_t base_ejection_ns;
    int64_t max_ejection_ns;
    int64_t max_ejection_jitter_ns;
} fp_hs_config_t;

int64_t fp_hs_now_ns(void);
uint64_t fp_hs_size(uint32_t num_clusters, const uint32_t *capacities);
void fp_hs_init(void *base, uint32_t num_clusters, const uint32_t *capacities);
fp_hs_cluster_t *fp_hs_cluster(void *base, uint32_t index);
fp_hs_host_t *fp_hs_hosts(void *base, const fp_hs_cluster_t *c);

/* Spin lock of a cluster; fp_hs_lock gives up (returns 0) after about a second, which only a
 * process dying while holding it could cause. */
int fp_hs_lock(fp_hs_cluster_t *c);
void fp_hs_unlock(fp_hs_cluster_t *c);

/* Find a host by key, or insert it (when `create`, under the lock) with `initial_flags` as both
 * its decided and its published flags.  NULL when absent (or the table is full). */
fp_hs_host_t *fp_hs_find(void *base, fp_hs_cluster_t *c, const char *key, int create,
                         uint32_t initial_flags);

/* Data plane reports; they return the FP_HS_EV_* ejections they triggered (0 almost always). */
int fp_hs_put_code(fp_hs_host_t *h, const fp_hs_config_t *cfg, int code);
int fp_hs_put_local_failure(fp_hs_host_t *h, const fp_hs_config_t *cfg, int result);
void fp_hs_reset_consecutive(fp_hs_host_t *h, int event);

/* Under the lock. */
int fp_hs_eject(fp_hs_cluster_t *c, fp_hs_host_t *h, const fp_hs_config_t *cfg, int event,
                uint32_t num_hosts, int64_t now, uint64_t rnd1, uint64_t rnd2);
void fp_hs_uneject(fp_hs_cluster_t *c, fp_hs_host_t *h, int64_t now);
int fp_hs_uneject_due(const fp_hs_host_t *h, const fp_hs_config_t *cfg, int64_t now);
int fp_hs_publish(void *base, fp_hs_cluster_t *c, int64_t now, int64_t window_ns, int force);
int fp_hs_publish_due(void *base, fp_hs_cluster_t *c, int64_t now);

/* Atomic helpers for the Cython side. */
uint32_t fp_hs_load32(const uint32_t *p);
uint64_t fp_hs_load64(const uint64_t *p);
int64_t fp_hs_load_i64(const int64_t *p);
uint64_t fp_hs_exchange64(uint64_t *p, uint64_t v);
void fp_hs_or64(uint64_t *p, uint64_t bits);
void fp_hs_and64(uint64_t *p, uint64_t bits);

#endif
