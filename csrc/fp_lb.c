/* Load balancer picks: see fp_lb.h for the contract.
 *
 * Layout: hosts live in one array in cluster order. Each priority level owns a slice of two index
 * arrays (its hosts, and the hosts it currently picks from: the healthy ones, or all of them when
 * the level is in panic) and a slice of the EDF heap storage. Everything is allocated in
 * fp_lb_new(); rebuilding after a health change reuses the same storage.
 *
 * Semantics follow Envoy's load_balancer_impl.cc, round_robin_lb.h, least_request_lb.cc,
 * random_lb.cc and edf_scheduler.h:
 *   - priority loads: health = min(100, overprovisioning * healthy / hosts) per level; the load
 *     goes to the lowest levels first, scaled by the normalized total availability; rounding
 *     leftovers go to the first level with any health; panic per level when the total
 *     availability is below 100 and the healthy percentage is below the threshold; when all
 *     levels panic the load follows host counts.
 *   - a level picks through an EDF schedule when it has 2+ hosts of unequal weights (or, for
 *     LEAST_REQUEST, when the bias forces weighted selection); otherwise round robin with an
 *     index that starts at the balancer's seed, or N random choices for LEAST_REQUEST.
 *   - the EDF schedule starts as if `seed` picks had already been made, so workers seeded
 *     differently start at different points of the rotation.
 *   - RANDOM ignores weights.
 *   - RING_HASH and MAGLEV (Envoy's thread-aware balancers): each level has a table built over
 *     its `use` hosts (healthy, or all in panic) whenever that set changes; a pick takes the
 *     level from hash % 100 + 1 against the cumulative loads, then the table's host. Without a
 *     request hash a random one is drawn.
 *   - slow start (ROUND_ROBIN, LEAST_REQUEST; Envoy's EdfLoadBalancerBase): each healthy host
 *     younger than the window has its weight scaled by max(min_weight, time_factor ^
 *     (1 / aggression)), applied when the EDF schedule is built and at every re-add, as Envoy's
 *     hostWeight() does; while any host is in slow start every level uses EDF. Envoy recomputes
 *     on host set updates; here picks also refresh the factors (and rebuild the schedules) at
 *     most every FP_LB_SLOW_START_REFRESH seconds, reading a coarse monotonic clock only while
 *     some host is in slow start. A rebuild resumes the rotation where it was (the schedule is
 *     built as if seed + picks-so-far picks had been made) instead of restarting it.
 *   - locality weighted balancing (Envoy's locality_weighted_lb_config, HostSetImpl's locality
 *     scheduler): each locality is a pool shaped like a level (its hosts, its healthy ones, its
 *     round robin index and EDF schedule). A level not in panic keeps an EDF schedule over its
 *     localities' effective weights, weight * min(1, overprovisioning * healthy / hosts), built
 *     on every host set change as if `seed` picks had been made; a pick then draws the locality
 *     before the host. In panic a level picks from all its hosts, localities ignored. */
#include "fp_lb.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    uint32_t weight;
    uint32_t active;   /* requests started and not finished */
    uint16_t priority;
    uint8_t healthy;
    uint8_t unused;
} fp_lb_host_t;

/* An EDF entry is one 128-bit key: the deadline's bits (a non-negative double orders like its
 * bit pattern) above the insertion order (ties go first-in first-out) above the host index.
 * Comparing entries is one integer comparison, and four siblings fill one cache line. */
#ifndef __SIZEOF_INT128__
#error "fp_lb.c needs unsigned __int128 (GCC or Clang on a 64-bit target)"
#endif
typedef unsigned __int128 fp_edf_entry_t;

typedef struct {
    fp_edf_entry_t *heap; /* 4-ary min-heap; heap + 1 is 64-byte aligned, so siblings share a line */
    uint32_t size;
    uint32_t order;       /* next insertion order; renumbered before it wraps */
} fp_edf_t;

#define SOURCE_HEALTHY 0
#define SOURCE_ALL 1

typedef struct {
    uint32_t *hosts;      /* the level's hosts, cluster order */
    uint32_t num_hosts;
    uint32_t *use;        /* the hosts picks come from (healthy, or all in panic), cluster order */
    uint32_t num_use;
    uint32_t num_healthy;
    uint32_t load;        /* percent of picks that land on this level */
    uint8_t panic;
    uint8_t weighted;     /* picks go through `edf` */
    uint8_t source;       /* SOURCE_HEALTHY / SOURCE_ALL: what `use` holds */
    uint32_t rr_pos;      /* rr_count[source] % num_use, kept without a division per pick */
    uint64_t rr_count[2]; /* round robin index per source; survives rebuilds like Envoy's */
    fp_edf_t edf;
    uint64_t edf_picks;   /* picks made through `edf` (slow start rebuilds resume from it) */
    fp_ring_t ring;       /* RING_HASH */
    fp_maglev_t maglev;   /* MAGLEV */
    /* locality weighted balancing (levels only; a locality's pool has none) */
    uint32_t *loc_ids;    /* the level's localities (indexes into lb->locs) */
    uint32_t num_locs;
    uint32_t *loc_use;    /* those with an effective weight above 0 */
    uint32_t num_loc_use;
    uint8_t loc_pick;     /* picks draw a locality first */
    fp_edf_t loc_edf;     /* over loc_use, weighted by lb->loc_eff (2+ localities) */
    uint64_t loc_picks;
} fp_lb_level_t;

