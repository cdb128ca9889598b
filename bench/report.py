"""Renders results: the stdout table, Markdown, PNG plots, the regression check and
docs/performance.md.

    python -m bench.report RESULTS.json [--out docs/performance.md] [--plots DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, List, Optional, Tuple

from bench.scenarios import FIGURES

SHARES = ("proxy_cpu_share", "upstream_cpu_share", "loadgen_cpu_share")
SHARE_LABELS = {"proxy_cpu_share": "proxy CPU (share of a core)",
                "upstream_cpu_share": "upstream nginx CPU (share of a core)",
                "loadgen_cpu_share": "load generator CPU (share of a core)"}


def _fmt(key: str, v: Optional[float]) -> str:
    if v is None:
        return "–"
    if key in SHARES:
        return f"{v:.0%}"
    return FIGURES[key].fmt.format(v)


def _ratio(r: Optional[dict]) -> str:
    if not r:
        return "–"
    return f"{r['median']:.2f} [{r['min']:.2f}–{r['max']:.2f}]"


def failures(results: dict, sc: str) -> Dict[str, str]:
    """{proxy: message} of the proxies that failed scenario sc (could not start, answered
    wrongly, or a segment failed); they have no figures, or only those of earlier rounds."""
    return (results.get("failures") or {}).get(sc, {})


def failure_line(msg: str, limit: int = 400) -> str:
    """A failure message in one line, shortened: its first line, and when that only introduces
    the proxy's log tail ("fastproxy exited with 1:"), the last line of that tail too."""
    lines = [line.strip() for line in msg.strip().splitlines() if line.strip()]
    if not lines:
        return "failed"
    line = lines[0]
    if line.endswith(":") and len(lines) > 1:
        line += " … " + lines[-1]
    return line if len(line) <= limit else line[:limit - 1] + "…"


def shown(results: dict) -> List[str]:
    """The scenarios to report, in run order: those with figures or with failures."""
    return [sc for sc in results["scenarios"]
            if sc in results["summary"] or failures(results, sc)]


def rows(results: dict, sc: str) -> Tuple[List[str], List[List[str]]]:
    """Header and rows of one scenario's table."""
    proxies = list(results["proxies"])
    peers = proxies[1:]
    summ = results["summary"].get(sc) or {}
    summ = {p: summ.get(p) or {} for p in proxies}
    rat = results["ratios"].get(sc, {})
    header = ["figure"] + proxies + [f"fastproxy/{p} [min–max]" for p in peers]
    out = []
    for key in results["scenarios"][sc]["figures"]:
        fd = FIGURES[key]
        label = f"{fd.label} ({fd.unit}, {'higher' if fd.higher_is_better else 'lower'} is better)"
        out.append([label] + [_fmt(key, summ[p].get(key)) for p in proxies]
                   + [_ratio(rat.get(p, {}).get(key)) for p in peers])
    for key in SHARES:
        if any(summ[p].get(key) is not None for p in proxies):
            out.append([SHARE_LABELS[key]] + [_fmt(key, summ[p].get(key)) for p in proxies]
                       + [""] * len(peers))
    errs = [summ[p].get("errors") or 0 for p in proxies]
    failed = failures(results, sc)
    if any(errs) or failed:
        out.append(["errors (all rounds)"]
                   + [f"{e} + FAILED" if p in failed and e else "FAILED" if p in failed
                      else str(e) for p, e in zip(proxies, errs)]
                   + [""] * len(peers))
    return header, out


def _title(results: dict, sc: str) -> str:
    return f"{sc}: {results['scenarios'][sc]['description']}"


def text_table(results: dict) -> str:
    s = results["settings"]
    lines = [f"fastproxy vs {', '.join(s['peers']) or '(no peer)'}: {s['rounds']} round(s) × "
             f"{s['duration_s']} s segments, {'pinned' if s['pinned'] else 'unpinned'}; "
             "medians over rounds; ratios are medians of per-round ratios [min–max]", ""]
    for sc in shown(results):
        header, body = rows(results, sc)
        widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
        lines.append(_title(results, sc))
        fmt_row = lambda r: "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                                      for i, c in enumerate(r))
        lines.append(fmt_row(header))
        lines.append("  ".join("-" * w for w in widths))
        lines.extend(fmt_row(r) for r in body)
        for proxy, msg in failures(results, sc).items():
            lines.append(f"FAILED on {proxy}: {failure_line(msg)}")
        lines.append("")
    return "\n".join(lines)


