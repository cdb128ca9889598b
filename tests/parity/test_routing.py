"""Parity of routing: virtual-host selection, route matching, route actions (rewrites, redirects,
direct responses) and header manipulation. One Envoy and one fastproxy serve the same route
table for the whole module; every test sends the same bytes to both and compares the answers
and what the origin received."""
from __future__ import annotations

import pytest

from helpers import free_port, make_bootstrap
from parity_common import ParityPair, add_listener, assert_same, req

pytestmark = pytest.mark.parity


def direct(body, status=200):
    out = {"status": status}
    if body is not None:
        out["body"] = {"inline_string": body}
    return out


def whoami(name):
    return {"match": {"path": "/whoami"}, "direct_response": direct(name)}


def hvo(key, value, action=None, **extra):
    out = {"header": {"key": key, "value": value}, **extra}
    if action:
        out["append_action"] = action
    return out


def virtual_hosts():
    star_routes = [
        whoami("vh-star"),
        {"match": {"path": "/exact"}, "direct_response": direct("path-exact")},
        {"match": {"prefix": "/prefix-test/"}, "direct_response": direct("prefix")},
        {"match": {"safe_regex": {"regex": "/re/[0-9]+"}}, "direct_response": direct("regex")},
        {"match": {"path_separated_prefix": "/sep"}, "direct_response": direct("sep")},
        {"match": {"prefix": "/CaseIns", "case_sensitive": False}, "direct_response": direct("case-insensitive")},
        {"match": {"path": "/CasePath", "case_sensitive": False}, "direct_response": direct("case-insensitive-path")},
        {"match": {"prefix": "/hdr", "headers": [{"name": "x-exact", "string_match": {"exact": "yes"}}]},
         "direct_response": direct("hdr-exact")},
        {"match": {"prefix": "/hdr", "headers": [{"name": "x-pre", "prefix_match": "ab"}]},
         "direct_response": direct("hdr-prefix")},
        {"match": {"prefix": "/hdr", "headers": [{"name": "x-present", "present_match": True}]},
         "direct_response": direct("hdr-present")},
        {"match": {"prefix": "/hdr", "headers": [{"name": "x-sm", "string_match": {"suffix": "xyz", "ignore_case": True}}]},
         "direct_response": direct("hdr-sm-suffix")},
        {"match": {"prefix": "/hdr", "headers": [{"name": "x-rx", "string_match": {"safe_regex": {"regex": "^a+b$"}}}]},
         "direct_response": direct("hdr-regex")},
        {"match": {"prefix": "/hdr", "headers": [{"name": "x-multi", "string_match": {"exact": "a,b"}}]},
         "direct_response": direct("hdr-multi")},
        {"match": {"prefix": "/hdr", "headers": [{"name": "x-inv", "string_match": {"exact": "no"},
                                                   "invert_match": True}]},
         "direct_response": direct("hdr-invert")},
        {"match": {"prefix": "/hdr"}, "direct_response": direct("hdr-none")},
        {"match": {"prefix": "/q", "query_parameters": [{"name": "a", "string_match": {"exact": "1"}}]},
         "direct_response": direct("q-exact")},
        {"match": {"prefix": "/q", "query_parameters": [{"name": "b", "present_match": True}]},
         "direct_response": direct("q-present")},
        {"match": {"prefix": "/q", "query_parameters": [{"name": "c", "string_match": {"prefix": "x", "ignore_case": True}}]},
         "direct_response": direct("q-prefix")},
        {"match": {"prefix": "/q"}, "direct_response": direct("q-none")},
        {"match": {"prefix": "/weighted"},
         "route": {"weighted_clusters": {"clusters": [{"name": "main", "weight": 50}, {"name": "alt", "weight": 50}]}}},
        {"match": {"prefix": "/by-header"}, "route": {"cluster_header": "x-cluster"}},
        {"match": {"prefix": "/rewrite/"}, "route": {"cluster": "main", "prefix_rewrite": "/new/"}},
        {"match": {"prefix": "/rewrite-root"}, "route": {"cluster": "main", "prefix_rewrite": "/"}},
        {"match": {"prefix": "/rx/"},
         "route": {"cluster": "main", "regex_rewrite": {"pattern": {"regex": "^/rx/([^/]+)/(.*)$"},
                                                        "substitution": "/\\2/\\1"}}},
        {"match": {"prefix": "/hostrw"}, "route": {"cluster": "main", "host_rewrite_literal": "rewritten.example"}},
        {"match": {"prefix": "/up"}, "route": {"cluster": "main"}},
        {"match": {"prefix": "/alt"}, "route": {"cluster": "alt"}},
    ]
    redirect_routes = [
        {"match": {"prefix": "/r/host"}, "redirect": {"host_redirect": "new.example"}},
        {"match": {"prefix": "/r/path"}, "redirect": {"path_redirect": "/newpath"}},
        {"match": {"prefix": "/r/prefix/"}, "redirect": {"prefix_rewrite": "/p2/"}},
        {"match": {"prefix": "/r/https"}, "redirect": {"https_redirect": True}},
        {"match": {"prefix": "/r/port"}, "redirect": {"port_redirect": 8443}},
        {"match": {"prefix": "/r/strip"}, "redirect": {"path_redirect": "/stripped", "strip_query": True}},
        {"match": {"prefix": "/r/code308"}, "redirect": {"host_redirect": "x.example", "response_code": "PERMANENT_REDIRECT"}},
        {"match": {"prefix": "/r/found"}, "redirect": {"path_redirect": "/f", "response_code": "FOUND"}},
        {"match": {"prefix": "/r/see-other"}, "redirect": {"path_redirect": "/s", "response_code": "SEE_OTHER"}},
        {"match": {"prefix": "/r/temp"}, "redirect": {"path_redirect": "/t", "response_code": "TEMPORARY_REDIRECT"}},
        {"match": {"prefix": "/r/all"},
         "redirect": {"https_redirect": True, "host_redirect": "all.example", "port_redirect": 444,
                      "path_redirect": "/everything"}},
        {"match": {"prefix": "/r/regex/"},
         "redirect": {"regex_rewrite": {"pattern": {"regex": "^/r/regex/(.*)$"}, "substitution": "/re/\\1"}}},
        {"match": {"prefix": "/r/scheme"}, "redirect": {"scheme_redirect": "ftp"}},
    ]
    direct_routes = [
        {"match": {"prefix": "/d/body"}, "direct_response": direct("hello direct\n")},
        {"match": {"prefix": "/d/nobody"}, "direct_response": direct(None, 200)},
        {"match": {"prefix": "/d/403"}, "direct_response": direct(None, 403)},
        {"match": {"prefix": "/d/418"}, "direct_response": direct("teapot", 418)},
        {"match": {"prefix": "/d/204"}, "direct_response": direct(None, 204)},
        {"match": {"prefix": "/d/201"}, "direct_response": direct("made", 201)},
        {"match": {"prefix": "/d/302"}, "direct_response": direct(None, 302)},
        {"match": {"prefix": "/d/empty"}, "direct_response": direct("", 200)},
        {"match": {"prefix": "/d/500"}, "direct_response": direct("oops", 500)},
    ]
    hdr_routes = [
        {"match": {"prefix": "/h/append"}, "route": {"cluster": "main"},
         "request_headers_to_add": [
             hvo("x-app", "r", "APPEND_IF_EXISTS_OR_ADD"),
             hvo("x-absent", "r", "ADD_IF_ABSENT"),
             hvo("x-over", "r", "OVERWRITE_IF_EXISTS_OR_ADD"),
             hvo("x-oie", "r", "OVERWRITE_IF_EXISTS"),
             hvo("x-shared", "route"),
             hvo("x-legacy-append", "r", append=True),
             hvo("x-legacy-noappend", "r", append=False),
             hvo("x-empty", "", keep_empty_value=True),
             hvo("x-empty-dropped", ""),
         ],
         "request_headers_to_remove": ["x-del", "x-del-absent"],
         "response_headers_to_add": [
             hvo("x-rapp", "r", "APPEND_IF_EXISTS_OR_ADD"),
             hvo("x-rabsent", "r", "ADD_IF_ABSENT"),
             hvo("x-rover", "r", "OVERWRITE_IF_EXISTS_OR_ADD"),
             hvo("x-roie", "r", "OVERWRITE_IF_EXISTS"),
             hvo("x-shared-resp", "route"),
         ],
         "response_headers_to_remove": ["x-resp-del"]},
        {"match": {"prefix": "/h/direct"}, "direct_response": direct("d"),
         "response_headers_to_add": [hvo("x-route-direct", "yes")]},
        {"match": {"prefix": "/h/redirect"}, "redirect": {"path_redirect": "/elsewhere"},
         "response_headers_to_add": [hvo("x-route-redirect", "yes")]},
        {"match": {"prefix": "/h/plain"}, "route": {"cluster": "main"}},
    ]
    return [
        {"name": "exact", "domains": ["exact.example.com"], "routes": [whoami("vh-exact")]},
        {"name": "suffix", "domains": ["*.suffix.com"], "routes": [whoami("vh-suffix")]},
        {"name": "suffix-long", "domains": ["*.b.suffix.com"], "routes": [whoami("vh-suffix-long")]},
        {"name": "prefixwild", "domains": ["prefix.*"], "routes": [whoami("vh-prefix")]},
        {"name": "withport", "domains": ["port.example.com:8080"], "routes": [whoami("vh-port")]},
        {"name": "multi", "domains": ["m1.test", "m2.test:81"], "routes": [whoami("vh-multi")]},
        {"name": "redirect", "domains": ["redirect.test"], "routes": redirect_routes},
        {"name": "direct", "domains": ["direct.test"], "routes": direct_routes},
        {"name": "hdr", "domains": ["hdr.test"], "routes": hdr_routes,
         "request_headers_to_add": [
             hvo("x-vh-req", "vh", "ADD_IF_ABSENT"),
             hvo("x-shared", "vh", "OVERWRITE_IF_EXISTS_OR_ADD"),
         ],
         "request_headers_to_remove": ["x-remove-me-vh"],
         "response_headers_to_add": [hvo("x-vh-resp", "vh"), hvo("x-shared-resp", "vh", "APPEND_IF_EXISTS_OR_ADD")],
         "response_headers_to_remove": ["x-resp-remove-vh"]},
        {"name": "noroute", "domains": ["noroute.test"], "routes": [{"match": {"prefix": "/only"}, "route": {"cluster": "main"}}]},
        {"name": "star", "domains": ["*"], "routes": star_routes},
    ]


