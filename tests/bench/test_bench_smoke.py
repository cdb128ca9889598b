"""Smoke test of the benchmark harness (bench/): a short real run of fastproxy beside Envoy
(HTTP/1.1 with wrk and HTTP/2 with h2load), a gRPC run, then the regression gate (--compare) on
a doctored baseline and on itself.  Without running anything: the generated configs of the
HTTP/2 scenarios, the parsing of h2load's and nghttp's output, and a proxy failing a scenario.

Fast enough for the normal suite (about 30-40 s on 2 cores): one round, 1-s segments.
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

from bench import configs, load, report, runner  # noqa: E402
from bench.measure import CURVE_PCTS  # noqa: E402
from bench.proxies import Proxy, SetupError, find_envoy, find_tool  # noqa: E402
from bench.scenarios import BY_NAME, FIGURES, SCENARIOS  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def _missing():
    missing = [] if find_envoy() else ["envoy (run ci/setup.sh or set ENVOY_BIN)"]
    missing += [t for t in ("wrk", "nginx", "h2load", "nghttp") if not find_tool(t)]
    return missing


def _need_tools():
    missing = _missing()
    if missing:
        msg = "benchmark tools missing: " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def _bench(*args, timeout=90):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    _need_tools()
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    p = _bench("--scenarios", "small,h2_multiplexed", "--rounds", "1", "--duration", "1",
               "--json", str(out), "--markdown", str(out.with_suffix(".md")))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    with open(out) as f:
        return out, json.load(f), p.stdout


def test_both_proxies_run_and_every_figure_is_produced(smoke):
    _, res, stdout = smoke
    assert list(res["proxies"]) == ["fastproxy", "envoy"]
    assert not res["failures"], res["failures"]
    segs = res["segments"]
    assert {(s["scenario"], s["proxy"]) for s in segs} == {
        (sc, p) for sc in ("small", "h2_multiplexed") for p in ("fastproxy", "envoy")}
    for seg in segs:
        sc = BY_NAME[seg["scenario"]]
        assert seg["requests"] > 100, seg
        assert seg["errors"] == 0, seg
        for key in sc.figures:
            assert seg["figures"][key] is not None and seg["figures"][key] > 0, (
                sc.name, seg["proxy"], key)
        assert 0 < seg["upstream_cpu_share"] < 2
    for sc in ("small", "h2_multiplexed"):
        for key in BY_NAME[sc].figures:
            r = res["ratios"][sc]["envoy"][key]
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


def test_grpc_unary_runs_through_envoy_and_a_failing_proxy_is_reported(tmp_path):
    """grpc_unary end to end (h2c upstream, the gRPC check); fastproxy may not pass it yet
    (HTTP/2 upstreams are being built): then the run reports it and goes on with Envoy."""
    _need_tools()
    out = tmp_path / "grpc.json"
    p = _bench("--scenarios", "grpc_unary", "--rounds", "1", "--duration", "1",
               "--json", str(out))
    assert p.returncode in (0, 3), p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(out.read_text())
    segs = {s["proxy"]: s for s in res["segments"]}
    assert segs["envoy"]["requests"] > 100 and segs["envoy"]["errors"] == 0, segs["envoy"]
    failed = res["failures"].get("grpc_unary", {})
    assert "envoy" not in failed, failed
    if p.returncode == 3:
        assert failed.get("fastproxy"), res["failures"]
        assert "FAILED on fastproxy" in p.stdout and "incomplete" in p.stderr
    else:
        assert segs["fastproxy"]["requests"] > 100 and segs["fastproxy"]["errors"] == 0


# ---------------------------------------------------------------------------------------------
# Without running anything: configs, parsing, failure handling
# ---------------------------------------------------------------------------------------------

H2LOAD_OUT = """starting benchmark...
spawning thread #0: 4 total client(s). Timing-based test with 0s of warm-up time and 1s of main duration for measurements.
Application protocol: h2c

finished in 1.00s, 123520.00 req/s, 13.31MB/s
requests: 123520 total, 123560 started, 123520 done, 123519 succeeded, 1 failed, 0 errored, 0 timeout
status codes: 123519 2xx, 0 3xx, 0 4xx, 1 5xx
traffic: 13.31MB (13957956) total, 6.24MB (6546560) headers (space savings 49.52%), 2.47MB (2593920) data
                     min         max         mean         sd        +/- sd
