/* Hash functions: see fp_hash.h. */
#include "fp_hash.h"

#include <string.h>

#define XXH_STATIC_LINKING_ONLY /* XXH64_state_t on the stack: no allocation per hash */
#include <xxhash.h>

uint64_t fp_xxhash64(const void *data, size_t len, uint64_t seed) {
    return (uint64_t)XXH64(data, len, (XXH64_hash_t)seed);
}

uint64_t fp_xxhash64_concat(const char *const *parts, const size_t *lens, size_t n) {
    if (n == 1)
        return (uint64_t)XXH64(parts[0], lens[0], 0);
    XXH64_state_t state;
    XXH64_reset(&state, 0);
    for (size_t i = 0; i < n; i++)
        XXH64_update(&state, parts[i], lens[i]);
    return (uint64_t)XXH64_digest(&state);
}

uint64_t fp_xxhash64_chain(const char *const *parts, const size_t *lens, size_t n) {
    uint64_t h = 0;
    for (size_t i = 0; i < n; i++)
        h = (uint64_t)XXH64(parts[i], lens[i], (XXH64_hash_t)h);
    return h;
}

static inline uint64_t shift_mix(uint64_t v) { return v ^ (v >> 47); }

uint64_t fp_murmur2_64(const void *data, size_t len, uint64_t seed) {
    const uint64_t m = 0xc6a4a7935bd1e995ULL;
    const unsigned char *p = data;
    const size_t whole = len & ~(size_t)7;
    uint64_t h = seed ^ ((uint64_t)len * m);
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t k = 0;
        for (int b = 7; b >= 0; b--) /* little-endian word, whatever the host order */
            k = (k << 8) | p[i + (size_t)b];
        h ^= shift_mix(k * m) * m;
        h *= m;
    }
    const size_t rest = len & 7;
    if (rest) {
        uint64_t k = 0;
        for (size_t b = rest; b-- > 0;)
            k = (k << 8) | p[whole + b];
        h ^= k;
        h *= m;
    }
    h = shift_mix(h) * m;
    return shift_mix(h);
}
