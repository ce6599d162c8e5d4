"""An archive rotated into parts (storage/parts.py): the pure arithmetic, and the parts on
disk read back by soundfile, ffprobe and soxi (end to end: tests/e2e/test_archive_parts.py)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from earshot.audio import StreamSpec
from earshot.errors import StorageError
from earshot.storage import parts as P
from earshot.storage.archive import Archive, finalize
from earshot.storage.segments import cut
from earshot.storage.wav import header
from helpers import ffprobe_duration, soxi_frames


# -- the pure core ---------------------------------------------------------------------------
def test_locate_an_offset() -> None:
    starts = [0, 100, 200, 250]
    assert [P.locate(starts, o) for o in (0, 99, 100, 199, 200, 249, 250, 10**9)] == \
        [0, 0, 1, 1, 2, 2, 3, 3]
    assert P.locate([0], 5) == 0
    with pytest.raises(ValueError):
        P.locate(starts, -1)


def test_split_a_range_into_parts() -> None:
    starts, total = [0, 100, 200, 250], 300
    assert P.split_range(starts, total, 0, 300) == [(0, 0, 100), (1, 0, 100), (2, 0, 50),
                                                   (3, 0, 50)]
    assert P.split_range(starts, total, 99, 101) == [(0, 99, 100), (1, 0, 1)]
    assert P.split_range(starts, total, 100, 200) == [(1, 0, 100)]  # exactly one part
    assert P.split_range(starts, total, 260, 999) == [(3, 10, 50)]  # clipped to the total
    assert P.split_range(starts, total, 300, 400) == []
    assert P.split_range(starts, total, 50, 50) == []
    assert P.split_range([0, 100, 100, 150], 150, 90, 120) == [(0, 90, 100), (2, 0, 20)]


def test_reconcile_parts_found_on_disk() -> None:
    assert P.reconcile([0, 100], [100, 100, 0]) == [0, 100, 200]  # an unlisted empty part
    assert P.reconcile([0], [7, 5]) == [0, 7]
    assert P.reconcile([0, 100, 200], [100, 100, 30]) == [0, 100, 200]
    assert P.reconcile([0], []) == []


def test_chunks_of_an_append() -> None:
    assert P.chunks(0, 0, 500) == [500]  # never rotate
    assert P.chunks(90, 100, 5) == [5]
    assert P.chunks(90, 100, 10) == [10]  # fills the part; the next starts with more audio
    assert P.chunks(90, 100, 11) == [10, 1]
    assert P.chunks(100, 100, 250) == [0, 100, 100, 50]
    assert sum(P.chunks(37, 40, 1234)) == 1234


def test_part_names() -> None:
    base = Path("/d/streams/abc123.wav")
    assert P.part_path(base, 0) == base
    assert P.part_path(base, 1) == Path("/d/streams/abc123.part0001.wav")
    assert P.part_path(base, 12, ".flac") == Path("/d/streams/abc123.part0012.flac")
    assert P.part_path(Path("/d/streams/abc123.flac"), 3) == \
        Path("/d/streams/abc123.part0003.wav")
    assert P.sidecar_path(base) == Path("/d/streams/abc123.parts.json")


# -- parts on disk -----------------------------------------------------------------------------
def noise(frames: int, channels: int = 2, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((frames, channels)) * 5000).clip(-32768, 32767).astype("<i2")


def write_rotated(tmp_path: Path, x: np.ndarray, part_s: float, rate: int = 8000,
                  block: int = 333) -> Archive:
    spec = StreamSpec("s16", rate, x.shape[1])
    a = Archive.create(tmp_path / "s.wav", spec, "wav", part_seconds=part_s)
    for i in range(0, len(x), block):
        a.append(x[i:i + block].tobytes())
        assert a.frames == min(i + block, len(x))
    return a


def test_rotation_at_frame_boundaries(tmp_path: Path) -> None:
    x = noise(8000 * 3 + 123)
    a = write_rotated(tmp_path, x, 0.5)  # parts of 4000 frames
    a.close()
    meta = json.loads((tmp_path / "s.parts.json").read_text())
    assert meta == {"rate": 8000, "starts": [0, 4000, 8000, 12000, 16000, 20000, 24000]}
    files = [tmp_path / "s.wav"] + [tmp_path / f"s.part{n:04d}.wav" for n in range(1, 7)]
    assert sorted(p.name for p in tmp_path.glob("*.wav")) == sorted(f.name for f in files)
    ys = []
    for n, f in enumerate(files):
        y, rate = sf.read(f, dtype="int16")
        assert rate == 8000 and len(y) == (4000 if n < 6 else 123)
        assert soxi_frames(f) == len(y) and abs(ffprobe_duration(f) - len(y) / 8000) < 1e-3
        ys.append(y)
    assert np.array_equal(np.concatenate(ys), x)
    parts = P.load(tmp_path / "s.wav")
    assert [(p.start, p.frames) for p in parts] == [(4000 * n, 4000) for n in range(6)] + \
        [(24000, 123)]
    for a0, b0 in [(0, len(x)), (3999, 4001), (100, 12345), (23999, 24123), (8000, 12000)]:
        got = np.frombuffer(b"".join(P.iter_frames(parts, a0, b0, chunk=1000)), "<i2")
        assert np.array_equal(got.reshape(-1, 2), x[a0:b0]), (a0, b0)


def test_exact_fill_makes_no_empty_part_and_one_file_without_parts(tmp_path: Path) -> None:
    x = noise(8000)
    a = write_rotated(tmp_path, x, 0.5, block=4000)
    a.close()
    assert json.loads((tmp_path / "s.parts.json").read_text())["starts"] == [0, 4000]
    one = tmp_path / "one"
    one.mkdir()
    b = write_rotated(one, x, 0)  # 0: one file, as before: no sidecar, no part
    b.close()
    assert sorted(p.name for p in one.iterdir()) == ["s.wav"]
    assert not P.is_rotated(one / "s.wav")


def test_reopen_continues_at_the_total_offset(tmp_path: Path) -> None:
    x = noise(8000 * 2)
    a = write_rotated(tmp_path, x[:10000], 0.5)
    os.close(a.part._fd)  # kill -9: the last part's header never synced
    with open(tmp_path / "s.part0002.wav", "ab") as f:
        f.write(b"\x01\x02")  # a torn frame, never acknowledged
    assert P.recover(tmp_path / "s.wav") == 10000
    b = Archive.reopen(tmp_path / "s.wav", StreamSpec("s16", 8000, 2), "wav", part_seconds=0.5)
    assert b.frames == 10000 and b.part.path.name == "s.part0002.wav"
    b.append(x[10000:].tobytes())
    b.close()
    parts = P.load(tmp_path / "s.wav")
    assert [p.start for p in parts] == [0, 4000, 8000, 12000]
    got = np.frombuffer(b"".join(P.iter_frames(parts, 0, len(x))), "<i2").reshape(-1, 2)
    assert np.array_equal(got, x)


def test_a_crash_between_a_new_part_and_its_listing(tmp_path: Path) -> None:
    """The new part's file exists (empty) but the sidecar does not list it yet: readers
    see the audio held; recovery lists the part and the stream goes on from there."""
    x = noise(12000)
    a = write_rotated(tmp_path, x[:8000], 0.5, block=4000)
    a.close()
    (tmp_path / "s.part0002.wav").write_bytes(header("pcm16", 8000, 2))
    assert P.total_frames(P.load(tmp_path / "s.wav")) == 8000
    assert P.recover(tmp_path / "s.wav") == 8000
    assert json.loads((tmp_path / "s.parts.json").read_text())["starts"] == [0, 4000, 8000]
    b = Archive.reopen(tmp_path / "s.wav", StreamSpec("s16", 8000, 2), "wav", part_seconds=0.5)
    b.append(x[8000:].tobytes())
    b.close()
    got = np.frombuffer(b"".join(P.iter_frames(P.load(tmp_path / "s.wav"), 0, 12000)), "<i2")
    assert np.array_equal(got.reshape(-1, 2), x)
    # a first rotation cut short: no sidecar at all yet, one empty unlisted part
    d = tmp_path / "first"
    d.mkdir()
    c = write_rotated(d, x[:4000], 0.5, block=4000)
    c.close()
    (d / "s.part0001.wav").write_bytes(header("pcm16", 8000, 2))
    assert not P.is_rotated(d / "s.wav") and P.recover(d / "s.wav") == 4000
    assert json.loads((d / "s.parts.json").read_text())["starts"] == [0, 4000]


def test_truncate_across_a_part_boundary(tmp_path: Path) -> None:
    x = noise(8100)
    a = write_rotated(tmp_path, x, 0.5)
    a.writer.truncate(7990)  # the stream writer's trim_tail: frames of the whole stream
    assert a.frames == 7990 and a.part.path.name == "s.part0001.wav"
    assert not (tmp_path / "s.part0002.wav").exists()
    a.close()
    got = np.frombuffer(b"".join(P.iter_frames(P.load(tmp_path / "s.wav"), 0, 9000)), "<i2")
    assert np.array_equal(got.reshape(-1, 2), x[:7990])


def test_finalize_every_part_to_flac(tmp_path: Path) -> None:
    x = noise(8000 * 2 + 77)
    spec = StreamSpec("s16", 8000, 2)
    a = Archive.create(tmp_path / "s.wav", spec, "flac", part_seconds=0.5)
    a.append(x.tobytes())
    a.close()
    final = finalize(tmp_path / "s.wav", "flac")
    assert final == tmp_path / "s.flac"
    assert not list(tmp_path.glob("*.wav"))
    flacs = [tmp_path / "s.flac"] + [tmp_path / f"s.part{n:04d}.flac" for n in (1, 2, 3, 4)]
    ys = [sf.read(f, dtype="int16")[0] for f in flacs]
    for f, y in zip(flacs, ys, strict=True):
        assert abs(ffprobe_duration(f) - len(y) / 8000) < 1e-3
    assert np.array_equal(np.concatenate(ys), x)
    meta = json.loads((tmp_path / "s.parts.json").read_text())
    assert meta["frames"] == len(x)
    parts = P.load(final)
    got = np.frombuffer(b"".join(P.iter_frames(parts, 3990, 12010)), "<i2").reshape(-1, 2)
    assert np.array_equal(got, x[3990:12010])
    seg = tmp_path / "seg.wav"
    assert cut(final, 3000, 9000, seg) == 6000  # a segment of a finished FLAC archive
    assert np.array_equal(sf.read(seg, dtype="int16")[0], x[3000:9000])


def test_a_crash_while_finalizing_is_finished_by_recovery(tmp_path: Path) -> None:
    x = noise(8000 * 2)
    a = Archive.create(tmp_path / "s.wav", StreamSpec("s16", 8000, 2), "flac",
                       part_seconds=0.5)
    a.append(x.tobytes())
    a.close()
    from earshot.storage.finalize import finalize_one

    finalize_one(tmp_path / "s.part0003.wav", "flac")  # the later parts go first
    with pytest.raises(FileNotFoundError):
        P.recover(tmp_path / "s.wav", "flac")
    assert (tmp_path / "s.flac").exists() and not list(tmp_path.glob("*.wav"))
    got = np.frombuffer(b"".join(P.iter_frames(P.load(tmp_path / "s.flac"), 0, 16000)), "<i2")
    assert np.array_equal(got.reshape(-1, 2), x)


def test_rf64_header_is_read_by_soundfile_and_ffprobe(tmp_path: Path) -> None:
    x = noise(1000)
    path = tmp_path / "r.wav"
    path.write_bytes(P.rf64_header("pcm16", 8000, 2, x.nbytes) + x.tobytes())
    with sf.SoundFile(path) as f:
        assert f.format == "RF64" and f.frames == 1000
        assert np.array_equal(f.read(dtype="int16"), x)
    assert abs(ffprobe_duration(path) - 1000 / 8000) < 1e-3
    assert P.wav_header("pcm16", 8000, 2, 100)[:4] == b"RIFF"
    assert P.wav_header("pcm16", 8000, 2, 1 << 33)[:4] == b"RF64"
    y, _ = sf.read(io.BytesIO(P.rf64_header("float32", 8000, 1, 8) + b"\0" * 8))
    assert len(y) == 2


def test_a_torn_sidecar_is_rebuilt_and_fsync_mode_syncs_the_rotation(tmp_path: Path) -> None:
    x = noise(9000)
    a = write_rotated(tmp_path, x, 0.5)
    assert a._unsynced  # a rotation is not fsynced on the event loop...
    a.sync(fsync=True)  # ...but by the next fsync (``--fsync``: before the ack)
    assert not a._unsynced
    a.close()
    (tmp_path / "s.parts.json").write_bytes(b"")  # a power cut before its fsync
    assert P.recover(tmp_path / "s.wav") == 9000
    assert json.loads((tmp_path / "s.parts.json").read_text())["starts"] == [0, 4000, 8000]


def test_a_failed_rotation_leaves_the_archive_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = noise(6000)
    a = write_rotated(tmp_path, x[:3000], 0.5, block=3000)

    def full(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(P, "write_sidecar", full)
    with pytest.raises(OSError):
        a.append(x[3000:5000].tobytes())  # fills part 0, then cannot list part 1
    assert a.frames == 4000 and not (tmp_path / "s.part0001.wav").exists()
    monkeypatch.undo()
    a.append(x[4000:].tobytes())  # the client resends from the offset the server holds
    a.close()
    got = np.frombuffer(b"".join(P.iter_frames(P.load(tmp_path / "s.wav"), 0, 6000)), "<i2")
    assert np.array_equal(got.reshape(-1, 2), x)


@pytest.mark.parametrize("rate", [16000, 44100])
def test_ogg_parts_keep_the_stream_length(tmp_path: Path, rate: int) -> None:
    pytest.importorskip("av")
    t = np.arange(rate * 2) / rate
    x = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2")[:, None]
    a = Archive.create(tmp_path / "s.wav", StreamSpec("s16", rate, 1), "ogg", part_seconds=0.5)
    a.append(x.tobytes())
    a.close()
    final = finalize(tmp_path / "s.wav", "ogg")
    assert final.name == "s.ogg" and len(list(tmp_path.glob("s.part*.ogg"))) == 3
    parts = P.load(final)
    out_rate = parts[0].rate
    assert out_rate == (rate if rate == 16000 else 48000)
    assert abs(P.total_frames(parts) - 2 * out_rate) <= 4 * len(parts)
    assert [p.start for p in parts] == [round(k * rate / 2 * out_rate / rate) for k in range(4)]
    y = np.frombuffer(b"".join(P.iter_frames(parts, 0, P.total_frames(parts))), "<f4")
    assert len(y) == P.total_frames(parts) and 0.15 < float(np.sqrt(np.mean(y ** 2))) < 0.2


def test_a_range_across_huge_parts_reads_only_the_range(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two parts, the first a 3.9 GiB WAV (sparse): a range across the boundary is planned
    from the sidecar, headers and sizes, and only its own bytes are read."""
    head = header("pcm16", 48000, 2)
    data_bytes = 0xF0000000
    held0 = data_bytes // 4
    marker = np.arange(4800 * 2, dtype="<i2")
    with open(tmp_path / "s.wav", "wb") as f:
        f.write(header("pcm16", 48000, 2, data_bytes))
        f.seek(len(head) + data_bytes - 2400 * 4)
        f.write(marker[:4800].tobytes())  # the last 2400 frames of part 0
    with open(tmp_path / "s.part0001.wav", "wb") as f:
        f.write(header("pcm16", 48000, 2, 2400 * 4) + marker[4800:].tobytes())
    (tmp_path / "s.parts.json").write_text(json.dumps({"rate": 48000, "starts": [0, held0]}))
    read: list[int] = []
    real = os.pread
    monkeypatch.setattr(P.os, "pread", lambda fd, n, pos: (read.append(n), real(fd, n, pos))[1])
    parts = P.load(tmp_path / "s.wav")
    assert P.total_frames(parts) == held0 + 2400
    body = b"".join(P.iter_frames(parts, held0 - 2400, held0 + 2400, chunk=4096))
    assert sum(read) == 4800 * 4 and max(read) <= 4096
    assert np.array_equal(np.frombuffer(body, "<i2"), marker)


