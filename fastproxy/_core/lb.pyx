"""Load balancer picks for one cluster: ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH and MAGLEV
with Envoy's semantics, over hosts with weights and priorities.

The work happens in C (csrc/fp_lb.c); this wrapper builds a balancer from plain lists (the control
layer's compiled cluster) and exposes the cdef `pick`/`request_started`/`request_finished` to the
connection layer. Python-level methods exist for the control layer, tests and benchmarks.
"""

from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc

_POLICIES = {
    "ROUND_ROBIN": FP_LB_ROUND_ROBIN,
    "LEAST_REQUEST": FP_LB_LEAST_REQUEST,
    "RANDOM": FP_LB_RANDOM,
    "RING_HASH": FP_LB_RING_HASH,
    "MAGLEV": FP_LB_MAGLEV,
}

_HASH_FUNCTIONS = {"XX_HASH": FP_RING_HASH_XX, "MURMUR_HASH_2": FP_RING_HASH_MURMUR2}

_ERRORS = {
    FP_LB_EPOLICY: "unknown policy",
    FP_LB_EWEIGHT: "load_balancing_weight must be at least 1",
    FP_LB_EPRIORITY: f"priority must be at most {FP_LB_MAX_PRIORITY}",
    FP_LB_ECHOICES: "choice_count must be at least 2",
    FP_LB_EBIAS: "active_request_bias must be a non-negative number",
    FP_LB_ERING: "ring hash: minimum_ring_size is above maximum_ring_size",
    FP_LB_ETABLE: "The table size of maglev must be prime number",
    FP_LB_EKEYS: "a hashing load balancer needs host keys",
    FP_LB_ELOCALITY: "a locality index is out of range or spans priorities",
}


cdef int _check(LoadBalancer lb, int i) except -1:
    if i < 0 or i >= lb.num_hosts:
        raise IndexError(f"host index {i} out of range 0..{lb.num_hosts - 1}")
    return 0


