"""Host health and outlier ejection shared across workers (see hoststate.pxd).

The base class `HostState` is what a cluster without health checking or outlier detection gets:
every host is healthy, reports are ignored.  `SharedHostState` is the real one: its hosts live
in the shared table (csrc/fp_hoststate.c) that the main process creates next to the stats block
(`<stats path>.hosts`); the main process runs the health checks and the outlier detector's
interval (fastproxy/upstream/health.py), the workers report responses and local failures and
eject on consecutive errors themselves, and every worker applies the published flags to its own
load balancer when the cluster's generation moves.
"""
import os

from cpython.bytes cimport PyBytes_AS_STRING
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_ANONYMOUS, MAP_FAILED
from posix.fcntl cimport open as c_open, O_RDWR, O_CREAT, O_TRUNC
from posix.unistd cimport close as c_close, ftruncate, getpid

from fastproxy._core.includes.fp_hoststate cimport *
from fastproxy._core.lb cimport LoadBalancer
from fastproxy._core.stats cimport (
    CLUSTER_MEMBERSHIP_HEALTHY,
    CLUSTER_OUTLIER_DETECTION_EJECTIONS_TOTAL,
    CLUSTER_OUTLIER_DETECTION_EJECTIONS_OVERFLOW,
    CLUSTER_OUTLIER_DETECTION_EJECTIONS_ENFORCED_TOTAL,
    CLUSTER_OUTLIER_DETECTION_EJECTIONS_CONSECUTIVE_5XX,
    CLUSTER_OUTLIER_DETECTION_EJECTIONS_DETECTED_CONSECUTIVE_5XX,
    CLUSTER_OUTLIER_DETECTION_EJECTIONS_ENFORCED_CONSECUTIVE_5XX,
    CLUSTER_OUTLIER_DETECTION_EJECTIONS_DETECTED_CONSECUTIVE_GATEWAY_FAILURE,
    CLUSTER_OUTLIER_DETECTION_EJECTIONS_ENFORCED_CONSECUTIVE_GATEWAY_FAILURE,
    CLUSTER_OUTLIER_DETECTION_EJECTIONS_DETECTED_CONSECUTIVE_LOCAL_ORIGIN_FAILURE,
    CLUSTER_OUTLIER_DETECTION_EJECTIONS_ENFORCED_CONSECUTIVE_LOCAL_ORIGIN_FAILURE,
)

# Flags and event names for the Python side (main process, tests).
FAILED_ACTIVE_HC = FP_HS_FAILED_ACTIVE_HC
FAILED_OUTLIER_CHECK = FP_HS_FAILED_OUTLIER_CHECK
EV_CONSECUTIVE_5XX = FP_HS_EV_CONSECUTIVE_5XX
EV_CONSECUTIVE_GATEWAY_FAILURE = FP_HS_EV_CONSECUTIVE_GATEWAY_FAILURE
EV_CONSECUTIVE_LOCAL_ORIGIN_FAILURE = FP_HS_EV_CONSECUTIVE_LOCAL_ORIGIN_FAILURE
EV_SUCCESS_RATE = FP_HS_EV_SUCCESS_RATE
EV_FAILURE_PERCENTAGE = FP_HS_EV_FAILURE_PERCENTAGE
EV_SUCCESS_RATE_LOCAL_ORIGIN = FP_HS_EV_SUCCESS_RATE_LOCAL_ORIGIN
EV_FAILURE_PERCENTAGE_LOCAL_ORIGIN = FP_HS_EV_FAILURE_PERCENTAGE_LOCAL_ORIGIN
R_IGNORED = FP_HS_R_IGNORED
R_OVERFLOW = FP_HS_R_OVERFLOW
R_TOTAL = FP_HS_R_TOTAL
R_ENFORCED = FP_HS_R_ENFORCED
MAIN_MEMBER = 1 << 63
DEFAULT_UPDATE_MERGE_WINDOW_MS = 1000

