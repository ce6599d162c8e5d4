"""OpenAI's /v1/audio/transcriptions, pure: the form, the upload check, every response
format, the SSE stream and the error shape."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from door_events import final
from earshot.integrations.common import DoorError
from earshot.integrations.openai_rest import (
    TranscriptionRequest,
    TranscriptStream,
    check_upload,
    error_body,
    error_response,
    models_body,
    parse_transcription_form,
    render,
    resolve_model,
    sniff_audio,
    translation_unsupported,
    unauthorized,
)

FINALS = [final(0, "The birch canoe slid on the smooth planks.", 0.52, 2.9),
          final(1, "Glue the sheet to the dark blue background.", 3.6, 6.1)]
TEXT = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."


def form(**fields: str) -> list[tuple[str, str]]:
    return list(fields.items())


def test_the_sdks_form_fields() -> None:
    fields = [("model", "whisper-1"), ("language", "en"), ("prompt", "Festival voices"),
              ("response_format", "verbose_json"), ("temperature", "0.2"),
              ("timestamp_granularities[]", "word"), ("timestamp_granularities[]", "segment"),
              ("stream", "false"), ("chunking_strategy", "auto"), ("include[]", "logprobs")]
    assert parse_transcription_form(fields) == TranscriptionRequest(
        model="whisper-1", response_format="verbose_json", language="en",
        prompt="Festival voices", temperature=0.2, timestamp_granularities=("word", "segment"),
        stream=False)


def test_defaults_unbracketed_granularities_and_stream() -> None:
    r = parse_transcription_form(form(model="gpt-4o-transcribe"))
    assert (r.response_format, r.language, r.prompt, r.temperature, r.stream) == (
        "json", None, None, 0.0, False)
    r = parse_transcription_form([("model", "x"), ("timestamp_granularities", "word,segment"),
                                  ("timestamp_granularities", "word"), ("stream", "true")])
    assert r.timestamp_granularities == ("word", "segment") and r.stream


@pytest.mark.parametrize("fields, param, code", [
    ([], "model", "missing_required_parameter"),
    ([("model", " ")], "model", "missing_required_parameter"),
    ([("model", "m"), ("response_format", "xml")], "response_format", "invalid_value"),
    ([("model", "m"), ("response_format", "diarized_json")], "response_format",
     "invalid_value"),
    ([("model", "m"), ("timestamp_granularities[]", "char")], "timestamp_granularities",
     "invalid_value"),
    ([("model", "m"), ("language", "english!")], "language", "invalid_value"),
    ([("model", "m"), ("temperature", "2")], "temperature", "invalid_value"),
    ([("model", "m"), ("temperature", "warm")], "temperature", "invalid_value"),
    ([("model", "m"), ("temperature", "nan")], "temperature", "invalid_value"),
    ([("model", "m"), ("stream", "maybe")], "stream", "invalid_value"),
    ([("model", "m"), ("prompt", "x" * 10_001)], "prompt", "invalid_value"),
])
def test_bad_forms_are_400_with_the_param(fields: list, param: str, code: str) -> None:
    with pytest.raises(DoorError) as info:
        parse_transcription_form(fields)
    assert (info.value.status, info.value.param, info.value.code) == (400, param, code)
    body = error_body(info.value)
    assert body == {"error": {"message": info.value.message, "type": "invalid_request_error",
                              "param": param, "code": code}}


def test_a_form_without_file() -> None:
    with pytest.raises(DoorError) as info:
        parse_transcription_form(form(model="m"), has_file=False)
    assert (info.value.status, info.value.param) == (400, "file")


def test_response_format_error_names_the_supported_values() -> None:
    with pytest.raises(DoorError) as info:
        parse_transcription_form(form(model="m", response_format="xml"))
    assert info.value.message == ("Invalid value: 'xml'. Supported values are: 'json', "
                                  "'text', 'srt', 'verbose_json', 'vtt'.")


def test_uploads_are_sniffed_from_their_bytes(tmp_path: Path) -> None:
    fixture = Path(__file__).parents[1] / "fixtures" / "reading_16k.wav"
    assert sniff_audio(fixture.read_bytes()[:64]) == "wav"
    cases = {b"fLaC\0\0\0\x22": "flac", b"OggS\0\x02": "ogg", b"\x1a\x45\xdf\xa3\x9f": "webm",
             b"\0\0\0\x20ftypM4A ": "mp4", b"FORM\0\0\0\0AIFF": "aiff", b"ID3\x04\0": "mp3",
             b"\xff\xfb\x90\x64": "mp3", b"\xff\xf3\x88\xc4": "mp3", b"\xff\xf1\x50\x80": "aac"}
    for head, kind in cases.items():
        assert sniff_audio(head) == kind, head
    for head in (b"%PDF-1.4", b"<html>", b"PK\x03\x04", b"", b"\xff", b"\xff\xe0\0\0",
                 b"RIFF\0\0\0\0AVI "):
        assert sniff_audio(head) is None, head


def test_check_upload_413_and_415() -> None:
    assert check_upload(b"OggS\0", 1000) == "ogg"
    with pytest.raises(DoorError) as info:
        check_upload(b"%PDF-1.4", 1000)
    assert (info.value.status, info.value.code, info.value.param) == (
        415, "unsupported_file_format", "file")
    assert "mp3" in info.value.message and "wav" in info.value.message
    with pytest.raises(DoorError) as info:
        check_upload(b"OggS\0", 26 * 1024 * 1024)
    assert info.value.status == 413
    assert info.value.message == ("Maximum content size limit (26214400) exceeded "
                                  "(27262976 bytes read).")
    status, headers, body = error_response(info.value)
    assert status == 413 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "file_too_large"


def test_errors_401_and_501() -> None:
    assert unauthorized(False).status == unauthorized(True).status == 401
    assert "Bearer" in unauthorized(False).message
    assert error_body(unauthorized(True))["error"]["code"] == "invalid_api_key"
    e = translation_unsupported("pocketsphinx")
    assert e.status == 501 and "pocketsphinx" in e.message
    assert error_body(e)["error"]["type"] == "invalid_request_error"


def req(**kw: object) -> TranscriptionRequest:
    return TranscriptionRequest(model="whisper-1", **kw)  # type: ignore[arg-type]


def test_json_and_text() -> None:
    ctype, body = render(req(), FINALS, duration=7.3)
    assert ctype == "application/json"
    assert json.loads(body) == {"text": TEXT, "usage": {"type": "duration", "seconds": 8}}
    ctype, body = render(req(response_format="text"), FINALS, duration=7.3)
    assert ctype.startswith("text/plain") and body == TEXT + "\n"
    # nothing said
    assert json.loads(render(req(), [], duration=1.0)[1])["text"] == ""


def test_srt_and_vtt() -> None:
    _, srt = render(req(response_format="srt"), FINALS, duration=7.3)
    assert srt == ("1\n00:00:00,520 --> 00:00:02,900\n"
                   "The birch canoe slid on the smooth planks.\n\n"
                   "2\n00:00:03,600 --> 00:00:06,100\n"
                   "Glue the sheet to the dark blue background.\n\n")
    _, vtt = render(req(response_format="vtt"), FINALS, duration=7.3)
    assert vtt.startswith("WEBVTT\n\n00:00:00.520 --> 00:00:02.900\nThe birch")


def test_verbose_json_segments_and_words() -> None:
    _, body = render(req(response_format="verbose_json",
                         timestamp_granularities=("word", "segment")), FINALS, duration=7.3)
    v = json.loads(body)
    assert (v["task"], v["language"], v["duration"], v["text"]) == (
        "transcribe", "english", 7.3, TEXT)
    assert [s["id"] for s in v["segments"]] == [0, 1]
    s0 = v["segments"][0]
    assert (s0["start"], s0["end"], s0["seek"], s0["text"]) == (
        0.52, 2.9, 52, "The birch canoe slid on the smooth planks.")
    assert s0["avg_logprob"] == pytest.approx(math.log(0.9), abs=1e-4)
    assert s0["tokens"] == [] and s0["no_speech_prob"] == 0.0 and s0["compression_ratio"] > 0
    words = v["words"]
    assert [w["word"] for w in words] == TEXT.split()
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and starts[0] >= 0.52 and words[-1]["end"] <= 6.1
    # words only: no segments; neither: segments (OpenAI's default)
    v = json.loads(render(req(response_format="verbose_json", timestamp_granularities=("word",)),
                          FINALS, duration=7.3)[1])
    assert "segments" not in v and len(v["words"]) == 16
    v = json.loads(render(req(response_format="verbose_json", language="de"), FINALS,
                          duration=7.3)[1])
    assert "words" not in v and len(v["segments"]) == 2 and v["language"] == "german"


def test_the_stream_deltas_join_into_the_done_text() -> None:
    s = TranscriptStream()
    chunks = [s.on_final(f) for f in [FINALS[0], final(2, "  ", 7.0, 7.1), FINALS[1]]]
    assert chunks[1] == b""
    events = [json.loads(c.decode()[len("data: "):]) for c in (*chunks, s.done()) if c]
    assert [e["type"] for e in events] == ["transcript.text.delta", "transcript.text.delta",
                                           "transcript.text.done"]
    assert "".join(e["delta"] for e in events[:2]) == events[2]["text"] == TEXT
    assert all(c.endswith(b"\n\n") and c.startswith(b"data: ") for c in chunks if c)
    err = s.error(DoorError("asr_failed", "the engine failed", status=500))
    assert json.loads(err.decode()[6:])["error"]["type"] == "server_error"


def test_models() -> None:
    assert resolve_model("small.en", ["small.en"], "small.en") == "small.en"
    assert resolve_model("whisper-1", ["small.en"], "small.en") == "small.en"
    body = models_body(["en-us"], 1700000000)
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]][:2] == ["en-us", "whisper-1"]
    assert body["data"][0] == {"id": "en-us", "object": "model", "created": 1700000000,
                               "owned_by": "earshot"}
