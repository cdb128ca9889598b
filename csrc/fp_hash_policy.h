/* Route hash policies (Envoy's Http::HashPolicyImpl): the hash a request gives a RING_HASH or
 * MAGLEV cluster, from its headers, a cookie, a query parameter or the downstream address.
 *
 * Each policy yields a hash or nothing; hashes combine in order as
 *     hash = rotate_left(hash, 1) ^ next        (the first one as is),
 * and a terminal policy stops the evaluation once there is a hash. Per policy:
 *   header           the values of the header sorted bytewise, each hashed with xxHash64
 *                    seeded by the previous one's hash (the first with 0); ":authority",
 *                    ":path", ":method" are the request's own;
 *   cookie           xxHash64 of the first cookie of that name in the Cookie headers (quotes
 *                    around the value removed); when it is absent or empty and the policy has a
 *                    ttl, a cookie is generated: its value is the 16 lower-case hex digits of
 *                    xxHash64(remote address + local address, Envoy's "ip:port" forms), the hash
 *                    is xxHash64 of that value, and the caller adds a Set-Cookie for it;
 *   query_parameter  xxHash64 of the first value of the parameter (no percent-decoding; a
 *                    parameter without '=' has the empty value);
 *   source_ip        xxHash64 of the downstream IP address ("10.0.0.1", "::1").
 *
 * Plain C, no Python; nothing allocated. */
#ifndef FP_HASH_POLICY_H
#define FP_HASH_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "fp_picohttpparser.h"

#define FP_HP_HEADER 0
#define FP_HP_COOKIE 1
#define FP_HP_QUERY_PARAMETER 2
#define FP_HP_SOURCE_IP 3

typedef struct {
    int kind;
    int terminal;
    const char *name;  /* header name (lower case), cookie name or query parameter name */
    size_t name_len;
    int generate;      /* cookie: a ttl is set, generate the cookie when absent */
} fp_hash_policy_t;

typedef struct {
    const struct phr_header *headers;
    size_t num_headers;
    const char *method;
    size_t method_len;
    const char *path;           /* the request path with its query */
    size_t path_len;
    const char *authority;      /* Host (or the absolute-form authority); NULL if none */
    size_t authority_len;
    const char *source_ip;      /* NULL when unknown */
    size_t source_ip_len;
    const char *remote_address; /* "ip:port" / "[ip]:port"; NULL when unknown */
    size_t remote_address_len;
    const char *local_address;
    size_t local_address_len;
} fp_hash_input_t;

/* Evaluates `n` policies. Returns 1 and sets *hash when they produced a hash, else 0. When a
 * cookie was generated, *generated is the index of its policy and cookie_value holds its 16 hex
 * digits (NUL-terminated); otherwise *generated is -1. */
int fp_hash_policy_eval(const fp_hash_policy_t *policies, size_t n, const fp_hash_input_t *in,
                        uint64_t *hash, int *generated, char cookie_value[17]);

#endif /* FP_HASH_POLICY_H */
