# Route table: virtual-host selection and route matching compiled once per config, evaluated per
# request against a parsed RequestHead without creating Python objects on the common path.

from cpython.ref cimport PyObject
from libc.stdint cimport int64_t, uint64_t
from fastproxy._core.http1 cimport RequestHead
from fastproxy._core.includes.hash_policy cimport fp_hash_policy_t

cdef enum:
    ACTION_NONE = 0            # no virtual host or no route matched: 404 (NR)
    ACTION_ROUTE = 1           # forward to decision.cluster
    ACTION_REDIRECT = 2        # answer decision.status with decision.location
    ACTION_DIRECT_RESPONSE = 3 # answer decision.status with decision.body; for a 201/3xx status
                               # Envoy also sends Location: decision.location (the request URL)
    ACTION_NO_CLUSTER = 4      # cluster_header absent/empty: cluster not found, 503 (NC)

# HeaderOps.add item append_action values (Envoy's HeaderValueOption.HeaderAppendAction).
cdef enum:
    APPEND_IF_EXISTS_OR_ADD = 0
    ADD_IF_ABSENT = 1
    OVERWRITE_IF_EXISTS_OR_ADD = 2
    OVERWRITE_IF_EXISTS = 3

# Compiled matcher structures (internal to router.pyx; strings point into bytes the table keeps).
cdef enum:
    SM_EXACT = 0
    SM_PREFIX = 1
    SM_SUFFIX = 2
    SM_CONTAINS = 3
    SM_REGEX = 4

cdef enum:
    PATH_PREFIX = 0
    PATH_EXACT = 1
    PATH_REGEX = 2
    PATH_SEPARATED_PREFIX = 3

cdef enum:
    PSEUDO_NONE = 0
    PSEUDO_METHOD = 1
    PSEUDO_PATH = 2
    PSEUDO_AUTHORITY = 3
    PSEUDO_SCHEME = 4

cdef enum:
    DOMAIN_EXACT = 0
    DOMAIN_SUFFIX = 1
    DOMAIN_PREFIX = 2

cdef enum:
    JOIN_BUF = 2048

cdef struct StrMatch:
    int kind
    const char *value
    size_t len
    bint ignore_case
    int regex                   # index into RouteTable._regexes (SM_REGEX)

cdef struct HeaderCheck:
    const char *name            # lower-case
    size_t name_len
    int pseudo
    bint present_check          # present_match (or no matcher at all: present=True)
    bint present
    bint invert
    bint missing_as_empty
    StrMatch m

cdef struct QueryCheck:
    const char *name
    size_t name_len
    bint present_only
    StrMatch m

cdef struct RouteSlot:
    int kind
    const char *value
    size_t len
    bint ignore_case
    int regex
    HeaderCheck *headers
    int num_headers
    QueryCheck *queries
    int num_queries
    PyObject *entry             # RouteEntry, owned through RouteTable._keep

cdef struct VHostSlot:
    RouteSlot *routes
    int num_routes

cdef struct DomainSlot:
    uint64_t hash
    const char *key             # NULL = empty slot
    size_t len
    int kind
    int vhost

cdef class HeaderOps:
    # Header mutations of one level and direction, compiled.
    #
    # How to apply one HeaderOps to a header list (Envoy's HeaderParser::evaluateHeaders):
    #   1. remove: delete every header whose lower-cased name is in `remove`.
    #   2. Then walk `add` in order and sort each item, looking at the headers as they are after
    #      step 1 (adds of this same HeaderOps are not visible yet):
    #        APPEND_IF_EXISTS_OR_ADD    -> to the "append" list (another header line, even if one
    #                                      of that name exists)
    #        ADD_IF_ABSENT              -> to the "append" list only if no header of that name
    #                                      exists; otherwise dropped
    #        OVERWRITE_IF_EXISTS_OR_ADD -> to the "overwrite" list
    #        OVERWRITE_IF_EXISTS        -> to the "overwrite" list only if a header of that name
    #                                      exists; otherwise dropped
    #   3. For each "overwrite" item in order: delete every header of that name, then add one line
    #      name: value (so two overwrites of one name leave the last one).
    #   4. For each "append" item in order: add one line name: value.
    # Items with an empty value and keep_empty False are dropped when the table is built (Envoy
    # skips them), so every item in `add` is applied; keep_empty is kept for information.
    # A decision carries several HeaderOps; apply them one after the other in tuple order, each
    # one seeing the result of the previous ones.
    cdef readonly tuple remove   # lower-case bytes names
    cdef readonly tuple add      # (lower-case name bytes, value bytes, append_action int, keep_empty bool)

