"""The HTTP/2 codec (fastproxy._core.http2): a client H2Session and a server H2Session exchange
bytes in memory, hand-made frames probe the error paths and the flood protections, and real
peers (curl, h2load, nghttp, grpcio) talk to a server session on a loopback socket."""
from __future__ import annotations

import asyncio
import shutil
import struct

import pytest

h2 = pytest.importorskip("fastproxy._core.http2")
H2Session, RecordingHandler = h2.H2Session, h2.RecordingHandler

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types and flags (RFC 9113).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 2, 3, 4, 6, 7, 8
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, REFUSED_STREAM, CANCEL = 0, 1, 2, 7, 8
H2_ERR_PROTOCOL, H2_ERR_FLOOD = -1, -2
SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE = 3, 4

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"example.com"),
       (b":path", b"/index")]
POST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"example.com"),
        (b":path", b"/upload")]
OK = [(b":status", b"200"), (b"content-type", b"text/plain")]


def frame(ftype, flags, stream_id, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream_id) + payload


def parse_frames(data):
    """(type, flags, stream_id, payload) for each frame in data (no preface)."""
    out = []
    while data:
        length = int.from_bytes(data[:3], "big")
        out.append((data[3], data[4], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF,
                    data[9:9 + length]))
        data = data[9 + length:]
    return out


# A request HEADERS block in HPACK: POST (static 3), http (6), / (4), :authority "x".
POST_BLOCK = b"\x83\x86\x84\x41\x01x"


class Pair:
    """A client and a server session joined in memory."""

    def __init__(self, client_opts=None, server_opts=None, auto_consume=True):
        self.ch = RecordingHandler(auto_consume)
        self.sh = RecordingHandler(auto_consume)
        self.client = H2Session(False, self.ch, **(client_opts or {}))
        self.server = H2Session(True, self.sh, **(server_opts or {}))
        self.ch.session = self.client
        self.sh.session = self.server

    def to_server(self):
        data = self.client.data_to_send()
        self.client.output_flushed()
        return self.server.receive_data(data) if data else 0

    def to_client(self):
        data = self.server.data_to_send()
        self.server.output_flushed()
        return self.client.receive_data(data) if data else 0

    def settle(self, rounds=50):
        for _ in range(rounds):
            a = self.client.data_to_send()
            self.client.output_flushed()
            if a:
                assert self.server.receive_data(a) == 0
            b = self.server.data_to_send()
            self.server.output_flushed()
            if b:
                assert self.client.receive_data(b) == 0
            if not a and not b:
                return
        raise AssertionError("sessions did not settle")


def events(handler, kind, stream_id=None):
    return [e for e in handler.events if e[0] == kind and (stream_id is None or e[1] == stream_id)]


def body(handler, stream_id):
    return b"".join(e[2] for e in events(handler, "data", stream_id))


# -- preface detection ----------------------------------------------------------------------

def test_preface_detection():
    assert h2.is_h2_preface(PREFACE) is True
    assert h2.is_h2_preface(PREFACE + b"\x00\x00\x00\x04") is True
    assert h2.is_h2_preface(b"") is None
    for n in range(1, 24):
        assert h2.is_h2_preface(PREFACE[:n]) is None
    assert h2.is_h2_preface(b"GET / HTTP/1.1\r\n") is False
    assert h2.is_h2_preface(b"PRI * HTTP/1.1\r\n") is False
    assert h2.is_h2_preface(b"P") is None and h2.is_h2_preface(b"X") is False


# -- exchanges --------------------------------------------------------------------------------

def test_client_sends_preface_and_settings():
    client = H2Session(False, RecordingHandler())
    out = client.data_to_send()
    assert out.startswith(PREFACE)
    frames = parse_frames(out[24:])
    assert frames[0][0] == SETTINGS and frames[0][2] == 0
    settings = dict(struct.unpack(">HI", frames[0][3][i:i + 6])
                    for i in range(0, len(frames[0][3]), 6))
    assert settings[2] == 0                                # no server push
    assert settings[SETTINGS_INITIAL_WINDOW_SIZE] == 268435456
    # The connection window grows to Envoy's default with a WINDOW_UPDATE on stream 0.
    assert frames[1][0] == WINDOW_UPDATE and frames[1][2] == 0
    assert int.from_bytes(frames[1][3], "big") == 268435456 - 65535