def markdown_tables(results: dict, heading: str = "###") -> str:
    out = []
    for sc in shown(results):
        header, body = rows(results, sc)
        out.append(f"{heading} {sc}\n\n{results['scenarios'][sc]['description']}\n")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        out.extend("| " + " | ".join(r) + " |" for r in body)
        out.append("")
        for proxy, msg in failures(results, sc).items():
            out.append(f"**Failed on {proxy}:** {failure_line(msg)}\n")
    return "\n".join(out)


def markdown(results: dict) -> str:
    s, p = results["settings"], results["platform"]
    head = (f"fastproxy vs {', '.join(s['peers'])}: {s['rounds']} round(s) × {s['duration_s']} s "
            f"segments, {'pinned' if s['pinned'] else 'unpinned'}, on {p.get('cpu_model')} "
            f"({p.get('cores')} cores), {p.get('date')}.\n\n")
    return head + markdown_tables(results)


# ---------------------------------------------------------------------------------------------
# Regression check
# ---------------------------------------------------------------------------------------------

def compare(results: dict, baseline: dict, max_regression: float,
            on: str = "absolute") -> List[str]:
    """Figures of fastproxy worse than the baseline by more than max_regression percent.

    on="absolute" compares fastproxy's medians; on="ratio" compares its ratios to each peer
    (steadier across machines and runs, since the peer drifts with the machine)."""
    limit = max_regression / 100.0
    problems = []

    def check(what: str, key: str, cur: Optional[float], base: Optional[float]) -> None:
        if cur is None or base is None or base == 0:
            return
        fd = FIGURES[key]
        change = (base - cur) / base if fd.higher_is_better else (cur - base) / base
        if change > limit:
            problems.append(f"{what} {fd.label}: {cur:.4g} vs baseline {base:.4g} {fd.unit} "
                            f"({change:+.1%} worse, limit {max_regression:g}%)")

    # A scenario that fastproxy failed in this run but has figures in the baseline.
    for sc in results.get("scenarios", {}):
        msg = failures(results, sc).get("fastproxy")
        base = baseline.get("summary", {}).get(sc, {}).get("fastproxy", {})
        if msg and any(v is not None for k, v in base.items() if k in FIGURES):
            problems.append(f"{sc}: fastproxy failed: {failure_line(msg)}")

    for sc, per in results["summary"].items():
        if on == "ratio":
            for peer, figs in results["ratios"].get(sc, {}).items():
                base_figs = baseline.get("ratios", {}).get(sc, {}).get(peer, {})
                for key, r in figs.items():
                    b = base_figs.get(key)
                    check(f"{sc}: fastproxy/{peer}", key, r["median"], b and b["median"])
        else:
            base = baseline.get("summary", {}).get(sc, {}).get("fastproxy", {})
            for key in results["scenarios"][sc]["figures"]:
                check(f"{sc}: fastproxy", key, per["fastproxy"].get(key), base.get(key))
    return problems


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------

def _nines(q: float) -> float:
    return -math.log10(max(1.0 - q / 100.0, 1e-5))


