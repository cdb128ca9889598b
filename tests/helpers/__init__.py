"""Shared test helpers: a scriptable origin, raw HTTP/1.1 client and parser, Envoy and
fastproxy runners, and a bootstrap generator. See tests/conftest.py for the fixtures."""
from .bootstrap import make_bootstrap, route_to
from .envoy import EnvoyProcess, default_envoy_venv, find_envoy
from .fastproxy_process import FastproxyProcess
from .net import (
    IncompleteResponse,
    build_request,
    free_port,
    header_value,
    header_values,
    is_listening,
    parse_response,
    parse_responses,
    raw_request,
    response_end,
    wait_for_listen,
    wait_for_port,
)
from .origin import Origin, RecordedRequest
from .parity import ProxyPair, both_proxies, free_ports
from .process import ProxyProcess, in_ci

__all__ = [
    "make_bootstrap", "route_to",
    "EnvoyProcess", "default_envoy_venv", "find_envoy",
    "FastproxyProcess",
    "IncompleteResponse", "build_request", "free_port", "free_ports", "header_value", "header_values",
    "is_listening", "parse_response", "parse_responses", "raw_request", "response_end",
    "wait_for_listen", "wait_for_port",
    "Origin", "RecordedRequest",
    "ProxyPair", "both_proxies",
    "ProxyProcess", "in_ci",
]