def test_request_response_with_bodies():
    p = Pair()
    sid = p.client.submit_request(POST, False)
    assert sid == 1
    assert p.client.send_data(sid, b"hello ", False) == 0
    assert p.client.send_data(sid, b"world", True) == 0
    assert p.client.queued_bytes(sid) == 11
    p.to_server()
    assert events(p.sh, "headers") == [("headers", 1, POST, False)]
    assert body(p.sh, 1) == b"hello world"
    assert events(p.sh, "end") == [("end", 1)]
    assert p.server.submit_response(1, OK + [(b"content-length", b"4")], False) == 0
    assert p.server.send_data(1, b"pong", True) == 0
    p.settle()
    assert events(p.ch, "headers") == [("headers", 1, OK + [(b"content-length", b"4")], False)]
    assert body(p.ch, 1) == b"pong"
    assert p.ch.events[-2:] == [("end", 1), ("close", 1)]
    assert ("close", 1) in p.sh.events
    assert p.client.active_streams == 0 and p.server.active_streams == 0


def test_headers_only_exchange_and_end_stream_flag():
    p = Pair()
    sid = p.client.submit_request(GET, True)
    p.to_server()
    assert p.sh.events[-2:] == [("headers", sid, GET, True), ("end", sid)]
    p.server.submit_response(sid, [(b":status", b"204")], True)
    p.settle()
    assert p.ch.events[-3:] == [("headers", sid, [(b":status", b"204")], True), ("end", sid),
                                ("close", sid)]


def test_informational_then_final_response():
    p = Pair()
    sid = p.client.submit_request(POST + [(b"expect", b"100-continue")], False)
    p.to_server()
    assert p.server.submit_informational(sid, [(b":status", b"100")]) == 0
    p.to_client()
    assert events(p.ch, "headers") == [("headers", sid, [(b":status", b"100")], False)]
    p.client.send_data(sid, b"body", True)
    p.to_server()
    p.server.submit_response(sid, OK, False)
    p.server.send_data(sid, b"done", True)
    p.settle()
    heads = events(p.ch, "headers")
    assert heads[1] == ("headers", sid, OK, False)
    assert not events(p.ch, "trailers")              # the final head is not taken for trailers
    assert body(p.ch, sid) == b"done"


def test_many_concurrent_streams_interleaved():
    p = Pair()
    p.settle()      # before the server's SETTINGS, nghttp2 assumes 100 concurrent streams
    ids = []
    for i in range(200):
        sid = p.client.submit_request(POST[:-1] + [(b":path", b"/s/%d" % i)], False)
        ids.append(sid)
    for round_ in range(3):
        for i, sid in enumerate(ids):
            p.client.send_data(sid, b"%d.%d;" % (i, round_), round_ == 2)
        p.to_server()
    assert len(events(p.sh, "headers")) == 200
    assert len(events(p.sh, "end")) == 200
    for i, sid in enumerate(ids):
        assert body(p.sh, sid) == b"%d.0;%d.1;%d.2;" % (i, i, i)
        assert events(p.sh, "headers", sid)[0][2][-1] == (b":path", b"/s/%d" % i)
    # Answer in reverse order, bodies in two pieces.
    for i, sid in reversed(list(enumerate(ids))):
        p.server.submit_response(sid, OK, False)
        p.server.send_data(sid, b"r%d-" % i, False)
    for i, sid in enumerate(ids):
        p.server.send_data(sid, b"end", True)
    p.settle()
    for i, sid in enumerate(ids):
        assert body(p.ch, sid) == b"r%d-end" % i
    assert len(events(p.ch, "close")) == 200
    assert p.client.active_streams == 0 and p.server.active_streams == 0


