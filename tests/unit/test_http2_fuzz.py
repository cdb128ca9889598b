"""Property tests for the HTTP/2 codec: no crash on any input after a valid preface, and the
same events however the bytes are split."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

h2 = pytest.importorskip("fastproxy._core.http2")
H2Session, RecordingHandler = h2.H2Session, h2.RecordingHandler

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CLIENT_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def frame(ftype, flags, stream_id, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream_id & 0x7FFFFFFF) + payload


# Frames that are at least shaped right, mixed with raw noise, so the fuzzer reaches past the
# frame header checks.
frames = st.builds(frame, st.integers(0, 12), st.integers(0, 255),
                   st.sampled_from([0, 1, 2, 3, 5, 0x7FFFFFFF]), st.binary(max_size=40))
noise = st.lists(st.one_of(frames, st.binary(max_size=30)), max_size=12).map(b"".join)


def _drive(session, data):
    rv = session.receive_data(data)
    assert rv in (0, -1, -2, -3)
    session.data_to_send()
    assert isinstance(session.want_read(), bool)
    return rv


@SETTINGS
@given(noise)
def test_random_input_after_preface_never_crashes_server(data):
    handler = RecordingHandler(auto_consume=True)
    server = H2Session(True, handler)
    handler.session = server
    _drive(server, PREFACE + CLIENT_SETTINGS + data)
    # More input after an error is refused, not processed.
    _drive(server, data)


@SETTINGS
@given(noise)
def test_random_input_never_crashes_client(data):
    handler = RecordingHandler(auto_consume=True)
    client = H2Session(False, handler)
    handler.session = client
    sid = client.submit_request([(b":method", b"POST"), (b":scheme", b"http"),
                                 (b":authority", b"x"), (b":path", b"/")], False)
    client.send_data(sid, b"body", False)
    client.data_to_send()
    _drive(client, CLIENT_SETTINGS + data)
    client.send_data(sid, b"more", True)
    client.reset_stream(sid, 8)
    client.data_to_send()


names = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=10).map(str.encode).filter(
    lambda n: n not in (b"te", b"connection", b"content-length", b"host", b"keep-alive",
                        b"upgrade", b"transfer-encoding", b"proxy-connection"))
values = st.binary(max_size=30).map(lambda v: bytes(c for c in v if c > 0x20 and c != 0x7F))


@st.composite
def requests(draw):
    headers = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"example.com"),
               (b":path", b"/" + draw(names))]
    headers += draw(st.lists(st.tuples(names, values), max_size=6))
    chunks = draw(st.lists(st.binary(min_size=1, max_size=3000), max_size=4))
    trailers = draw(st.one_of(st.none(), st.lists(st.tuples(names, values), min_size=1,
                                                   max_size=3)))
    return headers, chunks, trailers


def _client_bytes(reqs):
    client = H2Session(False, RecordingHandler())
    for headers, chunks, trailers in reqs:
        sid = client.submit_request(headers, not chunks and not trailers)
        for i, chunk in enumerate(chunks):
            client.send_data(sid, chunk, i == len(chunks) - 1 and not trailers)
        if trailers:
            client.submit_trailers(sid, trailers)
    return client.data_to_send()


def _normalise(events):
    """Events with the DATA pieces of each stream joined (the split decides their sizes)."""
    out, bodies = [], {}
    for ev in events:
        if ev[0] == "data":
            bodies[ev[1]] = bodies.get(ev[1], b"") + ev[2]
        else:
            out.append(ev)
    return out, bodies


@SETTINGS
@given(st.lists(requests(), min_size=1, max_size=5), st.lists(st.integers(0, 10**6), max_size=8))
def test_split_input_decodes_the_same(reqs, cuts):
    data = _client_bytes(reqs)
    whole = RecordingHandler(auto_consume=True)
    s1 = H2Session(True, whole)
    whole.session = s1
    assert s1.receive_data(data) == 0
    split = RecordingHandler(auto_consume=True)
    s2 = H2Session(True, split)
    split.session = s2
    points = sorted({c % (len(data) + 1) for c in cuts})
    prev = 0
    for point in points + [len(data)]:
        assert s2.receive_data(data[prev:point]) == 0
        prev = point
    assert _normalise(split.events) == _normalise(whole.events)
    events, bodies = _normalise(whole.events)
    heads = [e for e in events if e[0] == "headers"]
    assert len(heads) == len(reqs)
    for (headers, chunks, trailers), head in zip(reqs, heads):
        assert head[2] == headers
        assert bodies.get(head[1], b"") == b"".join(chunks)
        if trailers:
            assert ("trailers", head[1], trailers) in events
        assert ("end", head[1]) in events
