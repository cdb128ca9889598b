"""Headers the proxy adds, keeps or removes: x-forwarded-for/-proto, x-request-id,
x-envoy-* headers, date/server, hop-by-hop headers and the request header size limit."""
import copy
import re
import uuid

import pytest

from helpers import Origin, build_request, free_port, header_value, header_values, parse_response, raw_request
from integration_util import simple_proxy_config, start_proxy

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

# listener name -> HCM settings; one proxy process serves them all on separate listeners
LISTENERS = {
    "edge": {"use_remote_address": True},
    "internal": {"use_remote_address": False},
    "noid": {"use_remote_address": False, "generate_request_id": False},
    "small": {"max_request_headers_kb": 1},
}


@pytest.fixture(scope="module")
def env():
    with Origin() as origin:
        cfg = simple_proxy_config({"backend": [("127.0.0.1", origin.port)]})
        base = cfg["static_resources"]["listeners"][0]
        listeners = []
        ports = {}
        for name, hcm in LISTENERS.items():
            lst = copy.deepcopy(base)
            port = free_port()
            ports[name] = port
            lst["name"] = name
            lst["address"]["socket_address"]["port_value"] = port
            tc = lst["filter_chains"][0]["filters"][0]["typed_config"]
            tc["stat_prefix"] = name
            tc.update(hcm)
            listeners.append(lst)
        cfg["static_resources"]["listeners"] = listeners
        fp = start_proxy(cfg, 1)
        try:
            yield fp, origin, ports
        finally:
            fp.stop()


def _through(env, listener, headers=(), path="/h"):
    fp, origin, ports = env
    origin.clear()
    raw = raw_request(ports[listener], build_request("GET", path, list(headers)))
    status, rheaders, body = parse_response(raw)
    assert status == 200, raw[:400]
    return origin.wait_for_requests(1)[-1], rheaders


# --------------------------------------------------------------------------- x-forwarded-*


def test_xff_set_to_client_address_with_use_remote_address(env):
    req, _ = _through(env, "edge")
    assert req.header_values("x-forwarded-for") == ["127.0.0.1"]


def test_xff_appended_with_use_remote_address(env):
    req, _ = _through(env, "edge", [("X-Forwarded-For", "1.2.3.4")])
    values = req.header_values("x-forwarded-for")
    assert len(values) == 1
    assert [v.strip() for v in values[0].split(",")] == ["1.2.3.4", "127.0.0.1"]


def test_xff_untouched_without_use_remote_address(env):
    req, _ = _through(env, "internal", [("X-Forwarded-For", "1.2.3.4")])
    assert req.header_values("x-forwarded-for") == ["1.2.3.4"]
    req, _ = _through(env, "internal")
    assert req.header_values("x-forwarded-for") == []


def test_x_forwarded_proto_set_to_http(env):
    for listener in ("edge", "internal"):
        req, _ = _through(env, listener)
        assert req.header_values("x-forwarded-proto") == ["http"], listener


def test_x_forwarded_proto_from_external_client_overwritten(env):
    req, _ = _through(env, "edge", [("X-Forwarded-Proto", "https")])
    assert req.header_values("x-forwarded-proto") == ["http"]


def test_x_forwarded_proto_kept_without_use_remote_address(env):
    req, _ = _through(env, "internal", [("X-Forwarded-Proto", "https")])
    assert req.header_values("x-forwarded-proto") == ["https"]


def test_external_address_header_with_use_remote_address(env):
    # Envoy treats a loopback client as external unless internal_address_config says otherwise
    req, _ = _through(env, "edge")
    assert req.header("x-envoy-external-address") == "127.0.0.1"


def test_internal_envoy_headers_removed_from_external_requests(env):
    req, _ = _through(env, "edge", [("x-envoy-upstream-rq-timeout-ms", "100"),
                                     ("x-envoy-original-path", "/elsewhere")])
    assert req.header("x-envoy-upstream-rq-timeout-ms") is None
    assert req.header("x-envoy-original-path") is None
    assert req.header("x-envoy-expected-rq-timeout-ms") == "15000"


# --------------------------------------------------------------------------- x-request-id


def test_request_id_generated_as_uuid4(env):
    ids = set()
    for _ in range(5):
        req, _ = _through(env, "internal")
        rid = req.header_values("x-request-id")
        assert len(rid) == 1 and UUID4.match(rid[0]), rid
        assert uuid.UUID(rid[0]).version == 4
        ids.add(rid[0])
    assert len(ids) == 5


