"""The shared-memory blocks of the cluster-wide limits: circuit breaker counts and local rate limit
token buckets, beside the stats block (`<stats path>.cb` and `<stats path>.rl`).

The main process creates both (zeroed) before it starts the workers; each worker maps them
(fastproxy/_core/breakers.pyx, ratelimit.pyx) and updates them with atomics (csrc/fp_shared.h).
Every process finds a cluster's or a bucket's place from the compiled model: the slots are
numbered at compile time (config.circuit_breakers / config.local_ratelimit `assign_slots`).

Circuit breaker block (`.cb`), all int64:
    header (64 bytes): magic, version, number of clusters, number of workers
    totals: per cluster and priority, one 64-byte line: connections, pending, requests, retries
        (what the thresholds are checked against; atomic add/sub by every worker)
    per worker: per cluster and priority, the same four counts, written only by that worker,
        so that the main process can give back what a worker held when it dies
Rate limit block (`.rl`):
    header (64 bytes): magic, version, number of buckets, number of stat prefixes, workers
    buckets: one 64-byte line each; its first word is the bucket's time (fp_shared.h)
    counters: per worker and stat prefix, one 64-byte line of LOCAL_RATE_LIMIT_STATS counters
        (plain adds by that worker; the main process sums them into the stats block)

The main process derives the gauges Envoy keeps (circuit_breakers.<priority>.*_open and
remaining_*) from the totals when the admin reads the stats (`refresh`).
"""
from __future__ import annotations

import mmap
import os
import struct

from .names import CIRCUIT_BREAKER_REMAINING_STATS, LOCAL_RATE_LIMIT_STATS

HEADER = struct.Struct("<IIQQQ")
HEADER_SIZE = 64
LINE = 64
CB_MAGIC = 0x46504342  # "FPCB"
RL_MAGIC = 0x4650524C  # "FPRL"
VERSION = 1
CB_COUNTS = 4  # connections, pending, requests, retries
CB_WORKER_ENTRY = CB_COUNTS * 8
RL_COUNTERS = len(LOCAL_RATE_LIMIT_STATS)
NUM_PRIORITIES = 2


def cb_path(stats_path: str) -> str:
    return stats_path + ".cb"


def rl_path(stats_path: str) -> str:
    return stats_path + ".rl"


def cb_size(num_clusters: int, num_workers: int) -> int:
    return (HEADER_SIZE + num_clusters * NUM_PRIORITIES * LINE
            + num_workers * num_clusters * NUM_PRIORITIES * CB_WORKER_ENTRY)


def rl_size(num_buckets: int, num_prefixes: int, num_workers: int) -> int:
    return HEADER_SIZE + num_buckets * LINE + num_workers * num_prefixes * LINE


def _create(path: str, size: int, header: bytes) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, max(size, HEADER_SIZE))
        os.pwrite(fd, header, 0)
    finally:
        os.close(fd)


def create_blocks(bootstrap, stats_path: str, num_workers: int) -> list[str]:
    """Create the zeroed blocks for this config (main process); returns their paths."""
    from fastproxy.config import local_ratelimit

    nc = len(bootstrap.clusters)
    _create(cb_path(stats_path), cb_size(nc, num_workers),
            HEADER.pack(CB_MAGIC, VERSION, nc, num_workers, 0))
    nb = local_ratelimit.num_buckets(bootstrap)
    np_ = len(local_ratelimit.stat_prefixes(bootstrap))
    _create(rl_path(stats_path), rl_size(nb, np_, num_workers),
            HEADER.pack(RL_MAGIC, VERSION, nb, np_, num_workers))
    return [cb_path(stats_path), rl_path(stats_path)]