time for request:       19us      2.34ms       314us       125us    80.61%
time for connect:       59us        96us        81us        16us    75.00%
time to 1st byte:      332us       778us       560us       192us    50.00%
req/s           :   30811.61    30946.13    30876.22       66.22    75.00%
"""

# nghttp -v (nghttp2 1.52) through Envoy to the gRPC-shaped upstream, trimmed.
NGHTTP_GRPC_OK = """[  0.000] Connected
[  0.000] send HEADERS frame <length=82, flags=0x24, stream_id=13>
          :method: POST
          :path: /bench.Echo/Unary
          content-type: application/grpc
          te: trailers
[  0.000] send DATA frame <length=21, flags=0x01, stream_id=13>
          ; END_STREAM
[  0.001] recv SETTINGS frame <length=24, flags=0x00, stream_id=0>
          (niv=4)
[  0.001] recv (stream_id=13) :status: 200
[  0.001] recv (stream_id=13) server: envoy
[  0.001] recv (stream_id=13) content-type: application/grpc
[  0.001] recv (stream_id=13) content-length: 21
[  0.001] recv HEADERS frame <length=74, flags=0x04, stream_id=13>
          ; END_HEADERS
          ; First response header
\x00\x00\x00\x00\x10fastproxy-bench![  0.001] recv DATA frame <length=21, flags=0x00, stream_id=13>
[  0.001] recv (stream_id=13) grpc-status: 0
[  0.001] recv HEADERS frame <length=12, flags=0x05, stream_id=13>
          ; END_STREAM | END_HEADERS
