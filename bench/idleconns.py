"""Holds many idle keep-alive connections open to a proxy, driven over stdin/stdout.

``python -m bench.idleconns --port P --count N``: opens N connections, sends one GET on each
(so each is a keep-alive connection past its first request) and keeps them idle; prints
``open <ok> <failed>``.  On ``probe`` it times one GET on a new connection and prints
``probe <ms> <status>``; on ``close`` it resets every connection (no TIME_WAIT left behind) and
exits.
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import struct
import sys
import time

LINGER_RST = struct.pack("ii", 1, 0)


async def _get(reader, writer, port: int) -> int:
    writer.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line[15:])
    await reader.readexactly(length)
    return int(head[9:12])


async def run(port: int, count: int, parallel: int) -> None:
    conns: list = []
    failed = 0
    sem = asyncio.Semaphore(parallel)

    async def one() -> None:
        nonlocal failed
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
                conns.append(w)
                if await asyncio.wait_for(_get(r, w, port), 10) != 200:
                    failed += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                failed += 1

    await asyncio.gather(*(one() for _ in range(count)))
    print(f"open {count - failed} {failed}", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "probe":
            t = time.perf_counter()
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
                status = await asyncio.wait_for(_get(r, w, port), 5)
                w.close()
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                status = 0
            print(f"probe {(time.perf_counter() - t) * 1000.0:.3f} {status}", flush=True)
        else:
            break
    for w in conns:
        sock = w.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        except OSError:
            pass
        w.transport.abort()
    await asyncio.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--parallel", type=int, default=64)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < a.count + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.count + 1000), hard))
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(a.port, a.count, a.parallel))


if __name__ == "__main__":
    main()
