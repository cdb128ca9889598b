"""Command line, validate mode, the worker's start-up checks, and the main process's supervision
(with a stand-in worker script, so the compiled core is not needed here)."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request

import pytest

from fastproxy import __version__, cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GOOD = """\
admin:
  address:
    socket_address: {address: 127.0.0.1, port_value: %(admin_port)d}
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: {address: 127.0.0.1, port_value: 0}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: svc}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: svc
    connect_timeout: 1s
    load_assignment:
      cluster_name: svc
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {address: 127.0.0.1, port_value: 9}
"""

BAD = """\
static_resources:
  clusters:
  - name: svc
    connect_timeout: 1s
    bogus_field: 3
  - name: svc2
    connect_timeout: 1s
    another_bogus: 4
"""


def _config_module():
    try:
        from fastproxy import config
    except ImportError:
        return None
    if not hasattr(config, "load_bootstrap") or not hasattr(config, "ConfigError"):
        return None
    return config


needs_config = pytest.mark.skipif(
    _config_module() is None,
    reason="fastproxy.config.load_bootstrap/ConfigError not importable yet")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "fastproxy", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# -- argument parsing -------------------------------------------------------------------------

def test_defaults():
    options = cli.parse_args(["-c", "x.yaml"])
    assert options.config_path == "x.yaml"
    assert options.concurrency == (os.cpu_count() or 1)
    assert options.log_level == "info"
    assert options.mode == "serve"
    assert options.drain_time_s == 600
    assert options.base_id == 0
    assert options.disable_hot_restart is False
    assert options.log_path is None


def test_envoy_flags():
    options = cli.parse_args(["--config-path", "x.yaml", "--concurrency", "3", "-l", "warn",
                              "--mode", "validate", "--drain-time-s", "5", "--base-id", "7",
                              "--disable-hot-restart", "--log-path", "/dev/null"])
    assert (options.concurrency, options.log_level, options.mode) == (3, "warn", "validate")
    assert (options.drain_time_s, options.base_id, options.disable_hot_restart) == (5, 7, True)
    assert options.log_path == "/dev/null"


@pytest.mark.parametrize("level", ["trace", "debug", "info", "warning", "warn", "error",
                                   "critical", "off"])
def test_log_levels(level):
    assert cli.parse_args(["-c", "x", "--log-level", level]).log_level == level


@pytest.mark.parametrize("argv", [
    ["-c", "x", "--log-level", "verbose"],
    ["-c", "x", "--mode", "init_only"],
    ["-c", "x", "--concurrency", "0"],
    ["-c", "x", "--concurrency", "two"],
    ["-c", "x", "--parent-shutdown-time-s", "5"],  # Envoy flags we do not implement are refused
    ["-c", "x", "--restart-epoch", "1"],
    [],  # no configuration
])
def test_rejected(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == "fastproxy %s (Envoy v3 API)\n" % __version__


def test_version_module_entry_point():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout == "fastproxy %s (Envoy v3 API)\n" % __version__


def test_log_format(capsys):
    cli.setup_logging("info")
    try:
        cli.log.info("hello %s", "world")
        cli.log.debug("hidden")
    finally:
        cli.setup_logging("off")
    err = capsys.readouterr().err
    import re

    assert re.fullmatch(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\]\[%d\]\[info\]\[main\] "
                        r"hello world\n" % os.getpid(), err), err


# -- validate mode (stand-in config loader: always runs) ------------------------------------

class StandInConfigError(Exception):
    def __init__(self, errors):
        super().__init__("; ".join(errors))
        self.errors = errors


def test_validate_with_stand_in_loader(monkeypatch, capsys):
    import fastproxy.config as config

    def load_bootstrap(path):
        if path == "good.yaml":
            return object()
        raise StandInConfigError(["a.b: first problem", "c[0].d: second problem"])

    monkeypatch.setattr(config, "ConfigError", StandInConfigError, raising=False)
    monkeypatch.setattr(config, "load_bootstrap", load_bootstrap, raising=False)
    try:
        assert cli.main(["--mode", "validate", "-c", "good.yaml"]) == 0
        assert capsys.readouterr().out == "configuration 'good.yaml' OK\n"
        assert cli.main(["--mode", "validate", "-c", "bad.yaml"]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.splitlines()
        assert len(lines) == 2
        assert lines[0].endswith("[critical][main] error initializing configuration "
                                 "'bad.yaml': a.b: first problem")
        assert lines[1].endswith("'bad.yaml': c[0].d: second problem")
    finally:
        cli.setup_logging("off")


# -- validate mode with the real config loader -------------------------------------------

@needs_config
def test_validate_good(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD % {"admin_port": 0})
    result = run_cli("--mode", "validate", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "configuration '%s' OK\n" % path


@needs_config
def test_validate_bad_prints_every_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = run_cli("--mode", "validate", "-c", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "error initializing configuration '%s'" % path in result.stderr
    assert "bogus_field" in result.stderr
    assert "[critical][main]" in result.stderr


@needs_config
def test_validate_missing_file(tmp_path):
    result = run_cli("--mode", "validate", "-c", str(tmp_path / "absent.yaml"))
    assert result.returncode == 1
    assert "error initializing configuration" in result.stderr


@needs_config
def test_serve_config_error_exits_1(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = run_cli("-c", str(path), "--concurrency", "1")
    assert result.returncode == 1
    assert "bogus_field" in result.stderr


# -- worker start-up checks -------------------------------------------------------------------

def test_worker_without_core_fails_loudly(monkeypatch, capsys):
    from fastproxy.server import worker

    monkeypatch.setitem(sys.modules, "fastproxy._core.connection", None)  # import fails
    try:
        code = worker.main(["--config", "x.yaml", "--worker-index", "0", "--shm", "/x",
                            "--ports", "1"])
    finally:
        cli.setup_logging("off")
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert code == worker.EXIT_NO_CORE
    err = capsys.readouterr().err
    assert "[critical]" in err and "fastproxy._core.connection" in err


# -- main process supervision with a stand-in worker -----------------------------------------

STAND_IN_WORKER = textwrap.dedent("""\
    import os, signal, sys, time
    # Stand-in for fastproxy.server.worker: report ready, exit 0 on SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    with open(sys.argv[1], "a") as f:
        f.write("%d %s\\n" % (os.getpid(), " ".join(sys.argv[2:])))
    os.write(1, b"ready\\n")
    while True:
        time.sleep(1)
