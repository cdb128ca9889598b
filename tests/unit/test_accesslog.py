"""Access logs: format strings (Envoy's command operators), the file logger, and the config."""
from __future__ import annotations

import asyncio
import copy

import pytest

from fastproxy._core import accesslog
from fastproxy._core.accesslog import (
    DEFAULT_FORMAT, AccessLogEntry, FileAccessLog, StdoutAccessLog, compile_format,
    flags_string, make_access_logs,
)
from fastproxy.config import ConfigError, load_dict
from fastproxy.config.access_log import AccessLogConfig

# Response flag bits (accesslog.pxd)
RF_LR, RF_UH, RF_UT, RF_UF, RF_UC, RF_UO, RF_NR = 1, 2, 4, 16, 32, 64, 128
RF_RL, RF_DC, RF_URX, RF_SI, RF_DPE, RF_DT, RF_UPE, RF_NC = (
    1 << 10, 1 << 13, 1 << 14, 1 << 15, 1 << 17, 1 << 21, 1 << 22, 1 << 23)

# 2026-11-27T18:40:22.604081Z
T0 = 1795804822.604081


def filled() -> AccessLogEntry:
    return AccessLogEntry(
        start_time=T0, duration=0.0129, response_code=503, flags=RF_UF | RF_URX,
        bytes_received=17, bytes_sent=91, protocol=b"HTTP/1.1",
        request_headers={
            ":method": b"POST", ":path": b"/a/b?c=d", ":authority": b"example.com",
            "x-envoy-original-path": b"/orig", "x-forwarded-for": b"10.1.2.3",
            "user-agent": b"curl/8.0", "x-request-id": b"rid-1",
        },
        upstream_service_time=7, upstream_host=b"10.0.0.5:8080", upstream_cluster="backend",
        downstream_remote_address=b"192.168.1.9:40000",
        downstream_local_address=b"127.0.0.1:10000", route_name="r1",
        response_code_details="upstream_reset_before_response_started{connection_failure}",
    )


def fmt(text: str, entry: AccessLogEntry) -> bytes:
    return compile_format(text).format(entry)


# -- format strings ---------------------------------------------------------------------------

def test_default_format_text():
    assert DEFAULT_FORMAT == (
        '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
        '%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
        '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
        '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n')


def test_default_format_filled():
    assert compile_format().format(filled()) == (
        b'[2026-11-27T18:40:22.604Z] "POST /orig HTTP/1.1" 503 UF,URX 17 91 12 7 "10.1.2.3" '
        b'"curl/8.0" "rid-1" "example.com" "10.0.0.5:8080"\n')


def test_default_format_direct_response():
    # as Envoy logs a direct response: no upstream, no X-Forwarded-For, no original path
    e = AccessLogEntry(start_time=T0, duration=0.0004, response_code=200, bytes_sent=2,
                       request_headers={":method": b"GET", ":path": b"/p?q",
                                        ":authority": b"127.0.0.1:18081", "user-agent": b"ua",
                                        "x-request-id": b"rid"})
    assert compile_format(None).format(e) == (
        b'[2026-11-27T18:40:22.604Z] "GET /p?q HTTP/1.1" 200 - 0 2 0 - "-" "ua" "rid" '
        b'"127.0.0.1:18081" "-"\n')


def test_default_wanted_headers():
    assert set(compile_format().wanted) == {
        ":method", "x-envoy-original-path", ":path", "x-forwarded-for", "user-agent",
        "x-request-id", ":authority"}


