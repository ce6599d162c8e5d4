"""Streams that never end: an archive rotated into parts (``--archive-part``), end to end on
real ``earshot serve`` processes with a small part size (0.5 s). The downloads, ranges,
peaks, segments and replay of one logical stream, checked sample by sample against the
source; resume after ``kill -9`` in the middle of a part and right at a rotation; every part
finalized; each part a valid file for soundfile and ffprobe. (The arithmetic:
tests/storage/test_parts.py.)"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from earshot.client import Publisher, Reconnect, send_file
from earshot.storage.wav import header
from helpers import FIXTURES, ServerProcess, ffprobe_duration, of, stream_file

pytestmark = pytest.mark.slow

PART = 8000  # frames per part: 0.5 s at 16 kHz
FAST_RETRY = Reconnect(initial=0.1, maximum=0.5, attempts=200)


def noise(frames: int, channels: int = 2, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((frames, channels)) * 5000).clip(-32768, 32767).astype("<i2")


def part_files(data_dir: Path, sid: str, suffix: str) -> list[Path]:
    d = data_dir / "streams"
    n = len(list(d.glob(f"{sid}.part*{suffix}")))
    return [d / f"{sid}{suffix}"] + [d / f"{sid}.part{k:04d}{suffix}" for k in range(1, n + 1)]


def check_parts(files: list[Path], x: np.ndarray, rate: int = 16000) -> None:
    """Each part a valid file of its own (soundfile, ffprobe); together, the source."""
    ys = []
    for f in files:
        y, r = sf.read(f, dtype="int16", always_2d=True)
        assert r == rate and abs(ffprobe_duration(f) - len(y) / rate) < 1e-3, f
        ys.append(y)
    assert [len(y) for y in ys[:-1]] == [PART] * (len(ys) - 1)
    assert np.array_equal(np.concatenate(ys).reshape(x.shape), x)


def wav_of(r: httpx.Response) -> np.ndarray:
    assert r.status_code in (200, 206) and r.headers["content-type"] == "audio/wav", r.text
    return sf.read(io.BytesIO(r.content), dtype="int16")[0]


def expected_peaks(x: np.ndarray, width: int) -> tuple[list[float], list[float]]:
    m = x.astype(np.float32) / 32768
    m = m.mean(axis=1) if m.ndim == 2 else m
    cols = (np.arange(len(m)) * width) // len(m)
    lo = [round(float(m[cols == c].min()), 4) for c in range(width)]
    hi = [round(float(m[cols == c].max()), 4) for c in range(width)]
    return lo, hi


async def test_a_stream_across_parts_reads_as_one(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--archive-part", "0.5", "--processor", "vad")
    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="int16")
    pub, events, _ = await stream_file(server.url, x, rate, processors=["vad"],
                                       realtime=False, block_s=0.037, name="parts-src")
    sid = pub.stream_id
    base = f"{server.http}/api/streams/{sid}"
    async with httpx.AsyncClient(timeout=30) as c:
        rec = (await c.get(base)).json()
        assert rec["path"] == f"streams/{sid}.wav"  # part 0 keeps the usual path
        assert rec["state"] == "finished" and rec["frames"] == len(x)
        files = part_files(server.data_dir, sid, ".wav")
        assert len(files) == -(-len(x) // PART)  # 19 parts
        check_parts(files, x)
        side = json.loads((server.data_dir / "streams" / f"{sid}.parts.json").read_text())
        assert side["starts"] == [k * PART for k in range(len(files))]

        # the whole stream: one WAV, stitched on the fly, with HTTP Range
        r = await c.get(f"{base}/audio")
        assert r.headers["x-earshot-parts"] == str(len(files))
        assert np.array_equal(wav_of(r), x)
        whole = r.content
        for spec, lo, hi in [("bytes=1000-200001", 1000, 200002), ("bytes=44-", 44, None),
                             ("bytes=-777", len(whole) - 777, None)]:
            rr = await c.get(f"{base}/audio", headers={"Range": spec})
            assert rr.status_code == 206 and rr.content == whole[lo:hi], spec
        assert (await c.get(f"{base}/audio", headers={"Range": "bytes=9999999-"})
                ).status_code == 416

        # ranges spanning part boundaries
        for start, end, a, b in [(0.49, 0.51, 7840, 8160), (0.25, 3.3, 4000, 52800),
                                 (1.0, 1.5, 16000, 24000), (9.0, None, 144000, len(x)),
                                 (0.4999375, 0.5000625, 7999, 8001)]:
            params = {"start": start} if end is None else {"start": start, "end": end}
            rr = await c.get(f"{base}/audio", params=params)
            assert rr.headers["x-earshot-range"] == f"{a} {b}"
            assert np.array_equal(wav_of(rr), x[a:b]), (start, end)

        # peaks over every part
        p = (await c.get(f"{base}/peaks", params={"width": 64})).json()
        lo, hi = expected_peaks(x, 64)
        assert p["duration"] == pytest.approx(len(x) / rate)
        assert np.allclose(p["min"], lo, atol=2e-4) and np.allclose(p["max"], hi, atol=2e-4)

        # speech segments cut across parts, byte for byte
        segs = (await c.get(f"{base}/segments")).json()["segments"]
        assert len(segs) == 3 and len(of(events, "segment")) == 3
        assert all(s["start_frame"] // PART != (s["end_frame"] - 1) // PART for s in segs)
        for s in segs:
            y = wav_of(await c.get(f"{server.http}{s['url']}"))
            assert np.array_equal(y, x[s["start_frame"]:s["end_frame"]])

        # a replay reads every part in order: the same segments again
        rp = (await c.post(f"{base}/replay", params={"processor": "vad"})).json()
        assert sorted((s["start_frame"], s["end_frame"]) for s in rp["segments"]) == \
            sorted((s["start_frame"], s["end_frame"]) for s in segs)

        # one source's wall-clock stitching reads the parts too
        t0 = dt.datetime.fromtimestamp(rec["created"] - 1, dt.UTC)
        t1 = t0 + dt.timedelta(seconds=12)
        rr = await c.get(f"{server.http}/api/sources/parts-src/audio",
                         params={"from": t0.isoformat(), "to": t1.isoformat()})
        y = wav_of(rr)
        gaps = json.loads(rr.headers["x-earshot-gaps"])
        at = round(gaps[0][1] * rate)
        assert len(y) == 12 * rate and abs(at - rate) <= 1
        assert np.array_equal(y[at:at + len(x)], x) and not y[:at].any()

        assert (await c.delete(base)).status_code == 204
    assert not list((server.data_dir / "streams").glob(f"{sid}*"))  # every part is gone


async def test_resume_after_kill9_mid_part_and_at_a_rotation(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--archive-part", "0.5")
    x = noise(16000 * 3 + 1234)
    streams = server.data_dir / "streams"
    async with Publisher(server.url, rate=16000, channels=2, format="s16",
                         reconnect=FAST_RETRY) as pub:
        # 1) killed in the middle of part 2
        await pub.send(x[:20000])
        await pub.wait_acked(20000, timeout=20)
        sid = pub.stream_id
        assert sid is not None
        async with httpx.AsyncClient(timeout=30) as c:  # a live stream in parts reads too
            live = f"{server.http}/api/streams/{sid}/audio"
            assert np.array_equal(wav_of(await c.get(live)), x[:20000])
            r = await c.get(live, params={"start": 0.45, "end": 1.2})
            assert np.array_equal(wav_of(r), x[7200:19200])
        server.kill9()
        await pub.send(x[20000:24000])  # kept by the client meanwhile
        await asyncio.to_thread(server.start)
        await pub.wait_acked(24000, timeout=30)
        # 2) killed right at a rotation: part 2 full, and the crash left part 3's file
        #    created but not yet listed in the sidecar
        await pub.send(x[24000:32000])
        await pub.wait_acked(32000, timeout=20)
        server.kill9()
        (streams / f"{sid}.part0004.wav").write_bytes(header("pcm16", 16000, 2))
        await asyncio.to_thread(server.start)
        for i in range(32000, len(x), 1600):
            await pub.send(x[i:i + 1600])
    assert pub.reconnects >= 2
    async with httpx.AsyncClient(timeout=30) as c:
        rec = (await c.get(f"{server.http}/api/streams/{sid}")).json()
        assert rec["state"] == "finished" and rec["frames"] == len(x)
        assert np.array_equal(wav_of(await c.get(f"{server.http}/api/streams/{sid}/audio")), x)
    check_parts(part_files(server.data_dir, sid, ".wav"), x)


async def test_every_part_is_finalized(tmp_path: Path,
                                       server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--archive-format", "flac", env={"EARSHOT_ARCHIVE_PART": "0.5"})
    x = noise(16000 * 2 + 300, seed=12)
    f = tmp_path / "noise.wav"
    sf.write(f, x, 16000, subtype="PCM_16")
    sid = (await send_file(server.url, f))["stream"]
    async with httpx.AsyncClient(timeout=30) as c:
        rec = (await c.get(f"{server.http}/api/streams/{sid}")).json()
        assert rec["path"] == f"streams/{sid}.flac"
        assert not list((server.data_dir / "streams").glob(f"{sid}*.wav"))
        check_parts(part_files(server.data_dir, sid, ".flac"), x)
        r = await c.get(f"{server.http}/api/streams/{sid}/audio")
        assert np.array_equal(wav_of(r), x)  # one WAV, decoded from the FLAC parts
        rr = await c.get(f"{server.http}/api/streams/{sid}/audio",
                         params={"start": 0.3, "end": 1.7})
        assert np.array_equal(wav_of(rr), x[4800:27200])
        p = (await c.get(f"{server.http}/api/streams/{sid}/peaks", params={"width": 10})).json()
        lo, hi = expected_peaks(x, 10)
        assert np.allclose(p["min"], lo, atol=2e-4) and np.allclose(p["max"], hi, atol=2e-4)
