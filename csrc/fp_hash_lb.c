/* Ring hash and Maglev tables: see fp_hash_lb.h.
 *
 * The arithmetic follows Envoy's exactly, in doubles where Envoy uses doubles, since the number
 * of ring points and the Maglev fill order depend on it:
 *   normalized weight w_i = weight_i / sum(weights)            (over the hosts of one table)
 *   ring:   scale = min(ceil(min_w * min_size) / min_w, max_size); host i's points continue while
 *           the running count is below the running target sum(scale * w_j, j <= i);
 *   maglev: in turn t = 1, 2, ... host i takes its next free slot when t * w_i >= its target,
 *           and its target then grows by max_w. */
#include "fp_hash_lb.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fp_hash.h"

static void normalize(const fp_hash_hosts_t *hosts, double *w, double *min_w, double *max_w) {
    uint64_t sum = 0;
    for (uint32_t i = 0; i < hosts->n; i++)
        sum += hosts->weights[i];
    *min_w = 1.0;
    *max_w = 0.0;
    for (uint32_t i = 0; i < hosts->n; i++) {
        w[i] = (double)hosts->weights[i] * 1.0 / (double)sum;
        if (w[i] < *min_w)
            *min_w = w[i];
        if (w[i] > *max_w)
            *max_w = w[i];
    }
}

/* ---- ring hash ---- */

typedef struct {
    uint64_t hash;
    uint32_t order; /* ties (equal 64-bit hashes) keep insertion order: deterministic */
    uint32_t id;
} ring_point_t;

