"""fastproxy._core.router: virtual-host selection, route matching and actions, as Envoy does them."""
import pytest

from fastproxy.config import model as m

router = pytest.importorskip("fastproxy._core.router")
RouteTable = router.RouteTable

NONE, ROUTE, REDIRECT, DIRECT, NO_CLUSTER = 0, 1, 2, 3, 4


def rt(vhosts, **kw):
    return RouteTable(m.RouteConfiguration(name="rc", virtual_hosts=vhosts, **kw))


def vh(name, domains, routes, **kw):
    return m.VirtualHost(name=name, domains=domains, routes=routes, **kw)


def r(kind, value, cluster="c", name="", case_sensitive=True, headers=(), query=(), **action):
    return m.Route(
        match=m.RouteMatch(kind, value, case_sensitive=case_sensitive, headers=list(headers),
                           query_parameters=list(query)),
        name=name or f"{kind}:{value}",
        route=m.RouteAction(cluster=cluster, **action),
    )


def go(table, path=b"/", host=b"example.com", headers=(), method=b"GET", **kw):
    hs = [(b"host", host)] if host is not None else []
    hs += list(headers)
    return table.route_request(method, path, hs, **kw)


# ---------------------------------------------------------------------------------------------
# virtual hosts


def domains_table():
    return rt([
        vh("exact", ["api.foo.com", "Mixed.Example.COM"], [r("prefix", "/", "exact")]),
        vh("suffix_long", ["*-bar.foo.com"], [r("prefix", "/", "suffix_long")]),
        vh("suffix", ["*.foo.com"], [r("prefix", "/", "suffix")]),
        vh("prefix_short", ["foo.*"], [r("prefix", "/", "prefix_short")]),
        vh("prefix_long", ["foo.bar.*"], [r("prefix", "/", "prefix_long")]),
        vh("port", ["api.foo.com:8080"], [r("prefix", "/", "port")]),
        vh("default", ["*"], [r("prefix", "/", "default")]),
    ])


@pytest.mark.parametrize("host,expected", [
    (b"api.foo.com", "exact"),
    (b"API.FOO.COM", "exact"),                 # case-insensitive
    (b"mixed.example.com", "exact"),           # configured domains are lower-cased
    (b"x-bar.foo.com", "suffix_long"),         # longest suffix wins
    (b"x.foo.com", "suffix"),
    (b"a.b.foo.com", "suffix"),
    (b".foo.com", "default"),                  # a wildcard needs at least one character
    (b"foo.com", "prefix_short"),
    (b"foo.bar.baz", "prefix_long"),           # longest prefix wins
    (b"foo.baz", "prefix_short"),
    (b"x.foo.com.evil", "default"),
    (b"api.foo.com:8080", "port"),             # exact match includes the port
    (b"api.foo.com:9090", "default"),          # port kept: neither api.foo.com nor *.foo.com
    (b"other.org", "default"),
])
def test_virtual_host_precedence(host, expected):
    d = go(domains_table(), host=host)
    assert (d.action, d.cluster) == (ROUTE, expected)


def test_port_kept_by_default_and_suffix_wildcard_sees_it():
    t = rt([vh("a", ["example.com"], [r("prefix", "/", "a")]),
            vh("b", ["example.*"], [r("prefix", "/", "b")])])
    # Envoy (ignore_port_in_host_matching false): "example.com:80" is not "example.com"
    assert go(t, host=b"example.com:80").cluster == "b"
    assert go(t, host=b"example.com").cluster == "a"


def test_ignore_port_in_host_matching():
    cfg = m.RouteConfiguration(virtual_hosts=[vh("a", ["example.com"], [r("prefix", "/", "a")])])
    cfg.ignore_port_in_host_matching = True
    t = RouteTable(cfg)
    assert go(t, host=b"example.com:8080").cluster == "a"
    assert go(t, host=b"EXAMPLE.com:").cluster == "a"
    cfg6 = m.RouteConfiguration(virtual_hosts=[vh("v6", ["[::1]"], [r("prefix", "/", "v6")])])
    cfg6.ignore_port_in_host_matching = True
    t6 = RouteTable(cfg6)
    assert go(t6, host=b"[::1]:443").cluster == "v6"
    assert go(t6, host=b"[::1]").cluster == "v6"


