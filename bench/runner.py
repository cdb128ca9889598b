"""Runs the scenarios: proxies side by side, segments interleaved A/B/A/B over rounds."""
from __future__ import annotations

import datetime
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

from bench import configs, load
from bench.measure import (PeakRss, TreeCpu, children_cpu_seconds, median, tree_rss_mb)
from bench.proxies import (PEERS, Proxy, SetupError, Upstream, find_envoy, find_tool,
                           proxy_command, raise_nofile, require, start_proxy, tool_version)
from bench.scenarios import FIGURES, Scenario


@dataclass
class Options:
    scenarios: List[Scenario]
    peers: List[str]
    rounds: int
    duration: int
    pin: bool
    quick: bool = False
    idle_connections: Optional[int] = None     # overrides the scenario's count


def _curve_at(curve: list, q: float) -> Optional[float]:
    for p, ms in curve:
        if abs(float(p) - q) < 1e-9:
            return ms
    return None


class Runner:
    def __init__(self, opts: Options, progress: Callable[[str], None] = print):
        self.o = opts
        self.progress = progress
        self.segments: List[dict] = []
        self.proxy_names = ["fastproxy"] + [p for p in opts.peers if p != "fastproxy"]
        self.proxy_cpus = self.load_cpus = None
        if opts.pin:
            if (os.cpu_count() or 1) < 2:
                progress("warning: --pin needs 2 CPUs; running unpinned")
            else:
                self.proxy_cpus, self.load_cpus = {0}, {1}
        self.n_total = sum(opts.rounds * len(self.proxy_names) for _ in opts.scenarios)
        self.n_done = 0
        self.idle_used: Optional[int] = None
        # {scenario: {proxy: message}}: a proxy that could not start, or whose segment failed,
        # is dropped from the rest of that scenario; the others go on.
        self.failures: Dict[str, Dict[str, str]] = {}

    # -- checks ---------------------------------------------------------------------------
    def check_setup(self) -> None:
        needed = {"nginx"}
        for tool in ("wrk", "h2load"):
            if any(s.tool == tool for s in self.o.scenarios):
                needed.add(tool)
        if any(s.grpc_message_bytes for s in self.o.scenarios):
            needed.add("nghttp")         # checks each proxy's answer to a gRPC call
        needed.update(p for p in self.proxy_names if p != "fastproxy")
        for name in sorted(needed):
            require(name)
        for p in self.proxy_names:
            if p != "fastproxy" and p not in PEERS:
                raise SetupError(f"unknown peer {p!r}; choose from {', '.join(PEERS)}")

    # -- one segment ----------------------------------------------------------------------
    def _segment(self, sc: Scenario, proxy: Proxy, up: Upstream, rnd: int,
                 workdir: str) -> dict:
        rss_before = tree_rss_mb(proxy.pid)
        cpu, up_cpu = TreeCpu(proxy.pid), TreeCpu(up.proc.pid)
        peak = PeakRss(proxy.pid)
        peak.start()
        ch0 = children_cpu_seconds()
        cpu.start()
        up_cpu.start()
        t0 = time.monotonic()
        extra: Dict[str, float] = {}
        try:
            if sc.tool == "wrk":
                res = load.run_wrk(sc, proxy.port, self.o.duration, workdir, self.load_cpus)
            elif sc.tool == "h2load":
                res = load.run_h2load(sc, proxy.port, self.o.duration, workdir, self.load_cpus)
            elif sc.tool == "openloop":
                res = load.run_openloop(sc, proxy.port, self.o.duration, self.load_cpus)
            elif sc.tool == "idle":
                res, extra = self._idle(sc, proxy, rss_before)
            else:
                raise SetupError(f"scenario {sc.name}: no runner for tool {sc.tool!r}")
        finally:
            peak_mb = peak.stop()
        wall = time.monotonic() - t0
        cpu_s, up_s = cpu.stop(), up_cpu.stop()
        loadgen_s = children_cpu_seconds() - ch0

        n = res.get("requests", 0)
        dur = res.get("duration_s") or wall
        fig: Dict[str, Optional[float]] = {
            "rps": n / dur if dur else None,
            "cpu_us_per_req": cpu_s * 1e6 / n if n else None,
            "peak_rss_mb": peak_mb,
            "idle_rss_mb": None,   # filled by the caller: RSS after start, before any load
        }
        curve = res.get("curve") or []
        for key, q in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99), ("p999_ms", 99.9),
                       ("max_ms", 100)):
            fig[key] = _curve_at(curve, q)
        if sc.payload_bytes and n:
            gb = n * sc.payload_bytes / 1e9
            fig["mb_per_s"] = gb * 1000.0 / dur
            fig["cpu_s_per_gb"] = cpu_s / gb
        fig.update(extra)
        seg = {
            "scenario": sc.name, "proxy": proxy.name, "round": rnd,
            "time": datetime.datetime.now().isoformat(timespec="seconds"),
            "wall_s": wall, "duration_s": dur, "requests": n,
            "errors": res.get("errors", 0), "error_detail": res.get("error_detail"),
            "proxy_cpu_s": cpu_s, "proxy_cpu_share": cpu_s / wall,
            "upstream_cpu_share": up_s / wall, "loadgen_cpu_share": loadgen_s / wall,
            "rss_before_mb": rss_before, "curve": curve,
            "client_sched_lag_ms": res.get("sched_lag_ms"),
            "figures": {k: fig.get(k) for k in sc.figures},
        }
        return seg

    def idle_count(self, sc: Scenario) -> int:
        """The scenario's idle connections, within what every proxy here can hold."""
        count = self.o.idle_connections or sc.idle_connections
        limit = configs.fd_limit() - 500
        if "haproxy" in self.proxy_names:
            limit = min(limit, configs.haproxy_maxconn() - 100)
        return min(count, limit)

    def _idle(self, sc: Scenario, proxy: Proxy, rss0: float):
        count = self.idle_count(sc)
        client = load.IdleClient(proxy.port, count, self.load_cpus)
        try:
            ok, failed = client.wait_open()
            time.sleep(0.3)
            rss1 = tree_rss_mb(proxy.pid)
            probe_ms, status = client.probe()
        finally:
            client.close()
        res = {"requests": ok, "errors": failed + (status != 200), "duration_s": None}
        extra = {"rss_per_conn_kb": (rss1 - rss0) * 1024.0 / ok if ok else None,
                 "probe_ms": probe_ms if status == 200 else None,
                 "rps": None, "cpu_us_per_req": None}
        return res, extra

    # -- the run --------------------------------------------------------------------------
    def _fail(self, sc: Scenario, name: str, exc: BaseException, rounds_left: int) -> None:
        """Record that `name` failed `sc` and drop it from the rest of the scenario."""
        msg = str(exc).strip() or type(exc).__name__
        if not isinstance(exc, (SetupError, RuntimeError)):
            msg = f"{type(exc).__name__}: {msg}"
        self.failures.setdefault(sc.name, {})[name] = msg
        self.n_total -= rounds_left
        self.progress(f"FAILED: {sc.name} on {name}: " + msg.replace("\n", "\n    "))

    def _start(self, sc: Scenario, up: Upstream, workdir: str, names: List[str],
               rounds_left: int) -> Dict[str, Proxy]:
        """Start the proxies named; one that does not come up is recorded as failed."""
        proxies: Dict[str, Proxy] = {}
        try:
            for name in names:
                try:
                    proxies[name] = start_proxy(name, sc, up.port_for(sc), workdir,
                                                self.proxy_cpus)
                except Exception as exc:
                    self._fail(sc, name, exc, rounds_left)
            time.sleep(0.2)
        except BaseException:
            for p in proxies.values():
                p.stop()
            raise
        return proxies

    def run(self) -> dict:
        self.check_setup()
        raise_nofile()
        if self.load_cpus:
            os.sched_setaffinity(0, self.load_cpus)
        started = time.time()
        with tempfile.TemporaryDirectory(prefix="fastproxy-bench-") as workdir:
            # nginx workers run as an unprivileged user when started as root: let them read.
            os.chmod(workdir, 0o755)
            up = Upstream(workdir, self.load_cpus,
                          h2=any(s.upstream_protocol == "h2" for s in self.o.scenarios))
            try:
                for sc in self.o.scenarios:
                    self._run_scenario(sc, up, workdir)
            finally:
                up.stop()
        return self._results(time.time() - started)

    def _run_scenario(self, sc: Scenario, up: Upstream, workdir: str) -> None:
        if sc.tool == "idle":
            n = self.idle_count(sc)
            self.idle_used = n
            wanted = self.o.idle_connections or sc.idle_connections
            if n < wanted:
                self.progress(f"note: {sc.name} uses {n} connections, not {wanted}: the "
                              f"file descriptor limit is {configs.fd_limit()}")
        proxies: Dict[str, Proxy] = {}
        idle: Dict[str, float] = {}
        active = list(self.proxy_names)

        def drop(name: str, exc: BaseException, rounds_left: int) -> None:
            self._fail(sc, name, exc, rounds_left)
            active.remove(name)
            p = proxies.pop(name, None)
            if p is not None:
                p.stop()

        try:
            for rnd in range(self.o.rounds):
                if rnd == 0 or sc.fresh_proxies:
                    for p in proxies.values():
                        p.stop()
                    proxies = self._start(sc, up, workdir, active, self.o.rounds - rnd)
                    active[:] = [n for n in active if n in proxies]
                    idle = {n: tree_rss_mb(p.pid) for n, p in proxies.items()}
                    if sc.warmup and rnd == 0:
                        for name in list(active):
                            try:
                                self._segment(sc, proxies[name], up, -1, workdir)
                            except Exception as exc:
                                drop(name, exc, self.o.rounds)
                if not active:
                    break
                for name in list(active):
                    proxy = proxies[name]
                    try:
                        if not proxy.proc.alive():
                            raise SetupError(f"{name} died during {sc.name}:\n"
                                             f"{proxy.proc.log_tail()}")
                        seg = self._segment(sc, proxy, up, rnd, workdir)
                    except Exception as exc:
                        drop(name, exc, self.o.rounds - rnd)
                        continue
                    if "idle_rss_mb" in seg["figures"]:
                        seg["figures"]["idle_rss_mb"] = idle[name]
                    self.segments.append(seg)
                    self.n_done += 1
                    self.progress(self._line(seg))
        finally:
            for p in proxies.values():
                p.stop()

    def _line(self, seg: dict) -> str:
        f = seg["figures"]
        parts = []
        for key in ("rps", "cpu_us_per_req", "mb_per_s", "cpu_s_per_gb", "p99_ms",
                    "rss_per_conn_kb", "probe_ms"):
            if f.get(key) is not None:
                fd = FIGURES[key]
                parts.append(f"{fd.fmt.format(f[key])} {fd.unit}" if key != "p99_ms"
                             else f"p99 {f[key]:.2f} ms")
        err = f"  errors {seg['errors']}" if seg["errors"] else ""
        lag = seg.get("client_sched_lag_ms")
        if lag and lag["p99"] > 5:
            err += f"  (client fell behind its timetable: p99 lag {lag['p99']:.1f} ms)"
        width = len(str(self.n_total))
        return (f"[{self.n_done:>{width}}/{self.n_total}] {seg['scenario']:<16} "
                f"r{seg['round'] + 1} {seg['proxy']:<9} " + "  ".join(parts) +
                f"  | proxy CPU {seg['proxy_cpu_share']:.0%} upstream {seg['upstream_cpu_share']:.0%}"
                f" loadgen {seg['loadgen_cpu_share']:.0%}{err}")

    # -- results --------------------------------------------------------------------------
    def _results(self, elapsed: float) -> dict:
        res = build_results(self.segments, self.o, self.proxy_names, elapsed,
                            pinned=self.proxy_cpus is not None)
        res["settings"]["idle_connections"] = self.idle_used
        res["settings"]["fd_limit"] = configs.fd_limit()
        res["failures"] = self.failures
        return res


