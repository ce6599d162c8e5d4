"""Wyoming, sans I/O: the framing as the ``wyoming`` package writes it, and one session."""

from __future__ import annotations

import json

import numpy as np
import pytest

from door_events import final, interim, speech_end, speech_start, stopped, two_sentences
from earshot.integrations.common import (
    Audio,
    Close,
    DoorError,
    Finalize,
    OpenStream,
    Send,
    Stop,
)
from earshot.integrations.wyoming import (
    AsrModelInfo,
    WyomingEvent,
    WyomingInfo,
    WyomingReader,
    WyomingSession,
    encode_event,
)

INFO = WyomingInfo(models=(AsrModelInfo("small.en", ("en",), description="faster-whisper"),),
                   version="0.1.0")


def frame(type: str, body_data: dict | None = None, payload: bytes | None = None,
          **header: object) -> bytes:
    """Like encode_event, with header fields of one's own (as old or odd clients write)."""
    h: dict[str, object] = {"type": type, **header}
    body = b""
    if body_data is not None:
        body = json.dumps(body_data).encode()
        h["data_length"] = len(body)
    if payload is not None:
        h["payload_length"] = len(payload)
    return json.dumps(h).encode() + b"\n" + body + (payload or b"")


def events_of(actions: list) -> list[WyomingEvent]:
    """Decode what a session sends back, with the reader itself."""
    r = WyomingReader()
    out = []
    for a in actions:
        if isinstance(a, Send):
            assert isinstance(a.data, bytes)
            out += r.feed(a.data)
    assert r.pending == 0
    return out


# --- framing ------------------------------------------------------------------------------


def test_encode_matches_the_packages_layout() -> None:
    raw = encode_event("audio-chunk", {"rate": 16000, "width": 2, "channels": 1},
                       b"\x01\x00\x02\x00")
    line, rest = raw.split(b"\n", 1)
    header = json.loads(line)
    assert header == {"type": "audio-chunk", "version": "1.10.2", "data_length": 42,
                      "payload_length": 4}
    assert json.loads(rest[:42]) == {"rate": 16000, "width": 2, "channels": 1}
    assert rest[42:] == b"\x01\x00\x02\x00"
    # no data and no payload: neither length is written
    assert json.loads(encode_event("describe")) == {"type": "describe", "version": "1.10.2"}


def test_reader_reassembles_events_split_anywhere() -> None:
    stream = (encode_event("transcribe", {"language": "en"})
              + encode_event("audio-start", {"rate": 16000, "width": 2, "channels": 1})
              + encode_event("audio-chunk", {"rate": 16000, "width": 2, "channels": 1},
                             bytes(range(200)))
              + encode_event("audio-stop"))
    whole = WyomingReader().feed(stream)
    assert [e.type for e in whole] == ["transcribe", "audio-start", "audio-chunk", "audio-stop"]
    assert whole[2].payload == bytes(range(200)) and whole[2].data["rate"] == 16000
    for cut in range(1, len(stream)):
        r = WyomingReader()
        got = r.feed(stream[:cut]) + r.feed(stream[cut:])
        assert got == whole, cut
    r = WyomingReader()
    got = [e for b in stream for e in r.feed(bytes([b]))]
    assert got == whole


def test_reader_merges_header_data_with_data_bytes_and_skips_blank_lines() -> None:
    raw = b"\n\r\n" + frame("transcribe", {"language": "de"}, data={"name": "x"}) \
        + b'{"type": "ping", "data": {"text": "hi"}}\n'
    got = WyomingReader().feed(raw)
    assert got == [WyomingEvent("transcribe", {"name": "x", "language": "de"}, None),
                   WyomingEvent("ping", {"text": "hi"}, None)]


