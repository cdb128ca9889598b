"""python -m bench: run fastproxy and its peers with the same config and load, and compare.

Examples:
    python -m bench --quick                          # every scenario, under 2 minutes
    python -m bench --pin --json out.json --plot plots/
    python -m bench --scenarios small,fixed_rate --peers envoy,haproxy,nginx --rounds 5
    python -m bench --quick --compare baseline.json --max-regression 10   # CI gate

Exit status: 0; 1 when --compare finds a regression; 2 when something the run needs is
missing; 3 when a proxy failed a scenario (the others still ran; see "failures" in --json).
"""
from __future__ import annotations

import argparse
import json
import sys

from bench import report
from bench.proxies import PEERS, SetupError
from bench.runner import Options, Runner
from bench.scenarios import BY_NAME, select


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="Compare fastproxy with Envoy (and HAProxy, nginx) on this machine: same "
                    "config, same load, one worker each, interleaved segments.",
        epilog="Scenarios: " + "; ".join(f"{n}: {s.description}" for n, s in BY_NAME.items()),
    )
    ap.add_argument("--quick", action="store_true",
                    help="2 rounds of 1-s segments (the whole run takes under 2 minutes)")
    ap.add_argument("--scenarios", help="comma-separated scenario names (default: all)")
    ap.add_argument("--peers", default="envoy",
                    help=f"comma-separated peers out of {','.join(PEERS)} (default: envoy); "
                         "fastproxy always runs")
    ap.add_argument("--rounds", type=int, help="rounds of interleaved segments (default 5)")
    ap.add_argument("--duration", type=int, help="seconds per segment (default 2)")
    ap.add_argument("--idle-connections", type=int,
                    help="connections for idle_connections (default 10,000)")
    ap.add_argument("--pin", action="store_true",
                    help="pin the proxy to CPU 0 and the load generator, upstream and harness "
                         "to CPU 1 (steadier ratios; needs 2 CPUs)")
    ap.add_argument("--json", metavar="FILE", help="write all raw and summary figures as JSON")
    ap.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown")
    ap.add_argument("--plot", metavar="DIR", help="write PNG plots (needs matplotlib)")
    ap.add_argument("--compare", metavar="BASELINE.json",
                    help="exit 1 when a figure of fastproxy is worse than in this baseline")
    ap.add_argument("--max-regression", type=float, default=10.0, metavar="PCT",
                    help="tolerance of --compare in percent (default 10)")
    ap.add_argument("--compare-on", choices=("absolute", "ratio"), default="absolute",
                    help="compare fastproxy's own figures (absolute, default) or its ratios "
                         "to the peers (ratio: steadier across machines)")
    ap.add_argument("--from-json", metavar="FILE",
                    help="do not run: report (table, --markdown, --plot, --compare) from a "
                         "previous --json file")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.from_json:
        with open(a.from_json) as f:
            results = json.load(f)
    else:
        peers = [p.strip() for p in a.peers.split(",") if p.strip() and p.strip() != "fastproxy"]
        bad = [p for p in peers if p not in PEERS]
        if bad:
            print(f"unknown peer(s) {', '.join(bad)}; choose from {', '.join(PEERS)}",
                  file=sys.stderr)
            return 2
        opts = Options(
            scenarios=select(a.scenarios), peers=peers,
            rounds=a.rounds or (2 if a.quick else 5),
            duration=a.duration or (1 if a.quick else 2),
            pin=a.pin, quick=a.quick,
            idle_connections=a.idle_connections,
        )
        runner = Runner(opts, progress=lambda line: print(line, flush=True))
        try:
            results = runner.run()
        except SetupError as e:
            print(f"bench: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("bench: interrupted", file=sys.stderr)
            return 130
        print()
    print(report.text_table(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {a.json}")
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(report.markdown(results))
        print(f"wrote {a.markdown}")
    if a.plot:
        for path in report.plots(results, a.plot):
            print(f"wrote {path}")
    if a.compare:
        with open(a.compare) as f:
            baseline = json.load(f)
        problems = report.compare(results, baseline, a.max_regression, a.compare_on)
        if problems:
            print(f"REGRESSION against {a.compare}:")
            for p in problems:
                print(f"  {p}")
            return 1
        print(f"no figure worse than {a.compare} by more than {a.max_regression:g}%")
    failed = [(sc, proxy) for sc, per in (results.get("failures") or {}).items()
              for proxy in per]
    if failed:
        print("bench: incomplete: " + ", ".join(f"{sc} failed on {proxy}"
                                                for sc, proxy in failed)
              + " (exit status 3; the messages are above and in --json under 'failures')",
              file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