def plots(results: dict, outdir: str) -> List[str]:
    """Latency distributions per scenario, ratio bars per scenario, and an overview."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib")
    os.makedirs(outdir, exist_ok=True)
    proxies = list(results["proxies"])
    colors = dict(zip(proxies, ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"]))
    written = []
    for sc in results["summary"]:
        segs = [s for s in results["segments"] if s["scenario"] == sc and s.get("curve")]
        if segs:
            fig, ax = plt.subplots(figsize=(7, 4))
            for p in proxies:
                first = True
                for s in (s for s in segs if s["proxy"] == p):
                    pts = [(q, ms) for q, ms in s["curve"] if q < 100 and ms is not None]
                    ax.plot([_nines(q) for q, _ in pts], [ms for _, ms in pts],
                            color=colors[p], alpha=0.8, lw=1.2, label=p if first else None)
                    first = False
            ticks = [0, 50, 90, 99, 99.9, 99.99]
            ax.set_xticks([_nines(q) for q in ticks])
            ax.set_xticklabels([f"p{q:g}" for q in ticks])
            ax.set_yscale("log")
            ax.set_ylabel("latency (ms)")
            ax.set_title(f"{sc}: latency by percentile (one line per round)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
            path = os.path.join(outdir, f"latency-{sc}.png")
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
        rat = results["ratios"].get(sc, {})
        keys = [k for k in results["scenarios"][sc]["figures"]
                if any(k in rat[p] for p in rat)]
        if keys:      # none when fastproxy (or every peer) failed the scenario
            fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(keys) + 2), 4))
            width = 0.8 / max(len(rat), 1)
            for i, (peer, figs) in enumerate(rat.items()):
                xs, ys, lo, hi = [], [], [], []
                for j, k in enumerate(keys):
                    if k in figs:
                        r = figs[k]
                        xs.append(j + i * width)
                        ys.append(r["median"])
                        lo.append(r["median"] - r["min"])
                        hi.append(r["max"] - r["median"])
                ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, color=colors.get(peer),
                       label=f"fastproxy/{peer}")
            ax.axhline(1.0, color="black", lw=0.8)
            ax.set_xticks([j + width * (len(rat) - 1) / 2 for j in range(len(keys))])
            ax.set_xticklabels([FIGURES[k].label for k in keys], rotation=30, ha="right",
                               fontsize=8)
            ax.set_ylabel("ratio (median, bars: min–max over rounds)")
            ax.set_title(f"{sc}: fastproxy / peer")
            ax.legend()
            fig.tight_layout()
            path = os.path.join(outdir, f"ratios-{sc}.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# docs/performance.md
# ---------------------------------------------------------------------------------------------

METHOD = """\
- **One worker each.** fastproxy (`--concurrency 1`) and Envoy (`--concurrency 1`) get the same
  generated Envoy v3 bootstrap (one listener, `http_connection_manager` with a route table and the
  router filter, a STATIC cluster, admin), differing only in ports. HAProxy (`nbthread 1`) and
  nginx (`worker_processes 1`) get equivalent configs of their own.
- **Upstream:** nginx with one worker, on loopback: 12 bytes for small requests, 1 MiB on `/1m`,
  accepts 1 MiB uploads on `/upload`; for `grpc_unary` the same process also serves h2c on a
  second port. Its CPU share is reported so it can be seen not to be the bottleneck.
- **Interleaved segments.** All proxies stay running; each round measures every proxy in turn
  for one short segment (A/B/A/B...), after one unmeasured warm-up segment each. Figures are
  medians over rounds; ratios are the medians of the per-round ratios, with their min–max, so
  that drift of the machine during the run cancels.
- **CPU per request** (the primary figure): utime+stime of the proxy's whole process tree, read
  from `/proc/<pid>/stat` of the process and its descendants before and after the segment,
  divided by the requests completed in it. For bulk transfers: CPU seconds per GB of payload.
- **Memory:** sum of VmRSS over the proxy's process tree: before load (idle), peak during a
  segment (sampled every 50 ms), and for idle connections the growth per connection.
- **Load:** wrk (closed loop) for most HTTP/1.1 scenarios; h2load (nghttp2, closed loop, HTTP/2
  with prior knowledge, 4 connections × 10 concurrent streams, latency from its per-request
  log) for `h2_multiplexed` and `grpc_unary`; an open-loop client (timetable of sends,
  latency counted from each scheduled send time, so a stall is not hidden by coordinated
  omission) for `fixed_rate`; a client holding idle keep-alive connections for
  `idle_connections`.
- **gRPC:** `grpc_unary` sends one 16-byte length-prefixed message per POST
  (`content-type: application/grpc`, `te: trailers`) through a cluster with
  `http2_protocol_options` to an h2c nginx that reads the request, then answers 200, one
  16-byte message and the trailer `grpc-status: 0`. Before measuring, each proxy's answer to one
  call is checked with `nghttp -v` (h2load does not look at trailers): a proxy that drops the
  trailer or changes the message fails the scenario.