# Stats of the consecutive-error ejections the workers decide: (detected, enforced) offsets.
cdef int _DETECTED_5XX = CLUSTER_OUTLIER_DETECTION_EJECTIONS_DETECTED_CONSECUTIVE_5XX
cdef int _ENFORCED_5XX = CLUSTER_OUTLIER_DETECTION_EJECTIONS_ENFORCED_CONSECUTIVE_5XX
cdef int _DETECTED_GW = CLUSTER_OUTLIER_DETECTION_EJECTIONS_DETECTED_CONSECUTIVE_GATEWAY_FAILURE
cdef int _ENFORCED_GW = CLUSTER_OUTLIER_DETECTION_EJECTIONS_ENFORCED_CONSECUTIVE_GATEWAY_FAILURE
cdef int _DETECTED_LO = CLUSTER_OUTLIER_DETECTION_EJECTIONS_DETECTED_CONSECUTIVE_LOCAL_ORIGIN_FAILURE
cdef int _ENFORCED_LO = CLUSTER_OUTLIER_DETECTION_EJECTIONS_ENFORCED_CONSECUTIVE_LOCAL_ORIGIN_FAILURE


def host_key(str address, int port):
    """The table key of a host: "address:port" (IPv6 addresses unbracketed)."""
    return "%s:%d" % (address, port)


def now_ns():
    """CLOCK_MONOTONIC in nanoseconds: the clock of every time in the table."""
    return fp_hs_now_ns()


def table_path(str stats_path):
    return stats_path + ".hosts"


def capacity_for(cluster_model):
    """Host slots for a cluster: room for its endpoints (several addresses each for DNS ones),
    at most half full."""
    n = max(len(cluster_model.endpoints), 1)
    want = n * 2 if cluster_model.type == "STATIC" else n * 16
    cap = 16
    while cap < want:
        cap <<= 1
    return cap