def config(listen, admin, side):
    bs = make_bootstrap(
        listen, admin,
        {"main": [side.origins["o1"].address], "alt": [side.origins["o2"].address]},
        virtual_hosts(),
    )
    # A second listener whose route configuration also adds/removes headers at its own level.
    hdr_vhosts = [dict(vh) for vh in virtual_hosts() if vh["name"] in ("hdr", "star")]
    rc = {
        "name": "rc_headers",
        "virtual_hosts": hdr_vhosts,
        "request_headers_to_add": [hvo("x-rc-req", "rc"), hvo("x-shared", "rc", "APPEND_IF_EXISTS_OR_ADD")],
        "request_headers_to_remove": ["x-remove-me-rc"],
        "response_headers_to_add": [hvo("x-rc-resp", "rc")],
        "response_headers_to_remove": ["x-resp-remove-rc"],
    }
    add_listener(bs, "listener_rc", free_port(), rc, "rc_http")
    return bs


@pytest.fixture(scope="module")
def pair():
    with ParityPair(config, origin_names=("o1", "o2")) as p:
        yield p


# ------------------------------------------------------------------------------ virtual hosts

@pytest.mark.parametrize("host", [
    "exact.example.com", "EXACT.Example.COM", "exact.example.com:80", "exact.example.com:9999",
    "exact.example.com.", "a.suffix.com", "A.SUFFIX.COM", "x.y.suffix.com", "suffix.com", ".suffix.com",
    "c.b.suffix.com", "b.suffix.com", "a.suffix.com:443", "prefix.anything", "prefix.", "PREFIX.x",
    "prefix.x:8080", "port.example.com:8080", "port.example.com", "port.example.com:8081",
    "m1.test", "m2.test", "m2.test:81", "m1.test:81", "unknown.test", "127.0.0.1", "127.0.0.1:10000",
    "[::1]:8080", "",
])
def test_virtual_host_selection(pair, host):
    assert_same(pair, req("GET", "/whoami", host=host))


