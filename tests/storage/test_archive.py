"""Archive writer and crash repair, checked with independent readers (the metadata stores:
tests/storage)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from earshot.audio import StreamSpec
from earshot.errors import StorageError
from earshot.storage.archive import Archive, finalize
from earshot.storage.wav import WavWriter, repair
from helpers import ffprobe_duration, soxi_frames


def noise(frames: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((frames, channels)) * 6000).clip(-32768, 32767).astype("<i2")
    return x[:, 0] if channels == 1 else x


def test_incremental_wav_is_readable_at_every_step(tmp_path: Path) -> None:
    x = noise(4800, 2)
    w = WavWriter.create(tmp_path / "a.wav", "pcm16", 48000, 2)
    for i in range(0, len(x), 1000):
        w.write(x[i:i + 1000].tobytes())
        w.sync_header()
        y, rate = sf.read(tmp_path / "a.wav", dtype="int16")
        assert rate == 48000 and np.array_equal(y, x[: i + 1000][: len(y)])
    w.close()
    assert np.array_equal(sf.read(tmp_path / "a.wav", dtype="int16")[0], x)
    with pytest.raises(StorageError):
        WavWriter.create(tmp_path / "a.wav", "pcm16", 48000, 2)  # never overwrites


def test_partial_frames_are_refused(tmp_path: Path) -> None:
    w = WavWriter.create(tmp_path / "a.wav", "pcm16", 8000, 2)
    with pytest.raises(StorageError):
        w.write(b"\0" * 6)
    w.close()


@pytest.mark.parametrize("encoding", ["pcm16", "float32"])
def test_repair_after_crash_truncates_partial_frame_and_fixes_header(
        tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "c.wav"
    w = WavWriter.create(path, encoding, 16000, 1)  # type: ignore[arg-type]
    x = noise(16000)
    data = x.tobytes() if encoding == "pcm16" else (x / 32768).astype("<f4").tobytes()
    w.write(data)
    # simulate kill -9: the header was never synced and half a frame hit the disk
    os.close(w._fd)
    with open(path, "ab") as f:
        f.write(b"\x01")
    assert repair(path) == 16000
    assert repair(path) == 16000  # idempotent
    y, rate = sf.read(path, dtype="float32")
    assert rate == 16000 and np.array_equal(y, (x / 32768).astype("<f4"))
    assert abs(ffprobe_duration(path) - 1.0) < 1e-3
    assert soxi_frames(path) == 16000


def test_reopen_appends_after_repair(tmp_path: Path) -> None:
    path = tmp_path / "r.wav"
    x = noise(3000)
    w = WavWriter.create(path, "pcm16", 8000, 1)
    w.write(x[:1000].tobytes())
    os.close(w._fd)  # crash
    w2 = WavWriter.reopen(path)
    assert w2.frames == 1000
    w2.write(x[1000:].tobytes())
    w2.close()
    assert np.array_equal(sf.read(path, dtype="int16")[0], x)


def test_archive_converts_f32_and_counts_fixes(tmp_path: Path) -> None:
    spec = StreamSpec("f32", 8000, 1)
    a = Archive.create(tmp_path / "f.wav", spec, "wav")
    x = np.array([0.5, 2.0, -3.0, np.nan, np.inf, 0.25], "<f4")
    r = a.append(x.tobytes())
    a.close()
    assert (r.frames, r.non_finite, r.clipped) == (6, 2, 2)
    y = sf.read(tmp_path / "f.wav", dtype="float32")[0]
    assert np.allclose(y, [0.5, 32767 / 32768, -1.0, 0, 0, 0.25], atol=1 / 32768)
    b = Archive.create(tmp_path / "g.wav", spec, "wav-f32")
    b.append(x.tobytes())
    b.close()
    assert sf.read(tmp_path / "g.wav", dtype="float32")[0].tolist() == [0.5, 1, -1, 0, 0, 0.25]


def test_flac_finalize_is_lossless(tmp_path: Path) -> None:
    spec = StreamSpec("s16", 16000, 2)
    a = Archive.create(tmp_path / "s.wav", spec, "flac")
    x = noise(20000, 2)
    a.append(x.tobytes())
    a.close()
    out = finalize(tmp_path / "s.wav", "flac")
    assert out.suffix == ".flac" and not (tmp_path / "s.wav").exists()
    assert np.array_equal(sf.read(out, dtype="int16")[0], x)


def test_reopen_refuses_a_different_layout(tmp_path: Path) -> None:
    a = Archive.create(tmp_path / "m.wav", StreamSpec("s16", 16000, 1), "wav")
    a.close()
    with pytest.raises(StorageError):
        Archive.reopen(tmp_path / "m.wav", StreamSpec("s16", 48000, 1), "wav")

