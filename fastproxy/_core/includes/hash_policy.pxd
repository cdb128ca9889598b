# Route hash policies and hash functions (csrc/fp_hash_policy.h, csrc/fp_hash.h; link -lxxhash).

from libc.stdint cimport uint64_t
from fastproxy._core.includes.picohttpparser cimport phr_header

cdef extern from "fp_hash_policy.h" nogil:
    enum:
        FP_HP_HEADER
        FP_HP_COOKIE
        FP_HP_QUERY_PARAMETER
        FP_HP_SOURCE_IP

    ctypedef struct fp_hash_policy_t:
        int kind
        int terminal
        const char *name
        size_t name_len
        int generate

    ctypedef struct fp_hash_input_t:
        const phr_header *headers
        size_t num_headers
        const char *method
        size_t method_len
        const char *path
        size_t path_len
        const char *authority
        size_t authority_len
        const char *source_ip
        size_t source_ip_len
        const char *remote_address
        size_t remote_address_len
        const char *local_address
        size_t local_address_len

    int fp_hash_policy_eval(const fp_hash_policy_t *policies, size_t n, const fp_hash_input_t *inp,
                            uint64_t *hash, int *generated, char *cookie_value)

cdef extern from "fp_hash.h" nogil:
    uint64_t fp_xxhash64(const void *data, size_t len, uint64_t seed)
