"""OpenAI Realtime transcription sessions through ``earshot serve``, spoken to by the real
``openai`` SDK (``client.realtime.connect(extra_query={"intent": "transcription"})``) in its
own pinned environment, sending the reading as PCM16 24 kHz in 40 ms appends: one
``speech_started``/``speech_stopped`` pair per sentence at the sentence's times, a
``completed`` transcript per sentence whose deltas join into it, the words right; with
``turn_detection: null`` the client's ``commit`` ends the item; a wrong key is refused; the
session is an ordinary archived stream whose samples are those appended."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import soxr
from clientenv import client_env

from earshot.asr.wer import wer
from helpers import FIXTURES, ServerProcess

pytestmark = pytest.mark.slow
READING = json.loads((FIXTURES / "reading_16k.json").read_text())
TOKEN = "rt-secret"


def of(events: list[dict], suffix: str) -> list[dict]:
    return [e for e in events if e["type"].endswith(suffix)]


def test_openai_realtime_transcription_through_earshot(
        server_factory: Callable[..., ServerProcess], tmp_path: Path) -> None:
    env = client_env("openai")
    server = server_factory("--token", TOKEN)
    x, _ = sf.read(FIXTURES / "reading_16k.wav", dtype="float32")
    pcm24 = (np.clip(soxr.resample(x, 16000, 24000), -1, 1) * 32767).astype("<i2")
    pcm = tmp_path / "reading24.pcm"
    pcm.write_bytes(pcm24.tobytes())
    base = {"base_url": f"{server.http}/v1", "ws_url": f"ws://127.0.0.1:{server.port}/v1",
            "api_key": TOKEN}
    # two apps at once, each its own session: the reading with server_vad; the first
    # sentence with turn_detection null, ended by the client's commit
    first = pcm24[:round(3.3 * 24000)]
    short = tmp_path / "first24.pcm"
    short.write_bytes(first.tobytes())
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(env.run, "openai_realtime_live.py", {**base, **p}, timeout=120)
                for p in ({"pcm": str(pcm), "speed": 4.0, "expect": len(READING["speech"])},
                          {"pcm": str(short), "speed": 3.0, "manual": True, "expect": 1})]
        out, manual = (r.result() for r in runs)
    events = out["events"]
    assert events[0]["type"] == "session.created" and events[1]["type"] == "session.updated"
    assert not of(events, "error")
    started, stopped = of(events, "speech_started"), of(events, "speech_stopped")
    assert len(started) == len(stopped) == len(READING["speech"])
    for a, b, truth in zip(started, stopped, READING["speech"], strict=True):
        assert a["item_id"] == b["item_id"]
        assert abs(a["audio_start_ms"] / 1000 - truth["start_s"]) <= 0.3
        assert abs(b["audio_end_ms"] / 1000 - truth["end_s"]) <= 0.3
    completed = of(events, "transcription.completed")
    assert [c["item_id"] for c in completed] == [a["item_id"] for a in started]
    for c in completed:  # the deltas of an item, joined, are its transcript
        deltas = [d["delta"] for d in of(events, "transcription.delta")
                  if d["item_id"] == c["item_id"]]
        assert "".join(deltas) == c["transcript"]
    score = wer(READING["text"], [c["transcript"] for c in completed])
    print(f"\nWER openai realtime (reading, server_vad): {score:.3f}")
    assert score <= 0.15
    assert [r["refused"] for r in out["errors"]] == [True]
    assert "401" in out["errors"][0]["text"]

    # turn_detection null: the client's commit ends the item (the first sentence)
    evs = manual["events"]
    assert not of(evs, "speech_started") and len(of(evs, "committed")) == 1
    (done,) = of(evs, "transcription.completed")
    assert wer(READING["speech"][0]["text"], done["transcript"]) <= 0.15

    headers = {"authorization": f"Bearer {TOKEN}"}
    streams = httpx.get(f"{server.http}/api/streams", headers=headers).json()["streams"]
    assert len(streams) == 2 and {s["state"] for s in streams} == {"finished"}
    assert {s["client"]["dialect"] for s in streams} == {"openai-realtime"}
    rec = next(s for s in streams if s["frames"] == len(pcm24))
    rec = httpx.get(f"{server.http}/api/streams/{rec['id']}", headers=headers).json()
    assert rec["rate"] == 24000 and rec["client"]["model"] == "gpt-4o-transcribe"
    y, rate = sf.read(server.data_dir / rec["path"], dtype="int16")
    assert rate == 24000 and np.array_equal(pcm24, y)  # exact
