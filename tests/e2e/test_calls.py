"""Calls end to end: `earshot call --file ... --out ...` processes against a real server.

Each participant's file is silence except for one window in which it speaks, the windows
apart, so that what each one heard can be checked window by window: the others' speech
(correlated with their files after alignment) and, in its own window, nothing (its own
voice at least 30 dB below the others'). The archives are checked sample for sample and
the room events across participants (the same event, the same room-clock time).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from helpers import (
    FIXTURES,
    ServerProcess,
    db,
    heard_rms,
    rms,
)

pytestmark = pytest.mark.slow
RATE = 16000
HEAR = 48000


def _speech(name: str, start: float, seconds: float) -> np.ndarray:
    x, rate = sf.read(FIXTURES / f"{name}.wav", dtype="int16")
    assert rate == RATE
    return x[int(start * RATE):int((start + seconds) * RATE)]


def _file(path: Path, speech: np.ndarray, at: float, total: float) -> np.ndarray:
    x = np.zeros(int(total * RATE), np.int16)
    i = int(at * RATE)
    x[i:i + len(speech)] = speech
    sf.write(path, x, RATE, subtype="PCM_16")
    return x


def _call(srv: ServerProcess, room: str, name: str, f: Path, out: Path,
          *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "earshot.cli", "call", room, "--url",
                             srv.url, "--name", name, "--file", str(f), "--out", str(out),
                             "--linger", "1", "--min-delay", "0.1", *extra],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(procs: dict[str, subprocess.Popen[str]]) -> dict[str, list[dict]]:
    events = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        print(err.strip())
        events[name] = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return events






def _heard(path: Path) -> np.ndarray:
    y, rate = sf.read(path, dtype="float32")
    assert rate == HEAR
    return y




def _archives(srv: ServerProcess, room: str) -> dict[str, np.ndarray]:
    streams = httpx.get(srv.http + "/api/streams").json()["streams"]
    out = {}
    for s in streams:
        if s["name"].startswith(room + "/"):
            assert s["state"] == "finished"
            r = httpx.get(f"{srv.http}/api/streams/{s['id']}/audio")
            assert r.status_code == 200
            y, _ = sf.read(io.BytesIO(r.content), dtype="int16")
            out[s["name"].split("/", 1)[1]] = y
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One server for the module: each test has a room of its own (duo, trio, talk)."""
    srv = ServerProcess(tmp_path_factory.mktemp("calls") / "data").start()
    yield srv
    srv.stop()


def test_two_people_hear_each_other_not_themselves(server: ServerProcess,
                                                   tmp_path: Path) -> None:
    spoken = {"ann": (1.0, 3.0), "bob": (3.5, 5.5)}
    files = {"ann": _file(tmp_path / "ann.wav", _speech("speech_16k", 0.8, 2.0), 1.0, 6.0),
             "bob": _file(tmp_path / "bob.wav", _speech("reading_16k", 0.3, 2.0), 3.5, 6.0)}
    procs = {n: _call(server, "duo", n, tmp_path / f"{n}.wav", tmp_path / f"heard_{n}.wav")
             for n in files}
    events = _finish(procs)
    for me, other in (("ann", "bob"), ("bob", "ann")):
        heard = _heard(tmp_path / f"heard_{me}.wav")
        assert len(heard) >= 6.5 * HEAR  # from joining to leaving, gaps as silence
        other_rms = heard_rms(heard, files[other], spoken[other])
        own = spoken[me]  # on its own clock: it started sending when it joined
        mine = heard[int((own[0] + 0.1) * HEAR):int((own[1] - 0.1) * HEAR)]
        assert db(other_rms) - db(rms(mine)) >= 30, (me, other_rms, rms(mine))
    archives = _archives(server, "duo")
    for n, x in files.items():
        assert np.array_equal(archives[n], x), n  # exact: what the file held
    # the room told both who joined; the call recording has both, aligned
    for n in files:
        joined = [e["participant"] for e in events[n] if e["type"] == "joined"]
        assert set(joined) <= {"ann", "bob"} and joined[-1:] != []
    r = httpx.get(server.http + "/api/rooms/duo/audio", params={"tracks": 1})
    y, rate = sf.read(io.BytesIO(r.content), dtype="float32")
    assert rate == HEAR and y.shape[1] == 2