struct fp_lb {
    int policy;
    uint32_t num_hosts;
    uint32_t num_levels;
    int32_t only_level;   /* the level with 100% of the load, or -1 when it is split */
    fp_lb_host_t *hosts;
    fp_lb_level_t *levels;
    uint64_t rng[4];      /* xoshiro256** state */
    uint64_t seed;        /* drawn once from rng: round robin start and EDF pre-picks */
    uint32_t choice_count;
    double bias;
    int bias_forces_weighted;
    uint32_t overprovisioning_factor;
    uint32_t panic_threshold;
    uint32_t *index_storage;     /* 2 * num_hosts: the levels' `hosts` then `use` slices */
    void *heap_storage;          /* the levels' heap slices, 64-byte aligned */
    /* RING_HASH / MAGLEV */
    uint64_t min_ring_size;
    uint64_t max_ring_size;
    int hash_function;
    uint64_t table_size;
    char *key_blob;              /* the host keys, back to back */
    const char **keys;           /* per host: its key in key_blob */
    uint32_t *key_lens;
    uint32_t *scratch;           /* num_hosts weights, for table builds */
    const char **scratch_keys;
    uint32_t *scratch_lens;
    /* slow start (ss_start is NULL when disabled) */
    double ss_window;
    double ss_aggression;
    double ss_min_weight;
    double *ss_start;            /* per host: when it joined or became healthy */
    double *ss_factor;           /* per host: its weight's scale (1.0 outside slow start) */
    double ss_now;               /* the time of the last refresh */
    double ss_next;              /* picks refresh at or after this time */
    int ss_active;               /* some host is in slow start: factors apply, EDF forced */
    int ss_manual;               /* picks never read the clock */
    /* locality weighted balancing (num_localities 0 when disabled) */
    uint32_t num_localities;
    fp_lb_level_t *locs;         /* per locality: its pool */
    uint32_t *loc_weight;        /* per locality: its configured weight */
    double *loc_eff;             /* per locality: its effective weight now */
    uint32_t *loc_storage;       /* pools' `hosts` and `use`, levels' `loc_ids` and `loc_use` */
    void *loc_heap_storage;      /* pools' and levels' locality heaps, 64-byte aligned */
};

static inline int is_hashing(int policy) {
    return policy == FP_LB_RING_HASH || policy == FP_LB_MAGLEV;
}

