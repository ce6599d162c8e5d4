"""Deepgram's /v1/listen, sans I/O: the query, credentials, audio, control messages, and
earshot's events as Results, SpeechStarted, UtteranceEnd and Metadata."""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest

from door_events import (
    final,
    finalized,
    interim,
    ready,
    speech_end,
    speech_start,
    stopped,
    two_sentences,
)
from earshot.integrations.common import Audio, Close, DoorError, Finalize, OpenStream, Send, Stop
from earshot.integrations.deepgram import (
    IDLE_REASON,
    DeepgramLive,
    ListenOptions,
    ModelInfo,
    credentials,
    handshake,
    handshake_error,
    parse_listen_query,
    plain_word,
)

RID = "5b0c6b54-8a3c-4bb0-9f7c-1f2d3e4a5b6c"
CREATED = "2026-05-01T12:00:00.000Z"
MODEL = ModelInfo(name="small.en", version="faster-whisper", arch="whisper")


def q(s: str) -> list[tuple[str, str]]:
    return [tuple(p.split("=", 1)) for p in s.split("&") if p]  # type: ignore[misc]


def live(query: str = "encoding=linear16&sample_rate=16000", **kw: object) -> DeepgramLive:
    return DeepgramLive(parse_listen_query(q(query)), request_id=RID, created=CREATED, now=0.0,
                        model=MODEL, **kw)  # type: ignore[arg-type]


def sent(actions: list) -> list[dict]:
    return [json.loads(a.data) for a in actions if isinstance(a, Send)]


# --- the query ----------------------------------------------------------------------------


def test_the_sdks_usual_query() -> None:
    o = parse_listen_query(q("model=nova-3&encoding=linear16&sample_rate=16000&channels=1"
                             "&language=en-US&interim_results=true&vad_events=true"
                             "&endpointing=300&utterance_end_ms=1000&punctuate=true"
                             "&smart_format=true&diarize=false&keyterm=earshot&tag=x"))
    assert o == ListenOptions(encoding="linear16", sample_rate=16000, channels=1,
                              language="en-US", interim_results=True, vad_events=True,
                              endpointing=True, endpointing_ms=300, utterance_end_ms=1000,
                              punctuate=True, smart_format=True, model="nova-3",
                              ignored=("diarize", "keyterm", "tag"))
    assert o.raw and o.punctuated


def test_defaults_and_deepgrams_tiny_endpointing() -> None:
    o = parse_listen_query(q("encoding=mulaw&sample_rate=8000&endpointing=10"))
    assert (o.interim_results, o.vad_events, o.endpointing, o.endpointing_ms) == (
        False, False, True, None)  # 10 ms is Deepgram's default: earshot keeps its own
    assert not parse_listen_query(q("encoding=alaw&sample_rate=8000&endpointing=false")
                                  ).endpointing
    assert parse_listen_query(q("language=multi")).language is None


def test_containerised_audio_takes_no_rate() -> None:
    o = parse_listen_query(q("sample_rate=44100&channels=2"))
    assert (o.encoding, o.sample_rate, o.channels, o.raw, o.container_format) == (
        None, None, 1, False, None)
    assert parse_listen_query(q("encoding=ogg-opus")).container_format == "ogg"
    assert parse_listen_query(q("encoding=flac")).container_format == "flac"


@pytest.mark.parametrize("query, code, word", [
    ("encoding=foo&sample_rate=16000", "unsupported_encoding", "'foo'"),
    ("encoding=speex&sample_rate=16000", "unsupported_encoding", "speex"),
    ("encoding=linear16", "missing_sample_rate", "sample_rate"),
    ("encoding=linear16&sample_rate=4000", "bad_option", "sample_rate"),
    ("encoding=linear16&sample_rate=16k", "bad_option", "sample_rate"),
    ("encoding=opus&sample_rate=44100", "bad_option", "Opus"),
    ("encoding=opus&sample_rate=48000&channels=3", "bad_option", "Opus"),
    ("encoding=linear16&sample_rate=16000&channels=9", "bad_option", "channels"),
    ("encoding=linear16&sample_rate=16000&interim_results=yes", "bad_option",
     "interim_results"),
    ("encoding=linear16&sample_rate=16000&endpointing=-5", "bad_option", "endpointing"),
    ("encoding=linear16&sample_rate=16000&utterance_end_ms=soon", "bad_option",
     "utterance_end_ms"),
    ("encoding=linear16&sample_rate=16000&language=en_US!", "bad_option", "language"),
])
def test_what_changes_the_audio_or_is_malformed_is_refused(query: str, code: str,
                                                           word: str) -> None:
    with pytest.raises(DoorError) as info:
        parse_listen_query(q(query))
    assert info.value.code == code and info.value.status == 400
    assert word in info.value.message


