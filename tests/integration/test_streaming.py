"""Streaming and backpressure: a 1 GiB upload (Content-Length and chunked) passes through one
worker with flat memory, and a 256 MiB download to a slow reader does not pile up in the proxy:
the proxy must stop reading the upstream while the client does not read."""
import json
import socket
import threading
import time
import zlib

import pytest

from helpers import build_request, parse_response, response_end
from integration_util import (
    MiB, CountingOrigin, RssSampler, gen_block, simple_proxy_config, start_proxy,
    wait_worker_pids,
)

UPLOAD_BYTES = 1 << 30
DOWNLOAD_BYTES = 256 * MiB
RSS_GROWTH_LIMIT = 64 * MiB


def kernel_buffer_bound(extra=0):
    """What loopback TCP may hold in flight between the two ends of a proxied transfer when the
    proxy buffers nothing itself: a receive and a send buffer on each of the two hops, at the
    kernel's autotuning maxima (tcp_rmem/tcp_wmem), plus the proxy's per-connection buffer
    limit and one read.  The proxy's own buffering is checked separately, through its RSS."""
    def maximum(name, default):
        try:
            with open("/proc/sys/net/ipv4/" + name) as f:
                return int(f.read().split()[2])
        except (OSError, ValueError, IndexError):
            return default
    rmem, wmem = maximum("tcp_rmem", 6 * MiB), maximum("tcp_wmem", 4 * MiB)
    return 2 * rmem + 2 * wmem + 2 * MiB + extra
# Hard bound on one 1 GiB transfer: the test fails (not skips) when it takes longer.
TRANSFER_DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def setup():
    with CountingOrigin() as origin:
        cfg = simple_proxy_config(
            {"counting": [("127.0.0.1", origin.port)]},
            virtual_hosts=[{"name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"},
                                        "route": {"cluster": "counting", "timeout": "0s"}}]}],
        )
        fp = start_proxy(cfg, 1)
        try:
            worker = wait_worker_pids(fp.pid, 1)[0]
            yield fp, origin, worker
        finally:
            fp.stop()


def _upload(port: int, base: bytes, chunked: bool):
    """Stream UPLOAD_BYTES in 1 MiB blocks; return (status, body json, client crc, seconds)."""
    nblocks = UPLOAD_BYTES // MiB
    if chunked:
        head = build_request("POST", "/upload", [("Transfer-Encoding", "chunked")])
    else:
        head = build_request("POST", "/upload", [("Content-Length", str(UPLOAD_BYTES))])
    start = time.monotonic()
    deadline = start + TRANSFER_DEADLINE_S
    crc = 0
    with socket.create_connection(("127.0.0.1", port), timeout=TRANSFER_DEADLINE_S) as s:
        s.sendall(head)
        for i in range(nblocks):
            if time.monotonic() > deadline:
                raise AssertionError(f"upload not done after {TRANSFER_DEADLINE_S}s "
                                     f"({i} of {nblocks} MiB sent)")
            block = gen_block(i, base)
            crc = zlib.crc32(block, crc)
            if chunked:
                s.sendall(b"%x\r\n" % len(block) + block + b"\r\n")
            else:
                s.sendall(block)
        if chunked:
            s.sendall(b"0\r\n\r\n")
        data = b""
        s.settimeout(max(1.0, deadline - time.monotonic()))
        while response_end(data) is None:
            d = s.recv(65536)
            if not d:
                break
            data += d
    elapsed = time.monotonic() - start
    status, headers, body = parse_response(data)
    return status, (json.loads(body) if status == 200 else body), crc, elapsed


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_1gib_upload_streams_with_flat_rss(setup, chunked):
    fp, origin, worker = setup
    # Warm up the connection pool and the worker's buffers first.
    _ = _upload_small(fp.port)
    with RssSampler(worker) as rss:
        status, result, crc, elapsed = _upload(fp.port, origin.base, chunked)
    print(f"1 GiB upload ({'chunked' if chunked else 'content-length'}): {elapsed:.1f}s, "
          f"{UPLOAD_BYTES / elapsed / MiB:.0f} MiB/s, worker RSS {rss.baseline // 1024} kB -> "
          f"max {rss.max // 1024} kB ({rss.samples} samples)")
    assert status == 200, result
    assert result["bytes"] == UPLOAD_BYTES
    assert result["crc32"] == crc
    assert rss.growth < RSS_GROWTH_LIMIT, f"worker RSS grew by {rss.growth / MiB:.1f} MiB"
    assert elapsed < TRANSFER_DEADLINE_S
    assert not origin.errors