/* ---- PRNG: xoshiro256**, seeded through splitmix64 ---- */

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t rng_next(uint64_t *s) {
    const uint64_t result = rotl64(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

/* A value in [0, n) from the high 32 bits of r, by multiply-shift (no division). */
static inline uint32_t bounded(uint64_t r, uint32_t n) {
    return (uint32_t)(((r >> 32) * (uint64_t)n) >> 32);
}

/* ---- EDF scheduler ---- */

static inline uint64_t double_bits(double d) {
    uint64_t u;
    memcpy(&u, &d, sizeof(u));
    return u;
}

static inline double bits_double(uint64_t u) {
    double d;
    memcpy(&d, &u, sizeof(d));
    return d;
}

static inline fp_edf_entry_t edf_entry(double deadline, uint32_t order, uint32_t host) {
    return ((fp_edf_entry_t)double_bits(deadline) << 64) | ((uint64_t)order << 32) | host;
}

static inline double edf_deadline(fp_edf_entry_t e) { return bits_double((uint64_t)(e >> 64)); }

static inline uint32_t edf_host(fp_edf_entry_t e) { return (uint32_t)e; }

/* Sinks `item` from position i. Children of i are 4i+1 .. 4i+4; the three entries after the
 * last one hold EDF_PAD (above any real entry), so every node has four children to compare. */
#define EDF_PAD (~(fp_edf_entry_t)0)

static void edf_sift_down(fp_edf_entry_t *heap, uint32_t size, uint32_t i, fp_edf_entry_t item) {
    for (uint32_t c = 4 * i + 1; c < size; c = 4 * i + 1) {
        /* Two independent comparisons, then one: the compiler makes them branch-free. */
        const uint32_t m01 = heap[c + 1] < heap[c] ? c + 1 : c;
        const uint32_t m23 = heap[c + 3] < heap[c + 2] ? c + 3 : c + 2;
        const uint32_t m = heap[m23] < heap[m01] ? m23 : m01;
        const fp_edf_entry_t least = heap[m];
        if (!(least < item))
            break;
        heap[i] = least;
        i = m;
    }
    heap[i] = item;
}

static int edf_entry_cmp(const void *a, const void *b) {
    const fp_edf_entry_t x = *(const fp_edf_entry_t *)a, y = *(const fp_edf_entry_t *)b;
    return x < y ? -1 : x > y;
}

/* Before the 32-bit insertion order wraps (after ~4 billion picks of one schedule), number the
 * entries again 0..n-1 in their current order. A sorted array is a valid heap. */
static void edf_renumber(fp_edf_t *edf) {
    qsort(edf->heap, edf->size, sizeof(fp_edf_entry_t), edf_entry_cmp);
    for (uint32_t i = 0; i < edf->size; i++)
        edf->heap[i] = edf_entry(edf_deadline(edf->heap[i]), i, edf_host(edf->heap[i]));
    edf->order = edf->size;
}

static inline double host_weight(const fp_lb_t *lb, uint32_t host) {
    const fp_lb_host_t *h = &lb->hosts[host];
    double weight = (double)h->weight;
    if (lb->ss_active)
        weight *= lb->ss_factor[host];
    if (lb->policy == FP_LB_LEAST_REQUEST) {
        /* weight / (active + 1)^bias; bias 0 is plain weighted round robin. */
        if (lb->bias == 1.0)
            weight /= (double)h->active + 1.0;
        else if (lb->bias != 0.0)
            weight /= pow((double)h->active + 1.0, lb->bias);
    }
    return weight;
}

/* Pops the earliest deadline (the scheduler's time moves to it) and pushes the same host back
 * with a deadline one period (1 / its weight now) later: the new entry replaces the top and
 * sinks, which is what a pop followed by a push leaves, entries being totally ordered. */
static inline double entry_weight(const fp_lb_t *lb, const double *w, uint32_t id) {
    return w ? w[id] : host_weight(lb, id);
}

/* `w`: the entries' weights (locality schedules), or NULL for host weights. */
static inline uint32_t edf_pick_and_add(fp_lb_t *lb, fp_edf_t *edf, const double *w) {
    const fp_edf_entry_t top = edf->heap[0];
    const uint32_t host = edf_host(top);
    if (edf->order == UINT32_MAX)
        edf_renumber(edf); /* the top stays first: same deadline, lowest order */
    const double deadline = edf_deadline(top) + 1.0 / entry_weight(lb, w, host);
    edf_sift_down(edf->heap, edf->size, 0, edf_entry(deadline, edf->order++, host));
    return host;
}

/* Builds the schedule of `use` as if `picks` picks had been made from a fresh one (Envoy's
 * createWithPicks): most picks are accounted for in closed form, the rest (< n) are made. The
 * scheduler's time is implicit: every deadline is at or after it, and a pick moves it to the
 * picked deadline. */
static void edf_build(fp_lb_t *lb, fp_edf_t *edf, const uint32_t *use, uint32_t n, uint32_t picks,
                      const double *w) {
    const double epsilon = 1e-13; /* keeps weights that are multiples of each other exact */
    double sum = 0.0;
    uint32_t done = 0;
    picks %= 429496729u;
    for (uint32_t i = 0; i < n; i++)
        sum += entry_weight(lb, w, use[i]) + epsilon;
    for (uint32_t i = 0; i < n; i++) {
        const double weight = entry_weight(lb, w, use[i]) + epsilon;
        uint32_t floor_picks = (uint32_t)(weight * (double)picks / sum);
        if (floor_picks > 0 && (double)floor_picks / weight >= (double)picks / sum)
            floor_picks--;
        edf->heap[i] = edf_entry((double)(floor_picks + 1) / weight, i, use[i]);
        done += floor_picks;
    }
    edf->heap[n] = edf->heap[n + 1] = edf->heap[n + 2] = EDF_PAD;
    edf->size = n;
    edf->order = n;
    for (uint32_t i = (n - 2) / 4 + 1; i-- > 0;) /* from the last parent up; n >= 2 here */
        edf_sift_down(edf->heap, n, i, edf->heap[i]);
    for (; done < picks; done++)
        edf_pick_and_add(lb, edf, w);
}

/* ---- priority loads, panic, per-level sources ---- */

static int weights_equal(const fp_lb_t *lb, const uint32_t *use, uint32_t n) {
    for (uint32_t i = 1; i < n; i++)
        if (lb->hosts[use[i]].weight != lb->hosts[use[0]].weight)
            return 0;
    return 1;
}

/* Rebuilds the consistent-hashing table of a level over its `use` hosts. Out of memory leaves
 * the table empty (its picks find no host) rather than failing the health update. */
static void level_build_table(fp_lb_t *lb, fp_lb_level_t *level) {
    fp_ring_free(&level->ring);
    fp_maglev_free(&level->maglev);
    const uint32_t n = level->num_use;
    for (uint32_t i = 0; i < n; i++) {
        const uint32_t host = level->use[i];
        lb->scratch[i] = lb->hosts[host].weight;
        lb->scratch_keys[i] = lb->keys[host];
        lb->scratch_lens[i] = lb->key_lens[host];
    }
    const fp_hash_hosts_t hosts = {n, level->use, lb->scratch, lb->scratch_keys, lb->scratch_lens};
    if (lb->policy == FP_LB_RING_HASH)
        fp_ring_build(&level->ring, &hosts, lb->min_ring_size, lb->max_ring_size,
                      lb->hash_function);
    else
        fp_maglev_build(&level->maglev, &hosts, lb->table_size);
}

/* Builds what a level or a locality's pool picks from (its panic flag says which hosts). */
static void pool_build_source(fp_lb_t *lb, fp_lb_level_t *level) {
    const uint8_t source = level->panic ? SOURCE_ALL : SOURCE_HEALTHY;
    uint32_t n = 0;
    for (uint32_t i = 0; i < level->num_hosts; i++) {
        const uint32_t host = level->hosts[i];
        if (source == SOURCE_ALL || lb->hosts[host].healthy)
            level->use[n++] = host;
    }
    level->num_use = n;
    level->source = source;
    level->rr_pos = n ? (uint32_t)(level->rr_count[source] % n) : 0;
    level->weighted = 0;
    level->edf.size = 0;
    if (is_hashing(lb->policy)) {
        level_build_table(lb, level);
        return;
    }
    if (lb->policy == FP_LB_RANDOM || n <= 1)
        return;
    if (weights_equal(lb, level->use, n) && !lb->ss_active &&
        !(lb->policy == FP_LB_LEAST_REQUEST && lb->bias_forces_weighted))
        return;
    level->weighted = 1;
    /* Without slow start a rebuild starts the rotation afresh, as Envoy's refresh does; with it
     * rebuilds are periodic, and restarting each time would favour the first hosts. */
    const uint64_t picks = lb->ss_start ? lb->seed + level->edf_picks : lb->seed;
    edf_build(lb, &level->edf, level->use, n, (uint32_t)picks, NULL);
}

/* Locality weighted balancing: rebuilds the pools of the level's localities, their effective
 * weights and the level's locality schedule (Envoy's effectiveLocalityWeight and
 * rebuildLocalityScheduler). */
static void level_build_localities(fp_lb_t *lb, fp_lb_level_t *level) {
    uint32_t n = 0;
    level->loc_pick = 0;
    level->num_loc_use = 0;
    level->loc_edf.size = 0;
    for (uint32_t i = 0; i < level->num_locs; i++) {
        const uint32_t id = level->loc_ids[i];
        fp_lb_level_t *pool = &lb->locs[id];
        double eff = 0.0;
        lb->loc_eff[id] = 0.0;
        if (level->panic)
            continue;
        pool->panic = 0;
        pool_build_source(lb, pool);
        if (pool->num_hosts > 0 && pool->num_use > 0) {
            double availability = (lb->overprovisioning_factor / 100.0) *
                                  ((double)pool->num_use / (double)pool->num_hosts);
            if (availability > 1.0)
                availability = 1.0;
            eff = (double)lb->loc_weight[id] * availability;
        }
        lb->loc_eff[id] = eff;
        if (eff > 0.0)
            level->loc_use[n++] = id;
    }
    level->num_loc_use = n;
    if (n == 0)
        return; /* no locality to weigh: the level's healthy hosts, as without localities */
    level->loc_pick = 1;
    if (n >= 2) {
        const uint64_t picks = lb->ss_start ? lb->seed + level->loc_picks : lb->seed;
        edf_build(lb, &level->loc_edf, level->loc_use, n, (uint32_t)picks, lb->loc_eff);
    }
}

static void level_build_source(fp_lb_t *lb, fp_lb_level_t *level) {
    pool_build_source(lb, level);
    if (level->num_locs > 0)
        level_build_localities(lb, level);
}

/* Recomputes loads and panic flags of every level; rebuilds the sources of `changed` (-1: all)
 * and of every level whose panic flag flipped. */
static void recompute(fp_lb_t *lb, int32_t changed) {
    const uint32_t levels = lb->num_levels;
    uint32_t health_sum = 0, total_hosts = 0;
    uint8_t old_panic[FP_LB_MAX_PRIORITY + 1];
    uint32_t health[FP_LB_MAX_PRIORITY + 1];

    for (uint32_t p = 0; p < levels; p++) {
        fp_lb_level_t *level = &lb->levels[p];
        uint32_t healthy = 0;
        for (uint32_t i = 0; i < level->num_hosts; i++)
            healthy += lb->hosts[level->hosts[i]].healthy;
        level->num_healthy = healthy;
        health[p] = 0;
        if (level->num_hosts > 0) {
            const uint64_t h = (uint64_t)lb->overprovisioning_factor * healthy / level->num_hosts;
            health[p] = h > 100 ? 100 : (uint32_t)h;
        }
        health_sum += health[p];
        total_hosts += level->num_hosts;
        old_panic[p] = level->panic;
        level->load = 0;
        level->panic = 0;
    }
    const uint32_t availability = health_sum > 100 ? 100 : health_sum;

    if (availability > 0) {
        uint32_t remaining = 100;
        int32_t first = -1;
        for (uint32_t p = 0; p < levels; p++) {
            if (first < 0 && health[p] > 0)
                first = (int32_t)p;
            uint32_t load = health[p] * 100 / availability;
            if (load > remaining)
                load = remaining;
            lb->levels[p].load = load;
            remaining -= load;
        }
        lb->levels[first].load += remaining;
    }

    if (lb->panic_threshold == 0 && availability == 0) {
        /* No healthy host and panic disabled: P0 takes the load and finds nothing. */
        lb->levels[0].load = 100;
    } else {
        int total_panic = 1;
        for (uint32_t p = 0; p < levels; p++) {
            fp_lb_level_t *level = &lb->levels[p];
            const double healthy_percent =
                level->num_hosts ? 100.0 * level->num_healthy / level->num_hosts : 0.0;
            level->panic = availability < 100 && healthy_percent < (double)lb->panic_threshold;
            total_panic = total_panic && level->panic;
        }
        if (total_panic) {
            /* Every level in panic: the load follows host counts, regardless of health. */
            uint32_t remaining = 100;
            int32_t first = -1;
            for (uint32_t p = 0; p < levels; p++) {
                fp_lb_level_t *level = &lb->levels[p];
                if (first < 0 && level->num_hosts > 0)
                    first = (int32_t)p;
                level->load = total_hosts ? 100 * level->num_hosts / total_hosts : 0;
                remaining -= level->load;
            }
            lb->levels[first < 0 ? 0 : first].load += remaining;
        }
    }

    lb->only_level = -1;
    for (uint32_t p = 0; p < levels; p++) {
        fp_lb_level_t *level = &lb->levels[p];
        if (changed < 0 || (uint32_t)changed == p || old_panic[p] != level->panic)
            level_build_source(lb, level);
        if (level->load == 100)
            lb->only_level = (int32_t)p;
    }
}

/* ---- slow start ---- */

double fp_lb_monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The clock picks read: same origin as CLOCK_MONOTONIC, a few ms coarse and cheaper. */
static double coarse_monotonic(void) {
#ifdef CLOCK_MONOTONIC_COARSE
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
#else
    return fp_lb_monotonic();
#endif
}

/* Recomputes every host's factor at `now` (no schedule rebuild); returns ss_active. */
static int slow_start_update(fp_lb_t *lb, double now) {
    int any = 0;
    for (uint32_t i = 0; i < lb->num_hosts; i++) {
        double factor = 1.0;
        const double age = now - lb->ss_start[i];
        if (lb->hosts[i].healthy && age < lb->ss_window) {
            /* Envoy counts at least 1 ms in the window. */
            double time_factor = (age > 0.001 ? age : 0.001) / lb->ss_window;
            if (time_factor > 1.0)
                time_factor = 1.0;
            if (lb->ss_aggression != 1.0)
                time_factor = pow(time_factor, 1.0 / lb->ss_aggression);
            factor = time_factor > lb->ss_min_weight ? time_factor : lb->ss_min_weight;
            any = 1;
        }
        lb->ss_factor[i] = factor;
    }
    lb->ss_active = any;
    lb->ss_now = now;
    lb->ss_next = now + FP_LB_SLOW_START_REFRESH;
    return any;
}

int fp_lb_slow_start_refresh(fp_lb_t *lb, double now) {
    if (!lb->ss_start)
        return 0;
    const int was = lb->ss_active;
    const int any = slow_start_update(lb, now);
    if (any || was)
        for (uint32_t p = 0; p < lb->num_levels; p++)
            level_build_source(lb, &lb->levels[p]);
    return any;
}

int fp_lb_set_host_start(fp_lb_t *lb, int32_t host, double start) {
    if ((uint32_t)host >= lb->num_hosts)
        return -1;
    if (lb->ss_start)
        lb->ss_start[host] = start;
    return 0;
}

double fp_lb_host_start(const fp_lb_t *lb, int32_t host) {
    if ((uint32_t)host >= lb->num_hosts || !lb->ss_start)
        return 0.0;
    return lb->ss_start[host];
}

int fp_lb_in_slow_start(const fp_lb_t *lb) { return lb->ss_active; }

double fp_lb_effective_weight(const fp_lb_t *lb, int32_t host) {
    if ((uint32_t)host >= lb->num_hosts)
        return 0.0;
    const double weight = (double)lb->hosts[host].weight;
    return lb->ss_active ? weight * lb->ss_factor[host] : weight;
}

/* ---- public API ---- */

void fp_lb_config_init(fp_lb_config_t *config, int policy, uint64_t seed) {
    memset(config, 0, sizeof(*config));
    config->policy = policy;
    config->seed = seed;
    config->choice_count = FP_LB_DEFAULT_CHOICE_COUNT;
    config->active_request_bias = 1.0;
    config->bias_forces_weighted = 0;
    config->overprovisioning_factor = FP_LB_DEFAULT_OVERPROVISIONING_FACTOR;
    config->panic_threshold = FP_LB_DEFAULT_PANIC_THRESHOLD;
    config->min_ring_size = FP_RING_DEFAULT_MIN_SIZE;
    config->max_ring_size = FP_RING_DEFAULT_MAX_SIZE;
    config->hash_function = FP_RING_HASH_XX;
    config->table_size = FP_MAGLEV_DEFAULT_TABLE_SIZE;
    config->slow_start_aggression = 1.0;
    config->slow_start_min_weight = 0.1;
    config->now = -1.0;
}

/* Locality weighted balancing: allocates and slices the pools and the levels' locality lists.
 * Returns FP_LB_OK or an error code. */
static int setup_localities(fp_lb_t *lb, const fp_lb_config_t *config,
                            const uint32_t *priorities) {
    const uint32_t L = config->num_localities, num_hosts = lb->num_hosts;
    lb->locs = calloc(L, sizeof(*lb->locs));
    lb->loc_weight = calloc(L, sizeof(*lb->loc_weight));
    lb->loc_eff = calloc(L, sizeof(*lb->loc_eff));
    lb->loc_storage = calloc(2 * (size_t)num_hosts + 2 * (size_t)L + 1, sizeof(uint32_t));
    if (!lb->locs || !lb->loc_weight || !lb->loc_eff || !lb->loc_storage)
        return FP_LB_ENOMEM;
    /* Each locality's priority: the one of its first host; the others must share it. */
    uint32_t *prio = malloc((size_t)L * sizeof(uint32_t) + 1);
    if (!prio)
        return FP_LB_ENOMEM;
    for (uint32_t l = 0; l < L; l++)
        prio[l] = UINT32_MAX;
    for (uint32_t i = 0; i < num_hosts; i++) {
        const uint32_t l = config->host_locality[i];
        if (prio[l] == UINT32_MAX)
            prio[l] = priorities[i];
        else if (prio[l] != priorities[i]) {
            free(prio);
            return FP_LB_ELOCALITY;
        }
        lb->locs[l].num_hosts++;
    }
    size_t heap_entries = 0;
    for (uint32_t l = 0; l < L; l++) {
        lb->loc_weight[l] = config->locality_weights ? config->locality_weights[l] : 1;
        heap_entries += ((size_t)lb->locs[l].num_hosts + 6 + 3) / 4 * 4;
        if (prio[l] != UINT32_MAX)
            lb->levels[prio[l]].num_locs++;
    }
    for (uint32_t p = 0; p < lb->num_levels; p++)
        heap_entries += ((size_t)lb->levels[p].num_locs + 6 + 3) / 4 * 4;
    lb->loc_heap_storage = aligned_alloc(64, heap_entries * sizeof(fp_edf_entry_t));
    if (!lb->loc_heap_storage) {
        free(prio);
        return FP_LB_ENOMEM;
    }
    size_t heap_offset = 0;
    uint32_t offset = 0;
    for (uint32_t l = 0; l < L; l++) {
        fp_lb_level_t *pool = &lb->locs[l];
        pool->hosts = lb->loc_storage + offset;
        pool->use = lb->loc_storage + num_hosts + offset;
        pool->edf.heap = (fp_edf_entry_t *)lb->loc_heap_storage + heap_offset + 3;
        heap_offset += ((size_t)pool->num_hosts + 6 + 3) / 4 * 4;
        pool->rr_count[SOURCE_HEALTHY] = lb->seed;
        pool->rr_count[SOURCE_ALL] = lb->seed;
        offset += pool->num_hosts;
        pool->num_hosts = 0;
    }
    offset = 0;
    for (uint32_t p = 0; p < lb->num_levels; p++) {
        fp_lb_level_t *level = &lb->levels[p];
        level->loc_ids = lb->loc_storage + 2 * (size_t)num_hosts + offset;
        level->loc_use = lb->loc_storage + 2 * (size_t)num_hosts + L + offset;
        level->loc_edf.heap = (fp_edf_entry_t *)lb->loc_heap_storage + heap_offset + 3;
        heap_offset += ((size_t)level->num_locs + 6 + 3) / 4 * 4;
        offset += level->num_locs;
        level->num_locs = 0;
    }
    for (uint32_t i = 0; i < num_hosts; i++) {
        fp_lb_level_t *pool = &lb->locs[config->host_locality[i]];
        pool->hosts[pool->num_hosts++] = i;
    }
    for (uint32_t l = 0; l < L; l++)
        if (prio[l] != UINT32_MAX) {
            fp_lb_level_t *level = &lb->levels[prio[l]];
            level->loc_ids[level->num_locs++] = l;
        }
    free(prio);
    lb->num_localities = L;
    return FP_LB_OK;
}

fp_lb_t *fp_lb_new(const fp_lb_config_t *config, uint32_t num_hosts, const uint32_t *weights,
                   const uint32_t *priorities, int *err) {
    uint32_t max_priority = 0;
    *err = FP_LB_OK;
    if (config->policy != FP_LB_ROUND_ROBIN && config->policy != FP_LB_LEAST_REQUEST &&
        config->policy != FP_LB_RANDOM && !is_hashing(config->policy)) {
        *err = FP_LB_EPOLICY;
        return NULL;
    }
    if (config->policy == FP_LB_RING_HASH && config->min_ring_size > config->max_ring_size) {
        *err = FP_LB_ERING;
        return NULL;
    }
    if (config->policy == FP_LB_MAGLEV && !fp_is_prime(config->table_size)) {
        *err = FP_LB_ETABLE;
        return NULL;
    }
    if (is_hashing(config->policy) && num_hosts > 0 &&
        (!config->host_keys || !config->host_key_lens)) {
        *err = FP_LB_EKEYS;
        return NULL;
    }
    if (config->choice_count < 1) {
        *err = FP_LB_ECHOICES;
        return NULL;
    }
    if (!(config->active_request_bias >= 0.0)) { /* also refuses NaN */
        *err = FP_LB_EBIAS;
        return NULL;
    }
    for (uint32_t i = 0; i < num_hosts; i++) {
        if (weights[i] < 1) {
            *err = FP_LB_EWEIGHT;
            return NULL;
        }
        if (priorities[i] > FP_LB_MAX_PRIORITY) {
            *err = FP_LB_EPRIORITY;
            return NULL;
        }
        if (priorities[i] > max_priority)
            max_priority = priorities[i];
        if (config->host_locality && config->host_locality[i] >= config->num_localities) {
            *err = FP_LB_ELOCALITY;
            return NULL;
        }
    }

    fp_lb_t *lb = calloc(1, sizeof(*lb));
    if (!lb) {
        *err = FP_LB_ENOMEM;
        return NULL;
    }
    lb->policy = config->policy;
    lb->num_hosts = num_hosts;
    lb->num_levels = max_priority + 1;
    lb->choice_count = config->choice_count;
    lb->bias = config->active_request_bias;
    lb->bias_forces_weighted = config->bias_forces_weighted;
    lb->overprovisioning_factor = config->overprovisioning_factor;
    lb->panic_threshold = config->panic_threshold > 100 ? 100 : config->panic_threshold;
    lb->min_ring_size = config->min_ring_size;
    lb->max_ring_size = config->max_ring_size;
    lb->hash_function = config->hash_function;
    lb->table_size = config->table_size;
    if (is_hashing(config->policy)) {
        const size_t slots = num_hosts ? num_hosts : 1;
        size_t blob = 1;
        for (uint32_t i = 0; i < num_hosts; i++)
            blob += config->host_key_lens[i];
        lb->key_blob = malloc(blob);
        lb->keys = calloc(slots, sizeof(*lb->keys));
        lb->key_lens = calloc(slots, sizeof(*lb->key_lens));
        lb->scratch = calloc(slots, sizeof(*lb->scratch));
        lb->scratch_keys = calloc(slots, sizeof(*lb->scratch_keys));
        lb->scratch_lens = calloc(slots, sizeof(*lb->scratch_lens));
        if (!lb->key_blob || !lb->keys || !lb->key_lens || !lb->scratch || !lb->scratch_keys ||
            !lb->scratch_lens) {
            fp_lb_free(lb);
            *err = FP_LB_ENOMEM;
            return NULL;
        }
        size_t at = 0;
        for (uint32_t i = 0; i < num_hosts; i++) {
            memcpy(lb->key_blob + at, config->host_keys[i], config->host_key_lens[i]);
            lb->keys[i] = lb->key_blob + at;
            lb->key_lens[i] = config->host_key_lens[i];
            at += config->host_key_lens[i];
        }
    }
    lb->hosts = calloc(num_hosts ? num_hosts : 1, sizeof(*lb->hosts));
    lb->levels = calloc(lb->num_levels, sizeof(*lb->levels));
    lb->index_storage = calloc(2 * (size_t)(num_hosts ? num_hosts : 1), sizeof(uint32_t));
    if (!lb->hosts || !lb->levels || !lb->index_storage) {
        fp_lb_free(lb);
        *err = FP_LB_ENOMEM;
        return NULL;
    }
    /* Heap slices: level p's heap starts 3 entries into a 64-byte aligned run of 4-entry groups,
     * so each node's four children (4i+1 .. 4i+4) share a cache line, and has room for 3 pads. */
    size_t heap_entries = 0;
    for (uint32_t i = 0; i < num_hosts; i++)
        lb->levels[priorities[i]].num_hosts++;
    for (uint32_t p = 0; p < lb->num_levels; p++)
        heap_entries += ((size_t)lb->levels[p].num_hosts + 6 + 3) / 4 * 4;
    lb->heap_storage = aligned_alloc(64, heap_entries * sizeof(fp_edf_entry_t));
    if (!lb->heap_storage) {
        fp_lb_free(lb);
        *err = FP_LB_ENOMEM;
        return NULL;
    }

    uint64_t sm = config->seed;
    for (int i = 0; i < 4; i++)
        lb->rng[i] = splitmix64(&sm);
    lb->seed = rng_next(lb->rng);

    for (uint32_t i = 0; i < num_hosts; i++) {
        lb->hosts[i].weight = weights[i];
        lb->hosts[i].priority = (uint16_t)priorities[i];
        lb->hosts[i].healthy = 1;
    }
    /* Slice the storage by level; then list each level's hosts in cluster order. */
    uint32_t offset = 0;
    size_t heap_offset = 0;
    for (uint32_t p = 0; p < lb->num_levels; p++) {
        fp_lb_level_t *level = &lb->levels[p];
        level->hosts = lb->index_storage + offset;
        level->use = lb->index_storage + num_hosts + offset;
        level->edf.heap = (fp_edf_entry_t *)lb->heap_storage + heap_offset + 3;
        heap_offset += ((size_t)level->num_hosts + 6 + 3) / 4 * 4;
        level->rr_count[SOURCE_HEALTHY] = lb->seed;
        level->rr_count[SOURCE_ALL] = lb->seed;
        offset += level->num_hosts;
        level->num_hosts = 0;
    }
    for (uint32_t i = 0; i < num_hosts; i++) {
        fp_lb_level_t *level = &lb->levels[priorities[i]];
        level->hosts[level->num_hosts++] = i;
    }
    if (config->slow_start_window > 0.0 &&
        (lb->policy == FP_LB_ROUND_ROBIN || lb->policy == FP_LB_LEAST_REQUEST)) {
        lb->ss_start = calloc(num_hosts ? num_hosts : 1, sizeof(double));
        lb->ss_factor = calloc(num_hosts ? num_hosts : 1, sizeof(double));
        if (!lb->ss_start || !lb->ss_factor) {
            fp_lb_free(lb);
            *err = FP_LB_ENOMEM;
            return NULL;
        }
        const double now = config->now >= 0.0 ? config->now : fp_lb_monotonic();
        const double aggression = config->slow_start_aggression;
        lb->ss_window = config->slow_start_window;
        lb->ss_aggression = aggression > 0.0 ? aggression : 1.0; /* also NaN, as Envoy does */
        lb->ss_min_weight = config->slow_start_min_weight;
        lb->ss_manual = config->manual_clock;
        for (uint32_t i = 0; i < num_hosts; i++)
            lb->ss_start[i] = config->host_start ? config->host_start[i] : now;
        slow_start_update(lb, now);
    }
    if (config->host_locality && config->num_localities > 0 && !is_hashing(lb->policy) &&
        (*err = setup_localities(lb, config, priorities)) != FP_LB_OK) {
        fp_lb_free(lb);
        return NULL;
    }
    recompute(lb, -1);
    return lb;
}

void fp_lb_free(fp_lb_t *lb) {
    if (!lb)
        return;
    free(lb->hosts);
    free(lb->index_storage);
    free(lb->heap_storage);
    if (lb->levels)
        for (uint32_t p = 0; p < lb->num_levels; p++) {
            fp_ring_free(&lb->levels[p].ring);
            fp_maglev_free(&lb->levels[p].maglev);
        }
    free(lb->levels);
    free(lb->key_blob);
    free(lb->keys);
    free(lb->key_lens);
    free(lb->scratch);
    free(lb->scratch_keys);
    free(lb->scratch_lens);
    free(lb->ss_start);
    free(lb->ss_factor);
    free(lb->locs);
    free(lb->loc_weight);
    free(lb->loc_eff);
    free(lb->loc_storage);
    free(lb->loc_heap_storage);
    free(lb);
}

int32_t fp_lb_pick_hash(fp_lb_t *lb, uint64_t hash) {
    if (!is_hashing(lb->policy))
        return fp_lb_pick(lb);
    const fp_lb_level_t *level;
    if (lb->only_level >= 0) {
        level = &lb->levels[lb->only_level];
    } else {
        /* Envoy's choosePriority: the hash itself draws the level. */
        const uint32_t draw = (uint32_t)(hash % 100) + 1;
        uint32_t cumulative = 0, p = 0;
        for (; p + 1 < lb->num_levels; p++) {
            cumulative += lb->levels[p].load;
            if (draw <= cumulative)
                break;
        }
        level = &lb->levels[p];
    }
    if (lb->policy == FP_LB_RING_HASH)
        return fp_ring_pick(&level->ring, hash);
    return fp_maglev_pick(&level->maglev, hash);
}

int fp_lb_uses_hash(const fp_lb_t *lb) { return is_hashing(lb->policy); }

uint64_t fp_lb_table_size(const fp_lb_t *lb, uint32_t priority) {
    if (priority >= lb->num_levels)
        return 0;
    return lb->policy == FP_LB_RING_HASH ? lb->levels[priority].ring.size
                                         : lb->levels[priority].maglev.size;
}

int32_t fp_lb_pick(fp_lb_t *lb) {
    fp_lb_level_t *level;
    if (is_hashing(lb->policy))
        return fp_lb_pick_hash(lb, rng_next(lb->rng));
    if (lb->ss_active && !lb->ss_manual) {
        const double now = coarse_monotonic();
        if (now >= lb->ss_next)
            fp_lb_slow_start_refresh(lb, now);
    }
    uint64_t r = 0;
    int have_r = 0;

    if (lb->only_level >= 0) {
        level = &lb->levels[lb->only_level];
    } else {
        /* Split load: the level whose cumulative share covers a draw in 1..100. */
        r = rng_next(lb->rng);
        have_r = 1;
        const uint32_t draw = (uint32_t)(r % 100) + 1;
        uint32_t cumulative = 0, p = 0;
        for (; p + 1 < lb->num_levels; p++) {
            cumulative += lb->levels[p].load;
            if (draw <= cumulative)
                break;
        }
        level = &lb->levels[p];
    }

    if (level->loc_pick) {
        /* Locality weighted: the locality first, then a host among its healthy ones. */
        uint32_t id = level->loc_use[0];
        if (level->num_loc_use > 1) {
            level->loc_picks++;
            id = edf_pick_and_add(lb, &level->loc_edf, lb->loc_eff);
        }
        level = &lb->locs[id];
    }

    const uint32_t n = level->num_use;
    if (n == 0)
        return -1;

    if (lb->policy == FP_LB_RANDOM) {
        /* Envoy's RANDOM uses one draw for both the level and the host. */
        if (!have_r)
            r = rng_next(lb->rng);
        return (int32_t)level->use[bounded(r, n)];
    }
    if (level->weighted) {
        level->edf_picks++;
        return (int32_t)edf_pick_and_add(lb, &level->edf, NULL);
    }

    if (lb->policy == FP_LB_ROUND_ROBIN) {
        const uint32_t host = level->use[level->rr_pos];
        if (++level->rr_pos == n)
            level->rr_pos = 0;
        level->rr_count[level->source]++;
        return (int32_t)host;
    }

    /* LEAST_REQUEST, equal weights: the least loaded of choice_count samples (with replacement);
     * a later sample wins only when strictly less loaded. */
    uint32_t candidate = level->use[bounded(rng_next(lb->rng), n)];
    for (uint32_t c = 1; c < lb->choice_count; c++) {
        const uint32_t sampled = level->use[bounded(rng_next(lb->rng), n)];
        if (lb->hosts[sampled].active < lb->hosts[candidate].active)
            candidate = sampled;
    }
    return (int32_t)candidate;
}

void fp_lb_request_started(fp_lb_t *lb, int32_t host) {
    if ((uint32_t)host < lb->num_hosts)
        lb->hosts[host].active++;
}

void fp_lb_request_finished(fp_lb_t *lb, int32_t host) {
    if ((uint32_t)host < lb->num_hosts && lb->hosts[host].active > 0)
        lb->hosts[host].active--;
}

uint32_t fp_lb_active_requests(const fp_lb_t *lb, int32_t host) {
    return (uint32_t)host < lb->num_hosts ? lb->hosts[host].active : 0;
}

int fp_lb_set_healthy(fp_lb_t *lb, int32_t host, int healthy) {
    if ((uint32_t)host >= lb->num_hosts)
        return -1;
    const uint8_t flag = healthy ? 1 : 0;
    if (lb->hosts[host].healthy == flag)
        return 0;
    lb->hosts[host].healthy = flag;
    if (lb->ss_start) {
        /* Health decides who is in slow start: refresh the factors, rebuild every level. */
        slow_start_update(lb, lb->ss_manual ? lb->ss_now : fp_lb_monotonic());
        recompute(lb, -1);
        return 0;
    }
    recompute(lb, (int32_t)lb->hosts[host].priority);
    return 0;
}

uint32_t fp_lb_num_hosts(const fp_lb_t *lb) { return lb->num_hosts; }

uint32_t fp_lb_num_priorities(const fp_lb_t *lb) { return lb->num_levels; }

uint32_t fp_lb_priority_load(const fp_lb_t *lb, uint32_t priority) {
    return priority < lb->num_levels ? lb->levels[priority].load : 0;
}

int fp_lb_priority_panic(const fp_lb_t *lb, uint32_t priority) {
    return priority < lb->num_levels ? lb->levels[priority].panic : 0;
}

uint32_t fp_lb_num_localities(const fp_lb_t *lb) { return lb->num_localities; }

double fp_lb_locality_effective_weight(const fp_lb_t *lb, uint32_t locality) {
    return locality < lb->num_localities ? lb->loc_eff[locality] : 0.0;
}

int fp_lb_priority_weighted(const fp_lb_t *lb, uint32_t priority) {
    return priority < lb->num_levels ? lb->levels[priority].weighted : 0;
}
