"""Configuration generators: the upstream nginx, the Envoy v3 bootstrap that both Envoy and
fastproxy get (differing only in ports), and equivalent HAProxy and nginx-as-proxy configs."""
from __future__ import annotations

import json
import os
import resource
import struct

from bench.scenarios import MiB, Scenario

HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager")
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
SMALL_BODY = "hello world\n"          # 12 bytes
UPLOAD_REPLY = "uploaded-ok\n"
CLUSTER = "upstream"
GRPC_REPLY = b"fastproxy-bench!"     # 16 bytes: the message of the h2c upstream's gRPC answer
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    """One gRPC length-prefixed message: a compressed flag byte, a 4-byte big-endian length,
    then the payload."""
    return struct.pack(">BI", 1 if compressed else 0, len(payload)) + payload


def grpc_request_body(message_bytes: int) -> bytes:
    """The request body of the gRPC scenario: one message of message_bytes bytes."""
    return grpc_message((b"0123456789abcdef" * (message_bytes // 16 + 1))[:message_bytes])


def _addr(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": int(port)}}


def envoy_bootstrap(scenario: Scenario, listen_port: int, admin_port: int,
                    upstream_port: int) -> dict:
    routes = [{"match": {"prefix": p}, "route": {"cluster": CLUSTER}}
              for p in scenario.route_prefixes]
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "ingress_http",
        # AUTO: HTTP/2 with prior knowledge when the connection starts with the HTTP/2
        # preface, else HTTP/1.1 (Envoy's default); HTTP1 keeps the HTTP/1.1 scenarios as
        # they were measured before.
        "codec_type": "AUTO" if scenario.protocol == "h2" else "HTTP1",
        "route_config": {
            "name": "bench_routes",
            "virtual_hosts": [{"name": "bench", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": ROUTER_TYPE}}],
    }
    cluster = {
        "name": CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": CLUSTER,
            "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": _addr(upstream_port)}}]}],
        },
    }
    if scenario.upstream_protocol == "h2":
        cluster["typed_extension_protocol_options"] = {HTTP_PROTOCOL_OPTIONS: {
            "@type": "type.googleapis.com/" + HTTP_PROTOCOL_OPTIONS,
            "explicit_http_config": {"http2_protocol_options": {}},
        }}
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
            "clusters": [cluster],
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


def _grpc_server(h2_port: int) -> str:
    """An h2c (prior knowledge) server answering every request the way a gRPC server answers a
    unary call: it reads the whole request, then answers 200, content-type application/grpc,
    one length-prefixed message, and the trailer grpc-status: 0 (nginx sends `add_trailer`
    fields as a trailing HEADERS frame on HTTP/2).

    A bare `return` would answer as soon as the request head is in, before the body, and then
    reset the stream (RST_STREAM NO_ERROR) if the body had not arrived yet: legal, but not
    what a gRPC server does, and it trips nginx's own grpc_pass (the nginx peer). So the body is
    read first by `mirror` (a subrequest to an internal location answering 204, in the
    precontent phase), the content phase finds no file (404, not logged) and error_page turns
    that into the fixed answer. This costs the upstream about 20% more CPU than a bare
    `return` (some 9 µs per call on the reference machine).

    The message goes into the config as raw bytes: nginx takes them as they are in a quoted
    string."""
    reply = grpc_message(GRPC_REPLY).decode("latin-1")
    # Raw in a quoted nginx string: ASCII only, none of the characters nginx interprets there.
    assert reply.isascii() and not set(reply) & set('"\\$;{}'), reply
    return f"""    server {{
        listen 127.0.0.1:{h2_port} http2 backlog=4096;
        http2_max_concurrent_streams 1024;
        location / {{
            mirror /_body_read;
            mirror_request_body on;
            root /nonexistent;
            log_not_found off;
            error_page 404 =200 @grpc_reply;
        }}
        location = /_body_read {{ internal; return 204; }}
        location @grpc_reply {{
            default_type application/grpc;
            add_trailer grpc-status 0 always;
            return 200 "{reply}";
        }}
    }}
"""


def upstream_nginx(tmp: str, port: int, h2_port: int = 0) -> str:
    """nginx (one worker) as the upstream: 12 bytes, 1 MiB on /1m, accepts 1 MiB on /upload;
    with h2_port, also an h2c gRPC-shaped server there (see _grpc_server)."""
    blob = os.path.join(tmp, "1m.bin")
    with open(blob, "wb") as f:
        f.write(b"x" * MiB)
    os.chmod(blob, 0o644)
    grpc = _grpc_server(h2_port) if h2_port else ""
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
{grpc}}}
"""


def nginx_proxy(tmp: str, scenario: Scenario, port: int, upstream_port: int) -> str:
    """nginx (one worker) as a reverse proxy with the scenario's route table."""
    # An h2c upstream is reached with grpc_pass (nginx's proxy_pass speaks HTTP/1.x only).
    upstream = (f"grpc_pass grpc://{CLUSTER}" if scenario.upstream_protocol == "h2"
                else f"proxy_pass http://{CLUSTER}")
    locs = "\n".join(f"        location {p} {{ {upstream}; }}"
                     for p in scenario.route_prefixes)
    # `listen ... http2` without TLS is HTTP/2 with prior knowledge only (nginx < 1.25).
    h2 = " http2" if scenario.protocol == "h2" else ""
    return _nginx_common(tmp) + f"""http {{
{_nginx_http_common(tmp)}
    upstream {CLUSTER} {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 600s;
    }}
    server {{
        listen 127.0.0.1:{port}{h2} backlog=4096;
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
    # A clear-text bind in HTTP mode takes HTTP/2 with prior knowledge by itself (it detects
    # the preface); the upstream needs `proto h2`.
    proto = " proto h2" if scenario.upstream_protocol == "h2" else ""
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
    server s1 127.0.0.1:{upstream_port}{proto}
"""
