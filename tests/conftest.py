"""Fixtures shared by all tests. The helpers themselves live in tests/helpers/:

    from helpers import raw_request, parse_response, make_bootstrap, EnvoyProcess, ...

Fixtures:
    origin            a running Origin (tests/helpers/origin.py), stopped after the test
    origin_factory    origin_factory() -> another running Origin (for several upstreams)
    envoy_bin         path of the Envoy binary (skips, or fails in CI, when there is none)
    envoy_factory     envoy_factory(config, admin_port=None, **kw) -> started EnvoyProcess
    fastproxy_factory fastproxy_factory(config, concurrency=1, **kw) -> started FastproxyProcess
    both_proxies      both_proxies(config_factory) -> ProxyPair(envoy, fastproxy), both started
                      on config_factory(listener_port, admin_port); stopped after the test
"""
from __future__ import annotations

import contextlib
import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from helpers import (  # noqa: E402
    EnvoyProcess,
    FastproxyProcess,
    Origin,
    find_envoy,
)
from helpers import both_proxies as _both_proxies  # noqa: E402


@pytest.fixture
def origin():
    with Origin() as o:
        yield o


@pytest.fixture
def origin_factory():
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(Origin())


@pytest.fixture(scope="session")
def envoy_bin():
    return find_envoy()


@pytest.fixture
def envoy_factory(envoy_bin):
    with contextlib.ExitStack() as stack:
        def start(config, admin_port=None, **kw):
            kw.setdefault("envoy_bin", envoy_bin)
            return stack.enter_context(EnvoyProcess(config, admin_port, **kw))

        yield start


@pytest.fixture
def fastproxy_factory():
    with contextlib.ExitStack() as stack:
        def start(config, concurrency=1, **kw):
            return stack.enter_context(FastproxyProcess(config, concurrency, **kw))

        yield start


@pytest.fixture
def both_proxies(envoy_bin):
    with contextlib.ExitStack() as stack:
        def start(config_factory, **kw):
            kw.setdefault("envoy_kwargs", {}).setdefault("envoy_bin", envoy_bin)
            return stack.enter_context(_both_proxies(config_factory, **kw))

        yield start
