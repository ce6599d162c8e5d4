"""The doors' cores against the real client packages, each in its own pinned environment
(tests/e2e/clientenv.py): what the cores write, the packages must read — with their own
readers, parsers and strict models — and what the packages write, the cores must read.

No server here (the glue comes with the new ingest layer); the end-to-end tests through
``earshot serve`` will reuse these environments.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pytest
from clientenv import client_env

from door_events import final, finalized, stopped, two_sentences
from earshot.integrations.common import Audio, DoorError, Finalize, OpenStream, Send, Stop
from earshot.integrations.deepgram import (
    DeepgramLive,
    ModelInfo,
    credentials,
    handshake,
    parse_listen_query,
)
from earshot.integrations.openai_realtime import RealtimeSession, counting_ids
from earshot.integrations.openai_realtime import handshake as realtime_handshake
from earshot.integrations.openai_rest import (
    TranscriptionRequest,
    TranscriptStream,
    check_upload,
    error_response,
    models_body,
    parse_transcription_form,
    render,
    too_large,
    translation_unsupported,
    unauthorized,
)
from earshot.integrations.wyoming import (
    AsrModelInfo,
    WyomingEvent,
    WyomingInfo,
    WyomingReader,
    WyomingSession,
    encode_event,
)

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parents[1] / "fixtures"


def sends(actions: list) -> list:
    return [a.data for a in actions if isinstance(a, Send)]


# --- Wyoming ------------------------------------------------------------------------------


def test_wyoming_package_reads_earshots_frames_and_earshot_reads_the_packages() -> None:
    env = client_env("wyoming")
    info = WyomingInfo(models=(AsrModelInfo("en-us", ("en",), description="pocketsphinx"),),
                       version="0.1.0")
    s = WyomingSession(info)
    frames = b"".join(sends(s.receive(WyomingEvent("describe"))))
    frames += b"".join(sends(s.receive(WyomingEvent("ping", {"text": "x"}))))
    s.receive(WyomingEvent("transcribe", {"language": "en"}))
    s.receive(WyomingEvent("audio-start", {"rate": 16000, "width": 2, "channels": 1}))
    for ev in two_sentences():
        frames += b"".join(sends(s.on_event(ev)))
    s.receive(WyomingEvent("audio-stop"))
    frames += b"".join(sends(s.on_event(stopped(16000 * 5, 16000))))
    frames += encode_event("error", {"text": "payload_length 9999999 is beyond the limit",
                                     "code": "payload_too_large"})
    out = env.run("wyoming_check.py", {"server": base64.b64encode(frames).decode()})

    assert out["sync"] == out["async"]  # Home Assistant reads with the async reader
    got = out["sync"]
    assert got[0] == {"type": "info", "name": "earshot", "version": "0.1.0", "streaming": True,
                      "models": [{"name": "en-us", "languages": ["en"], "installed": True}],
                      "attribution": "earshot"}
    assert got[1] == {"type": "pong", "text": "x"}
    kinds = [g["type"] for g in got[2:]]
    assert kinds[0] == "transcript-start" and kinds[-3:] == ["transcript", "transcript-stop",
                                                            "error"]
    chunks = [g["text"] for g in got if g["type"] == "transcript-chunk"]
    [transcript] = [g for g in got if g["type"] == "transcript"]
    assert "".join(chunks) == transcript["text"] == (
        "the birch canoe slid on the smooth planks glue the sheet to the dark blue background")
    assert transcript["language"] == "en"
    assert got[-1] == {"type": "error", "text": "payload_length 9999999 is beyond the limit",
                       "code": "payload_too_large"}

    # what the package writes (sync and async alike), earshot reads
    for key in ("client_sync", "client_async"):
        raw = base64.b64decode(out[key])
        events = WyomingReader().feed(raw)
        assert [e.type for e in events] == ["describe", "transcribe", "audio-start",
                                            "audio-chunk", "audio-chunk", "audio-stop"]
        session = WyomingSession(info)
        actions = [a for e in events for a in session.receive(e)]
        opened = [a for a in actions if isinstance(a, OpenStream)]
        assert opened == [OpenStream("s16", 16000, 1, processors=("vad", "asr"),
                                     language="en",
                                     client={"dialect": "wyoming", "model": "earshot"})]
        audio = b"".join(a.data for a in actions if isinstance(a, Audio))
        assert audio == bytes(range(256)) * 10
        assert actions[-2:] == [Finalize(), Stop()]


# --- Deepgram -----------------------------------------------------------------------------


def test_deepgram_sdk_parses_every_message_earshot_sends() -> None:
    env = client_env("deepgram")
    rid = "6f1c1c0e-3b7e-4bd6-9c85-3c1b5e3f9a10"
    s = DeepgramLive(parse_listen_query([
        ("encoding", "linear16"), ("sample_rate", "16000"), ("interim_results", "true"),
        ("vad_events", "true"), ("utterance_end_ms", "500"), ("punctuate", "true")]),
        request_id=rid, created="2026-05-01T12:00:00.000Z", now=0.0,
        model=ModelInfo("small.en", "faster-whisper", "whisper"))
    messages: list[str] = []
    now = 0.0
    for ev in two_sentences():
        t = float(ev.get("end", ev.get("t", 0.0))) + 0.3
        while s.seconds < t:
            now += 0.1
            messages += sends(s.receive_bytes(bytes(3200), now))
        messages += sends(s.on_event(ev))
    messages += sends(s.receive_text('{"type": "Finalize"}', now))
    messages += sends(s.on_event(final(2, "And this, finally.", 5.2, 5.9, finalize=True)))
    messages += sends(s.receive_text('{"type": "Configure", "keyterms": ["x"]}', now))
    messages += sends(s.receive_text("not json", now))
    messages += sends(s.receive_text('{"type": "CloseStream"}', now))
    messages += sends(s.on_event(stopped(16000 * 6, 16000)))
    kinds = [json.loads(m)["type"] for m in messages]
    assert {"Results", "SpeechStarted", "UtteranceEnd", "Metadata", "ConfigureFailure",
            "Error"} <= set(kinds)

    out = env.run("deepgram_check.py", {"messages": messages})
    # every message: parsed by the SDK's socket client into its own type...
    assert [p["class"] for p in out["parsed"]] == [
        {"Results": "ListenV1Results", "SpeechStarted": "ListenV1SpeechStarted",
         "UtteranceEnd": "ListenV1UtteranceEnd", "Metadata": "ListenV1Metadata",
         "ConfigureFailure": "ListenV1ConfigureFailure", "Error": "ListenV1Error"}[k]
        for k in kinds]
    # ...and valid for its strict model, field for field
    for message, checked in zip(messages, out["strict"], strict=True):
        assert checked["model"] is not None
        sent = json.loads(message)
        for key, value in checked["dump"].items():
            assert sent[key] == value, (key, sent)
    finals = [p["data"] for p in out["parsed"] if p["class"] == "ListenV1Results"
              and p["data"]["is_final"]]
    assert [f["channel"]["alternatives"][0]["transcript"] for f in finals] == [
        "the birch canoe slid on the smooth planks",
        "glue the sheet to the dark blue background", "And this, finally."]
    assert finals[-1]["from_finalize"] is True and finals[0]["speech_final"] is True
    words = finals[0]["channel"]["alternatives"][0]["words"]
    assert words[0]["word"] == "the" and words[0]["punctuated_word"] == "the"
    meta = next(p["data"] for p in out["parsed"] if p["class"] == "ListenV1Metadata")
    assert meta["request_id"] == rid and meta["duration"] == pytest.approx(s.seconds)

    # what the SDK sent, earshot's core reads: the URL's query and the key...
    url = urlsplit(out["url"])
    assert (url.scheme, url.netloc, url.path) == ("ws", "earshot.local:8000", "/v1/listen")
    h = handshake(parse_qsl(url.query), out["headers"])
    assert h.error is None and h.token == "earshot-token"
    assert h.options is not None and h.options.interim_results and h.options.vad_events
    assert (h.options.endpointing_ms, h.options.utterance_end_ms, h.options.language) == (
        300, 1000, "en-US")
    assert h.options.model == "nova-3" and h.ignored == ()
    assert credentials(out["headers"]) == ("earshot-token", None)
    # ...and its audio and control messages
    live = DeepgramLive(h.options, request_id=rid, created="x", now=0.0)
    actions: list = []
    for item in out["sent"]:
        if "binary" in item:
            actions += live.receive_bytes(bytes(item["binary"]), 0.1)
        else:
            actions += live.receive_text(item["text"], 0.2)
    assert [type(a).__name__ for a in actions] == ["OpenStream", "Audio", "Finalize", "Stop"]
    assert actions[1] == Audio(bytes(3200))


# --- OpenAI -------------------------------------------------------------------------------


def multipart_fields(content_type: str, body: bytes) -> tuple[list[tuple[str, str]],
                                                              bytes | None]:
    """A multipart/form-data body's text fields and file, read by the stdlib's parser."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    fields, file = [], None
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            file = part.get_payload(decode=True)
        else:
            fields.append((str(name), part.get_payload(decode=True).decode()))
    return fields, file