def test_virtual_host_absolute_form_authority(pair):
    assert_same(pair, req("GET", "http://exact.example.com/whoami", host="other.test"))


# ------------------------------------------------------------------------------ path matching

@pytest.mark.parametrize("path", [
    "/exact", "/exact/", "/exact?x=1", "/Exact", "/exactly",
    "/prefix-test/", "/prefix-test/a/b", "/prefix-test", "/PREFIX-TEST/",
    "/re/123", "/re/12a", "/re/", "/re/1?x=y", "/x/re/1",
    "/sep", "/sep/", "/sep/x", "/sepx", "/sep?q", "/sep#frag", "/SEP",
    "/CaseIns", "/caseins/more", "/CASEINSx", "/CasePath", "/casepath", "/casepath/",
    "/nothing-here", "/", "/%65xact",
])
def test_path_matching(pair, path):
    assert_same(pair, req("GET", path))


@pytest.mark.parametrize("headers", [
    [("x-exact", "yes")], [("x-exact", "Yes")], [("X-Exact", "yes")], [("x-exact", "yes ")],
    [("x-pre", "abc")], [("x-pre", "xab")], [("x-pre", "ab")],
    [("x-present", "")], [("x-present", "anything")],
    [("x-sm", "fooXYZ")], [("x-sm", "xyzfoo")],
    [("x-rx", "aaab")], [("x-rx", "ab ")], [("x-rx", "b")],
    [("x-multi", "a"), ("x-multi", "b")], [("x-multi", "a,b")],
    [("x-inv", "no")], [("x-inv", "yes")], [],
    [("x-exact", "no"), ("x-pre", "abz")],
])
def test_header_matchers(pair, headers):
    # /hdr-* routes only: with no inverted header present the invert route decides
    assert_same(pair, req("GET", "/hdr", headers=[("x-inv", "no")] if headers == [] else headers))