cdef class SharedHostTable:
    """The shared mapping: `create` (main process), `open` (workers) or `private` (a worker
    without a main process, and unit tests)."""

    def __cinit__(self):
        self.base = NULL
        self.size = 0
        self.path = None

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, self.size)
            self.base = NULL

    @staticmethod
    def create(str path, list clusters):
        """clusters: [(name, capacity, stats_base)]; capacities must be powers of two."""
        return SharedHostTable._make(path, clusters)

    @staticmethod
    def private(list clusters):
        return SharedHostTable._make(None, clusters)

    @staticmethod
    def _make(path, list clusters):
        cdef SharedHostTable t = SharedHostTable()
        cdef uint32_t n = len(clusters)
        cdef uint32_t *caps = <uint32_t *>calloc(n + 1, sizeof(uint32_t))
        cdef int fd = -1
        cdef void *m
        cdef bytes bpath
        cdef fp_hs_cluster_t *c
        if caps == NULL:
            raise MemoryError()
        try:
            for i, (name, cap, base) in enumerate(clusters):
                if cap < 1 or cap & (cap - 1):
                    raise ValueError("capacity must be a power of two")
                caps[i] = cap
            size = fp_hs_size(n, caps)
            if path is None:
                m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
            else:
                bpath = path.encode()
                fd = c_open(bpath, O_RDWR | O_CREAT | O_TRUNC, 0o600)
                if fd < 0:
                    raise OSError("cannot create host table %s" % path)
                if ftruncate(fd, size) != 0:
                    c_close(fd)
                    raise OSError("cannot size host table %s" % path)
                m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                c_close(fd)
            if m == MAP_FAILED:
                raise OSError("cannot map the host table")
            t.base = m
            t.size = size
            t.path = path
            fp_hs_init(m, n, caps)
            for i, (name, cap, base) in enumerate(clusters):
                c = fp_hs_cluster(m, i)
                bname = name.encode()[:FP_HS_NAME_MAX - 1]
                memcpy(c.name, PyBytes_AS_STRING(bname), len(bname))
                c.stats_base = base if base is not None else -1
        finally:
            free(caps)
        return t

    @staticmethod
    def open(str path):
        cdef SharedHostTable t = SharedHostTable()
        cdef bytes bpath = path.encode()
        cdef int fd = c_open(bpath, O_RDWR)
        cdef void *m
        cdef fp_hs_header_t *h
        if fd < 0:
            raise FileNotFoundError(path)
        size = os.fstat(fd).st_size
        if size < <Py_ssize_t>sizeof(fp_hs_header_t):
            c_close(fd)
            raise ValueError("host table %s is not initialized" % path)
        m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        c_close(fd)
        if m == MAP_FAILED:
            raise OSError("cannot map host table %s" % path)
        t.base = m
        t.size = size
        t.path = path
        h = <fp_hs_header_t *>m
        if h.magic != FP_HS_MAGIC or h.version != FP_HS_VERSION or h.size > <uint64_t>size:
            raise ValueError("host table %s does not match this build" % path)
        return t

    cdef fp_hs_cluster_t *cluster_at(self, int index) except NULL:
        if index < 0 or index >= <int>(<fp_hs_header_t *>self.base).num_clusters:
            raise IndexError(index)
        return fp_hs_cluster(self.base, index)

    def unlink(self):
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    # ---- lookups ----

    def cluster_index(self, str name):
        """The index of cluster `name`, or -1."""
        cdef fp_hs_header_t *h = <fp_hs_header_t *>self.base
        b = name.encode()[:FP_HS_NAME_MAX - 1]
        for i in range(h.num_clusters):
            if fp_hs_cluster(self.base, i).name == b:
                return i
        return -1

    def find(self, int ci, str key, bint create=False, uint32_t initial_flags=0):
        """The slot of host `key` in cluster `ci` (inserted when `create`), or -1."""
        cdef fp_hs_cluster_t *c = self.cluster_at(ci)
        bkey = key.encode()
        cdef fp_hs_host_t *h = fp_hs_find(self.base, c, bkey, create, initial_flags)
        if h == NULL:
            return -1
        return <int>(h - fp_hs_hosts(self.base, c))

    cdef fp_hs_host_t *_host(self, int ci, int slot) except NULL:
        cdef fp_hs_cluster_t *c = self.cluster_at(ci)
        if slot < 0 or <uint32_t>slot >= c.capacity:
            raise IndexError(slot)
        return fp_hs_hosts(self.base, c) + slot

    def hosts(self, int ci):
        """[(slot, key, flags, published, members)] of the hosts ever listed in cluster `ci`."""
        cdef fp_hs_cluster_t *c = self.cluster_at(ci)
        cdef fp_hs_host_t *hs = fp_hs_hosts(self.base, c)
        out = []
        for i in range(c.capacity):
            if fp_hs_load32(&hs[i].state) == FP_HS_READY:
                out.append((i, hs[i].key.decode(), fp_hs_load32(&hs[i].flags),
                            fp_hs_load32(&hs[i].published), fp_hs_load64(&hs[i].members)))
        return out

    def host(self, int ci, int slot):
        """A host's state as a dict (tests, the main process)."""
        cdef fp_hs_host_t *h = self._host(ci, slot)
        return {
            "key": h.key.decode(), "flags": fp_hs_load32(&h.flags),
            "published": fp_hs_load32(&h.published), "c5xx": fp_hs_load32(&h.c5xx),
            "cgw": fp_hs_load32(&h.cgw), "clocal": fp_hs_load32(&h.clocal),
            "members": fp_hs_load64(&h.members), "num_ejections": h.num_ejections,
            "backoff": h.backoff, "ejected_at_ns": h.ejected_at_ns,
            "unejected_at_ns": h.unejected_at_ns, "jitter_ns": h.jitter_ns,
        }

    def cluster(self, int ci):
        cdef fp_hs_cluster_t *c = self.cluster_at(ci)
        return {
            "name": c.name.decode(), "capacity": c.capacity, "stats_base": c.stats_base,
            "generation": fp_hs_load64(&c.generation), "ejected": c.ejected,
            "pending_ns": fp_hs_load_i64(&c.pending_ns), "last_publish_ns": c.last_publish_ns,
        }

    # ---- changes (each under the cluster's lock) ----

    def add_members(self, int ci, int slot, uint64_t bits):
        fp_hs_or64(&self._host(ci, slot).members, bits)

    def remove_members(self, int ci, int slot, uint64_t bits):
        fp_hs_and64(&self._host(ci, slot).members, ~bits)

    def set_flag(self, int ci, int slot, uint32_t flag, bint on):
        """Set or clear a health flag; returns whether it changed."""
        cdef fp_hs_cluster_t *c = self.cluster_at(ci)
        cdef fp_hs_host_t *h = self._host(ci, slot)
        cdef uint32_t old
        fp_hs_lock(c)
        old = h.flags
        if on:
            h.flags = old | flag
        else:
            h.flags = old & ~flag
        changed = h.flags != old
        fp_hs_unlock(c)
        return changed

    def report_code(self, int ci, int slot, OutlierConfig config, int code):
        """A response code for the host, as a worker reports it; returns the events triggered."""
        return fp_hs_put_code(self._host(ci, slot), &config.c, code)

    def report_local_failure(self, int ci, int slot, OutlierConfig config, bint timeout):
        return fp_hs_put_local_failure(self._host(ci, slot), &config.c,
                                       FP_HS_LOCAL_TIMEOUT if timeout else FP_HS_LOCAL_CONNECT_FAILED)

    def eject(self, int ci, int slot, OutlierConfig config, int event, uint32_t num_hosts,
              int64_t now, uint64_t rnd1=0, uint64_t rnd2=0):
        """Envoy's ejectHost for one event; returns the R_* bits (consecutive-error counters of
        the event are reset unless the host was already ejected)."""
        cdef fp_hs_cluster_t *c = self.cluster_at(ci)
        cdef fp_hs_host_t *h = self._host(ci, slot)
        fp_hs_lock(c)
        r = fp_hs_eject(c, h, &config.c, event, num_hosts, now, rnd1, rnd2)
        if not r & FP_HS_R_IGNORED:
            fp_hs_reset_consecutive(h, event)
        fp_hs_unlock(c)
        return r

    def uneject(self, int ci, int slot, int64_t now):
        cdef fp_hs_cluster_t *c = self.cluster_at(ci)
        cdef fp_hs_host_t *h = self._host(ci, slot)
        fp_hs_lock(c)
        was = bool(h.flags & FP_HS_FAILED_OUTLIER_CHECK)
        fp_hs_uneject(c, h, now)
        fp_hs_unlock(c)
        return was

    def uneject_due(self, int ci, int slot, OutlierConfig config, int64_t now):
        return bool(fp_hs_uneject_due(self._host(ci, slot), &config.c, now))

    def decrement_backoff(self, int ci, int slot):
        cdef fp_hs_cluster_t *c = self.cluster_at(ci)
        cdef fp_hs_host_t *h = self._host(ci, slot)
        fp_hs_lock(c)
        if h.backoff > 0:
            h.backoff -= 1
        fp_hs_unlock(c)

    def take_buckets(self, int ci, int slot):
        """The success-rate buckets of the interval that ends now, zeroing them:
        (external total, external successes, local total, local successes)."""
        cdef fp_hs_host_t *h = self._host(ci, slot)
        return (fp_hs_exchange64(&h.ext_total, 0), fp_hs_exchange64(&h.ext_success, 0),
                fp_hs_exchange64(&h.lo_total, 0), fp_hs_exchange64(&h.lo_success, 0))

    def publish(self, int ci, int64_t now, int64_t window_ns, bint force=False):
        """Deliver changed flags to the balancers now, or when the merge window ends.  `force`
        is for initialization (the first health checks), which Envoy applies before the
        cluster serves and which opens no merge window."""
        cdef fp_hs_cluster_t *c = self.cluster_at(ci)
        fp_hs_lock(c)
        r = fp_hs_publish(self.base, c, now, window_ns, force)
        if force:
            c.last_publish_ns = 0
        fp_hs_unlock(c)
        return bool(r)

    def publish_due(self, int ci, int64_t now):
        cdef fp_hs_cluster_t *c = self.cluster_at(ci)
        if fp_hs_load_i64(&c.pending_ns) == 0:
            return False
        fp_hs_lock(c)
        r = fp_hs_publish_due(self.base, c, now)
        fp_hs_unlock(c)
        return bool(r)


