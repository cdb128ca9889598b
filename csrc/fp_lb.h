/* Load balancer picks over one cluster's host array: ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH
 * and MAGLEV with Envoy's semantics (weights, priority levels with overprovisioning and panic, EDF
 * schedules, consistent-hashing tables built as Envoy builds them: fp_hash_lb.h).
 *
 * A balancer is built once per cluster membership and worker; fp_lb_pick() allocates nothing and
 * runs in O(1) (unweighted round robin, random, N choices) or O(log n) (EDF). The per-host healthy
 * flag feeds the priority-load and panic computation (fp_lb_set_healthy() recomputes them).
 *
 * Plain C, no Python: the Cython wrapper is fastproxy/_core/lb.pyx. */
#ifndef FP_LB_H
#define FP_LB_H

#include <stdint.h>

#include "fp_hash_lb.h"

#define FP_LB_ROUND_ROBIN 0
#define FP_LB_LEAST_REQUEST 1
#define FP_LB_RANDOM 2
#define FP_LB_RING_HASH 3
#define FP_LB_MAGLEV 4

/* Envoy's defaults. */
#define FP_LB_DEFAULT_OVERPROVISIONING_FACTOR 140 /* percent: 1.4 */
#define FP_LB_DEFAULT_PANIC_THRESHOLD 50          /* percent */
#define FP_LB_DEFAULT_CHOICE_COUNT 2

/* Error codes of fp_lb_new()'s `err` out-argument. */
#define FP_LB_OK 0
#define FP_LB_ENOMEM 1
#define FP_LB_EPOLICY 2
#define FP_LB_EWEIGHT 3   /* a weight below 1 (Envoy's load_balancing_weight is >= 1) */
#define FP_LB_EPRIORITY 4 /* a priority above FP_LB_MAX_PRIORITY */
#define FP_LB_ECHOICES 5  /* choice_count below 1 */
#define FP_LB_EBIAS 6     /* negative or NaN active_request_bias */
#define FP_LB_ERING 7     /* ring hash: minimum_ring_size above maximum_ring_size */
#define FP_LB_ETABLE 8    /* maglev: table_size not a prime */
#define FP_LB_EKEYS 9     /* a hashing policy without host keys */
#define FP_LB_ELOCALITY 10 /* a locality index out of range, or a locality in two priorities */

#define FP_LB_MAX_PRIORITY 127

typedef struct fp_lb fp_lb_t;

typedef struct {
    int policy;                      /* FP_LB_ROUND_ROBIN / FP_LB_LEAST_REQUEST / FP_LB_RANDOM */
    uint64_t seed;                   /* seeds the balancer's PRNG */
    uint32_t choice_count;           /* LEAST_REQUEST, unweighted: hosts sampled per pick */
    double active_request_bias;      /* LEAST_REQUEST, weighted: weight / (active + 1)^bias */
    int bias_forces_weighted;        /* LEAST_REQUEST: EDF even when all weights are equal (as
                                        Envoy does when active_request_bias is set explicitly) */
    uint32_t overprovisioning_factor; /* percent; 140 = 1.4 */
    uint32_t panic_threshold;        /* percent; 0 disables panic */
    /* RING_HASH and MAGLEV: */
    uint64_t min_ring_size;          /* ring hash; default 1024 */
    uint64_t max_ring_size;          /* ring hash; default 8M */
    int hash_function;               /* ring hash: FP_RING_HASH_XX / FP_RING_HASH_MURMUR2 */
    uint64_t table_size;             /* maglev; a prime, default 65537 */
    const char *const *host_keys;    /* per host: the key it hashes as (its address as Envoy
                                        prints it, "10.0.0.1:80"); copied by fp_lb_new */
    const uint32_t *host_key_lens;
    /* ROUND_ROBIN and LEAST_REQUEST slow start (Envoy's SlowStartConfig); window 0 disables it.
     * Times are CLOCK_MONOTONIC seconds (Python's time.monotonic()). A host that joined (or
     * became healthy) at `start` and is healthy has, while now - start < window, its weight
     * scaled by max(min_weight, (max(now - start, 1 ms) / window) ^ (1 / aggression)); while any
     * host is in slow start its level picks through EDF. */
    double slow_start_window;        /* seconds */
    double slow_start_aggression;    /* default 1.0; <= 0 or NaN counts as 1.0, as in Envoy */
    double slow_start_min_weight;    /* fraction, default 0.1 (min_weight_percent 10) */
    const double *host_start;        /* per host: when it joined; NULL: all at `now` */
    double now;                      /* the time of the build; below 0: read the clock */
    int manual_clock;                /* picks never read the clock: time moves only through
                                        fp_lb_slow_start_refresh() (tests) */
    /* Locality weighted balancing (Envoy's locality_weighted_lb_config) for ROUND_ROBIN,
     * LEAST_REQUEST and RANDOM; NULL host_locality disables it, and hashing policies ignore it.
     * host_locality[i] is host i's locality (0 .. num_localities - 1; all hosts of a locality
     * share one priority), locality_weights[l] its weight (0: it gets no traffic). A pick chooses
     * the level as without localities; unless the level is in panic, it then chooses a locality
     * by EDF over weight * min(1, overprovisioning * healthy / hosts of the locality) (localities
     * at 0 left out; when all are at 0 the level's healthy hosts are used as without
     * localities), then a host of that locality with the policy. */
    const uint32_t *host_locality;
    const uint32_t *locality_weights;
    uint32_t num_localities;
} fp_lb_config_t;

