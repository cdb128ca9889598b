"""HttpConnectionManager.access_log: envoy.access_loggers.file and envoy.access_loggers.stdout with
text format strings (`log_format.text_format_source` / `log_format.text_format`, or the deprecated
`format` of the file logger).  Fields outside this (filter, json_format, ...) are refused by the
support walk; the format string is compiled here so that an unknown operator is refused by path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .errors import Errors, join
from .support import unpack_any

FILE_TYPE = "envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_TYPE = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"


@dataclass(frozen=True)
class AccessLogConfig:
    kind: str  # "file" or "stdout"
    path: str = ""  # file path for "file" ("/dev/stdout" allowed)
    format: Optional[str] = None  # the format string; None = Envoy's default format


def compile_access_logs(h, path: str, errors: Errors) -> list[AccessLogConfig]:
    """The access loggers of an HttpConnectionManager message (`path` is its access_log field)."""
    out: list[AccessLogConfig] = []
    for i, entry in enumerate(h.access_log):
        epath = f"{path}[{i}]"
        tpath = join(epath, "typed_config")
        if not entry.HasField("typed_config"):
            errors.add(tpath, f"value is required (the implementation of '{entry.name}' is "
                              "chosen by its @type)")
            continue
        inner = unpack_any(entry.typed_config)
        if inner is None:
            continue  # reported by the support walk
        kind = inner.DESCRIPTOR.full_name
        if kind == FILE_TYPE:
            fmt, fpath = _file_format(inner, tpath)
            cfg = AccessLogConfig("file", inner.path, fmt)
        elif kind == STDOUT_TYPE:
            fmt, fpath = _log_format(inner, tpath)
            cfg = AccessLogConfig("stdout", "", fmt)
        else:
            errors.add(tpath, f"type {kind} not supported as an access logger")
            continue
        if fmt is not None and not _check_format(fmt, fpath, errors):
            continue
        out.append(cfg)
    return out


def _file_format(msg, path: str):
    """(format string or None, its path) of a FileAccessLog."""
    case = msg.WhichOneof("access_log_format")
    if case == "format":
        return (msg.format or None), join(path, "format")
    if case == "log_format":
        return _log_format(msg, path)
    return None, path  # json_format / typed_json_format are refused by the support walk


def _log_format(msg, path: str):
    """(format string or None, its path) of the `log_format` SubstitutionFormatString."""
    if not msg.HasField("log_format"):
        return None, path
    lf = msg.log_format
    lpath = join(path, "log_format")
    case = lf.WhichOneof("format")
    if case == "text_format":
        return lf.text_format, join(lpath, "text_format")
    if case == "text_format_source":
        src = lf.text_format_source
        spath = join(lpath, "text_format_source")
        which = src.WhichOneof("specifier")
        if which == "inline_string":
            return src.inline_string, join(spath, "inline_string")
        if which == "inline_bytes":
            return src.inline_bytes.decode("utf-8", "replace"), join(spath, "inline_bytes")
        return None, spath  # other sources are refused by the support walk
    return None, lpath


def _check_format(fmt: str, path: str, errors: Errors) -> bool:
    from fastproxy._core.accesslog import compile_format

    try:
        compile_format(fmt)
    except ValueError as exc:
        errors.add(path, str(exc))
        return False
    return True
