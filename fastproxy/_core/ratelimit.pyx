"""Request filters before the router (see ratelimit.pxd): envoy.filters.http.local_ratelimit.

Each compiled LocalRateLimit config owns a token bucket in the `.rl` shared-memory block
(fastproxy/stats/limits.py), so all workers draw from one bucket, as all of Envoy's worker threads
do.  The bucket is Envoy 1.40's (AtomicTokenBucketImpl): continuous refill at
tokens_per_fill / fill_interval, at most max_tokens, one compare-and-swap per request
(csrc/fp_shared.h).  The most specific config wins: route, then virtual host, then the filter's.

Envoy's answers, reproduced here: a limited request gets `status` (429) with body
"local_rate_limited" and response_headers_to_add; with enable_x_ratelimit_headers DRAFT_VERSION_03
every response of an enabled request carries x-ratelimit-limit (max_tokens), -remaining (whole
tokens left) and -reset (0 while a token is left, else the seconds until the next one, rounded
up).  A config without filter_enabled does nothing (Envoy reads an absent fractional percent as 0).

Descriptors: the matched route's `rate_limits` (the virtual host's when the route has none: Envoy's
default vh_rate_limits OVERRIDE; only routes with a route action have any) make the request's
descriptors; every configured descriptor equal to one of them takes a token from its own bucket,
the slowest-filling first, and the first empty one limits the request (later ones are not
consumed).  The config's default bucket is then consumed too when no descriptor matched or when
always_consume_default_token_bucket is true (the default).
"""
from libc.math cimport ceil
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memset
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED

from fastproxy._core.http1 cimport RequestHead, find_header
from fastproxy._core.router cimport RouteDecision, RouteEntry, ACTION_ROUTE
from fastproxy._core.includes.fp_shared cimport (
    fp_shared_map,
    fp_bucket_consume, fp_bucket_remaining, fp_bucket_tokens, fp_load, fp_now_ns,
)

import os as _os

from fastproxy.stats import limits as _limits

cdef enum:
    HDR = 64
    LINE = 64
assert (HDR, LINE) == (_limits.HEADER_SIZE, _limits.LINE)
cdef uint32_t RL_MAGIC = _limits.RL_MAGIC
cdef uint32_t RL_VERSION = _limits.VERSION

cdef bytes BODY_LIMITED = b"local_rate_limited"

cdef struct block_header:
    uint32_t magic
    uint32_t version
    uint64_t num_buckets
    uint64_t num_prefixes
    uint64_t num_workers


cdef class RequestFilters:
    cdef int on_request(self, RequestHead *head, RouteDecision d) except -1:
        return 0

    cdef list response_headers(self, RouteDecision d):
        return None


# route.v3.RateLimit.Action kinds, compiled
cdef enum:
    RA_GENERIC_KEY = 0
    RA_REQUEST_HEADERS = 1
    RA_REMOTE_ADDRESS = 2

cdef dict _ACTION_KINDS = {"generic_key": RA_GENERIC_KEY, "request_headers": RA_REQUEST_HEADERS,
                           "remote_address": RA_REMOTE_ADDRESS}


cdef tuple _compile_policy(list rate_limits):
    """config rate_limits -> tuple of entries, each a tuple of
    (kind, descriptor key bytes, value or lower-case header name bytes, skip_if_absent)."""
    return tuple(tuple((_ACTION_KINDS[a.kind], a.key.encode(), a.value.encode(), a.skip_if_absent)
                       for a in actions)
                 for actions in rate_limits)


cdef bytes _header_value(RequestHead *head, bytes name):
    """The first value of a request header as Envoy's header map sees it, or None."""
    cdef int i
    if head == NULL:
        return None
    if name[:1] == b":":
        if name == b":path":
            return head.target[:head.target_len] if head.target != NULL else head.path[:head.path_len]
        if name == b":method":
            return head.method[:head.method_len]
        if name == b":authority":
            if head.authority_len:
                return head.authority[:head.authority_len]
            if head.host_index >= 0:
                return head.headers[head.host_index].value[:head.headers[head.host_index].value_len]
        return None
    if name == b"host":
        return None  # Envoy holds Host as :authority
    i = find_header(head.headers, head.num_headers, name, len(name))
    if i < 0:
        return None
    return head.headers[i].value[:head.headers[i].value_len]


