"""Parity of consistent hashing: for RING_HASH (both hash functions) and MAGLEV clusters, with
3 and 7 hosts of unequal weights, Envoy and fastproxy send every request key (header, cookie,
query parameter, combined policies) to the same host, so switching proxies keeps stickiness.

Both proxies point at the same origins (host keys are the origins' addresses); each request
carries a marker header, and which origin recorded the marker tells which host was picked.
"""
from __future__ import annotations

import contextlib
import socket
import time

import pytest

from fastproxy._core.lb import xxhash64
from fastproxy._core.router import set_cookie_parts
from fastproxy.config import model
from helpers import make_bootstrap, parse_response, raw_request

pytestmark = pytest.mark.parity

KEYS = 200


def _routes():
    def route(prefix, policies):
        return {"match": {"prefix": prefix}, "route": {"cluster": "c", "hash_policy": policies}}

    return [{"name": "v", "domains": ["*"], "routes": [
        route("/header", [{"header": {"header_name": "x-key"}}]),
        route("/cookie", [{"cookie": {"name": "sess"}}]),
        route("/query", [{"query_parameter": {"name": "k"}}]),
        # several policies: combined in order; the terminal one stops when a hash exists
        route("/multi", [
            {"header": {"header_name": "x-a"}},
            {"query_parameter": {"name": "k"}, "terminal": True},
            {"header": {"header_name": "x-key"}},
        ]),
        route("/gen", [{"cookie": {"name": "sess", "ttl": "120s", "path": "/gen"}}]),
        route("/authority", [{"header": {"header_name": ":authority"}}]),
        route("/host", [{"header": {"header_name": "host"}}]),
    ]}]


def _requests(tag):
    """(marker, request bytes) for every key and policy kind."""
    out = []
    for i in range(KEYS):
        k = f"key-{i}-{i * 7919 % 1000}"
        mark = f"{tag}-{i}"
        kind = ("header", "cookie", "query", "multi", "multi-repeat", "authority", "host",
                "query-bare")[i % 8]
        if kind == "header":
            req = f"GET /header HTTP/1.1\r\nHost: a\r\nx-key: {k}\r\n"
        elif kind == "cookie":
            req = f"GET /cookie HTTP/1.1\r\nHost: a\r\nCookie: a=1; sess={k}; b=2\r\n"
        elif kind == "query":
            req = f"GET /query?x=1&k={k}&k=other HTTP/1.1\r\nHost: a\r\n"
        elif kind == "multi":
            req = f"GET /multi?k={k} HTTP/1.1\r\nHost: a\r\nx-a: {i}\r\nx-key: z\r\n"
        elif kind == "multi-repeat":
            # a repeated header hashes all its values, sorted
            req = f"GET /header HTTP/1.1\r\nHost: a\r\nx-key: {k}\r\nx-key: {i}\r\n"
        elif kind in ("authority", "host"):
            req = f"GET /{kind} HTTP/1.1\r\nHost: h{i}.example\r\n"
        else:
            # a parameter without '=' hashes as the empty value; a cookie in quotes without them
            req = (f"GET /multi?k HTTP/1.1\r\nHost: a\r\nx-a: {k}\r\n"
                   if i % 16 == 7 else
                   f"GET /cookie HTTP/1.1\r\nHost: a\r\nCookie: sess=\"{k}\"\r\n")
        out.append((mark, (req + f"x-mark: {mark}\r\n\r\n").encode()))
    return out


def _picks(origins, tag):
    picked = {}
    for idx, o in enumerate(origins):
        for r in o.requests:
            mark = r.header("x-mark")
            if mark and mark.startswith(tag + "-"):
                picked[int(mark.rsplit("-", 1)[1])] = idx
    return picked