def test_credentials_the_ways_deepgram_clients_give_them() -> None:
    assert credentials({"Authorization": "Token abc"}) == ("abc", None)
    assert credentials({"authorization": "Bearer jwt.x.y"}) == ("jwt.x.y", None)
    assert credentials({}, ["token", "abc"]) == ("abc", "token")  # browsers
    assert credentials({}, [], {"token": "abc"}) == ("abc", None)
    assert credentials({"Authorization": "Basic abc"}) == (None, None)
    assert credentials({}, ["token"]) == (None, None)


def test_handshake_refusals_in_deepgrams_shape() -> None:
    status, headers, body = handshake_error(401, "", request_id=RID)
    assert status == 401 and json.loads(body) == {
        "err_code": "INVALID_AUTH", "err_msg": "Invalid credentials.", "request_id": RID}
    assert headers["dg-error"] == "Invalid credentials."
    h = handshake(q("encoding=foo&sample_rate=8000"), {"Authorization": "Token t"})
    assert h.token == "t" and h.options is None
    assert h.error is not None and h.error.code == "unsupported_encoding"
    status, _, body = handshake_error(h.error.status, h.error.message, request_id=RID)
    assert status == 400 and "foo" in json.loads(body)["err_msg"]
    ok = handshake(q("encoding=linear16&sample_rate=16000&foo=1"), {}, ["token", "k"])
    assert (ok.token, ok.subprotocol, ok.error, ok.ignored) == ("k", "token", None, ("foo",))


# --- audio --------------------------------------------------------------------------------


def test_linear16_opens_at_the_first_audio_and_carries_partial_frames() -> None:
    s = live("encoding=linear16&sample_rate=16000&channels=2&vad_events=true&model=nova-3",
             name="agent", client={"peer": "10.0.0.9"})
    pcm = np.arange(400, dtype="<i2").tobytes()  # 200 stereo frames
    out = s.receive_bytes(pcm[:403], 0.1)
    assert out[0] == OpenStream("s16", 16000, 2, name="agent", processors=("vad", "asr"),
                                language=None,
                                client={"dialect": "deepgram", "request_id": RID,
                                        "encoding": "linear16", "peer": "10.0.0.9",
                                        "model": "nova-3"})
    assert out[1:] == [Audio(pcm[:400])]
    assert s.receive_bytes(pcm[403:], 0.2) == [Audio(pcm[400:])]
    assert s.frames == 200 and s.seconds == pytest.approx(200 / 16000)


def test_endpointing_sets_the_vads_minimum_silence() -> None:
    s = live("encoding=linear16&sample_rate=16000&endpointing=500")
    assert s.processors() == ({"name": "asr", "options": {"min_silence_ms": 500}},)


def test_mulaw_and_alaw_become_16_bit() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    x = (np.sin(np.arange(800) / 5) * 20000).astype("<i2").tobytes()
    for enc, lin2, to_lin in (("mulaw", audioop.lin2ulaw, audioop.ulaw2lin),
                              ("alaw", audioop.lin2alaw, audioop.alaw2lin)):
        coded = lin2(x, 2)
        s = live(f"encoding={enc}&sample_rate=8000")
        out = s.receive_bytes(coded, 0.1)
        assert out[0] == OpenStream("s16", 8000, 1, processors=("asr",),
                                    client={"dialect": "deepgram", "request_id": RID,
                                            "encoding": enc})
        assert out[1] == Audio(to_lin(coded, 2))
        assert s.frames == 800


