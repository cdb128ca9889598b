"""Load generators: wrk (closed loop), h2load (HTTP/2 and gRPC, closed loop), the open-loop
client, the idle-connection holder.

Each returns a plain dict: requests (completed with a 2xx), errors, duration_s, and a latency
curve [[percentile, ms], ...] from which the percentiles are read.
"""
from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
from typing import Dict, Iterable, List, Optional, Tuple

from bench import configs
from bench.measure import CURVE_PCTS, percentile
from bench.proxies import REPO_ROOT, preexec, require
from bench.scenarios import Scenario

_DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCHJSON {"requests":%d,"bytes":%d,"duration_us":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"curve":[',
    summary.requests, summary.bytes, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout))
  local pcts = {PCTS}
  for i, p in ipairs(pcts) do
    if i > 1 then io.write(",") end
    local v = (p >= 100) and latency.max or latency:percentile(p)
    io.write(string.format("[%s,%.3f]", tostring(p), tonumber(v) / 1000.0))
  end
  io.write("]}\\n")
end
"""


def wrk_script(scenario: Scenario) -> str:
    lines = [f'wrk.method = "{scenario.method}"']
    if scenario.body_bytes:
        lines.append(f'wrk.body = string.rep("x", {scenario.body_bytes})')
        lines.append('wrk.headers["Content-Type"] = "application/octet-stream"')
    for h in scenario.headers:
        k, v = h.split(":", 1)
        lines.append(f'wrk.headers["{k.strip()}"] = "{v.strip()}"')
    pcts = ",".join(str(p) for p in CURVE_PCTS)
    return "\n".join(lines) + _DONE_LUA.replace("{PCTS}", "{" + pcts + "}")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_wrk(scenario: Scenario, port: int, duration: int, workdir: str,
            cpus: Optional[set]) -> dict:
    script = os.path.join(workdir, f"wrk-{scenario.name}.lua")
    with open(script, "w") as f:
        f.write(wrk_script(scenario))
    argv = [require("wrk"), f"-t{scenario.threads}", f"-c{scenario.connections}",
            f"-d{duration}s", "--timeout", "5s", "-s", script, *scenario.tool_args,
            f"http://127.0.0.1:{port}{scenario.path}"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                       preexec_fn=preexec(cpus))
    for line in p.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            raw = json.loads(line[len("BENCHJSON "):])
            break
    else:
        raise RuntimeError(f"wrk failed ({p.returncode}): {p.stdout[-1000:]} {p.stderr[-1000:]}")
    errors = sum(raw["errors"].values())
    return {
        "requests": max(raw["requests"] - raw["errors"]["status"], 0),
        "errors": errors,
        "error_detail": raw["errors"],
        "duration_s": raw["duration_us"] / 1e6,
        "bytes_read": raw["bytes"],
        "curve": raw["curve"],
    }


# ---------------------------------------------------------------------------------------------
# h2load (nghttp2-client): HTTP/2 with prior knowledge over cleartext, streams multiplexed
# ---------------------------------------------------------------------------------------------

def h2load_request_args(scenario: Scenario, workdir: str) -> List[str]:
    """h2load's arguments that shape the request: -d BODYFILE (which makes it a POST) and -H.

    A gRPC scenario's body is one length-prefixed message of grpc_message_bytes bytes."""
    if scenario.grpc_message_bytes:
        body: Optional[bytes] = configs.grpc_request_body(scenario.grpc_message_bytes)
    elif scenario.body_bytes:
        body = b"x" * scenario.body_bytes
    else:
        body = None
    if (body is not None) != (scenario.method == "POST") or scenario.method not in ("GET",
                                                                                    "POST"):
        raise ValueError(f"scenario {scenario.name}: h2load sends GET without a body and POST "
                         f"with one (-d), not {scenario.method} with"
                         f"{'' if body else 'out'} a body")
    args: List[str] = []
    if body is not None:
        path = os.path.join(workdir, f"h2load-{scenario.name}.body")
        with open(path, "wb") as f:
            f.write(body)
        args += ["-d", path]
    for h in scenario.headers:
        args += ["-H", h]
    return args


def h2load_argv(scenario: Scenario, port: int, duration: int, workdir: str,
                log_file: str) -> List[str]:
    return [require("h2load"), "-t", str(scenario.threads), "-c", str(scenario.connections),
            "-m", str(scenario.streams), "-D", str(duration), f"--log-file={log_file}",
            *h2load_request_args(scenario, workdir), *scenario.tool_args,
            f"http://127.0.0.1:{port}{scenario.path}"]