def summarize(segments: List[dict], scenarios: List[str], proxy_names: List[str]):
    summary: Dict[str, Dict[str, Dict[str, Optional[float]]]] = {}
    ratios: Dict[str, Dict[str, Dict[str, dict]]] = {}
    for sc in scenarios:
        segs = [s for s in segments if s["scenario"] == sc]
        if not segs:
            continue
        figs = list(segs[0]["figures"])
        summary[sc] = {}
        for p in proxy_names:
            mine = [s for s in segs if s["proxy"] == p]
            summary[sc][p] = {k: median([s["figures"].get(k) for s in mine]) for k in figs}
            for k in ("upstream_cpu_share", "proxy_cpu_share", "loadgen_cpu_share"):
                summary[sc][p][k] = median([s[k] for s in mine])
            summary[sc][p]["errors"] = sum(s["errors"] for s in mine)
        ratios[sc] = {}
        for peer in proxy_names[1:]:
            ratios[sc][peer] = {}
            for k in figs:
                per_round = []
                for s in segs:
                    if s["proxy"] != "fastproxy":
                        continue
                    other = next((o for o in segs if o["proxy"] == peer
                                  and o["round"] == s["round"]), None)
                    a, b = s["figures"].get(k), other and other["figures"].get(k)
                    if a is not None and b:
                        per_round.append(a / b)
                if per_round:
                    ratios[sc][peer][k] = {"median": median(per_round), "min": min(per_round),
                                           "max": max(per_round), "rounds": per_round}
    return summary, ratios


