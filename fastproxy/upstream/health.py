"""Active health checking and the outlier detector's interval, run once per host in the main
process; results go to the shared host table every worker applies (fastproxy/_core/hoststate).

`HostHealth.create(bootstrap, shared, layout)` builds the table next to the stats block (None when
no cluster has `health_checks` or `outlier_detection`); `start()` runs, on the main process's
loop, one health-check session per host (HTTP or TCP, Envoy's thresholds, intervals and jitter),
one outlier interval per cluster (unejection, success-rate and failure-percentage ejection,
ejection-time backoff) and a short tick that delivers merged updates and watches the hosts the
workers list (DNS clusters).  Consecutive-error ejections happen in the workers, where the
errors are seen.

Envoy behaviours kept: a host of a cluster with health checks starts unhealthy and its first
successful check makes it healthy at once; a failing HTTP status marks a healthy host unhealthy
at once, network failures (connect, timeout, reset) only after `unhealthy_threshold`; the next
check is scheduled when a check ends, using `no_traffic_interval` while the cluster has never
made an upstream connection; a successful check unejects an ejected host
(`successful_active_health_check_uneject_host`).  The server turns LIVE once every static host
has had its first check, as Envoy's cluster initialization waits for it.
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
from typing import Callable, Optional

log = logging.getLogger("fastproxy.health")

TICK_S = 0.05
OK, ACTIVE_FAILURE, NETWORK_FAILURE = "ok", "active", "network"
UNCHANGED, CHANGED, CHANGE_PENDING = 0, 1, 2
MAX_RESPONSE_HEAD = 64 * 1024
FAILED_OUTLIER_CHECK = 2  # hoststate.FAILED_OUTLIER_CHECK
MAIN_MEMBER = 1 << 63  # hoststate.MAIN_MEMBER


class ClusterHealth:
    """One cluster's shared-table index and settings, plus the main process's state for it."""

    def __init__(self, model, index: int, stats_base: Optional[int]):
        from fastproxy._core.hoststate import DEFAULT_UPDATE_MERGE_WINDOW_MS, OutlierConfig

        self.model = model
        self.name = model.name
        self.index = index
        self.stats_base = stats_base
        self.hc = model.health_checks[0] if model.health_checks else None
        self.od = model.outlier_detection
        self.od_config = OutlierConfig(self.od)
        self.window_ns = int(getattr(model, "update_merge_window_ms",
                                     DEFAULT_UPDATE_MERGE_WINDOW_MS)) * 1_000_000
        self.sessions: dict[int, "HealthCheckSession"] = {}
        self.traffic = False


class OutlierDetector:
    """The outlier detector's interval work for one cluster (Envoy's DetectorImpl timer):
    unejection, success-rate and failure-percentage ejection, backoff decrement.  Time is
    passed in (ns, CLOCK_MONOTONIC) so tests can drive it."""

    def __init__(self, table, cluster: ClusterHealth, count: Callable[[str, int], None],
                 rng: Optional[random.Random] = None):
        self.table = table
        self.c = cluster
        self.count = count
        self.rng = rng or random.Random()

    def members(self):
        return [h for h in self.table.hosts(self.c.index) if h[4]]

    def tick(self, now: int) -> None:
        from fastproxy._core import hoststate as hs

        c, od, t = self.c, self.c.od, self.table
        hosts = self.members()
        changed = False
        buckets = {}
        for slot, _key, _flags, _pub, _members in hosts:
            if t.uneject_due(c.index, slot, c.od_config, now):
                changed |= t.uneject(c.index, slot, now)
            buckets[slot] = t.take_buckets(c.index, slot)
        flags = {slot: t.host(c.index, slot)["flags"] for slot, *_ in hosts}
        n = len(hosts)
        for local in (False, True):
            changed |= self._rates(hosts, flags, buckets, local, n, now)
        interval_ns = od.interval_ms * 1_000_000
        for slot, *_ in hosts:
            h = t.host(c.index, slot)
            if (not h["flags"] & hs.FAILED_OUTLIER_CHECK and h["unejected_at_ns"]
                    and now - h["unejected_at_ns"] >= interval_ns and h["backoff"]):
                t.decrement_backoff(c.index, slot)
        if changed:
            t.publish(c.index, now, c.window_ns)

    def _rates(self, hosts, flags, buckets, local: bool, n: int, now: int) -> bool:
        """Envoy's processSuccessRateEjections for the external (or local-origin) monitor."""
        from fastproxy._core import hoststate as hs

        od = self.c.od
        if n < od.success_rate_minimum_hosts and n < od.failure_percentage_minimum_hosts:
            return False
        sr_hosts, fp_hosts = [], []
        for slot, *_ in hosts:
            if flags[slot] & hs.FAILED_OUTLIER_CHECK:
                continue
            total, success = buckets[slot][2:] if local else buckets[slot][:2]
            if not total:
                continue
            rate = success * 100.0 / total
            if total >= od.success_rate_request_volume:
                sr_hosts.append((slot, rate))
            if total >= od.failure_percentage_request_volume:
                fp_hosts.append((slot, rate))
        changed = False
        if sr_hosts and len(sr_hosts) >= od.success_rate_minimum_hosts:
            mean = sum(r for _, r in sr_hosts) / len(sr_hosts)
            stdev = math.sqrt(sum((r - mean) ** 2 for _, r in sr_hosts) / len(sr_hosts))
            threshold = mean - od.success_rate_stdev_factor / 1000.0 * stdev
            ev = hs.EV_SUCCESS_RATE_LOCAL_ORIGIN if local else hs.EV_SUCCESS_RATE
            for slot, rate in sr_hosts:
                if rate < threshold:
                    self.count("outlier_detection.ejections_success_rate", 1)  # deprecated
                    changed |= self._eject(slot, ev, n, now)
        if fp_hosts and len(fp_hosts) >= od.failure_percentage_minimum_hosts:
            ev = hs.EV_FAILURE_PERCENTAGE_LOCAL_ORIGIN if local else hs.EV_FAILURE_PERCENTAGE
            for slot, rate in fp_hosts:
                if 100.0 - rate >= od.failure_percentage_threshold:
                    changed |= self._eject(slot, ev, n, now)
        return changed

    def _eject(self, slot: int, ev: int, n: int, now: int) -> bool:
        from fastproxy._core import hoststate as hs

        names = {
            hs.EV_SUCCESS_RATE: "success_rate",
            hs.EV_FAILURE_PERCENTAGE: "failure_percentage",
            hs.EV_SUCCESS_RATE_LOCAL_ORIGIN: "local_origin_success_rate",
            hs.EV_FAILURE_PERCENTAGE_LOCAL_ORIGIN: "local_origin_failure_percentage",
        }
        r = self.table.eject(self.c.index, slot, self.c.od_config, ev, n, now,
                             self.rng.getrandbits(63), self.rng.getrandbits(63))
        if r & hs.R_IGNORED:
            return False
        self.count("outlier_detection.ejections_detected_" + names[ev], 1)
        if r & hs.R_OVERFLOW:
            self.count("outlier_detection.ejections_overflow", 1)
        if r & hs.R_TOTAL:
            self.count("outlier_detection.ejections_total", 1)
        if r & hs.R_ENFORCED:
            self.count("outlier_detection.ejections_enforced_total", 1)
            self.count("outlier_detection.ejections_enforced_" + names[ev], 1)
            return True
        return False


