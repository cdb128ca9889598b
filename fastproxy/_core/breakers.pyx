"""Circuit breakers (see breakers.pxd), Envoy's per-cluster resource manager.

`CircuitBreakers` never trips.  `SharedCircuitBreakers` enforces a cluster's thresholds for all
workers at once: the counts live in the `.cb` shared-memory block (fastproxy/stats/limits.py) and
move with one relaxed atomic add each (csrc/fp_shared.h), as Envoy's ResourceManagerImpl does
across its worker threads.  Each worker also keeps its own part of the counts (plain stores) so
the main process can give them back when the worker dies.

Cost: a try_request/release_request pair is two atomic adds on a line shared with the other
workers (see `bench_request_pair`).
"""
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memset
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED

from fastproxy._core.includes.fp_shared cimport (
    fp_shared_map,
    fp_add, fp_load, fp_now_ns, fp_release, fp_try_acquire,
)

from fastproxy.stats import limits as _limits

# The block layout (fastproxy/stats/limits.py), as C constants.
cdef enum:
    HDR = 64
    LINE = 64
    WENTRY = 32
assert (HDR, LINE, WENTRY) == (_limits.HEADER_SIZE, _limits.LINE, _limits.CB_WORKER_ENTRY)
cdef uint32_t CB_MAGIC = _limits.CB_MAGIC
cdef uint32_t CB_VERSION = _limits.VERSION

cdef struct block_header:
    uint32_t magic
    uint32_t version
    uint64_t num_clusters
    uint64_t num_workers


cdef inline int _prio(int priority) noexcept:
    return 1 if priority == 1 else 0


cdef class CircuitBreakers:
    cdef bint try_connection(self, int priority) noexcept:
        return True

    cdef void release_connection(self, int priority) noexcept:
        pass

    cdef bint try_pending(self, int priority) noexcept:
        return True

    cdef void release_pending(self, int priority) noexcept:
        pass

    cdef bint try_request(self, int priority) noexcept:
        return True

    cdef void release_request(self, int priority) noexcept:
        pass

    cdef bint try_retry(self, int priority) noexcept:
        return True

    cdef void release_retry(self, int priority) noexcept:
        pass


cdef class SharedCircuitBreakers(CircuitBreakers):
    def __cinit__(self):
        self.mapping = NULL
        memset(self.local, 0, sizeof(self.local))
        for p in range(2):
            self.totals[p] = &self.local[p * 4]
            self.mine[p] = &self.local[8 + p * 4]

    def __init__(self, cfg, str block_path=None, int worker_index=-1):
        """`cfg` is a config.circuit_breakers.CircuitBreakers; without a usable block at
        `block_path` the counts are kept in this process only."""
        cdef block_header *h
        cdef char *base
        cdef size_t size = 0
        cdef uint64_t nc, nw, slot = <uint64_t>cfg.slot
        cdef uint64_t p
        for p, th in enumerate(cfg.thresholds[:2]):
            self.limits[p][CB_CX] = th.max_connections
            self.limits[p][CB_PENDING] = th.max_pending_requests
            self.limits[p][CB_RQ] = th.max_requests
            self.limits[p][CB_RETRY] = th.max_retries
            self.budget_percent[p] = th.budget_percent if th.budget_percent is not None else -1.0
            self.min_retry_concurrency[p] = th.min_retry_concurrency
        self.shared = False
        if block_path is None or cfg.slot < 0:
            return
        path = block_path.encode()
        self.mapping = fp_shared_map(path, HDR, &size)
        if self.mapping == NULL:
            return
        self.mapping_size = size
        h = <block_header *>self.mapping
        nc = h.num_clusters
        nw = h.num_workers
        if h.magic != CB_MAGIC or h.version != CB_VERSION or slot >= nc \
                or size < <size_t>_limits.cb_size(nc, nw):
            munmap(self.mapping, size)
            self.mapping = NULL
            return
        base = <char *>self.mapping
        for p in range(2):
            self.totals[p] = <int64_t *>(base + HDR + (slot * 2 + p) * LINE)
            if 0 <= worker_index < <int64_t>nw:
                self.mine[p] = <int64_t *>(
                    base + HDR + nc * 2 * LINE
                    + ((<uint64_t>worker_index * nc + slot) * 2 + p) * WENTRY)
        self.shared = True

    def __dealloc__(self):
        if self.mapping != NULL:
            munmap(self.mapping, self.mapping_size)
            self.mapping = NULL

    cdef bint _try(self, int priority, int what) noexcept:
        cdef int p = _prio(priority)
        if not fp_try_acquire(&self.totals[p][what], self.limits[p][what]):
            return False
        self.mine[p][what] += 1
        return True

    cdef void _release(self, int priority, int what) noexcept:
        cdef int p = _prio(priority)
        fp_release(&self.totals[p][what])
        self.mine[p][what] -= 1

    cdef bint try_connection(self, int priority) noexcept:
        return self._try(priority, CB_CX)

    cdef void release_connection(self, int priority) noexcept:
        self._release(priority, CB_CX)

    cdef bint try_pending(self, int priority) noexcept:
        return self._try(priority, CB_PENDING)

    cdef void release_pending(self, int priority) noexcept:
        self._release(priority, CB_PENDING)

    cdef bint try_request(self, int priority) noexcept:
        return self._try(priority, CB_RQ)

    cdef void release_request(self, int priority) noexcept:
        self._release(priority, CB_RQ)

    cdef bint try_retry(self, int priority) noexcept:
        cdef int p = _prio(priority)
        cdef int64_t limit
        if self.budget_percent[p] < 0:
            return self._try(priority, CB_RETRY)
        # retry_budget: a share of the requests in flight (active + pending), at least
        # min_retry_concurrency.
        limit = <int64_t>(self.budget_percent[p] / 100.0 * <double>(
            fp_load(&self.totals[p][CB_RQ]) + fp_load(&self.totals[p][CB_PENDING])))
        if limit < self.min_retry_concurrency[p]:
            limit = self.min_retry_concurrency[p]
        if not fp_try_acquire(&self.totals[p][CB_RETRY], limit):
            return False
        self.mine[p][CB_RETRY] += 1
        return True

    cdef void release_retry(self, int priority) noexcept:
        self._release(priority, CB_RETRY)

    # -- for tests and the admin ------------------------------------------------------------

    def counts(self, int priority=0):
        """(connections, pending, requests, retries) in flight for all workers."""
        cdef int p = _prio(priority)
        return tuple(fp_load(&self.totals[p][i]) for i in range(4))

    def my_counts(self, int priority=0):
        cdef int p = _prio(priority)
        return tuple(self.mine[p][i] for i in range(4))

    def py_try(self, str what, int priority=0):
        if what == "connection":
            return self.try_connection(priority)
        if what == "pending":
            return self.try_pending(priority)
        if what == "request":
            return self.try_request(priority)
        if what == "retry":
            return self.try_retry(priority)
        raise ValueError(what)

    def py_release(self, str what, int priority=0):
        if what == "connection":
            self.release_connection(priority)
        elif what == "pending":
            self.release_pending(priority)
        elif what == "request":
            self.release_request(priority)
        elif what == "retry":
            self.release_retry(priority)
        else:
            raise ValueError(what)