@pytest.mark.parametrize("raw, code", [
    (b"not json\n", "bad_header"),
    (b"[1, 2]\n", "bad_header"),
    (b'{"data": {}}\n', "bad_header"),
    (b'{"type": 5}\n', "bad_header"),
    (b'{"type": "x", "data": [1]}\n', "bad_header"),
    (b'{"type": "x", "payload_length": -1}\n', "bad_header"),
    (b'{"type": "x", "payload_length": "12"}\n', "bad_header"),
    (b'{"type": "x", "payload_length": true}\n', "bad_header"),
    (b'{"type": "audio-chunk", "payload_length": 4194305}\n', "payload_too_large"),
    (b'{"type": "x", "data_length": 1048577}\n', "data_too_large"),
    (b'{"type": "x", "data_length": 3}\n[1]', "bad_data"),
    (b'{"type": "x", "data_length": 3}\nabc', "bad_data"),
])
def test_reader_refuses_broken_framing_clearly(raw: bytes, code: str) -> None:
    r = WyomingReader()
    with pytest.raises(DoorError) as info:
        r.feed(raw)
    assert info.value.code == code
    assert info.value.message
    with pytest.raises(DoorError):  # the framing is lost for good
        r.feed(encode_event("describe"))


def test_reader_bounds_a_header_line_without_newline() -> None:
    r = WyomingReader(max_header=1000)
    assert r.feed(b'{"type": "x", "pad": "' + b"a" * 900) == []
    with pytest.raises(DoorError) as info:
        r.feed(b"a" * 200)
    assert info.value.code == "header_too_long"


def test_reader_waits_for_a_payload_within_its_limit() -> None:
    r = WyomingReader(max_payload=10)
    assert r.feed(frame("audio-chunk", payload=b"0123456789")[:-3]) == []
    assert r.feed(b"789")[0].payload == b"0123456789"
    with pytest.raises(DoorError) as info:
        WyomingReader(max_payload=10).feed(frame("audio-chunk", payload=b"0" * 11))
    assert info.value.code == "payload_too_large"
    assert "11" in info.value.message and "10" in info.value.message


# --- the session ------------------------------------------------------------------------


def test_describe_answers_one_asr_program_that_streams() -> None:
    s = WyomingSession(INFO)
    [info] = events_of(s.receive(WyomingEvent("describe")))
    assert info.type == "info"
    [asr] = info.data["asr"]
    assert asr["name"] == "earshot" and asr["version"] == "0.1.0" and asr["installed"]
    assert asr["supports_transcript_streaming"] is True
    assert asr["attribution"] == {"name": "earshot",
                                  "url": "https://github.com/earshot-audio/earshot"}
    assert asr["models"] == [{"name": "small.en", "languages": ["en"], "installed": True,
                              "description": "faster-whisper", "version": None,
                              "attribution": asr["attribution"]}]
    assert info.data["tts"] == [] and info.data["wake"] == []


def test_ping_pong_and_unknown_events_ignored() -> None:
    s = WyomingSession(INFO)
    [pong] = events_of(s.receive(WyomingEvent("ping", {"text": "abc"})))
    assert pong.type == "pong" and pong.data == {"text": "abc"}
    assert s.receive(WyomingEvent("synthesize", {"text": "hello"})) == []
    assert s.receive(WyomingEvent("run-satellite")) == []


def fmt(rate: int = 16000, width: int = 2, channels: int = 1) -> dict[str, int]:
    return {"rate": rate, "width": width, "channels": channels}


def test_a_request_opens_a_stream_feeds_audio_and_finalizes_at_audio_stop() -> None:
    s = WyomingSession(INFO, name="kitchen", client={"peer": "10.0.0.5"})
    assert s.receive(WyomingEvent("transcribe", {"language": "en", "name": "small.en"})) == []
    [opened] = s.receive(WyomingEvent("audio-start", fmt()))
    assert opened == OpenStream("s16", 16000, 1, name="kitchen", processors=("vad", "asr"),
                                language="en",
                                client={"dialect": "wyoming", "peer": "10.0.0.5",
                                        "model": "small.en"})
    pcm = np.arange(-500, 500, dtype="<i2").tobytes()
    # chunks split inside a frame: whole frames only, the rest carried
    assert s.receive(WyomingEvent("audio-chunk", fmt(), pcm[:101])) == [Audio(pcm[:100])]
    assert s.receive(WyomingEvent("audio-chunk", fmt(), pcm[101:])) == [Audio(pcm[100:])]
    assert s.receive(WyomingEvent("audio-stop")) == [Finalize(), Stop()]
    assert s.partial_bytes == 0