- **Pinning** (`--pin`): the proxy on CPU 0, the load generator, the upstream and the harness on
  CPU 1. The proxy then has a core of its own and does not compete with wrk, which makes the
  ratios much steadier; without it, the four processes share the cores as the scheduler likes.
"""

LIMITS = """\
- Loopback only: no network latency, no NIC, no TLS; this measures the proxies' own CPU cost,
  not what a client across a network would see.
- Absolute numbers drift between runs and machines (shared and virtual machines especially);
  compare ratios from one run, not numbers from different runs.
- On two cores the load generator and the upstream share one core; at saturation the proxy's
  requests/s may be bounded by them (see the CPU shares), while CPU per request stays meaningful.
- VmRSS summed over processes counts shared pages once per process, which overstates
  multi-process proxies' memory.
- Closed-loop latency (wrk) is measured from the actual send, so it understates stalls; the
  `fixed_rate` scenario is the one to read for tail latency.
- Short segments have few samples above p99.9: the max and p99.9 of a 1–2 s segment are noisy.
"""


def render_docs(results: dict, plot_dir: Optional[str], doc_path: str) -> str:
    p, s = results["platform"], results["settings"]
    v = p.get("versions", {})
    peer_names = ", ".join(f"{x} {v.get(x) or ''}".strip() for x in s["peers"])
    lines = ["# Performance", "",
             "fastproxy measured side by side with "
             f"{peer_names} by the benchmark "
             "harness in `bench/` (`python -m bench`). Regenerate this page with "
             "`python -m bench --json results.json --plot docs/perf` followed by "
             "`python -m bench.report results.json --out docs/performance.md --plots docs/perf`.",
             "", "## Machine", "",
             f"- CPU: {p.get('cpu_model')} ({p.get('cores')} cores)",
             f"- Kernel: {p.get('kernel')}; Python {p.get('python')}",
             "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
             f"- Date: {p.get('date')}",
             f"- Run: {s['rounds']} rounds × {s['duration_s']} s segments, "
             f"{'pinned (proxy on CPU 0, everything else on CPU 1)' if s['pinned'] else 'unpinned'}",
             ""]
    if p.get("fastproxy_command_override"):
        lines += ["> Note: fastproxy's command was replaced (FASTPROXY_BENCH_CMD) in this run.", ""]
    lines += ["## Results", "",
              "Medians over rounds; `fastproxy/peer` is the median of the per-round ratios with "
              "their min–max. Below 1 is better for fastproxy on lower-is-better figures "
              "(CPU, latency, memory), above 1 on higher-is-better ones (requests/s, MB/s).", ""]
    doc_dir = os.path.dirname(os.path.abspath(doc_path))
    for sc in shown(results):
        lines.append(markdown_tables({**results, "scenarios": {sc: results["scenarios"][sc]}},
                                     heading="###"))
        if plot_dir:
            for kind in ("latency", "ratios"):
                img = os.path.join(plot_dir, f"{kind}-{sc}.png")
                if os.path.exists(img):
                    rel = os.path.relpath(img, doc_dir)
                    lines += [f"![{sc} {kind}]({rel})", ""]
    lines += ["## Where the time goes", "",
              "A profile of fastproxy's worker under this load (perf, kernel and user space) and "
              "the micro-benchmarks of the compiled core are in [profile.md](profile.md).", ""]
    lines += ["## Method", "", METHOD, "## Limits", "", LIMITS,
              "## Commands", ""]
    for name, info in results["proxies"].items():
        lines.append(f"- {name}: `{info['command']}`")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.report",
                                 description="Render docs/performance.md from a results JSON.")
    ap.add_argument("results")
    ap.add_argument("--out", default="docs/performance.md")
    ap.add_argument("--plots", help="write the plots to this directory and link them")
    a = ap.parse_args(argv)
    with open(a.results) as f:
        results = json.load(f)
    if a.plots:
        plots(results, a.plots)
    text = render_docs(results, a.plots, a.out)
    with open(a.out, "w") as f:
        f.write(text)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