cdef class OutlierConfig:
    """fp_hs_config_t from a config.health.OutlierDetection (None: detection disabled)."""

    def __init__(self, od=None):
        memset(&self.c, 0, sizeof(fp_hs_config_t))
        if od is None:
            return
        self.c.enabled = 1
        self.c.consecutive_5xx = od.consecutive_5xx
        self.c.consecutive_gateway_failure = od.consecutive_gateway_failure
        self.c.consecutive_local_origin_failure = od.consecutive_local_origin_failure
        self.c.enforcing_consecutive_5xx = od.enforcing_consecutive_5xx
        self.c.enforcing_consecutive_gateway_failure = od.enforcing_consecutive_gateway_failure
        self.c.enforcing_consecutive_local_origin_failure = \
            od.enforcing_consecutive_local_origin_failure
        self.c.enforcing_success_rate = od.enforcing_success_rate
        self.c.enforcing_failure_percentage = od.enforcing_failure_percentage
        self.c.enforcing_local_origin_success_rate = od.enforcing_local_origin_success_rate
        self.c.enforcing_failure_percentage_local_origin = \
            od.enforcing_failure_percentage_local_origin
        self.c.max_ejection_percent = od.max_ejection_percent
        self.c.always_eject_one_host = od.always_eject_one_host
        self.c.split_external_local_origin_errors = od.split_external_local_origin_errors
        self.c.base_ejection_ns = <int64_t>od.base_ejection_time_ms * 1000000
        self.c.max_ejection_ns = <int64_t>od.max_ejection_time_ms * 1000000
        self.c.max_ejection_jitter_ns = <int64_t>od.max_ejection_time_jitter_ms * 1000000


