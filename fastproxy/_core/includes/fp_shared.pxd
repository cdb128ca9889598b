# What csrc/fp_shared.h exports: atomic counters and token buckets in shared memory.
from libc.stdint cimport int64_t

cdef extern from "fp_shared.h" nogil:
    void *fp_shared_map(const char *path, size_t min_size, size_t *size)
    int64_t fp_now_ns()
    int64_t fp_load(const int64_t *p)
    void fp_store(int64_t *p, int64_t v)
    int64_t fp_add(int64_t *p, int64_t delta)
    int fp_try_acquire(int64_t *count, int64_t max)
    void fp_release(int64_t *count)
    double fp_bucket_tokens(int64_t t, int64_t now, double max_tokens, double rate)
    int fp_bucket_consume(int64_t *word, int64_t now, double max_tokens, double rate)
    int64_t fp_bucket_remaining(const int64_t *word, int64_t now, double max_tokens, double rate)