def remove_blocks(stats_path: str) -> None:
    for path in (cb_path(stats_path), rl_path(stats_path)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class _Mapped:
    def __init__(self, path: str, magic: int):
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        m, v, self.a, self.b, self.c = HEADER.unpack(self.mm[:HEADER.size])
        if m != magic or v != VERSION:
            raise ValueError("%s is not a block of this version" % path)
        self.words = memoryview(self.mm).cast("q")


_open: dict[str, _Mapped] = {}


def _mapped(path: str, magic: int):
    m = _open.get(path)
    if m is None:
        try:
            m = _open[path] = _Mapped(path, magic)
        except (OSError, ValueError):
            return None
    return m


def close_blocks(stats_path: str) -> None:
    for path in (cb_path(stats_path), rl_path(stats_path)):
        m = _open.pop(path, None)
        if m is not None:
            m.words.release()
            m.mm.close()


def breaker_counts(stats_path: str, slot: int, priority: int):
    """(connections, pending, requests, retries) in flight for a cluster slot, or None."""
    m = _mapped(cb_path(stats_path), CB_MAGIC)
    if m is None or not 0 <= slot < m.a:
        return None
    base = (HEADER_SIZE + (slot * NUM_PRIORITIES + priority) * LINE) // 8
    return tuple(m.words[base:base + CB_COUNTS])


def release_worker(stats_path: str, worker: int) -> None:
    """A worker is gone: take back from the totals what it held (main process, before the slot's
    next worker starts).  Racing adds by live workers are atomic on their side; this side's
    read-modify-write of the totals is done word by word with that in mind (see fp_shared.h)."""
    from fastproxy._core.breakers import subtract_worker_counts

    m = _mapped(cb_path(stats_path), CB_MAGIC)
    if m is None or not 0 <= worker < m.b:
        return
    subtract_worker_counts(cb_path(stats_path), worker)


def refresh(shared, layout, bootstrap) -> None:
    """Write the derived stats into the main process's slot (0) of the stats block."""
    from fastproxy.config.circuit_breakers import PRIORITY_NAMES

    values = shared._values
    cb = _mapped(cb_path(shared.path), CB_MAGIC)
    if cb is not None:
        for cluster in bootstrap.clusters:
            cfg = getattr(cluster, "circuit_breakers", None)
            base = layout.cluster_bases.get(cluster.name)
            if cfg is None or base is None or not 0 <= cfg.slot < cb.a:
                continue
            for prio, th in enumerate(cfg.thresholds):
                w = (HEADER_SIZE + (cfg.slot * NUM_PRIORITIES + prio) * LINE) // 8
                cx, pending, rq, retries = cb.words[w:w + CB_COUNTS]
                retry_max = retry_limit(th, rq, pending)
                name = "cluster.%s.circuit_breakers.%s." % (cluster.name, PRIORITY_NAMES[prio])
                # Envoy sets an *_open gauge when a count moves, so a zero threshold (nothing
                # is ever let through) never shows as open.
                for stat, used, limit in (("cx_open", cx, th.max_connections),
                                          ("rq_pending_open", pending, th.max_pending_requests),
                                          ("rq_open", rq, th.max_requests),
                                          ("rq_retry_open", retries, retry_max)):
                    i = layout.index.get(name + stat)
                    if i is not None:
                        values[i] = int(limit > 0 and used >= limit)
                rb = getattr(layout, "remaining_bases", {}).get((cluster.name, prio))
                if rb is not None:
                    for k, (limit, used) in enumerate(((th.max_connections, cx),
                                                       (th.max_pending_requests, pending),
                                                       (th.max_requests, rq),
                                                       (retry_max, retries))):
                        values[rb + k] = max(limit - used, 0)
    rl = _mapped(rl_path(shared.path), RL_MAGIC)
    bases = getattr(layout, "ratelimit_bases", [])
    if rl is not None and bases:
        nb, np_, nw = rl.a, rl.b, rl.c
        start = (HEADER_SIZE + nb * LINE) // 8
        for k, stat_base in enumerate(bases[:np_]):
            for j in range(RL_COUNTERS):
                total = 0
                for w in range(nw):
                    total += rl.words[start + (w * np_ + k) * (LINE // 8) + j]
                values[stat_base + j] = total


def retry_limit(th, active_requests: int, pending: int) -> int:
    """How many retries may be in flight: max_retries, or the retry budget's share of the
    requests in flight (never below min_retry_concurrency)."""
    if th.budget_percent is None:
        return th.max_retries
    return max(int(th.budget_percent / 100.0 * (active_requests + pending)),
               th.min_retry_concurrency)


__all__ = [
    "create_blocks", "remove_blocks", "close_blocks", "refresh", "release_worker",
    "breaker_counts", "retry_limit", "cb_path", "rl_path", "CIRCUIT_BREAKER_REMAINING_STATS",
]
