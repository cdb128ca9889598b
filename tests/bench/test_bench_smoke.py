"""Smoke test of the benchmark harness (bench/): a short real run of fastproxy beside Envoy,
then the regression gate (--compare) on a doctored baseline and on itself.

Fast enough for the normal suite (about 20-30 s): one scenario, one round, 1-s segments.
FASTPROXY_BENCH_CMD, when set, replaces the fastproxy command (see bench/proxies.py).
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench import report  # noqa: E402
from bench.proxies import find_envoy, find_tool  # noqa: E402
from bench.scenarios import FIGURES, SCENARIOS  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def _missing():
    missing = [] if find_envoy() else ["envoy (run ci/setup.sh or set ENVOY_BIN)"]
    missing += [t for t in ("wrk", "nginx") if not find_tool(t)]
    return missing


def _bench(*args, timeout=90):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    missing = _missing()
    if missing:
        msg = "benchmark tools missing: " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    p = _bench("--scenarios", "small", "--rounds", "1", "--duration", "1", "--json", str(out),
               "--markdown", str(out.with_suffix(".md")))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    with open(out) as f:
        return out, json.load(f), p.stdout


def test_both_proxies_run_and_every_figure_is_produced(smoke):
    _, res, stdout = smoke
    assert list(res["proxies"]) == ["fastproxy", "envoy"]
    small = next(s for s in SCENARIOS if s.name == "small")
    segs = res["segments"]
    assert {s["proxy"] for s in segs} == {"fastproxy", "envoy"}
    for seg in segs:
        assert seg["requests"] > 100, seg
        assert seg["errors"] == 0, seg
        for key in small.figures:
            assert seg["figures"][key] is not None and seg["figures"][key] > 0, (seg["proxy"], key)
        assert 0 < seg["upstream_cpu_share"] < 2
    for key in small.figures:
        r = res["ratios"]["small"]["envoy"][key]
        assert r["min"] <= r["median"] <= r["max"]
    for key in ("cpu_model", "cores", "kernel", "python", "versions", "date"):
        assert res["platform"][key]
    assert res["platform"]["versions"]["envoy"]
    assert "proxy CPU per request" in stdout and "fastproxy/envoy" in stdout


def _doctored(res):
    """A baseline ten times better than the run on every figure of fastproxy."""
    base = copy.deepcopy(res)
    for figs in base["summary"].values():
        f = figs["fastproxy"]
        for key, v in f.items():
            if key in FIGURES and v:
                f[key] = v * 10 if FIGURES[key].higher_is_better else v / 10
    return base


def test_compare_flags_an_injected_regression(smoke, tmp_path):
    path, res, _ = smoke
    doctored = tmp_path / "better.json"
    doctored.write_text(json.dumps(_doctored(res)))
    p = _bench("--from-json", str(path), "--compare", str(doctored), "--max-regression", "10")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "REGRESSION" in p.stdout
    assert "small: fastproxy proxy CPU per request" in p.stdout
    assert "small: fastproxy requests/s" in p.stdout


def test_compare_passes_against_itself(smoke):
    path, _, _ = smoke
    p = _bench("--from-json", str(path), "--compare", str(path), "--max-regression", "0")
    assert p.returncode == 0, p.stdout + p.stderr


def test_live_run_against_its_own_baseline_with_a_generous_tolerance(smoke):
    path, _, _ = smoke
    p = _bench("--scenarios", "small", "--rounds", "1", "--duration", "1",
               "--compare", str(path), "--max-regression", "500")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


def test_ratio_mode_and_reports(smoke, tmp_path):
    _, res, _ = smoke
    assert report.compare(res, res, 0, on="ratio") == []
    worse = copy.deepcopy(res)
    worse["ratios"]["small"]["envoy"]["cpu_us_per_req"]["median"] *= 2
    assert report.compare(worse, res, 10, on="ratio")
    md = report.markdown(res)
    assert "| figure | fastproxy | envoy |" in md
    doc = report.render_docs(res, None, str(tmp_path / "performance.md"))
    assert "## Method" in doc and "## Limits" in doc and "### small" in doc
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    written = report.plots(res, str(tmp_path / "plots"))
    assert any(p.endswith("latency-small.png") for p in written)
    assert any(p.endswith("ratios-small.png") for p in written)
