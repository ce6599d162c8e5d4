"""OpenAI's speech-to-text REST API through ``earshot serve``, called by the real ``openai``
SDK in its own pinned environment (tests/e2e/clientenv.py), pointed at earshot with
``base_url``: the words come back (WER against the fixture's script), every response
format parses, ``stream=True`` deltas join into the done text, errors come in OpenAI's
shape with the right status, and each upload is an ordinary archived stream whose samples
are the file's."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import soundfile as sf
from clientenv import client_env

from earshot.asr.wer import wer
from helpers import FIXTURES, ServerProcess, require_tool

pytestmark = pytest.mark.slow
READING = json.loads((FIXTURES / "reading_16k.json").read_text())
#: the first three sentences of the reading (cut at 9.5 s, in the pause after the third)
SHORT = READING["speech"][:3]
SHORT_S = 9.5
TOKEN = "door-secret"
LIMIT = 1 << 20

_SRT = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n(.+)")
_VTT = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n(.+)")


def cues(text: str, pattern: re.Pattern[str]) -> list[tuple[float, float, str]]:
    """A subtitle file's cues (start, end, text): every block must be one."""
    out = []
    blocks = [b for b in text.strip().split("\n\n") if b.strip()]
    if pattern is _VTT:
        assert blocks[0].startswith("WEBVTT")
        blocks = blocks[1:]
    for block in blocks:
        m = pattern.fullmatch(block.strip())
        assert m, f"not a cue: {block!r}"
        g = m.groups()
        if pattern is _SRT:
            g = g[1:]
        nums = [int(x) for x in g[:8]]
        a = nums[0] * 3600 + nums[1] * 60 + nums[2] + nums[3] / 1000
        b = nums[4] * 3600 + nums[5] * 60 + nums[6] + nums[7] / 1000
        out.append((a, b, g[8]))
    return out


def test_openai_sdk_transcribes_through_earshot(
        server_factory: Callable[..., ServerProcess], tmp_path) -> None:
    env = client_env("openai")
    ffmpeg = require_tool("ffmpeg")
    server = server_factory("--token", TOKEN, "--upload-limit", str(LIMIT))
    x, _ = sf.read(FIXTURES / "reading_16k.wav", dtype="int16")
    short = tmp_path / "short.wav"
    sf.write(short, x[:round(SHORT_S * 16000)], 16000, subtype="PCM_16")
    mp3 = tmp_path / "short.mp3"
    subprocess.run([ffmpeg, "-v", "error", "-i", str(short), "-b:a", "64k", str(mp3)],
                   check=True)
    reading = tmp_path / "reading.wav"
    reading.write_bytes((FIXTURES / "reading_16k.wav").read_bytes())
    out = env.run("openai_rest_live.py", {
        "base_url": f"{server.http}/v1", "api_key": TOKEN, "file": str(reading),
        "speech": str(short), "mp3": str(mp3), "limit": LIMIT},
        timeout=240)

    # the reading, as JSON: its words (the default engine, PocketSphinx)
    score = wer(READING["text"], out["json"]["text"])
    print(f"\nWER openai REST (reading, json): {score:.3f}")
    assert score <= 0.15
    assert out["json"]["usage"] == {"type": "duration", "seconds": 29, "input_token_details":
                                    None} or out["json"]["usage"]["seconds"] == 29
    # an MP3 of the short fixture, response_format=text
    speech_text = " ".join(s["text"] for s in SHORT)
    print(f"WER openai REST (mp3, text): {wer(speech_text, out['mp3_text']):.3f}")
    assert wer(speech_text, out["mp3_text"]) <= 0.15

    v = out["verbose"]
    duration = SHORT_S
    assert abs(v["duration"] - duration) < 0.01 and v["language"] == "english"
    assert wer(speech_text, v["text"]) <= 0.15
    assert len(v["segments"]) == len(SHORT)
    for (_i, a, b, text), truth in zip(v["segments"], SHORT, strict=True):
        assert 0 <= a < b <= duration and abs(a - truth["start_s"]) <= 0.2 and text
    words = v["words"]
    assert len(words) >= 10
    starts = [w[1] for w in words]
    assert starts == sorted(starts)
    assert all(0 <= w[1] <= w[2] <= duration for w in words)

    srt, vtt = cues(out["srt"], _SRT), cues(out["vtt"], _VTT)
    assert len(srt) == len(vtt) == len(SHORT)
    for (a, b, _), (c, d, _) in zip(srt, vtt, strict=True):
        assert abs(a - c) < 0.002 and abs(b - d) < 0.002 and a < b <= duration + 0.01

    stream = out["stream"]
    assert [e[0] for e in stream][-1] == "transcript.text.done"
    deltas = [e[1] for e in stream if e[0] == "transcript.text.delta"]
    assert len(deltas) == len(SHORT)
    assert "".join(deltas) == stream[-1][2] and wer(speech_text, stream[-1][2]) <= 0.15

    assert "whisper-1" in out["models"] and "en-us" in out["models"]

    unauthorized, not_audio, too_big, bad_format, translate = out["errors"]
    assert unauthorized["status"] == 401 and unauthorized["code"] == "invalid_api_key"
    assert unauthorized["type"] == "invalid_request_error"
    assert not_audio["status"] == 415 and not_audio["param"] == "file"
    assert too_big["status"] == 413 and too_big["code"] == "file_too_large"
    assert bad_format["status"] == 400 and bad_format["param"] == "response_format"
    assert translate["status"] == 501

    # every upload that got in is a finished stream: the reading, the mp3, 4 short wavs
    streams = httpx.get(f"{server.http}/api/streams", params={"limit": 50},
                        headers={"authorization": f"Bearer {TOKEN}"}).json()["streams"]
    assert len(streams) == 6 and {s["state"] for s in streams} == {"finished"}
    assert {s["client"]["dialect"] for s in streams} == {"openai"}
    streams = [httpx.get(f"{server.http}/api/streams/{s['id']}",  # the client info in full
                         headers={"authorization": f"Bearer {TOKEN}"}).json() for s in streams]
    rec = next(s for s in streams if s["client"]["filename"] == "reading.wav")
    assert rec["frames"] == READING["frames"] and rec["client"]["model"] == "whisper-1"
    x, _ = sf.read(FIXTURES / "reading_16k.wav", dtype="float32")
    y, rate = sf.read(server.data_dir / rec["path"], dtype="float32")
    assert rate == 16000 and np.array_equal(x, y)  # exact: the archive is the file
    # its finals are stored like any stream's
    tr = httpx.get(f"{server.http}/api/streams/{rec['id']}/transcript",
                   headers={"authorization": f"Bearer {TOKEN}"})
    assert tr.status_code == 200
