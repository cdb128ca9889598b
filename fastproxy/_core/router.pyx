# cython: language_level=3
"""Envoy route matching, compiled: pick the virtual host and the route for one request.

`RouteTable(model.RouteConfiguration)` builds C arrays once per config; `RouteTable.route()`
evaluates a parsed `RequestHead` against them and fills a reusable `RouteDecision`.

Theory of operation
-------------------
* Virtual hosts (Envoy's RouteMatcher::findVirtualHost): the Host header, lower-cased, is looked
  up in one C open-addressing hash table holding three kinds of keys: exact domains, suffix
  wildcards (`*.foo.com` stored as `.foo.com`) and prefix wildcards (`foo.*` stored as `foo.`).
  Exact first; then suffix wildcards longest first, then prefix wildcards longest first (a
  wildcard only matches a host strictly longer than its fixed part); then `*`.  The port is part
  of the host unless `ignore_port_in_host_matching` is set, as in Envoy.  If the configuration has
  only a `*` virtual host it is used without looking at Host at all.  Hashing folds case on the
  fly, so the lookup creates no Python object.
* Routes are tried in order.  Path matchers (prefix, path, path_separated_prefix, with
  case_sensitive) are memcmp/strncasecmp on the path up to the first `?` or `#`; header and query
  matchers (except regex ones) are C loops over the parsed head.  safe_regex path and string
  matchers use Python's `re` (fullmatch, pattern taken as is) and are the only place a Python
  object is made per request.  With several headers of one name, a matcher matches when any one
  of the values does (Envoy does not join them for route matching).
* Actions and header mutations are compiled into `RouteEntry` objects once; a request just points
  the decision at them.  Rewritten paths, redirect Locations and cluster names read from a header
  are the only objects built per request, and only when the route asks for them.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset

from fastproxy._core.http1 cimport RequestHead
from fastproxy._core.includes.hash_policy cimport (
    FP_HP_COOKIE, FP_HP_HEADER, FP_HP_QUERY_PARAMETER, FP_HP_SOURCE_IP, fp_hash_input_t,
    fp_hash_policy_eval, fp_hash_policy_t)
from fastproxy._core.includes.picohttpparser cimport phr_header

import re

# ---------------------------------------------------------------------------------------------
# Small C helpers

cdef inline unsigned char _lower(unsigned char c) noexcept nogil:
    if c >= 65 and c <= 90:
        return c + 32
    return c

cdef inline bint _ieq(const char *a, const char *b, size_t n) noexcept nogil:
    cdef size_t i
    for i in range(n):
        if _lower(<unsigned char>a[i]) != _lower(<unsigned char>b[i]):
            return False
    return True

cdef inline bint _eq(const char *a, const char *b, size_t n, bint ignore_case) noexcept nogil:
    if ignore_case:
        return _ieq(a, b, n)
    return memcmp(a, b, n) == 0

cdef inline bint _contains(const char *h, size_t hn, const char *n, size_t nn,
                           bint ignore_case) noexcept nogil:
    cdef size_t i
    if nn == 0:
        return True
    if nn > hn:
        return False
    for i in range(hn - nn + 1):
        if _eq(h + i, n, nn, ignore_case):
            return True
    return False

cdef inline uint64_t _hash_lower(int kind, const char *s, size_t n) noexcept nogil:
    # FNV-1a over the kind byte and the lower-cased key.
    cdef uint64_t h = 14695981039346656037ULL
    cdef size_t i
    h ^= <uint64_t>(kind + 1)
    h *= 1099511628211ULL
    for i in range(n):
        h ^= _lower(<unsigned char>s[i])
        h *= 1099511628211ULL
    return h

cdef inline size_t _path_end(const char *p, size_t n) noexcept nogil:
    # Length of the path without query string and fragment (Envoy's removeQueryAndFragment).
    cdef size_t i
    for i in range(n):
        if p[i] == 63 or p[i] == 35:   # '?' or '#'
            return i
    return n

cdef inline Py_ssize_t _port_start(const char *h, size_t n) noexcept nogil:
    # Envoy's HeaderUtility::getPortStart: the last ':' unless it sits inside "[v6]".
    cdef Py_ssize_t colon = -1, bracket = -1
    cdef size_t i
    for i in range(n):
        if h[i] == 58:
            colon = <Py_ssize_t>i
        elif h[i] == 93:
            bracket = <Py_ssize_t>i
    if colon < 0:
        return -1
    if bracket < 0 or bracket < colon:
        return colon
    return -1

# ---------------------------------------------------------------------------------------------
# Python-level building blocks

cdef tuple _EMPTY = ()


cdef class HeaderOps:
    def __repr__(self):
        return f"HeaderOps(remove={self.remove!r}, add={self.add!r})"

    def __eq__(self, other):
        if not isinstance(other, HeaderOps):
            return NotImplemented
        return self.remove == (<HeaderOps>other).remove and self.add == (<HeaderOps>other).add

    def __hash__(self):
        return hash((self.remove, self.add))


cdef HeaderOps _make_ops(list adds, list removes):
    """Compile one level's adds/removes; None if the level does nothing."""
    cdef HeaderOps ops
    add = []
    for hv in adds:
        value = hv.value.encode("utf-8")
        keep = bool(hv.keep_empty_value)
        if not value and not keep:
            continue  # Envoy skips empty values unless keep_empty_value
        add.append((hv.key.lower().encode("utf-8"), value, int(hv.append_action), keep))
    remove = tuple(name.lower().encode("utf-8") for name in removes)
    if not add and not remove:
        return None
    ops = HeaderOps.__new__(HeaderOps)
    ops.remove = remove
    ops.add = tuple(add)
    return ops


