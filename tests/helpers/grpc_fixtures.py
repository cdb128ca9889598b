"""Fixtures shared by the gRPC test modules (import them into a module to use them)."""
import pytest

from helpers.grpc_peers import GrpcEchoServer


@pytest.fixture(params=["fastproxy", pytest.param("envoy", marks=pytest.mark.parity)])
def start_proxy(request):
    """start_proxy(config) -> a running proxy (fastproxy, or Envoy for the reference run)."""
    return request.getfixturevalue("fastproxy_factory" if request.param == "fastproxy"
                                   else "envoy_factory")


@pytest.fixture(scope="module")
def server():
    """One gRPC echo server for the module's tests."""
    with GrpcEchoServer(max_workers=64) as s:
        yield s
