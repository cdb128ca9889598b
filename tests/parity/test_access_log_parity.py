"""Access logs and response flags, compared with real Envoy: the same requests through both
proxies, each writing "%RESPONSE_CODE% %RESPONSE_FLAGS% ..." to its own file."""
import os
import socket
import time

import pytest

from helpers import free_port, make_bootstrap, parse_response, raw_request
from helpers.scripted import ScriptedOrigin

FORMAT = "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL% %BYTES_RECEIVED% %UPSTREAM_CLUSTER%\n"


@pytest.fixture(scope="module")
def sockets():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    refused_port = refused.getsockname()[1]
    refused.close()
    yield silent.getsockname()[1], refused_port
    silent.close()


def _config(port, admin, path, ok_port, silent_port, refused_port):
    routes = [
        {"match": {"prefix": "/ok"}, "route": {"cluster": "ok"}},
        {"match": {"prefix": "/refused"}, "route": {"cluster": "refused"}},
        {"match": {"prefix": "/slow"}, "route": {"cluster": "silent", "timeout": "0.2s"}},
        {"match": {"prefix": "/retry"}, "route": {"cluster": "refused", "retry_policy": {
            "retry_on": "connect-failure", "num_retries": 1,
            "retry_back_off": {"base_interval": "0.005s"}}}},
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200}},
        {"match": {"prefix": "/rewrite"}, "route": {"cluster": "ok", "prefix_rewrite": "/ok"}},
    ]
    return make_bootstrap(
        port, admin,
        clusters={"ok": [("127.0.0.1", ok_port)], "silent": [("127.0.0.1", silent_port)],
                  "refused": [("127.0.0.1", refused_port)]},
        virtual_hosts=[{"name": "v", "domains": ["*"], "routes": routes}],
        hcm_extra={"access_log": [{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": path,
                "log_format": {"text_format_source": {"inline_string": FORMAT}}}}]})


REQUESTS = [
    b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /none HTTP/1.1\r\nHost: a\r\n\r\n",          # no route: NR
    b"GET /refused HTTP/1.1\r\nHost: a\r\n\r\n",       # connection refused: UF
    b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n",          # route timeout: UT
    b"GET /retry HTTP/1.1\r\nHost: a\r\n\r\n",         # retries exhausted: UF,URX
    b"GET /direct HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /rewrite/x HTTP/1.1\r\nHost: a\r\n\r\n",     # logged with the original path
]


def _run(factory, tmp_path, name, ports, **kw):
    origin = ScriptedOrigin()
    try:
        path = str(tmp_path / f"{name}.log")
        port, admin = free_port(), free_port()
        p = factory(_config(port, admin, path, origin.port, *ports), **kw)
        for data in REQUESTS:
            parse_response(raw_request(port, data, timeout=3))
        deadline = time.monotonic() + 5
        lines = []
        while time.monotonic() < deadline:  # both proxies flush their log buffers periodically
            if os.path.exists(path):
                lines = open(path).read().splitlines()
                if len(lines) >= len(REQUESTS):
                    break
            time.sleep(0.1)
        return lines
    finally:
        origin.close()


def test_response_flags_and_fields_match_envoy(tmp_path, sockets, envoy_factory, fastproxy_factory):
    # Envoy writes access logs out every --file-flush-interval-msec (10 s by default)
    envoy = _run(envoy_factory, tmp_path, "envoy", sockets,
                 extra_args=["--file-flush-interval-msec", "100"])
    fast = _run(fastproxy_factory, tmp_path, "fastproxy", sockets)
    assert len(envoy) == len(REQUESTS), envoy
    assert fast == envoy