def test_no_host_header():
    only_default = rt([vh("d", ["*"], [r("prefix", "/", "d")])])
    assert go(only_default, host=None).cluster == "d"   # Envoy's fast path: only "*"
    t = rt([vh("a", ["a.com"], [r("prefix", "/", "a")]), vh("d", ["*"], [r("prefix", "/", "d")])])
    assert go(t, host=None).action == NONE


def test_no_virtual_host_matches():
    t = rt([vh("a", ["a.com"], [r("prefix", "/", "a")])])
    d = go(t, host=b"b.com")
    assert d.action == NONE and d.virtual_host is None


def test_duplicate_domains_rejected():
    with pytest.raises(ValueError):
        rt([vh("a", ["a.com"], []), vh("b", ["A.com"], [])])
    with pytest.raises(ValueError):
        rt([vh("a", ["*"], []), vh("b", ["*"], [])])


# ---------------------------------------------------------------------------------------------
# path matchers


def one(*routes):
    return rt([vh("v", ["*"], list(routes))])


def test_routes_in_order_first_match_wins():
    t = one(r("prefix", "/api", "first"), r("prefix", "/api/v2", "second"), r("prefix", "/", "x"))
    assert go(t, b"/api/v2/x").cluster == "first"
    assert go(t, b"/other").cluster == "x"


@pytest.mark.parametrize("path,hit", [
    (b"/foo", True), (b"/foo/bar", True), (b"/foobar", True), (b"/fo", False),
    (b"/FOO", False), (b"/foo?x=1", True), (b"/fo?o", False),
])
def test_prefix(path, hit):
    assert (go(one(r("prefix", "/foo")), path).action == ROUTE) is hit


@pytest.mark.parametrize("path,hit", [
    (b"/foo", True), (b"/foo?a=b", True), (b"/foo#frag", True), (b"/foo/", False),
    (b"/fo", False), (b"/Foo", False),
])
def test_path_exact(path, hit):
    assert (go(one(r("path", "/foo")), path).action == ROUTE) is hit


@pytest.mark.parametrize("path,hit", [
    (b"/foo", True), (b"/foo/", True), (b"/foo/bar", True), (b"/foo?x", True),
    (b"/foobar", False), (b"/fo", False),
])
def test_path_separated_prefix(path, hit):
    assert (go(one(r("path_separated_prefix", "/foo")), path).action == ROUTE) is hit


def test_case_insensitive():
    t = one(r("prefix", "/Api", "p", case_sensitive=False),
            r("path", "/Exact", "e", case_sensitive=False),
            r("path_separated_prefix", "/Sep", "s", case_sensitive=False))
    assert go(t, b"/aPI/x").cluster == "p"
    assert go(t, b"/EXACT").cluster == "e"
    assert go(t, b"/sep/x").cluster == "s"


def test_safe_regex_full_match_without_query():
    t = one(r("safe_regex", r"/user/\d+", "re"), r("prefix", "/", "fallback"))
    assert go(t, b"/user/42").cluster == "re"
    assert go(t, b"/user/42?x=1").cluster == "re"
    assert go(t, b"/user/42/x").cluster == "fallback"     # full match, not search
    assert go(t, b"/xuser/42").cluster == "fallback"


# ---------------------------------------------------------------------------------------------
# header matchers


def hm(name, kind=None, value="", present=None, invert=False, missing_empty=False, ic=False):
    matcher = m.StringMatcher(kind, value, ignore_case=ic) if kind else None
    return m.HeaderMatcher(name=name, matcher=matcher, present=present, invert=invert,
                           treat_missing_header_as_empty=missing_empty)


def hit_headers(matcher, headers, **kw):
    t = one(r("prefix", "/", headers=[matcher]))
    return go(t, headers=headers, **kw).action == ROUTE