def test_linear32_is_float() -> None:
    s = live("encoding=linear32&sample_rate=48000")
    x = np.linspace(-1, 1, 480, dtype="<f4").tobytes()
    out = s.receive_bytes(x, 0.0)
    assert out[0].format == "f32" and out[1] == Audio(x)


def test_raw_opus_packets_pass_through_and_count() -> None:
    opus = pytest.importorskip("earshot.codec.opus")
    try:
        enc = opus.OpusEncoder(16000, 1)
    except Exception as exc:  # no libopus here
        pytest.skip(f"no Opus encoder: {exc}")
    pcm = (np.sin(np.arange(16000) / 8) * 0.3).astype(np.float32)
    packets = enc.encode(pcm)
    s = live("encoding=opus&sample_rate=16000")
    out = []
    for p in packets:
        out += s.receive_bytes(p, 0.1)
    assert out[0] == OpenStream("opus", 16000, 1, processors=("asr",),
                                client={"dialect": "deepgram", "request_id": RID,
                                        "encoding": "opus"})
    assert out[1:] == [Audio(p) for p in packets]
    assert s.frames == 320 * len(packets)  # 20 ms packets at 16 kHz


def test_a_packet_that_is_not_opus_ends_with_deepgrams_data_error() -> None:
    s = live("encoding=opus&sample_rate=48000")
    out = s.receive_bytes(b"\xff", 0.1)
    errors = [m for m in sent(out) if m["type"] == "Error"]
    assert errors and errors[0]["variant"] == "DataError"
    assert out[-1] == Close(1002, out[-1].reason) and "DATA-0000" in out[-1].reason
    assert sent(out)[-1]["type"] == "Metadata"


class FakeDecoder:
    """A containerised decoder that 'decodes' 4 bytes to one float frame, at 22.05 kHz."""

    def __init__(self, fmt: str | None) -> None:
        self.fmt = fmt
        self.rate: int | None = None
        self.channels: int | None = None
        self.error: DoorError | None = None
        self.pending: list[np.ndarray] = []
        self.closed = False

    def feed(self, data: bytes) -> list[np.ndarray]:
        if data.startswith(b"BAD"):
            self.error = DoorError("bad_audio", "cannot decode the audio (garbage)")
            return []
        self.rate, self.channels = 22050, 1
        block = np.frombuffer(data, "<f4").reshape(-1, 1)
        return [block]

    def take(self) -> list[np.ndarray]:
        out, self.pending = self.pending, []
        return out

    def close(self, timeout: float | None = 30.0) -> list[np.ndarray]:
        self.closed = True
        return [np.zeros((10, 1), np.float32)]


def test_containerised_audio_goes_through_the_decoder() -> None:
    made: list[FakeDecoder] = []

    def factory(fmt: str | None) -> FakeDecoder:
        made.append(FakeDecoder(fmt))
        return made[-1]

    s = live("encoding=ogg-opus", decoder=factory)
    assert made[0].fmt == "ogg"
    x = np.arange(100, dtype="<f4")
    out = s.receive_bytes(x.tobytes(), 0.1)
    assert out[0] == OpenStream("f32", 22050, 1, processors=("asr",),
                                client={"dialect": "deepgram", "request_id": RID,
                                        "encoding": "ogg-opus"})
    assert out[1] == Audio(x.tobytes())
    made[0].pending = [np.ones((5, 1), np.float32)]
    assert s.poll(0.2) == [Audio(np.ones(5, "<f4").tobytes())]
    out = s.receive_text('{"type": "CloseStream"}', 0.3)
    assert made[0].closed and out == [Audio(bytes(40)), Stop()]
    assert s.frames == 115
    with pytest.raises(DoorError):
        live("", decoder=None)  # containerised audio needs a decoder
    bad = live("", decoder=factory)
    out = bad.receive_bytes(b"BAD bytes", 0.1)
    assert sent(out)[0]["variant"] == "DataError" and out[-1].code == 1002


