"""GET /api/streams/{id}/audio?start=S&end=E: a range as a WAV, sample-exact, from a seek."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

import earshot.storage.ranges as ranges_mod
from earshot.client import send_file
from earshot.storage.ranges import RangeError, frame_range, iter_range, wav_range
from earshot.storage.wav import header
from helpers import ServerProcess


def test_seconds_to_frames() -> None:
    assert frame_range(0.5, 1.25, 16000, 48000) == (8000, 20000)
    assert frame_range(None, None, 16000, 48000) == (0, 48000)
    assert frame_range(2.5, 99, 16000, 48000) == (40000, 48000)  # clipped to what is held
    assert frame_range(1 / 3, None, 48000, 96000) == (16000, 96000)  # round(s * rate)
    with pytest.raises(RangeError, match="empty range"):
        frame_range(1.0, 1.0, 16000, 48000)
    with pytest.raises(RangeError) as err:
        frame_range(3.0, 4.0, 16000, 48000)
    assert err.value.beyond


def test_a_range_of_a_huge_archive_reads_only_the_range(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3.9 GiB WAV (sparse): the range is planned from the header and the size, and only
    its own bytes are read."""
    path = tmp_path / "big.wav"
    data_bytes = 0xF0000000
    with open(path, "wb") as f:
        f.write(header("pcm16", 48000, 2, data_bytes))
        start = len(header("pcm16", 48000, 2))
        at = start + 4 * 48000 * 3600 * 5  # 5 hours in (4 bytes a frame)
        f.seek(at)
        marker = np.arange(4800 * 2, dtype="<i2")
        f.write(marker.tobytes())
        f.truncate(start + data_bytes)
    read: list[int] = []
    real_pread = os.pread
    monkeypatch.setattr(ranges_mod.os, "pread",
                        lambda fd, n, pos: (read.append(n), real_pread(fd, n, pos))[1])
    plan = wav_range(path, 5 * 3600, 5 * 3600 + 0.1)
    assert (plan.start, plan.end, plan.length) == (5 * 3600 * 48000, 5 * 3600 * 48000 + 4800,
                                                   4800 * 4)
    body = b"".join(iter_range(path, plan, chunk=4096))
    assert sum(read) == 4800 * 4 and max(read) <= 4096
    y, rate = sf.read(io.BytesIO(body), dtype="int16")
    assert rate == 48000 and np.array_equal(y.reshape(-1), marker)


@pytest.mark.slow
async def test_ranges_over_http_match_the_archive_sample_by_sample(
        tmp_path: Path, shared_server: ServerProcess) -> None:
    f = tmp_path / "noise.wav"
    x = (np.random.default_rng(5).uniform(-0.5, 0.5, (3 * 16000, 2)) * 32767).astype(np.int16)
    sf.write(f, x, 16000, subtype="PCM_16")
    sid = (await send_file(shared_server.url, f))["stream"]
    base = f"{shared_server.http}/api/streams/{sid}/audio"
    async with httpx.AsyncClient() as c:
        for start, end, a, b in [(0.5, 1.25, 8000, 20000), (0, 0.001, 0, 16),
                                 (2.9, 10, 46400, 48000), (1 / 16000, 2 / 16000, 1, 2)]:
            r = await c.get(base, params={"start": start, "end": end})
            assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
            assert r.headers["x-earshot-range"] == f"{a} {b}"
            y, rate = sf.read(io.BytesIO(r.content), dtype="int16", always_2d=True)
            assert rate == 16000 and np.array_equal(y, x[a:b]), (start, end)
        r = await c.get(base, params={"start": 2.0})  # to the end
        assert np.array_equal(sf.read(io.BytesIO(r.content), dtype="int16")[0], x[32000:])
        assert (await c.get(base, params={"start": 1, "end": 0.5})).status_code == 400
        assert (await c.get(base, params={"start": 5, "end": 6})).status_code == 416
        assert (await c.get(base, params={"start": -1})).status_code == 422