""")


def _http(url, method="GET"):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _wait_for(predicate, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("timed out")


@needs_config
def test_supervisor_lifecycle(tmp_path, monkeypatch):
    pytest.importorskip("fastproxy._picohttp", reason="cffi module not built")
    try:
        from fastproxy.stats import SharedStats, StatsLayout  # noqa: F401
    except ImportError:
        pytest.skip("fastproxy.stats not importable yet")
    from fastproxy.server import main as server_main

    admin_port = free_port()
    config_path = tmp_path / "good.yaml"
    config_path.write_text(GOOD % {"admin_port": admin_port})
    script = tmp_path / "worker.py"
    script.write_text(STAND_IN_WORKER)
    spawned = tmp_path / "spawned.txt"
    real_command = server_main.Supervisor._worker_command
    commands = []

    def stand_in_command(self, index):
        command = real_command(self, index)
        commands.append(command)
        assert command[1:3] == ["-m", "fastproxy.server.worker"]
        return [sys.executable, str(script), str(spawned)] + command[3:]

    monkeypatch.setattr(server_main.Supervisor, "_worker_command", stand_in_command)
    monkeypatch.setattr(server_main, "BACKOFF_INITIAL_S", 0.05)
    options = cli.parse_args(["-c", str(config_path), "--concurrency", "2",
                              "--drain-time-s", "3", "--base-id", "4242", "-l", "critical"])
    base = "http://127.0.0.1:%d" % admin_port
    result = {}
    observed = {}

    def drive():
        try:
            _wait_for(lambda: _http(base + "/ready") == (200, "LIVE\n"))
            info = json.loads(_http(base + "/server_info")[1])
            observed["info"] = info
            observed["stats"] = _http(base + "/stats?filter=^server%5C.")[1]
            lines = spawned.read_text().splitlines()
            pids = [int(line.split()[0]) for line in lines]
            args = lines[0].split()
            observed["killed_index"] = args[args.index("--worker-index") + 1]
            os.kill(pids[0], signal.SIGKILL)  # a crash: restarted and counted
            _wait_for(lambda: len(spawned.read_text().splitlines()) == 3)
            _wait_for(lambda: _http(base + "/ready") == (200, "LIVE\n"))
            observed["restarts"] = _http(base + "/stats?filter=worker_restarts")[1]
            observed["quit"] = _http(base + "/quitquitquit", method="POST")
        except BaseException as exc:  # make the failure visible, then stop the server
            observed["error"] = exc
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    try:
        result["code"] = server_main.serve(options)
    finally:
        cli.setup_logging("off")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    thread.join(10)
    assert "error" not in observed, observed.get("error")
    assert result["code"] == 0
    assert observed["quit"] == (200, "OK\n")
    info = observed["info"]
    assert info["state"] == "LIVE"
    assert info["command_line_options"]["concurrency"] == 2
    assert info["command_line_options"]["drain_time"] == "3s"
    assert info["hot_restart_version"] == "disabled"
    assert "server.concurrency: 2\n" in observed["stats"]
    assert "server.live: 1\n" in observed["stats"]
    assert observed["restarts"] == "server.worker_restarts: 1\n"
    # Every worker was told the same resolved (non-zero) port and its own index.
    ports = {c[c.index("--ports") + 1] for c in commands}
    assert len(ports) == 1 and int(ports.pop()) > 0
    # the worker killed (whichever started first) was restarted with its own index
    assert sorted(c[c.index("--worker-index") + 1] for c in commands) == \
        sorted(["0", "1", observed["killed_index"]])
    shm = commands[0][commands[0].index("--shm") + 1]
    assert "4242" in os.path.basename(shm)
    assert not os.path.exists(shm)  # removed on exit
    # All stand-in workers are gone.
    for line in spawned.read_text().splitlines():
        pid = int(line.split()[0])
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@needs_config
def test_supervisor_gives_up_when_workers_cannot_start(tmp_path, monkeypatch):
    try:
        from fastproxy.stats import SharedStats, StatsLayout  # noqa: F401
    except ImportError:
        pytest.skip("fastproxy.stats not importable yet")
    from fastproxy.server import main as server_main

    config_path = tmp_path / "good.yaml"
    config_path.write_text(GOOD % {"admin_port": 0})
    script = tmp_path / "worker.py"
    script.write_text("import sys; sys.exit(3)\n")  # like a worker without the compiled core
    monkeypatch.setattr(server_main.Supervisor, "_worker_command",
                        lambda self, index: [sys.executable, str(script)])
    options = cli.parse_args(["-c", str(config_path), "--concurrency", "1", "-l", "off",
                              "--base-id", "4243"])
    try:
        assert server_main.serve(options) == 1
    finally:
        cli.setup_logging("off")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
