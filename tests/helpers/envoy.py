"""Real Envoy for parity tests: finding the binary and running it."""
from __future__ import annotations

import glob
import itertools
import os
import shutil

import pytest

from .process import ProxyProcess, in_ci

__all__ = ["find_envoy", "default_envoy_venv", "EnvoyProcess"]


def default_envoy_venv() -> str:
    """Where ci/setup.sh installs Envoy (ENVOY_VENV, else ~/.cache/fastproxy/envoy-venv)."""
    if os.environ.get("ENVOY_VENV"):
        return os.environ["ENVOY_VENV"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "fastproxy", "envoy-venv")


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _missing(reason: str):
    if in_ci():
        pytest.fail(f"Envoy is required in CI: {reason}", pytrace=False)
    pytest.skip(f"Envoy not available: {reason} (run ci/setup.sh or set ENVOY_BIN)")


def find_envoy() -> str:
    """Path of the Envoy binary: $ENVOY_BIN, else the virtualenv of ci/setup.sh, else `envoy`
    on PATH. If there is none the calling test is skipped, or fails when CI=true."""
    env_bin = os.environ.get("ENVOY_BIN")
    if env_bin:
        if _executable(env_bin):
            return env_bin
        _missing(f"ENVOY_BIN={env_bin} is not an executable file")
    venv = default_envoy_venv()
    # Prefer the binary itself over the venv's Python launcher (which execs it).
    for cand in sorted(glob.glob(os.path.join(venv, "lib", "python3*", "site-packages", "envoy", "_bin", "envoy"))):
        if _executable(cand):
            return cand
    cand = os.path.join(venv, "bin", "envoy")
    if _executable(cand):
        return cand
    on_path = shutil.which("envoy")
    if on_path:
        return on_path
    _missing(f"no ENVOY_BIN, nothing in {venv}, no envoy on PATH")


_base_ids = itertools.count(1)


class EnvoyProcess(ProxyProcess):
    """Run real Envoy on a bootstrap (dict or YAML):

        with EnvoyProcess(make_bootstrap(port, admin, {"c": [origin.address]}), admin) as envoy:
            raw_request(envoy.port, ...)

    Started as `envoy -c FILE --concurrency 1 --disable-hot-restart -l warning --base-id N`
    with N unique per test process, so several can run at once.
    """

    name = "envoy"

    def __init__(self, config, admin_port: int | None = None, *, envoy_bin: str | None = None,
                 concurrency: int = 1, log_level: str = "warning", base_id: int | None = None, **kw):
        super().__init__(config, admin_port, log_level=log_level, **kw)
        self.envoy_bin = envoy_bin or find_envoy()
        self.concurrency = concurrency
        self.base_id = base_id if base_id is not None else (os.getpid() % 10000) * 1000 + next(_base_ids)

    def command(self) -> list[str]:
        return [
            self.envoy_bin,
            "-c", self.config_path,
            "--concurrency", str(self.concurrency),
            "--disable-hot-restart",
            "-l", self.log_level,
            "--base-id", str(self.base_id),
            *self.extra_args,
        ]