@pytest.mark.parametrize("kind,value,header,ic,hit", [
    ("exact", "v1", b"v1", False, True),
    ("exact", "v1", b"V1", False, False),
    ("exact", "v1", b"V1", True, True),
    ("prefix", "ab", b"abc", False, True),
    ("prefix", "ab", b"xabc", False, False),
    ("prefix", "AB", b"abc", True, True),
    ("suffix", "bc", b"abc", False, True),
    ("suffix", "bc", b"abcd", False, False),
    ("suffix", "BC", b"abc", True, True),
    ("contains", "b", b"abc", False, True),
    ("contains", "x", b"abc", False, False),
    ("contains", "B", b"abc", True, True),
    ("regex", r"v\d", b"v1", False, True),
    ("regex", r"v\d", b"v12", False, False),   # full match
])
def test_header_string_match(kind, value, header, ic, hit):
    assert hit_headers(hm("x-v", kind, value, ic=ic), [(b"X-V", header)]) is hit


def test_header_names_case_insensitive():
    assert hit_headers(hm("x-version", "exact", "1"), [(b"X-VERSION", b"1")])


def test_header_present_and_absent():
    assert hit_headers(hm("x-a", present=True), [(b"x-a", b"")])
    assert not hit_headers(hm("x-a", present=True), [])
    assert hit_headers(hm("x-a", present=False), [])
    assert not hit_headers(hm("x-a", present=False), [(b"x-a", b"1")])
    # no specifier at all means present
    assert hit_headers(hm("x-a"), [(b"x-a", b"1")])
    assert not hit_headers(hm("x-a"), [])


def test_header_invert():
    assert hit_headers(hm("x-a", "exact", "1", invert=True), [(b"x-a", b"2")])
    assert not hit_headers(hm("x-a", "exact", "1", invert=True), [(b"x-a", b"1")])
    # a missing header never matches a value matcher, inverted or not
    assert not hit_headers(hm("x-a", "exact", "1", invert=True), [])
    # present + invert
    assert hit_headers(hm("x-a", present=True, invert=True), [])
    assert not hit_headers(hm("x-a", present=True, invert=True), [(b"x-a", b"1")])
    assert hit_headers(hm("x-a", present=False, invert=True), [(b"x-a", b"1")])


def test_header_treat_missing_as_empty():
    assert hit_headers(hm("x-a", "exact", "", missing_empty=True), [])
    assert hit_headers(hm("x-a", "exact", "1", invert=True, missing_empty=True), [])
    assert not hit_headers(hm("x-a", "exact", "1", missing_empty=True), [])
    assert hit_headers(hm("x-a", "regex", "^$|x", missing_empty=True), [])


def test_header_multiple_values_match_any_value():
    # Envoy 1.40 (checked against the real binary): a matcher matches when any one of the
    # repeated values does; the joined "1,2" is not what it matches against.
    hs = [(b"x-a", b"1"), (b"other", b"z"), (b"X-A", b"2")]
    assert not hit_headers(hm("x-a", "exact", "1,2"), hs)
    assert hit_headers(hm("x-a", "exact", "1"), hs)
    assert hit_headers(hm("x-a", "exact", "2"), hs)
    assert not hit_headers(hm("x-a", "exact", "3"), hs)
    assert not hit_headers(hm("x-a", "exact", "2", invert=True), hs)
    assert hit_headers(hm("x-a", "exact", "3", invert=True), hs)
    big = [(b"x-a", b"a" * 1500), (b"x-a", b"b" * 1500)]
    assert hit_headers(hm("x-a", "exact", "b" * 1500), big)


def test_all_header_matchers_must_match():
    t = one(r("prefix", "/", "both", headers=[hm("a", "exact", "1"), hm("b", "exact", "2")]),
            r("prefix", "/", "other"))
    assert go(t, headers=[(b"a", b"1"), (b"b", b"2")]).cluster == "both"
    assert go(t, headers=[(b"a", b"1")]).cluster == "other"


def test_pseudo_header_matchers():
    t = one(r("prefix", "/", "post", headers=[hm(":method", "exact", "POST")]),
            r("prefix", "/", "tls", headers=[hm(":scheme", "exact", "https")]),
            r("prefix", "/", "auth", headers=[hm(":authority", "suffix", ".org")]),
            r("prefix", "/", "path", headers=[hm(":path", "contains", "?debug")]),
            r("prefix", "/", "other"))
    assert go(t, method=b"POST").cluster == "post"
    assert go(t, is_tls=True).cluster == "tls"
    assert go(t, host=b"a.org").cluster == "auth"
    assert go(t, b"/x?debug=1").cluster == "path"
    assert go(t).cluster == "other"