def test_trailers_both_directions():
    p = Pair()
    sid = p.client.submit_request(POST + [(b"te", b"trailers")], False)
    p.client.send_data(sid, b"req", False)
    assert p.client.submit_trailers(sid, [(b"x-checksum", b"abc")]) == 0
    p.to_server()
    assert body(p.sh, sid) == b"req"
    assert events(p.sh, "trailers") == [("trailers", sid, [(b"x-checksum", b"abc")])]
    assert p.sh.events[-1] == ("end", sid)
    p.server.submit_response(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")],
                             False)
    p.server.send_data(sid, b"\x00\x00\x00\x00\x02hi", False)
    p.server.submit_trailers(sid, [(b"grpc-status", b"0"), (b"grpc-message", b"")])
    out = p.server.data_to_send()
    p.server.output_flushed()
    kinds = [(t, f & END_STREAM) for t, f, s, _ in parse_frames(out) if s == sid]
    # HEADERS, DATA without END_STREAM, trailing HEADERS with END_STREAM: no empty DATA frame.
    assert kinds == [(HEADERS, 0), (DATA, 0), (HEADERS, END_STREAM)]
    p.client.receive_data(out)
    assert events(p.ch, "trailers") == [("trailers", sid, [(b"grpc-status", b"0"),
                                                           (b"grpc-message", b"")])]
    assert p.ch.events[-2:] == [("end", sid), ("close", sid)]
    assert p.server.codec_stats["trailers"] == 1 and p.client.codec_stats["trailers"] == 1


def test_trailers_without_body_and_state_errors():
    p = Pair()
    sid = p.client.submit_request(POST, False)
    assert p.client.submit_trailers(sid, [(b"x-t", b"1")]) == 0
    assert p.client.send_data(sid, b"late", False) < 0          # our side is ended
    assert p.client.submit_trailers(sid, [(b"x-t", b"2")]) < 0
    p.to_server()
    assert events(p.sh, "trailers") == [("trailers", sid, [(b"x-t", b"1")])]
    assert p.client.send_data(99, b"x", False) < 0               # unknown stream
    assert p.server.submit_request(GET, True) < 0                 # not a client
    assert p.client.submit_response(sid, OK, True) < 0            # not a server
    g = Pair()
    s2 = g.client.submit_request(GET, True)
    assert g.client.send_data(s2, b"x", False) < 0               # no body announced


def test_large_body_flow_control_is_backpressure():
    small = {"initial_stream_window_size": 65535, "initial_connection_window_size": 65535}
    p = Pair(server_opts=small, auto_consume=False)
    p.settle()
    payload = bytes(range(256)) * 1200                            # 307200 bytes
    sid = p.client.submit_request(POST, False)
    for i in range(0, len(payload), 50000):
        p.client.send_data(sid, payload[i:i + 50000], False)
    p.client.send_data(sid, b"", True)
    p.settle()
    got = body(p.sh, sid)
    # The client stopped at the window: nothing more until the server consumes.
    assert len(got) == 65535
    assert p.client.queued_bytes(sid) == len(payload) - 65535
    assert p.server.local_window(0) == 0 and p.client.remote_window(0) == 0
    p.settle()
    assert len(body(p.sh, sid)) == 65535
    consumed = 0
    for _ in range(100):
        received = len(body(p.sh, sid))
        if received == consumed:
            break
        assert p.server.consume(sid, received - consumed) == 0
        consumed = received
        p.settle()
        # Never more in flight than the window allows.
        assert len(body(p.sh, sid)) - consumed <= 65535
    assert body(p.sh, sid) == payload
    assert events(p.sh, "end") == [("end", sid)]
    assert p.client.queued_bytes(sid) == 0


