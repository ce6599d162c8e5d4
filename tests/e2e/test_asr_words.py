"""Real words through the real server with the default engine (PocketSphinx, no options).

The fixture (tests/fixtures/reading_16k.wav, made by make_reading.sh with Festival's HTS
voice) is nine English sentences with pauses; its known text is in reading_16k.json.
Streamed in real time with ``["vad", "asr"]``, the finals must spell it out (word error
rate at most 0.15, and no worse than the same engine on the whole file offline + 0.05),
interims must precede finals with a stable prefix that only grows and that the final keeps,
and the end of speech → final latency is measured (asserted loosely: the machine is shared).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from test_processors import of, stream_file

from earshot.asr.engine import EngineConfig, load_engine
from earshot.asr.wer import wer, words
from helpers import FIXTURES, ROOT, ServerProcess, free_port

pytestmark = pytest.mark.slow
READING = json.loads((FIXTURES / "reading_16k.json").read_text())
TRUTH = READING["speech"]


def offline_wer() -> float:
    """The default engine on the whole file as one utterance, outside the server."""
    x, _ = sf.read(FIXTURES / "reading_16k.wav", dtype="float32")
    engine = load_engine(EngineConfig(model="en-us"), "pocketsphinx")
    try:
        return wer(READING["text"], engine.transcribe(x, final=True).text)
    finally:
        engine.close()  # type: ignore[attr-defined]


@pytest.mark.timeout(300)
async def test_default_engine_transcribes_real_words_streaming(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory()  # no speech-to-text options at all
    health = httpx.get(f"{server.http}/healthz").json()
    assert health["asr"]["available"] is True
    assert health["asr"]["engine"] == "pocketsphinx" and health["asr"]["model"] == "en-us"
    assert health["asr"]["default"] is True and health["asr"]["incremental"] is True
    assert "small.en" in health["asr"]["hint"]

    x, rate = sf.read(FIXTURES / "reading_16k.wav", dtype="int16")
    pub, events, arrived = await stream_file(
        server.url, x, rate, processors=["vad", "asr"], realtime=True, block_s=0.02,
        language="en-US")
    assert of(events, "ready")[0]["processors"] == ["vad", "asr"]
    assert not [e for e in events if e["type"] in ("error", "warning")]
    t0 = pub.t0  # type: ignore[attr-defined]

    transcripts = [(e, a) for e, a in zip(events, arrived, strict=True)
                   if e["type"] == "transcript"]
    finals = [e for e, _ in transcripts if e["final"]]
    assert [f["segment"] for f in finals] == list(range(len(TRUTH)))
    for f, truth in zip(finals, TRUTH, strict=True):
        assert abs(f["start"] - truth["start_s"]) <= 0.2 and abs(f["end"] - truth["end_s"]) <= 0.3
        for w in f["words"]:
            assert f["start"] - 0.05 <= w["start"] <= w["end"] <= f["end"] + 0.5

    # 1: word error rate, streaming vs offline
    streaming = wer(READING["text"], [f["text"] for f in finals])
    offline = offline_wer()
    print(f"\nWER streaming {streaming:.3f} (finals: {[f['text'] for f in finals]})"
          f"\nWER offline   {offline:.3f} (whole file, one utterance)")
    assert streaming <= 0.15
    assert streaming <= offline + 0.05

    # 2: interims precede their final; the stable prefix only grows; the final keeps it.
    # (On a loaded machine an interim still waiting when its final is due is dropped as
    # stale, so not every utterance need have one.)
    with_interims = 0
    for n in range(len(TRUTH)):
        seq = [e for e, _ in transcripts if e["segment"] == n]
        assert seq[-1]["final"] and [e["final"] for e in seq].count(True) == 1
        interims = seq[:-1]
        with_interims += bool(interims)
        stable: list[str] = []
        for e in interims:
            now = e["stable"].split()
            assert now[:len(stable)] == stable, (n, stable, now)  # never shrinks or changes
            assert e["text"].split()[:len(now)] == now
            stable = now
        final = seq[-1]["text"].split()
        assert final[:len(stable)] == stable, (n, stable, final)
    print(f"utterances with interims: {with_interims} of {len(TRUTH)}")
    assert with_interims >= len(TRUTH) // 2
    assert sum(len(words(e["stable"])) for e, _ in transcripts if not e["final"]) > 0

    # 6: end of speech → final latency
    latency = [a - t0 - TRUTH[e["segment"]]["end_s"] for e, a in transcripts if e["final"]]
    p50, p95 = np.percentile(latency, 50), np.percentile(latency, 95)
    print(f"end of speech → final: p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(latency):.2f} s "
          f"({len(latency)} finals)")
    assert p95 < 8.0  # loose: 2 s is the target on a quiet machine (see the benchmark)

    # a language the engine does not know: a clear warning, then English as usual
    s = TRUTH[2]
    part = x[s["start"] - 8000: s["end"] + 12000]
    _, events, _ = await stream_file(server.url, part, rate, processors=["vad", "asr"],
                                     realtime=False, language="fr-FR")
    warns = of(events, "warning")
    assert [w["code"] for w in warns] == ["language_unsupported"]
    assert "'fr-FR'" in warns[0]["message"] and "only en" in warns[0]["message"]
    assert warns[0]["processor"] == "asr"
    assert [e["text"] for e in of(events, "transcript") if e["final"]] == [s["text"]]


@pytest.mark.timeout(400)
def test_run_serve_has_speech_to_text_with_no_options(tmp_path: Path) -> None:
    """Must-show 5: ``./run serve`` as a fresh user runs it (no options, no model) offers
    ``asr`` with the default engine; pocketsphinx comes with what ``./run serve`` installs
    (the ``server`` extra), not with an extra of its own."""
    requires = importlib.metadata.requires("earshot") or []
    serve = [r for r in requires if "extra ==" not in r or 'extra == "server"' in r]
    assert any(r.startswith("pocketsphinx") for r in serve), serve
    port = free_port()
    venv = Path(sys.prefix)
    sha = hashlib.sha1((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    if (venv / f".earshot-installed[server,test]-{sha}").exists():  # ./run test's install
        (venv / f".earshot-installed[server]-{sha}").touch()  # holds all ./run serve's would
    env = {**os.environ, "EARSHOT_DATA_DIR": str(tmp_path / "data"), "EARSHOT_VENV": str(venv)}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(ROOT / "run"), "serve", "--port", str(port)], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        health = None
        deadline = time.monotonic() + 360  # the first run may install the package
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert health is not None, log.read_text()
    finally:
        proc.terminate()
        proc.wait(30)
    assert health["asr"]["available"] is True and "asr" in health["processors"]
    assert (health["asr"]["engine"], health["asr"]["model"]) == ("pocketsphinx", "en-us")
    text = " ".join(log.read_text().split())
    assert "speech-to-text: en-us (pocketsphinx, cpu)" in text and "--asr-model small.en" in text
