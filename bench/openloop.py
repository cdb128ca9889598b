"""Open-loop HTTP/1.1 load: requests are sent on a fixed timetable, whatever the proxy does.

Run as ``python -m bench.openloop --port P --rate R --duration S [--connections C]``; prints one
JSON object.  Request i is due at t0 + i/R.  Each is taken by the first free keep-alive
connection; when all are busy it waits in the queue.  Its latency runs from the scheduled time,
not from when it was actually written, so a stall in the proxy shows up in every request that
should have been sent during it (no coordinated omission).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from bench.measure import CURVE_PCTS, percentile


class Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.transport = None
        self.need = -1

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._check()

    def _check(self) -> None:
        if self.waiter is None or self.waiter.done():
            return
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            self.need = end + 4 + length
            self.status = status
        if len(self.buf) >= self.need:
            del self.buf[:self.need]
            self.need = -1
            self.waiter.set_result(self.status)

    def connection_lost(self, exc) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    async def request(self, raw: bytes) -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


async def run(port: int, rate: float, duration: float, conns: int, path: str) -> dict:
    loop = asyncio.get_running_loop()
    raw = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    queue: asyncio.Queue = asyncio.Queue()
    lat: list = []
    errors = 0
    total = int(rate * duration)
    done_evt = asyncio.Event()
    finished = 0

    async def worker() -> None:
        nonlocal errors, finished
        conn = None
        while True:
            due = await queue.get()
            if due is None:
                break
            try:
                if conn is None or conn.transport.is_closing():
                    _, conn = await loop.create_connection(Conn, "127.0.0.1", port)
                status = await asyncio.wait_for(conn.request(raw), 10)
                if status != 200:
                    errors += 1
                else:
                    lat.append(time.perf_counter() - due)
            except (OSError, asyncio.TimeoutError, ConnectionError, ValueError):
                errors += 1
                if conn is not None:
                    conn.transport.abort()
                conn = None
            finished += 1
            if finished == total:
                done_evt.set()
        if conn is not None:
            conn.transport.close()

    workers = [asyncio.create_task(worker()) for _ in range(conns)]
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    interval = 1.0 / rate
    lag: list = []
    i = 0
    while i < total:
        # Release every request that is due, never one early; the event loop's timers are
        # coarse (about 1 ms), so a release can be late: that lag is counted in the latency
        # (it is measured from the scheduled time) and reported on its own as sched_lag.
        now = time.perf_counter()
        while i < total and t0 + i * interval <= now:
            due = t0 + i * interval
            lag.append(now - due)
            queue.put_nowait(due)
            i += 1
        if i < total:
            await asyncio.sleep(max(t0 + i * interval - time.perf_counter(), 0))
    try:
        await asyncio.wait_for(done_evt.wait(), 15)
    except asyncio.TimeoutError:
        pass
    elapsed = time.perf_counter() - t0
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers, return_exceptions=True)
    lat.sort()
    return {
        "requests": len(lat), "errors": errors + (total - finished), "duration_s": elapsed,
        "scheduled": total,
        "sched_lag_ms": {"p50": percentile(sorted(lag), 50) * 1000.0,
                         "p99": percentile(sorted(lag), 99) * 1000.0} if lag else None,
        "curve": [[q, percentile(lat, q) * 1000.0] for q in CURVE_PCTS] if lat else [],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--path", default="/")
    a = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    res = asyncio.run(run(a.port, a.rate, a.duration, a.connections, a.path))
    json.dump(res, sys.stdout)


if __name__ == "__main__":
    main()
