"""Property tests for the HTTP/1.1 codec: no crash on any input, no dependence on how the bytes
are split, and no desynchronisation between pipelined messages."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastproxy._core.http1 import (
    KIND_CHUNKED,
    KIND_EOF,
    KIND_LENGTH,
    KIND_NONE,
    RESULT_INCOMPLETE,
    BodyError,
    BodyReader,
    decode_body,
    parse_request,
    parse_response,
)

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PATH_CHARS = "abcXYZ0123456789-._~!$&'()*+,;=:@/%?"
METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD", b"QUERY"]
RESERVED = {b"content-length", b"transfer-encoding", b"host", b"connection", b"expect",
            b"upgrade"}

names = st.text(TCHAR, min_size=1, max_size=12).map(str.encode).filter(
    lambda n: n.lower() not in RESERVED)
# Values without leading/trailing whitespace (the codec trims it), HTAB/SP/VCHAR/obs-text inside.
value_octets = st.sampled_from([9, 32] + list(range(0x21, 0x7F)) + list(range(0x80, 0x100)))
values = st.lists(value_octets, max_size=20).map(bytes).map(lambda v: v.strip(b" \t"))
paths = st.text(PATH_CHARS, max_size=30).map(lambda p: b"/" + p.encode())
bodies = st.binary(max_size=200)


@st.composite
def requests(draw):
    """(raw head + body, expected fields, body)"""
    method = draw(st.sampled_from(METHODS))
    path = draw(paths)
    minor = draw(st.sampled_from([0, 1]))
    headers = [(b"Host", draw(st.text(PATH_CHARS[:16], max_size=10).map(str.encode)))]
    headers += draw(st.lists(st.tuples(names, values), max_size=8))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    body = draw(bodies) if framing != "none" else b""
    if framing == "length":
        headers.append((b"Content-Length", str(len(body)).encode()))
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
    order = draw(st.permutations(range(len(headers))))
    headers = [headers[i] for i in order]
    sep = draw(st.sampled_from([b": ", b":", b":\t", b":  "]))
    head = method + b" " + path + b" HTTP/1.%d\r\n" % minor
    head += b"".join(n + sep + v + draw(st.sampled_from([b"", b" ", b"\t "])) + b"\r\n"
                     for n, v in headers)
    head += b"\r\n"
    if framing == "chunked":
        wire = draw(chunked_encoding(body))
    else:
        wire = body
    expected = {
        "method": method, "path": path, "version": (1, minor), "headers": headers,
        "body_kind": {"none": KIND_NONE, "length": KIND_LENGTH if body else KIND_NONE,
                      "chunked": KIND_CHUNKED}[framing],
    }
    return head, wire, expected, body


def chunked_encoding(body: bytes):
    @st.composite
    def enc(draw):
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=6)))
        pieces = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)]) if b > a]
        out = b""
        for p in pieces:
            size = b"%x" % len(p)
            if draw(st.booleans()):
                size = size.upper()
            ext = draw(st.sampled_from([b"", b";a=b", b" ;x", b";q=\"1 2\""]))
            out += size + ext + b"\r\n" + p + b"\r\n"
        out += b"0" + draw(st.sampled_from([b"", b";end"])) + b"\r\n"
        out += draw(st.sampled_from([b"", b"X-Trailer: 1\r\n", b"A: b\r\nC:d\r\n"]))
        out += b"\r\n"
        return out
    return enc()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted(min(c, len(data)) for c in cuts)
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


# --------------------------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=600), st.integers(0, 700), st.booleans())
def test_random_bytes_never_crash(data, limit, is_head):
    r = parse_request(data, max_header_bytes=limit)
    assert r["rc"] <= len(data)
    assert (r["rc"] < 0) == (r["error"] is not None)
    r = parse_response(data, max_header_bytes=limit, is_head_request=is_head)
    assert r["rc"] <= len(data)
    assert (r["rc"] < 0) == (r["error"] is not None)
    for kind in (KIND_NONE, KIND_LENGTH, KIND_CHUNKED, KIND_EOF):
        try:
            body, done, rest = decode_body(kind, limit, [data])
        except BodyError:
            continue
        assert len(body) + len(rest) <= len(data)


@SETTINGS
@given(requests(), st.binary(max_size=40))
def test_mutated_requests_never_crash(req, noise):
    head, wire, _, _ = req
    data = bytearray(head + wire)
    for i, b in enumerate(noise):
        data[(i * 7919 + b) % len(data)] = b
    r = parse_request(bytes(data))
    assert r["rc"] <= len(data)
    if r["rc"] > 0:
        try:
            decode_body(r["body_kind"], r["content_length"], [bytes(data[r["rc"]:])])
        except BodyError:
            pass


@SETTINGS
@given(requests(), st.lists(st.integers(0, 4000), max_size=5))
def test_valid_request_parses_identically_however_split(req, cuts):
    head, wire, expected, body = req
    whole = parse_request(head)
    assert whole["rc"] == len(head), whole
    for key, value in expected.items():
        assert whole[key] == value, key
    # Arriving piece by piece: every strict prefix is incomplete, the full head parses the same,
    # with or without more bytes after it.
    acc = b""
    for piece in split(head, cuts):
        acc += piece
        r = parse_request(acc)
        if len(acc) < len(head):
            assert r == {"rc": RESULT_INCOMPLETE, "error": None}
        else:
            assert r == whole
    assert parse_request(head + wire + b"GET / HTTP/1.1\r\n") == whole
    got, done, rest = decode_body(whole["body_kind"], whole["content_length"], split(wire, cuts))
    assert (got, done, rest) == (body, True, b"")


@SETTINGS
@given(bodies.flatmap(lambda b: st.tuples(st.just(b), chunked_encoding(b))),
       st.lists(st.integers(0, 4000), max_size=8))
def test_chunked_body_random_pieces(body_and_wire, cuts):
    body, wire = body_and_wire
    assert decode_body(KIND_CHUNKED, -1, split(wire, cuts)) == (body, True, b"")
    # Byte by byte as well.
    assert decode_body(KIND_CHUNKED, -1, [wire[i:i + 1] for i in range(len(wire))]) == (
        body, True, b"")


@SETTINGS
@given(requests(), requests(), st.lists(st.integers(0, 4000), max_size=6))
def test_pipelined_messages_do_not_desync(first, second, cuts):
    head1, wire1, exp1, body1 = first
    head2, wire2, exp2, body2 = second
    stream = head1 + wire1 + head2 + wire2
    # Head of the first message, then its body fed in arbitrary pieces: the leftover must be
    # exactly the second message, byte for byte.
    r1 = parse_request(stream)
    assert r1["rc"] == len(head1) and r1["path"] == exp1["path"]
    rest = stream[r1["rc"]:]
    got, done, leftover = decode_body(r1["body_kind"], r1["content_length"], split(rest, cuts))
    assert (got, done) == (body1, True)
    assert leftover == head2 + wire2
    r2 = parse_request(leftover)
    assert r2["rc"] == len(head2) and r2["path"] == exp2["path"]
    got2, done2, leftover2 = decode_body(r2["body_kind"], r2["content_length"],
                                         [leftover[r2["rc"]:]])
    assert (got2, done2, leftover2) == (body2, True, b"")


@SETTINGS
@given(bodies, st.binary(min_size=1, max_size=50), st.lists(st.integers(0, 400), max_size=6))
def test_length_body_consumed_lands_on_next_message(body, nxt, cuts):
    got, done, leftover = decode_body(KIND_LENGTH, len(body), split(body + nxt, cuts))
    assert (got, done, leftover) == (body, True, nxt)


@SETTINGS
@given(bodies.flatmap(lambda b: st.tuples(st.just(b), chunked_encoding(b))),
       st.binary(max_size=40), st.lists(st.integers(0, 4000), max_size=6))
def test_chunked_reader_leftover_is_exactly_what_follows(body_and_wire, nxt, cuts):
    body, wire = body_and_wire
    reader = BodyReader(KIND_CHUNKED)
    out = b""
    leftover = b""
    for piece in split(wire + nxt, cuts):
        if reader.done:
            leftover += piece
            continue
        data, done, rest = reader.feed(piece)
        out += data
        leftover += rest
        if not done:
            assert rest == b""
    assert (out, reader.done, leftover) == (body, True, nxt)
