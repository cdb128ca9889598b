"""Reading a bootstrap file: YAML/JSON text -> dict -> `envoy.config.bootstrap.v3.Bootstrap`.

Parsing goes through `google.protobuf.json_format`, so the schema checks are Envoy's own.  Before
parsing, every `typed_config`-style object whose `@type` is not a registered message is swapped for
an empty placeholder and remembered by path, so that the support walk can refuse it by name instead
of json_format failing on the first one.
"""
from __future__ import annotations

import json
import re
from typing import Any

import yaml
from google.protobuf import descriptor_pool, json_format
from google.protobuf import empty_pb2  # noqa: F401  (registers the placeholder type)

# Registering the extension messages we implement lets json_format resolve their typed_configs.
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2  # noqa: F401
from envoy.extensions.filters.http.grpc_web.v3 import grpc_web_pb2  # noqa: F401
from envoy.extensions.filters.http.grpc_stats.v3 import config_pb2 as grpc_stats_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
from envoy.extensions.access_loggers.file.v3 import file_pb2  # noqa: F401
from envoy.extensions.access_loggers.stream.v3 import stream_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)

from .errors import ConfigError

PLACEHOLDER_TYPE = "google.protobuf.Empty"
_PLACEHOLDER_URL = "type.googleapis.com/" + PLACEHOLDER_TYPE
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def snake(key: str) -> str:
    """The proto field name for a JSON key (json_format accepts both spellings).  A key with a dot
    is a map key (a filter or extension name such as "envoy.extensions.upstreams.http.v3.
    HttpProtocolOptions"; field names have no dots): it is kept as written."""
    if "." in key:
        return key
    return _CAMEL.sub(lambda m: "_" + m.group(1).lower(), key)


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not UTF-8: {exc}") from None


def parse_text(text: str, path: str = "") -> dict:
    """Text -> dict, choosing the syntax by extension (.json, .yaml/.yml; otherwise JSON then YAML)."""
    lower = path.lower()
    if lower.endswith(".json"):
        kinds = ["json"]
    elif lower.endswith((".yaml", ".yml")):
        kinds = ["yaml"]
    else:
        kinds = ["json", "yaml"]
    last_error = ""
    for kind in kinds:
        try:
            data = json.loads(text) if kind == "json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            last_error = f"invalid {kind.upper()}: {exc}"
            continue
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"the bootstrap must be a mapping, not {type(data).__name__}")
        return data
    raise ConfigError(last_error)


def replace_unknown_any(data: Any, path: str = "") -> dict[str, str]:
    """Swap objects whose "@type" names an unregistered message for a placeholder, in place.

    Returns {path: type name} for each one swapped; paths use snake_case field names.
    """
    found: dict[str, str] = {}
    pool = descriptor_pool.Default()

    def walk(node: Any, p: str) -> None:
        if isinstance(node, dict):
            for key, value in list(node.items()):
                if not isinstance(key, str):
                    continue
                child = f"{p}.{snake(key)}" if p else snake(key)
                if isinstance(value, dict) and isinstance(value.get("@type"), str):
                    type_name = value["@type"].rsplit("/", 1)[-1]
                    try:
                        pool.FindMessageTypeByName(type_name)
                    except KeyError:
                        found[child] = type_name
                        node[key] = {"@type": _PLACEHOLDER_URL}
                        continue
                walk(value, child)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{p}[{i}]")

    walk(data, path)
    return found


_AT = re.compile(r' at "?Bootstrap\.([^"\s]*?)"?\.*(?:\s|$)')
_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "([^"]+)"')
_FIELD = re.compile(r"Failed to parse (\w+) field: ")


def _parse_error_text(message: str) -> str:
    """Turn json_format's nested message into "path: problem"."""
    first = message.split("\n", 1)[0]
    at = _AT.search(first)
    chain = _FIELD.findall(first)
    inner = _FIELD.sub("", first)
    if at:
        where = at.group(1)
        inner = _AT.sub(" ", inner)
    else:
        where = ".".join(chain)
    inner = inner.strip().rstrip(".").strip()
    unknown = _NO_FIELD.search(inner)
    if unknown:
        where = f"{where}.{unknown.group(2)}" if where else unknown.group(2)
        inner = f"unknown field (no field named {unknown.group(2)!r} in {unknown.group(1)})"
    return f"{where}: {inner}" if where else inner


def parse_dict(data: dict) -> tuple[bootstrap_pb2.Bootstrap, dict[str, str]]:
    """dict -> Bootstrap message, plus the unregistered typed_config types found (by path)."""
    unknown = replace_unknown_any(data)
    msg = bootstrap_pb2.Bootstrap()
    try:
        json_format.ParseDict(data, msg)
    except json_format.ParseError as exc:
        raise ConfigError(_parse_error_text(str(exc))) from None
    return msg, unknown


def load_proto(path: str) -> tuple[bootstrap_pb2.Bootstrap, dict[str, str]]:
    return parse_dict(parse_text(read_text(path), path))