@pytest.mark.parametrize("text,expected", [
    ("%START_TIME%", b"2026-11-27T18:40:22.604Z"),
    ("%START_TIME(%s)%", b"1795804822"),
    ("%START_TIME(%Y/%m/%d %H:%M:%S)%", b"2026/11/27 18:40:22"),
    ("%START_TIME(%E3S|%E6S|%3f|%6f|%f|%%)%", b"22.604|22.604081|604|604081|604081000|%"),
    ("%REQ(:METHOD)%", b"POST"),
    ("%REQ(:path)%", b"/a/b?c=d"),
    ("%REQ(:AUTHORITY)%", b"example.com"),
    ("%REQ(User-Agent)%", b"curl/8.0"),
    ("%REQ(X-MISSING?:PATH)%", b"/a/b?c=d"),
    ("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", b"/orig"),
    ("%REQ(USER-AGENT):4%", b"curl"),
    ("%REQ(X-MISSING?:AUTHORITY):3%", b"exa"),
    ("%REQ(USER-AGENT):100%", b"curl/8.0"),
    ("%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", b"7"),
    ("%RESP(content-type)%", b"-"),
    ("%PROTOCOL%", b"HTTP/1.1"),
    ("%RESPONSE_CODE%", b"503"),
    ("%RESPONSE_FLAGS%", b"UF,URX"),
    ("%RESPONSE_CODE_DETAILS%", b"upstream_reset_before_response_started{connection_failure}"),
    ("%BYTES_RECEIVED%", b"17"),
    ("%BYTES_SENT%", b"91"),
    ("%DURATION%", b"12"),
    ("%UPSTREAM_HOST%", b"10.0.0.5:8080"),
    ("%UPSTREAM_CLUSTER%", b"backend"),
    ("%DOWNSTREAM_REMOTE_ADDRESS%", b"192.168.1.9:40000"),
    ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", b"192.168.1.9"),
    ("%DOWNSTREAM_LOCAL_ADDRESS%", b"127.0.0.1:10000"),
    ("%ROUTE_NAME%", b"r1"),
    ("100%% done", b"100% done"),
    ("plain text only", b"plain text only"),
    ("", b""),
    ("a %PROTOCOL% b %RESPONSE_CODE%\n", b"a HTTP/1.1 b 503\n"),
])
def test_operator(text, expected):
    assert fmt(text, filled()) == expected


def test_missing_values():
    e = AccessLogEntry()
    text = ("%REQ(:METHOD)%|%REQ(X-A?X-B)%|%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%|%RESPONSE_FLAGS%|"
            "%RESPONSE_CODE_DETAILS%|%UPSTREAM_HOST%|%UPSTREAM_CLUSTER%|"
            "%DOWNSTREAM_REMOTE_ADDRESS%|%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%|"
            "%DOWNSTREAM_LOCAL_ADDRESS%|%ROUTE_NAME%|%RESPONSE_CODE%|%BYTES_RECEIVED%|"
            "%BYTES_SENT%|%DURATION%|%PROTOCOL%|%START_TIME%")
    assert fmt(text, e) == b"-|-|-|-|-|-|-|-|-|-|-|0|0|0|0|HTTP/1.1|1970-01-01T00:00:00.000Z"


def test_empty_header_value_is_empty_not_dash():
    e = AccessLogEntry(request_headers={"user-agent": b""})
    assert fmt('"%REQ(USER-AGENT)%"', e) == b'""'


def test_str_header_values_and_ipv6_address():
    e = AccessLogEntry(request_headers={"x-a": "caf\u00e9"}, downstream_remote_address=b"[::1]:5")
    assert fmt("%REQ(X-A)% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", e) == "café ::1".encode()


def test_wanted_headers_lower_case():
    f = compile_format("%REQ(X-Foo?X-Bar):3% %REQ(:Method)% %REQ(x-foo)%")
    assert f.wanted == ("x-foo", "x-bar", ":method")


@pytest.mark.parametrize("flags,expected", [
    (0, "-"),
    (RF_UF, "UF"),
    (RF_UF | RF_URX, "UF,URX"),
    (RF_UC | RF_URX, "UC,URX"),
    (RF_UT | RF_URX, "UT,URX"),
    (RF_UH | RF_NR, "UH,NR"),
    (RF_LR | RF_DC, "LR,DC"),
    (RF_UO | RF_RL | RF_SI | RF_DPE | RF_DT | RF_UPE | RF_NC, "UO,RL,SI,DPE,DT,UPE,NC"),
])
def test_flags(flags, expected):
    assert flags_string(flags) == expected
    assert fmt("%RESPONSE_FLAGS%", AccessLogEntry(flags=flags)) == expected.encode()