def test_three_people_events_and_clock(server: ServerProcess, tmp_path: Path) -> None:
    spoken = {"ann": (1.0, 2.8), "bob": (3.3, 5.1), "cat": (5.6, 7.4)}
    sources = {"ann": ("speech_16k", 0.8), "bob": ("reading_16k", 0.3),
               "cat": ("speech_16k", 4.35)}
    files = {n: _file(tmp_path / f"{n}.wav", _speech(src, at, 1.8), spoken[n][0], 8.0)
             for n, (src, at) in sources.items()}
    procs = {n: _call(server, "trio", n, tmp_path / f"{n}.wav", tmp_path / f"heard_{n}.wav")
             for n in files}
    events = _finish(procs)
    for me in files:
        heard = _heard(tmp_path / f"heard_{me}.wav")
        others = [heard_rms(heard, files[o], spoken[o]) for o in files if o != me]
        own = spoken[me]
        mine = heard[int((own[0] + 0.1) * HEAR):int((own[1] - 0.1) * HEAR)]
        assert db(min(others)) - db(rms(mine)) >= 30, me
    archives = _archives(server, "trio")
    assert all(np.array_equal(archives[n], x) for n, x in files.items())
    # The same event, seen by everyone present, at the same room-clock time.
    seen: dict[tuple[str, str | None], list[float]] = {}
    for n in files:
        kinds = [e["type"] for e in events[n]]
        assert kinds[0] in ("joined", "room")
        joins = [e["t"] for e in events[n] if e["type"] == "joined"]
        assert joins == sorted(joins), (n, events[n])  # in order on the room clock
        for who in files:  # each participant's own events, in order, speaking first
            own = [(e["type"], e["t"]) for e in events[n] if e.get("participant") == who
                   and e["type"] in ("speaking", "silent")]
            assert [t for _, t in own] == sorted(t for _, t in own), (n, who, own)
            assert [k for k, _ in own][:1] in ([], ["speaking"]), (n, who, own)
        for e in events[n]:
            if e["type"] in ("joined", "speaking", "silent", "left"):
                seen.setdefault((e["type"], e.get("participant")), []).append(e["t"])
    for key, ts in seen.items():
        assert max(ts) - min(ts) < 1e-6, (key, ts)
    for n in files:  # each one was heard speaking by the others, in its window
        speaking = [e for e in events[next(o for o in files if o != n)]
                    if e["type"] == "speaking" and e["participant"] == n]
        assert speaking, n
    joined = {e["participant"]: e["t"] for e in events["cat"] if e["type"] == "joined"}
    assert {"cat"} <= set(joined)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def _wer(ref: list[str], hyp: list[str]) -> float:
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[len(hyp)] / max(1, len(ref))


def test_the_transcript_names_every_speaker(server: ServerProcess, tmp_path: Path) -> None:
    """Two Festival-voiced scripts in one call: each final of the call's transcript names
    the right speaker, and each speaker's words come out with WER <= 0.15."""
    reading = json.loads((FIXTURES / "reading_16k.json").read_text())["speech"]
    parts = {"ann": (0.0, 9.4), "bob": (9.6, 18.9)}  # three sentences each
    ann = _file(tmp_path / "ann.wav", _speech("reading_16k", 0.0, 9.4), 0.0, 9.9)
    bob = _file(tmp_path / "bob.wav", _speech("reading_16k", 9.6, 9.3), 0.5, 9.9)
    assert len(ann) and len(bob)
    procs = {n: _call(server, "talk", n, tmp_path / f"{n}.wav", tmp_path / f"heard_{n}.wav",
                      "--processor", "vad", "--processor", "asr") for n in ("ann", "bob")}
    _finish(procs)
    finals = httpx.get(server.http + "/api/rooms/talk/transcript").json()
    finals = finals if isinstance(finals, list) else finals.get("finals", finals)
    assert finals, finals
    said = {n: [s["text"] for s in reading if lo <= s["start_s"] and s["end_s"] <= hi]
            for n, (lo, hi) in parts.items()}
    assert all(len(v) == 3 for v in said.values()), said
    for f in finals:  # each final is one of its speaker's sentences, not the other's
        mine = min(_wer(_words(t), _words(f["text"])) for t in said[f["speaker"]])
        theirs = min(_wer(_words(t), _words(f["text"])) for n in said if n != f["speaker"]
                     for t in said[n])
        assert mine < theirs, f
    starts = [f["start"] for f in finals]
    assert starts == sorted(starts)  # interleaved by time on the room clock
    for n in said:
        hyp = [w for f in finals if f["speaker"] == n for w in _words(f["text"])]
        ref = [w for t in said[n] for w in _words(t)]
        assert _wer(ref, hyp) <= 0.15, (n, ref, hyp)
    txt = httpx.get(server.http + "/api/rooms/talk/transcript", params={"format": "txt"})
    assert txt.status_code == 200 and "ann" in txt.text and "bob" in txt.text
    for fmt in ("srt", "vtt"):
        r = httpx.get(server.http + "/api/rooms/talk/transcript", params={"format": fmt})
        assert r.status_code == 200 and "bob" in r.text
