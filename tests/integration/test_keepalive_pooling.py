"""Keep-alive on both sides and upstream connection pooling."""
import json
import threading

import pytest

from helpers import Origin, build_request, header_value, parse_response, raw_request
from integration_util import Client, simple_proxy_config, start_proxy


@pytest.fixture(scope="module")
def env():
    with Origin() as origin:
        fp = start_proxy(simple_proxy_config({"backend": [("127.0.0.1", origin.port)]}), 1)
        try:
            yield fp, origin
        finally:
            fp.stop()


def _echo(raw: bytes) -> dict:
    status, headers, body = parse_response(raw)
    assert status == 200, raw[:500]
    return json.loads(body)


def _cx_total(fp):
    return fp.stats("cluster.backend.upstream_cx_total")["cluster.backend.upstream_cx_total"]


def test_sequential_requests_on_one_connection_reuse_one_upstream_connection(env):
    fp, origin = env
    before = _cx_total(fp)
    conn_ids = []
    seqs = []
    with Client(fp.port) as c:
        for i in range(50):
            e = _echo(c.request(build_request("GET", f"/seq/{i}")))
            assert e["path"] == f"/seq/{i}"
            conn_ids.append(e["conn_id"])
            seqs.append(e["conn_seq"])
    assert len(set(conn_ids)) == 1, conn_ids
    assert seqs == list(range(seqs[0], seqs[0] + 50))
    assert _cx_total(fp) - before <= 1


def test_successive_client_connections_share_the_pooled_upstream_connection(env):
    fp, origin = env
    ids = []
    for i in range(5):
        raw = raw_request(fp.port, build_request("GET", f"/client/{i}"))
        ids.append(_echo(raw)["conn_id"])
    assert len(set(ids)) == 1, ids


def test_concurrent_clients(env):
    fp, origin = env
    nclients, nreq = 8, 25
    errors = []
    conn_ids = set()
    lock = threading.Lock()
    barrier = threading.Barrier(nclients)

    def run(k):
        try:
            with Client(fp.port, timeout=10) as c:
                barrier.wait(5)
                for i in range(nreq):
                    e = _echo(c.request(build_request("GET", f"/c{k}/{i}", [("x-n", str(i))])))
                    if e["path"] != f"/c{k}/{i}":
                        errors.append(f"client {k} request {i} got the answer for {e['path']}")
                    with lock:
                        conn_ids.add(e["conn_id"])
        except Exception as ex:  # noqa: BLE001
            errors.append(f"client {k}: {ex!r}")

    before = fp.stats("cluster.backend.upstream_rq_total")["cluster.backend.upstream_rq_total"]
    threads = [threading.Thread(target=run, args=(k,)) for k in range(nclients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:5]
    after = fp.stats("cluster.backend.upstream_rq_total")["cluster.backend.upstream_rq_total"]
    assert after - before == nclients * nreq
    # never more upstream connections than requests in flight at once
    assert 1 <= len(conn_ids) <= nclients


def test_upstream_connection_closed_by_origin_is_not_reused(env):
    fp, origin = env
    destroy_before = fp.stats("cluster.backend.upstream_cx_destroy")
    with Client(fp.port) as c:
        first = _echo(c.request(build_request("GET", "/a")))
        raw = c.request(build_request("GET", "/closing", [("x-origin-close", "1")]))
        closing = _echo(raw)
        assert closing["conn_id"] == first["conn_id"]
        # the downstream connection stays usable; the next request needs a new upstream one
        third = _echo(c.request(build_request("GET", "/after")))
        assert third["conn_id"] != closing["conn_id"]
        fourth = _echo(c.request(build_request("GET", "/after2")))
        assert fourth["conn_id"] == third["conn_id"]
    status, headers, _ = parse_response(raw)
    # Connection is hop-by-hop: the upstream's close is not forwarded to the client.
    assert (header_value(headers, "connection") or "").lower() != "close"
    destroy_after = fp.stats("cluster.backend.upstream_cx_destroy")
    delta = {k: destroy_after[k] - destroy_before.get(k, 0) for k in destroy_after}
    # the closed connection was destroyed (Envoy closes it locally on "connection: close",
    # or sees the origin's close): upstream_cx_destroy and one of _local/_remote move
    assert delta["cluster.backend.upstream_cx_destroy"] >= 1, delta
    assert (delta["cluster.backend.upstream_cx_destroy_local"]
            + delta["cluster.backend.upstream_cx_destroy_remote"]) >= 1, delta


def test_pipelined_requests_answered_in_order_with_bodies(env):
    fp, origin = env
    reqs = [
        build_request("GET", "/p0", [("x-origin-delay-ms", "200"), ("x-origin-body-size", "3000")]),
        build_request("POST", "/p1", body=b"hello pipelined body"),
        build_request("GET", "/p2", [("x-origin-chunked", "1"), ("x-origin-body-size", "70000")]),
        build_request("GET", "/p3", [("x-origin-body", "short")]),
        build_request("POST", "/p4", [("Transfer-Encoding", "chunked")],
                      body=b"5\r\nabcde\r\n3\r\nfgh\r\n0\r\n\r\n"),
    ]
    with Client(fp.port, timeout=10) as c:
        c.send(b"".join(reqs))
        answers = [parse_response(c.read_response()) for _ in reqs]
    assert [a[0] for a in answers] == [200] * 5
    assert answers[0][2] == Origin.pattern(3000)
    e1 = json.loads(answers[1][2])
    assert (e1["path"], e1["body"]) == ("/p1", "hello pipelined body")
    assert answers[2][2] == Origin.pattern(70000)
    assert answers[3][2] == b"short"
    e4 = json.loads(answers[4][2])
    assert (e4["path"], e4["body"]) == ("/p4", "abcdefgh")


def test_many_requests_pipelined_in_one_write(env):
    fp, origin = env
    n = 100
    data = b"".join(build_request("GET", f"/pp/{i}", [("x-origin-body", f"answer-{i}")])
                    for i in range(n))
    with Client(fp.port, timeout=10) as c:
        c.send(data)
        bodies = [parse_response(c.read_response())[2] for _ in range(n)]
    assert bodies == [f"answer-{i}".encode() for i in range(n)]


def test_close_delimited_upstream_body_is_rechunked_and_client_kept(env):
    fp, origin = env
    with Client(fp.port) as c:
        raw = c.request(build_request("GET", "/nolen", [("x-origin-no-length", "1"),
                                                        ("x-origin-body", "until close")]))
        status, headers, body = parse_response(raw)
        assert (status, body) == (200, b"until close")
        assert header_value(headers, "transfer-encoding") == "chunked"
        assert _echo(c.request(build_request("GET", "/next")))["path"] == "/next"


def test_client_connection_close_is_honoured(env):
    fp, origin = env
    with Client(fp.port) as c:
        raw = c.request(build_request("GET", "/bye", [("Connection", "close")]))
        status, headers, _ = parse_response(raw)
        assert status == 200
        assert header_value(headers, "connection") == "close"
        assert c.closed_by_peer(2)
    # the upstream connection is not closed because of the client's choice
    with Client(fp.port) as c:
        first = _echo(c.request(build_request("GET", "/x1")))
        second = _echo(c.request(build_request("GET", "/x2", [("Connection", "close")])))
        assert c.closed_by_peer(2)
    third = _echo(raw_request(fp.port, build_request("GET", "/x3")))
    assert first["conn_id"] == second["conn_id"] == third["conn_id"]
    assert "connection" not in {k.lower() for k, _ in second["headers"]}