# --- control messages ---------------------------------------------------------------------


def test_keepalive_finalize_closestream() -> None:
    s = live()
    s.receive_bytes(bytes(3200), 1.0)
    assert s.receive_text('{"type": "KeepAlive"}', 2.0) == []
    assert s.receive_text('{"type": "Finalize"}', 2.5) == [Finalize()]
    assert s.receive_text('{"type": "CloseStream"}', 3.0) == [Stop()]
    assert s.state == "closing"
    # audio after CloseStream: said once, not taken
    out = s.receive_bytes(bytes(320), 3.1)
    assert sent(out)[0]["variant"] == "StreamClosed"
    assert s.receive_bytes(bytes(320), 3.2) == []
    out = s.on_event(stopped(1600, 16000))
    meta = sent(out)[-1]
    assert out[-1] == Close(1000)
    assert meta == {"type": "Metadata", "transaction_key": "deprecated", "request_id": RID,
                    "sha256": hashlib.sha256(bytes(3200)).hexdigest(), "created": CREATED,
                    "duration": 0.1, "channels": 1, "models": [MODEL.uuid],
                    "model_info": {MODEL.uuid: {"name": "small.en",
                                                "version": "faster-whisper",
                                                "arch": "whisper"}}}


def test_an_empty_binary_message_is_the_legacy_close() -> None:
    s = live()
    s.receive_bytes(bytes(320), 0.1)
    assert s.receive_bytes(b"", 0.2) == [Stop()]


def test_closestream_before_any_audio_answers_at_once() -> None:
    s = live()
    out = s.receive_text('{"type":"CloseStream"}', 1.0)
    assert [m["type"] for m in sent(out)] == ["Metadata"] and out[-1] == Close(1000)
    assert sent(out)[0]["duration"] == 0.0 and "models" not in sent(out)[0]
    assert not any(isinstance(a, OpenStream | Stop) for a in out)


def test_finalize_with_nothing_said_answers_an_empty_final() -> None:
    s = live()
    [r] = sent(s.receive_text('{"type":"Finalize"}', 1.0))
    assert (r["type"], r["is_final"], r["from_finalize"], r["speech_final"]) == (
        "Results", True, True, False)
    assert r["channel"]["alternatives"][0]["transcript"] == ""
    s.receive_bytes(bytes(32000), 1.5)
    assert s.receive_text('{"type":"Finalize"}', 2.0) == [Finalize()]
    [r] = sent(s.on_event(finalized(1.0, None)))
    assert r["from_finalize"] and r["start"] == 1.0


def test_bad_text_messages_get_a_schema_error_and_the_stream_goes_on() -> None:
    s = live()
    for text in ("hello", "[1]", '{"type": "Dance"}'):
        [e] = sent(s.receive_text(text, 0.5))
        assert e["type"] == "Error" and e["variant"] == "SchemaError"
        assert e["message"] == text
    [c] = sent(s.receive_text('{"type": "Configure", "keyterms": ["earshot"]}', 0.6))
    assert c == {"type": "ConfigureFailure", "request_id": RID,
                 "code": "CONFIGURE_KEYTERMS_NOT_SUPPORTED",
                 "description": "earshot does not change a stream's settings mid-stream"}
    assert s.state == "open"


def test_ten_quiet_seconds_close_the_way_deepgram_does() -> None:
    s = live()
    assert s.next_deadline == 10.0
    s.receive_bytes(bytes(320), 4.0)
    s.receive_text('{"type":"KeepAlive"}', 9.0)
    assert s.tick(18.9) == [] and s.next_deadline == 19.0
    out = s.tick(19.0)
    assert out[0] == Stop() and sent(out)[-1]["type"] == "Metadata"
    assert out[-1] == Close(1011, IDLE_REASON)
    assert IDLE_REASON == ("Deepgram did not receive audio data or a text message within the "
                           "timeout window. See https://dpgr.am/net0001")
    assert s.tick(30.0) == [] and s.next_deadline is None
    # a connection that never sent anything: no stream to stop
    quiet = live()
    out = quiet.tick(10.0)
    assert Stop() not in out and out[-1].code == 1011


