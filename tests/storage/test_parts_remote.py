"""Archives spread over the local disk, other gateways and the object store
(storage/parts.load_known, storage/objects/remote.RemoteFile), read through an in-memory
range reader that records every ranged GET (end to end against moto_server and two
gateways: tests/e2e/test_archive_store.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from earshot.audio import StreamSpec
from earshot.errors import StorageError
from earshot.storage import parts as P
from earshot.storage.archive import Archive
from earshot.storage.objects.remote import ReadCounter, RemoteFile
from earshot.storage.peaks import peaks

RATE = 8000


class Bucket:
    """Objects in memory; ``gets`` the ranges asked for."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.gets: list[tuple[int, int | None]] = []

    def iter_range(self, name: str, start: int = 0, end: int | None = None,
                   chunk_size: int = 1 << 16) -> Iterator[bytes]:
        self.gets.append((start, end))
        data = self.objects[name][start:end]
        for i in range(0, len(data), chunk_size):
            yield data[i:i + chunk_size]

    def put(self, path: Path, data_dir: Path) -> None:
        self.objects[str(path.relative_to(data_dir))] = path.read_bytes()
        path.unlink()

    def remote(self, counter: ReadCounter | None = None) -> dict[str, P.RemoteFile]:
        return {k.rsplit("/", 1)[-1]: RemoteFile(self, k, len(v), counter)
                for k, v in self.objects.items()}


def record(tmp_path: Path, seconds: float, part_s: float, seed: int = 0) -> tuple[
        Archive, np.ndarray]:
    x = np.random.default_rng(seed).integers(-30000, 30000, int(seconds * RATE), np.int16)
    (tmp_path / "streams").mkdir(exist_ok=True)
    a = Archive.create(tmp_path / "streams" / "s.wav", StreamSpec("s16", RATE, 1), "wav",
                       part_seconds=part_s)
    a.append(x.tobytes())
    a.close()
    return a, x


def read(parts: list[P.Part], a: int, b: int) -> np.ndarray:
    return np.frombuffer(b"".join(P.iter_frames(parts, a, b)), np.int16)


def test_an_archive_wholly_in_the_bucket_reads_back_by_ranged_gets(tmp_path: Path) -> None:
    a, x = record(tmp_path, 2.0, 0.5)
    bucket = Bucket()
    for n in range(4):
        bucket.put(P.part_path(a.base, n), tmp_path)
    counter = ReadCounter()
    parts = P.load_known(a.base, {1: 4000, 2: 8000, 3: 12000}, bucket.remote(counter),
                         rate=RATE)
    assert [(p.n, p.start, p.frames) for p in parts] == [(0, 0, 4000), (1, 4000, 4000),
                                                         (2, 8000, 4000), (3, 12000, 4000)]
    assert all(isinstance(p.path, RemoteFile) for p in parts)
    assert np.array_equal(read(parts, 0, 16000), x)
    before = counter.bytes
    assert np.array_equal(read(parts, 5000, 5100), x[5000:5100])
    assert counter.bytes - before == 200  # the 100 frames (headers: read once per load)
    assert bucket.gets[-1] == (44 + 2000, 44 + 2200)
    lo, hi, frames = peaks(a.base, 16, parts=parts)
    sf.write(tmp_path / "truth.wav", x, RATE, subtype="PCM_16")
    assert (lo, hi, frames) == peaks(tmp_path / "truth.wav", 16)


def test_local_parts_are_read_from_disk_and_the_rest_from_the_bucket(tmp_path: Path) -> None:
    a, x = record(tmp_path, 2.0, 0.5)
    bucket = Bucket()
    bucket.put(P.part_path(a.base, 0), tmp_path)  # removed here after its upload
    bucket.put(P.part_path(a.base, 1), tmp_path)
    parts = P.load_known(a.base, {}, bucket.remote(), rate=RATE)  # starts from the sidecar
    assert [type(p.path).__name__ for p in parts] == ["RemoteFile", "RemoteFile",
                                                      "PosixPath", "PosixPath"]
    assert np.array_equal(read(parts, 3000, 13000), x[3000:13000])


def test_a_continued_archive_clips_the_dead_gateway_s_part_at_the_next_start(
        tmp_path: Path) -> None:
    """Gateway A wrote part 0 up to frame 9000 and died; the client had 8000 acknowledged
    and B continued in part 1 from 8000: part 0 counts up to 8000 only."""
    x = np.random.default_rng(1).integers(-30000, 30000, 14000, np.int16)
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    for d in (a_dir, b_dir):
        (d / "streams").mkdir(parents=True)
    spec = StreamSpec("s16", RATE, 1)
    on_a = Archive.create(a_dir / "streams" / "s.wav", spec, "wav")
    on_a.append(x[:9000].tobytes())
    on_a.close()
    on_b = Archive.continue_at(b_dir / "streams" / "s.wav", spec, "wav", [0, 8000])
    assert on_b.frames == 8000 and on_b.continued
    on_b.append(x[8000:].tobytes())
    on_b.close()
    bucket = Bucket()
    with pytest.raises(StorageError, match="not in the object store yet"):
        P.load_known(b_dir / "streams" / "s.wav", {1: 8000}, bucket.remote(), rate=RATE)
    bucket.put(a_dir / "streams" / "s.wav", a_dir)  # A is back and uploads it
    parts = P.load_known(b_dir / "streams" / "s.wav", {1: 8000}, bucket.remote(), rate=RATE)
    assert [(p.start, p.frames) for p in parts] == [(0, 8000), (8000, 6000)]
    assert np.array_equal(read(parts, 0, 14000), x)
    again = Archive.reopen_last(b_dir / "streams" / "s.wav", spec, "wav")  # resumed on B
    assert again.frames == 14000
    again.close()


def test_nothing_anywhere_is_gone_and_flac_parts_decode_from_the_bucket(
        tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        P.load_known(tmp_path / "streams" / "none.wav", {}, {}, rate=RATE)
    x = np.random.default_rng(2).integers(-30000, 30000, 20000, np.int16)
    (tmp_path / "streams").mkdir()
    flac = tmp_path / "streams" / "f.flac"
    sf.write(flac, x, RATE, format="FLAC", subtype="PCM_16")
    bucket = Bucket()
    bucket.put(flac, tmp_path)
    parts = P.load_known(tmp_path / "streams" / "f.wav", {}, bucket.remote(), rate=RATE)
    assert (parts[0].frames, parts[0].encoding) == (20000, "pcm16")
    assert np.array_equal(read(parts, 12345, 15000), x[12345:15000])
