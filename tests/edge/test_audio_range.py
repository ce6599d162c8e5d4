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
