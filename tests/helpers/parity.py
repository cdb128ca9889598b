"""Running Envoy and fastproxy side by side on the same configuration."""
from __future__ import annotations

import contextlib
import socket
from typing import Callable, NamedTuple

from .envoy import EnvoyProcess
from .fastproxy_process import FastproxyProcess

__all__ = ["both_proxies", "ProxyPair", "free_ports"]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports that were free a moment ago (all held open together while picking)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ProxyPair(NamedTuple):
    """The two running proxies; each has .name, .port (listener), .admin_port, .stats()..."""

    envoy: EnvoyProcess
    fastproxy: FastproxyProcess

    @property
    def ports(self) -> tuple[int, int]:
        return (self.envoy.port, self.fastproxy.port)


@contextlib.contextmanager
def both_proxies(config_factory: Callable[[int, int], object], *, concurrency: int = 1,
                 envoy_kwargs: dict | None = None, fastproxy_kwargs: dict | None = None):
    """Start Envoy and fastproxy, each on the config `config_factory(listener_port, admin_port)`
    gives for its own ports, and yield a ProxyPair. Iterating over the pair gives
    (envoy, fastproxy), so a test can run the same requests through both:

        with both_proxies(lambda lp, ap: make_bootstrap(lp, ap, {"o": [origin.address]})) as pair:
            for proxy in pair:
                raw_request(proxy.port, req)
    """
    e_listen, e_admin, f_listen, f_admin = free_ports(4)
    with EnvoyProcess(config_factory(e_listen, e_admin), e_admin, concurrency=concurrency,
                      **(envoy_kwargs or {})) as envoy:
        with FastproxyProcess(config_factory(f_listen, f_admin), concurrency=concurrency,
                              admin_port=f_admin, **(fastproxy_kwargs or {})) as fastproxy:
            yield ProxyPair(envoy, fastproxy)
