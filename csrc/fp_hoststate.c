/* Shared host state: see fp_hoststate.h. */
#include "fp_hoststate.h"

#include <sched.h>
#include <string.h>
#include <time.h>

#define LOAD32(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE32(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define ADD32(p, v) __atomic_add_fetch((p), (v), __ATOMIC_ACQ_REL)

/* How long fp_hs_lock spins before it takes the lock over (its holder must have died). */
#define LOCK_SPINS (1L << 21)

int64_t fp_hs_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static uint64_t align64(uint64_t n) { return (n + 63) & ~(uint64_t)63; }

static uint64_t clusters_end(uint32_t num_clusters) {
    return align64(sizeof(fp_hs_header_t) + (uint64_t)num_clusters * sizeof(fp_hs_cluster_t));
}

uint64_t fp_hs_size(uint32_t num_clusters, const uint32_t *capacities) {
    uint64_t size = clusters_end(num_clusters);
    for (uint32_t i = 0; i < num_clusters; i++)
        size += align64((uint64_t)capacities[i] * sizeof(fp_hs_host_t));
    return size;
}

void fp_hs_init(void *base, uint32_t num_clusters, const uint32_t *capacities) {
    fp_hs_header_t *hdr = (fp_hs_header_t *)base;
    uint64_t offset = clusters_end(num_clusters);
    memset(base, 0, offset);
    for (uint32_t i = 0; i < num_clusters; i++) {
        fp_hs_cluster_t *c = fp_hs_cluster(base, i);
        c->capacity = capacities[i];
        c->hosts_offset = offset;
        c->stats_base = -1;
        memset((char *)base + offset, 0, (size_t)capacities[i] * sizeof(fp_hs_host_t));
        offset += align64((uint64_t)capacities[i] * sizeof(fp_hs_host_t));
    }
    hdr->num_clusters = num_clusters;
    hdr->size = offset;
    hdr->version = FP_HS_VERSION;
    __atomic_store_n(&hdr->magic, FP_HS_MAGIC, __ATOMIC_RELEASE);
}

fp_hs_cluster_t *fp_hs_cluster(void *base, uint32_t index) {
    return (fp_hs_cluster_t *)((char *)base + sizeof(fp_hs_header_t)) + index;
}

fp_hs_host_t *fp_hs_hosts(void *base, const fp_hs_cluster_t *c) {
    return (fp_hs_host_t *)((char *)base + c->hosts_offset);
}

int fp_hs_lock(fp_hs_cluster_t *c) {
    for (long i = 0; i < LOCK_SPINS; i++) {
        uint32_t expected = 0;
        if (__atomic_compare_exchange_n(&c->lock, &expected, 1, 0, __ATOMIC_ACQUIRE,
                                        __ATOMIC_RELAXED))
            return 1;
        if ((i & 63) == 63)
            sched_yield();
    }
    /* The holder is gone (a process killed inside a few-instruction critical section). */
    __atomic_store_n(&c->lock, 1, __ATOMIC_SEQ_CST);
    return 0;
}

void fp_hs_unlock(fp_hs_cluster_t *c) { __atomic_store_n(&c->lock, 0, __ATOMIC_RELEASE); }

static uint32_t key_hash(const char *key) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    return h;
}

fp_hs_host_t *fp_hs_find(void *base, fp_hs_cluster_t *c, const char *key, int create,
                         uint32_t initial_flags) {
    size_t len = strlen(key);
    if (len == 0 || len >= FP_HS_KEY_MAX || c->capacity == 0)
        return NULL;
    fp_hs_host_t *hosts = fp_hs_hosts(base, c);
    const uint32_t mask = c->capacity - 1;
    const uint32_t start = key_hash(key) & mask;
    for (uint32_t i = 0; i < c->capacity; i++) {
        fp_hs_host_t *h = &hosts[(start + i) & mask];
        uint32_t st = LOAD32(&h->state);
        if (st == FP_HS_FREE)
            break;
        if (st == FP_HS_READY && strcmp(h->key, key) == 0)
            return h;
    }
    if (!create)
        return NULL;
    fp_hs_host_t *found = NULL;
    fp_hs_lock(c);
    for (uint32_t i = 0; i < c->capacity; i++) {
        fp_hs_host_t *h = &hosts[(start + i) & mask];
        uint32_t st = LOAD32(&h->state);
        if (st == FP_HS_READY && strcmp(h->key, key) == 0) {
            found = h;
            break;
        }
        if (st == FP_HS_FREE) {
            STORE32(&h->state, FP_HS_CLAIMED);
            memcpy(h->key, key, len + 1);
            h->flags = initial_flags;
            h->published = initial_flags;
            STORE32(&h->state, FP_HS_READY);
            found = h;
            break;
        }
    }
    fp_hs_unlock(c);
    return found;
}