class HealthCheckSession:
    """Active health checking of one host (Envoy's ActiveHealthCheckSession)."""

    def __init__(self, owner: "HostHealth", cluster: ClusterHealth, slot: int, key: str):
        self.owner = owner
        self.c = cluster
        self.slot = slot
        self.key = key
        address, _, port = key.rpartition(":")
        self.address = address
        self.port = int(port)
        self.first_check = True
        self.checked = False
        self.num_healthy = 0
        self.num_unhealthy = 0
        self.reader = None
        self.writer = None
        self.task: Optional[asyncio.Task] = None

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        hc = self.c.hc
        if hc.initial_jitter_ms:
            await asyncio.sleep(self.owner.rng.randrange(hc.initial_jitter_ms) / 1000.0)
        while True:
            self.owner.count(self.c, "health_check.attempt")
            try:
                result = await asyncio.wait_for(self.check(), hc.timeout_ms / 1000.0)
            except asyncio.CancelledError:
                raise
            except Exception:  # timeout, refused, reset, closed early, unparsable answer
                self.close()
                result = NETWORK_FAILURE
            healthy, transition = self.apply(result)
            await asyncio.sleep(self.interval_ms(healthy, transition) / 1000.0)

    def apply(self, result: str):
        """Envoy's handleSuccess / setUnhealthy; returns (healthy now, transition)."""
        from fastproxy._core import hoststate as hs

        t, c, owner = self.owner.table, self.c, self.owner
        failed = bool(t.host(c.index, self.slot)["flags"] & hs.FAILED_ACTIVE_HC)
        transition = UNCHANGED
        if result == OK:
            self.num_unhealthy = 0
            if failed:
                self.num_healthy += 1
                if self.first_check or self.num_healthy == c.hc.healthy_threshold:
                    t.set_flag(c.index, self.slot, hs.FAILED_ACTIVE_HC, False)
                    transition = CHANGED
                else:
                    transition = CHANGE_PENDING
            owner.count(c, "health_check.success")
            healthy = True
        else:
            self.num_healthy = 0
            if not failed:
                self.num_unhealthy += 1
                if result == ACTIVE_FAILURE or self.num_unhealthy == c.hc.unhealthy_threshold:
                    t.set_flag(c.index, self.slot, hs.FAILED_ACTIVE_HC, True)
                    transition = CHANGED
                else:
                    transition = CHANGE_PENDING
            owner.count(c, "health_check.failure")
            if result == NETWORK_FAILURE:
                owner.count(c, "health_check.network_failure")
            healthy = False
        self.first_check = False
        now = owner.now()
        unejected = False
        if (healthy and c.od is not None and c.od.successful_active_health_check_uneject_host
                and t.host(c.index, self.slot)["flags"] == hs.FAILED_OUTLIER_CHECK):
            unejected = t.uneject(c.index, self.slot, now)
        if transition == CHANGED or unejected:
            t.publish(c.index, now, c.window_ns, force=not owner.initialized)
        if not self.checked:
            self.checked = True
            owner.first_check_done()
        owner.refresh_healthy_gauge(c)
        return healthy, transition

    def interval_ms(self, healthy: bool, transition: int) -> int:
        """Envoy's HealthCheckerImplBase::interval."""
        hc = self.c.hc
        if self.owner.has_traffic(self.c):
            if not healthy:
                unhealthy = hc.unhealthy_interval_ms if hc.unhealthy_interval_ms is not None \
                    else hc.interval_ms
                edge = hc.unhealthy_edge_interval_ms if hc.unhealthy_edge_interval_ms is not None \
                    else unhealthy
                base = edge if transition == CHANGE_PENDING else unhealthy
            else:
                edge = hc.healthy_edge_interval_ms if hc.healthy_edge_interval_ms is not None \
                    else hc.interval_ms
                base = edge if transition == CHANGE_PENDING else hc.interval_ms
        elif healthy and hc.no_traffic_healthy_interval_ms is not None:
            base = hc.no_traffic_healthy_interval_ms
        else:
            base = hc.no_traffic_interval_ms
        rng = self.owner.rng
        jitter = 0
        if hc.interval_jitter_percent > 0:
            span = hc.interval_jitter_percent * base // 100
            if span > 0:
                jitter += rng.randrange(span)
        if hc.interval_jitter_ms > 0:
            jitter += rng.randrange(hc.interval_jitter_ms)
        return base + jitter

    # -- checks ----------------------------------------------------------------------------------

    async def _connect(self):
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(
                self.address, self.port, limit=MAX_RESPONSE_HEAD)

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.transport.abort()
            except Exception:
                pass
        self.reader = self.writer = None

    async def check(self) -> str:
        if self.c.hc.kind == "http":
            return await self._http()
        return await self._tcp()

    def _http_request(self) -> bytes:
        hc = self.c.hc
        host = hc.host or self.c.name
        headers = [("host", host), ("user-agent", "Envoy/HC")]
        headers = [(k, v) for k, v in headers if k not in hc.request_headers_to_remove]
        for opt in hc.request_headers:
            if opt.append_action != 0:  # not APPEND_IF_EXISTS_OR_ADD: replace
                if opt.append_action == 1 and any(k == opt.key for k, _ in headers):
                    continue  # ADD_IF_ABSENT
                if opt.append_action == 3 and not any(k == opt.key for k, _ in headers):
                    continue  # OVERWRITE_IF_EXISTS
                headers = [(k, v) for k, v in headers if k != opt.key]
            if opt.value or opt.keep_empty_value:
                headers.append((opt.key, opt.value))
        lines = ["%s %s HTTP/1.1" % (hc.method, hc.path or "/")]
        lines += ["%s: %s" % kv for kv in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _http(self) -> str:
        hc = self.c.hc
        await self._connect()
        reader, writer = self.reader, self.writer
        writer.write(self._http_request())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status = lines[0].split(" ", 2)[:2]
        status = int(status)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        if hc.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            pass
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                await reader.readexactly(size + 2)
        elif "content-length" in headers:
            await reader.readexactly(int(headers["content-length"]))
        else:
            await reader.read()  # delimited by the close
            keep = False
        if not keep or not hc.reuse_connection:
            self.close()
        ok = any(start <= status < end for start, end in hc.expected_statuses)
        return OK if ok else ACTIVE_FAILURE

    async def _tcp(self) -> str:
        hc = self.c.hc
        await self._connect()
        if not hc.receive:
            self.close()  # connecting was the check
            return OK
        if hc.send:
            self.writer.write(hc.send)
        buf = b""
        while True:
            data = await self.reader.read(65536)
            if not data:
                raise EOFError("closed before the expected payload")
            buf += data
            pos = 0
            for segment in hc.receive:
                pos = buf.find(segment, pos)
                if pos < 0:
                    break
                pos += len(segment)
            else:
                if not hc.reuse_connection:
                    self.close()
                return OK


class HostHealth:
    """The main process's side of host state; see the module docstring."""

    def __init__(self, table, clusters: list[ClusterHealth], shared, layout):
        self.table = table
        self.clusters = clusters
        self.shared = shared
        self.layout = layout
        self.rng = random.Random()
        self.tasks: list[asyncio.Task] = []
        self.initialized = not any(c.hc for c in clusters)
        self._pending_first = 0
        self._on_initialized: Optional[Callable[[], None]] = None

    @classmethod
    def create(cls, bootstrap, shared, layout) -> Optional["HostHealth"]:
        models = [c for c in bootstrap.clusters
                  if c.health_checks or c.outlier_detection is not None]
        if not models:
            return None
        from fastproxy._core import hoststate as hs

        specs = [(m.name, hs.capacity_for(m), layout.cluster_bases.get(m.name))
                 for m in models]
        table = hs.SharedHostTable.create(hs.table_path(shared.path), specs)
        clusters = [ClusterHealth(m, i, specs[i][2]) for i, m in enumerate(models)]
        self = cls(table, clusters, shared, layout)
        for c in clusters:
            if c.model.type != "STATIC":
                continue
            initial = hs.FAILED_ACTIVE_HC if c.hc else 0
            for e in c.model.endpoints:
                slot = table.find(c.index, hs.host_key(e.address.address, e.address.port),
                                  True, initial)
                if slot >= 0:
                    table.add_members(c.index, slot, hs.MAIN_MEMBER)
        return self

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def now() -> int:
        from fastproxy._core.hoststate import now_ns

        return now_ns()

    def count(self, cluster: ClusterHealth, name: str, delta: int = 1) -> None:
        full = "cluster.%s.%s" % (cluster.name, name)
        if full in self.layout.index:
            self.shared.add(0, full, delta)

    def set_gauge(self, cluster: ClusterHealth, name: str, value: int) -> None:
        full = "cluster.%s.%s" % (cluster.name, name)
        if full in self.layout.index:
            self.shared.set_gauge(0, full, value)

    def has_traffic(self, cluster: ClusterHealth) -> bool:
        """Whether the cluster ever made an upstream connection (Envoy: upstream_cx_total used)."""
        if not cluster.traffic:
            name = "cluster.%s.upstream_cx_total" % cluster.name
            i = self.layout.index.get(name)
            if i is not None:
                values = getattr(self.shared, "_values", None)
                if values is None:
                    cluster.traffic = self.shared.sum()[i] > 0
                else:
                    n = self.shared.num_stats
                    cluster.traffic = any(values[s * n + i] for s in range(self.shared.num_slots))
        return cluster.traffic

    def refresh_healthy_gauge(self, cluster: ClusterHealth) -> None:
        from fastproxy._core import hoststate as hs

        if cluster.hc is None:
            return
        healthy = sum(1 for slot, _k, flags, _p, members in self.table.hosts(cluster.index)
                      if members and slot in cluster.sessions
                      and not flags & hs.FAILED_ACTIVE_HC)
        self.set_gauge(cluster, "health_check.healthy", healthy)

    def refresh_stats(self) -> None:
        """Gauges derived from the table (called by the tick and before the admin reads)."""
        from fastproxy._core import hoststate as hs

        for c in self.clusters:
            if c.od is not None:
                ejected = sum(1 for _s, _k, flags, _p, members in self.table.hosts(c.index)
                              if members and flags & hs.FAILED_OUTLIER_CHECK)
                self.set_gauge(c, "outlier_detection.ejections_active", ejected)

    def first_check_done(self) -> None:
        self._pending_first -= 1
        if self._pending_first <= 0 and not self.initialized:
            self.initialized = True
            now = self.now()
            for c in self.clusters:
                self.table.publish(c.index, now, c.window_ns, force=True)
            if self._on_initialized is not None:
                self._on_initialized()

    # -- running ---------------------------------------------------------------------------------

    def start(self, on_initialized: Optional[Callable[[], None]] = None) -> None:
        self._on_initialized = on_initialized
        loop = asyncio.get_running_loop()
        for c in self.clusters:
            if c.hc is not None:
                self._pending_first += sum(1 for h in self.table.hosts(c.index) if h[4] & MAIN_MEMBER)
            if c.od is not None:
                self.tasks.append(loop.create_task(self._outlier_loop(c)))
        self._sync_sessions()
        if self._pending_first == 0:
            self.initialized = True
        self.tasks.append(loop.create_task(self._tick_loop()))

    def _sync_sessions(self) -> None:
        """Sessions for the hosts some process lists; none for hosts nobody lists any more."""
        loop = asyncio.get_running_loop()
        now = None
        for c in self.clusters:
            for slot, key, flags, _pub, members in self.table.hosts(c.index):
                if members and c.hc is not None and slot not in c.sessions:
                    s = HealthCheckSession(self, c, slot, key)
                    s.checked = not members & MAIN_MEMBER  # only static hosts gate start-up
                    c.sessions[slot] = s
                    s.task = loop.create_task(s.run())
                elif not members:
                    s = c.sessions.pop(slot, None)
                    if s is not None:
                        s.task.cancel()
                        s.close()
                    if c.od is not None and flags & FAILED_OUTLIER_CHECK:
                        now = now or self.now()
                        self.table.uneject(c.index, slot, now)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                now = self.now()
                for c in self.clusters:
                    self.table.publish_due(c.index, now)
                self._sync_sessions()
                self.refresh_stats()
            except Exception:  # keep ticking; a bug here must not stop health checking
                log.exception("host health tick failed")

    async def _outlier_loop(self, c: ClusterHealth) -> None:
        detector = OutlierDetector(self.table, c, lambda name, d: self.count(c, name, d), self.rng)
        loop = asyncio.get_running_loop()
        interval = c.od.interval_ms / 1000.0
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval
            try:
                detector.tick(self.now())
                self.refresh_stats()
            except Exception:
                log.exception("outlier detection interval failed")

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for c in self.clusters:
            for s in c.sessions.values():
                if s.task is not None:
                    s.task.cancel()
                s.close()
        await asyncio.gather(*self.tasks, *(s.task for c in self.clusters
                                            for s in c.sessions.values() if s.task),
                             return_exceptions=True)

    def close(self) -> None:
        self.table.unlink()