_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def parse_h2load_output(text: str) -> dict:
    """The counts of h2load's summary (nghttp2 1.4x-1.6x format):

        finished in 1.00s, 30811.61 req/s, 13.31MB/s
        requests: 123520 total, 123560 started, 123520 done, 123520 succeeded, 0 failed, ...
        status codes: 123520 2xx, 0 3xx, 0 4xx, 0 5xx

    'errored' are the requests that got no complete answer (stream reset, connection lost or
    refused, and the timed-out ones, which 'timeout' counts again); 'failed' adds those with an
    unsuccessful status to them."""
    m = re.search(r"^finished in ([\d.]+)(us|ms|s),", text, re.M)
    req = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", text, re.M)
    st = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, re.M)
    if not (m and req and st):
        raise ValueError("no h2load summary in its output")
    total, started, done, succeeded, failed, errored, timeout = map(int, req.groups())
    s2, s3, s4, s5 = map(int, st.groups())
    return {"duration_s": float(m.group(1)) * _UNIT_S[m.group(2)],
            "total": total, "started": started, "done": done, "succeeded": succeeded,
            "failed": failed, "errored": errored, "timeout": timeout,
            "2xx": s2, "3xx": s3, "4xx": s4, "5xx": s5}


def parse_h2load_log(lines: Iterable[str]) -> Tuple[List[float], Dict[int, int]]:
    """h2load --log-file lines (start µs since the epoch, status, µs to the end of the
    response; tab-separated): the latencies in ms, sorted, and the count of each status."""
    lat: List[float] = []
    statuses: Dict[int, int] = {}
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        status = int(parts[1])
        statuses[status] = statuses.get(status, 0) + 1
        lat.append(int(parts[2]) / 1000.0)
    lat.sort()
    return lat, statuses


def h2load_result(stdout: str, log_lines: Iterable[str]) -> dict:
    """The load dict of one h2load run: requests are the 2xx responses; errors the non-2xx
    answers and the requests without a complete answer (resets, lost connections, timeouts),
    not counting those still in flight when the window closed (h2load drops them)."""
    summ = parse_h2load_output(stdout)
    lat, statuses = parse_h2load_log(log_lines)
    ok = summ["2xx"]
    non2xx = summ["3xx"] + summ["4xx"] + summ["5xx"]
    detail = {"non_2xx": non2xx, "stream_errors": summ["errored"], "timeout": summ["timeout"],
              "statuses": {str(k): v for k, v in sorted(statuses.items())}}
    return {
        "requests": ok,
        "errors": non2xx + summ["errored"],
        "error_detail": detail,
        "duration_s": summ["duration_s"],
        "curve": [[q, percentile(lat, q)] for q in CURVE_PCTS] if lat else [],
        "h2load": summ,
    }


def run_h2load(scenario: Scenario, port: int, duration: int, workdir: str,
               cpus: Optional[set]) -> dict:
    log_file = os.path.join(workdir, f"h2load-{scenario.name}.log")
    _unlink(log_file)                       # h2load appends to an existing log file
    argv = h2load_argv(scenario, port, duration, workdir, log_file)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                       preexec_fn=preexec(cpus))
    try:
        with open(log_file) as f:
            res = h2load_result(p.stdout, f)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"h2load failed ({p.returncode}, {exc}): {p.stdout[-1000:]} "
                           f"{p.stderr[-1000:]}") from None
    finally:
        _unlink(log_file)
    if res["requests"] == 0:
        raise RuntimeError(f"h2load: no request succeeded ({res['error_detail']}): "
                           f"{p.stdout[-800:]} {p.stderr[-800:]}")
    return res


def h2_probe(scenario: Scenario, port: int, workdir: str,
             timeout: float = 5.0) -> Tuple[int, str]:
    """One request of the scenario with h2load (-n 1): its HTTP status (0 when none came
    back) and, for messages, h2load's counts and complaints in one line."""
    log_file = os.path.join(workdir, f"h2probe-{scenario.name}-{port}.log")
    _unlink(log_file)
    argv = [require("h2load"), "-n", "1", "-c", "1", f"--log-file={log_file}",
            *h2load_request_args(scenario, workdir), f"http://127.0.0.1:{port}{scenario.path}"]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 0, "h2load -n 1 timed out"
    keep = [line for line in p.stdout.splitlines()
            if line.startswith(("requests:", "status codes:"))]
    keep += [line.strip() for line in p.stderr.splitlines() if line.strip()]
    try:
        with open(log_file) as f:
            _, statuses = parse_h2load_log(f)
    except OSError:
        statuses = {}
    _unlink(log_file)
    return (next(iter(statuses)) if statuses else 0), "h2load: " + "; ".join(keep)[-600:]


# ---------------------------------------------------------------------------------------------
# The gRPC check: h2load does not look at trailers, so each proxy's answer to one gRPC call is
# checked with nghttp -v before it is measured.
# ---------------------------------------------------------------------------------------------

_NGHTTP_HEADER = re.compile(r"\] recv \(stream_id=(\d+)\) (:?[^:\s]+): (.*)$")
_NGHTTP_FRAME = re.compile(r"\] recv (\w+) frame <length=(\d+), flags=0x[0-9a-f]+, "
                           r"stream_id=(\d+)>")


