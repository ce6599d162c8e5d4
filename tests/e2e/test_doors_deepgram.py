"""Deepgram's live API (``/v1/listen``) through ``earshot serve``, spoken to by the real
``deepgram-sdk`` (its async live client) in its own pinned environment, pointed at earshot
with a ``DeepgramClientEnvironment``: interim and final ``Results`` that spell the reading,
one ``SpeechStarted`` and one ``UtteranceEnd`` per sentence, ``Finalize`` mid-sentence cuts
it (``from_finalize``), ``CloseStream`` ends with ``Metadata`` of the audio sent, refused
handshakes (a wrong key, ``encoding=foo``) open no stream, and each session is an ordinary
archived stream whose samples are exactly those sent."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from clientenv import client_env

from earshot.asr.wer import wer
from helpers import FIXTURES, ServerProcess

pytestmark = pytest.mark.slow
READING = json.loads((FIXTURES / "reading_16k.json").read_text())
TOKEN = "dg-secret"


def results(messages: list[dict], final: bool) -> list[dict]:
    return [m for m in messages if m["type"] == "Results" and m["is_final"] is final]


def transcript(m: dict) -> str:
    return m["channel"]["alternatives"][0]["transcript"]


def test_deepgram_sdk_live_through_earshot(
        server_factory: Callable[..., ServerProcess], tmp_path: Path) -> None:
    env = client_env("deepgram")
    server = server_factory("--token", TOKEN)
    x, _ = sf.read(FIXTURES / "reading_16k.wav", dtype="int16")
    pcm = tmp_path / "reading.pcm"
    pcm.write_bytes(x.tobytes())
    base = {"url": f"ws://127.0.0.1:{server.port}", "http": server.http, "api_key": TOKEN,
            "pcm": str(pcm)}
    # three apps at once, each its own session: the reading; Finalize one second into the
    # first sentence (only that sentence and the pause after it are sent); two refused
    first = tmp_path / "first.pcm"
    first.write_bytes(x[:READING["speech"][1]["start"] - 1600].tobytes())
    with ThreadPoolExecutor(3) as pool:
        runs = [pool.submit(env.run, "deepgram_live.py", {**base, **p}, timeout=120) for p in (
            {"mode": "reading", "speed": 3.0},
            {"pcm": str(first), "mode": "finalize", "finalize_at": 1.8, "speed": 3.0},
            {"mode": "refused"})]
        out, fin, refusals = (r.result() for r in runs)
    msgs = out["messages"]
    finals, interims = results(msgs, True), results(msgs, False)
    score = wer(READING["text"], [transcript(f) for f in finals])
    print(f"\nWER deepgram live (reading): {score:.3f}")
    assert score <= 0.15
    assert len(finals) == len(READING["speech"]) and interims
    assert all(f["speech_final"] and not f["from_finalize"] for f in finals)
    for f, truth in zip(finals, READING["speech"], strict=True):
        assert abs(f["start"] - truth["start_s"]) <= 0.2
        words = f["channel"]["alternatives"][0]["words"]
        assert words and all(f["start"] - 0.05 <= w["start"] <= w["end"] <=
                             f["start"] + f["duration"] + 0.5 for w in words)
    started = [m for m in msgs if m["type"] == "SpeechStarted"]
    assert len(started) == len(READING["speech"])
    for s, truth in zip(started, READING["speech"], strict=True):
        assert abs(s["timestamp"] - truth["start_s"]) <= 0.3
    ends = [m for m in msgs if m["type"] == "UtteranceEnd"]
    assert len(ends) == len(READING["speech"])
    for e, truth in zip(ends, READING["speech"], strict=True):
        assert abs(e["last_word_end"] - truth["end_s"]) <= 0.3
    meta = msgs[-1]
    assert meta["type"] == "Metadata"
    assert abs(meta["duration"] - READING["frames"] / 16000) <= 0.02
    assert abs(out["sent_s"] - meta["duration"]) <= 0.02

    # Finalize one second into the first sentence: its final comes at once, from_finalize
    cut = [f for f in results(fin["messages"], True) if f["from_finalize"]]
    assert len(cut) == 1 and not cut[0]["speech_final"]
    assert abs(cut[0]["start"] + cut[0]["duration"] - 1.8) <= 0.1
    said = transcript(cut[0]).split()
    assert said and said == ["the", "weather", "today", "is", "cold", "and", "windy"][:len(said)]
    assert fin["messages"][-1]["type"] == "Metadata"

    refused = refusals["errors"]
    assert [r["refused"] for r in refused] == [True, True]
    assert "status_code: 401" in refused[0]["text"]
    assert "status_code: 400" in refused[1]["text"]

    # two sessions, two ordinary finished streams (the refused ones opened none)
    headers = {"authorization": f"Bearer {TOKEN}"}
    streams = httpx.get(f"{server.http}/api/streams", headers=headers).json()["streams"]
    assert len(streams) == 2 and {s["state"] for s in streams} == {"finished"}
    assert {s["client"]["dialect"] for s in streams} == {"deepgram"}
    rec = next(s for s in streams if s["frames"] == READING["frames"])
    rec = httpx.get(f"{server.http}/api/streams/{rec['id']}", headers=headers).json()
    assert rec["name"] == "deepgram" and rec["client"]["encoding"] == "linear16"
    assert rec["client"]["model"] == "nova-3"
    y, rate = sf.read(server.data_dir / rec["path"], dtype="int16")
    assert rate == 16000 and np.array_equal(x, y)  # exact
    tr = httpx.get(f"{server.http}/api/streams/{rec['id']}/transcript", headers=headers)
    assert tr.status_code == 200
    assert not list((server.data_dir / "streams").glob("*.wav.part*"))