cdef class WeightedTarget:
    # One weighted_clusters entry, compiled.
    cdef readonly object cluster        # str
    cdef readonly uint64_t weight
    cdef readonly bytes host_rewrite    # host_rewrite_literal of this entry, None = none
    cdef readonly tuple request_ops     # this entry's ops followed by the route's, Envoy's order
    cdef readonly tuple response_ops

cdef class RouteEntry:
    # One compiled route (matcher + action); built once per config.
    cdef readonly object name           # route name (str)
    cdef readonly object virtual_host   # name of the virtual host it belongs to (str)
    cdef readonly object source         # the model.Route it was compiled from
    cdef readonly int action            # ACTION_ROUTE / ACTION_REDIRECT / ACTION_DIRECT_RESPONSE
    # route action
    cdef readonly object cluster        # str, or None
    cdef readonly bytes cluster_header  # lower-case header name, or None
    cdef readonly tuple weighted        # tuple of WeightedTarget, or None
    cdef uint64_t *cum_weights          # cumulative weights of `weighted` (malloc'd)
    cdef readonly uint64_t total_weight
    cdef readonly bytes prefix_rewrite
    cdef readonly object regex_rewrite  # compiled bytes pattern, or None
    cdef readonly bytes regex_substitution  # Python re template (translated from RE2's)
    cdef readonly bytes host_rewrite
    cdef readonly bint auto_host_rewrite
    cdef readonly int64_t timeout_ms
    cdef readonly tuple request_ops     # tuple of HeaderOps, Envoy's order
    cdef readonly tuple response_ops
    # redirect
    cdef readonly bytes redirect_scheme     # b"" = keep the request's
    cdef readonly bytes redirect_host       # b"" = keep the request's
    cdef readonly bytes redirect_port       # b":8443", b"" = none
    cdef readonly bytes path_redirect       # b"" = none
    cdef readonly bint path_redirect_has_query
    cdef readonly bytes redirect_prefix_rewrite
    cdef readonly object redirect_regex
    cdef readonly bytes redirect_regex_substitution
    cdef readonly bint strip_query
    # redirect / direct response
    cdef readonly int status
    cdef readonly bytes body
    # the matched-path length rule for prefix_rewrite: the configured prefix/path length, or
    # -1 for regex routes (the whole path without query is replaced)
    cdef Py_ssize_t matcher_len
    # route hash_policy, compiled (malloc'd; names point into _hash_keep)
    cdef fp_hash_policy_t *hash_policies
    cdef int num_hash_policies
    cdef tuple _hash_keep
    cdef tuple _cookie_parts            # per policy: (b'name="', b'"; Max-Age=..; HttpOnly') or None

cdef class RouteDecision:
    # The result of routing one request; the connection keeps one per stream and reuses it.
    cdef public int action
    cdef public object cluster          # str cluster name (ACTION_ROUTE)
    cdef public bytes path              # path to send upstream; None = unchanged
    cdef public bytes host              # authority to send upstream; None = unchanged
    cdef public int64_t timeout_ms      # route timeout, 0 = none
    cdef public tuple request_ops       # HeaderOps to apply, in Envoy's order
    cdef public tuple response_ops      # HeaderOps to apply to the response, in Envoy's order
    cdef public int status              # redirect / direct response status
    cdef public bytes location          # redirect Location (also a 3xx/201 direct response's)
    cdef public bytes body              # direct response body (None = empty)
    cdef public object route_name
    cdef public bint auto_host_rewrite  # set Host to the chosen upstream host's hostname
    cdef public object virtual_host     # name of the matched virtual host (str), None if none
    cdef public RouteEntry entry        # the matched route, None if none
    # Route hash_policy (ring hash / maglev): the request's hash when a policy produced one.
    cdef public bint has_hash
    cdef public uint64_t hash_value
    # A Set-Cookie value to add to the response, or None: set when a cookie hash policy with a
    # ttl found no cookie and generated one, as Envoy's router does. Envoy adds it only when the
    # cluster's balancer asked for the hash (RING_HASH / MAGLEV: LoadBalancer.uses_hash); it
    # appends `set-cookie: <value>` after the upstream response's headers.
    cdef public bytes set_cookie
    # The downstream connection's addresses, for hash policies (connection_properties.source_ip
    # and generated cookies). The connection sets them before calling route(); reset() keeps
    # them, so once per connection is enough. None = unknown.
    cdef public bytes source_ip         # the client's IP as Envoy prints it: b"10.0.0.1", b"::1"
    cdef public bytes remote_address    # b"10.0.0.1:5432", b"[::1]:5432"
    cdef public bytes local_address     # the listener side: b"127.0.0.1:10000"

    cdef void reset(self)