cdef class _StatsMapping:
    """This worker's slot of the shared stats block (fastproxy/stats/shared.py's layout)."""
    cdef void *m
    cdef size_t size
    cdef int64_t *values

    def __cinit__(self, str path, int slot):
        self.m = NULL
        self.values = NULL
        cdef bytes bpath = path.encode()
        cdef int fd = c_open(bpath, O_RDWR)
        if fd < 0:
            return
        size = os.fstat(fd).st_size
        self.m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        c_close(fd)
        if self.m == MAP_FAILED:
            self.m = NULL
            return
        self.size = size
        cdef uint64_t *hdr = <uint64_t *>self.m
        cdef uint64_t num_slots = hdr[1]
        cdef uint64_t num_stats = hdr[2]
        if <uint64_t>slot >= num_slots or 32 + (slot + 1) * num_stats * 8 > size:
            return
        self.values = <int64_t *>(<char *>self.m + 32) + slot * num_stats

    def __dealloc__(self):
        if self.m != NULL:
            munmap(self.m, self.size)


cdef class HostState:
    cpdef set_hosts(self, list hosts):
        pass

    cdef void report_response(self, int host, int status) noexcept:
        pass

    cdef void report_local_failure(self, int host, int kind) noexcept:
        pass

    cdef int poll(self, LoadBalancer lb) except -1:
        return 0


cdef inline uint64_t _xorshift(uint64_t *s) noexcept:
    cdef uint64_t x = s[0]
    x ^= x << 13
    x ^= x >> 7
    x ^= x << 17
    s[0] = x
    return x


