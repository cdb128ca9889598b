"""A worker process: ``python -m fastproxy.server.worker --config FILE --worker-index I ...``.

Started by the main process (fastproxy.server.main), one per ``--concurrency``.  It binds the
listeners on the ports the main process resolved (SO_REUSEPORT), serves on its own uvloop, and on
SIGTERM stops accepting, drains for up to ``--drain-time-s`` seconds and exits 0.

Once its listeners are bound it writes the line ``ready`` to stdout, which the main process reads
to know the worker is serving.  SIGINT is ignored: a Ctrl-C reaches the whole process group, and
the main process then stops the workers with SIGTERM in order.

The compiled core is required: if ``fastproxy._core`` cannot be imported the worker exits with
status 3 and says so; there is no pure-Python fallback.  A configuration or bind error exits 4.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import logging
import os
import signal
import sys
from typing import Optional, Sequence

from fastproxy.cli import LOG_LEVELS, setup_logging

log = logging.getLogger("fastproxy.main")

EXIT_NO_CORE = 3
EXIT_STARTUP = 4  # configuration or bind error
READY_LINE = b"ready\n"

_PR_SET_PDEATHSIG = 1


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fastproxy-worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--model", default=None,
                        help="the compiled configuration, pickled by the main process")
    parser.add_argument("--worker-index", type=int, required=True)
    parser.add_argument("--shm", required=True)
    parser.add_argument("--ports", default="",
                        help="the listeners' resolved ports, comma-separated, in config order")
    parser.add_argument("--log-level", choices=sorted(LOG_LEVELS), default="info")
    parser.add_argument("--drain-time-s", type=float, default=600.0)
    return parser.parse_args(argv)


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this worker if the main process dies without stopping it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _import_core():
    try:
        from fastproxy._core.connection import Worker
    except ImportError as exc:
        log.critical(
            "worker cannot start: the compiled core (fastproxy._core.connection) is not "
            "importable: %s. Build it with `python setup.py build_ext --inplace` "
            "(or install the package).", exc)
        return None
    return Worker


GC_THRESHOLD_0 = 5000  # Python's default is 700


async def serve(make_worker, drain_time_s: float, ready_fd: int = 1) -> None:
    """Build the worker (inside the running loop), start it, report readiness, and run until
    SIGTERM; then stop accepting, drain and close."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    worker = make_worker()
    try:
        await worker.start()
        # What exists now (configuration, tables, modules) lives as long as the worker: keep
        # it out of the cycle collector's passes, which then only walk per-request objects,
        # and let the youngest generation grow before a pass (the data plane makes few cycles).
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD_0, 10, 10)
        os.write(ready_fd, READY_LINE)
        await stop.wait()
        log.debug("worker %d draining", os.getpid())
        worker.stop_listening()
        await worker.drain(drain_time_s)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        worker.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()

    Worker = _import_core()
    if Worker is None:
        return EXIT_NO_CORE

    import uvloop

    from fastproxy.stats import StatsLayout

    if args.model:
        # The main process hands over the compiled model, so a worker never loads the schema.
        import pickle
        with open(args.model, "rb") as f:
            bootstrap = pickle.load(f)
    else:
        from fastproxy import config
        try:
            bootstrap = config.load_bootstrap(args.config)
        except config.ConfigError as exc:
            for error in getattr(exc, "errors", None) or [str(exc)]:
                log.critical("error initializing configuration '%s': %s", args.config, error)
            return EXIT_STARTUP
    ports = [int(p) for p in args.ports.split(",") if p]
    if len(ports) != len(bootstrap.listeners):
        log.critical("worker got %d port(s) for %d listener(s)", len(ports),
                     len(bootstrap.listeners))
        return EXIT_STARTUP
    layout = StatsLayout(bootstrap, ports)
    uvloop.install()
    try:
        asyncio.run(serve(
            lambda: Worker(bootstrap, layout, args.shm, args.worker_index, ports),
            args.drain_time_s))
    except OSError as exc:
        log.critical("worker %d failed: %s", args.worker_index, exc)
        return EXIT_STARTUP
    return 0


if __name__ == "__main__":
    sys.exit(main())
