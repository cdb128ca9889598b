"""Route timeouts run on each worker's timing wheel (10 ms ticks, 256 slots): a timeout shorter
than one turn and one longer than a turn (2.56 s) both fire on time, and answering in time
disarms it."""
import socket
import time

import pytest

from helpers import free_port, make_bootstrap, parse_response, raw_request
from helpers.scripted import ScriptedOrigin


@pytest.fixture(scope="module")
def silent_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    yield s.getsockname()[1]
    s.close()


@pytest.mark.parametrize("timeout", [0.25, 3.1])
def test_route_timeout_fires_on_time(timeout, silent_port, fastproxy_factory):
    port, admin = free_port(), free_port()
    p = fastproxy_factory(make_bootstrap(
        port, admin, clusters={"silent": [("127.0.0.1", silent_port)]},
        virtual_hosts=[{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "silent", "timeout": f"{timeout}s"}}]}]))
    t0 = time.monotonic()
    status, _, body = parse_response(raw_request(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                                                 timeout=timeout + 3))
    elapsed = time.monotonic() - t0
    assert (status, body) == (504, b"upstream request timeout")
    assert timeout <= elapsed < timeout + 0.3
    assert p.stats()["cluster.silent.upstream_rq_timeout"] == 1


def test_answered_requests_do_not_time_out(fastproxy_factory):
    o = ScriptedOrigin(delays=[0.1] * 20)
    try:
        port, admin = free_port(), free_port()
        p = fastproxy_factory(make_bootstrap(
            port, admin, clusters={"svc": [("127.0.0.1", o.port)]},
            virtual_hosts=[{"name": "v", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "svc", "timeout": "0.3s"}}]}]))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            for _ in range(20):  # one connection: the same stream object is re-armed each time
                s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                data = b""
                while b"\r\n\r\n" not in data or not data.endswith(b":"):
                    data += s.recv(65536)
                assert data.startswith(b"HTTP/1.1 200")
        time.sleep(0.5)  # past every deadline that was armed
        assert p.stats()["cluster.svc.upstream_rq_timeout"] == 0
    finally:
        o.close()
