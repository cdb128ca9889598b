"""curl as the client."""
import hashlib
import json
import os
import shutil
import subprocess
import time

import pytest

from helpers import Origin, header_value
from integration_util import simple_proxy_config, start_proxy

CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with Origin() as origin:
        fp = start_proxy(simple_proxy_config({"backend": [("127.0.0.1", origin.port)]}), 1)
        try:
            path = tmp_path_factory.mktemp("curl") / "upload.bin"
            path.write_bytes(os.urandom(300_000))
            yield fp, origin, str(path)
        finally:
            fp.stop()


def curl(fp, *args, path="/c"):
    """Run curl; return (exit status, status code, headers [(name, value)], body, seconds)."""
    start = time.monotonic()
    r = subprocess.run([CURL, "-sS", "-i", "--noproxy", "*", "--max-time", "10", *args,
                        f"http://127.0.0.1:{fp.port}{path}"],
                       capture_output=True, timeout=20)
    elapsed = time.monotonic() - start
    out = r.stdout
    # skip interim responses (100 Continue)
    while out.startswith(b"HTTP/1.1 100"):
        out = out[out.index(b"\r\n\r\n") + 4:]
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else None
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line]
    return r.returncode, status, headers, body, elapsed


def test_curl_get(env):
    fp, origin, _ = env
    rc, status, headers, body, _ = curl(fp, path="/hello?x=1")
    assert rc == 0 and status == 200
    echo = json.loads(body)
    assert echo["method"] == "GET" and echo["path"] == "/hello?x=1"
    assert int(header_value(headers, "content-length")) == len(body)


def test_curl_post_file(env):
    fp, origin, upload = env
    origin.clear()
    rc, status, headers, body, _ = curl(fp, "--data-binary", f"@{upload}")
    assert rc == 0 and status == 200
    req = origin.last
    with open(upload, "rb") as f:
        data = f.read()
    assert req.method == "POST"
    assert req.header("content-length") == str(len(data))
    assert hashlib.sha256(req.body).digest() == hashlib.sha256(data).digest()


def test_curl_post_file_with_expect_100_continue(env):
    fp, origin, upload = env
    origin.clear()
    rc, status, _, _, elapsed = curl(fp, "-H", "Expect: 100-continue", "--data-binary", f"@{upload}")
    assert rc == 0 and status == 200
    # the proxy answers 100 Continue itself (curl would otherwise wait 1 s before sending)
    assert elapsed < 0.9, elapsed
    assert len(origin.last.body) == 300_000
    assert origin.last.header("expect") is None


def test_curl_head(env):
    fp, origin, _ = env
    rc, status, headers, body, _ = curl(fp, "-I", path="/h?body_size=1234")
    assert rc == 0 and status == 200
    assert header_value(headers, "content-length") == "1234"
    assert body == b""
    assert origin.last.method == "HEAD"


def test_curl_http10_gets_426(env):
    fp, origin, _ = env
    origin.clear()
    rc, status, headers, body, _ = curl(fp, "--http1.0")
    assert rc == 0
    assert status == 426
    assert body == b"Upgrade Required"
    assert header_value(headers, "connection") == "close"
    assert not origin.requests


def test_curl_chunked_upload(env):
    fp, origin, upload = env
    origin.clear()
    rc, status, _, body, _ = curl(fp, "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{upload}")
    assert rc == 0 and status == 200
    with open(upload, "rb") as f:
        data = f.read()
    req = origin.last
    assert req.header("transfer-encoding") == "chunked"
    assert req.body == data
    assert json.loads(body)["body_length"] == len(data)


def test_curl_download_large_body(env):
    fp, origin, _ = env
    rc, status, headers, body, _ = curl(fp, path="/big?body_size=5000000&chunked=1")
    assert rc == 0 and status == 200
    assert header_value(headers, "transfer-encoding") == "chunked"
    assert body == Origin.pattern(5_000_000)