# ---------------------------------------------------------------------------------------------
# query parameters


def qm(name, kind=None, value="", present=False, ic=False):
    matcher = m.StringMatcher(kind, value, ignore_case=ic) if kind else None
    return m.QueryParameterMatcher(name=name, matcher=matcher, present=present)


@pytest.mark.parametrize("matcher,path,hit", [
    (qm("debug", "exact", "1"), b"/?debug=1", True),
    (qm("debug", "exact", "1"), b"/?a=b&debug=1&c", True),
    (qm("debug", "exact", "1"), b"/?debug=2", False),
    (qm("debug", "exact", "1"), b"/?debug=2&debug=1", False),   # first value only
    (qm("debug", "exact", "1"), b"/", False),
    (qm("debug", "exact", "1"), b"/?xdebug=1", False),
    (qm("debug", "exact", ""), b"/?debug", True),               # no '=' is an empty value
    (qm("debug", "prefix", "ab"), b"/?debug=abc", True),
    (qm("debug", "suffix", "bc"), b"/?debug=abc", True),
    (qm("debug", "contains", "b"), b"/?debug=abc", True),
    (qm("debug", "exact", "ABC", ic=True), b"/?debug=abc", True),
    (qm("debug", "regex", r"\d+"), b"/?debug=123", True),
    (qm("debug", "regex", r"\d+"), b"/?debug=12a", False),
    (qm("debug", "exact", "a%20b"), b"/?debug=a%20b", True),    # no percent-decoding
    (qm("debug", present=True), b"/?debug", True),
    (qm("debug", present=True), b"/?debug=", True),
    (qm("debug", present=True), b"/?other=1", False),
    (qm("debug", "exact", "1"), b"/#?debug=1", False),          # a fragment is not a query
])
def test_query_parameters(matcher, path, hit):
    assert (go(one(r("prefix", "/", query=[matcher])), path).action == ROUTE) is hit


# ---------------------------------------------------------------------------------------------
# route actions


def test_route_fields():
    t = one(r("prefix", "/", "svc", name="main", timeout_ms=2500, host_rewrite_literal="up.local"))
    d = go(t)
    assert d.action == ROUTE and d.cluster == "svc" and d.route_name == "main"
    assert d.timeout_ms == 2500 and d.host == b"up.local" and d.path is None
    assert d.virtual_host == "v" and d.auto_host_rewrite is False


def test_auto_host_rewrite_flag():
    d = go(one(r("prefix", "/", auto_host_rewrite=True)))
    assert d.auto_host_rewrite is True and d.host is None


def test_cluster_header():
    t = one(r("prefix", "/", None, cluster_header="x-cluster"))
    assert go(t, headers=[(b"X-Cluster", b"blue")]).cluster == "blue"
    # only the first value is used
    assert go(t, headers=[(b"x-cluster", b"a"), (b"x-cluster", b"b")]).cluster == "a"
    d = go(t)
    assert d.action == NO_CLUSTER and d.cluster is None
    assert go(t, headers=[(b"x-cluster", b"")]).action == NO_CLUSTER


def weighted_table():
    wcs = [
        m.WeightedCluster("a", 10, headers=m.HeaderMutations(
            request_add=[m.HeaderValueOption("x-wc", "a")]), host_rewrite_literal="a.host"),
        m.WeightedCluster("zero", 0),
        m.WeightedCluster("b", 30),
        m.WeightedCluster("c", 60),
    ]
    route = m.Route(match=m.RouteMatch("prefix", "/"), name="w",
                    route=m.RouteAction(weighted_clusters=wcs),
                    headers=m.HeaderMutations(request_add=[m.HeaderValueOption("x-route", "1")]))
    return one(route)


@pytest.mark.parametrize("random,cluster", [
    (0, "a"), (9, "a"), (10, "b"), (39, "b"), (40, "c"), (99, "c"), (100, "a"), (135, "b"),
    (2**64 - 1, "b"),   # (2**64-1) % 100 == 15
])
def test_weighted_clusters(random, cluster):
    assert go(weighted_table(), random=random).cluster == cluster


