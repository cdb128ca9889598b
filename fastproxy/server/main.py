"""The main process: loads the configuration, reserves the listeners' ports, creates the shared
stats block, serves the admin interface and supervises the worker processes.

Port reservation: for every listener the main process binds (but does not listen on) a socket with
SO_REUSEADDR and SO_REUSEPORT, and keeps it open while it runs.  A listener configured with port 0
thereby gets one concrete port that every worker then binds with SO_REUSEPORT, including workers
restarted later.  The sockets never listen, so the kernel never hands them a connection.

Supervision: a worker that exits unexpectedly is restarted after a backoff (0.1 s, doubling up to
5 s, reset once a worker has run for 10 s) and counted in ``server.worker_restarts``.  A worker
that fails during start-up (before the server first became LIVE, and before it reported ready)
is not restarted: that failure is deterministic (configuration, bind error, missing compiled
core), so the main process shuts down and exits 1, as Envoy does when it cannot start.
While a restarted worker comes up, /ready reports INITIALIZING with 503.

Shutdown (SIGTERM, SIGINT or ``POST /quitquitquit``): the server turns DRAINING, every worker gets
SIGTERM and drains for up to ``--drain-time-s``; a worker still running a second after that is
killed.  Then the stats block is removed and the process exits 0.
"""
from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import sys
import time
from typing import Optional

from fastproxy import __version__
from fastproxy.cli import ENVOY_API, load_config_isolated
from fastproxy.stats import limits

log = logging.getLogger("fastproxy.main")
config_log = logging.getLogger("fastproxy.config")

LOG_FORMAT = "[%Y-%m-%d %T.%e][%t][%l][%n] %v"
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0
BACKOFF_RESET_AFTER_S = 10.0
KILL_GRACE_S = 1.0

# Worker exit statuses with a known meaning (see fastproxy.server.worker).
WORKER_EXITS = {3: "compiled core not importable", 4: "start-up error"}

PRE_INITIALIZING = "PRE_INITIALIZING"
INITIALIZING = "INITIALIZING"
LIVE = "LIVE"
DRAINING = "DRAINING"


class StartupError(Exception):
    pass


def _format_address(address: str, port: int) -> str:
    return ("[%s]:%d" if ":" in address else "%s:%d") % (address, port)


def reserve_listener_ports(bootstrap) -> tuple[list[socket.socket], list[int]]:
    """Bind (without listening) one socket per listener; return the sockets and resolved ports."""
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        for listener in bootstrap.listeners:
            address = listener.address
            family = socket.AF_INET6 if address.is_ipv6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((address.address, address.port))
            except OSError as exc:
                raise StartupError("cannot bind listener '%s' to %s: %s" % (
                    listener.name, _format_address(address.address, address.port),
                    exc.strerror or exc)) from None
            ports.append(sock.getsockname()[1])
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets, ports