static inline void reset32(uint32_t *p) {
    if (LOAD32(p) != 0)
        STORE32(p, 0);
}

int fp_hs_put_code(fp_hs_host_t *h, const fp_hs_config_t *cfg, int code) {
    int ev = 0;
    if (!cfg->enabled)
        return 0;
    if (cfg->split_external_local_origin_errors) {
        /* The connection worked: a local-origin success. */
        __atomic_add_fetch(&h->lo_total, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&h->lo_success, 1, __ATOMIC_RELAXED);
        reset32(&h->clocal);
    }
    __atomic_add_fetch(&h->ext_total, 1, __ATOMIC_RELAXED);
    if (code >= 500 && code <= 599) {
        if (code >= 502 && code <= 504) {
            if (ADD32(&h->cgw, 1) == cfg->consecutive_gateway_failure)
                ev |= FP_HS_EV_CONSECUTIVE_GATEWAY_FAILURE;
        } else {
            reset32(&h->cgw);
        }
        if (ADD32(&h->c5xx, 1) == cfg->consecutive_5xx)
            ev |= FP_HS_EV_CONSECUTIVE_5XX;
    } else {
        __atomic_add_fetch(&h->ext_success, 1, __ATOMIC_RELAXED);
        reset32(&h->c5xx);
        reset32(&h->cgw);
    }
    return ev;
}

int fp_hs_put_local_failure(fp_hs_host_t *h, const fp_hs_config_t *cfg, int result) {
    if (!cfg->enabled)
        return 0;
    if (!cfg->split_external_local_origin_errors)
        /* Envoy maps local-origin results to HTTP codes: a timeout is a 504, a connection
         * failure (or reset) a 503. */
        return fp_hs_put_code(h, cfg, result == FP_HS_LOCAL_TIMEOUT ? 504 : 503);
    __atomic_add_fetch(&h->lo_total, 1, __ATOMIC_RELAXED);
    if (ADD32(&h->clocal, 1) == cfg->consecutive_local_origin_failure)
        return FP_HS_EV_CONSECUTIVE_LOCAL_ORIGIN_FAILURE;
    return 0;
}

void fp_hs_reset_consecutive(fp_hs_host_t *h, int event) {
    if (event & FP_HS_EV_CONSECUTIVE_5XX)
        reset32(&h->c5xx);
    if (event & FP_HS_EV_CONSECUTIVE_GATEWAY_FAILURE)
        reset32(&h->cgw);
    if (event & FP_HS_EV_CONSECUTIVE_LOCAL_ORIGIN_FAILURE)
        reset32(&h->clocal);
}

static uint32_t enforcing(const fp_hs_config_t *cfg, int event) {
    switch (event) {
    case FP_HS_EV_CONSECUTIVE_5XX: return cfg->enforcing_consecutive_5xx;
    case FP_HS_EV_CONSECUTIVE_GATEWAY_FAILURE: return cfg->enforcing_consecutive_gateway_failure;
    case FP_HS_EV_CONSECUTIVE_LOCAL_ORIGIN_FAILURE:
        return cfg->enforcing_consecutive_local_origin_failure;
    case FP_HS_EV_SUCCESS_RATE: return cfg->enforcing_success_rate;
    case FP_HS_EV_FAILURE_PERCENTAGE: return cfg->enforcing_failure_percentage;
    case FP_HS_EV_SUCCESS_RATE_LOCAL_ORIGIN: return cfg->enforcing_local_origin_success_rate;
    case FP_HS_EV_FAILURE_PERCENTAGE_LOCAL_ORIGIN:
        return cfg->enforcing_failure_percentage_local_origin;
    }
    return 0;
}