def test_recovery_repairs_every_part(tmp_path: Path) -> None:
    """A crash right after a rotation listed the new part, before the full part's sizes
    were patched (or by a power cut): every WAV part is repaired, not just the last."""
    x = noise(10000)
    a = write_rotated(tmp_path, x, 0.5, block=1000)
    os.close(a.part._fd)
    for f in (tmp_path / "s.wav", tmp_path / "s.part0001.wav"):
        with open(f, "r+b") as g:  # sizes as if never patched
            g.seek(4)
            g.write(b"\0\0\0\0")
            g.seek(40)
            g.write(b"\0\0\0\0")
    assert P.recover(tmp_path / "s.wav") == 10000
    for f, n in ((tmp_path / "s.wav", 4000), (tmp_path / "s.part0001.wav", 4000),
                 (tmp_path / "s.part0002.wav", 2000)):
        assert sf.info(str(f)).frames == n and soxi_frames(f) == n


def test_loading_opens_only_the_last_part(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    a = write_rotated(tmp_path, noise(8000 * 3), 0.5)
    a.close()
    opened: list[str] = []
    real = P._open_info
    monkeypatch.setattr(P, "_open_info", lambda p: (opened.append(p.name), real(p))[1])
    parts = P.load(tmp_path / "s.wav")
    assert len(parts) == 6 and opened == ["s.part0005.wav"]
    (tmp_path / "s.part0002.flac").write_bytes(b"")  # a part being finalized
    with pytest.raises(StorageError, match="being finalized"):
        P.load(tmp_path / "s.wav")
