"""OpenAI Realtime transcription sessions, sans I/O: session updates (GA and beta), audio
appends, commit/clear, and earshot's events as the Realtime server events."""

from __future__ import annotations

import base64
import json
import warnings

import numpy as np
import pytest

from door_events import (
    final,
    finalized,
    interim,
    speech_end,
    speech_start,
    stopped,
    two_sentences,
)
from earshot.integrations.common import Audio, Close, Finalize, OpenStream, Send
from earshot.integrations.openai_realtime import RealtimeSession, counting_ids, handshake

CREATED = 1_750_000_000


def session(**kw: object) -> RealtimeSession:
    return RealtimeSession(session_id="sess_1", created=CREATED, model="small.en",
                           ids=counting_ids(), **kw)  # type: ignore[arg-type]


def sent(actions: list) -> list[dict]:
    return [json.loads(a.data) for a in actions if isinstance(a, Send)]


def ev(type: str, **fields: object) -> str:
    return json.dumps({"type": type, **fields})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def append(s: RealtimeSession, seconds: float, rate: int = 24000) -> list:
    return s.receive_text(ev("input_audio_buffer.append",
                             audio=b64(bytes(2 * round(seconds * rate)))))


# --- handshake and session ----------------------------------------------------------------


def test_handshake() -> None:
    h = handshake({"intent": "transcription", "model": "gpt-4o-transcribe"},
                  {"Authorization": "Bearer k1"})
    assert (h.token, h.beta, h.model, h.error, h.subprotocol) == (
        "k1", False, "gpt-4o-transcribe", None, None)
    b = handshake({"intent": "transcription"}, {"OpenAI-Beta": "realtime=v1"},
                  ["realtime", "openai-insecure-api-key.k2", "openai-beta.realtime-v1"])
    assert (b.token, b.beta, b.subprotocol) == ("k2", True, "realtime")
    bad = handshake({"model": "gpt-realtime"}, {"Authorization": "Bearer k"})
    assert bad.error is not None and bad.error.status == 400 and "intent" in bad.error.message


def test_session_created_in_the_ga_shape() -> None:
    [created] = sent(session().open())
    assert created == {
        "type": "session.created", "event_id": "event_1",
        "session": {
            "type": "transcription", "id": "sess_1",
            "object": "realtime.transcription_session", "expires_at": CREATED + 3600,
            "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "small.en", "language": None, "prompt": ""},
                "noise_reduction": None,
                "turn_detection": {"type": "server_vad", "threshold": 0.5,
                                   "prefix_padding_ms": 30, "silence_duration_ms": 300}}},
            "include": []}}


def test_session_update_ga() -> None:
    s = session()
    out = sent(s.receive_text(ev("session.update", session={
        "type": "transcription",
        "audio": {"input": {"format": {"type": "audio/pcmu"},
                            "transcription": {"model": "gpt-4o-transcribe", "language": "en",
                                              "prompt": "kitchen words"},
                            "noise_reduction": {"type": "near_field"},
                            "turn_detection": {"type": "server_vad", "threshold": 0.6,
                                               "silence_duration_ms": 500}}},
        "include": ["item.input_audio_transcription.logprobs"]})))
    [u] = out
    assert u["type"] == "session.updated"
    inp = u["session"]["audio"]["input"]
    assert inp["format"] == {"type": "audio/pcmu"}
    assert inp["transcription"] == {"model": "gpt-4o-transcribe", "language": "en",
                                    "prompt": "kitchen words"}
    assert inp["turn_detection"] == {"type": "server_vad", "threshold": 0.6,
                                     "prefix_padding_ms": 30, "silence_duration_ms": 500}
    assert inp["noise_reduction"] is None  # not applied, and said so
    # the stream is made with what was asked
    [opened, _] = append(s, 0.1, rate=8000)
    assert opened == OpenStream(
        "s16", 8000, 1, processors=(
            {"name": "vad", "options": {"threshold": 0.6, "min_silence_ms": 500,
                                        "pad_ms": 30}},
            {"name": "asr", "options": {"threshold": 0.6, "min_silence_ms": 500,
                                        "pad_ms": 30}}),
        language="en", prompt="kitchen words",
        client={"dialect": "openai-realtime", "session": "sess_1",
                "model": "gpt-4o-transcribe"})
    # turn detection off: null
    [u] = sent(s.receive_text(ev("session.update", session={
        "type": "transcription", "audio": {"input": {"turn_detection": None}}})))
    assert u["session"]["audio"]["input"]["turn_detection"] is None