def test_openai_sdk_reads_earshots_answers_and_earshot_reads_the_sdks_requests() -> None:
    env = client_env("openai")
    wav = (FIXTURES / "reading_16k.wav").read_bytes()
    finals = [final(0, "The birch canoe slid on the smooth planks.", 0.52, 2.9),
              final(1, "Glue the sheet to the dark blue background.", 3.6, 6.1)]
    text = " ".join(f["text"] for f in finals)

    def ok(fmt: str, **kw: object) -> dict:
        ctype, body = render(TranscriptionRequest(model="whisper-1", response_format=fmt,
                                                  **kw), finals, duration=28.4)  # type: ignore
        return {"status": 200, "content_type": ctype, "body": body}

    stream = TranscriptStream()
    sse = b"".join([stream.on_final(f) for f in finals] + [stream.done()]).decode()

    def err(exc: DoorError) -> dict:
        status, headers, body = error_response(exc)
        return {"status": status, "content_type": headers["content-type"],
                "body": body.decode()}

    rest = [ok("json"), ok("verbose_json", timestamp_granularities=("word", "segment")),
            ok("srt"), ok("vtt"), ok("text"),
            {"status": 200, "content_type": stream.content_type, "body": sse},
            {"status": 200, "content_type": "application/json",
             "body": json.dumps(models_body(["en-us"], 1700000000))},
            err(unauthorized(True)), err(too_large(25 * 1024 * 1024, 30_000_000)),
            err(check_error()), err(parse_error()), err(translation_unsupported("x"))]

    # Realtime: the server events earshot's core makes for the reading's two sentences
    rt = RealtimeSession(session_id="sess_e2e", created=1_750_000_000, model="small.en",
                         ids=counting_ids())
    events = sends(rt.open())
    pcm24 = (np.sin(np.arange(24000) / 7) * 3000).astype("<i2").tobytes()
    rt.receive_text(json.dumps({"type": "input_audio_buffer.append",
                                "audio": base64.b64encode(pcm24 * 5).decode()}))
    for ev in two_sentences():
        events += sends(rt.on_event(ev))
    more = sends(rt.receive_text(json.dumps({"type": "session.update", "session": {
        "type": "transcription", "audio": {"input": {"turn_detection": None}}}})))
    more += sends(rt.receive_text('{"type": "input_audio_buffer.clear"}'))
    more += sends(rt.receive_text('{"type": "response.create", "event_id": "c9"}'))

    out = env.run("openai_check.py", {
        "wav": base64.b64encode(wav).decode(), "rest": rest, "realtime": events,
        "realtime_more": more, "audio": base64.b64encode(pcm24).decode()}, timeout=180)

    r = out["rest"]
    assert r[0] == {"kind": "Transcription", "text": text,
                    "usage": {"type": "duration", "seconds": 29.0}}
    assert r[1]["kind"] == "TranscriptionVerbose" and r[1]["text"] == text
    assert r[1]["segments"] == [[0, 0.52, 2.9, finals[0]["text"]],
                                [1, 3.6, 6.1, finals[1]["text"]]]
    assert [w[0] for w in r[1]["words"]] == text.split() and r[1]["language"] == "english"
    assert r[2]["value"].startswith("1\n00:00:00,520 --> 00:00:02,900\nThe birch")
    assert r[3]["value"].startswith("WEBVTT\n\n00:00:00.520 --> 00:00:02.900\n")
    assert r[4]["value"] == text + "\n"
    stream_events = r[5]["events"]
    assert [e[0] for e in stream_events] == ["transcript.text.delta"] * 2 + [
        "transcript.text.done"]
    assert "".join(e[1] for e in stream_events[:2]) == stream_events[2][2] == text
    assert r[6] == {"kind": "models", "ids": ["en-us", "whisper-1", "gpt-4o-transcribe",
                                              "gpt-4o-mini-transcribe", "gpt-transcribe",
                                              "gpt-live-transcribe"]}
    assert (r[7]["kind"], r[7]["status"], r[7]["code"]) == (
        "AuthenticationError", 401, "invalid_api_key")
    assert (r[8]["status"], r[8]["code"], r[8]["param"]) == (413, "file_too_large", "file")
    assert (r[9]["status"], r[9]["code"]) == (415, "unsupported_file_format")
    assert (r[10]["kind"], r[10]["status"], r[10]["param"]) == (
        "BadRequestError", 400, "response_format")
    assert (r[11]["status"], r[11]["code"]) == (501, "not_implemented")

    # the SDK's requests, read by earshot's core
    reqs = out["requests"]
    assert [q["path"] for q in reqs] == ["/v1/audio/transcriptions"] * 6 + ["/v1/models"] + [
        "/v1/audio/transcriptions"] * 4 + ["/v1/audio/translations"]
    assert all(q["authorization"] == "Bearer earshot-token" for q in reqs)
    parsed = []
    for q in reqs[:6]:
        fields, file = multipart_fields(q["content_type"], base64.b64decode(q["body"]))
        assert file == wav and check_upload(file[:64], len(file)) == "wav"
        parsed.append(parse_transcription_form(fields))
    assert parsed[0] == TranscriptionRequest(model="whisper-1")
    assert parsed[1] == TranscriptionRequest(
        model="whisper-1", response_format="verbose_json", language="en",
        timestamp_granularities=("word", "segment"))
    assert [p.response_format for p in parsed[2:5]] == ["srt", "vtt", "text"]
    assert parsed[5].stream and parsed[5].model == "gpt-4o-transcribe"

    # Realtime: the handshake, what the SDK got, and what it sent
    rt_out = out["realtime"]
    path = urlsplit(rt_out["path"])
    assert path.path == "/v1/realtime"
    hs = realtime_handshake(dict(parse_qsl(path.query)), rt_out["headers"])
    assert hs.error is None and hs.token == "earshot-token" and not hs.beta
    got = rt_out["received"]
    assert [g["type"] for g in got] == [json.loads(e)["type"] for e in events]
    assert got[0]["class"] == "SessionCreatedEvent"
    completed = [g for g in got if g["type"].endswith("transcription.completed")]
    assert [c["transcript"] for c in completed] == [
        "the birch canoe slid on the smooth planks",
        "glue the sheet to the dark blue background"]
    started = [g for g in got if g["type"].endswith("speech_started")]
    assert [s["audio_start_ms"] for s in started] == [500, 3000]
    for check in out["strict"]:  # every GA server event valid for its strict model
        assert check["model"] is not None, check
    assert {c["type"] for c in out["strict"]} >= {
        "session.created", "session.updated", "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
        "input_audio_buffer.cleared", "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed", "error"}

    session = RealtimeSession(session_id="sess_2", created=0, ids=counting_ids())
    actions: list = []
    for event in rt_out["client"]:
        actions += session.receive_text(json.dumps(event))
    kinds = [type(a).__name__ for a in actions]
    assert kinds[0] == "Send" and json.loads(actions[0].data)["type"] == "session.updated"
    assert session.config.model == "gpt-4o-transcribe" and session.config.language == "en"
    [opened] = [a for a in actions if isinstance(a, OpenStream)]
    assert (opened.format, opened.rate, opened.channels, opened.language) == (
        "s16", 24000, 1, "en")
    assert b"".join(a.data for a in actions if isinstance(a, Audio)) == pcm24
    assert isinstance(actions[-2], Finalize)
    assert json.loads(actions[-1].data)["type"] == "input_audio_buffer.committed"
    events_after = sends(session.on_event(final(0, "done", 0.1, 0.9, finalize=True)))
    events_after += sends(session.on_event(finalized(0.9, 0)))
    assert json.loads(events_after[-1])["transcript"] == "done"


def check_error() -> DoorError:
    """The core's own 415 for a PDF upload."""
    with pytest.raises(DoorError) as info:
        check_upload(b"%PDF-1.4", 100)
    return info.value


def parse_error() -> DoorError:
    """The core's own 400 for an unknown response format."""
    with pytest.raises(DoorError) as info:
        parse_transcription_form([("model", "whisper-1"), ("response_format", "xml")])
    return info.value


def test_client_envs_are_cached_by_their_pins_and_hold_only_the_client() -> None:
    a, b = client_env("wyoming"), client_env("wyoming")
    assert a.path == b.path and (a.path / "earshot-pins.json").exists()
    assert json.loads((a.path / "earshot-pins.json").read_text()) == ["wyoming==1.10.2"]
    found = a.run("import json, importlib.metadata as m, importlib.util as u\n"
                  "print(json.dumps([m.version('wyoming'), u.find_spec('earshot') is None]))")
    assert found == ["1.10.2", True]