# --- earshot's events ---------------------------------------------------------------------


def run(s: DeepgramLive, events: list[dict], audio_until: float) -> list[dict]:
    """Feed audio up to each event's time (so stream time advances) and the events."""
    out: list[dict] = []
    now = 0.0
    for ev in events:
        t = float(ev.get("end", ev.get("t", 0.0))) + 0.3  # events lag the audio a little
        while s.seconds < min(t, audio_until):
            now += 0.1
            out += sent(s.receive_bytes(bytes(3200), now))
        out += sent(s.on_event(ev))
    while s.seconds < audio_until:
        now += 0.1
        out += sent(s.receive_bytes(bytes(3200), now))
    return out


def test_results_interim_and_final_with_words() -> None:
    s = live("encoding=linear16&sample_rate=16000&interim_results=true&punctuate=true")
    s.receive_bytes(bytes(320), 0.0)
    [r] = sent(s.on_event(interim(0, "Hello, wor", "Hello,", 0.5, 1.5)))
    assert (r["is_final"], r["speech_final"], r["from_finalize"]) == (False, False, False)
    assert (r["start"], r["duration"]) == (0.5, 1.0)
    alt = r["channel"]["alternatives"][0]
    assert alt["transcript"] == "Hello, wor"
    assert alt["words"][0] == {"word": "hello", "start": 0.5, "end": 1.0, "confidence": 0.9,
                               "punctuated_word": "Hello,"}
    assert r["metadata"] == {"request_id": RID, "model_info": MODEL.as_dict(),
                             "model_uuid": MODEL.uuid}
    assert r["channel_index"] == [0, 1]
    [f] = sent(s.on_event(final(0, "Hello, world.", 0.5, 1.8, p=0.8)))
    assert (f["is_final"], f["speech_final"], f["from_finalize"]) == (True, True, False)
    alt = f["channel"]["alternatives"][0]
    assert alt["transcript"] == "Hello, world." and alt["confidence"] == 0.8
    assert [w["word"] for w in alt["words"]] == ["hello", "world"]
    assert [w["punctuated_word"] for w in alt["words"]] == ["Hello,", "world."]


def test_without_punctuate_the_transcript_is_plain_words() -> None:
    s = live()
    [f] = sent(s.on_event(final(0, "Hello, World! It's me.", 0.0, 1.0)))
    assert f["channel"]["alternatives"][0]["transcript"] == "hello world it's me"


def test_interims_only_when_asked_and_finalize_marks_its_final() -> None:
    s = live()
    assert s.on_event(interim(0, "hel", "", 0.1, 0.5)) == []
    [f] = sent(s.on_event(final(0, "hello", 0.1, 0.7, finalize=True)))
    assert (f["is_final"], f["speech_final"], f["from_finalize"]) == (True, False, True)
    assert s.on_event(finalized(0.7, 0)) == []  # the final already said it
    s2 = live("encoding=linear16&sample_rate=16000&endpointing=false")
    [f2] = sent(s2.on_event(final(0, "hello", 0.1, 0.7)))
    assert f2["speech_final"] is False


def test_vad_events_give_speech_started_per_utterance() -> None:
    s = live("encoding=linear16&sample_rate=16000&vad_events=true")
    msgs = run(s, two_sentences(), 6.0)
    started = [m for m in msgs if m["type"] == "SpeechStarted"]
    assert started == [{"type": "SpeechStarted", "channel": [0, 1], "timestamp": 0.5},
                       {"type": "SpeechStarted", "channel": [0, 1], "timestamp": 3.0}]
    assert [m["is_final"] for m in msgs if m["type"] == "Results"] == [True, True]
    s2 = live()  # without vad_events, none
    assert not [m for m in run(s2, two_sentences(), 6.0) if m["type"] == "SpeechStarted"]