@pytest.mark.slow
async def test_a_range_of_a_flac_archive(
        tmp_path: Path, server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--archive-format", "flac")
    f = tmp_path / "noise.wav"
    x = (np.random.default_rng(6).uniform(-0.5, 0.5, 2 * 16000) * 32767).astype(np.int16)
    sf.write(f, x, 16000, subtype="PCM_16")
    sid = (await send_file(server.url, f))["stream"]
    async with httpx.AsyncClient() as c:
        rec = (await c.get(f"{server.http}/api/streams/{sid}")).json()
        assert rec["path"].endswith(".flac")
        r = await c.get(f"{server.http}/api/streams/{sid}/audio",
                        params={"start": 0.75, "end": 1.5})
    assert r.status_code == 200 and r.headers["x-earshot-range"] == "12000 24000"
    assert np.array_equal(sf.read(io.BytesIO(r.content), dtype="int16")[0], x[12000:24000])


def test_stitch_plan_places_streams_on_the_wall_clock() -> None:
    from earshot.storage.ranges import Piece, stitch_plan

    pieces, gaps = stitch_plan([("b", 105.0, 100), ("a", 100.0, 200)], 99.0, 106.0, 100)
    assert pieces == [Piece(None, 0, 100), Piece("a", 100, 200, 0), Piece(None, 300, 300),
                      Piece("b", 600, 100, 0)]
    assert gaps == [(0.0, 1.0), (3.0, 6.0)]
    # overlapping spans: the earlier stream keeps its frames, the later one goes on after
    pieces, gaps = stitch_plan([("a", 100.0, 200), ("b", 101.0, 300)], 100.5, 104.0, 100)
    assert pieces == [Piece("a", 0, 150, 50), Piece("b", 150, 200, 100)]
    assert gaps == []


@pytest.mark.slow
async def test_a_source_range_spanning_two_streams_with_a_gap(
        tmp_path: Path, shared_server: ServerProcess) -> None:
    import asyncio
    import datetime as dt
    import json

    rate = 16000
    name = f"porch-{os.getpid()}-{id(tmp_path)}"
    rng = np.random.default_rng(9)
    clips = []
    for i in range(2):
        f = tmp_path / f"c{i}.wav"
        x = (rng.uniform(-0.5, 0.5, rate) * 32767).astype(np.int16)  # 1 s each
        sf.write(f, x, rate, subtype="PCM_16")
        sid = (await send_file(shared_server.url, f, name=name))["stream"]
        clips.append((sid, x))
        await asyncio.sleep(1.6)  # a gap of about 0.6 s between them
    async with httpx.AsyncClient() as c:
        recs = [(await c.get(f"{shared_server.http}/api/streams/{sid}")).json()
                for sid, _ in clips]
        t0 = recs[0]["created"] + 0.25
        t1 = recs[1]["created"] + 0.5
        iso = [dt.datetime.fromtimestamp(t, dt.UTC).isoformat() for t in (t0, t1)]
        r = await c.get(f"{shared_server.http}/api/sources/{name}/audio",
                        params={"from": iso[0], "to": iso[1]})
        assert r.status_code == 200, r.text
        assert (await c.get(f"{shared_server.http}/api/sources/nobody-{name}/audio",
                            params={"from": iso[0], "to": iso[1]})).status_code == 404
        assert (await c.get(f"{shared_server.http}/api/sources/{name}/audio",
                            params={"from": iso[1], "to": iso[0]})).status_code == 400
    y = sf.read(io.BytesIO(r.content), dtype="int16")[0]
    # the timeline, sample by sample: what the ISO times (microseconds) say
    t0, t1 = (dt.datetime.fromisoformat(t).timestamp() for t in iso)
    expected = np.zeros(round((t1 - t0) * rate), np.int16)
    for rec, (_, x) in zip(recs, clips, strict=True):
        a = round((rec["created"] - t0) * rate)
        lo, hi = max(a, 0), min(a + len(x), len(expected))
        expected[lo:hi] = x[lo - a:hi - a]
    assert len(y) == len(expected) and np.array_equal(y, expected)
    gaps = json.loads(r.headers["x-earshot-gaps"])
    assert len(gaps) == 1
    g0, g1 = gaps[0]
    assert g0 == pytest.approx(0.75, abs=1e-3)  # stream 1 ends 1 s after it began
    assert g1 == pytest.approx(recs[1]["created"] - t0, abs=1e-3)
    assert r.headers["x-earshot-streams"] == ",".join(sorted(s for s, _ in clips))