/* How often (seconds) picks refresh slow start weights while a host is in slow start. */
#define FP_LB_SLOW_START_REFRESH 0.1

/* Fills `config` with Envoy's defaults for `policy`. */
void fp_lb_config_init(fp_lb_config_t *config, int policy, uint64_t seed);

/* Builds a balancer over `num_hosts` hosts; host i has weights[i] and priorities[i]. All hosts
 * start healthy. Returns NULL and sets *err on failure. */
fp_lb_t *fp_lb_new(const fp_lb_config_t *config, uint32_t num_hosts, const uint32_t *weights,
                   const uint32_t *priorities, int *err);
void fp_lb_free(fp_lb_t *lb);

/* The index of the chosen host (its position in the arrays given to fp_lb_new), or -1 when no
 * host can be chosen. */
int32_t fp_lb_pick(fp_lb_t *lb);

/* RING_HASH / MAGLEV: the host owning `hash` (the level chosen from hash % 100 as Envoy does,
 * then the level's table). Other policies ignore the hash and pick as fp_lb_pick(). For the
 * hashing policies, fp_lb_pick() is a pick with a random hash (Envoy's behaviour when a request
 * has no hash). */
int32_t fp_lb_pick_hash(fp_lb_t *lb, uint64_t hash);
/* Whether picks use a request hash (RING_HASH, MAGLEV). */
int fp_lb_uses_hash(const fp_lb_t *lb);
/* The number of entries of the table of `priority` (ring points or maglev slots; 0 if none). */
uint64_t fp_lb_table_size(const fp_lb_t *lb, uint32_t priority);

/* Active request bookkeeping (read by LEAST_REQUEST, kept for every policy). Out-of-range host
 * indexes are ignored; finishing a host with no active request leaves it at 0. */
void fp_lb_request_started(fp_lb_t *lb, int32_t host);
void fp_lb_request_finished(fp_lb_t *lb, int32_t host);
uint32_t fp_lb_active_requests(const fp_lb_t *lb, int32_t host);

/* Marks a host healthy (1) or not (0) and recomputes the priority loads, panic state and
 * schedules, as Envoy does on a host set update. Returns 0, or -1 for a bad index. */
int fp_lb_set_healthy(fp_lb_t *lb, int32_t host, int healthy);

/* Slow start: recomputes the scaled weights at `now` and rebuilds the schedules. Picks do it
 * themselves at most every FP_LB_SLOW_START_REFRESH seconds (unless manual_clock). Returns
 * whether a host is still in slow start. */
int fp_lb_slow_start_refresh(fp_lb_t *lb, double now);
/* Sets when `host` joined / became healthy (its slow start begins there); -1 for a bad index.
 * Takes effect at the next refresh. */
int fp_lb_set_host_start(fp_lb_t *lb, int32_t host, double start);
double fp_lb_host_start(const fp_lb_t *lb, int32_t host);
/* Whether some host is in slow start (as of the last refresh). */
int fp_lb_in_slow_start(const fp_lb_t *lb);
/* The weight host `host` is scheduled with now (its weight times its slow start factor; for
 * LEAST_REQUEST before the active request bias). */
double fp_lb_effective_weight(const fp_lb_t *lb, int32_t host);
/* CLOCK_MONOTONIC in seconds. */
double fp_lb_monotonic(void);

uint32_t fp_lb_num_hosts(const fp_lb_t *lb);
uint32_t fp_lb_num_priorities(const fp_lb_t *lb);
/* The percentage of the load (0..100) that goes to `priority`, and whether it runs in panic
 * (picking from all its hosts instead of its healthy ones). */
uint32_t fp_lb_priority_load(const fp_lb_t *lb, uint32_t priority);
int fp_lb_priority_panic(const fp_lb_t *lb, uint32_t priority);
/* Locality weighted balancing: the number of localities (0 when disabled) and the effective
 * weight locality `locality` is scheduled with now (0 when it gets no traffic, or its level is
 * in panic). */
uint32_t fp_lb_num_localities(const fp_lb_t *lb);
double fp_lb_locality_effective_weight(const fp_lb_t *lb, uint32_t locality);
/* Whether `priority` picks through an EDF schedule (unequal weights) rather than unweighted. */
int fp_lb_priority_weighted(const fp_lb_t *lb, uint32_t priority);

#endif /* FP_LB_H */