int fp_hs_eject(fp_hs_cluster_t *c, fp_hs_host_t *h, const fp_hs_config_t *cfg, int event,
                uint32_t num_hosts, int64_t now, uint64_t rnd1, uint64_t rnd2) {
    if (h->flags & FP_HS_FAILED_OUTLIER_CHECK)
        return FP_HS_R_IGNORED;
    if (num_hosts == 0)
        num_hosts = 1;
    uint32_t max_pct = cfg->max_ejection_percent > 100 ? 100 : cfg->max_ejection_percent;
    double pct = 100.0 * (double)(c->ejected + 1) / (double)num_hosts;
    int should = pct <= (double)max_pct;
    if (cfg->always_eject_one_host && c->ejected == 0)
        should = 1;
    if (!should)
        return FP_HS_R_OVERFLOW;
    int result = 0;
    if (event == FP_HS_EV_CONSECUTIVE_5XX || event == FP_HS_EV_SUCCESS_RATE)
        result |= FP_HS_R_TOTAL;
    if (rnd1 % 100 >= enforcing(cfg, event))
        return result;
    __atomic_or_fetch(&h->flags, FP_HS_FAILED_OUTLIER_CHECK, __ATOMIC_ACQ_REL);
    c->ejected++;
    h->num_ejections++;
    h->ejected_at_ns = now;
    uint64_t jitter_ms = (uint64_t)(cfg->max_ejection_jitter_ns / 1000000);
    h->jitter_ns = (int64_t)(rnd2 % (jitter_ms + 1)) * 1000000;
    if ((int64_t)h->backoff * cfg->base_ejection_ns < cfg->max_ejection_ns + cfg->base_ejection_ns)
        h->backoff++;
    return result | FP_HS_R_ENFORCED;
}

void fp_hs_uneject(fp_hs_cluster_t *c, fp_hs_host_t *h, int64_t now) {
    if (!(h->flags & FP_HS_FAILED_OUTLIER_CHECK))
        return;
    __atomic_and_fetch(&h->flags, ~FP_HS_FAILED_OUTLIER_CHECK, __ATOMIC_ACQ_REL);
    if (c->ejected > 0)
        c->ejected--;
    /* As Envoy: no re-ejection on a few new errors because a counter was close to its limit. */
    reset32(&h->c5xx);
    reset32(&h->cgw);
    reset32(&h->clocal);
    h->unejected_at_ns = now;
}

int fp_hs_uneject_due(const fp_hs_host_t *h, const fp_hs_config_t *cfg, int64_t now) {
    if (!(h->flags & FP_HS_FAILED_OUTLIER_CHECK))
        return 0;
    int64_t t = cfg->base_ejection_ns * (int64_t)h->backoff;
    if (t > cfg->max_ejection_ns)
        t = cfg->max_ejection_ns;
    return t + h->jitter_ns <= now - h->ejected_at_ns;
}

static void copy_published(void *base, fp_hs_cluster_t *c, int64_t now) {
    fp_hs_host_t *hosts = fp_hs_hosts(base, c);
    for (uint32_t i = 0; i < c->capacity; i++) {
        fp_hs_host_t *h = &hosts[i];
        if (LOAD32(&h->state) == FP_HS_READY)
            STORE32(&h->published, LOAD32(&h->flags));
    }
    __atomic_store_n(&c->pending_ns, 0, __ATOMIC_RELEASE);
    c->last_publish_ns = now;
    __atomic_add_fetch(&c->generation, 1, __ATOMIC_ACQ_REL);
}

int fp_hs_publish(void *base, fp_hs_cluster_t *c, int64_t now, int64_t window_ns, int force) {
    fp_hs_host_t *hosts = fp_hs_hosts(base, c);
    int differs = 0;
    for (uint32_t i = 0; i < c->capacity && !differs; i++) {
        fp_hs_host_t *h = &hosts[i];
        if (LOAD32(&h->state) == FP_HS_READY && LOAD32(&h->published) != LOAD32(&h->flags))
            differs = 1;
    }
    if (!differs)
        return 0;
    if (!force && c->last_publish_ns != 0 && now - c->last_publish_ns <= window_ns) {
        if (__atomic_load_n(&c->pending_ns, __ATOMIC_ACQUIRE) == 0)
            __atomic_store_n(&c->pending_ns, now + window_ns, __ATOMIC_RELEASE);
        return 0;
    }
    copy_published(base, c, now);
    return 1;
}

int fp_hs_publish_due(void *base, fp_hs_cluster_t *c, int64_t now) {
    int64_t due = __atomic_load_n(&c->pending_ns, __ATOMIC_ACQUIRE);
    if (due == 0 || now < due)
        return 0;
    copy_published(base, c, now);
    return 1;
}

uint32_t fp_hs_load32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
uint64_t fp_hs_load64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
int64_t fp_hs_load_i64(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
uint64_t fp_hs_exchange64(uint64_t *p, uint64_t v) {
    return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL);
}
void fp_hs_or64(uint64_t *p, uint64_t bits) { __atomic_or_fetch(p, bits, __ATOMIC_ACQ_REL); }
void fp_hs_and64(uint64_t *p, uint64_t bits) { __atomic_and_fetch(p, bits, __ATOMIC_ACQ_REL); }