[  0.001] send GOAWAY frame <length=8, flags=0x00, stream_id=0>
"""


def _cluster(boot):
    return boot["static_resources"]["clusters"][0]


def _codec(boot):
    return (boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["codec_type"])


def test_h2_scenarios_are_in_the_table():
    h2m, grpc = BY_NAME["h2_multiplexed"], BY_NAME["grpc_unary"]
    for sc in (h2m, grpc):
        assert sc.tool == "h2load" and sc.protocol == "h2"
        assert (sc.connections, sc.streams, sc.threads) == (4, 10, 1)
        assert "cpu_us_per_req" in sc.figures and "p99_ms" in sc.figures
    assert h2m.upstream_protocol == "http1" and h2m.path == "/" and h2m.method == "GET"
    assert grpc.upstream_protocol == "h2" and grpc.method == "POST"
    assert grpc.grpc_message_bytes == 16
    assert set(grpc.headers) == {"content-type: application/grpc", "te: trailers"}
    assert [s.name for s in SCENARIOS][-2:] == ["h2_multiplexed", "grpc_unary"]


def test_bootstraps_of_the_h2_scenarios():
    small = configs.envoy_bootstrap(BY_NAME["small"], 1000, 1001, 1002)
    h2m = configs.envoy_bootstrap(BY_NAME["h2_multiplexed"], 1000, 1001, 1002)
    grpc = configs.envoy_bootstrap(BY_NAME["grpc_unary"], 1000, 1001, 1003)
    assert _codec(small) == "HTTP1"
    assert _codec(h2m) == "AUTO" and _codec(grpc) == "AUTO"
    assert "typed_extension_protocol_options" not in _cluster(small)
    assert "typed_extension_protocol_options" not in _cluster(h2m)
    name = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    assert _cluster(grpc)["typed_extension_protocol_options"] == {name: {
        "@type": "type.googleapis.com/" + name,
        "explicit_http_config": {"http2_protocol_options": {}}}}
    ep = _cluster(grpc)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert ep["address"]["socket_address"]["port_value"] == 1003


def test_grpc_framing():
    assert configs.grpc_message(b"abc") == b"\x00\x00\x00\x00\x03abc"
    body = configs.grpc_request_body(16)
    assert len(body) == 21 and body[:5] == b"\x00\x00\x00\x00\x10"
    assert len(configs.grpc_request_body(40)) == 45


def test_upstream_and_peer_configs_for_h2(tmp_path):
    plain = configs.upstream_nginx(str(tmp_path), 2000)
    assert "http2" not in plain and "grpc" not in plain
    up = configs.upstream_nginx(str(tmp_path), 2000, 2001)
    assert "listen 127.0.0.1:2001 http2" in up
    assert "add_trailer grpc-status 0 always;" in up
    assert "default_type application/grpc;" in up
    assert "mirror_request_body on;" in up            # the request is read before answering
    assert '"' + configs.grpc_message(configs.GRPC_REPLY).decode("latin-1") + '"' in up
    grpc, h2m, small = BY_NAME["grpc_unary"], BY_NAME["h2_multiplexed"], BY_NAME["small"]
    assert "server s1 127.0.0.1:2001 proto h2" in configs.haproxy(grpc, 3000, 2001)
    assert "proto h2" not in configs.haproxy(h2m, 3000, 2000)
    ng = configs.nginx_proxy(str(tmp_path), grpc, 3000, 2001)
    assert "listen 127.0.0.1:3000 http2" in ng and "grpc_pass grpc://upstream;" in ng
    ng = configs.nginx_proxy(str(tmp_path), h2m, 3000, 2000)
    assert "listen 127.0.0.1:3000 http2" in ng and "proxy_pass http://upstream;" in ng
    assert "http2" not in configs.nginx_proxy(str(tmp_path), small, 3000, 2000)


def test_h2load_command_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(load, "require", lambda name: "/usr/bin/" + name)
    argv = load.h2load_argv(BY_NAME["h2_multiplexed"], 4000, 2, str(tmp_path), "/x/log")
    assert argv == ["/usr/bin/h2load", "-t", "1", "-c", "4", "-m", "10", "-D", "2",
                    "--log-file=/x/log", "http://127.0.0.1:4000/"]
    argv = load.h2load_argv(BY_NAME["grpc_unary"], 4000, 1, str(tmp_path), "/x/log")
    body = argv[argv.index("-d") + 1]
    with open(body, "rb") as f:
        assert f.read() == configs.grpc_request_body(16)
    hdrs = [argv[i + 1] for i, a in enumerate(argv) if a == "-H"]
    assert hdrs == ["content-type: application/grpc", "te: trailers"]
    assert argv[-1] == "http://127.0.0.1:4000/bench.Echo/Unary"
    assert argv[argv.index("-D") + 1] == "1"


def test_h2load_output_parsing():
    s = load.parse_h2load_output(H2LOAD_OUT)
    assert s["duration_s"] == 1.0 and s["done"] == 123520 and s["2xx"] == 123519
    assert s["5xx"] == 1 and s["failed"] == 1 and s["started"] == 123560
    assert load.parse_h2load_output(H2LOAD_OUT.replace("1.00s,", "17.09ms,"))[
        "duration_s"] == pytest.approx(0.01709)
    with pytest.raises(ValueError):
        load.parse_h2load_output("connect: Connection refused\n")

    log = [f"1795809531347{i:03d}\t200\t{100 + i}\n" for i in range(999)]
    log.append("1795809531348999\t503\t5000\n")
    res = load.h2load_result(H2LOAD_OUT, log)
    assert res["requests"] == 123519 and res["duration_s"] == 1.0
    # the 503 once; the 40 requests in flight when the window closed are not errors
    assert res["errors"] == 1, res["error_detail"]
    assert res["error_detail"]["statuses"] == {"200": 999, "503": 1}
    curve = dict((q, ms) for q, ms in res["curve"])
    assert [q for q, _ in res["curve"]] == list(CURVE_PCTS)
    assert curve[0] == 0.1 and curve[100] == 5.0
    assert curve[50] == pytest.approx(0.6, abs=0.002)
    # requests without a complete answer count too ('errored' includes the timeouts)
    bad = H2LOAD_OUT.replace("1 failed, 0 errored, 0 timeout", "4 failed, 3 errored, 2 timeout")
    res = load.h2load_result(bad, log)
    assert res["errors"] == 1 + 3
    assert res["error_detail"]["stream_errors"] == 3 and res["error_detail"]["timeout"] == 2


def test_grpc_answer_check():
    expected = configs.grpc_message(configs.GRPC_REPLY)
    raw = NGHTTP_GRPC_OK.replace("\\x00", "\x00").replace("\\x10", "\x10")
    resp = load.parse_nghttp_verbose(raw)
    assert resp["head"][":status"] == "200"
    assert resp["trailers"] == {"grpc-status": "0"}
    assert resp["data_bytes"] == 21 and resp["reset"] is None
    assert load.grpc_problems(resp, expected, raw.encode("latin-1")) == []

    # What a proxy that drops response trailers gives.
    no_trailers = "\n".join(line for line in raw.splitlines()
                            if "grpc-status" not in line and "length=12," not in line)
    problems = load.grpc_problems(load.parse_nghttp_verbose(no_trailers), expected)
    assert len(problems) == 1 and "no trailer grpc-status" in problems[0]

    reset = raw.replace("[  0.001] recv (stream_id=13) grpc-status: 0\n", "").replace(
        "[  0.001] recv HEADERS frame <length=12, flags=0x05, stream_id=13>",
        "[  0.001] recv RST_STREAM frame <length=4, flags=0x00, stream_id=13>\n"
        "          (error_code=INTERNAL_ERROR(0x02))")
    problems = load.grpc_problems(load.parse_nghttp_verbose(reset), expected)
    assert any("INTERNAL_ERROR" in p for p in problems)
    status = load.grpc_problems(load.parse_nghttp_verbose(
        raw.replace(":status: 200", ":status: 503")), expected)
    assert any("status 503" in p for p in status)


class _FakeProc:
    def __init__(self):
        self.pid = os.getpid()

    def alive(self):
        return True

    def stop(self):
        pass

    def log_tail(self, n=2000):
        return ""


class _FakeUpstream:
    port, h2_port = 1, 2
    proc = _FakeProc()

    def port_for(self, sc):
        return self.h2_port if sc.upstream_protocol == "h2" else self.port


def _fake_run(monkeypatch, tmp_path, start_fails=(), segment_fails=None):
    """A Runner over fake proxies and a fake h2load: start_fails lists proxies that do not come
    up; segment_fails=(proxy, round) makes that proxy's segment of that round fail."""
    calls = {"n": {}}
    ports = {"fastproxy": 10001, "envoy": 10002}

    def start(name, sc, upstream_port, workdir, cpus):
        if name in start_fails:
            raise SetupError(f"{name} exited with 1:\nconfig rejected: something")
        return Proxy(name, ports[name], _FakeProc(), None)

    def run_h2load(sc, port, duration, workdir, cpus):
        name = next(n for n, p in ports.items() if p == port)
        rnd = calls["n"][name] = calls["n"].get(name, -2) + 1      # -1 is the warm-up
        if segment_fails == (name, rnd):
            raise RuntimeError("h2load: no request succeeded ({'stream_errors': 40})")
        return {"requests": 1000, "errors": 0, "duration_s": 1.0,
                "curve": [[q, 1.0] for q in CURVE_PCTS]}

    monkeypatch.setattr(runner, "start_proxy", start)
    monkeypatch.setattr(load, "run_h2load", run_h2load)
    lines = []
    opts = runner.Options(scenarios=[BY_NAME["h2_multiplexed"]], peers=["envoy"], rounds=2,
                          duration=1, pin=False)
    r = runner.Runner(opts, progress=lines.append)
    r._run_scenario(BY_NAME["h2_multiplexed"], _FakeUpstream(), str(tmp_path))
    return r, r._results(1.0), lines