def test_outbound_data_sent_hook_and_memoryview_pieces():
    p = Pair()
    p.settle()
    sid = p.client.submit_request(POST, False)
    big = b"x" * 40000
    p.client.send_data(sid, big, True)
    p.client.produce()
    pieces = p.client.take_output()
    # Payloads are slices of the queued object, not copies.
    views = [x for x in pieces if isinstance(x, memoryview)]
    assert views and all(v.obj is big for v in views)
    assert sum(len(v) for v in views) == 40000
    assert p.server.receive_data(b"".join(bytes(x) for x in pieces)) == 0
    assert body(p.sh, sid) == big


def test_rst_stream_both_sides():
    p = Pair()
    sid = p.client.submit_request(POST, False)
    p.client.send_data(sid, b"part", False)
    p.to_server()
    assert p.client.reset_stream(sid, CANCEL) == 0
    p.settle()
    assert events(p.ch, "reset") == [("reset", sid, CANCEL, False)]
    assert p.sh.events[-1] == ("reset", sid, CANCEL, True)
    assert p.server.codec_stats["rx_reset"] == 1 and p.client.codec_stats["tx_reset"] == 1
    assert p.server.send_data(sid, b"x", True) < 0
    # Server-side reset of a request it refuses.
    sid2 = p.client.submit_request(GET, True)
    p.to_server()
    p.server.reset_stream(sid2, REFUSED_STREAM)
    p.settle()
    assert p.ch.events[-1] == ("reset", sid2, REFUSED_STREAM, True)
    assert p.client.active_streams == 0 and p.server.active_streams == 0


def test_goaway_refuses_streams_above_last_stream_id():
    p = Pair()
    s1 = p.client.submit_request(GET, True)
    p.to_server()
    s3 = p.client.submit_request(GET, True)
    late = p.client.data_to_send()                 # stream 3 crosses the GOAWAY
    assert p.server.goaway(NO_ERROR) == 0
    p.to_client()
    assert events(p.ch, "goaway") == [("goaway", s1, NO_ERROR)]
    assert p.ch.events[-1] == ("reset", s3, REFUSED_STREAM, True)
    assert not p.client.can_submit_request()
    p.server.receive_data(late)
    assert not events(p.sh, "headers", s3)
    p.server.submit_response(s1, OK, True)         # stream 1 still completes
    p.settle()
    assert events(p.ch, "headers", s1) and ("close", s1) in p.ch.events
    assert p.server.codec_stats["goaway_sent"] == 1


def test_shutdown_notice_then_goaway():
    p = Pair()
    p.settle()
    assert p.server.shutdown_notice() == 0
    p.settle()
    assert events(p.ch, "goaway") == [("goaway", 2**31 - 1, NO_ERROR)]
    assert p.client.shutdown_notice() < 0


def test_ping_and_ack():
    p = Pair()
    p.settle()
    assert p.client.ping(0x1122334455667788) == 0
    out = p.client.data_to_send()
    assert parse_frames(out) == [(PING, 0, 0, bytes.fromhex("1122334455667788"))]
    p.server.receive_data(out)
    ack = p.server.data_to_send()
    assert parse_frames(ack) == [(PING, ACK, 0, bytes.fromhex("1122334455667788"))]
    p.client.receive_data(ack)
    assert p.ch.events[-1] == ("ping_ack", 0x1122334455667788)


def test_settings_change_max_concurrent_streams():
    p = Pair()
    p.settle()
    assert p.client.remote_setting(SETTINGS_MAX_CONCURRENT_STREAMS) == 2147483647
    n_settings = len(events(p.ch, "settings"))
    assert p.server.update_settings({SETTINGS_MAX_CONCURRENT_STREAMS: 1}) == 0
    p.settle()
    assert len(events(p.ch, "settings")) == n_settings + 1
    assert p.client.remote_setting(SETTINGS_MAX_CONCURRENT_STREAMS) == 1
    ids = [p.client.submit_request(GET, True) for _ in range(3)]
    p.settle()
    assert len(events(p.sh, "headers")) == 1          # nghttp2 holds the others back
    for sid in ids:
        p.server.submit_response(sid, OK, True)
        p.settle()
    assert len(events(p.sh, "headers")) == 3
    assert len(events(p.ch, "close")) == 3