cdef tuple _chain(list levels):
    return tuple(ops for ops in levels if ops is not None)


cdef class WeightedTarget:
    def __repr__(self):
        return f"WeightedTarget({self.cluster!r}, {self.weight})"


cdef class RouteEntry:
    def __cinit__(self):
        self.cum_weights = NULL
        self.matcher_len = -1
        self.hash_policies = NULL
        self.num_hash_policies = 0

    def __dealloc__(self):
        if self.cum_weights != NULL:
            free(self.cum_weights)
            self.cum_weights = NULL
        if self.hash_policies != NULL:
            free(self.hash_policies)
            self.hash_policies = NULL

    def __repr__(self):
        return f"RouteEntry(name={self.name!r}, action={self.action})"


cdef class RouteDecision:
    def __init__(self):
        self.source_ip = None
        self.remote_address = None
        self.local_address = None
        self.reset()

    cdef void reset(self):
        self.action = ACTION_NONE
        self.cluster = None
        self.path = None
        self.host = None
        self.timeout_ms = 0
        self.request_ops = _EMPTY
        self.response_ops = _EMPTY
        self.status = 0
        self.location = None
        self.body = None
        self.route_name = None
        self.auto_host_rewrite = False
        self.virtual_host = None
        self.entry = None
        self.has_hash = False
        self.hash_value = 0
        self.set_cookie = None

    def __repr__(self):
        return (f"RouteDecision(action={self.action}, cluster={self.cluster!r}, "
                f"path={self.path!r}, host={self.host!r}, status={self.status}, "
                f"location={self.location!r}, route_name={self.route_name!r})")


def translate_substitution(str substitution):
    """RE2 rewrite string (\\0..\\9, \\\\) to a Python `re` template, as bytes."""
    out = []
    cdef Py_ssize_t i = 0, n = len(substitution)
    while i < n:
        c = substitution[i]
        if c == "\\":
            if i + 1 >= n:
                raise ValueError(f"invalid regex substitution {substitution!r}: trailing '\\'")
            d = substitution[i + 1]
            if d.isdigit():
                out.append("\\g<" + d + ">")
            elif d == "\\":
                out.append("\\\\")
            else:
                raise ValueError(f"invalid regex substitution {substitution!r}: '\\{d}'")
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out).encode("utf-8")


cdef bytes _regex_sub(object pattern, bytes template, bytes subject):
    return pattern.sub(template, subject)


_HASH_KINDS = {"header": FP_HP_HEADER, "cookie": FP_HP_COOKIE,
               "query_parameter": FP_HP_QUERY_PARAMETER, "source_ip": FP_HP_SOURCE_IP}


def set_cookie_parts(hp):
    """The Set-Cookie value Envoy sends for a generated cookie of hash policy `hp`, around its
    value: (b'name="', b'"; Max-Age=N; Path=/p; attr=v; HttpOnly') -- Envoy's
    Http::Utility::makeSetCookieValue (Max-Age only for a non-zero ttl, Path only when set)."""
    suffix = '"'
    if hp.ttl_s:
        suffix += f"; Max-Age={hp.ttl_s}"
    if hp.path:
        suffix += f"; Path={hp.path}"
    for name, value in hp.attributes:
        suffix += f"; {name}={value}" if value else f"; {name}"
    suffix += "; HttpOnly"
    return (f'{hp.name}="'.encode("utf-8"), suffix.encode("utf-8"))


cdef int _compile_hash_policies(RouteEntry e, policies) except -1:
    # model.HashPolicy list -> the C array the request path evaluates.
    cdef int i, n
    if not policies:
        return 0
    n = len(policies)
    e.hash_policies = <fp_hash_policy_t *>calloc(n, sizeof(fp_hash_policy_t))
    if e.hash_policies == NULL:
        raise MemoryError()
    keep = []
    cookie_parts = []
    for i, hp in enumerate(policies):
        name = hp.name.encode("utf-8")
        if hp.kind == "header":
            name = name.lower()
        keep.append(name)
        e.hash_policies[i].kind = _HASH_KINDS[hp.kind]
        e.hash_policies[i].terminal = bool(hp.terminal)
        e.hash_policies[i].name = PyBytes_AS_STRING(name)
        e.hash_policies[i].name_len = PyBytes_GET_SIZE(name)
        e.hash_policies[i].generate = hp.kind == "cookie" and hp.ttl_s is not None
        cookie_parts.append(set_cookie_parts(hp) if e.hash_policies[i].generate else None)
    e._hash_keep = tuple(keep)
    e._cookie_parts = tuple(cookie_parts)
    e.num_hash_policies = n
    return 0


# ---------------------------------------------------------------------------------------------