def test_a_proxy_that_does_not_start_is_reported_and_the_others_run(monkeypatch, tmp_path):
    r, res, lines = _fake_run(monkeypatch, tmp_path, start_fails=("fastproxy",))
    assert [(s["proxy"], s["round"]) for s in res["segments"]] == [("envoy", 0), ("envoy", 1)]
    msg = res["failures"]["h2_multiplexed"]["fastproxy"]
    assert msg.startswith("fastproxy exited with 1:") and "config rejected" in msg
    assert any(line.startswith("FAILED: h2_multiplexed on fastproxy") for line in lines)
    table = report.text_table(res)
    assert "FAILED on fastproxy: fastproxy exited with 1: … config rejected: something" in table
    assert "FAILED" in report.markdown(res)
    assert res["summary"]["h2_multiplexed"]["envoy"]["rps"] == 1000
    assert res["ratios"]["h2_multiplexed"]["envoy"] == {}

    # The CLI reports it and exits 3; --compare against a baseline with figures flags it.
    path = tmp_path / "failed.json"
    path.write_text(json.dumps(res))
    p = _bench("--from-json", str(path))
    assert p.returncode == 3, p.stdout + p.stderr
    assert "h2_multiplexed failed on fastproxy" in p.stderr
    base = copy.deepcopy(res)
    base["failures"] = {}
    base["summary"]["h2_multiplexed"]["fastproxy"]["cpu_us_per_req"] = 20.0
    problems = report.compare(res, base, 10)
    assert problems == ["h2_multiplexed: fastproxy failed: fastproxy exited with 1: … "
                        "config rejected: something"]


def test_a_segment_that_fails_drops_that_proxy_for_the_rest_of_the_scenario(
        monkeypatch, tmp_path):
    r, res, lines = _fake_run(monkeypatch, tmp_path, segment_fails=("fastproxy", 1))
    assert sorted((s["proxy"], s["round"]) for s in res["segments"]) == [
        ("envoy", 0), ("envoy", 1), ("fastproxy", 0)]
    assert "no request succeeded" in res["failures"]["h2_multiplexed"]["fastproxy"]
    assert res["ratios"]["h2_multiplexed"]["envoy"]["rps"]["rounds"] == [1.0]
    r, res, lines = _fake_run(monkeypatch, tmp_path, segment_fails=("envoy", -1))
    assert {s["proxy"] for s in res["segments"]} == {"fastproxy"}
    assert list(res["failures"]["h2_multiplexed"]) == ["envoy"]
