"""HTTP/2 downstream (h2c with prior knowledge) to HTTP/1.1 upstreams, through real sockets with
curl and h2load as clients, compared with real Envoy on the same config where it answers."""
import json
import shutil
import subprocess

import pytest

from helpers import free_port, make_bootstrap, raw_request, parse_response

pytestmark = pytest.mark.skipif(not shutil.which("curl") or not shutil.which("h2load"),
                                reason="curl and h2load (nghttp2-client) are needed")


def _config(port, admin, origin, codec="AUTO"):
    return make_bootstrap(port, admin, clusters={"o": [("127.0.0.1", origin.port)]},
                          virtual_hosts=[{"name": "v", "domains": ["*"], "routes": [
                              {"match": {"prefix": "/direct"},
                               "direct_response": {"status": 201, "body": {"inline_string": "d"}}},
                              {"match": {"prefix": "/"}, "route": {"cluster": "o"}}]}],
                          hcm_extra={"codec_type": codec})


def _curl(port, path, *extra):
    out = subprocess.run(["curl", "-s", "-i", "--http2-prior-knowledge", *extra,
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, timeout=10)
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = [tuple(x.strip() for x in l.split(":", 1)) for l in lines[1:]]
    return status, headers, body


@pytest.fixture
def proxy(origin, fastproxy_factory):
    port, admin = free_port(), free_port()
    return fastproxy_factory(_config(port, admin, origin))


def test_get_and_post_over_h2c(proxy, origin):
    status, headers, body = _curl(proxy.port, "/a?b=1")
    assert status == 200
    echo = json.loads(body)
    assert echo["method"] == "GET" and echo["path"] == "/a?b=1"
    sent = {k.lower(): v for k, v in echo["headers"]}
    assert sent["host"] == f"127.0.0.1:{proxy.port}"
    assert "x-request-id" in sent and sent["x-forwarded-proto"] == "http"
    status, _, body = _curl(proxy.port, "/up", "--data-binary", "x" * 100000)
    echo = json.loads(body)
    assert status == 200 and echo["method"] == "POST"
    assert echo["body_length"] == 100000 and echo["body"] == "x" * 100000


def test_local_replies_over_h2c(proxy):
    status, headers, body = _curl(proxy.port, "/direct")
    assert (status, body) == (201, b"d")
    assert ("server", "envoy") in headers


def test_multiplexed_load(proxy):
    out = subprocess.run(["h2load", "-n", "2000", "-c", "2", "-m", "16",
                          f"http://127.0.0.1:{proxy.port}/x"], capture_output=True, text=True,
                         timeout=60)
    assert "2000 succeeded, 0 failed, 0 errored" in out.stdout, out.stdout
    stats = proxy.stats()
    assert stats["http.ingress_http.downstream_rq_http2_total"] == 2000
    assert stats["http.ingress_http.downstream_cx_http2_total"] == 2
    assert stats["http.ingress_http.downstream_rq_2xx"] == 2000


def test_auto_codec_still_speaks_http1(proxy):
    status, _, _ = parse_response(raw_request(proxy.port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"))
    assert status == 200


def test_forced_http2_codec(origin, fastproxy_factory):
    port, admin = free_port(), free_port()
    p = fastproxy_factory(_config(port, admin, origin, codec="HTTP2"))
    status, _, _ = _curl(p.port, "/x")
    assert status == 200


@pytest.mark.parametrize("path", ["/direct", "/x"])
def test_same_answer_as_envoy(path, origin, fastproxy_factory, envoy_factory):
    answers = []
    for factory in (envoy_factory, fastproxy_factory):
        port, admin = free_port(), free_port()
        p = factory(_config(port, admin, origin))
        status, headers, _ = _curl(p.port, path)
        names = sorted({k.lower() for k, _ in headers} - {"date", "x-envoy-upstream-service-time"})
        answers.append((status, names))
    assert answers[1] == answers[0]