cdef class SharedHostState(HostState):
    """A worker's view of one cluster in the shared table."""

    def __cinit__(self):
        self.hosts = NULL
        self.applied = NULL
        self.n = 0
        self.stats = NULL

    def __init__(self, SharedHostTable table, int cluster_index, cluster_model, int worker_index,
                 stats_path=None):
        self.table = table
        self.cluster = table.cluster_at(cluster_index)
        self.config = OutlierConfig(cluster_model.outlier_detection)
        self.has_health_checks = bool(cluster_model.health_checks)
        self.member_bit = (<uint64_t>1) << (worker_index % 63)
        self.window_ns = <int64_t>getattr(cluster_model, "update_merge_window_ms",
                                         DEFAULT_UPDATE_MERGE_WINDOW_MS) * 1000000
        self.rng = (<uint64_t>getpid() << 32) ^ <uint64_t>fp_hs_now_ns() ^ 0x9E3779B97F4A7C15
        self.lb = None
        self.generation = 0
        self.healthy_count = 0
        self.keys = []
        self.stats_map = None
        # membership_healthy is a gauge of the cluster, and the admin sums every slot: one
        # worker (the first) writes it; every worker writes its own counters
        self.writes_gauges = worker_index == 0
        if stats_path is not None and self.cluster.stats_base >= 0:
            sm = _StatsMapping(stats_path, worker_index + 1)
            if (<_StatsMapping>sm).values != NULL:
                self.stats_map = sm
                self.stats = (<_StatsMapping>sm).values + self.cluster.stats_base

    def __dealloc__(self):
        free(self.hosts)
        free(self.applied)

    cpdef set_hosts(self, list hosts):
        cdef int n = len(hosts)
        cdef fp_hs_host_t **arr = <fp_hs_host_t **>calloc(n + 1, sizeof(fp_hs_host_t *))
        cdef uint8_t *applied = <uint8_t *>calloc(n + 1, 1)
        cdef fp_hs_host_t *h
        if arr == NULL or applied == NULL:
            free(arr)
            free(applied)
            raise MemoryError()
        initial = FP_HS_FAILED_ACTIVE_HC if self.has_health_checks else 0
        keys = []
        for i, (address, port) in enumerate(hosts):
            key = host_key(address, port)
            keys.append(key)
            bkey = key.encode()
            h = fp_hs_find(self.table.base, self.cluster, bkey, 1, initial)
            arr[i] = h
            applied[i] = 1
            if h != NULL:
                fp_hs_or64(&h.members, self.member_bit)
        new = set(keys)
        for key in self.keys:
            if key not in new:
                bkey = key.encode()
                h = fp_hs_find(self.table.base, self.cluster, bkey, 0, 0)
                if h != NULL:
                    fp_hs_and64(&h.members, ~self.member_bit)
        free(self.hosts)
        free(self.applied)
        self.hosts = arr
        self.applied = applied
        self.n = n
        self.keys = keys
        self.lb = None  # the connection layer builds a new balancer (all healthy) and polls

    cdef void report_response(self, int host, int status) noexcept:
        cdef fp_hs_host_t *h
        cdef int events
        if host < 0 or host >= self.n or not self.config.c.enabled:
            return
        h = self.hosts[host]
        if h == NULL:
            return
        events = fp_hs_put_code(h, &self.config.c, status)
        if events:
            self.on_events(h, events)

    cdef void report_local_failure(self, int host, int kind) noexcept:
        cdef fp_hs_host_t *h
        cdef int events
        if host < 0 or host >= self.n or not self.config.c.enabled:
            return
        h = self.hosts[host]
        if h == NULL:
            return
        # Envoy: a connect timeout or a response timeout is LOCAL_ORIGIN_TIMEOUT, a failed
        # connection or a reset LOCAL_ORIGIN_CONNECT_FAILED.
        if kind == LOCAL_CONNECT_TIMEOUT or kind == LOCAL_REQUEST_TIMEOUT:
            events = fp_hs_put_local_failure(h, &self.config.c, FP_HS_LOCAL_TIMEOUT)
        else:
            events = fp_hs_put_local_failure(h, &self.config.c, FP_HS_LOCAL_CONNECT_FAILED)
        if events:
            self.on_events(h, events)

    cdef void on_events(self, fp_hs_host_t *h, int events) noexcept:
        """Consecutive-error ejections, as Envoy's main thread handles them: gateway failure
        first, then 5xx, then local origin."""
        cdef int ev, r, detected, enforced
        cdef int published = 0
        cdef int64_t now = fp_hs_now_ns()
        cdef int64_t *v = self.stats
        for ev in (FP_HS_EV_CONSECUTIVE_GATEWAY_FAILURE, FP_HS_EV_CONSECUTIVE_5XX,
                   FP_HS_EV_CONSECUTIVE_LOCAL_ORIGIN_FAILURE):
            if not events & ev:
                continue
            fp_hs_lock(self.cluster)
            r = fp_hs_eject(self.cluster, h, &self.config.c, ev, <uint32_t>self.n, now,
                            _xorshift(&self.rng), _xorshift(&self.rng))
            if not r & FP_HS_R_IGNORED:
                fp_hs_reset_consecutive(h, ev)
            if r & FP_HS_R_ENFORCED:
                published |= fp_hs_publish(self.table.base, self.cluster, now, self.window_ns, 0)
            fp_hs_unlock(self.cluster)
            if v == NULL or r & FP_HS_R_IGNORED:
                continue
            if ev == FP_HS_EV_CONSECUTIVE_5XX:
                detected, enforced = _DETECTED_5XX, _ENFORCED_5XX
                v[CLUSTER_OUTLIER_DETECTION_EJECTIONS_CONSECUTIVE_5XX] += 1
            elif ev == FP_HS_EV_CONSECUTIVE_GATEWAY_FAILURE:
                detected, enforced = _DETECTED_GW, _ENFORCED_GW
            else:
                detected, enforced = _DETECTED_LO, _ENFORCED_LO
            v[detected] += 1
            if r & FP_HS_R_OVERFLOW:
                v[CLUSTER_OUTLIER_DETECTION_EJECTIONS_OVERFLOW] += 1
            if r & FP_HS_R_TOTAL:
                v[CLUSTER_OUTLIER_DETECTION_EJECTIONS_TOTAL] += 1
            if r & FP_HS_R_ENFORCED:
                v[CLUSTER_OUTLIER_DETECTION_EJECTIONS_ENFORCED_TOTAL] += 1
                v[enforced] += 1
        if published and self.lb is not None:
            try:
                self.apply()
            except Exception:
                pass

    cdef int apply(self) except -1:
        """Bring this worker's balancer in line with the published flags."""
        cdef int i, healthy, count = 0
        cdef int changed = 0
        cdef LoadBalancer lb = self.lb
        cdef fp_hs_host_t *h
        self.generation = fp_hs_load64(&self.cluster.generation)
        for i in range(self.n):
            h = self.hosts[i]
            healthy = h == NULL or (fp_hs_load32(&h.published)
                                    & (FP_HS_FAILED_ACTIVE_HC | FP_HS_FAILED_OUTLIER_CHECK)) == 0
            count += healthy
            if healthy != self.applied[i]:
                self.applied[i] = healthy
                if i < lb.num_hosts:
                    lb.set_healthy(i, healthy)  # recomputes loads and panic
                changed = 1
        self.healthy_count = count
        if self.stats != NULL and self.writes_gauges:
            self.stats[CLUSTER_MEMBERSHIP_HEALTHY] = count
        return changed

    cdef int poll(self, LoadBalancer lb) except -1:
        cdef int64_t now
        cdef int i
        if lb is None:
            return 0
        if fp_hs_load_i64(&self.cluster.pending_ns) != 0:
            now = fp_hs_now_ns()
            if now >= fp_hs_load_i64(&self.cluster.pending_ns):
                fp_hs_lock(self.cluster)
                fp_hs_publish_due(self.table.base, self.cluster, now)
                fp_hs_unlock(self.cluster)
        if lb is not self.lb:
            self.lb = lb
            for i in range(self.n):
                self.applied[i] = 1  # a new balancer starts with every host healthy
            return self.apply()
        if fp_hs_load64(&self.cluster.generation) == self.generation:
            if self.stats != NULL and self.writes_gauges:
                # the connection layer resets the gauge when the host set changes
                self.stats[CLUSTER_MEMBERSHIP_HEALTHY] = self.healthy_count
            return 0
        return self.apply()

    # ---- Python API (tests) ----

    def report_response_py(self, int host, int status):
        self.report_response(host, status)

    def report_local_failure_py(self, int host, int kind):
        self.report_local_failure(host, kind)

    def poll_py(self, LoadBalancer lb):
        return self.poll(lb)

    def healthy(self):
        """Per host of the last poll: whether this worker's balancer has it healthy."""
        return [bool(self.applied[i]) for i in range(self.n)]


_tables = {}


def make_host_state(cluster_model, str shm_path, int worker_index):
    """The HostState for a cluster in a worker, or None when nothing is configured."""
    if not getattr(cluster_model, "health_checks", None) and \
            getattr(cluster_model, "outlier_detection", None) is None:
        return None
    path = table_path(shm_path) if shm_path else None
    table = _tables.get(path)
    if table is None:
        try:
            table = SharedHostTable.open(path) if path else None
        except (OSError, ValueError):
            table = None
        if table is None:
            # No main process (a worker run alone): a table of this process's own.
            table = SharedHostTable.private([(cluster_model.name, capacity_for(cluster_model),
                                              None)])
        _tables[path] = table
    ci = table.cluster_index(cluster_model.name)
    if ci < 0:
        table = SharedHostTable.private([(cluster_model.name, capacity_for(cluster_model), None)])
        ci = 0
    return SharedHostState(table, ci, cluster_model, worker_index, shm_path)