cdef class RouteTable:
    cdef object config                  # the model.RouteConfiguration it was built from
    cdef bint ignore_port               # ignore_port_in_host_matching
    cdef bint most_specific_wins        # most_specific_header_mutations_wins
    cdef list _keep                     # bytes objects C pointers point into; RouteEntry objects
    cdef list _regexes                  # compiled patterns referenced by index from C
    cdef list _vhost_names
    cdef VHostSlot *_vhosts
    cdef int _num_vhosts
    cdef int _default_vhost             # "*" vhost index, -1 if none
    cdef DomainSlot *_domains           # open-addressing hash table
    cdef size_t _domain_mask
    cdef size_t _num_domains
    cdef size_t *_suffix_lens           # distinct suffix-wildcard lengths, longest first
    cdef int _num_suffix_lens
    cdef size_t *_prefix_lens           # distinct prefix-wildcard lengths, longest first
    cdef int _num_prefix_lens

    # Fill `out` for this request; returns out.action.  `is_tls` picks the scheme for redirects
    # and the value of a ":scheme" header matcher; `random` picks among weighted clusters.
    cdef int route(self, RequestHead *head, RouteDecision out, bint is_tls, uint64_t random) except -1
    # Index of the virtual host for this request, -1 if none.
    cdef int find_virtual_host(self, RequestHead *head) noexcept

    # building
    cdef const char *_pin(self, bytes b) except NULL
    cdef int _regex_index(self, str pattern) except -1
    cdef int _fill_strmatch(self, StrMatch *m, object sm) except -1
    cdef int _build(self, config) except -1
    cdef int _fill_route(self, RouteSlot *slot, r, str vhost_name, vh_req, vh_resp,
                         config_req, config_resp) except -1
    cdef int _fill_header_check(self, HeaderCheck *h, hm) except -1
    cdef int _fill_query_check(self, QueryCheck *q, qm) except -1
    cdef RouteEntry _compile_entry(self, r, str vhost_name, vh_req, vh_resp, config_req,
                                   config_resp)
    cdef int _build_domains(self, dict exact, dict suffix, dict prefix) except -1
    # per request
    cdef int _domain_lookup(self, int kind, const char *s, size_t n) noexcept
    cdef int _str_match(self, StrMatch *m, const char *v, size_t n) except -1
    cdef int _header_check(self, RequestHead *head, HeaderCheck *h, bint is_tls) except -1
    cdef bytes _join_values(self, RequestHead *head, HeaderCheck *h)
    cdef int _query_check(self, const char *path, size_t path_len, size_t noq,
                          QueryCheck *q) except -1
    cdef int _apply(self, RouteEntry e, RequestHead *head, RouteDecision out, bint is_tls,
                    uint64_t random, size_t noq) except -1
    cdef int _hash(self, RouteEntry e, RequestHead *head, RouteDecision out) except -1
    cdef bytes _prefix_rewritten(self, bytes rewrite, Py_ssize_t matcher_len, RequestHead *head,
                                 size_t noq)
    cdef bytes _redirect_location(self, RouteEntry e, RequestHead *head, bint is_tls, size_t noq)
    cdef bytes _new_uri(self, RouteEntry e, RequestHead *head, bint is_tls, bytes scheme,
                        bytes host, bytes port, bytes path, bint path_redirect_has_query,
                        bint strip_query)