static int ring_point_cmp(const void *a, const void *b) {
    const ring_point_t *x = a, *y = b;
    if (x->hash != y->hash)
        return x->hash < y->hash ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

void fp_ring_free(fp_ring_t *ring) {
    free(ring->hashes);
    free(ring->ids);
    ring->hashes = NULL;
    ring->ids = NULL;
    ring->size = 0;
}

int fp_ring_build(fp_ring_t *ring, const fp_hash_hosts_t *hosts, uint64_t min_size,
                  uint64_t max_size, int hash_function) {
    const uint32_t n = hosts->n;
    ring->hashes = NULL;
    ring->ids = NULL;
    ring->size = 0;
    if (n == 0)
        return 0;
    double *w = malloc(n * sizeof(double));
    if (!w)
        return -1;
    double min_w, max_w;
    normalize(hosts, w, &min_w, &max_w);
    double scale = ceil(min_w * (double)min_size) / min_w;
    if (scale > (double)max_size)
        scale = (double)max_size;

    /* First pass: how many points the running sums give. */
    uint64_t total = 0;
    uint32_t max_key = 0;
    {
        double current = 0.0, target = 0.0;
        for (uint32_t i = 0; i < n; i++) {
            target += scale * w[i];
            while (current < target) {
                ++current;
                total++;
            }
            if (hosts->key_lens[i] > max_key)
                max_key = hosts->key_lens[i];
        }
    }
    ring_point_t *points = malloc((total ? total : 1) * sizeof(ring_point_t));
    char *buf = malloc((size_t)max_key + 24);
    if (!points || !buf) {
        free(points);
        free(buf);
        free(w);
        return -1;
    }
    uint64_t k = 0;
    double current = 0.0, target = 0.0;
    for (uint32_t i = 0; i < n; i++) {
        const uint32_t klen = hosts->key_lens[i];
        memcpy(buf, hosts->keys[i], klen);
        buf[klen] = '_';
        target += scale * w[i];
        for (uint64_t j = 0; current < target; j++) {
            const int digits = snprintf(buf + klen + 1, 22, "%llu", (unsigned long long)j);
            const size_t len = klen + 1 + (size_t)digits;
            points[k].hash = hash_function == FP_RING_HASH_MURMUR2
                                 ? fp_murmur2_64(buf, len, FP_MURMUR_STD_SEED)
                                 : fp_xxhash64(buf, len, 0);
            points[k].order = (uint32_t)k;
            points[k].id = hosts->ids[i];
            k++;
            ++current;
        }
    }
    free(buf);
    free(w);
    qsort(points, total, sizeof(ring_point_t), ring_point_cmp);
    ring->hashes = malloc((total ? total : 1) * sizeof(uint64_t));
    ring->ids = malloc((total ? total : 1) * sizeof(uint32_t));
    if (!ring->hashes || !ring->ids) {
        free(points);
        fp_ring_free(ring);
        return -1;
    }
    for (uint64_t i = 0; i < total; i++) {
        ring->hashes[i] = points[i].hash;
        ring->ids[i] = points[i].id;
    }
    ring->size = total;
    free(points);
    return 0;
}

/* ---- Maglev ---- */

typedef struct {
    const char *key;
    uint32_t key_len;
    uint32_t id;
    double weight;
    double target;
    uint64_t offset;
    uint64_t skip;
    uint64_t next;
} maglev_entry_t;

static int maglev_key_cmp(const void *a, const void *b) {
    const maglev_entry_t *x = a, *y = b;
    const uint32_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    const int c = memcmp(x->key, y->key, n);
    if (c != 0)
        return c;
    if (x->key_len != y->key_len)
        return x->key_len < y->key_len ? -1 : 1;
    /* Equal keys (one address listed twice): same address either way; keep cluster order. */
    return x->id < y->id ? -1 : x->id > y->id;
}

void fp_maglev_free(fp_maglev_t *maglev) {
    free(maglev->ids);
    maglev->ids = NULL;
    maglev->size = 0;
}

int fp_maglev_build(fp_maglev_t *maglev, const fp_hash_hosts_t *hosts, uint64_t table_size) {
    const uint32_t n = hosts->n;
    maglev->ids = NULL;
    maglev->size = 0;
    if (n == 0 || table_size < 2)
        return 0;
    double *w = malloc(n * sizeof(double));
    maglev_entry_t *entries = malloc(n * sizeof(maglev_entry_t));
    uint32_t *table = malloc(table_size * sizeof(uint32_t));
    uint8_t *taken = calloc(table_size, 1);
    if (!w || !entries || !table || !taken) {
        free(w);
        free(entries);
        free(table);
        free(taken);
        return -1;
    }
    double min_w, max_w;
    normalize(hosts, w, &min_w, &max_w);
    for (uint32_t i = 0; i < n; i++) {
        maglev_entry_t *e = &entries[i];
        e->key = hosts->keys[i];
        e->key_len = hosts->key_lens[i];
        e->id = hosts->ids[i];
        e->weight = w[i];
        e->target = 0.0;
        e->next = 0;
    }
    qsort(entries, n, sizeof(maglev_entry_t), maglev_key_cmp);
    for (uint32_t i = 0; i < n; i++) {
        maglev_entry_t *e = &entries[i];
        e->offset = fp_xxhash64(e->key, e->key_len, 0) % table_size;
        e->skip = fp_xxhash64(e->key, e->key_len, 1) % (table_size - 1) + 1;
    }
    uint64_t filled = 0;
    for (uint32_t turn = 1; filled < table_size; ++turn) {
        for (uint32_t i = 0; i < n && filled < table_size; i++) {
            maglev_entry_t *e = &entries[i];
            if ((double)turn * e->weight < e->target)
                continue;
            e->target += max_w;
            uint64_t c = (e->offset + e->skip * e->next) % table_size;
            while (taken[c]) {
                e->next++;
                c = (e->offset + e->skip * e->next) % table_size;
            }
            table[c] = e->id;
            taken[c] = 1;
            e->next++;
            filled++;
        }
    }
    free(w);
    free(entries);
    free(taken);
    maglev->ids = table;
    maglev->size = table_size;
    return 0;
}

int fp_is_prime(uint64_t n) {
    if (n < 2)
        return 0;
    if (n % 2 == 0)
        return n == 2;
    for (uint64_t d = 3; d * d <= n; d += 2)
        if (n % d == 0)
            return 0;
    return 1;
}
