"""GET /api/streams/{id}/audio?start=S&end=E: a range as a WAV, sample-exact, from a seek, on a
real server; and a source's range across two streams with a gap. (The range arithmetic:
tests/storage/test_audio_range.py.)"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from earshot.client import send_file
from helpers import ServerProcess

pytestmark = pytest.mark.slow


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