cdef class RouteTable:
    def __cinit__(self):
        self._vhosts = NULL
        self._num_vhosts = 0
        self._default_vhost = -1
        self._domains = NULL
        self._domain_mask = 0
        self._num_domains = 0
        self._suffix_lens = NULL
        self._num_suffix_lens = 0
        self._prefix_lens = NULL
        self._num_prefix_lens = 0

    def __dealloc__(self):
        cdef VHostSlot *vh = self._vhosts
        cdef int i, j
        if vh != NULL:
            for i in range(self._num_vhosts):
                if vh[i].routes != NULL:
                    for j in range(vh[i].num_routes):
                        free(vh[i].routes[j].headers)
                        free(vh[i].routes[j].queries)
                    free(vh[i].routes)
            free(vh)
            self._vhosts = NULL
        free(self._domains)
        self._domains = NULL
        free(self._suffix_lens)
        self._suffix_lens = NULL
        free(self._prefix_lens)
        self._prefix_lens = NULL

    def __init__(self, config):
        self.config = config
        self.ignore_port = bool(getattr(config, "ignore_port_in_host_matching", False))
        self.most_specific_wins = bool(getattr(config, "most_specific_header_mutations_wins",
                                               False))
        self._keep = []
        self._regexes = []
        self._vhost_names = []
        self._build(config)

    # -- building ------------------------------------------------------------------------------

    cdef const char *_pin(self, bytes b) except NULL:
        self._keep.append(b)
        return PyBytes_AS_STRING(b)

    cdef int _regex_index(self, str pattern) except -1:
        self._regexes.append(re.compile(pattern.encode("utf-8")))
        return len(self._regexes) - 1

    cdef int _fill_strmatch(self, StrMatch *m, object sm) except -1:
        kinds = {"exact": SM_EXACT, "prefix": SM_PREFIX, "suffix": SM_SUFFIX,
                 "contains": SM_CONTAINS, "regex": SM_REGEX, "safe_regex": SM_REGEX}
        if sm.kind not in kinds:
            raise ValueError(f"unsupported string matcher kind {sm.kind!r}")
        m.kind = kinds[sm.kind]
        m.ignore_case = bool(sm.ignore_case) and m.kind != SM_REGEX
        m.regex = -1
        cdef bytes v = sm.value.encode("utf-8")
        m.value = self._pin(v)
        m.len = PyBytes_GET_SIZE(v)
        if m.kind == SM_REGEX:
            m.regex = self._regex_index(sm.value)
        return 0

    cdef int _build(self, config) except -1:
        cdef VHostSlot *vhosts
        cdef RouteSlot *slot
        cdef int vi, ri, k
        vhost_list = list(config.virtual_hosts)
        self._num_vhosts = len(vhost_list)
        vhosts = <VHostSlot *>calloc(max(1, self._num_vhosts), sizeof(VHostSlot))
        if vhosts == NULL:
            raise MemoryError()
        self._vhosts = vhosts

        config_req = _make_ops(list(config.headers.request_add),
                               list(config.headers.request_remove))
        config_resp = _make_ops(list(config.headers.response_add),
                                list(config.headers.response_remove))

        exact, suffix, prefix = {}, {}, {}
        for vi, vh in enumerate(vhost_list):
            self._vhost_names.append(vh.name)
            for domain in vh.domains:
                d = domain.lower()
                if d == "*":
                    if self._default_vhost >= 0:
                        raise ValueError(f"Only a single wildcard domain is permitted in route "
                                         f"{config.name}")
                    self._default_vhost = vi
                    continue
                if d.startswith("*"):
                    table, key = suffix, d[1:]
                elif d.endswith("*"):
                    table, key = prefix, d[:len(d) - 1]
                else:
                    table, key = exact, d
                if key in table:
                    raise ValueError(f"Only unique values for domains are permitted. Duplicate "
                                     f"entry of domain {d} in route {config.name}")
                table[key] = vi

            vh_req = _make_ops(list(vh.headers.request_add), list(vh.headers.request_remove))
            vh_resp = _make_ops(list(vh.headers.response_add), list(vh.headers.response_remove))

            routes = list(vh.routes)
            vhosts[vi].num_routes = len(routes)
            vhosts[vi].routes = <RouteSlot *>calloc(max(1, len(routes)), sizeof(RouteSlot))
            if vhosts[vi].routes == NULL:
                raise MemoryError()
            for ri, r in enumerate(routes):
                slot = &vhosts[vi].routes[ri]
                self._fill_route(slot, r, vh.name, vh_req, vh_resp, config_req, config_resp)

        self._build_domains(exact, suffix, prefix)
        return 0

    cdef int _fill_route(self, RouteSlot *slot, r, str vhost_name, vh_req, vh_resp,
                         config_req, config_resp) except -1:
        cdef int k
        cdef bytes v
        kinds = {"prefix": PATH_PREFIX, "path": PATH_EXACT, "safe_regex": PATH_REGEX,
                 "regex": PATH_REGEX, "path_separated_prefix": PATH_SEPARATED_PREFIX}
        m = r.match
        if m.kind not in kinds:
            raise ValueError(f"unsupported route match kind {m.kind!r}")
        slot.kind = kinds[m.kind]
        v = m.value.encode("utf-8")
        slot.value = self._pin(v)
        slot.len = PyBytes_GET_SIZE(v)
        slot.ignore_case = not m.case_sensitive and slot.kind != PATH_REGEX
        slot.regex = -1
        if slot.kind == PATH_REGEX:
            slot.regex = self._regex_index(m.value)

        headers = list(m.headers)
        slot.num_headers = len(headers)
        if headers:
            slot.headers = <HeaderCheck *>calloc(len(headers), sizeof(HeaderCheck))
            if slot.headers == NULL:
                raise MemoryError()
            for k, hm in enumerate(headers):
                self._fill_header_check(&slot.headers[k], hm)
        queries = list(m.query_parameters)
        slot.num_queries = len(queries)
        if queries:
            slot.queries = <QueryCheck *>calloc(len(queries), sizeof(QueryCheck))
            if slot.queries == NULL:
                raise MemoryError()
            for k, qm in enumerate(queries):
                self._fill_query_check(&slot.queries[k], qm)

        entry = self._compile_entry(r, vhost_name, vh_req, vh_resp, config_req, config_resp)
        entry.matcher_len = -1 if slot.kind == PATH_REGEX else <Py_ssize_t>slot.len
        self._keep.append(entry)
        slot.entry = <PyObject *>entry
        return 0

    cdef int _fill_header_check(self, HeaderCheck *h, hm) except -1:
        cdef bytes name = hm.name.lower().encode("utf-8")
        h.name = self._pin(name)
        h.name_len = PyBytes_GET_SIZE(name)
        h.pseudo = {b":method": PSEUDO_METHOD, b":path": PSEUDO_PATH,
                    b":authority": PSEUDO_AUTHORITY, b":scheme": PSEUDO_SCHEME}.get(
                        name, PSEUDO_NONE)
        h.invert = bool(hm.invert)
        h.missing_as_empty = bool(hm.treat_missing_header_as_empty)
        if hm.matcher is not None:
            h.present_check = False
            self._fill_strmatch(&h.m, hm.matcher)
        else:
            # present_match, or no specifier at all (Envoy: present_match true)
            h.present_check = True
            h.present = True if hm.present is None else bool(hm.present)
        return 0

    cdef int _fill_query_check(self, QueryCheck *q, qm) except -1:
        cdef bytes name = qm.name.encode("utf-8")
        q.name = self._pin(name)
        q.name_len = PyBytes_GET_SIZE(name)
        if qm.matcher is not None:
            q.present_only = False
            self._fill_strmatch(&q.m, qm.matcher)
        else:
            q.present_only = True
        return 0

    cdef RouteEntry _compile_entry(self, r, str vhost_name, vh_req, vh_resp, config_req,
                                   config_resp):
        cdef RouteEntry e = RouteEntry.__new__(RouteEntry)
        cdef WeightedTarget wt
        cdef uint64_t total = 0
        cdef int i
        e.name = r.name
        e.virtual_host = vhost_name
        e.source = r
        route_req = _make_ops(list(r.headers.request_add), list(r.headers.request_remove))
        route_resp = _make_ops(list(r.headers.response_add), list(r.headers.response_remove))
        # Envoy's getHeaderParsers: most specific first unless most_specific_header_mutations_wins
        # (then least specific first); "later evaluated header parser wins".
        if self.most_specific_wins:
            req_levels = [config_req, vh_req, route_req]
            resp_levels = [config_resp, vh_resp, route_resp]
        else:
            req_levels = [route_req, vh_req, config_req]
            resp_levels = [route_resp, vh_resp, config_resp]
        e.request_ops = _chain(req_levels)
        e.response_ops = _chain(resp_levels)
        e.redirect_scheme = b""
        e.redirect_host = b""
        e.redirect_port = b""
        e.path_redirect = b""
        e.redirect_prefix_rewrite = b""

        if r.route is not None:
            a = r.route
            e.action = ACTION_ROUTE
            e.timeout_ms = int(a.timeout_ms)
            e.auto_host_rewrite = bool(a.auto_host_rewrite)
            e.host_rewrite = a.host_rewrite_literal.encode("utf-8") if a.host_rewrite_literal \
                else None
            e.prefix_rewrite = a.prefix_rewrite.encode("utf-8") if a.prefix_rewrite else None
            if a.regex_rewrite is not None:
                e.regex_rewrite = re.compile(a.regex_rewrite.pattern.encode("utf-8"))
                e.regex_substitution = translate_substitution(a.regex_rewrite.substitution)
            if a.cluster_header:
                e.cluster_header = a.cluster_header.lower().encode("utf-8")
            elif a.weighted_clusters:
                targets = []
                for wc in a.weighted_clusters:
                    wt = WeightedTarget.__new__(WeightedTarget)
                    wt.cluster = wc.name
                    wt.weight = int(wc.weight)
                    wt.host_rewrite = wc.host_rewrite_literal.encode("utf-8") \
                        if wc.host_rewrite_literal else None
                    wreq = _make_ops(list(wc.headers.request_add),
                                     list(wc.headers.request_remove))
                    wresp = _make_ops(list(wc.headers.response_add),
                                      list(wc.headers.response_remove))
                    # WeightedClusterEntry: its own parser first, then the route's chain.
                    wt.request_ops = _chain([wreq] + req_levels)
                    wt.response_ops = _chain([wresp] + resp_levels)
                    targets.append(wt)
                e.weighted = tuple(targets)
                e.cum_weights = <uint64_t *>malloc(max(1, len(targets)) * sizeof(uint64_t))
                if e.cum_weights == NULL:
                    raise MemoryError()
                for i, wt in enumerate(targets):
                    total += wt.weight
                    e.cum_weights[i] = total
                if total == 0:
                    raise ValueError("Sum of weights in the weighted_cluster must be greater "
                                     "than 0.")
                e.total_weight = total
            else:
                e.cluster = a.cluster
            _compile_hash_policies(e, getattr(a, "hash_policy", None))
        elif r.redirect is not None:
            rd = r.redirect
            e.action = ACTION_REDIRECT
            e.status = int(rd.response_code)
            e.redirect_scheme = (rd.scheme_redirect or "").lower().encode("utf-8")
            e.redirect_host = (rd.host_redirect or "").encode("utf-8")
            e.redirect_port = (":%d" % rd.port_redirect).encode() if rd.port_redirect else b""
            e.path_redirect = (rd.path_redirect or "").encode("utf-8")
            e.path_redirect_has_query = b"?" in e.path_redirect
            e.redirect_prefix_rewrite = (rd.prefix_rewrite or "").encode("utf-8")
            if rd.regex_rewrite is not None:
                e.redirect_regex = re.compile(rd.regex_rewrite.pattern.encode("utf-8"))
                e.redirect_regex_substitution = translate_substitution(
                    rd.regex_rewrite.substitution)
            e.strip_query = bool(rd.strip_query)
        elif r.direct_response is not None:
            e.action = ACTION_DIRECT_RESPONSE
            e.status = int(r.direct_response.status)
            body = r.direct_response.body
            if isinstance(body, str):
                body = body.encode("utf-8")
            e.body = body
        else:
            raise ValueError(f"route {r.name!r} has no action")
        return e

    cdef int _build_domains(self, dict exact, dict suffix, dict prefix) except -1:
        cdef size_t n = len(exact) + len(suffix) + len(prefix)
        cdef size_t cap = 8, idx
        cdef Py_ssize_t j
        cdef DomainSlot *table
        cdef bytes kb
        cdef uint64_t h
        cdef int kind
        while cap < 2 * n + 2:
            cap <<= 1
        table = <DomainSlot *>calloc(cap, sizeof(DomainSlot))
        if table == NULL:
            raise MemoryError()
        self._domains = table
        self._domain_mask = cap - 1
        self._num_domains = n
        for kind, src in ((DOMAIN_EXACT, exact), (DOMAIN_SUFFIX, suffix),
                          (DOMAIN_PREFIX, prefix)):
            for key, vi in src.items():
                kb = key.encode("utf-8")
                h = _hash_lower(kind, PyBytes_AS_STRING(kb), PyBytes_GET_SIZE(kb))
                idx = h & self._domain_mask
                while table[idx].key != NULL:
                    idx = (idx + 1) & self._domain_mask
                table[idx].hash = h
                table[idx].key = self._pin(kb)
                table[idx].len = PyBytes_GET_SIZE(kb)
                table[idx].kind = kind
                table[idx].vhost = vi
        slens = sorted({len(k.encode("utf-8")) for k in suffix}, reverse=True)
        plens = sorted({len(k.encode("utf-8")) for k in prefix}, reverse=True)
        self._suffix_lens = <size_t *>malloc(max(1, len(slens)) * sizeof(size_t))
        self._prefix_lens = <size_t *>malloc(max(1, len(plens)) * sizeof(size_t))
        if self._suffix_lens == NULL or self._prefix_lens == NULL:
            raise MemoryError()
        for j in range(len(slens)):
            self._suffix_lens[j] = slens[j]
        for j in range(len(plens)):
            self._prefix_lens[j] = plens[j]
        self._num_suffix_lens = len(slens)
        self._num_prefix_lens = len(plens)
        return 0

    # -- per request ---------------------------------------------------------------------------

    cdef int _domain_lookup(self, int kind, const char *s, size_t n) noexcept:
        cdef DomainSlot *table = self._domains
        cdef uint64_t h = _hash_lower(kind, s, n)
        cdef size_t idx = h & self._domain_mask
        while table[idx].key != NULL:
            if (table[idx].hash == h and table[idx].kind == kind and table[idx].len == n
                    and _ieq(table[idx].key, s, n)):
                return table[idx].vhost
            idx = (idx + 1) & self._domain_mask
        return -1

    cdef int find_virtual_host(self, RequestHead *head) noexcept:
        cdef const char *host
        cdef size_t hlen, L
        cdef Py_ssize_t port
        cdef int i, vi
        if self._num_domains == 0:
            return self._default_vhost
        if head.host_index < 0:
            return -1
        host = head.headers[head.host_index].value
        hlen = head.headers[head.host_index].value_len
        if self.ignore_port:
            port = _port_start(host, hlen)
            if port >= 0:
                hlen = <size_t>port
        vi = self._domain_lookup(DOMAIN_EXACT, host, hlen)
        if vi >= 0:
            return vi
        for i in range(self._num_suffix_lens):
            L = self._suffix_lens[i]
            if L >= hlen:
                continue
            vi = self._domain_lookup(DOMAIN_SUFFIX, host + hlen - L, L)
            if vi >= 0:
                return vi
        for i in range(self._num_prefix_lens):
            L = self._prefix_lens[i]
            if L >= hlen:
                continue
            vi = self._domain_lookup(DOMAIN_PREFIX, host, L)
            if vi >= 0:
                return vi
        return self._default_vhost

    cdef int _str_match(self, StrMatch *m, const char *v, size_t n) except -1:
        if m.kind == SM_EXACT:
            return n == m.len and _eq(v, m.value, n, m.ignore_case)
        if m.kind == SM_PREFIX:
            return n >= m.len and _eq(v, m.value, m.len, m.ignore_case)
        if m.kind == SM_SUFFIX:
            return n >= m.len and _eq(v + n - m.len, m.value, m.len, m.ignore_case)
        if m.kind == SM_CONTAINS:
            return _contains(v, n, m.value, m.len, m.ignore_case)
        # SM_REGEX: RE2's FullMatch, done with Python's re.fullmatch
        return self._regexes[m.regex].fullmatch(PyBytes_FromStringAndSize(v, n)) is not None

    cdef int _header_check(self, RequestHead *head, HeaderCheck *h, bint is_tls) except -1:
        cdef const char *v = NULL
        cdef size_t n = 0, i, count = 0, total = 0, pos
        cdef char buf[JOIN_BUF]
        cdef const phr_header *hd
        cdef bint found
        cdef int r
        if h.pseudo == PSEUDO_METHOD:
            v = head.method
            n = head.method_len
            count = 1
        elif h.pseudo == PSEUDO_PATH:
            v = head.path
            n = head.path_len
            count = 1
        elif h.pseudo == PSEUDO_SCHEME:
            if is_tls:
                v = b"https"
                n = 5
            else:
                v = b"http"
                n = 4
            count = 1
        elif h.pseudo == PSEUDO_AUTHORITY:
            if head.host_index >= 0:
                v = head.headers[head.host_index].value
                n = head.headers[head.host_index].value_len
                count = 1
        else:
            for i in range(head.num_headers):
                hd = &head.headers[i]
                if hd.name_len == h.name_len and _ieq(hd.name, h.name, h.name_len):
                    if count == 0:
                        v = hd.value
                        n = hd.value_len
                    total += hd.value_len
                    count += 1
        found = count > 0
        if h.present_check:
            # HeaderDataPresentMatch: (present == is_present) XOR invert
            return (h.present == found) != h.invert
        if not found:
            if not h.missing_as_empty:
                return 0  # a missing header never matches, inverted or not
            return self._str_match(&h.m, b"", 0) != h.invert
        if count > 1:
            # Repeated headers: Envoy matches when any one of the values matches (the values
            # are not joined).
            for i in range(head.num_headers):
                hd = &head.headers[i]
                if hd.name_len == h.name_len and _ieq(hd.name, h.name, h.name_len):
                    r = self._str_match(&h.m, hd.value, hd.value_len)
                    if r:
                        return 1 != h.invert
            return 0 != h.invert
        return self._str_match(&h.m, v, n) != h.invert

    cdef bytes _join_values(self, RequestHead *head, HeaderCheck *h):
        cdef size_t i
        cdef const phr_header *hd
        parts = []
        for i in range(head.num_headers):
            hd = &head.headers[i]
            if hd.name_len == h.name_len and _ieq(hd.name, h.name, h.name_len):
                parts.append(PyBytes_FromStringAndSize(hd.value, hd.value_len))
        return b",".join(parts)

    cdef int _query_check(self, const char *path, size_t path_len, size_t noq,
                          QueryCheck *q) except -1:
        # First value of the parameter, no percent-decoding (Envoy's parseQueryString).
        cdef size_t start, end, stop, eq, i
        if noq >= path_len or path[noq] != 63:   # no '?'
            return 0
        stop = path_len
        for i in range(noq + 1, path_len):
            if path[i] == 35:   # '#'
                stop = i
                break
        start = noq + 1
        while start <= stop:
            end = start
            while end < stop and path[end] != 38:   # '&'
                end += 1
            eq = start
            while eq < end and path[eq] != 61:      # '='
                eq += 1
            if eq - start == q.name_len and memcmp(path + start, q.name, q.name_len) == 0 \
                    and end > start:
                if q.present_only:
                    return 1
                if eq < end:
                    return self._str_match(&q.m, path + eq + 1, end - eq - 1)
                return self._str_match(&q.m, b"", 0)
            start = end + 1
        return 0

    cdef int route(self, RequestHead *head, RouteDecision out, bint is_tls,
                   uint64_t random) except -1:
        cdef int vi = self.find_virtual_host(head)
        cdef VHostSlot *vh
        cdef RouteSlot *s
        cdef const char *path = head.path
        cdef size_t path_len = head.path_len
        cdef size_t noq
        cdef int ri, k
        cdef bint ok
        cdef object path_obj = None
        out.reset()
        if vi < 0:
            return ACTION_NONE
        out.virtual_host = self._vhost_names[vi]
        vh = &self._vhosts[vi]
        noq = _path_end(path, path_len)
        for ri in range(vh.num_routes):
            s = &vh.routes[ri]
            if s.kind == PATH_PREFIX:
                if s.len > noq or not _eq(path, s.value, s.len, s.ignore_case):
                    continue
            elif s.kind == PATH_EXACT:
                if s.len != noq or not _eq(path, s.value, s.len, s.ignore_case):
                    continue
            elif s.kind == PATH_SEPARATED_PREFIX:
                if s.len > noq or not _eq(path, s.value, s.len, s.ignore_case):
                    continue
                if noq != s.len and path[s.len] != 47:   # '/'
                    continue
            else:
                if path_obj is None:
                    path_obj = PyBytes_FromStringAndSize(path, noq)
                if self._regexes[s.regex].fullmatch(path_obj) is None:
                    continue
            ok = True
            for k in range(s.num_headers):
                if not self._header_check(head, &s.headers[k], is_tls):
                    ok = False
                    break
            if not ok:
                continue
            for k in range(s.num_queries):
                if not self._query_check(path, path_len, noq, &s.queries[k]):
                    ok = False
                    break
            if not ok:
                continue
            return self._apply(<RouteEntry>s.entry, head, out, is_tls, random, noq)
        return ACTION_NONE

    cdef int _apply(self, RouteEntry e, RequestHead *head, RouteDecision out, bint is_tls,
                    uint64_t random, size_t noq) except -1:
        cdef WeightedTarget wt
        cdef uint64_t sel
        cdef Py_ssize_t i, n
        cdef const phr_header *hd
        cdef size_t k
        cdef bytes name
        out.entry = e
        out.route_name = e.name
        out.response_ops = e.response_ops
        if e.action == ACTION_ROUTE:
            out.action = ACTION_ROUTE
            out.timeout_ms = e.timeout_ms
            out.auto_host_rewrite = e.auto_host_rewrite
            out.request_ops = e.request_ops
            out.host = e.host_rewrite
            if e.weighted is not None:
                sel = random % e.total_weight
                n = len(e.weighted)
                i = 0
                while i < n - 1 and sel >= e.cum_weights[i]:
                    i += 1
                wt = <WeightedTarget>e.weighted[i]
                out.cluster = wt.cluster
                out.request_ops = wt.request_ops
                out.response_ops = wt.response_ops
                # the route's own host_rewrite_literal is applied after the entry's
                if e.host_rewrite is None:
                    out.host = wt.host_rewrite
            elif e.cluster_header is not None:
                name = e.cluster_header
                for k in range(head.num_headers):
                    hd = &head.headers[k]
                    if hd.name_len == <size_t>PyBytes_GET_SIZE(name) and \
                            _ieq(hd.name, PyBytes_AS_STRING(name), hd.name_len):
                        # only the first value is used (untrusted header)
                        if hd.value_len:
                            out.cluster = PyBytes_FromStringAndSize(
                                hd.value, hd.value_len).decode("latin-1")
                        break
                if out.cluster is None:
                    out.action = ACTION_NO_CLUSTER
            else:
                out.cluster = e.cluster
            if e.num_hash_policies:
                self._hash(e, head, out)
            if e.prefix_rewrite is not None:
                out.path = self._prefix_rewritten(e.prefix_rewrite, e.matcher_len, head, noq)
            elif e.regex_rewrite is not None:
                out.path = (_regex_sub(e.regex_rewrite, e.regex_substitution,
                                       PyBytes_FromStringAndSize(head.path, noq))
                            + PyBytes_FromStringAndSize(head.path + noq, head.path_len - noq))
            return out.action
        if e.action == ACTION_REDIRECT:
            out.action = ACTION_REDIRECT
            out.status = e.status
            out.location = self._redirect_location(e, head, is_tls, noq)
            return ACTION_REDIRECT
        out.action = ACTION_DIRECT_RESPONSE
        out.status = e.status
        out.body = e.body
        if e.status == 201 or (300 <= e.status < 400):
            # the router adds Location (the request's own URL) to 201/3xx direct responses
            out.location = self._new_uri(None, head, is_tls, b"", b"", b"",
                                         PyBytes_FromStringAndSize(head.path, head.path_len),
                                         False, False)
        return ACTION_DIRECT_RESPONSE

    cdef int _hash(self, RouteEntry e, RequestHead *head, RouteDecision out) except -1:
        # Route hash policies: evaluated in C over the parsed head (csrc/fp_hash_policy.c).
        cdef fp_hash_input_t inp
        cdef uint64_t h = 0
        cdef int generated = -1
        cdef char cookie[17]
        inp.headers = head.headers
        inp.num_headers = head.num_headers
        inp.method = head.method
        inp.method_len = head.method_len
        inp.path = head.path
        inp.path_len = head.path_len
        if head.authority != NULL:
            inp.authority = head.authority
            inp.authority_len = head.authority_len
        elif head.host_index >= 0:
            inp.authority = head.headers[head.host_index].value
            inp.authority_len = head.headers[head.host_index].value_len
        else:
            inp.authority = NULL
            inp.authority_len = 0
        inp.source_ip = NULL
        inp.source_ip_len = 0
        inp.remote_address = NULL
        inp.remote_address_len = 0
        inp.local_address = NULL
        inp.local_address_len = 0
        if out.source_ip is not None:
            inp.source_ip = PyBytes_AS_STRING(out.source_ip)
            inp.source_ip_len = PyBytes_GET_SIZE(out.source_ip)
        if out.remote_address is not None and out.local_address is not None:
            inp.remote_address = PyBytes_AS_STRING(out.remote_address)
            inp.remote_address_len = PyBytes_GET_SIZE(out.remote_address)
            inp.local_address = PyBytes_AS_STRING(out.local_address)
            inp.local_address_len = PyBytes_GET_SIZE(out.local_address)
        if fp_hash_policy_eval(e.hash_policies, e.num_hash_policies, &inp, &h, &generated,
                               cookie):
            out.has_hash = True
            out.hash_value = h
        if generated >= 0:
            parts = <tuple>e._cookie_parts[generated]
            out.set_cookie = (<bytes>parts[0] + PyBytes_FromStringAndSize(cookie, 16)
                              + <bytes>parts[1])
        return 0

    cdef bytes _prefix_rewritten(self, bytes rewrite, Py_ssize_t matcher_len, RequestHead *head,
                                 size_t noq):
        cdef size_t cut = noq if matcher_len < 0 else <size_t>matcher_len
        if cut > head.path_len:
            cut = head.path_len
        return rewrite + PyBytes_FromStringAndSize(head.path + cut, head.path_len - cut)

    cdef bytes _redirect_location(self, RouteEntry e, RequestHead *head, bint is_tls,
                                  size_t noq):
        # RouteEntryImplBase::rewritePathHeader (for redirects) then Http::Utility::newUri.
        cdef bytes path = PyBytes_FromStringAndSize(head.path, head.path_len)
        cdef bytes rewritten
        if e.redirect_regex is not None:
            rewritten = _regex_sub(e.redirect_regex, e.redirect_regex_substitution, path[:noq])
            if rewritten:
                path = rewritten + path[noq:]
        elif e.redirect_prefix_rewrite:
            path = self._prefix_rewritten(e.redirect_prefix_rewrite, e.matcher_len, head, noq)
        return self._new_uri(e, head, is_tls, e.redirect_scheme, e.redirect_host,
                             e.redirect_port, path, e.path_redirect_has_query, e.strip_query)

    cdef bytes _new_uri(self, RouteEntry e, RequestHead *head, bint is_tls, bytes scheme,
                        bytes host, bytes port, bytes path, bint path_redirect_has_query,
                        bint strip_query):
        cdef bytes request_scheme = b"https" if is_tls else b"http"
        cdef bytes final_scheme = scheme if scheme else request_scheme
        cdef bytes final_host, final_path, request_port
        cdef Py_ssize_t host_end, q
        cdef bint remove_port
        if host:
            final_host = host
        else:
            # processRequestHost: drop the request's port if a port_redirect is set, or if the
            # scheme changes and the port is the default one of the request's scheme.
            if head.host_index >= 0:
                final_host = PyBytes_FromStringAndSize(head.headers[head.host_index].value,
                                                       head.headers[head.host_index].value_len)
            else:
                final_host = b""
            if final_host:
                if final_host[:1] == b"[":
                    host_end = final_host.rfind(b"]:")
                    if host_end >= 0:
                        host_end += 1
                else:
                    host_end = final_host.rfind(b":")
                if host_end >= 0:
                    request_port = final_host[host_end:]
                    remove_port = len(port) > 0
                    if final_scheme != request_scheme:
                        remove_port |= request_scheme == b"https" and request_port == b":443"
                        remove_port |= request_scheme == b"http" and request_port == b":80"
                    if remove_port:
                        final_host = final_host[:host_end]
        if e is not None and e.path_redirect:
            if path_redirect_has_query:
                final_path = e.path_redirect
            else:
                q = path.find(b"?")
                final_path = e.path_redirect + path[q:] if q >= 0 else e.path_redirect
        else:
            final_path = path
        if not final_path.startswith(b"/"):
            final_path = b"/" + final_path
        if strip_query and not path_redirect_has_query:
            q = final_path.find(b"?")
            if q >= 0:
                final_path = final_path[:q]
        return final_scheme + b"://" + final_host + port + final_path

    # -- Python entry points -------------------------------------------------------------------

    def route_request(self, bytes method, bytes path, headers=(), bint is_tls=False,
                      uint64_t random=0, RouteDecision decision=None):
        """Route a request given as Python bytes (tests, benchmarks).

        `headers` is a sequence of (name, value) bytes pairs; the first `host` header (any case)
        becomes the head's Host.  Returns `decision` (a new RouteDecision if None).
        """
        cdef RequestHead head
        cdef Py_ssize_t i, n
        cdef bytes name, value
        if decision is None:
            decision = RouteDecision.__new__(RouteDecision)
        keep = list(headers)   # the bytes stay referenced while head points into them
        n = len(keep)
        if n > 128:
            raise ValueError("too many headers")
        memset(&head, 0, sizeof(RequestHead))
        head.method = PyBytes_AS_STRING(method)
        head.method_len = PyBytes_GET_SIZE(method)
        head.path = PyBytes_AS_STRING(path)
        head.path_len = PyBytes_GET_SIZE(path)
        head.minor_version = 1
        head.host_index = -1
        head.upgrade_index = -1
        head.te_index = -1
        head.num_headers = n
        for i in range(n):
            name, value = keep[i]
            head.headers[i].name = PyBytes_AS_STRING(name)
            head.headers[i].name_len = PyBytes_GET_SIZE(name)
            head.headers[i].value = PyBytes_AS_STRING(value)
            head.headers[i].value_len = PyBytes_GET_SIZE(value)
            if head.host_index < 0 and PyBytes_GET_SIZE(name) == 4 and \
                    _ieq(PyBytes_AS_STRING(name), b"host", 4):
                head.host_index = <int>i
        self.route(&head, decision, is_tls, random)
        return decision

    def virtual_host_names(self):
        return list(self._vhost_names)