def _upload_small(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(build_request("POST", "/warm", body=b"x" * 100000))
        data = b""
        while b"}" not in data:
            d = s.recv(65536)
            if not d:
                break
            data += d
    return data


def test_256mib_download_to_slow_reader_is_paused_upstream(setup):
    fp, origin, worker = setup
    origin.sent = 0
    origin.download_done.clear()
    with RssSampler(worker) as rss:
        s = socket.create_connection(("127.0.0.1", fp.port), timeout=30)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        try:
            s.sendall(build_request("GET", f"/download/{DOWNLOAD_BYTES}"))
            # Phase 1: do not read at all for 3 s.
            time.sleep(3.0)
            sent_while_stalled = origin.sent
            rss_while_stalled = rss.max
            # Phase 2: read slowly (64 KiB every 10 ms) for 2 s.
            got = bytearray()
            t_end = time.monotonic() + 2.0
            while time.monotonic() < t_end:
                got += s.recv(65536)
                time.sleep(0.01)
            sent_after_slow = origin.sent
            # Phase 3: read the rest as fast as possible (bounded in time).
            deadline = time.monotonic() + 60
            head_end = -1
            total = 0
            crc = 0
            pending = bytes(got)
            body_len = None
            while True:
                if body_len is None:
                    head_end = pending.find(b"\r\n\r\n")
                    if head_end >= 0:
                        status, headers, _ = parse_response(pending[: head_end + 4], head_request=True)
                        assert status == 200
                        body_len = int(dict((k.lower(), v) for k, v in headers)["content-length"])
                        pending = pending[head_end + 4:]
                if body_len is not None:
                    total += len(pending)
                    crc = zlib.crc32(pending, crc)
                    pending = b""
                    if total >= body_len:
                        break
                assert time.monotonic() < deadline, f"download stuck at {total} bytes"
                d = s.recv(1 << 20)
                if not d:
                    break
                pending += d
        finally:
            s.close()
    print(f"256 MiB download: origin sent {sent_while_stalled / MiB:.1f} MiB while the client "
          f"stalled, {sent_after_slow / MiB:.1f} MiB after the slow phase; worker RSS "
          f"{rss.baseline // 1024} kB -> stalled {rss_while_stalled // 1024} kB, max "
          f"{rss.max // 1024} kB")
    expected_crc = 0
    for i in range(DOWNLOAD_BYTES // MiB):
        expected_crc = zlib.crc32(gen_block(i, origin.base), expected_crc)
    assert body_len == DOWNLOAD_BYTES
    assert total == DOWNLOAD_BYTES
    assert crc == expected_crc
    # With the client not reading, only socket buffers and the proxy's per-connection buffer
    # limit (1 MiB) may be in flight: the proxy must have stopped reading the upstream.
    assert sent_while_stalled < kernel_buffer_bound(), (
        f"origin could write {sent_while_stalled / MiB:.1f} MiB while the client read nothing")
    assert rss.growth < RSS_GROWTH_LIMIT, f"worker RSS grew by {rss.growth / MiB:.1f} MiB"


def test_upload_to_a_stalled_origin_is_paused_downstream(setup):
    """While the origin does not read, the proxy must stop reading the client: only socket
    buffers and the per-connection buffer limit may fill up."""
    fp, origin, worker = setup
    total = 256 * MiB
    sent = [0]
    errors = []
    result = {}

    def client():
        try:
            with socket.create_connection(("127.0.0.1", fp.port), timeout=30) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
                s.sendall(build_request("POST", "/stall/3", [("Content-Length", str(total))]))
                crc = 0
                for i in range(total // MiB):
                    block = gen_block(i, origin.base)
                    crc = zlib.crc32(block, crc)
                    s.sendall(block)
                    sent[0] += len(block)
                data = b""
                while response_end(data) is None:
                    d = s.recv(65536)
                    if not d:
                        break
                    data += d
                result["response"] = data
                result["crc"] = crc
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    with RssSampler(worker) as rss:
        t = threading.Thread(target=client)
        t.start()
        time.sleep(2.5)
        sent_while_stalled = sent[0]
        t.join(60)
    assert not t.is_alive(), "upload did not finish within 60 s"
    print(f"upload to a stalled origin: client could send {sent_while_stalled / MiB:.1f} MiB "
          f"while the origin read nothing; worker RSS grew {rss.growth / MiB:.1f} MiB")
    assert not errors, errors
    status, _, body = parse_response(result["response"])
    assert status == 200
    got = json.loads(body)
    assert got["bytes"] == total and got["crc32"] == result["crc"]
    assert sent_while_stalled < kernel_buffer_bound(256 * 1024), \
        f"{sent_while_stalled / MiB:.1f} MiB accepted while stalled"
    assert rss.growth < RSS_GROWTH_LIMIT, f"worker RSS grew by {rss.growth / MiB:.1f} MiB"