def platform_info(proxy_names: List[str]) -> dict:
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for name in ("envoy", "haproxy", "nginx", "wrk", "h2load"):
        path = find_envoy() if name == "envoy" else find_tool(name)
        versions[name] = tool_version(name, path)
    try:
        from fastproxy import __version__ as fpv
        versions["fastproxy"] = fpv
    except Exception:
        versions["fastproxy"] = None
    return {
        "cpu_model": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "os": platform.platform(), "python": sys.version.split()[0], "versions": versions,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "fastproxy_command_override": bool(os.environ.get("FASTPROXY_BENCH_CMD")),
    }


def build_results(segments: List[dict], opts: Options, proxy_names: List[str],
                  elapsed: float, pinned: bool) -> dict:
    names = [s.name for s in opts.scenarios]
    summary, ratios = summarize(segments, names, proxy_names)
    return {
        "format": 1,
        "platform": platform_info(proxy_names),
        "settings": {"rounds": opts.rounds, "duration_s": opts.duration, "pinned": pinned,
                     "quick": opts.quick, "peers": proxy_names[1:], "elapsed_s": elapsed,
                     "idle_connections": opts.idle_connections},
        "proxies": {p: {"command": proxy_command(p)} for p in proxy_names},
        "scenarios": {s.name: {**{k: v for k, v in asdict(s).items()}, "figures": list(s.figures)}
                      for s in opts.scenarios},
        "segments": segments,
        "summary": summary,
        "ratios": ratios,
    }