def bench_request_pair(CircuitBreakers cb, int n):
    """Nanoseconds per try_request + release_request pair, over n pairs."""
    cdef int i
    cdef int64_t t0 = fp_now_ns()
    for i in range(n):
        if cb.try_request(0):
            cb.release_request(0)
    return (fp_now_ns() - t0) / <double>n


def subtract_worker_counts(str block_path, int worker_index):
    """Give back to the totals what worker `worker_index` held, and zero its part (main process,
    when that worker is gone)."""
    cdef size_t size = 0
    cdef bytes path = block_path.encode()
    cdef void *m = fp_shared_map(path, HDR, &size)
    cdef block_header *h
    cdef char *base
    cdef int64_t *tot
    cdef int64_t *mine
    cdef uint64_t nc, nw, slot, p
    cdef int i
    cdef int64_t v
    if m == NULL:
        return
    try:
        h = <block_header *>m
        nc = h.num_clusters
        nw = h.num_workers
        if h.magic != CB_MAGIC or worker_index < 0 or <uint64_t>worker_index >= nw \
                or size < <size_t>_limits.cb_size(nc, nw):
            return
        base = <char *>m
        for slot in range(nc):
            for p in range(2):
                tot = <int64_t *>(base + HDR + (slot * 2 + p) * LINE)
                mine = <int64_t *>(base + HDR + nc * 2 * LINE
                                   + ((<uint64_t>worker_index * nc + slot) * 2 + p)
                                   * WENTRY)
                for i in range(4):
                    v = mine[i]
                    if v:
                        fp_add(&tot[i], -v)
                        if fp_load(&tot[i]) < 0:
                            fp_add(&tot[i], -fp_load(&tot[i]))
                        mine[i] = 0
    finally:
        munmap(m, size)


def make_circuit_breakers(cluster_model, str shm_path, int worker_index):
    """The CircuitBreakers for a cluster in a worker, or None (no limits).  Envoy applies its
    default thresholds to every cluster, so every compiled cluster has them."""
    cfg = getattr(cluster_model, "circuit_breakers", None)
    if cfg is None:
        return None
    return SharedCircuitBreakers(cfg, _limits.cb_path(shm_path) if shm_path else None,
                                 worker_index)