def test_weighted_cluster_headers_and_host():
    t = weighted_table()
    d = go(t, random=0)
    assert d.host == b"a.host"
    assert [ops.add for ops in d.request_ops] == [
        ((b"x-wc", b"a", 0, False),), ((b"x-route", b"1", 0, False),)]
    d = go(t, random=50)
    assert d.host is None
    assert [ops.add for ops in d.request_ops] == [((b"x-route", b"1", 0, False),)]


def test_route_host_rewrite_wins_over_weighted():
    wcs = [m.WeightedCluster("a", 1, host_rewrite_literal="wc.host")]
    t = one(m.Route(match=m.RouteMatch("prefix", "/"),
                    route=m.RouteAction(weighted_clusters=wcs, host_rewrite_literal="route.host")))
    assert go(t).host == b"route.host"


def test_weighted_total_zero_rejected():
    with pytest.raises(ValueError):
        one(m.Route(match=m.RouteMatch("prefix", "/"),
                    route=m.RouteAction(weighted_clusters=[m.WeightedCluster("a", 0)])))


@pytest.mark.parametrize("kind,value,path,rewrite,expected", [
    ("prefix", "/api", b"/api/v1/x?q=1", "/", b"//v1/x?q=1"),
    ("prefix", "/api/", b"/api/v1/x?q=1", "/", b"/v1/x?q=1"),
    ("prefix", "/api", b"/api", "/svc", b"/svc"),
    ("path", "/old", b"/old?a=b", "/new", b"/new?a=b"),
    ("path_separated_prefix", "/api", b"/api/x", "/v2", b"/v2/x"),
    ("safe_regex", "/a/.*", b"/a/b/c?z", "/whole", b"/whole?z"),   # regex: whole path replaced
])
def test_prefix_rewrite(kind, value, path, rewrite, expected):
    assert go(one(r(kind, value, prefix_rewrite=rewrite)), path).path == expected


def test_prefix_rewrite_case_insensitive_replaces_matched_length():
    t = one(r("prefix", "/API", prefix_rewrite="/v1", case_sensitive=False))
    assert go(t, b"/api/users").path == b"/v1/users"


def test_regex_rewrite():
    rw = m.RegexRewrite(pattern=r"^/service/([^/]+)(/.*)$", substitution=r"\2/instance/\1")
    t = one(r("prefix", "/service", regex_rewrite=rw))
    assert go(t, b"/service/foo/v1/api?x=1").path == b"/v1/api/instance/foo?x=1"
    rw_all = m.RegexRewrite(pattern="o", substitution="0")
    assert go(one(r("prefix", "/", regex_rewrite=rw_all)), b"/foo/boo?o=o").path == \
        b"/f00/b00?o=o"
    whole = m.RegexRewrite(pattern="^/x(.*)", substitution=r"[\0]\\")
    assert go(one(r("prefix", "/", regex_rewrite=whole)), b"/xy").path == b"[/xy]\\"


def test_translate_substitution_errors():
    with pytest.raises(ValueError):
        router.translate_substitution("\\q")
    with pytest.raises(ValueError):
        router.translate_substitution("abc\\")


# ---------------------------------------------------------------------------------------------
# redirects


def redir(**kw):
    match = kw.pop("match", m.RouteMatch("prefix", "/"))
    return one(m.Route(match=match, name="redir", redirect=m.RedirectAction(**kw)))