@pytest.mark.parametrize("text,message", [
    ("%FOO_BAR%", "Not supported field in StreamInfo: FOO_BAR"),
    ("%DOWNSTREAM_PEER_URI_SAN%", "DOWNSTREAM_PEER_URI_SAN"),
    ("100%", "Couldn't find valid command at position 3"),
    ("%REQ%", "REQ"),
    ("%REQ(a?b?c)%", "More than 1 alternative header"),
    ("%PROTOCOL(x)%", "PROTOCOL does not take any parameters or length"),
    ("%DURATION:3%", "DURATION does not take any parameters or length"),
])
def test_refused_formats(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_format(text)


# -- loggers ----------------------------------------------------------------------------------

def test_file_log_without_loop_writes_at_once(tmp_path):
    path = str(tmp_path / "a.log")
    log = FileAccessLog(path, "%RESPONSE_CODE% %REQ(:PATH)%\n")
    assert log.wanted == (":path",)
    log.log(filled())
    log.log(AccessLogEntry(response_code=200))
    assert open(path, "rb").read() == b"503 /a/b?c=d\n200 -\n"


def test_file_log_default_format_and_append(tmp_path):
    path = tmp_path / "b.log"
    path.write_bytes(b"old\n")
    log = FileAccessLog(str(path))
    log.log(filled())
    assert path.read_bytes() == b"old\n" + compile_format().format(filled())


def test_file_log_buffers_on_a_loop(tmp_path):
    path = tmp_path / "c.log"
    log = FileAccessLog(str(path), "%RESPONSE_CODE%\n")

    async def run():
        for _ in range(3):
            log.log(filled())
        assert path.read_bytes() == b""  # waits for the timer
        await asyncio.sleep(accesslog.FLUSH_INTERVAL * 3)
        assert path.read_bytes() == b"503\n" * 3
        # a buffer over the size limit is written at once
        big = AccessLogEntry(request_headers={"x-big": b"x" * (accesslog.FLUSH_BYTES + 10)})
        FileAccessLog(str(path), "%REQ(X-BIG)%\n").log(big)
        assert len(path.read_bytes()) == 12 + accesslog.FLUSH_BYTES + 11

    asyncio.run(run())


def test_stdout_log(capfd):
    log = StdoutAccessLog("%RESPONSE_CODE% %PROTOCOL%\n")
    log.log(filled())
    log.flush()
    assert capfd.readouterr().out == "503 HTTP/1.1\n"


def test_make_access_logs(tmp_path):
    class Hcm:
        access_logs = []

    assert make_access_logs(Hcm()) is None
    Hcm.access_logs = [AccessLogConfig("file", str(tmp_path / "d.log"), "%PROTOCOL%\n"),
                       AccessLogConfig("stdout", "", None)]
    logs = make_access_logs(Hcm())
    assert isinstance(logs[0], FileAccessLog) and isinstance(logs[1], StdoutAccessLog)
    assert logs[0].wanted == ()
    assert ":authority" in logs[1].wanted


# -- config -----------------------------------------------------------------------------------

HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")
FILE_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
HCM_PATH = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"

BASE = {"static_resources": {"listeners": [{
    "name": "l0",
    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
    "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM_TYPE, "stat_prefix": "ingress",
            "route_config": {"virtual_hosts": [{
                "name": "vh", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"},
                            "direct_response": {"status": 200}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        },
    }]}],
}]}}


def with_logs(*logs) -> dict:
    d = copy.deepcopy(BASE)
    d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "access_log"] = list(logs)
    return d


def hcm_model(d):
    return load_dict(d).listeners[0].hcm


def refused(d) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_dict(d)
    return info.value.errors


def test_config_no_access_log():
    assert hcm_model(copy.deepcopy(BASE)).access_logs == []


