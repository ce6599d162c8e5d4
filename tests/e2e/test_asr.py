"""Live speech-to-text through the real server: the tiny Whisper model made offline, a
deliberately slow engine double, and a server with speech-to-text off."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import soundfile as sf
from test_processors import TESTS_ENV, TRUTH, of, stream_file

from helpers import FIXTURES, ROOT, ServerProcess

pytestmark = pytest.mark.slow
TINY = FIXTURES / "tiny-whisper"


def transcripts_by_segment(events: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for e in of(events, "transcript"):
        out.setdefault(e["segment"], []).append(e)
    return out


async def test_tiny_model_interims_then_one_final_per_utterance(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--asr-model", str(TINY), "--asr-language", "en")
    health = httpx.get(f"{server.http}/healthz").json()
    assert health["asr"]["available"] and "asr" in health["processors"]
    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="int16")
    pub, events, _ = await stream_file(server.url, x, rate, processors=["asr", "vad"],
                                       realtime=True, block_s=0.05)
    segs = of(events, "segment")
    by_seg = transcripts_by_segment(events)
    assert sorted(by_seg) == [0, 1, 2] and len(segs) == 3
    # interims came first (on a loaded machine, one still waiting when its final is due is
    # dropped as stale: not every utterance need have one)
    assert sum([e["final"] for e in evs].count(False) >= 1 for evs in by_seg.values()) >= 1
    for n, evs in by_seg.items():
        kinds = [e["final"] for e in evs]
        assert kinds[-1] is True and kinds.count(True) == 1, kinds  # exactly one final, last
        truth = TRUTH[n]
        final = evs[-1]
        assert abs(final["start"] - truth["start_s"]) <= 0.15
        assert abs(final["end"] - truth["end_s"]) <= 0.15
        for e in evs:
            # an interim covers the audio so far: it may run on until the VAD decides the
            # utterance is over (min silence 0.3 s, plus one 0.1 s batch)
            slack = 1e-3 if e["final"] else 0.4 + 1e-3
            assert final["start"] - 1e-3 <= e["start"] <= e["end"] <= final["end"] + slack
            for w in e["words"]:
                assert e["start"] - 0.05 <= w["start"] <= w["end"] <= e["end"] + 0.05
            if not e["final"]:
                assert e["text"].startswith(e["stable"]) or not e["stable"]
    # stored, and exported in every format
    base = f"{server.http}/api/streams/{pub.stream_id}/transcript"
    stored = httpx.get(base).json()
    assert [t["segment"] for t in stored] == [0, 1, 2]
    assert [t["text"] for t in stored] == [by_seg[n][-1]["text"] for n in range(3)]
    srt = httpx.get(base, params={"format": "srt"})
    assert srt.headers["content-type"].startswith("application/x-subrip")
    cues = re.findall(r"(\d+)\n(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)\n", srt.text)
    assert [c[0] for c in cues] == ["1", "2", "3"]
    vtt = httpx.get(base, params={"format": "vtt"}).text
    assert vtt.startswith("WEBVTT")
    assert len(re.findall(r"\d\d:\d\d:\d\d\.\d\d\d --> \d\d:\d\d:\d\d\.\d\d\d", vtt)) == 3
    txt = httpx.get(base, params={"format": "txt"}).text
    assert len(txt.strip().splitlines()) == 3
    assert httpx.get(base, params={"format": "doc"}).status_code == 422


async def test_slow_engine_never_delays_levels_or_vad_and_every_final_arrives(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--asr-model", "1.2", "--asr-engine", "testprocs:SlowEngine",
                            "--asr-workers", "1", "--drain-timeout", "30", env=TESTS_ENV)
    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="int16")
    noise = (np.random.default_rng(8).standard_normal(len(x)) * 2000).astype("<i2")
    (pub, events, arrived), (pub2, other, other_arrived) = await asyncio.gather(
        stream_file(server.url, x, rate, realtime=True, processors=[
            {"name": "asr", "options": {"lag_warning": 0.5}}, "vad", "level"]),
        stream_file(server.url, noise, rate, processors=["level"], realtime=True))
    t0 = pub.t0  # type: ignore[attr-defined]
    # each stream's delays from its own start (the two starts need not finish together)
    for evs, at, start in ((events, arrived, t0), (other, other_arrived, pub2.t0)):  # type: ignore[attr-defined]
        delays = [a - (start + e["t"] + 0.05) for e, a in zip(evs, at, strict=True)
                  if e["type"] == "level"]
        assert len(delays) == 190 and np.percentile(delays, 90) < 0.5
    for e, a in zip(events, arrived, strict=True):
        if e["type"] == "speech_end":
            assert a - (t0 + e["end"]) < 0.35 + 0.5  # min silence + batching, not the engine
    by_seg = transcripts_by_segment(events)
    assert sorted(by_seg) == [0, 1, 2]
    for evs in by_seg.values():
        assert [e["final"] for e in evs].count(True) == 1 and evs[-1]["final"]
    for n, evs in by_seg.items():
        # one decode takes 1.2 s, an interim is due every 0.5 s: the ones that went stale
        # while the engine was busy were skipped, not queued behind it
        speech = TRUTH[n]["end_s"] - TRUTH[n]["start_s"]
        assert len(evs) - 1 <= speech / 1.2 + 2, [e["end"] for e in evs]
    assert any(e["type"] == "lag" and e.get("processor") == "asr" for e in events)
    metrics = httpx.get(f"{server.http}/metrics").text
    skipped = re.search(r"^earshot_asr_skipped_interims_total (\S+)$", metrics, re.M)
    assert skipped and float(skipped.group(1)) > 0
    assert 'earshot_asr_inference_seconds_count{kind="final"} 3.0' in metrics


async def test_with_speech_to_text_off_asr_is_refused_clearly_and_the_rest_works(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--asr-engine", "none")
    health = httpx.get(f"{server.http}/healthz").json()
    assert health["asr"]["available"] is False
    assert "--asr-engine none" in health["asr"]["reason"]
    x = (np.random.default_rng(9).standard_normal(16000) * 3000).astype("<i2")
    _, events, _ = await stream_file(server.url, x, 16000,
                                     processors=["asr", "level"], realtime=False)
    warn = [e for e in of(events, "warning") if e["code"] == "processor_unavailable"]
    assert len(warn) == 1 and "turned off" in warn[0]["message"]
    assert of(events, "ready")[0]["processors"] == ["level"]
    assert len(of(events, "level")) == 20 and of(events, "stopped")[0]["offset"] == 16000


def test_bad_model_path_fails_at_start(tmp_path: object) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "earshot.cli", "serve", "--port", "1",
                          "--data-dir", str(tmp_path), "--asr-model", "/nonexistent/model"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2 and "speech-to-text model" in out.stderr
    assert "Traceback" not in out.stderr
