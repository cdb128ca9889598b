"""Command line: ``fastproxy -c FILE`` (also ``python -m fastproxy``).

The flags are Envoy's, restricted to the ones fastproxy implements; any other Envoy flag is
refused by the parser rather than silently ignored.

``--disable-hot-restart`` is accepted for drop-in compatibility with Envoy command lines and does
nothing: fastproxy has no hot restart.  ``--base-id`` only names the shared-memory stats block, so
several instances on one machine can run side by side with distinct ids.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Optional, Sequence

from fastproxy import __version__

ENVOY_API = "Envoy v3 API"

# Envoy's level names (spdlog), mapped to Python logging levels.  "warn" is accepted as Envoy does.
TRACE = 5
LOG_LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}
_LEVEL_NAMES = {
    TRACE: "trace",
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}

log = logging.getLogger("fastproxy.main")


class EnvoyFormatter(logging.Formatter):
    """Envoy's default log line: ``[%Y-%m-%d %T.%e][%t][%l][%n] %v``.

    ``%t`` (Envoy's thread id) is the process id here, since each worker is a process; ``%n`` is
    the logger's last name component (main, config, admin, upstream, ...).
    """

    def format(self, record: logging.LogRecord) -> str:
        t = time.localtime(record.created)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", t)
        level = _LEVEL_NAMES.get(record.levelno, record.levelname.lower())
        name = record.name.rsplit(".", 1)[-1]
        line = "[%s.%03d][%d][%s][%s] %s" % (
            stamp, int(record.msecs), record.process or os.getpid(), level, name,
            record.getMessage())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "info", path: Optional[str] = None) -> None:
    """Configure the ``fastproxy`` loggers: Envoy's format, to stderr or to ``path``."""
    logging.addLevelName(TRACE, "TRACE")
    root = logging.getLogger("fastproxy")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    if path:
        handler: logging.Handler = logging.FileHandler(path, mode="a")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EnvoyFormatter())
    root.addHandler(handler)
    root.setLevel(LOG_LEVELS[level])
    root.propagate = False


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_string())
        parser.exit(0)


def version_string() -> str:
    return "fastproxy %s (%s)" % (__version__, ENVOY_API)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid integer: %r" % text) from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1: %r" % text)
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid integer: %r" % text) from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative: %r" % text)
    return value


def _log_level(text: str) -> str:
    if text not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            "invalid log level specified '%s' (choose from %s)"
            % (text, ", ".join(k for k in LOG_LEVELS if k != "warn")))
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastproxy",
        description="An HTTP/1.1 proxy that runs Envoy v3 bootstrap configurations.",
    )
    parser.add_argument("-c", "--config-path", metavar="FILE",
                        help="path to the Envoy v3 bootstrap configuration (YAML or JSON)")
    parser.add_argument("--concurrency", type=_positive_int, default=None, metavar="N",
                        help="number of worker processes (default: the number of CPUs)")
    parser.add_argument("-l", "--log-level", type=_log_level, default="info", metavar="LEVEL",
                        help="log level: trace, debug, info, warning (or warn), error, "
                             "critical, off (default: info)")
    parser.add_argument("--log-path", metavar="FILE", default=None,
                        help="write logs to FILE instead of stderr")
    parser.add_argument("--mode", choices=("serve", "validate"), default="serve",
                        help="serve (default), or validate: check the configuration and exit")
    parser.add_argument("--drain-time-s", type=_non_negative_int, default=600, metavar="SECONDS",
                        help="how long workers drain connections on shutdown (default: 600)")
    parser.add_argument("--base-id", type=_non_negative_int, default=0, metavar="ID",
                        help="names the shared-memory stats block; give concurrent instances "
                             "distinct ids (default: 0)")
    parser.add_argument("--disable-hot-restart", action="store_true",
                        help="accepted for Envoy compatibility; fastproxy has no hot restart, so "
                             "this does nothing")
    parser.add_argument("--version", action=_VersionAction,
                        help="print the version and exit")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    options = parser.parse_args(argv)
    if not options.config_path:
        parser.error("a configuration is required: -c/--config-path FILE")
    if options.concurrency is None:
        options.concurrency = os.cpu_count() or 1
    return options


def load_config(path: str):
    """Load and validate ``path``; on failure log every error (Envoy's wording) and return None."""
    from fastproxy import config

    try:
        return config.load_bootstrap(path)
    except config.ConfigError as exc:
        errors = list(getattr(exc, "errors", None) or [str(exc)])
    except OSError as exc:
        errors = ["unable to read file: %s (%s)" % (path, exc.strerror or exc)]
    for error in errors:
        log.critical("error initializing configuration '%s': %s", path, error)
    return None


def load_config_isolated(path: str):
    """As load_config, compiling in a child process: the caller stays free of the schema."""
    from fastproxy.config import isolated

    bootstrap, errors = isolated.load(path)
    for error in errors:
        log.critical("error initializing configuration '%s': %s", path, error)
    return bootstrap


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parse_args(argv)
    setup_logging(options.log_level, options.log_path)
    if options.mode == "validate":
        bootstrap = load_config(options.config_path)
        if bootstrap is None:
            return 1
        print("configuration '%s' OK" % options.config_path)
        return 0
    from fastproxy.server.main import serve

    return serve(options)


if __name__ == "__main__":
    sys.exit(main())
