"""Running fastproxy itself (`python -m fastproxy`) for a test."""
from __future__ import annotations

import itertools
import os
import sys

from .process import ProxyProcess

__all__ = ["FastproxyProcess", "REPO_ROOT"]

_base_ids = itertools.count(1)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class FastproxyProcess(ProxyProcess):
    """Run fastproxy on a bootstrap (dict or YAML):

        with FastproxyProcess(config) as fp:
            raw_request(fp.port, ...)

    Started as `python -m fastproxy -c FILE --concurrency N -l LEVEL --base-id ID` (ID unique
    per test process, so concurrent instances keep separate stats) with the interpreter running
    the tests, from the repository root (so the in-tree build is the one used).
    Ready once the admin answers GET /ready with 200 and the listeners are listening.
    Stopped with SIGTERM, then SIGKILL after 5 s; leftover workers are killed with it.
    `--drain-time-s` defaults to 1 here (pass drain_time_s=None for the proxy's own default), so
    that stopping does not wait on idle keep-alive connections.
    """

    name = "fastproxy"

    def __init__(self, config, concurrency: int = 1, admin_port: int | None = None, *,
                 log_level: str = "warning", python: str | None = None, base_id: int | None = None,
                 drain_time_s: int | None = 1, **kw):
        kw.setdefault("cwd", REPO_ROOT)
        super().__init__(config, admin_port, log_level=log_level, **kw)
        self.concurrency = concurrency
        self.python = python or sys.executable
        self.drain_time_s = drain_time_s
        self.base_id = base_id if base_id is not None else (os.getpid() % 100000) * 1000 + next(_base_ids)

    def command(self) -> list[str]:
        return [
            self.python, "-m", "fastproxy",
            "-c", self.config_path,
            "--concurrency", str(self.concurrency),
            "-l", self.log_level,
            "--base-id", str(self.base_id),
            *(["--drain-time-s", str(self.drain_time_s)] if self.drain_time_s is not None else []),
            *self.extra_args,
        ]