def test_config_file_and_stdout():
    logs = hcm_model(with_logs(
        {"name": "envoy.access_loggers.file",
         "typed_config": {"@type": FILE_TYPE, "path": "/dev/stdout"}},
        {"name": "envoy.access_loggers.file",
         "typed_config": {"@type": FILE_TYPE, "path": "/tmp/x.log",
                          "log_format": {"text_format_source": {"inline_string": "%PROTOCOL%\n"}}}},
        {"name": "envoy.access_loggers.file",
         "typed_config": {"@type": FILE_TYPE, "path": "/tmp/y.log", "format": "%DURATION%\n"}},
        {"name": "envoy.access_loggers.stdout", "typed_config": {"@type": STDOUT_TYPE}},
        {"name": "envoy.access_loggers.stdout",
         "typed_config": {"@type": STDOUT_TYPE, "log_format": {"text_format": "%BYTES_SENT%\n"}}},
    )).access_logs
    assert logs == [
        AccessLogConfig("file", "/dev/stdout", None),
        AccessLogConfig("file", "/tmp/x.log", "%PROTOCOL%\n"),
        AccessLogConfig("file", "/tmp/y.log", "%DURATION%\n"),
        AccessLogConfig("stdout", "", None),
        AccessLogConfig("stdout", "", "%BYTES_SENT%\n"),
    ]


def test_config_unknown_operator_refused_by_path():
    errors = refused(with_logs(
        {"name": "f", "typed_config": {
            "@type": FILE_TYPE, "path": "/tmp/x.log",
            "log_format": {"text_format_source": {"inline_string": "%NOPE%\n"}}}},
        {"name": "s", "typed_config": {"@type": STDOUT_TYPE, "log_format": {"text_format": "5%"}}},
        {"name": "f", "typed_config": {"@type": FILE_TYPE, "path": "/tmp/x.log",
                                       "format": "%REQ%"}},
    ))
    p = HCM_PATH + ".access_log"
    assert errors == [
        f"{p}[0].typed_config.log_format.text_format_source.inline_string: "
        "Not supported field in StreamInfo: NOPE",
        f"{p}[1].typed_config.log_format.text_format: Incorrect configuration: 5%. "
        "Couldn't find valid command at position 1",
        f"{p}[2].typed_config.format: REQ requires parameters (a header name): %REQ%",
    ]


def test_config_filter_and_json_refused():
    errors = refused(with_logs(
        {"name": "f", "filter": {"status_code_filter": {"comparison": {
            "op": "GE", "value": {"default_value": 500, "runtime_key": "k"}}}},
         "typed_config": {"@type": FILE_TYPE, "path": "/tmp/x.log"}},
        {"name": "f", "typed_config": {"@type": FILE_TYPE, "path": "/tmp/x.log",
                                       "log_format": {"json_format": {"a": "%PROTOCOL%"}}}},
        {"name": "f", "typed_config": {"@type": FILE_TYPE, "path": "/tmp/x.log",
                                       "json_format": {"a": "%PROTOCOL%"}}},
    ))
    p = HCM_PATH + ".access_log"
    assert f"{p}[0].filter: not supported" in errors
    assert f"{p}[1].typed_config.log_format.json_format: not supported" in errors
    assert f"{p}[2].typed_config.json_format: not supported" in errors


def test_config_other_logger_and_missing_type_refused():
    errors = refused(with_logs(
        {"name": "envoy.access_loggers.stderr", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3."
                     "StderrAccessLog"}},
        {"name": "envoy.access_loggers.file"},
    ))
    p = HCM_PATH + ".access_log"
    assert any(e.startswith(f"{p}[0].typed_config: type ") and "StderrAccessLog" in e
               for e in errors), errors
    assert any(e.startswith(f"{p}[1].typed_config: value is required") for e in errors), errors


def test_config_file_path_required():
    errors = refused(with_logs({"name": "f", "typed_config": {"@type": FILE_TYPE}}))
    assert any(e.startswith(HCM_PATH + ".access_log[0].typed_config.path") for e in errors), \
        errors