cdef class DescriptorBucket:
    """A LocalRateLimitDescriptor's token bucket."""
    cdef int64_t *word
    cdef int64_t local
    cdef double max_tokens
    cdef double rate_ns
    cdef readonly double fill_rate
    cdef readonly int rank          # consumption order: slowest fill rate first
    cdef readonly tuple entries

    def __init__(self, d):
        self.local = 0
        self.word = &self.local
        self.entries = tuple((k.encode(), v.encode()) for k, v in d.entries)
        self.max_tokens = d.max_tokens
        self.fill_rate = d.fill_rate
        self.rate_ns = self.fill_rate / 1e9
        self.rank = 0

    def py_remaining(self):
        return fp_bucket_remaining(self.word, fp_now_ns(), self.max_tokens, self.rate_ns)


cdef class LocalRateLimit:
    def __cinit__(self):
        memset(self.local, 0, sizeof(self.local))
        self.word = NULL
        self.counters = &self.local[8]

    def __init__(self, cfg):
        """`cfg` is a config.local_ratelimit.LocalRateLimit."""
        if cfg.has_token_bucket and cfg.fill_interval_ms > 0:
            self.word = &self.local[0]
        self.max_tokens = cfg.max_tokens
        self.fill_rate = cfg.fill_rate
        self.rate_ns = self.fill_rate / 1e9
        self.enabled_num, self.enabled_den = cfg.enabled if cfg.enabled else (0, 0)
        self.enforced_num, self.enforced_den = cfg.enforced if cfg.enforced else (0, 0)
        self.status = cfg.status
        self.headers_to_add = [(h.key.encode(), h.value.encode())
                               for h in cfg.response_headers_to_add] or None
        self.x_ratelimit_headers = cfg.x_ratelimit_headers and self.word != NULL
        self.limit_value = b"%d" % cfg.max_tokens
        self.always_consume_default = cfg.always_consume_default
        self.descriptor_list = [DescriptorBucket(d) for d in cfg.descriptors]
        self.descriptors = None
        if self.descriptor_list:
            for rank, b in enumerate(sorted(self.descriptor_list, key=lambda b: b.fill_rate)):
                (<DescriptorBucket>b).rank = rank
            self.descriptors = {b.entries: b for b in self.descriptor_list}

    cdef list x_headers(self):
        cdef int64_t now = fp_now_ns()
        cdef double tokens = fp_bucket_tokens(fp_load(self.word), now, self.max_tokens, self.rate_ns)
        cdef int64_t reset = 0
        if tokens < 1.0:
            reset = <int64_t>ceil((1.0 - tokens) / self.fill_rate)
        return [(b"x-ratelimit-limit", self.limit_value),
                (b"x-ratelimit-remaining", b"%d" % <int64_t>tokens),
                (b"x-ratelimit-reset", b"%d" % reset)]

    # -- for tests ----------------------------------------------------------------------------

    def py_consume(self):
        return bool(fp_bucket_consume(self.word, fp_now_ns(), self.max_tokens, self.rate_ns))

    def py_remaining(self):
        return fp_bucket_remaining(self.word, fp_now_ns(), self.max_tokens, self.rate_ns)

    def py_x_headers(self):
        return self.x_headers()

    def py_counters(self):
        return [self.counters[i] for i in range(_limits.RL_COUNTERS)]