def test_transcripts_stream_as_chunks_that_join_into_the_transcript() -> None:
    s = WyomingSession(INFO)
    s.receive(WyomingEvent("transcribe", {"language": "en"}))
    s.receive(WyomingEvent("audio-start", fmt()))
    sent = []
    for ev in two_sentences():
        sent += events_of(s.on_event(ev))
    sent += events_of(s.receive(WyomingEvent("audio-stop")))
    sent += events_of(s.on_event(stopped(16000 * 5, 16000)))
    kinds = [e.type for e in sent]
    assert kinds[0] == "transcript-start" and kinds[-2:] == ["transcript", "transcript-stop"]
    chunks = [e.data["text"] for e in sent if e.type == "transcript-chunk"]
    assert chunks == ["the birch", " canoe", " slid on the smooth planks", " glue the",
                      " sheet to the dark blue background"]
    [transcript] = [e for e in sent if e.type == "transcript"]
    assert "".join(chunks) == transcript.data["text"] == (
        "the birch canoe slid on the smooth planks glue the sheet to the dark blue background")
    assert transcript.data["language"] == "en"
    assert sent[0].data == {"language": "en"}
    assert s.state == "idle"


def test_the_last_words_come_in_a_final_chunk_at_stopped() -> None:
    s = WyomingSession(INFO)
    s.receive(WyomingEvent("audio-start", fmt()))
    out = events_of(s.on_event(interim(0, "turn on the", "turn on", 0.2, 1.0)))
    assert [(e.type, e.data.get("text")) for e in out] == [
        ("transcript-start", None), ("transcript-chunk", "turn on")]
    s.receive(WyomingEvent("audio-stop"))
    # the cut utterance's final comes (from Finalize), then the stream's end
    out = events_of(s.on_event(final(0, "turn on the lights", 0.2, 1.4, finalize=True)))
    assert [(e.type, e.data.get("text")) for e in out] == [("transcript-chunk",
                                                            " the lights")]
    out = events_of(s.on_event(stopped(24000, 16000)))
    assert [(e.type, e.data.get("text")) for e in out] == [
        ("transcript", "turn on the lights"), ("transcript-stop", None)]
    assert out[0].data["language"] == "en"  # the engine's, as none was asked for


def test_no_speech_gives_an_empty_transcript() -> None:
    s = WyomingSession(INFO)
    s.receive(WyomingEvent("transcribe"))
    s.receive(WyomingEvent("audio-start", fmt()))
    s.receive(WyomingEvent("audio-chunk", fmt(), bytes(3200)))
    s.receive(WyomingEvent("audio-stop"))
    out = events_of(s.on_event(stopped(1600, 16000)))
    assert [(e.type, e.data.get("text")) for e in out] == [
        ("transcript-start", None), ("transcript", ""), ("transcript-stop", None)]
    # audio-stop with no audio at all: answered at once, no stream opened
    s2 = WyomingSession(INFO)
    s2.receive(WyomingEvent("transcribe"))
    out = s2.receive(WyomingEvent("audio-stop"))
    assert not any(isinstance(a, OpenStream | Stop) for a in out)
    assert [e.type for e in events_of(out)] == ["transcript-start", "transcript",
                                                "transcript-stop"]


def test_requests_one_after_another_on_one_connection() -> None:
    s = WyomingSession(INFO)
    for n in (1, 2):
        s.receive(WyomingEvent("transcribe", {"language": "en"}))
        assert isinstance(s.receive(WyomingEvent("audio-start", fmt(rate=22050)))[0],
                          OpenStream)
        s.on_event(final(0, f"request {n}", 0.1, 0.5))
        s.receive(WyomingEvent("audio-stop"))
        out = events_of(s.on_event(stopped(22050, 22050)))
        assert [e.data["text"] for e in out if e.type == "transcript"] == [f"request {n}"]
    assert s.requests == 2
    # events after a request ended (a late one) change nothing
    assert s.on_event(final(1, "late", 1.0, 2.0)) == []


