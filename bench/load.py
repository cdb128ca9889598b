"""Load generators: wrk (closed loop), the open-loop client, the idle-connection holder.

Each returns a plain dict: requests (completed with a 2xx), errors, duration_s, and a latency
curve [[percentile, ms], ...] from which the percentiles are read.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from typing import List, Optional

from bench.measure import CURVE_PCTS
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
