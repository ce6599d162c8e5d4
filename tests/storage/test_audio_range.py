"""Audio ranges from the archive (storage/ranges.py): seconds to frames, a range of a huge WAV
read with only its own bytes, and the plan that stitches a source's streams on the wall clock.
(Over HTTP, sample by sample: tests/e2e/test_audio_range_server.py.)"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import earshot.storage.ranges as ranges_mod
from earshot.storage.ranges import RangeError, frame_range, iter_range, wav_range
from earshot.storage.wav import header


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