def test_header_matcher_invert_missing_header(pair):
    assert_same(pair, req("GET", "/hdr"))


@pytest.mark.parametrize("query", [
    "?a=1", "?a=2", "?a=1&a=2", "?a=2&a=1", "?b", "?b=", "?b=zz", "?c=Xyz", "?c=xyz", "?c=yx",
    "?A=1", "?a=%31", "", "?", "?z=1&a=1", "?a", "?a=1#f",
])
def test_query_parameters(pair, query):
    assert_same(pair, req("GET", "/q" + query))


# ------------------------------------------------------------------------------ route actions

def test_weighted_clusters_route_to_one_of_them(pair):
    e, f = pair.exchange(req("GET", "/weighted", headers=[("x-origin-body", "w")]))
    for res in (e, f):
        assert res.status == 200, res.raw
        assert len(res.received) == 1 and res.received[0].origin in ("o1", "o2"), res.received
    # the forwarded request is the same apart from which origin got it
    assert [r.view()[1:] for r in f.received] == [r.view()[1:] for r in e.received]
    assert f.response.view() == e.response.view()


@pytest.mark.parametrize("headers", [
    [("x-cluster", "main")], [("x-cluster", "alt")], [("x-cluster", "nonexistent")], [],
    [("x-cluster", "Main")], [("x-cluster", "")],
])
def test_cluster_header(pair, headers):
    assert_same(pair, req("GET", "/by-header", headers=[("x-origin-body", "ch")] + headers))