cdef class LoadBalancer:
    """A balancer over `len(weights)` hosts: host i has `weights[i]` and `priorities[i]`.

    `seed` seeds the balancer's PRNG (give each worker its own): the round robin start, the EDF
    schedule's starting point and every random draw derive from it, so equal seeds give equal
    pick sequences. `choice_count` and `active_request_bias` are LEAST_REQUEST's settings;
    `bias_forces_weighted` makes LEAST_REQUEST use its weighted (EDF) schedule even when all
    weights are equal, which Envoy does when `active_request_bias` is set explicitly in the
    config. `overprovisioning_factor` (percent, 140 = 1.4) and `healthy_panic_threshold`
    (percent) drive the priority loads. All hosts start healthy.

    RING_HASH (`min_ring_size`, `max_ring_size`, `hash_function` "XX_HASH" or "MURMUR_HASH_2")
    and MAGLEV (`table_size`, a prime) hash each host as `host_keys[i]`, its address as Envoy
    prints it ("10.0.0.1:80", "[::1]:80"), so that a request hash picks the host Envoy picks.
    Without host_keys, hosts hash as "#<index>": picks are still the same in every worker, but
    not Envoy's. Their tables do not depend on `seed`.

    ROUND_ROBIN and LEAST_REQUEST take Envoy's slow start: `slow_start_window` (seconds; 0
    disables it), `slow_start_aggression` and `slow_start_min_weight_percent`. A healthy host
    that joined less than the window ago is scheduled with its weight times
    max(min_weight_percent / 100, (age / window) ^ (1 / aggression)), and every level picks
    through EDF while some host is in slow start; picks refresh the weights at most every 100 ms.
    Times are monotonic seconds (time.monotonic()). When a host joined comes, in order, from
    `added_at[i]` (None entries skip), from `previous` (the balancer this one replaces: a host
    whose `host_ids[i]` it also had keeps its start), or is the build time `now` (default: the
    clock) -- hosts present when the first balancer is built start their window with it, as
    Envoy's do. `manual_clock` stops picks from reading the clock: time then moves only through
    refresh_slow_start(now) (tests).

    Locality weighted balancing (Envoy's `locality_weighted_lb_config`; ROUND_ROBIN,
    LEAST_REQUEST and RANDOM, ignored by RING_HASH and MAGLEV): `localities[i]` is host i's
    locality index and `locality_weights[l]` locality l's weight (0: no traffic); the hosts of a
    locality share one priority. A pick chooses the priority level as usual; unless the level is
    in panic it then chooses a locality by EDF over weight * min(1, overprovisioning_factor / 100
    * healthy / hosts of the locality), and then a host of the locality with the policy.
    """

    def __cinit__(self, str policy, weights, priorities, uint64_t seed, uint32_t choice_count=2,
                  double active_request_bias=1.0, *, bint bias_forces_weighted=False,
                  uint32_t overprovisioning_factor=FP_LB_DEFAULT_OVERPROVISIONING_FACTOR,
                  double healthy_panic_threshold=FP_LB_DEFAULT_PANIC_THRESHOLD,
                  uint64_t min_ring_size=FP_RING_DEFAULT_MIN_SIZE,
                  uint64_t max_ring_size=FP_RING_DEFAULT_MAX_SIZE,
                  hash_function="XX_HASH",
                  uint64_t table_size=FP_MAGLEV_DEFAULT_TABLE_SIZE,
                  host_keys=None,
                  double slow_start_window=0.0, double slow_start_aggression=1.0,
                  double slow_start_min_weight_percent=10.0, added_at=None, host_ids=None,
                  LoadBalancer previous=None, now=None, bint manual_clock=False,
                  localities=None, locality_weights=None):
        cdef fp_lb_config_t config
        cdef uint32_t *w = NULL
        cdef uint32_t *p = NULL
        cdef Py_ssize_t i, n = len(weights)
        cdef int err = FP_LB_OK
        cdef const char **key_ptrs = NULL
        cdef uint32_t *key_lens = NULL
        cdef list keys = None
        cdef double *starts = NULL
        cdef uint32_t *locs = NULL
        cdef uint32_t *loc_weights = NULL
        cdef Py_ssize_t num_locs = 0
        cdef double t_now
        cdef dict known
        self.lb = NULL
        self.host_ids = None
        if policy not in _POLICIES:
            raise ValueError(f"unknown load balancing policy {policy!r}")
        if len(priorities) != n:
            raise ValueError("weights and priorities must have the same length")
        if choice_count < 2:
            raise ValueError(_ERRORS[FP_LB_ECHOICES])
        if not 0.0 <= healthy_panic_threshold <= 100.0:
            raise ValueError("healthy_panic_threshold must be within 0..100")
        for i in range(n):
            if not 1 <= weights[i] <= 0xFFFFFFFF:
                raise ValueError(f"host {i}: {_ERRORS[FP_LB_EWEIGHT]}")
            if not 0 <= priorities[i] <= FP_LB_MAX_PRIORITY:
                raise ValueError(f"host {i}: {_ERRORS[FP_LB_EPRIORITY]}")
        fp_lb_config_init(&config, _POLICIES[policy], seed)
        config.choice_count = choice_count
        config.active_request_bias = active_request_bias
        config.bias_forces_weighted = bias_forces_weighted
        config.overprovisioning_factor = overprovisioning_factor
        # Envoy rounds the panic percentage to an integer.
        config.panic_threshold = <uint32_t>(healthy_panic_threshold + 0.5)
        if policy in ("RING_HASH", "MAGLEV"):
            if hash_function not in _HASH_FUNCTIONS:
                raise ValueError(f"unknown ring hash hash_function {hash_function!r}")
            config.min_ring_size = min_ring_size
            config.max_ring_size = max_ring_size
            config.hash_function = _HASH_FUNCTIONS[hash_function]
            config.table_size = table_size
            if host_keys is None:
                keys = [b"#%d" % i for i in range(n)]
            else:
                if len(host_keys) != n:
                    raise ValueError("host_keys and weights must have the same length")
                keys = [k.encode() if isinstance(k, str) else bytes(k) for k in host_keys]
            key_ptrs = <const char **>malloc((n + 1) * sizeof(char *))
            key_lens = <uint32_t *>malloc((n + 1) * sizeof(uint32_t))
            if key_ptrs == NULL or key_lens == NULL:
                free(key_ptrs)
                free(key_lens)
                raise MemoryError()
            for i in range(n):
                key_ptrs[i] = <bytes>keys[i]
                key_lens[i] = <uint32_t>len(<bytes>keys[i])
            config.host_keys = key_ptrs
            config.host_key_lens = key_lens
        if not slow_start_window >= 0.0:
            raise ValueError("slow_start_window must be a non-negative number of seconds")
        if not 0.0 <= slow_start_min_weight_percent <= 100.0:
            raise ValueError("slow_start_min_weight_percent must be within 0..100")
        if slow_start_window > 0.0 and policy in ("ROUND_ROBIN", "LEAST_REQUEST"):
            if added_at is not None and len(added_at) != n:
                raise ValueError("added_at and weights must have the same length")
            if host_ids is not None and len(host_ids) != n:
                raise ValueError("host_ids and weights must have the same length")
            t_now = fp_lb_monotonic() if now is None else <double>now
            known = {}
            if (previous is not None and previous.lb != NULL and previous.host_ids is not None
                    and host_ids is not None):
                for i in range(previous.num_hosts):
                    known[previous.host_ids[i]] = fp_lb_host_start(previous.lb, <int32_t>i)
            starts = <double *>malloc((n + 1) * sizeof(double))
            if starts == NULL:
                free(key_ptrs)
                free(key_lens)
                raise MemoryError()
            for i in range(n):
                if added_at is not None and added_at[i] is not None:
                    starts[i] = added_at[i]
                elif host_ids is not None:
                    starts[i] = known.get(host_ids[i], t_now)
                else:
                    starts[i] = t_now
            config.slow_start_window = slow_start_window
            config.slow_start_aggression = slow_start_aggression
            config.slow_start_min_weight = slow_start_min_weight_percent / 100.0
            config.host_start = starts
            config.now = t_now
            config.manual_clock = manual_clock
            if host_ids is not None:
                self.host_ids = list(host_ids)
        if localities is not None:
            if locality_weights is None:
                locality_weights = [1] * (max(localities) + 1 if n else 0)
            num_locs = len(locality_weights)
            if len(localities) != n:
                free(key_ptrs)
                free(key_lens)
                free(starts)
                raise ValueError("localities and weights must have the same length")
            for i in range(num_locs):
                if not 0 <= locality_weights[i] <= 0xFFFFFFFF:
                    free(key_ptrs)
                    free(key_lens)
                    free(starts)
                    raise ValueError(f"locality {i}: weight must be within 0..4294967295")
            for i in range(n):
                if not 0 <= localities[i] < num_locs:
                    free(key_ptrs)
                    free(key_lens)
                    free(starts)
                    raise ValueError(f"host {i}: locality index {localities[i]} out of range")
        w = <uint32_t *>malloc((n + 1) * sizeof(uint32_t))
        p = <uint32_t *>malloc((n + 1) * sizeof(uint32_t))
        try:
            if w == NULL or p == NULL:
                raise MemoryError()
            for i in range(n):
                w[i] = weights[i]
                p[i] = priorities[i]
            if localities is not None and num_locs > 0:
                locs = <uint32_t *>malloc((n + 1) * sizeof(uint32_t))
                loc_weights = <uint32_t *>malloc((num_locs + 1) * sizeof(uint32_t))
                if locs == NULL or loc_weights == NULL:
                    raise MemoryError()
                for i in range(n):
                    locs[i] = localities[i]
                for i in range(num_locs):
                    loc_weights[i] = locality_weights[i]
                config.host_locality = locs
                config.locality_weights = loc_weights
                config.num_localities = <uint32_t>num_locs
            self.lb = fp_lb_new(&config, <uint32_t>n, w, p, &err)
        finally:
            free(w)
            free(p)
            free(locs)
            free(loc_weights)
            free(key_ptrs)
            free(key_lens)
            free(starts)
        if self.lb == NULL:
            if err == FP_LB_ENOMEM:
                raise MemoryError()
            raise ValueError(_ERRORS.get(err, f"load balancer error {err}"))
        self.num_hosts = <int>n
        self.policy = policy
        self.uses_hash = fp_lb_uses_hash(self.lb)

    def __dealloc__(self):
        if self.lb != NULL:
            fp_lb_free(self.lb)
            self.lb = NULL

    # ---- data plane ----

    cdef int pick(self) noexcept:
        return fp_lb_pick(self.lb)

    cdef int pick_hash(self, uint64_t hash) noexcept:
        return fp_lb_pick_hash(self.lb, hash)

    cdef void request_started(self, int host) noexcept:
        fp_lb_request_started(self.lb, host)

    cdef void request_finished(self, int host) noexcept:
        fp_lb_request_finished(self.lb, host)

    # ---- Python API (control layer, tests) ----

    def pick_py(self):
        """Pick a host: its index, or -1 when none is available."""
        return fp_lb_pick(self.lb)

    def pick_hash_py(self, uint64_t hash):
        """Pick a host for a request hash (RING_HASH, MAGLEV; other policies ignore it)."""
        return fp_lb_pick_hash(self.lb, hash)

    def table_sizes(self):
        """Per priority level: ring points (RING_HASH) or table slots (MAGLEV); 0 otherwise."""
        if not self.uses_hash:
            return [0] * fp_lb_num_priorities(self.lb)
        return [fp_lb_table_size(self.lb, p) for p in range(fp_lb_num_priorities(self.lb))]

    def started(self, int i):
        """A request to host i started."""
        _check(self, i)
        fp_lb_request_started(self.lb, i)

    def finished(self, int i):
        """A request to host i finished."""
        _check(self, i)
        fp_lb_request_finished(self.lb, i)

    def active_requests(self, int i):
        _check(self, i)
        return fp_lb_active_requests(self.lb, i)

    def set_healthy(self, int i, bint healthy, since=None):
        """Mark host i healthy or not; recomputes priority loads and panic as Envoy does.
        `since` (monotonic seconds, with healthy=True): when it became healthy, which starts its
        slow start (Envoy: the health check pass that made it healthy)."""
        _check(self, i)
        if healthy and since is not None:
            fp_lb_set_host_start(self.lb, i, <double>since)
        fp_lb_set_healthy(self.lb, i, healthy)

    # ---- slow start ----

    def refresh_slow_start(self, now=None):
        """Recompute the slow start weights at `now` (default: the clock) and rebuild the
        schedules; returns whether a host is still in slow start."""
        return bool(fp_lb_slow_start_refresh(self.lb, fp_lb_monotonic() if now is None
                                             else <double>now))

    def set_host_start(self, int i, double start):
        """Set when host i joined / became healthy (applies at the next refresh)."""
        _check(self, i)
        fp_lb_set_host_start(self.lb, i, start)

    def host_start(self, int i):
        """When host i's slow start began (0.0 without slow start)."""
        _check(self, i)
        return fp_lb_host_start(self.lb, i)

    @property
    def in_slow_start(self):
        """Whether some host is in slow start (as of the last refresh)."""
        return bool(fp_lb_in_slow_start(self.lb))

    def effective_weight(self, int i):
        """Host i's weight as scheduled now: its weight times its slow start factor."""
        _check(self, i)
        return fp_lb_effective_weight(self.lb, i)

    @property
    def num_priorities(self):
        return fp_lb_num_priorities(self.lb)

    def priority_loads(self):
        """Percent of the load (summing to 100) per priority level."""
        return [fp_lb_priority_load(self.lb, p) for p in range(fp_lb_num_priorities(self.lb))]

    def priority_panic(self):
        """Per priority level: whether it picks from all its hosts because too few are healthy."""
        return [bool(fp_lb_priority_panic(self.lb, p))
                for p in range(fp_lb_num_priorities(self.lb))]

    @property
    def num_localities(self):
        """The number of localities (0 without locality weighted balancing)."""
        return fp_lb_num_localities(self.lb)

    def locality_weights(self):
        """Per locality: the effective weight it is scheduled with now (its weight times its
        availability; 0 when it gets no traffic or its level is in panic)."""
        return [fp_lb_locality_effective_weight(self.lb, l)
                for l in range(fp_lb_num_localities(self.lb))]

    def priority_weighted(self):
        """Per priority level: whether picks go through an EDF schedule."""
        return [bool(fp_lb_priority_weighted(self.lb, p))
                for p in range(fp_lb_num_priorities(self.lb))]

    def bench_pick_hashes(self, int n, uint64_t start=0):
        """Make n hash picks through the cdef path with hashes spread over 64 bits (for
        micro-benchmarks); returns the last pick."""
        cdef int i, last = -1
        cdef uint64_t h = start
        for i in range(n):
            h += 0x9e3779b97f4a7c15ULL   # Weyl sequence: a new, well-spread hash each pick
            last = self.pick_hash(h)
        return last

    def bench_picks(self, int n):
        """Make n picks through the cdef path (for micro-benchmarks); returns the last pick."""
        cdef int i, last = -1
        for i in range(n):
            last = self.pick()
        return last


def xxhash64(data, uint64_t seed=0):
    """xxHash64 of bytes (Envoy's HashUtil::xxHash64)."""
    cdef bytes b = bytes(data)
    return fp_xxhash64(<const char *>b, len(b), seed)


def murmur2_64(data, uint64_t seed=FP_MURMUR_STD_SEED):
    """64-bit MurmurHash2 of bytes (Envoy's MurmurHash::murmurHash2, its default seed)."""
    cdef bytes b = bytes(data)
    return fp_murmur2_64(<const char *>b, len(b), seed)