@pytest.mark.parametrize("update, param", [
    ({"type": "realtime"}, "session.type"),
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
     "session.audio.input.format.rate"),
    ({"audio": {"input": {"format": {"type": "audio/mp3"}}}},
     "session.audio.input.format.type"),
    ({"audio": {"input": {"turn_detection": {"type": "magic"}}}},
     "session.audio.input.turn_detection"),
    ({"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}}},
     "session.audio.input.turn_detection.threshold"),
    ({"audio": {"input": {"transcription": {"language": "English!"}}}},
     "session.audio.input.transcription.language"),
    ({"include": "all"}, "session.include"),
])
def test_bad_session_updates_are_errors_and_change_nothing(update: dict, param: str) -> None:
    s = session()
    before = s.session()
    [e] = sent(s.receive_text(json.dumps({"type": "session.update", "event_id": "evt_9",
                                          "session": {"type": "transcription", **update}})))
    assert e["type"] == "error" and e["error"]["param"] == param
    assert e["error"]["type"] == "invalid_request_error" and e["error"]["event_id"] == "evt_9"
    assert s.session() == before


def test_the_format_cannot_change_once_audio_came() -> None:
    s = session()
    append(s, 0.1)
    [e] = sent(s.receive_text(ev("session.update", session={
        "type": "transcription", "audio": {"input": {"format": {"type": "audio/pcma"}}}})))
    assert e["type"] == "error" and "format" in e["error"]["message"]


def test_beta_transcription_session() -> None:
    s = session(beta=True)
    [created] = sent(s.open())
    assert created["type"] == "transcription_session.created"
    [u] = sent(s.receive_text(ev("transcription_session.update", session={
        "input_audio_format": "g711_alaw",
        "input_audio_transcription": {"model": "gpt-4o-transcribe", "language": "de"},
        "turn_detection": None, "input_audio_noise_reduction": {"type": "far_field"}})))
    assert u["type"] == "transcription_session.updated"
    assert u["session"]["input_audio_format"] == "g711_alaw"
    assert u["session"]["input_audio_transcription"]["language"] == "de"
    assert u["session"]["turn_detection"] is None
    [e] = sent(s.receive_text(ev("transcription_session.update",
                                 session={"input_audio_format": "mp3"})))
    assert e["error"]["param"] == "session.input_audio_format"


# --- audio --------------------------------------------------------------------------------


def test_appends_open_the_stream_and_carry_odd_bytes() -> None:
    s = session(name="agent")
    pcm = np.arange(-100, 100, dtype="<i2").tobytes()
    out = s.receive_text(ev("input_audio_buffer.append", audio=b64(pcm[:101])))
    assert isinstance(out[0], OpenStream) and out[0].rate == 24000 and out[0].name == "agent"
    assert out[1:] == [Audio(pcm[:100])]
    assert s.receive_text(ev("input_audio_buffer.append", audio=b64(pcm[101:]))) == [
        Audio(pcm[100:])]
    assert s.frames == 200


def test_g711_appends_are_decoded() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    x = (np.sin(np.arange(800) / 5) * 20000).astype("<i2").tobytes()
    for fmt, lin2, to_lin in (("audio/pcmu", audioop.lin2ulaw, audioop.ulaw2lin),
                              ("audio/pcma", audioop.lin2alaw, audioop.alaw2lin)):
        s = session()
        s.receive_text(ev("session.update", session={
            "type": "transcription", "audio": {"input": {"format": {"type": fmt}}}}))
        coded = lin2(x, 2)
        out = s.receive_text(ev("input_audio_buffer.append", audio=b64(coded)))
        assert out[0].rate == 8000 and out[1] == Audio(to_lin(coded, 2))