def test_settings_max_frame_size_and_window():
    p = Pair(server_opts={"max_frame_size": 32768})
    p.settle()
    assert p.client.remote_setting(5) == 32768
    sid = p.client.submit_request(POST, False)
    p.client.send_data(sid, b"y" * 100000, True)
    out = p.client.data_to_send()
    sizes = [len(f[3]) for f in parse_frames(out) if f[0] == DATA]
    # nghttp2 frames at most 16 KiB of DATA unless told otherwise, within the peer's limit.
    assert max(sizes) <= 32768
    p.server.receive_data(out)
    assert len(body(p.sh, sid)) == 100000


# -- malformed input --------------------------------------------------------------------------

def test_garbage_after_preface_is_a_connection_error():
    sh = RecordingHandler()
    server = H2Session(True, sh)
    rv = server.receive_data(PREFACE + b"hello, this is not a frame at all")
    assert rv == H2_ERR_PROTOCOL
    assert server.error_detail == "http2.protocol_error"
    out = parse_frames(server.data_to_send())
    assert out[-1][0] == GOAWAY
    assert int.from_bytes(out[-1][3][4:8], "big") == PROTOCOL_ERROR


def test_bad_preface_and_bad_frames():
    server = H2Session(True, RecordingHandler())
    assert server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == H2_ERR_PROTOCOL
    # DATA on stream 0 is a connection error.
    server = H2Session(True, RecordingHandler())
    assert server.receive_data(PREFACE + frame(SETTINGS, 0, 0) + frame(DATA, 0, 0, b"x")) == \
        H2_ERR_PROTOCOL
    # A client must not receive requests: HEADERS on an even, unopened stream.
    client = H2Session(False, RecordingHandler())
    client.data_to_send()
    rv = client.receive_data(frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS | END_STREAM,
                                                            2, b"\x88"))
    assert rv in (0, H2_ERR_PROTOCOL)
    assert client.data_to_send()  # answered (RST_STREAM or GOAWAY), no crash


