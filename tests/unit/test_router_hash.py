"""Route hash policies in fastproxy._core.router (evaluated in csrc/fp_hash_policy.c): the hash
each policy gives, how policies combine, terminal policies, and generated cookies, with the
values Envoy computes (xxHash64, seed 0)."""
import pytest

from fastproxy.config import model as m

router = pytest.importorskip("fastproxy._core.router")
from fastproxy._core.lb import xxhash64  # noqa: E402

MASK = (1 << 64) - 1


def table(*policies):
    route = m.Route(match=m.RouteMatch("prefix", "/"), name="r",
                    route=m.RouteAction(cluster="c", hash_policy=list(policies)))
    vh = m.VirtualHost(name="v", domains=["*"], routes=[route])
    return router.RouteTable(m.RouteConfiguration(name="rc", virtual_hosts=[vh]))


def go(t, path=b"/", headers=(), method=b"GET", decision=None):
    return t.route_request(method, path, [(b"host", b"example.com"), *headers],
                           decision=decision)


def x(s):
    return xxhash64(s.encode() if isinstance(s, str) else s)


def chain(*values):
    h = 0
    for v in values:
        h = xxhash64(v, h)
    return h


def rotl(h):
    return ((h << 1) | (h >> 63)) & MASK


def header(name, terminal=False):
    return m.HashPolicy("header", name, terminal)


def test_no_policy_no_hash():
    d = go(table())
    assert not d.has_hash and d.set_cookie is None


def test_header():
    t = table(header("x-key"))
    d = go(t, headers=[(b"X-Key", b"abc")])
    assert d.has_hash and d.hash_value == x("abc")
    assert not go(t, headers=[(b"x-other", b"abc")]).has_hash


def test_repeated_header_values_sorted_and_chained():
    t = table(header("x-key"))
    d1 = go(t, headers=[(b"x-key", b"b"), (b"x-key", b"a")])
    d2 = go(t, headers=[(b"x-key", b"a"), (b"x-key", b"b")])
    assert d1.hash_value == d2.hash_value == chain(b"a", b"b")


def test_pseudo_headers():
    assert go(table(header(":path")), path=b"/p?q").hash_value == x("/p?q")
    assert go(table(header(":method")), method=b"PUT").hash_value == x("PUT")
    assert go(table(header(":authority"))).hash_value == x("example.com")


@pytest.mark.parametrize("cookies,value", [
    ([b"sess=abc"], "abc"),
    ([b"a=1; sess=abc; b=2"], "abc"),
    ([b"a=1;sess=abc"], "abc"),
    ([b'sess="quoted"'], "quoted"),
    ([b"a=1", b"sess=second-header"], "second-header"),
    ([b"sess=first; sess=second"], "first"),
    ([b"xsess=no; sess=yes"], "yes"),
])
def test_cookie(cookies, value):
    t = table(m.HashPolicy("cookie", "sess"))
    d = go(t, headers=[(b"cookie", c) for c in cookies])
    assert d.has_hash and d.hash_value == x(value)
    assert d.set_cookie is None


@pytest.mark.parametrize("cookies", [[], [b"other=1"], [b"sess="], [b"sess"]])
def test_cookie_absent_without_ttl(cookies):
    d = go(table(m.HashPolicy("cookie", "sess")), headers=[(b"cookie", c) for c in cookies])
    assert not d.has_hash and d.set_cookie is None


def test_generated_cookie():
    hp = m.HashPolicy("cookie", "sess", ttl_s=60, path="/p",
                      attributes=(("SameSite", "Lax"), ("Secure", "")))
    t = table(hp)
    d = router.RouteDecision()
    d.source_ip = b"127.0.0.1"
    d.remote_address = b"127.0.0.1:59132"
    d.local_address = b"127.0.0.1:38391"
    go(t, decision=d)
    value = "%016x" % x("127.0.0.1:59132127.0.0.1:38391")
    assert value == "d6fab4b84082862c"   # what Envoy sent for these addresses
    assert d.set_cookie == (f'sess="{value}"; Max-Age=60; Path=/p; SameSite=Lax; Secure; '
                            'HttpOnly').encode()
    assert d.has_hash and d.hash_value == x(value)
    # the addresses survive reset(): the connection sets them once
    go(t, headers=[(b"cookie", b"sess=zz")], decision=d)
    assert d.set_cookie is None and d.hash_value == x("zz")
    assert d.remote_address == b"127.0.0.1:59132"


def test_generated_cookie_session_and_no_path():
    d = router.RouteDecision()
    d.remote_address, d.local_address = b"[::1]:5", b"[::1]:80"
    go(table(m.HashPolicy("cookie", "s", ttl_s=0)), decision=d)
    assert d.set_cookie == b's="%016x"; HttpOnly' % x("[::1]:5[::1]:80")


def test_generated_cookie_without_addresses():
    d = go(table(m.HashPolicy("cookie", "s", ttl_s=10)))
    assert d.has_hash and d.hash_value == x("") and d.set_cookie is None


@pytest.mark.parametrize("path,value", [
    (b"/?k=v", "v"),
    (b"/x?a=1&k=v&k=w", "v"),
    (b"/?k", ""),
    (b"/?k=", ""),
    (b"/?k=a%20b", "a%20b"),
    (b"/?k=v#frag", "v"),
])
def test_query_parameter(path, value):
    d = go(table(m.HashPolicy("query_parameter", "k")), path=path)
    assert d.has_hash and d.hash_value == x(value)


@pytest.mark.parametrize("path", [b"/", b"/?kk=1", b"/?a=k"])
def test_query_parameter_absent(path):
    assert not go(table(m.HashPolicy("query_parameter", "k")), path=path).has_hash


def test_source_ip():
    t = table(m.HashPolicy("source_ip"))
    assert not go(t).has_hash
    d = router.RouteDecision()
    d.source_ip = b"10.0.0.7"
    assert go(t, decision=d).hash_value == x("10.0.0.7")


def test_policies_combine_in_order():
    t = table(header("x-a"), header("x-b"), m.HashPolicy("query_parameter", "k"))
    d = go(t, path=b"/?k=3", headers=[(b"x-a", b"1"), (b"x-b", b"2")])
    assert d.hash_value == rotl(rotl(x("1")) ^ x("2")) ^ x("3")
    # a policy without a value is skipped
    d = go(t, path=b"/?k=3", headers=[(b"x-b", b"2")])
    assert d.hash_value == rotl(x("2")) ^ x("3")


def test_terminal_stops_once_there_is_a_hash():
    t = table(header("x-a"), header("x-b", terminal=True), header("x-c"))
    d = go(t, headers=[(b"x-a", b"1"), (b"x-b", b"2"), (b"x-c", b"3")])
    assert d.hash_value == rotl(x("1")) ^ x("2")
    # the terminal policy gave nothing, but x-a did: it still stops there
    d = go(t, headers=[(b"x-a", b"1"), (b"x-c", b"3")])
    assert d.hash_value == x("1")
    # nothing yet: go on
    d = go(t, headers=[(b"x-c", b"3")])
    assert d.hash_value == x("3")


def test_set_cookie_parts():
    hp = m.HashPolicy("cookie", "n", ttl_s=5, path="/a", attributes=(("k", "v"),))
    assert router.set_cookie_parts(hp) == (b'n="', b'"; Max-Age=5; Path=/a; k=v; HttpOnly')