class Supervisor:
    def __init__(self, options, bootstrap, ports: list[int], shared, layout, log_file=None):
        self.options = options
        self.bootstrap = bootstrap
        self.ports = ports
        self.shared = shared
        self.layout = layout
        self.model_path = shared.path + ".model"
        with open(self.model_path, "wb") as f:
            pickle.dump(bootstrap, f, protocol=pickle.HIGHEST_PROTOCOL)
        self.log_file = log_file
        self.concurrency = options.concurrency
        self.started_at = time.time()
        self.state = PRE_INITIALIZING
        self.exit_code = 0
        self.procs: list[Optional[asyncio.subprocess.Process]] = [None] * self.concurrency
        self.ready = [False] * self.concurrency
        self.ever_ready = False
        self.restarts = 0
        self.admin = None
        self._stop: Optional[asyncio.Event] = None
        self.host_health = None  # fastproxy.upstream.health.HostHealth, when configured

    # -- admin provider ----------------------------------------------------------------------

    def stats(self):
        from fastproxy.admin.server import stat_rows

        self._set_gauge("server.uptime", int(time.time() - self.started_at))
        limits.refresh(self.shared, self.layout, self.bootstrap)
        if self.host_health is not None:
            self.host_health.refresh_stats()
        return stat_rows(self.layout.names, self.layout.kinds, self.shared.sum(),
                         getattr(self.layout, "lazy", None))

    def server_state(self) -> str:
        return self.state

    def server_info(self) -> dict:
        uptime = "%ds" % int(time.time() - self.started_at)
        major, minor, patch = (list(map(int, __version__.split(".")[:3])) + [0, 0, 0])[:3]
        o = self.options
        return {
            "version": "fastproxy/%s (%s)" % (__version__, ENVOY_API),
            "state": self.state,
            "uptime_current_epoch": uptime,
            "uptime_all_epochs": uptime,
            "hot_restart_version": "disabled",
            "command_line_options": {
                "base_id": str(o.base_id),
                "concurrency": o.concurrency,
                "config_path": o.config_path,
                "log_level": o.log_level,
                "log_format": LOG_FORMAT,
                "log_path": o.log_path or "",
                "drain_time": "%ds" % o.drain_time_s,
                "mode": "Serve",
                "disable_hot_restart": bool(o.disable_hot_restart),
            },
            "node": {
                "id": self.bootstrap.node_id,
                "cluster": self.bootstrap.node_cluster,
                "user_agent_name": "fastproxy",
                "user_agent_build_version": {
                    "version": {"major_number": major, "minor_number": minor, "patch": patch},
                },
            },
        }

    def request_shutdown(self) -> None:
        if self._stop is not None and not self._stop.is_set():
            log.info("shutting down server instance")
            self._stop.set()

    # -- internals ---------------------------------------------------------------------------

    def _has_stat(self, name: str) -> bool:
        index = getattr(self.layout, "index", None)
        return index is None or name in index

    def _set_gauge(self, name: str, value: int) -> None:
        if self._has_stat(name):
            self.shared.set_gauge(0, name, value)

    def _count(self, name: str) -> None:
        if self._has_stat(name):
            self.shared.add(0, name)

    def _update_state(self) -> None:
        if self.state == DRAINING:
            return
        # Like Envoy's cluster initialization, LIVE waits for the first health check of each host.
        if all(self.ready) and (self.host_health is None or self.host_health.initialized):
            if self.state != LIVE:
                if not self.ever_ready:
                    log.info("all workers started (%d); server is LIVE", self.concurrency)
                self.ever_ready = True
                self.state = LIVE
                self._set_gauge("server.live", 1)
        elif self.ever_ready:
            self.state = INITIALIZING
            self._set_gauge("server.live", 0)

    def _worker_command(self, index: int) -> list[str]:
        return [
            sys.executable, "-m", "fastproxy.server.worker",
            "--config", os.path.abspath(self.options.config_path),
            "--model", self.model_path,
            "--worker-index", str(index),
            "--shm", self.shared.path,
            "--ports", ",".join(map(str, self.ports)),
            "--log-level", self.options.log_level,
            "--drain-time-s", str(self.options.drain_time_s),
        ]

    async def _read_ready(self, index: int, proc) -> None:
        while True:
            line = await proc.stdout.readline()
            if not line:
                return
            if line == b"ready\n":
                if self.procs[index] is proc:
                    self.ready[index] = True
                    log.debug("worker %d (pid %d) ready", index, proc.pid)
                    self._update_state()
            else:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()

    async def _run_slot(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_INITIAL_S
        while not self._stop.is_set():
            started = loop.time()
            proc = await asyncio.create_subprocess_exec(
                *self._worker_command(index),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=self.log_file,
            )
            self.procs[index] = proc
            if self._stop.is_set():  # shutdown began while it was being spawned
                proc.send_signal(signal.SIGTERM)
            reader = asyncio.ensure_future(self._read_ready(index, proc))
            status = await proc.wait()
            await reader
            was_ready = self.ready[index]
            self.ready[index] = False
            self.procs[index] = None
            # Give back the circuit breaker counts the dead worker held (the connections and
            # requests it counted are gone with it).
            limits.release_worker(self.shared.path, index)
            if self._stop.is_set():
                return
            self._update_state()
            how = ("signal %d" % -status) if status < 0 else ("status %d" % status)
            if status in WORKER_EXITS:
                how += " (%s)" % WORKER_EXITS[status]
            if not was_ready and not self.ever_ready:
                # Failing during start-up is deterministic (configuration, bind, missing core):
                # restarting would loop, so give up as Envoy does when it cannot start.
                log.critical("worker %d exited during start-up with %s; shutting down",
                             index, how)
                self.exit_code = 1
                self._stop.set()
                return
            if loop.time() - started >= BACKOFF_RESET_AFTER_S:
                backoff = BACKOFF_INITIAL_S
            self.restarts += 1
            self._count("server.worker_restarts")
            log.warning("worker %d (pid %d) exited with %s; restarting in %.1fs",
                        index, proc.pid, how, backoff)
            try:
                await asyncio.wait_for(self._stop.wait(), backoff)
                return
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _stop_workers(self, slots: list[asyncio.Task]) -> None:
        for proc in self.procs:
            if proc is not None and proc.returncode is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = self.options.drain_time_s + KILL_GRACE_S
        done, pending = await asyncio.wait(slots, timeout=deadline)
        if pending:
            for index, proc in enumerate(self.procs):
                if proc is not None and proc.returncode is None:
                    log.warning("worker %d (pid %d) still running after the drain time; killing",
                                index, proc.pid)
                    try:
                        proc.kill()
                    except ProcessLookupError:
                        pass
            await asyncio.wait(pending)
        for task in slots:
            if not task.cancelled() and task.exception() is not None:
                log.error("worker supervision failed: %s", task.exception())

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_shutdown)
        self._set_gauge("server.concurrency", self.concurrency)
        self._set_gauge("server.live", 0)
        try:
            admin = self.bootstrap.admin
            if admin is not None:
                from fastproxy.admin.server import AdminServer

                server = AdminServer(self, admin.address.address, admin.address.port)
                try:
                    await server.start()
                except OSError as exc:
                    log.critical("cannot bind the admin listener to %s: %s",
                                 _format_address(admin.address.address, admin.address.port),
                                 exc.strerror or exc)
                    return 1
                self.admin = server
                log.info("admin address: %s", server.address)
            if self.host_health is not None:
                self.host_health.start(self._update_state)
            log.info("starting %d worker(s)", self.concurrency)
            slots = [asyncio.ensure_future(self._run_slot(i)) for i in range(self.concurrency)]
            await self._stop.wait()
            self.state = DRAINING
            self._set_gauge("server.live", 0)
            await self._stop_workers(slots)
            if self.host_health is not None:
                await self.host_health.stop()
            return self.exit_code
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if self.admin is not None:
                self.admin.close()
                await self.admin.wait_closed()