@pytest.mark.parametrize("path", [
    "/rewrite/a/b?x=1", "/rewrite/", "/rewrite-root", "/rewrite-root/x", "/rewrite-rootfoo?q=1",
    "/rx/one/two/three", "/rx/one/", "/rx/nomatch", "/rx/a/b?q=1",
])
def test_path_rewrites(pair, path):
    assert_same(pair, req("GET", path, headers=[("x-origin-body", "rw")]))


@pytest.mark.parametrize("host", ["example.com", "example.com:8080", None])
def test_host_rewrite_literal(pair, host):
    assert_same(pair, req("GET", "/hostrw", host=host or "orig.test", headers=[("x-origin-body", "h")]))


def test_plain_forward_with_echo(pair):
    # the origin's JSON echo shows exactly what arrived (normalised per connection)
    assert_same(pair, req("GET", "/up/echo?x=1", headers=[("User-Agent", "parity"), ("Accept", "*/*")]))


def test_forward_to_alt_cluster(pair):
    assert_same(pair, req("GET", "/alt/thing", headers=[("x-origin-body", "alt")]))


def test_forward_keeps_header_case_and_order(pair):
    assert_same(pair, req("GET", "/up/case", headers=[
        ("X-CamelCase", "Value"), ("x-dup", "1"), ("X-Dup", "2"), ("Accept-Encoding", "gzip"),
        ("x-origin-body", "c")]))


def test_forward_strips_hop_by_hop_headers(pair):
    assert_same(pair, req("GET", "/up/hop", headers=[
        ("Connection", "keep-alive, x-hop"), ("x-hop", "1"), ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"), ("TE", "trailers"), ("Upgrade-Insecure-Requests", "1"),
        ("x-origin-body", "hop")]))


def test_forward_with_x_forwarded_headers(pair):
    assert_same(pair, req("GET", "/up/xff", headers=[
        ("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https"), ("X-Request-Id", "abc"),
        ("X-Envoy-Internal", "true"), ("x-origin-body", "xff")]))


def test_response_headers_from_origin_kept(pair):
    assert_same(pair, req("GET", "/up/resp", headers=[
        ("x-origin-body", "r"), ("x-origin-header", "X-Upstream-Thing: 1"),
        ("x-origin-header", "Server: origin-server"), ("x-origin-header", "Set-Cookie: a=1"),
        ("x-origin-header", "Set-Cookie: b=2"), ("x-origin-header", "Connection: keep-alive, x-h"),
        ("x-origin-header", "x-h: hop"), ("x-origin-header", "Keep-Alive: timeout=3")]))


@pytest.mark.parametrize("status", [201, 204, 304, 404, 500, 503])
def test_origin_status_passthrough(pair, status):
    assert_same(pair, req("GET", "/up/status", headers=[("x-origin-status", str(status)),
                                                      ("x-origin-body", "s")]))


# ------------------------------------------------------------------------------ redirects

@pytest.mark.parametrize("path", [
    "/r/host", "/r/host/x?q=1", "/r/path", "/r/path?keep=1", "/r/prefix/rest?x=y", "/r/https",
    "/r/https/p?q", "/r/port", "/r/strip?a=1&b=2", "/r/code308", "/r/found", "/r/see-other",
    "/r/temp", "/r/all?z=1", "/r/regex/abc/def", "/r/scheme",
])
@pytest.mark.parametrize("host", ["redirect.test", "redirect.test:8080"])
def test_redirect(pair, path, host):
    assert_same(pair, req("GET", path, host=host))


def test_redirect_head(pair):
    assert_same(pair, req("HEAD", "/r/host", host="redirect.test"))