cdef class LocalRateLimitFilters(RequestFilters):
    def __cinit__(self):
        self.mapping = NULL

    cdef bytes _client_address(self, RequestHead *head, RouteDecision d):
        return _client_address_of(self, head, d)

    def __init__(self, hcm_model, str block_path=None, int worker_index=-1):
        name = hcm_model.local_ratelimit_name
        configs = []  # (compiled config, LocalRateLimit)
        self.default = LocalRateLimit(hcm_model.local_ratelimit)
        configs.append((hcm_model.local_ratelimit, self.default))
        self.by_route = {}
        self.by_vhost = {}
        self.by_entry = {}
        self.keep = []
        self.policy_by_entry = {}
        self.vhost_policies = {}
        self.request_descriptors = []
        self.trust_xff = not hcm_model.use_remote_address
        self.xff_hops = hcm_model.xff_num_trusted_hops
        for vh in hcm_model.route_config.virtual_hosts:
            self.vhost_policies[vh.name] = _compile_policy(getattr(vh, "rate_limits", []))
            cfg = vh.per_filter_config.get(name)
            if cfg is not None:
                lim = LocalRateLimit(cfg)
                self.by_vhost[vh.name] = lim
                configs.append((cfg, lim))
            for r in vh.routes:
                cfg = r.per_filter_config.get(name)
                if cfg is not None:
                    lim = LocalRateLimit(cfg)
                    self.by_route[id(r)] = lim
                    self.keep.append(r)
                    configs.append((cfg, lim))
        self.last = None
        self.rng = (int.from_bytes(_os.urandom(8), "little") | 1) & 0xFFFFFFFFFFFFFFFF
        self.reply_body = BODY_LIMITED
        self.reply_headers = None
        self.reply_late_headers = None
        if block_path is not None:
            self._attach(block_path, worker_index, configs)

    def _attach(self, str block_path, int worker_index, list configs):
        cdef size_t size = 0
        cdef block_header *h
        cdef char *base
        cdef uint64_t nb, np_, nw, bucket, counters
        cdef LocalRateLimit lim
        cdef DescriptorBucket db
        path = block_path.encode()
        self.mapping = fp_shared_map(path, HDR, &size)
        if self.mapping == NULL:
            return
        self.mapping_size = size
        h = <block_header *>self.mapping
        nb = h.num_buckets
        np_ = h.num_prefixes
        nw = h.num_workers
        if h.magic != RL_MAGIC or h.version != RL_VERSION \
                or size < <size_t>_limits.rl_size(nb, np_, nw):
            munmap(self.mapping, size)
            self.mapping = NULL
            return
        base = <char *>self.mapping
        for cfg, lim in configs:
            if 0 <= cfg.bucket < <int64_t>nb and lim.word != NULL:
                bucket = cfg.bucket
                lim.word = <int64_t *>(base + HDR + bucket * LINE)
            for d, db in zip(cfg.descriptors, lim.descriptor_list):
                if 0 <= d.bucket < <int64_t>nb:
                    bucket = d.bucket
                    db.word = <int64_t *>(base + HDR + bucket * LINE)
            if 0 <= cfg.counters < <int64_t>np_ and 0 <= worker_index < <int64_t>nw:
                counters = cfg.counters
                lim.counters = <int64_t *>(base + HDR + nb * LINE
                                           + (<uint64_t>worker_index * np_ + counters) * LINE)

    def __dealloc__(self):
        if self.mapping != NULL:
            munmap(self.mapping, self.mapping_size)
            self.mapping = NULL

    cdef LocalRateLimit lookup(self, RouteDecision d):
        cdef RouteEntry e = d.entry
        cdef object lim
        if e is None:
            if d.virtual_host is not None and self.by_vhost:
                lim = self.by_vhost.get(d.virtual_host)
                if lim is not None:
                    return <LocalRateLimit>lim
            return self.default
        lim = self.by_entry.get(e)
        if lim is None:
            lim = self.by_route.get(id(e.source)) if e.source is not None else None
            if lim is None:
                lim = self.by_vhost.get(e.virtual_host, self.default)
            self.by_entry[e] = lim
        return <LocalRateLimit>lim

    cdef bint consume(self, LocalRateLimit lim, RequestHead *head, RouteDecision d) except -1:
        """Take the request's tokens: its matched descriptors' and (maybe) the default's."""
        cdef int64_t now = fp_now_ns()
        cdef RouteEntry e = d.entry
        cdef DescriptorBucket b
        cdef list matched = None
        cdef tuple policy, action
        cdef list entries
        cdef bint ok
        cdef bytes value
        if lim.descriptors is not None and e is not None:
            policy = self.policy_by_entry.get(e)
            if policy is None:
                policy = ()
                if e.action == ACTION_ROUTE and e.source is not None and e.source.route is not None:
                    policy = _compile_policy(getattr(e.source.route, "rate_limits", []))
                    if not policy:
                        policy = self.vhost_policies.get(e.virtual_host, ())
                self.policy_by_entry[e] = policy
            for actions in policy:
                entries = []
                ok = True
                for action in actions:
                    kind = action[0]
                    if kind == RA_GENERIC_KEY:
                        entries.append((action[1], action[2]))
                    elif kind == RA_REQUEST_HEADERS:
                        value = _header_value(head, action[2])
                        if value is None:
                            ok = action[3]  # skip_if_absent: no entry, the descriptor goes on
                            if not ok:
                                break
                        else:
                            entries.append((action[1], value))
                    else:
                        value = self._client_address(head, d)
                        if value is None:
                            ok = False
                            break
                        entries.append((action[1], value))
                if not ok or not entries:
                    continue
                found = lim.descriptors.get(tuple(entries))
                if found is not None:
                    if matched is None:
                        matched = [found]
                    elif found not in matched:
                        matched.append(found)
            if matched is not None:
                if len(matched) > 1:
                    matched.sort(key=lambda x: (<DescriptorBucket>x).rank)
                for b in matched:
                    if not fp_bucket_consume(b.word, now, b.max_tokens, b.rate_ns):
                        return False
        if matched is None or lim.always_consume_default:
            return lim.word == NULL or fp_bucket_consume(lim.word, now, lim.max_tokens,
                                                         lim.rate_ns)
        return True

    cdef bint sample(self, uint64_t num, uint64_t den) noexcept:
        cdef uint64_t x
        if num >= den:
            return den != 0
        if num == 0:
            return False
        # xorshift64
        x = self.rng
        x ^= x << 13
        x ^= x >> 7
        x ^= x << 17
        self.rng = x
        return (x % den) < num

    cdef int on_request(self, RequestHead *head, RouteDecision d) except -1:
        cdef LocalRateLimit lim = self.lookup(d)
        self.last = None
        if not self.sample(lim.enabled_num, lim.enabled_den):
            return 0
        lim.counters[RL_ENABLED] += 1
        if self.consume(lim, head, d):
            lim.counters[RL_OK] += 1
            self.last = lim
            return 0
        lim.counters[RL_RATE_LIMITED] += 1
        self.last = lim
        if not self.sample(lim.enforced_num, lim.enforced_den):
            return 0
        lim.counters[RL_ENFORCED] += 1
        self.last = None
        self.reply_headers = lim.headers_to_add
        self.reply_late_headers = lim.x_headers() if lim.x_ratelimit_headers else None
        return lim.status

    cdef list response_headers(self, RouteDecision d):
        cdef LocalRateLimit lim = self.last
        if lim is None or not lim.x_ratelimit_headers:
            return None
        return lim.x_headers()

    # -- for tests ----------------------------------------------------------------------------

    def py_lookup(self, RouteDecision d):
        return self.lookup(d)

    def py_on_request_decision(self, RouteDecision d):
        """on_request without a request head (the filter does not read it): the status (0 = go
        on), and the reply's or response's extra headers."""
        cdef int rc = self.on_request(NULL, d)
        if rc:
            return rc, self.reply_headers, self.reply_late_headers
        return 0, None, self.response_headers(d)

    @property
    def default_limit(self):
        return self.default

    def py_on_request(self, RouteDecision d, headers=(), bytes path=b"/", bytes method=b"GET"):
        """on_request with a request head made of (name bytes, value bytes) headers: the status."""
        cdef RequestHead head
        cdef list keep = [path, method]
        cdef int i = 0
        memset(&head, 0, sizeof(head))
        head.path = path
        head.path_len = len(path)
        head.target = path
        head.target_len = len(path)
        head.method = method
        head.method_len = len(method)
        head.host_index = -1
        for name, value in headers[:128]:
            keep.append(name)
            keep.append(value)
            head.headers[i].name = <bytes>name
            head.headers[i].name_len = len(name)
            head.headers[i].value = <bytes>value
            head.headers[i].value_len = len(value)
            if name.lower() == b"host":
                head.host_index = i
            i += 1
        head.num_headers = i
        return self.on_request(&head, d)


cdef bytes _client_address_of(LocalRateLimitFilters f, RequestHead *head, RouteDecision d):
    """The remote_address action's value, as Envoy's connection manager determines the client:
    the peer with use_remote_address, else the x-forwarded-for entry xff_num_trusted_hops from
    the right (the peer when there is no such header)."""
    cdef bytes xff
    if f.trust_xff:
        xff = _header_value(head, b"x-forwarded-for")
        if xff is not None:
            hops = [a.strip() for a in xff.split(b",")]
            k = len(hops) - 1 - f.xff_hops
            if k >= 0 and hops[k]:
                return hops[k]
    return d.source_ip


def make_request_filters(hcm_model, str shm_path, int worker_index):
    """The RequestFilters for a connection manager in a worker, or None when it has none."""
    if getattr(hcm_model, "local_ratelimit", None) is None:
        return None
    return LocalRateLimitFilters(hcm_model, _limits.rl_path(shm_path) if shm_path else None,
                                 worker_index)