@pytest.mark.parametrize("kw,path,host,tls,location", [
    ({}, b"/a?b=c", b"example.com", False, b"http://example.com/a?b=c"),
    ({"scheme_redirect": "https"}, b"/a", b"example.com", False, b"https://example.com/a"),
    # scheme change drops the default port of the request's scheme...
    ({"scheme_redirect": "https"}, b"/a", b"example.com:80", False, b"https://example.com/a"),
    ({"scheme_redirect": "http"}, b"/a", b"example.com:443", True, b"http://example.com/a"),
    # ...but keeps any other port, and keeps the default port when the scheme stays
    ({"scheme_redirect": "https"}, b"/a", b"example.com:8080", False,
     b"https://example.com:8080/a"),
    ({"scheme_redirect": "https"}, b"/a", b"example.com:443", True, b"https://example.com:443/a"),
    ({"scheme_redirect": "https"}, b"/a", b"[::1]:80", False, b"https://[::1]/a"),
    ({"scheme_redirect": "https"}, b"/a", b"[::1]", False, b"https://[::1]/a"),
    # port_redirect replaces the request's port
    ({"port_redirect": 8443}, b"/a", b"example.com:8080", False, b"http://example.com:8443/a"),
    ({"port_redirect": 8443}, b"/a", b"example.com", False, b"http://example.com:8443/a"),
    ({"host_redirect": "new.com"}, b"/a?x", b"example.com:8080", False, b"http://new.com/a?x"),
    ({"host_redirect": "new.com", "port_redirect": 81}, b"/a", b"e.com", False,
     b"http://new.com:81/a"),
    ({"path_redirect": "/new"}, b"/old?x=1", b"e.com", False, b"http://e.com/new?x=1"),
    ({"path_redirect": "/new?y=2"}, b"/old?x=1", b"e.com", False, b"http://e.com/new?y=2"),
    ({"path_redirect": "/new?y=2", "strip_query": True}, b"/old?x=1", b"e.com", False,
     b"http://e.com/new?y=2"),
    ({"path_redirect": "/new", "strip_query": True}, b"/old?x=1", b"e.com", False,
     b"http://e.com/new"),
    ({"strip_query": True}, b"/old?x=1", b"e.com", False, b"http://e.com/old"),
    # the matched prefix "/" is replaced, as Envoy does
    ({"prefix_rewrite": "/v2"}, b"/v1/x?q", b"e.com", False, b"http://e.com/v2v1/x?q"),
])
def test_redirect_location(kw, path, host, tls, location):
    d = go(redir(**kw), path, host=host, is_tls=tls)
    assert d.action == REDIRECT and d.status == 301 and d.location == location


def test_redirect_prefix_rewrite_replaces_matched_prefix():
    t = redir(match=m.RouteMatch("prefix", "/v1"), prefix_rewrite="/v2", response_code=302)
    d = go(t, b"/v1/x?q=1")
    assert d.status == 302 and d.location == b"http://example.com/v2/x?q=1"


def test_redirect_regex_rewrite():
    rw = m.RegexRewrite(pattern="^/old/(.*)$", substitution=r"/new/\1")
    d = go(redir(regex_rewrite=rw, response_code=308), b"/old/a/b?k=v")
    assert d.status == 308 and d.location == b"http://example.com/new/a/b?k=v"
    d = go(redir(regex_rewrite=rw, strip_query=True), b"/old/a?k=v")
    assert d.location == b"http://example.com/new/a"


def test_https_redirect_all_fields():
    d = go(redir(scheme_redirect="https", host_redirect="secure.com", port_redirect=8443,
                 path_redirect="/login", strip_query=True, response_code=307),
           b"/x?a=1", host=b"example.com:80")
    assert d.status == 307 and d.location == b"https://secure.com:8443/login"


# ---------------------------------------------------------------------------------------------
# direct responses


def test_direct_response():
    t = one(m.Route(match=m.RouteMatch("path", "/health"), name="dr",
                    direct_response=m.DirectResponse(200, b"ok")),
            m.Route(match=m.RouteMatch("path", "/empty"),
                    direct_response=m.DirectResponse(503)),
            m.Route(match=m.RouteMatch("path", "/moved"),
                    direct_response=m.DirectResponse(301, b"gone")))
    d = go(t, b"/health")
    assert (d.action, d.status, d.body, d.location, d.route_name) == (DIRECT, 200, b"ok", None,
                                                                       "dr")
    d = go(t, b"/empty")
    assert (d.action, d.status, d.body) == (DIRECT, 503, None)
    # Envoy adds Location (the request's URL) to 3xx / 201 direct responses
    d = go(t, b"/moved", is_tls=True)
    assert (d.status, d.location) == (301, b"https://example.com/moved")


# ---------------------------------------------------------------------------------------------
# header mutations


def mut(tag):
    return m.HeaderMutations(
        request_add=[m.HeaderValueOption("X-Level", tag),
                     m.HeaderValueOption("x-set", tag, m.OVERWRITE_IF_EXISTS_OR_ADD)],
        request_remove=[f"X-Rm-{tag}"],
        response_add=[m.HeaderValueOption("x-resp", tag, m.ADD_IF_ABSENT)],
        response_remove=[f"x-resp-rm-{tag}"],
    )


