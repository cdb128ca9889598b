"""Running a proxy (Envoy or fastproxy) as a child process for a test."""
from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import tempfile
import time

import yaml

from .net import free_port, is_listening

__all__ = ["ProxyProcess", "listener_ports", "admin_port_of", "in_ci"]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def listener_ports(config: dict) -> list[int]:
    """Ports of the static listeners of a bootstrap dict (port 0 excluded)."""
    out = []
    for lst in (config.get("static_resources") or {}).get("listeners") or []:
        sa = (lst.get("address") or {}).get("socket_address") or {}
        port = int(sa.get("port_value") or 0)
        if port:
            out.append(port)
    return out


def admin_port_of(config: dict) -> int | None:
    sa = ((config.get("admin") or {}).get("address") or {}).get("socket_address") or {}
    port = sa.get("port_value")
    return int(port) if port else None


class ProxyProcess:
    """Base class: writes the config to a temporary file, starts the process, waits until the
    admin endpoint answers GET /ready with 200 and every static listener port is listening,
    and stops the process on exit (SIGTERM, then SIGKILL after `stop_timeout` seconds).

    `config` is a bootstrap dict or YAML text. If `admin_port` is given, the config's admin
    address is set to 127.0.0.1:admin_port; if the config has no admin address, a free port is
    picked. Use as a context manager, or call start()/stop().
    """

    name = "proxy"
    stop_timeout = 5.0

    def __init__(self, config, admin_port: int | None = None, *, log_level: str = "warning",
                 extra_args=(), env: dict | None = None, startup_timeout: float = 30.0,
                 cwd: str | None = None):
        if isinstance(config, (bytes, str)):
            text = config.decode() if isinstance(config, bytes) else config
            parsed = yaml.safe_load(text) or {}
        else:
            text = None
            parsed = config
        if admin_port is None and admin_port_of(parsed) is None:
            admin_port = free_port()
        if admin_port is not None:
            parsed = dict(parsed)
            parsed["admin"] = {
                **(parsed.get("admin") or {}),
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": int(admin_port)}},
            }
            text = None  # must re-serialize
        self.config = parsed
        self._config_text = text if text is not None else yaml.safe_dump(parsed, sort_keys=False)
        self.admin_port = admin_port_of(parsed)
        self.listener_ports = listener_ports(parsed)
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.env = env
        self.startup_timeout = startup_timeout
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.tmpdir: str | None = None
        self.config_path: str | None = None
        self.log_path: str | None = None
        self._log_file = None

    # ------------------------------------------------------------------ to override
    def command(self) -> list[str]:
        raise NotImplementedError

    # ------------------------------------------------------------------ properties
    @property
    def port(self) -> int:
        """The first listener's port."""
        if not self.listener_ports:
            raise ValueError(f"{self.name}: the config has no static listener with a port")
        return self.listener_ports[0]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ------------------------------------------------------------------ lifecycle
    def start(self):
        if self.proc is not None:
            return self
        self.tmpdir = tempfile.mkdtemp(prefix=f"{self.name}-test-")
        self.config_path = os.path.join(self.tmpdir, "bootstrap.yaml")
        with open(self.config_path, "w") as f:
            f.write(self._config_text)
        self.log_path = os.path.join(self.tmpdir, "output.log")
        self._log_file = open(self.log_path, "wb")
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.cwd,
            start_new_session=True,  # its own process group: workers get cleaned up with it
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.proc.returncode} during startup:\n{self.logs()[-4000:]}"
                )
            ready = self.admin_port is None or self._ready_ok()
            if ready and all(is_listening(p) for p in self.listener_ports):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.name} not ready after {self.startup_timeout}s "
                    f"(admin {self.admin_port}, listeners {self.listener_ports}):\n{self.logs()[-4000:]}"
                )
            time.sleep(0.05)

    def _ready_ok(self) -> bool:
        try:
            status, _ = self.admin_get("/ready", timeout=1.0)
        except OSError:
            return False
        return status == 200

    def stop(self) -> int | None:
        """Stop the process (SIGTERM, SIGKILL after stop_timeout); return its exit status."""
        proc = self.proc
        rc = None
        if proc is not None:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            rc = proc.returncode
            # Whatever is left in its own process group (worker processes) goes too.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.tmpdir and not os.environ.get("FASTPROXY_TEST_KEEP_TMP"):
            self._last_logs = self.logs()
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
        return rc

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pid={self.pid} port={self.listener_ports} admin={self.admin_port}>"

    # ------------------------------------------------------------------ introspection
    def logs(self) -> str:
        """What the process wrote to stdout/stderr so far."""
        if self.log_path and os.path.exists(self.log_path):
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        return getattr(self, "_last_logs", "")

    def admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        return self.admin_request("GET", path, timeout=timeout)

    def admin_request(self, method: str, path: str, timeout: float = 5.0) -> tuple[int, str]:
        if self.admin_port is None:
            raise ValueError(f"{self.name}: no admin port")
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def stats(self, filter: str | None = None) -> dict[str, int]:
        """Counters and gauges from the admin's /stats text output, as {name: value}."""
        path = "/stats" + (f"?filter={filter}" if filter else "")
        status, body = self.admin_get(path)
        if status != 200:
            raise RuntimeError(f"{self.name}: GET {path} -> {status}: {body[:200]}")
        out = {}
        for line in body.splitlines():
            name, sep, value = line.partition(": ")
            if sep:
                try:
                    out[name] = int(value)
                except ValueError:
                    pass  # histograms and text stats
        return out