def test_request_id_preserved_when_given(env):
    req, _ = _through(env, "internal", [("X-Request-Id", "my-own-id-42")])
    assert req.header_values("x-request-id") == ["my-own-id-42"]


def test_request_id_not_generated_when_disabled(env):
    req, _ = _through(env, "noid")
    assert req.header_values("x-request-id") == []
    req, _ = _through(env, "noid", [("X-Request-Id", "keep-me")])
    assert req.header_values("x-request-id") == ["keep-me"]


# --------------------------------------------------------------------------- response headers


def test_upstream_service_time_in_response(env):
    _, rheaders = _through(env, "internal", path="/h?delay_ms=50")
    v = header_values(rheaders, "x-envoy-upstream-service-time")
    assert len(v) == 1 and v[0].isdigit(), v
    assert 40 <= int(v[0]) <= 2000


def test_expected_timeout_header_sent_upstream(env):
    req, _ = _through(env, "internal")
    assert req.header("x-envoy-expected-rq-timeout-ms") == "15000"


def test_date_header_added_when_upstream_has_none(env):
    # the test origin sends no Date header; Envoy always sets one on responses
    _, rheaders = _through(env, "internal")
    assert len(header_values(rheaders, "date")) == 1, rheaders


def test_upstream_date_header_kept(env):
    d = "Mon, 01 Jan 2001 00:00:00 GMT"
    _, rheaders = _through(env, "internal", [("x-origin-header", f"Date: {d}")])
    assert header_values(rheaders, "date") == [d]


def test_server_header_overwritten(env):
    _, rheaders = _through(env, "internal", [("x-origin-header", "Server: origin/1.0")])
    assert header_values(rheaders, "server") == ["envoy"]


def test_hop_by_hop_request_headers_removed(env):
    req, _ = _through(env, "internal", [("Connection", "keep-alive, x-hop"), ("x-hop", "1"),
                                         ("Keep-Alive", "timeout=5"),
                                         ("Proxy-Connection", "keep-alive"), ("x-end", "kept")])
    names = {k.lower() for k, _ in req.headers}
    assert not names & {"x-hop", "keep-alive", "proxy-connection"}, req.headers
    assert req.header("x-end") == "kept"


# --------------------------------------------------------------------------- header size limit


def test_request_headers_over_limit_get_431(env):
    fp, origin, ports = env
    before = fp.stats("http.small.")
    origin.clear()
    raw = raw_request(ports["small"], build_request("GET", "/big", [("x-big", "a" * 1100)]),
                      read_until_close=True, timeout=3)
    status, headers, body = parse_response(raw)
    assert status == 431
    assert header_value(headers, "connection") == "close"
    assert not [r for r in origin.requests if r.path == "/big"]
    after = fp.stats("http.small.")
    assert after["http.small.downstream_rq_4xx"] - before["http.small.downstream_rq_4xx"] == 1
    # downstream_rq_too_large is Envoy's stat for 413 on an over-large buffered body, not 431
    assert after["http.small.downstream_rq_too_large"] == before["http.small.downstream_rq_too_large"]


def test_request_headers_under_limit_pass(env):
    fp, origin, ports = env
    raw = raw_request(ports["small"], build_request("GET", "/fits", [("x-big", "a" * 800)]))
    assert parse_response(raw)[0] == 200


# --------------------------------------------------------------------------- request framing


@pytest.mark.parametrize("method,want", [("POST", ["0"]), ("PUT", ["0"]), ("GET", [])])
def test_bodyless_request_framing_upstream(env, method, want):
    """Envoy's HTTP/1 encoder states an empty body explicitly (content-length: 0) for methods
    that normally carry one, and adds nothing for GET."""
    fp, origin, ports = env
    origin.clear()
    raw = raw_request(ports["internal"], build_request(method, "/nobody"))
    assert parse_response(raw)[0] == 200
    assert origin.last.header_values("content-length") == want


def test_request_id_replaced_on_external_request(env):
    req, _ = _through(env, "edge", [("X-Request-Id", "client-chosen")])
    rid = req.header_values("x-request-id")
    assert len(rid) == 1 and UUID4.match(rid[0]), rid
