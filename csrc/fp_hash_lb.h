/* Consistent-hashing tables with Envoy's construction, so that a request's hash picks the same
 * host here as in Envoy for the same host set:
 *   - ring hash (Envoy's RingHashLoadBalancer::Ring, a ketama ring): each host gets
 *     scale * normalized_weight points, hashed from "<key>_<i>"; lookups find the first point at
 *     or after the hash (wrapping to the first point);
 *   - Maglev (Envoy's MaglevTable, the paper's listing 1 with weights): hosts sorted by key,
 *     offset = xxHash64(key) % size, skip = xxHash64(key, seed 1) % (size - 1) + 1, the table
 *     filled in turns where a host takes a slot when its weight's share is due.
 * A host's key is its address as Envoy prints it ("10.0.0.1:80", "[::1]:80").
 *
 * Tables are built when the host set or its health changes, never per request; lookups allocate
 * nothing. Plain C, no Python. */
#ifndef FP_HASH_LB_H
#define FP_HASH_LB_H

#include <stddef.h>
#include <stdint.h>

#define FP_RING_HASH_XX 0        /* RingHashLbConfig.HashFunction.XX_HASH */
#define FP_RING_HASH_MURMUR2 1   /* MURMUR_HASH_2 */

#define FP_RING_DEFAULT_MIN_SIZE 1024ULL
#define FP_RING_DEFAULT_MAX_SIZE (8ULL * 1024 * 1024)
#define FP_MAGLEV_DEFAULT_TABLE_SIZE 65537ULL

/* The hosts a table is built over: host i of the table is `ids[i]` (an index the caller knows,
 * returned by picks), weighs `weights[i]` (>= 1) and hashes as keys[i][0 .. key_lens[i]). */
typedef struct {
    uint32_t n;
    const uint32_t *ids;
    const uint32_t *weights;
    const char *const *keys;
    const uint32_t *key_lens;
} fp_hash_hosts_t;

typedef struct {
    uint64_t *hashes;  /* sorted */
    uint32_t *ids;     /* ids[i] owns hashes[i] */
    uint64_t size;
} fp_ring_t;

typedef struct {
    uint32_t *ids;     /* table_size slots */
    uint64_t size;
} fp_maglev_t;

/* Build into a zeroed (or freed) table. 0 on success, -1 when out of memory (the table is then
 * empty). An empty host set gives an empty table, whose picks return -1. */
int fp_ring_build(fp_ring_t *ring, const fp_hash_hosts_t *hosts, uint64_t min_size,
                  uint64_t max_size, int hash_function);
void fp_ring_free(fp_ring_t *ring);
int fp_maglev_build(fp_maglev_t *maglev, const fp_hash_hosts_t *hosts, uint64_t table_size);
void fp_maglev_free(fp_maglev_t *maglev);

/* The id of the host owning `hash`, or -1 for an empty table.
 *
 * Envoy searches the ring with its port of ketama_get_server(): the entry i with
 * ring[i - 1] < hash <= ring[i] (ring[-1] taken as 0), and entry 0 when the hash is above the
 * last point or is 0. That is the first point at or above the hash, wrapping past the end: a
 * lower bound, done here without branches (the loop runs log2(size) times whatever the hash,
 * so a request costs the same for any key). tests/unit/test_hash_lb.py checks it against a
 * step-by-step port of Envoy's loop, edge hashes included. */
static inline int32_t fp_ring_pick(const fp_ring_t *ring, uint64_t h) {
    const uint64_t size = ring->size;
    if (size == 0)
        return -1;
    const uint64_t *base = ring->hashes;
    uint64_t len = size;
    while (len > 1) {
        const uint64_t half = len / 2;
        base = base[half] < h ? base + half : base;
        len -= half;
    }
    uint64_t i = (uint64_t)(base - ring->hashes) + (*base < h);
    if (i == size)
        i = 0;
    return (int32_t)ring->ids[i];
}

static inline int32_t fp_maglev_pick(const fp_maglev_t *maglev, uint64_t hash) {
    if (maglev->size == 0)
        return -1;
    return (int32_t)maglev->ids[hash % maglev->size];
}

/* Whether n is prime (Maglev's table size must be). */
int fp_is_prime(uint64_t n);

#endif /* FP_HASH_LB_H */