def serve(options) -> int:
    """Run the server for parsed command-line ``options``; returns the exit status."""
    log.info("initializing fastproxy %s (%s), base id %d, concurrency %d",
             __version__, ENVOY_API, options.base_id, options.concurrency)
    if options.disable_hot_restart:
        log.debug("--disable-hot-restart: fastproxy has no hot restart; nothing to disable")
    bootstrap = load_config_isolated(options.config_path)
    if bootstrap is None:
        return 1
    config_log.info("loading %d cluster(s)", len(bootstrap.clusters))
    config_log.info("loading %d listener(s)", len(bootstrap.listeners))

    import uvloop

    from fastproxy.stats import SharedStats, StatsLayout, shm_path

    try:
        sockets, ports = reserve_listener_ports(bootstrap)
    except StartupError as exc:
        log.critical("%s", exc)
        return 1
    for listener, port in zip(bootstrap.listeners, ports):
        log.info("listener '%s' on %s", listener.name,
                 _format_address(listener.address.address, port))

    log_file = None
    shared = None
    host_health = None
    try:
        layout = StatsLayout(bootstrap, ports)
        shared = SharedStats.create(shm_path(options.base_id), options.concurrency + 1, layout)
        limits.create_blocks(bootstrap, shared.path, options.concurrency)
        if options.log_path:
            log_file = open(options.log_path, "ab")
        supervisor = Supervisor(options, bootstrap, ports, shared, layout, log_file)
        from fastproxy.upstream.health import HostHealth

        host_health = supervisor.host_health = HostHealth.create(bootstrap, shared, layout)
        uvloop.install()
        code = asyncio.run(supervisor.run())
        log.info("exiting")
        return code
    finally:
        if host_health is not None:
            host_health.close()
        if shared is not None:
            limits.close_blocks(shared.path)
            limits.remove_blocks(shared.path)
            shared.close()
            shared.unlink()
            try:
                os.unlink(shared.path + ".model")
            except FileNotFoundError:
                pass
        for sock in sockets:
            sock.close()
        if log_file is not None:
            log_file.close()