def test_malformed_request_head_resets_stream_only():
    sh = RecordingHandler()
    server = H2Session(True, sh)
    # Upper-case header name: a stream error (RST_STREAM PROTOCOL_ERROR), not a connection one.
    block = POST_BLOCK + b"\x00\x04X-Ab\x01v"
    rv = server.receive_data(PREFACE + frame(SETTINGS, 0, 0) +
                             frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
    assert rv == 0
    assert not events(sh, "headers")
    frames = parse_frames(server.data_to_send())
    assert (RST_STREAM, 0, 1, struct.pack(">I", PROTOCOL_ERROR)) in frames


def test_header_limits_reset_the_stream():
    p = Pair(server_opts={"max_headers_count": 5})
    hdrs = GET + [(b"x-h%d" % i, b"v") for i in range(3)]
    sid = p.client.submit_request(hdrs, True)
    p.settle()
    assert not events(p.sh, "headers")
    assert p.server.codec_stats["header_overflow"] == 1
    assert p.ch.events[-1] == ("reset", sid, INTERNAL_ERROR, True)
    p2 = Pair(server_opts={"max_header_list_size": 100})
    sid = p2.client.submit_request(GET + [(b"x-big", b"v" * 200)], True)
    p2.settle()
    assert p2.ch.events[-1][0] == "reset" and p2.server.codec_stats["header_overflow"] == 1


# -- flood protections --------------------------------------------------------------------------

def client_start():
    return PREFACE + frame(SETTINGS, 0, 0)


def test_ping_flood_is_outbound_control_flood():
    server = H2Session(True, RecordingHandler())
    pings = b"".join(frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(1200))
    rv = server.receive_data(client_start() + pings)
    assert rv == H2_ERR_FLOOD
    assert server.flood_name == "outbound_control_flood"
    assert server.codec_stats["outbound_control_flood"] == 1
    assert server.receive_data(frame(PING, 0, 0, b"\x00" * 8)) == H2_ERR_FLOOD   # sticky


def test_control_frames_count_until_output_flushed():
    server = H2Session(True, RecordingHandler(), max_outbound_control_frames=10)
    assert server.receive_data(client_start()) == 0
    server.produce()
    server.take_output()
    server.output_flushed()
    for i in range(8):  # acks produced but never flushed accumulate
        assert server.receive_data(frame(PING, 0, 0, struct.pack(">Q", i))) == 0
        assert server.produce() == 0
    for i in range(5):
        server.receive_data(frame(PING, 0, 0, struct.pack(">Q", i)))
    assert server.produce() == H2_ERR_FLOOD
    assert server.flood_name == "outbound_control_flood"
    # Flushed in time, the same traffic is fine.
    ok = H2Session(True, RecordingHandler(), max_outbound_control_frames=10)
    ok.receive_data(client_start())
    for i in range(50):
        assert ok.receive_data(frame(PING, 0, 0, struct.pack(">Q", i))) == 0
        assert ok.produce() == 0
        ok.take_output()
        ok.output_flushed()


def test_outbound_frames_flood():
    p = Pair(server_opts={"max_outbound_frames": 50})
    p.settle()
    ids = [p.client.submit_request(GET, True) for _ in range(30)]
    p.to_server()
    for sid in ids:
        p.server.submit_response(sid, OK, False)
        p.server.send_data(sid, b"body", True)
    assert p.server.produce() == H2_ERR_FLOOD
    assert p.server.flood_name == "outbound_flood"
    assert p.server.codec_stats["outbound_flood"] == 1


def test_empty_frames_flood():
    sh = RecordingHandler()
    server = H2Session(True, sh)
    head = frame(HEADERS, END_HEADERS, 1, POST_BLOCK)
    assert server.receive_data(client_start() + head + frame(DATA, 0, 1)) == 0   # one is allowed
    assert server.receive_data(frame(DATA, 0, 1)) == H2_ERR_FLOOD
    assert server.flood_name == "inbound_empty_frames_flood"
    # A non-empty frame in between resets the count.
    server = H2Session(True, RecordingHandler())
    assert server.receive_data(client_start() + head + frame(DATA, 0, 1) + frame(DATA, 0, 1, b"x")
                               + frame(DATA, 0, 1) + frame(DATA, END_STREAM, 1)) == 0


def test_priority_flood():
    server = H2Session(True, RecordingHandler())
    prio = frame(PRIORITY, 0, 3, struct.pack(">IB", 0, 15))
    assert server.receive_data(client_start() + prio * 100) == 0
    assert server.receive_data(prio) == H2_ERR_FLOOD
    assert server.flood_name == "inbound_priority_frames_flood"


def test_window_update_flood():
    server = H2Session(True, RecordingHandler())
    wu = frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1))
    assert server.receive_data(client_start() + wu) == 0      # 1 + 2 * (0 + 10 * 0)
    assert server.receive_data(wu) == H2_ERR_FLOOD
    assert server.flood_name == "inbound_window_update_frames_flood"
    # Sending DATA raises the allowance by max_inbound_window_update_frames_per_data_frame_sent.
    p = Pair()
    p.settle()
    sid = p.client.submit_request(GET, True)
    p.to_server()
    p.server.submit_response(sid, OK, False)
    p.server.send_data(sid, b"x", True)
    p.settle()
    assert p.server.receive_data(wu * 20) == 0


# -- real peers ---------------------------------------------------------------------------------

