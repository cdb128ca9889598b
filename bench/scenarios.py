"""The benchmark scenarios, declared in one table.

Each scenario says which load tool drives it (and how), what the proxies' configuration must
contain (number of routes, where the match is, the protocols on both sides), and which figures
it yields.  Adding a scenario is adding one ``Scenario(...)`` to ``SCENARIOS``; a new *kind* of
load (say, TLS) adds a ``tool`` value handled in ``bench/load.py`` and, where needed, a
``protocol`` value handled by the config generators in ``bench/configs.py``.  HTTP/2 is there:
``tool="h2load"`` with ``protocol="h2"`` (clients with prior knowledge), and
``upstream_protocol="h2"`` for an h2c upstream (``grpc_unary``).

Figures are named in ``FIGURES`` (label, unit, and whether higher or lower is better), so the
report, the ratios and ``--compare`` treat every figure the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

MiB = 1024 * 1024


@dataclass(frozen=True)
class Figure:
    label: str
    unit: str
    higher_is_better: bool
    fmt: str = "{:.1f}"


FIGURES: Dict[str, Figure] = {
    "rps": Figure("requests/s", "req/s", True, "{:,.0f}"),
    "cpu_us_per_req": Figure("proxy CPU per request", "µs", False, "{:.1f}"),
    "mb_per_s": Figure("throughput", "MB/s", True, "{:,.0f}"),
    "cpu_s_per_gb": Figure("proxy CPU per GB", "s/GB", False, "{:.2f}"),
    "p50_ms": Figure("latency p50", "ms", False, "{:.3f}"),
    "p90_ms": Figure("latency p90", "ms", False, "{:.3f}"),
    "p99_ms": Figure("latency p99", "ms", False, "{:.3f}"),
    "p999_ms": Figure("latency p99.9", "ms", False, "{:.3f}"),
    "max_ms": Figure("latency max", "ms", False, "{:.3f}"),
    "peak_rss_mb": Figure("peak RSS", "MB", False, "{:.1f}"),
    "idle_rss_mb": Figure("idle RSS before load", "MB", False, "{:.1f}"),
    "rss_per_conn_kb": Figure("RSS per idle connection", "KB", False, "{:.2f}"),
    "probe_ms": Figure("one request beside the idle connections", "ms", False, "{:.3f}"),
}

# Figures every closed-loop segment yields.
_CLOSED = ("rps", "cpu_us_per_req", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms",
           "peak_rss_mb", "idle_rss_mb")
_BULK = ("mb_per_s", "cpu_s_per_gb", "rps", "p50_ms", "p99_ms", "max_ms", "peak_rss_mb",
         "idle_rss_mb")


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    tool: str                              # "wrk" | "openloop" | "idle" | "h2load"
    figures: Tuple[str, ...]
    method: str = "GET"
    path: str = "/"
    headers: Tuple[str, ...] = ()          # extra request headers, "Name: value"
    body_bytes: int = 0                    # request body size (uploads)
    payload_bytes: int = 0                 # bytes per request that MB/s and s/GB count
    connections: int = 32
    threads: int = 1
    streams: int = 1                       # h2load: concurrent streams per connection (-m)
    grpc_message_bytes: int = 0            # h2load: the request body is one gRPC message
                                           # (5-byte prefix + this many bytes)
    rate: int = 0                          # open loop: requests per second
    idle_connections: int = 0
    routes: int = 1                        # route table size of the generated configs
    protocol: str = "http1"                # downstream: "http1" | "h2" (prior knowledge;
                                           # listener codec_type AUTO); later: "tls"
    upstream_protocol: str = "http1"       # "http1" | "h2" (h2c, cluster http2_protocol_options)
    tool_args: Tuple[str, ...] = ()        # passed through to the tool as they are
    primary: str = "cpu_us_per_req"        # the figure the summary and the overview plot lead with
    fresh_proxies: bool = False            # restart the proxies before every round
    warmup: bool = True                    # one unmeasured segment per proxy before round 1

    def __post_init__(self) -> None:
        unknown = [f for f in self.figures if f not in FIGURES]
        if unknown:
            raise ValueError(f"scenario {self.name}: unknown figures {unknown}")
        if self.protocol not in ("http1", "h2"):
            raise ValueError(f"scenario {self.name}: unknown protocol {self.protocol!r}")
        if self.upstream_protocol not in ("http1", "h2"):
            raise ValueError(f"scenario {self.name}: unknown upstream_protocol "
                             f"{self.upstream_protocol!r}")
        if self.tool == "h2load" and self.protocol != "h2":
            raise ValueError(f"scenario {self.name}: h2load needs protocol='h2'")

    @property
    def route_prefixes(self) -> List[str]:
        """The prefixes of the generated route table; the request matches only the last one."""
        if self.routes <= 1:
            return ["/"]
        return [f"/r/{i:04d}/" for i in range(self.routes)]


GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")

SCENARIOS: List[Scenario] = [
    Scenario(
        name="small",
        description="keep-alive HTTP/1.1 GETs of a 12-byte body, closed loop (wrk -t1 -c32)",
        tool="wrk",
        figures=_CLOSED,
    ),
    Scenario(
        name="fixed_rate",
        description="open loop at 2000 req/s over 32 keep-alive connections; latency counted "
                    "from each request's scheduled send time (no coordinated omission)",
        tool="openloop",
        rate=2000,
        figures=("rps", "cpu_us_per_req", "p50_ms", "p99_ms", "p999_ms", "max_ms",
                 "peak_rss_mb", "idle_rss_mb"),
    ),
    Scenario(
        name="new_connection",
        description="a new connection per request (wrk -t1 -c32, 'Connection: close')",
        tool="wrk",
        headers=("Connection: close",),
        figures=_CLOSED,
    ),
    Scenario(
        name="large_response",
        description="1 MiB responses over keep-alive connections (wrk -t1 -c8)",
        tool="wrk",
        path="/1m",
        connections=8,
        payload_bytes=MiB,
        figures=_BULK,
        primary="cpu_s_per_gb",
    ),
    Scenario(
        name="large_upload",
        description="1 MiB POST bodies, small responses (wrk -t1 -c8 with a Lua script)",
        tool="wrk",
        method="POST",
        path="/upload",
        connections=8,
        body_bytes=MiB,
        payload_bytes=MiB,
        figures=_BULK,
        primary="cpu_s_per_gb",
    ),
    Scenario(
        name="idle_connections",
        description="idle keep-alive connections (10,000 by default; each served one request "
                    "first): "
                    "proxy RSS growth per connection, then one request on a new connection",
        tool="idle",
        idle_connections=10_000,
        fresh_proxies=True,
        warmup=False,
        figures=("rss_per_conn_kb", "probe_ms", "idle_rss_mb"),
        primary="rss_per_conn_kb",
    ),
    Scenario(
        name="routes_1000",
        description="1,000 prefix routes, the request matching the last one; closed loop "
                    "(wrk -t1 -c32)",
        tool="wrk",
        path="/r/0999/x",
        routes=1000,
        figures=_CLOSED,
    ),
    Scenario(
        name="h2_multiplexed",
        description="HTTP/2 prior-knowledge GETs of a 12-byte body, 4 connections × 10 "
                    "concurrent streams, closed loop (h2load -t1 -c4 -m10); HTTP/1.1 upstream "
                    "(the one of `small`)",
        tool="h2load",
        protocol="h2",
        connections=4,
        streams=10,
        figures=_CLOSED,
    ),
    Scenario(
        name="grpc_unary",
        description="gRPC-shaped unary calls over HTTP/2 end to end: POSTs of a 16-byte "
                    "length-prefixed message (content-type: application/grpc, te: trailers), "
                    "4 connections × 10 concurrent streams (h2load -t1 -c4 -m10); h2c upstream "
                    "answering 200, a 16-byte message and the trailer grpc-status: 0",
        tool="h2load",
        protocol="h2",
        upstream_protocol="h2",
        method="POST",
        path="/bench.Echo/Unary",
        headers=GRPC_HEADERS,
        grpc_message_bytes=16,
        connections=4,
        streams=10,
        figures=_CLOSED,
    ),
]

BY_NAME: Dict[str, Scenario] = {s.name: s for s in SCENARIOS}


def select(names: Optional[str]) -> List[Scenario]:
    """Scenarios named in a comma-separated list (all when empty), in table order."""
    if not names:
        return list(SCENARIOS)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}; "
                         f"known: {', '.join(BY_NAME)}")
    return [s for s in SCENARIOS if s.name in wanted]