def test_bad_appends() -> None:
    s = session(max_append_bytes=1000)
    for audio, word in ((None, "base64"), ("***", "base64"), (b64(bytes(2000)), "1000")):
        [e] = sent(s.receive_text(ev("input_audio_buffer.append", audio=audio)))
        assert e["type"] == "error" and e["error"]["param"] == "audio"
        assert word in e["error"]["message"]
    assert not s.opened
    [e] = sent(s.receive_bytes(b"\0\0"))
    assert e["type"] == "error"


def test_other_events_are_errors_and_the_session_goes_on() -> None:
    s = session()
    [e] = sent(s.receive_text(json.dumps({"type": "response.create", "event_id": "c1"})))
    assert e["error"]["param"] == "type" and e["error"]["event_id"] == "c1"
    [e] = sent(s.receive_text("not json"))
    assert e["error"]["code"] == "invalid_json"
    assert append(s, 0.1)  # still taking audio


# --- server VAD ---------------------------------------------------------------------------


def play(s: RealtimeSession, events: list[dict]) -> list[dict]:
    out: list[dict] = []
    for e in events:
        out += sent(s.on_event(e))
    return out


def test_server_vad_items_one_per_utterance() -> None:
    s = session()
    s.open()
    append(s, 5.0)
    msgs = play(s, two_sentences())
    kinds = [m["type"] for m in msgs]
    assert kinds == [
        "input_audio_buffer.speech_started",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.delta",
        "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
        "input_audio_buffer.speech_started",
        "conversation.item.input_audio_transcription.delta",
        "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed"]
    started = [m for m in msgs if m["type"].endswith("speech_started")]
    stopped_ = [m for m in msgs if m["type"].endswith("speech_stopped")]
    assert [m["audio_start_ms"] for m in started] == [500, 3000]
    assert [m["audio_end_ms"] for m in stopped_] == [2400, 4600]
    first, second = started[0]["item_id"], started[1]["item_id"]
    assert first != second
    committed = [m for m in msgs if m["type"] == "input_audio_buffer.committed"]
    assert [(m["item_id"], m["previous_item_id"]) for m in committed] == [
        (first, None), (second, first)]
    for item, text in ((first, "the birch canoe slid on the smooth planks"),
                       (second, "glue the sheet to the dark blue background")):
        deltas = [m["delta"] for m in msgs if m.get("item_id") == item
                  and m["type"].endswith(".delta")]
        [done] = [m for m in msgs if m.get("item_id") == item and m["type"].endswith("completed")]
        assert "".join(deltas) == done["transcript"] == text
        assert done["content_index"] == 0 and done["usage"]["type"] == "duration"
    assert [m["delta"] for m in msgs if m.get("item_id") == first
            and m["type"].endswith(".delta")] == ["the birch", " canoe",
                                                  " slid on the smooth planks"]
    assert len({m["event_id"] for m in msgs}) == len(msgs)


def test_a_final_before_the_vads_speech_end_completes_after_the_commit() -> None:
    s = session()
    append(s, 3.0)
    msgs = play(s, [speech_start(0.5), final(0, "hello there", 0.52, 1.6),
                    speech_end(0.5, 1.7)])
    assert [m["type"] for m in msgs] == [
        "input_audio_buffer.speech_started",
        "conversation.item.input_audio_transcription.delta",
        "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.completed"]
    assert msgs[-1]["transcript"] == "hello there"