class _H2ServerProtocol(asyncio.Protocol):
    """A tiny server on H2Session: 200 with a body (path and request body length), or a gRPC
    echo for application/grpc requests."""

    def __init__(self, log):
        self.log = log
        self.handler = RecordingHandler(auto_consume=True)
        self.session = H2Session(True, self.handler)
        self.handler.session = self.session
        self.requests = {}

    def connection_made(self, transport):
        self.transport = transport
        self.flush()

    def flush(self):
        if self.session.produce() < 0:
            self.transport.abort()
            return
        pieces = self.session.take_output()
        if pieces:
            self.transport.writelines(pieces)
        self.session.output_flushed()

    def data_received(self, data):
        rv = self.session.receive_data(data)
        self.log.append(rv)
        events, self.handler.events = self.handler.events, []
        for ev in events:
            if ev[0] == "headers":
                self.requests[ev[1]] = [dict(ev[2]), b""]
            elif ev[0] == "data":
                self.requests[ev[1]][1] += ev[2]
            elif ev[0] == "end":
                self.respond(ev[1], *self.requests.pop(ev[1]))
        self.flush()
        if rv < 0:
            self.transport.close()

    def respond(self, sid, head, req_body):
        s = self.session
        if head.get(b"content-type", b"").startswith(b"application/grpc"):
            s.submit_response(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")],
                              False)
            msg = req_body[5:]
            reply = b"echo:" + msg
            for _ in range(int(head.get(b"x-repeat", b"1"))):
                s.send_data(sid, b"\x00" + struct.pack(">I", len(reply)) + reply, False)
            s.submit_trailers(sid, [(b"grpc-status", b"0")])
            return
        text = b"path=%s len=%d\n" % (head[b":path"], len(req_body))
        s.submit_response(sid, [(b":status", b"200"), (b"content-type", b"text/plain"),
                                (b"content-length", b"%d" % len(text))], False)
        s.send_data(sid, text, True)


async def _with_server(fn):
    log = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _H2ServerProtocol(log), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await fn(port), log
    finally:
        server.close()
        await server.wait_closed()


async def _run(*argv, stdin=None):
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    return proc.returncode, out, err


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_interop_curl_prior_knowledge():
    async def go(port):
        get = await _run("curl", "-sS", "--http2-prior-knowledge", f"http://127.0.0.1:{port}/a/b")
        post = await _run("curl", "-sS", "--http2-prior-knowledge", "--data-binary", "@-",
                          f"http://127.0.0.1:{port}/up", stdin=b"z" * 300000)
        return get, post
    (get, post), log = asyncio.run(_with_server(go))
    assert get[0] == 0, get[2]
    assert get[1] == b"path=/a/b len=0\n"
    assert post[0] == 0, post[2]
    assert post[1] == b"path=/up len=300000\n"
    assert all(rv == 0 for rv in log)


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load not installed")
def test_interop_h2load():
    async def go(port):
        return await _run("h2load", "-n", "2000", "-c", "4", "-m", "20",
                          f"http://127.0.0.1:{port}/load")
    (rc, out, err), log = asyncio.run(_with_server(go))
    assert rc == 0, err
    text = out.decode()
    assert "2000 succeeded, 0 failed, 0 errored" in text, text
    assert "status codes: 2000 2xx" in text, text
    assert all(rv == 0 for rv in log)


@pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp not installed")
def test_interop_nghttp_concurrent_with_upload():
    async def go(port):
        return await _run("nghttp", "-n", "-s", "-d", "-", f"http://127.0.0.1:{port}/x",
                          f"http://127.0.0.1:{port}/y", stdin=b"q" * 100000)
    (rc, out, err), log = asyncio.run(_with_server(go))
    assert rc == 0, (out, err)
    assert all(rv == 0 for rv in log)


def test_interop_grpcio():
    grpc = pytest.importorskip("grpc")

    def calls(port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            ident = lambda x: x  # noqa: E731
            unary = channel.unary_unary("/test.Echo/Say", request_serializer=ident,
                                        response_deserializer=ident)
            stream = channel.unary_stream("/test.Echo/Many", request_serializer=ident,
                                          response_deserializer=ident)
            first = unary(b"ping", timeout=10)
            many = list(stream(b"x" * 70000, timeout=10, metadata=[("x-repeat", "3")]))
            return first, many

    async def go(port):
        return await asyncio.get_running_loop().run_in_executor(None, calls, port)
    (first, many), log = asyncio.run(_with_server(go))
    assert first == b"echo:ping"
    assert many == [b"echo:" + b"x" * 70000] * 3
    assert all(rv == 0 for rv in log)