def test_redirect_post_with_body(pair):
    assert_same(pair, req("POST", "/r/path", host="redirect.test", headers=[("Content-Length", "3")], body=b"abc"))


# ------------------------------------------------------------------------------ direct responses

@pytest.mark.parametrize("path", ["/d/body", "/d/nobody", "/d/403", "/d/418", "/d/204", "/d/empty", "/d/500",
                                  "/d/201?q=1", "/d/302"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_direct_response(pair, path, method):
    headers = [("Content-Length", "2")] if method == "POST" else []
    body = b"hi" if method == "POST" else b""
    assert_same(pair, req(method, path, host="direct.test", headers=headers, body=body))


# ------------------------------------------------------------------------------ header manipulation

@pytest.mark.parametrize("listener", [0, 1], ids=["vh+route", "rc+vh+route"])
def test_headers_add_remove_all_levels(pair, listener):
    assert_same(pair, listener=listener, data=req("GET", "/h/append", host="hdr.test", headers=[
        ("x-origin-body", "hm"),
        ("x-app", "client"), ("x-absent", "client"), ("x-over", "client"), ("x-oie", "client"),
        ("x-shared", "client"), ("x-legacy-append", "client"), ("x-legacy-noappend", "client"),
        ("x-del", "1"), ("X-Del", "2"), ("x-remove-me-vh", "1"), ("x-remove-me-rc", "1"),
        ("x-vh-req", "client"), ("x-rc-req", "client"),
        ("x-origin-header", "x-rapp: o"), ("x-origin-header", "x-rabsent: o"),
        ("x-origin-header", "x-rover: o"), ("x-origin-header", "x-roie: o"),
        ("x-origin-header", "x-resp-del: o"), ("x-origin-header", "x-resp-remove-vh: o"),
        ("x-origin-header", "x-resp-remove-rc: o"), ("x-origin-header", "x-shared-resp: o"),
        ("x-origin-header", "x-rc-resp: o"), ("x-origin-header", "x-vh-resp: o"),
    ]))


@pytest.mark.parametrize("listener", [0, 1], ids=["vh+route", "rc+vh+route"])
def test_headers_add_when_client_sends_none(pair, listener):
    assert_same(pair, listener=listener, data=req("GET", "/h/append", host="hdr.test", headers=[("x-origin-body", "hm2")]))


@pytest.mark.parametrize("listener", [0, 1], ids=["vh+route", "rc+vh+route"])
def test_headers_on_direct_response(pair, listener):
    assert_same(pair, listener=listener, data=req("GET", "/h/direct", host="hdr.test"))


@pytest.mark.parametrize("listener", [0, 1], ids=["vh+route", "rc+vh+route"])
def test_headers_on_redirect(pair, listener):
    assert_same(pair, listener=listener, data=req("GET", "/h/redirect", host="hdr.test"))


@pytest.mark.parametrize("listener", [0, 1], ids=["vh+route", "rc+vh+route"])
def test_headers_vhost_and_route_config_only(pair, listener):
    assert_same(pair, listener=listener, data=req("GET", "/h/plain", host="hdr.test", headers=[
        ("x-origin-body", "p"), ("x-shared", "client"), ("x-vh-req", "client")]))


@pytest.mark.parametrize("listener", [0, 1], ids=["vh+route", "rc+vh+route"])
def test_route_config_headers_on_other_vhost(pair, listener):
    assert_same(pair, listener=listener, data=req("GET", "/up/rc", headers=[("x-origin-body", "rc"), ("x-shared", "c"),
                                                   ("x-remove-me-rc", "1")]))


# ------------------------------------------------------------------------------ no route

@pytest.mark.parametrize("method,host,path", [
    ("GET", "noroute.test", "/other"), ("GET", "noroute.test", "/"), ("HEAD", "noroute.test", "/x"),
    ("POST", "noroute.test", "/x"), ("GET", "example.com", "/no/such/route"),
])
def test_no_route_404(pair, method, host, path):
    assert_same(pair, req(method, path, host=host))