def _run(both_proxies, origin_factory, n_hosts, weights, cluster_extra):
    origins = [origin_factory() for _ in range(n_hosts)]
    endpoints = [{"endpoint": {"address": {"socket_address": {
        "address": o.address[0], "port_value": o.address[1]}}},
        "load_balancing_weight": w} for o, w in zip(origins, weights)]

    def config(lp, ap):
        cfg = make_bootstrap(lp, ap, {"c": [o.address for o in origins]}, _routes(),
                             cluster_extra={"c": cluster_extra})
        cfg["static_resources"]["clusters"][0]["load_assignment"]["endpoints"] = [
            {"lb_endpoints": endpoints}]
        return cfg

    pair = both_proxies(config)
    for tag, proxy in (("e", pair.envoy), ("f", pair.fastproxy)):
        for _, req in _requests(tag):
            status, _, _ = parse_response(raw_request(proxy.port, req))
            assert status == 200, (tag, req)
    envoy, fast = _picks(origins, "e"), _picks(origins, "f")
    assert len(envoy) == KEYS and len(fast) == KEYS
    differ = {i: (envoy[i], fast[i]) for i in range(KEYS) if envoy[i] != fast[i]}
    assert not differ, f"{len(differ)} keys picked differently (envoy, fastproxy): {differ}"
    # the keys spread over every host (weights are unequal but none is tiny)
    assert len(set(envoy.values())) == n_hosts
    return pair, origins


CASES = [
    pytest.param(3, [1, 2, 3], {"lb_policy": "RING_HASH"}, id="ring-xx-3"),
    pytest.param(7, [1, 2, 3, 1, 5, 2, 4], {"lb_policy": "RING_HASH"}, id="ring-xx-7"),
    pytest.param(3, [3, 1, 2], {"lb_policy": "RING_HASH", "ring_hash_lb_config": {
        "hash_function": "MURMUR_HASH_2"}}, id="ring-murmur-3"),
    pytest.param(7, [2, 1, 1, 3, 1, 4, 2], {"lb_policy": "RING_HASH", "ring_hash_lb_config": {
        "hash_function": "MURMUR_HASH_2", "minimum_ring_size": 64, "maximum_ring_size": 4096}},
        id="ring-murmur-7-small"),
    pytest.param(3, [1, 2, 3], {"lb_policy": "MAGLEV"}, id="maglev-3"),
    pytest.param(7, [5, 1, 2, 2, 3, 1, 4], {"lb_policy": "MAGLEV"}, id="maglev-7"),
    pytest.param(7, [1, 1, 2, 1, 3, 1, 1], {"lb_policy": "MAGLEV",
                                             "maglev_lb_config": {"table_size": 1021}},
                 id="maglev-7-table-1021"),
]


@pytest.mark.parametrize("n_hosts,weights,cluster_extra", CASES)
def test_same_host_for_every_key(both_proxies, origin_factory, n_hosts, weights, cluster_extra):
    _run(both_proxies, origin_factory, n_hosts, weights, cluster_extra)


def test_generated_cookie(both_proxies, origin_factory):
    """A cookie policy with a ttl and no cookie: Envoy sends Set-Cookie with the value
    hex(xxHash64(client address + listener address)), formatted as fastproxy formats it, after
    the upstream's headers."""
    origins = [origin_factory() for _ in range(3)]

    def config(lp, ap):
        return make_bootstrap(lp, ap, {"c": [o.address for o in origins]}, _routes(),
                              cluster_extra={"c": {"lb_policy": "MAGLEV"}})

    pair = both_proxies(config)
    with contextlib.closing(socket.create_connection(("127.0.0.1", pair.envoy.port))) as s:
        s.sendall(b"GET /gen HTTP/1.1\r\nHost: a\r\nx-origin-header: x-up: 1\r\n\r\n")
        data = b""
        deadline = time.monotonic() + 5
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            data += s.recv(65536)
        local = "%s:%d" % s.getsockname()[:2]
        remote = "%s:%d" % s.getpeername()[:2]
    head = data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    names = [line.split(":", 1)[0].lower() for line in head[1:]]
    cookie = [line.split(": ", 1)[1] for line in head[1:] if line.lower().startswith("set-cookie")]
    value = "%016x" % xxhash64((local + remote).encode())
    prefix, suffix = set_cookie_parts(model.HashPolicy("cookie", "sess", ttl_s=120, path="/gen"))
    assert cookie == [(prefix + value.encode() + suffix).decode()]
    assert cookie[0] == f'sess="{value}"; Max-Age=120; Path=/gen; HttpOnly'
    # after the upstream's own headers
    assert names.index("set-cookie") > names.index("x-up")
