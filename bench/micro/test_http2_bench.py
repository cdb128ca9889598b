"""Micro-benchmarks of the HTTP/2 codec: one request/response exchange through a client and a
server H2Session joined in memory (HEADERS out, HEADERS + DATA back, stream closed on both
sides), the whole loop compiled (http2.bench_exchange), against the plain alternative of the
same exchange driven from Python code through the def-level API.

    pytest bench/micro/test_http2_bench.py --benchmark-only
"""
import pytest

h2 = pytest.importorskip("fastproxy._core.http2")

ITER = 20000
REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"api.example.com"),
           (b":path", b"/api/v1/items/42"), (b"user-agent", b"bench/1.0"), (b"accept", b"*/*")]
RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"12")]


@pytest.mark.parametrize("per_round", [1, 16])
def test_h2_exchange(benchmark, per_round):
    """per_round: requests submitted before bytes cross (multiplexing batches the frames)."""
    per = benchmark(h2.bench_exchange, ITER, per_round)
    benchmark.extra_info["ns_per_exchange"] = per * 1e9


def test_h2_exchange_large_body(benchmark):
    body = b"b" * 65536
    per = benchmark(h2.bench_exchange, ITER // 10, 1, body)
    benchmark.extra_info["ns_per_exchange"] = per * 1e9


def test_h2_exchange_python_driven(benchmark):
    ch, sh = h2.RecordingHandler(True), h2.RecordingHandler(True)
    client, server = h2.H2Session(False, ch), h2.H2Session(True, sh)
    ch.session, sh.session = client, server
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    n = ITER // 10

    def loop():
        for _ in range(n):
            sid = client.submit_request(REQUEST, True)
            server.receive_data(client.data_to_send())
            server.submit_response(sid, RESPONSE, False)
            server.send_data(sid, b"hello world!", True)
            client.receive_data(server.data_to_send())
            client.output_flushed()
            server.output_flushed()
        ch.events.clear()
        sh.events.clear()
    benchmark(loop)
    benchmark.extra_info["ns_per_exchange"] = benchmark.stats.stats.median / n * 1e9
