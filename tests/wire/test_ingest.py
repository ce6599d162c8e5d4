"""The sans-I/O ingest protocol: parsing, the connection state machine, frame carrying."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from earshot.audio import StreamSpec
from earshot.errors import ProtocolError
from earshot.wire.codes import Close as CloseCode
from earshot.wire.ingest import (
    AudioIn,
    Close,
    IngestConnection,
    Limits,
    Send,
    Start,
    StartRequested,
    Stop,
    StopRequested,
    parse_message,
    spec_from_query,
)

LIMITS = Limits(max_message_bytes=4096)


def start_msg(**kw: object) -> str:
    return json.dumps({"type": "start", "format": "s16", "rate": 16000, "channels": 2, **kw})


def sends(outs: list) -> list[dict]:
    return [o.message for o in outs if isinstance(o, Send)]


def started(conn: IngestConnection, held: int = 0, **kw: object) -> IngestConnection:
    outs = conn.receive_text(start_msg(**kw))
    assert isinstance(outs[0], StartRequested)
    ready = sends(conn.accept("abc123", "tok", held))
    assert ready[0]["type"] == "ready" and ready[0]["offset"] == held
    return conn


# -- parsing ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "invalid_json"),
        ("[1,2]", "invalid_json"),
        ('{"type":"dance"}', "unknown_type"),
        ("{}", "unknown_type"),
        (start_msg(format="mp3"), "unsupported_format"),
        (start_msg(rate=100), "unsupported_rate"),
        (start_msg(rate=10**7), "unsupported_rate"),
        (start_msg(channels=0), "unsupported_channels"),
        (start_msg(channels=99), "unsupported_channels"),
        (start_msg(rate="fast"), "bad_start"),
        (start_msg(rate=True), "bad_start"),
        (start_msg(name="x" * 500), "bad_start"),
        (start_msg(name="bad\nname"), "bad_start"),
        (start_msg(processors="level"), "bad_start"),
        (start_msg(offset=-1), "bad_start"),
        (start_msg(resume=5), "bad_start"),
    ],
)
def test_parse_errors_have_stable_codes(text: str, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_message(text, LIMITS)
    assert info.value.code == code
    assert info.value.message


def test_parse_start_fields() -> None:
    m = parse_message(start_msg(name="../../etc/passwd", processors=["level"], resume="s1",
                                resume_token="t", offset=7), LIMITS)
    assert isinstance(m, Start)
    assert m.spec == StreamSpec("s16", 16000, 2)
    assert (m.name, m.processors, m.resume, m.resume_token, m.offset) == (
        "../../etc/passwd", ("level",), "s1", "t", 7)
    assert isinstance(parse_message('{"type":"stop"}', LIMITS), Stop)


@given(st.text(max_size=200))
def test_parser_never_raises_anything_but_protocol_error(text: str) -> None:
    try:
        parse_message(text, LIMITS)
    except ProtocolError as exc:
        assert exc.code in {"invalid_json", "unknown_type", "bad_start", "unsupported_format",
                            "unsupported_rate", "unsupported_channels"}


@given(st.dictionaries(st.sampled_from(["type", "format", "rate", "channels", "name",
                                         "processors", "offset", "resume", "client"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=5), st.booleans(),
                                 st.lists(st.integers(), max_size=2))))
def test_parser_fuzzed_objects(obj: dict) -> None:
    obj.setdefault("type", "start")
    try:
        parse_message(json.dumps(obj), LIMITS)
    except ProtocolError as exc:
        assert exc.message


def test_query_spec() -> None:
    assert spec_from_query({}, LIMITS) == StreamSpec("f32", 48000, 1)
    assert spec_from_query({"rate": "16000", "format": "s16", "channels": "2"}, LIMITS) == \
        StreamSpec("s16", 16000, 2)
    with pytest.raises(ProtocolError):
        spec_from_query({"rate": "abc"}, LIMITS)


# -- state machine ---------------------------------------------------------------------------
@given(st.lists(st.integers(0, 64), max_size=40))
def test_arbitrary_message_splits_deliver_exact_frames(sizes: list[int]) -> None:
    conn = started(IngestConnection(LIMITS))  # s16 stereo: 4-byte frames
    data = bytes(range(256)) * 20
    pos, got = 0, b""
    for n in sizes:
        for out in conn.receive_bytes(data[pos:pos + n]):
            assert isinstance(out, AudioIn)
            assert len(out.data) == out.frames * 4
            got += out.data
        pos += n
    whole = (pos // 4) * 4
    assert got == data[:whole]
    assert conn.offset == whole // 4


def test_partial_frame_at_stop_is_reported() -> None:
    conn = started(IngestConnection(LIMITS))
    assert conn.receive_bytes(b"\x01\x02\x03\x04\x05\x06")[0].frames == 1
    outs = conn.receive_text('{"type":"stop"}')
    warn = sends(outs)[0]
    assert warn["type"] == "warning" and warn["code"] == "partial_frame" and "2 trailing" in \
        warn["message"]
    assert isinstance(outs[-1], StopRequested)
    assert sends(conn.receive_bytes(b"\0\0\0\0"))[0]["code"] == "after_stop"


def test_binary_before_start_after_text_is_fatal() -> None:
    conn = IngestConnection(LIMITS, compat=StreamSpec("f32", 48000, 1))
    assert sends(conn.receive_text("garbage"))[0]["code"] == "invalid_json"
    outs = conn.receive_bytes(b"\0" * 8)
    assert sends(outs)[0]["code"] == "not_started"
    assert isinstance(outs[-1], Close) and outs[-1].code == CloseCode.BAD_REQUEST
    assert conn.receive_bytes(b"\0" * 8) == []


def test_failed_start_lets_the_client_try_again_but_binary_is_fatal() -> None:
    conn = IngestConnection(LIMITS, compat=StreamSpec("f32", 48000, 1))
    assert sends(conn.receive_text(start_msg(rate=1)))[0]["code"] == "unsupported_rate"
    started(conn)  # a corrected start works
    conn2 = IngestConnection(LIMITS)
    conn2.receive_text(start_msg(rate=1))
    outs = conn2.receive_bytes(b"\0" * 4)
    assert sends(outs)[0]["code"] == "not_started" and isinstance(outs[-1], Close)


def test_compat_mode_starts_on_first_binary() -> None:
    conn = IngestConnection(LIMITS, compat=StreamSpec("f32", 16000, 1))
    outs = conn.receive_bytes(b"\0" * 10)
    assert isinstance(outs[0], StartRequested) and outs[0].start.compat
    outs = conn.accept("s", "t", 0)
    assert sends(outs)[0]["type"] == "ready"
    assert [o.frames for o in outs if isinstance(o, AudioIn)] == [2]  # 2 bytes carried
    assert conn.receive_bytes(b"\0" * 2)[0].frames == 1


def test_too_large_is_fatal_with_1009() -> None:
    conn = started(IngestConnection(LIMITS))
    outs = conn.receive_bytes(b"\0" * 4100)
    assert sends(outs)[0]["code"] == "message_too_large"
    assert isinstance(outs[-1], Close) and outs[-1].code == CloseCode.TOO_BIG


def test_resume_skips_what_the_server_holds_and_refuses_gaps() -> None:
    conn = started(IngestConnection(LIMITS), held=10, offset=8)  # client resends 2 frames
    out = conn.receive_bytes(bytes(range(16)))  # 4 frames, first 2 already held
    assert out[0].data == bytes(range(8, 16)) and conn.offset == 12
    conn = IngestConnection(LIMITS)
    conn.receive_text(start_msg(offset=11))
    outs = conn.accept("s", "t", 10)
    assert sends(outs)[0]["code"] == "gap" and isinstance(outs[-1], Close)


def test_refusals() -> None:
    conn = IngestConnection(LIMITS)
    conn.receive_text(start_msg(resume="x"))
    outs = conn.refuse("unknown_stream", "no such stream")
    assert isinstance(outs[-1], Close) and outs[-1].code == 4404
    conn = IngestConnection(LIMITS)
    conn.receive_text(start_msg())
    assert sends(conn.receive_text(start_msg()))[0]["code"] == "already_started"


def test_ping_pong_and_stop_before_start() -> None:
    conn = IngestConnection(LIMITS)
    assert sends(conn.receive_text('{"type":"ping","id":7}')) == [{"type": "pong", "id": 7}]
    assert sends(conn.receive_text('{"type":"stop"}'))[0]["code"] == "not_started"