def mutation_table(most_specific=False, weighted=False):
    if weighted:
        action = m.RouteAction(weighted_clusters=[m.WeightedCluster("w", 1, headers=mut("wc"))])
    else:
        action = m.RouteAction(cluster="c")
    route = m.Route(match=m.RouteMatch("prefix", "/"), route=action, headers=mut("route"))
    cfg = m.RouteConfiguration(virtual_hosts=[vh("v", ["*"], [route], headers=mut("vhost"))],
                               headers=mut("config"))
    if most_specific:
        cfg.most_specific_header_mutations_wins = True
    return RouteTable(cfg)


def levels(ops_tuple):
    return [ops.add[0][1].decode() for ops in ops_tuple]


def test_header_ops_default_order_least_specific_applied_last():
    d = go(mutation_table())
    assert levels(d.request_ops) == ["route", "vhost", "config"]
    assert levels(d.response_ops) == ["route", "vhost", "config"]
    ops = d.request_ops[0]
    assert ops.remove == (b"x-rm-route",)
    assert ops.add == ((b"x-level", b"route", m.APPEND_IF_EXISTS_OR_ADD, False),
                       (b"x-set", b"route", m.OVERWRITE_IF_EXISTS_OR_ADD, False))
    assert d.response_ops[0].add == ((b"x-resp", b"route", m.ADD_IF_ABSENT, False),)
    assert d.response_ops[0].remove == (b"x-resp-rm-route",)


def test_header_ops_most_specific_wins_order():
    d = go(mutation_table(most_specific=True))
    assert levels(d.request_ops) == ["config", "vhost", "route"]
    assert levels(d.response_ops) == ["config", "vhost", "route"]


def test_header_ops_weighted_cluster_first():
    d = go(mutation_table(weighted=True))
    assert levels(d.request_ops) == ["wc", "route", "vhost", "config"]
    assert levels(d.response_ops) == ["wc", "route", "vhost", "config"]
    d = go(mutation_table(most_specific=True, weighted=True))
    assert levels(d.request_ops) == ["wc", "config", "vhost", "route"]


def test_header_ops_prebuilt_and_shared():
    t = mutation_table()
    a, b = go(t), go(t, b"/other")
    assert a.request_ops is b.request_ops


def test_header_ops_empty_values_dropped_unless_keep_empty():
    muts = m.HeaderMutations(request_add=[m.HeaderValueOption("x-empty", ""),
                                          m.HeaderValueOption("x-keep", "", keep_empty_value=True)])
    t = one(m.Route(match=m.RouteMatch("prefix", "/"), route=m.RouteAction(cluster="c"),
                    headers=muts))
    (ops,) = go(t).request_ops
    assert ops.add == ((b"x-keep", b"", 0, True),)


def test_response_ops_on_redirect_and_direct_response():
    t = one(m.Route(match=m.RouteMatch("path", "/r"), redirect=m.RedirectAction(),
                    headers=mut("route")),
            m.Route(match=m.RouteMatch("path", "/d"), direct_response=m.DirectResponse(200),
                    headers=mut("route")))
    assert levels(go(t, b"/r").response_ops) == ["route"]
    assert levels(go(t, b"/d").response_ops) == ["route"]


# ---------------------------------------------------------------------------------------------
# decision reuse


def test_decision_is_reset_between_requests():
    t = one(r("path", "/a", "a", prefix_rewrite="/z", host_rewrite_literal="h"),
            m.Route(match=m.RouteMatch("path", "/b"), redirect=m.RedirectAction(path_redirect="/c")))
    d = router.RouteDecision()
    assert t.route_request(b"GET", b"/a", [(b"host", b"x")], decision=d) is d
    assert (d.cluster, d.path, d.host) == ("a", b"/z", b"h")
    t.route_request(b"GET", b"/b", [(b"host", b"x")], decision=d)
    assert (d.action, d.cluster, d.path, d.host) == (REDIRECT, None, None, None)
    t.route_request(b"GET", b"/nothing", [(b"host", b"x")], decision=d)
    assert (d.action, d.location, d.route_name, d.request_ops) == (NONE, None, None, ())


def test_empty_configuration():
    t = RouteTable(m.RouteConfiguration())
    assert go(t).action == NONE