def test_utterance_end_after_the_gap_once_per_sentence() -> None:
    # the sentences are 0.6 s apart: a 500 ms gap ends the first one, 1000 ms would not
    s = live("encoding=linear16&sample_rate=16000&interim_results=true&vad_events=true"
             "&utterance_end_ms=500")
    msgs = run(s, two_sentences(), 7.0)
    kinds = [(m["type"], m.get("is_final")) for m in msgs]
    ends = [m for m in msgs if m["type"] == "UtteranceEnd"]
    assert ends == [{"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 2.4},
                    {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 4.6}]
    # each after its final, and the first before the second sentence's speech
    assert kinds.index(("UtteranceEnd", None)) > kinds.index(("Results", True))
    first_end = msgs.index(ends[0])
    second_start = [i for i, m in enumerate(msgs) if m["type"] == "SpeechStarted"][1]
    assert first_end < second_start


def test_no_utterance_end_when_speech_resumes_within_the_gap() -> None:
    s = live("encoding=linear16&sample_rate=16000&vad_events=true&utterance_end_ms=2000")
    events = [speech_start(0.5), speech_end(0.5, 1.5), final(0, "one two", 0.5, 1.5),
              speech_start(2.5), speech_end(2.5, 3.5), final(1, "three", 2.5, 3.5)]
    msgs = run(s, events, 8.0)
    assert [m["last_word_end"] for m in msgs if m["type"] == "UtteranceEnd"] == [3.5]


def test_speech_heard_before_the_previous_final_arrived_also_counts() -> None:
    s = live("encoding=linear16&sample_rate=16000&vad_events=true&utterance_end_ms=1000")
    s.receive_bytes(bytes(32000 * 3), 0.1)  # 3 s of audio in
    s.on_event(speech_start(0.5))
    s.on_event(speech_start(2.0))  # the next utterance began before the final came
    out = sent(s.on_event(final(0, "one", 0.5, 1.5)))
    assert [m["type"] for m in out] == ["Results"]


def test_a_final_decoded_late_still_ends_its_utterance_when_the_gap_was_there() -> None:
    """Under load a final can come after the next speech began: the utterance did end if
    that speech began at least utterance_end_ms after its last word (in the audio)."""
    s = live("encoding=linear16&sample_rate=16000&vad_events=true&utterance_end_ms=1000")
    s.receive_bytes(bytes(32000 * 5), 0.1)  # 5 s of audio in
    s.on_event(speech_start(0.5))
    s.on_event(speech_start(3.0))  # 1.5 s after the last word below: past the gap
    out = sent(s.on_event(final(0, "one", 0.5, 1.5)))
    assert [m["type"] for m in out] == ["Results", "UtteranceEnd"]
    assert out[1]["last_word_end"] == 1.5
    # and not twice, however much audio comes
    assert not [m for m in sent(s.receive_bytes(bytes(32000), 0.2))
                if m["type"] == "UtteranceEnd"]


def test_the_end_flushes_a_pending_utterance_end_then_metadata() -> None:
    s = live("encoding=linear16&sample_rate=16000&utterance_end_ms=1000")
    s.on_event(ready())
    s.receive_bytes(bytes(3200 * 5), 0.1)
    s.on_event(final(0, "bye", 0.1, 0.4))
    s.receive_text('{"type":"CloseStream"}', 0.2)
    out = sent(s.on_event(stopped(8000, 16000)))
    assert [m["type"] for m in out] == ["UtteranceEnd", "Metadata"]
    assert out[1]["duration"] == 0.5 and out[1]["earshot_stream"] == "mwr3x0a1b2c3d4e5"


def test_a_stream_failure_is_an_error_then_a_close() -> None:
    s = live()
    s.receive_bytes(bytes(320), 0.0)
    out = s.on_event({"type": "error", "code": "storage_full", "message": "disk full"})
    assert [m["type"] for m in sent(out)] == ["Error", "Metadata"]
    assert out[-1] == Close(1011, "storage_full")
    assert s.on_event(final(0, "late", 0, 1)) == []


def test_plain_word() -> None:
    assert [plain_word(w) for w in ["Hello,", "\"Quote\"", "it's", "...", "U.S.", "3.5"]] == [
        "hello", "quote", "it's", "", "u.s", "3.5"]
