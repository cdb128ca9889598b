"""Configuration generators: the upstream nginx, the Envoy v3 bootstrap that both Envoy and
fastproxy get (differing only in ports), and equivalent HAProxy and nginx-as-proxy configs."""
from __future__ import annotations

import json
import os
import resource

from bench.scenarios import MiB, Scenario

HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager")
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
SMALL_BODY = "hello world\n"          # 12 bytes
UPLOAD_REPLY = "uploaded-ok\n"
CLUSTER = "upstream"


def _addr(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": int(port)}}


def envoy_bootstrap(scenario: Scenario, listen_port: int, admin_port: int,
                    upstream_port: int) -> dict:
    routes = [{"match": {"prefix": p}, "route": {"cluster": CLUSTER}}
              for p in scenario.route_prefixes]
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "ingress_http",
        "codec_type": "HTTP1",
        "route_config": {
            "name": "bench_routes",
            "virtual_hosts": [{"name": "bench", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": ROUTER_TYPE}}],
    }
    return {
        "admin": {"address": _addr(admin_port)},
        "static_resources": {
            "listeners": [{
                "name": "bench_listener",
                "address": _addr(listen_port),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm,
                }]}],
            }],
            "clusters": [{
                "name": CLUSTER,
                "type": "STATIC",
                "connect_timeout": "1s",
                "lb_policy": "ROUND_ROBIN",
                "load_assignment": {
                    "cluster_name": CLUSTER,
                    "endpoints": [{"lb_endpoints": [
                        {"endpoint": {"address": _addr(upstream_port)}}]}],
                },
            }],
        },
    }


def write_envoy_bootstrap(path: str, *args) -> str:
    with open(path, "w") as f:
        json.dump(envoy_bootstrap(*args), f, indent=1)
    return path


def fd_limit() -> int:
    """The soft RLIMIT_NOFILE the proxies inherit (the harness raises it first)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def haproxy_maxconn() -> int:
    # HAProxy reserves two descriptors per connection and refuses to start otherwise.
    return max(1000, min(30000, (fd_limit() - 200) // 2))


def _nginx_common(tmp: str) -> str:
    nofile = fd_limit()
    return f"""worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log error;
worker_rlimit_nofile {nofile};
events {{ worker_connections {min(30000, nofile - 100)}; multi_accept on; }}
"""


def _nginx_http_common(tmp: str) -> str:
    return f"""    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    default_type text/plain;
"""


def upstream_nginx(tmp: str, port: int) -> str:
    """nginx (one worker) as the upstream: 12 bytes, 1 MiB on /1m, accepts 1 MiB on /upload."""
    blob = os.path.join(tmp, "1m.bin")
    with open(blob, "wb") as f:
        f.write(b"x" * MiB)
    os.chmod(blob, 0o644)
    return _nginx_common(tmp) + f"""http {{
{_nginx_http_common(tmp)}
    upstream upload_done {{ server 127.0.0.1:{port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /1m {{ alias {blob}; default_type application/octet-stream; }}
        # Read the whole body before answering (a bare `return` would answer first and
        # leave the proxy with a half-sent request), then answer via a small loop-back.
        location = /upload {{
            client_max_body_size 2m;
            client_body_buffer_size 2m;
            proxy_pass http://upload_done/_uploaded;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location = /_uploaded {{ return 200 "{UPLOAD_REPLY.strip()}\\n"; }}
        location / {{ return 200 "{SMALL_BODY.strip()}\\n"; }}
    }}
}}
"""


def nginx_proxy(tmp: str, scenario: Scenario, port: int, upstream_port: int) -> str:
    """nginx (one worker) as a reverse proxy with the scenario's route table."""
    locs = "\n".join(
        f"        location {p} {{ proxy_pass http://{CLUSTER}; }}"
        for p in scenario.route_prefixes)
    return _nginx_common(tmp) + f"""http {{
{_nginx_http_common(tmp)}
    upstream {CLUSTER} {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 600s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        client_max_body_size 2m;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_connect_timeout 1s;
{locs}
    }}
}}
"""


def haproxy(scenario: Scenario, port: int, upstream_port: int) -> str:
    """HAProxy (nbthread 1) with the scenario's route table as path_beg rules."""
    if scenario.routes <= 1:
        rules = f"    default_backend {CLUSTER}\n"
    else:
        rules = "".join(f"    use_backend {CLUSTER} if {{ path_beg {p} }}\n"
                        for p in scenario.route_prefixes)
    return f"""global
    nbthread 1
    maxconn {haproxy_maxconn()}
    log stderr local0 err

defaults
    mode http
    timeout connect 1s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s
    option http-keep-alive

frontend bench
    bind 127.0.0.1:{port} backlog 4096
{rules}
backend {CLUSTER}
    http-reuse always
    server s1 127.0.0.1:{upstream_port}
"""
