/* The hash functions Envoy's consistent-hashing load balancers and route hash policies use:
 * xxHash64 (the xxhash library, seed 0 unless said otherwise) and the 64-bit MurmurHash2 of
 * libstdc++'s std::_Hash_bytes, which ring hash's MURMUR_HASH_2 option selects.
 *
 * Plain C, no Python. */
#ifndef FP_HASH_H
#define FP_HASH_H

#include <stddef.h>
#include <stdint.h>

/* The seed Envoy passes to MurmurHash2 for ring hash (its MurmurHash::STD_HASH_SEED). */
#define FP_MURMUR_STD_SEED 0xc70f6907ULL

uint64_t fp_xxhash64(const void *data, size_t len, uint64_t seed);

/* xxHash64 (seed 0) of the concatenation of `n` byte strings, without copying them. */
uint64_t fp_xxhash64_concat(const char *const *parts, const size_t *lens, size_t n);

/* Envoy's HashUtil::xxHash64 of a list of strings: each one hashed with the previous hash as its
 * seed (the first with seed 0); one string gives its plain xxHash64. */
uint64_t fp_xxhash64_chain(const char *const *parts, const size_t *lens, size_t n);

/* MurmurHash64A as libstdc++ applies it to byte strings: 8-byte little-endian words, the tail
 * loaded as a little-endian integer, a final shift-xor/multiply/shift-xor. */
uint64_t fp_murmur2_64(const void *data, size_t len, uint64_t seed);

#endif /* FP_HASH_H */