def parse_nghttp_verbose(text: str) -> dict:
    """The response of one request in `nghttp -v` output: the head, the trailers (header
    fields of a HEADERS frame after the final head), the DATA bytes, and a RST_STREAM's error
    code, if any.  nghttp prints a frame's header fields before the frame line itself."""
    blocks: List[List[Tuple[str, str]]] = []
    pending: List[Tuple[str, str]] = []
    data = 0
    reset = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _NGHTTP_HEADER.search(line)
        if m:
            pending.append((m.group(2), m.group(3).strip()))
            continue
        f = _NGHTTP_FRAME.search(line)
        if not f or f.group(3) == "0":
            continue
        kind = f.group(1)
        if kind == "HEADERS":
            blocks.append(pending)
            pending = []
        elif kind == "DATA":
            data += int(f.group(2))
        elif kind == "RST_STREAM":
            code = re.search(r"error_code=(\w+)", lines[i + 1] if i + 1 < len(lines) else "")
            reset = code.group(1) if code else "error code not shown"
    # 1xx heads come first; the final head is the first block with a non-1xx :status.
    final = next((i for i, b in enumerate(blocks)
                  if not dict(b).get(":status", "1").startswith("1")), None)
    head = dict(blocks[final]) if final is not None else {}
    trailers: Dict[str, str] = {}
    for b in blocks[final + 1:] if final is not None else []:
        trailers.update(b)
    return {"head": head, "trailers": trailers, "data_bytes": data, "reset": reset}


def grpc_problems(resp: dict, expected_body: bytes, raw: bytes = b"") -> List[str]:
    """What is wrong with a gRPC unary answer (empty when it is right): 200 with
    content-type application/grpc, the expected message, and the trailer grpc-status: 0."""
    problems = []
    head, trailers = resp["head"], resp["trailers"]
    if resp["reset"]:
        problems.append(f"stream reset ({resp['reset']})")
    if head.get(":status") != "200":
        problems.append(f"status {head.get(':status') or 'missing'}")
    if not head.get("content-type", "").startswith("application/grpc"):
        problems.append(f"content-type {head.get('content-type')!r}")
    if resp["data_bytes"] != len(expected_body) or (raw and expected_body not in raw):
        problems.append(f"{resp['data_bytes']} body bytes, not the {len(expected_body)}-byte "
                        "message the upstream sent")
    if "grpc-status" not in trailers:
        where = " (it came in the head)" if "grpc-status" in head else ""
        problems.append(f"no trailer grpc-status{where}: a gRPC client fails such a call")
    elif trailers["grpc-status"] != "0":
        problems.append(f"trailer grpc-status: {trailers['grpc-status']}")
    return problems


def grpc_check(scenario: Scenario, port: int, workdir: str, timeout: float = 10.0) -> List[str]:
    """One gRPC call of the scenario with `nghttp -v`; the problems of its answer."""
    args = h2load_request_args(scenario, workdir)      # the same -d BODY and -H as h2load
    argv = [require("nghttp"), "-v", "-t", str(int(timeout)), *args,
            f"http://127.0.0.1:{port}{scenario.path}"]
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        return ["nghttp timed out"]
    resp = parse_nghttp_verbose(p.stdout.decode("latin-1"))
    problems = grpc_problems(resp, configs.grpc_message(configs.GRPC_REPLY), p.stdout)
    if problems and p.returncode:
        problems.append(f"nghttp exited with {p.returncode}: "
                        f"{p.stderr.decode(errors='replace').strip()[-300:]}")
    return problems


def run_openloop(scenario: Scenario, port: int, duration: int, cpus: Optional[set]) -> dict:
    argv = [sys.executable, "-m", "bench.openloop", "--port", str(port),
            "--rate", str(scenario.rate), "--duration", str(duration),
            "--connections", str(scenario.connections), "--path", scenario.path,
            *scenario.tool_args]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                       preexec_fn=preexec(cpus), env=_env())
    if p.returncode != 0:
        raise RuntimeError(f"open-loop client failed: {p.stderr[-2000:]}")
    res = json.loads(p.stdout)
    # Throughput over the scheduled window (the tail drains after it).
    res["duration_s"] = float(duration)
    return res


class IdleClient:
    """The idle-connection holder (bench/idleconns.py) in a subprocess."""

    def __init__(self, port: int, count: int, cpus: Optional[set]):
        self.p = subprocess.Popen(
            [sys.executable, "-m", "bench.idleconns", "--port", str(port),
             "--count", str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=preexec(cpus), env=_env())

    def _line(self, prefix: str, timeout: float = 120.0) -> List[str]:
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        line = self.p.stdout.readline() if ready else ""
        if not line.startswith(prefix):
            self.p.kill()
            raise RuntimeError(f"idle client: {line!r} {self.p.stderr.read()[-2000:]}")
        return line.split()[1:]

    def wait_open(self) -> tuple:
        ok, failed = self._line("open")
        return int(ok), int(failed)

    def probe(self) -> tuple:
        self.p.stdin.write("probe\n")
        self.p.stdin.flush()
        ms, status = self._line("probe")
        return float(ms), int(status)

    def close(self) -> None:
        try:
            self.p.stdin.write("close\n")
            self.p.stdin.flush()
            self.p.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            self.p.kill()
            self.p.wait()