def test_a_transcript_no_vad_item_covers_gets_an_item_of_its_own() -> None:
    s = session()
    append(s, 3.0)
    msgs = play(s, [interim(0, "just asr", "just", 0.4, 1.0), final(0, "just asr", 0.4, 1.2)])
    assert [m["type"] for m in msgs] == [
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.delta",
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.completed"]
    assert len({m["item_id"] for m in msgs}) == 1 and msgs[-1]["transcript"] == "just asr"


def test_a_vad_item_with_no_words_completes_empty_when_a_later_one_does() -> None:
    s = session()
    append(s, 6.0)
    msgs = play(s, [speech_start(0.5), speech_end(0.5, 0.9),  # a cough: no transcript
                    speech_start(2.0), speech_end(2.0, 3.0), final(1, "words", 2.0, 3.0)])
    items = [m["item_id"] for m in msgs if m["type"].endswith("speech_started")]
    done = [(m["item_id"], m["transcript"]) for m in msgs if m["type"].endswith("completed")]
    assert done == [(items[0], ""), (items[1], "words")]


def test_the_end_commits_and_completes_whatever_is_open() -> None:
    s = session()
    append(s, 2.0)
    msgs = play(s, [speech_start(0.5), interim(0, "cut off mid", "cut off", 0.5, 1.5),
                    stopped(48000, 24000)])
    assert [m["type"] for m in msgs][-2:] == [
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.completed"]
    assert msgs[-1]["transcript"] == "cut off"
    assert s.on_event(final(0, "late", 0.5, 1.9)) == []


# --- manual commits -----------------------------------------------------------------------


def manual() -> RealtimeSession:
    s = session()
    s.receive_text(ev("session.update", session={
        "type": "transcription", "audio": {"input": {"turn_detection": None}}}))
    return s


def test_commit_ends_the_utterance_and_completes_at_finalized() -> None:
    s = manual()
    append(s, 1.5)
    out = s.receive_text(ev("input_audio_buffer.commit"))
    assert out[0] == Finalize()
    [c] = sent(out)
    assert c["type"] == "input_audio_buffer.committed" and c["previous_item_id"] is None
    item = c["item_id"]
    msgs = play(s, [speech_start(0.3),  # VAD events: no speech_started without server VAD
                    interim(0, "turn on the", "turn on", 0.3, 1.0),
                    final(0, "turn on the light", 0.3, 1.5, finalize=True),
                    finalized(1.5, 0)])
    assert [m["type"] for m in msgs] == [
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed"]
    assert {m["item_id"] for m in msgs} == {item}
    assert msgs[-1]["transcript"] == "turn on the light"
    # the next item follows the first
    append(s, 1.0)
    [c2] = sent(s.receive_text(ev("input_audio_buffer.commit")))
    assert c2["previous_item_id"] == item
    [done] = play(s, [finalized(2.5, None)])  # nothing was said: completed empty
    assert (done["item_id"], done["transcript"]) == (c2["item_id"], "")


def test_an_empty_commit_is_an_error() -> None:
    s = manual()
    [e] = sent(s.receive_text(ev("input_audio_buffer.commit")))
    assert e["error"]["code"] == "input_audio_buffer_commit_empty"
    assert "0.00ms" in e["error"]["message"]
    append(s, 0.05)
    [e] = sent(s.receive_text(ev("input_audio_buffer.commit")))
    assert "50.00ms" in e["error"]["message"]


def test_clear_drops_the_uncommitted_transcript() -> None:
    s = manual()
    append(s, 1.0)
    out = s.receive_text(ev("input_audio_buffer.clear"))
    assert out[0] == Finalize() and sent(out)[0]["type"] == "input_audio_buffer.cleared"
    assert play(s, [final(0, "forget this", 0.2, 1.0, finalize=True), finalized(1.0, 0)]) == []
    append(s, 1.0)
    s.receive_text(ev("input_audio_buffer.commit"))
    msgs = play(s, [final(1, "keep this", 1.1, 2.0, finalize=True), finalized(2.0, 1)])
    assert msgs[-1]["transcript"] == "keep this"


def test_commit_with_server_vad_cuts_the_open_item() -> None:
    s = session()
    append(s, 2.0)
    [started] = play(s, [speech_start(0.5)])
    out = s.receive_text(ev("input_audio_buffer.commit"))
    assert out[0] == Finalize()
    [committed] = sent(out)
    assert committed["item_id"] == started["item_id"]
    msgs = play(s, [final(0, "cut here", 0.5, 2.0, finalize=True), finalized(2.0, 0),
                    speech_end(0.5, 2.3)])  # the VAD's own end of it comes later: ignored
    assert [m["type"] for m in msgs] == [
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed"]
    assert {m["item_id"] for m in msgs} == {started["item_id"]}


def test_a_stream_failure_is_an_error_and_a_close() -> None:
    s = session()
    append(s, 0.5)
    out = s.on_event({"type": "error", "code": "storage_full", "message": "disk full"})
    [e] = sent(out)
    assert e["error"] == {"type": "server_error", "code": "storage_full",
                          "message": "disk full", "param": None, "event_id": None}
    assert out[-1] == Close(1011, "storage_full")