def test_audio_chunk_without_audio_start_opens_with_its_own_format() -> None:
    s = WyomingSession(INFO)
    out = s.receive(WyomingEvent("audio-chunk", fmt(rate=48000, channels=2), bytes(8)))
    assert out[0] == OpenStream("s16", 48000, 2, processors=("vad", "asr"),
                                client={"dialect": "wyoming"})
    assert out[1] == Audio(bytes(8))


def test_32_bit_audio_goes_as_float() -> None:
    s = WyomingSession(INFO)
    [opened] = s.receive(WyomingEvent("audio-start", fmt(width=4)))
    assert opened.format == "f32"
    x = np.array([0, 2**30, -(2**31), 2**31 - 1], dtype="<i4")
    [audio] = s.receive(WyomingEvent("audio-chunk", fmt(width=4), x.tobytes()))
    assert isinstance(audio, Audio)
    assert np.frombuffer(audio.data, "<f4").tolist() == [0.0, 0.5, -1.0, pytest.approx(1.0)]


@pytest.mark.parametrize("data, word", [
    (fmt(width=1), "width 1"),
    (fmt(rate=4000), "rate 4000"),
    (fmt(channels=9), "channels 9"),
    ({"rate": 16000, "width": 2}, "'channels'"),
    ({"rate": "16000", "width": 2, "channels": 1}, "'rate'"),
])
def test_bad_audio_formats_are_refused_with_an_error_event(data: dict, word: str) -> None:
    s = WyomingSession(INFO)
    out = s.receive(WyomingEvent("audio-start", data))
    [err] = events_of(out)
    assert err.type == "error" and err.data["code"] == "bad_audio_format"
    assert word in err.data["text"]
    assert isinstance(out[-1], Close) and not any(isinstance(a, OpenStream) for a in out)


def test_a_chunk_in_another_format_mid_request_stops_the_stream() -> None:
    s = WyomingSession(INFO)
    s.receive(WyomingEvent("audio-start", fmt()))
    out = s.receive(WyomingEvent("audio-chunk", fmt(rate=8000), bytes(4)))
    [err] = events_of(out)
    assert err.data["code"] == "bad_audio_format" and "differs" in err.data["text"]
    assert Stop() in out and out[-1] == Close()
    # a closed session takes nothing more
    assert s.receive(WyomingEvent("audio-chunk", fmt(), bytes(4))) == []
    assert s.receive(WyomingEvent("describe")) == []


def test_a_trailing_partial_frame_is_counted_not_sent() -> None:
    s = WyomingSession(INFO)
    s.receive(WyomingEvent("audio-start", fmt(channels=2)))
    assert s.receive(WyomingEvent("audio-chunk", fmt(channels=2), bytes(10))) == [
        Audio(bytes(8))]
    assert s.receive(WyomingEvent("audio-stop")) == [Finalize(), Stop()]
    assert s.partial_bytes == 2


def test_a_stream_failure_is_an_error_event_and_a_close() -> None:
    s = WyomingSession(INFO)
    s.receive(WyomingEvent("audio-start", fmt()))
    out = s.on_event({"type": "error", "code": "storage_full", "message": "disk full"})
    [err] = events_of(out)
    assert err.data == {"text": "disk full", "code": "storage_full"}
    assert out[-1] == Close()
    # a processor's error does not end the request
    s2 = WyomingSession(INFO)
    s2.receive(WyomingEvent("audio-start", fmt()))
    assert s2.on_event({"type": "error", "processor": "level", "code": "processor_failed",
                        "message": "x"}) == []


def test_vad_events_alone_send_nothing() -> None:
    s = WyomingSession(INFO)
    s.receive(WyomingEvent("audio-start", fmt()))
    assert s.on_event(speech_start(0.5)) == [] and s.on_event(speech_end(0.5, 1.0)) == []
