/* Counters and token buckets that several worker processes share through a MAP_SHARED mapping.
 *
 * Everything here is lock-free: C11 atomics (the GCC/Clang __atomic builtins) on naturally
 * aligned 64-bit words, relaxed ordering (only each word's own value matters, as in Envoy's
 * resource manager and AtomicTokenBucketImpl).  Header-only: every function is static inline so
 * the Cython modules that include it pay a few instructions, not a call.
 */
#ifndef FP_SHARED_H
#define FP_SHARED_H

#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Monotonic nanoseconds; CLOCK_MONOTONIC is system-wide, so all processes agree on it. */
static inline int64_t fp_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Map a shared block created by the main process, read-write, whole.  Returns NULL (and leaves
 * *size alone) when it cannot be opened or is shorter than min_size. */
static inline void *fp_shared_map(const char *path, size_t min_size, size_t *size) {
    struct stat st;
    void *m;
    int fd = open(path, O_RDWR);
    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size < min_size) {
        close(fd);
        return NULL;
    }
    m = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return NULL;
    *size = (size_t)st.st_size;
    return m;
}

static inline int64_t fp_load(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

static inline void fp_store(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

static inline int64_t fp_add(int64_t *p, int64_t delta) {
    return __atomic_add_fetch(p, delta, __ATOMIC_RELAXED);
}

/* Take one unit of a resource limited to `max` in flight: 1 on success, 0 at the limit (the
 * count is left unchanged).  One atomic add when it succeeds, two when it does not. */
static inline int fp_try_acquire(int64_t *count, int64_t max) {
    if (fp_load(count) >= max)
        return 0;
    if (fp_add(count, 1) > max) {
        fp_add(count, -1);
        return 0;
    }
    return 1;
}

/* Give back one unit taken with fp_try_acquire (never below zero: a reclaimed worker's share
 * may already have been subtracted). */
static inline void fp_release(int64_t *count) {
    if (fp_add(count, -1) < 0)
        fp_add(count, 1);
}

/* A token bucket in one shared 64-bit word, as Envoy's AtomicTokenBucketImpl (after folly's
 * TokenBucket): the word holds the time `t` at which the bucket was empty, so the tokens now are
 * min(max_tokens, (now - t) * rate).  Refill is continuous; consuming a token moves `t` forward
 * by 1 / rate.  t == 0 means full (a freshly zeroed block).  `rate` is tokens per nanosecond. */
static inline double fp_bucket_tokens(int64_t t, int64_t now, double max_tokens, double rate) {
    double tokens;
    if (t == 0)
        return max_tokens;
    if (now <= t)
        return 0.0;
    tokens = (double)(now - t) * rate;
    return tokens < max_tokens ? tokens : max_tokens;
}

/* Take one token: 1 if taken, 0 if the bucket has less than one. */
static inline int fp_bucket_consume(int64_t *word, int64_t now, double max_tokens, double rate) {
    int64_t old = fp_load(word);
    int tries;
    for (tries = 0; tries < 1000; tries++) {
        double tokens = fp_bucket_tokens(old, now, max_tokens, rate);
        int64_t t_new;
        if (tokens < 1.0)
            return 0;
        t_new = now - (int64_t)llround((tokens - 1.0) / rate);
        if (t_new == 0)
            t_new = 1;
        if (__atomic_compare_exchange_n(word, &old, t_new, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return 1;
    }
    return 0; /* contention beyond reason: deny rather than spin */
}

/* Whole tokens left now. */
static inline int64_t fp_bucket_remaining(const int64_t *word, int64_t now, double max_tokens,
                                          double rate) {
    return (int64_t)floor(fp_bucket_tokens(fp_load(word), now, max_tokens, rate));
}

#endif /* FP_SHARED_H */
