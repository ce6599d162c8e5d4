"""An archive rotated into parts: one logical stream, one offset space, several files.

A live archive is cut into a new part every ``archive_part`` seconds of audio (at a frame
boundary, inside :class:`~earshot.storage.archive.Archive`), so no file nears the WAV 4 GiB
limit however long the stream runs. Part 0 keeps the stream's usual path; later parts sit
beside it::

    streams/ID.wav            part 0, frames [0, s1)        (ID.flac / ID.ogg once finished)
    streams/ID.part0001.wav   part 1, frames [s1, s2)
    streams/ID.part0002.wav   ...
    streams/ID.parts.json     {"rate": R, "starts": [0, s1, s2, ...]}  (+ "frames" once final)

A stream that never rotated has no sidecar and looks exactly as before. The sidecar is
written (atomically) each time a part is created, after its file; a crash between the two
leaves an empty unlisted part, which :func:`recover` (start-up repair) adds back. Readers
trust the sidecar only: a part it does not list holds nothing acknowledged.

The arithmetic (offset → part, range → pieces of parts) is a pure core:
:func:`locate`, :func:`split_range`, :func:`reconcile`, :func:`chunks`.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from earshot.errors import StorageError
from earshot.fsutil import fsync_dir
from earshot.storage.ranges import read_bytes
from earshot.storage.wav import WavEncoding, parse_layout

FINAL_SUFFIXES = (".flac", ".ogg")
SUFFIXES = (*FINAL_SUFFIXES, ".wav")  # a finished part wins over a .wav left by a crash


# -- the pure core ---------------------------------------------------------------------------
def locate(starts: list[int], offset: int) -> int:
    """The part holding stream frame ``offset`` (the last part for offsets past the end)."""
    if offset < 0:
        raise ValueError(f"offset {offset} < 0")
    return max(0, bisect.bisect_right(starts, offset) - 1)


def split_range(starts: list[int], total: int, a: int, b: int) -> list[tuple[int, int, int]]:
    """Stream frames ``[a, b)`` as ``(part, local start, local end)`` pieces, in order,
    clipped to the ``total`` frames held; empty parts are skipped."""
    b = min(b, total)
    out: list[tuple[int, int, int]] = []
    if b <= a:
        return out
    for n in range(locate(starts, a), len(starts)):
        s = starts[n]
        e = starts[n + 1] if n + 1 < len(starts) else total
        if s >= b:
            break
        lo, hi = max(a, s), min(b, e)
        if hi > lo:
            out.append((n, lo - s, hi - s))
    return out


def reconcile(listed: list[int], frames: list[int]) -> list[int]:
    """Start offsets of parts found on disk holding ``frames`` each: those the sidecar lists
    (``listed``) are kept, the rest follow on from the previous part's end."""
    if not frames:
        return []
    starts = [0]
    for n in range(1, len(frames)):
        starts.append(listed[n] if n < len(listed) else starts[-1] + frames[n - 1])
    return starts


def chunks(held: int, part_frames: int, frames: int) -> list[int]:
    """How ``frames`` appended to a part already holding ``held`` frames split across parts
    of ``part_frames`` (0: never rotate): the sizes, the first for the current part (0 when
    it is full). A new part starts only when audio goes into it."""
    if part_frames <= 0:
        return [frames]
    out = [max(0, min(frames, part_frames - held))]
    left = frames - out[0]
    while left > 0:
        out.append(min(left, part_frames))
        left -= out[-1]
    return out


# -- names on disk ---------------------------------------------------------------------------
def part_path(base: Path, n: int, suffix: str = ".wav") -> Path:
    """Part ``n`` of the archive whose part 0 is ``base`` (``streams/ID.wav``)."""
    stem = base.name.split(".", 1)[0]
    if n == 0:
        return base.with_name(stem + suffix)
    return base.with_name(f"{stem}.part{n:04d}{suffix}")


def sidecar_path(base: Path) -> Path:
    return base.with_name(base.name.split(".", 1)[0] + ".parts.json")


def find_part(base: Path, n: int) -> Path:
    """The file of part ``n``: its finished form if there is one, else its live WAV."""
    for suffix in SUFFIXES:
        p = part_path(base, n, suffix)
        if p.exists():
            return p
    return part_path(base, n, base.suffix or ".wav")


def read_sidecar(base: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(sidecar_path(base).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot read {sidecar_path(base).name}: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("starts"), list):
        raise StorageError(f"{sidecar_path(base).name} is not a parts list")
    return meta


def write_sidecar(base: Path, meta: dict[str, Any], *, fsync: bool = True) -> None:
    """Atomically (temporary file, rename; fsynced with its directory by default)."""
    target = sidecar_path(base)
    tmp = target.with_name(target.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, json.dumps(meta, separators=(",", ":")).encode())
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    if fsync:
        fsync_dir(target.parent)




def on_disk(base: Path) -> list[Path]:
    """Every part file there is, in order (one directory listing): for recovery."""
    stem = base.name.split(".", 1)[0]
    pat = re.compile(rf"^{re.escape(stem)}\.part(\d+)\.(wav|flac|ogg)$")
    found: dict[int, Path] = {}
    for p in base.parent.glob(f"{stem}.part*"):
        m = pat.match(p.name)
        if m:
            n = int(m.group(1))
            if n not in found or p.suffix != ".wav":
                found[n] = p
    parts = [find_part(base, 0)]
    n = 1
    while n in found:  # a hole (never made by us) ends the archive there
        parts.append(found[n])
        n += 1
    return parts


# -- reading -----------------------------------------------------------------------------------
class RemoteFile(Protocol):
    """A part's file in the object store (:class:`earshot.storage.objects.remote.RemoteFile`):
    read by ranged GETs, never whole for a small range."""

    name: str
    suffix: str
    size: int

    def pread(self, offset: int, length: int) -> bytes: ...
    def iter_range(self, start: int, end: int, chunk: int = ...) -> Iterator[bytes]: ...
    def open(self) -> BinaryIO: ...


Source = Path | RemoteFile


@dataclass(frozen=True, slots=True)
class Part:
    """One part as a reader sees it, in the frames of its file (its ``rate``); its file on
    the local disk (a Path) or in the object store (a :class:`RemoteFile`)."""

    n: int
    path: Source
    start: int  # frames before it
    frames: int
    rate: int
    channels: int
    encoding: WavEncoding  # of what reading it yields: WAV as stored, FLAC pcm16, Ogg float

    @property
    def frame_bytes(self) -> int:
        return (2 if self.encoding == "pcm16" else 4) * self.channels

    @property
    def end(self) -> int:
        return self.start + self.frames


def sound_file(src: Source) -> Any:
    """A soundfile.SoundFile reading a part's file, local or remote."""
    import soundfile as sf

    return sf.SoundFile(src if isinstance(src, Path) else src.open())


def _open_info(path: Source) -> tuple[int, int, int, WavEncoding]:
    """(frames, rate, channels, encoding) of one part file."""
    if not isinstance(path, Path):
        if path.suffix == ".wav":
            lay = parse_layout(path.pread(0, 4096))
            return (max(0, (path.size - lay.data_start) // lay.frame_bytes), lay.rate,
                    lay.channels, lay.encoding)
        try:
            with sound_file(path) as f:
                frames, rate, ch, sub = f.frames, f.samplerate, f.channels, f.subtype
        except RuntimeError as exc:
            raise StorageError(f"cannot read {path.name}: {exc}") from None
        return frames, rate, ch, "pcm16" if sub.startswith("PCM_16") else "float32"
    if path.suffix == ".wav":
        with open(path, "rb") as f:
            lay = parse_layout(f.read(4096))
            size = os.fstat(f.fileno()).st_size
        return (max(0, (size - lay.data_start) // lay.frame_bytes), lay.rate, lay.channels,
                lay.encoding)
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except RuntimeError as exc:
        raise StorageError(f"cannot read {path.name}: {exc}") from None
    enc: WavEncoding = "pcm16" if info.subtype.startswith("PCM_16") else "float32"
    return info.frames, info.samplerate, info.channels, enc


def file_frames(path: Source) -> int:
    """The frames one part file holds."""
    return _open_info(path)[0]


def load(base: Path) -> list[Part]:
    """The parts of the archive whose part 0 is ``base`` (a stream that never rotated: one).
    Raises FileNotFoundError when part 0 is gone, StorageError while it is being finalized.

    Only the last part's file is opened (its frames grow while live); the others' lengths
    come from the sidecar, so a weeks-long stream costs one small read per request, not
    one per part."""
    meta = read_sidecar(base)
    if meta is None:
        path = find_part(base, 0) if not base.exists() else base
        frames, rate, ch, enc = _open_info(path)
        return [Part(0, path, 0, frames, rate, ch, enc)]
    starts = [int(s) for s in meta["starts"]]
    paths = [find_part(base, n) for n in range(len(starts))]
    if len({p.suffix == ".wav" for p in paths}) > 1:
        raise StorageError(f"the archive {base.name} is being finalized; try again shortly")
    held, rate, ch, enc = _open_info(paths[-1])
    stream_rate = int(meta.get("rate") or 0)
    scale = rate / stream_rate if stream_rate and stream_rate != rate else 1.0
    ends = [round(s * scale) for s in starts[1:]]
    total = meta.get("frames")
    last = round(starts[-1] * scale)
    ends.append(last + held if total is None else min(last + held, round(int(total) * scale)))
    begins = [round(s * scale) for s in starts]
    return [Part(n, path, a, max(0, e - a), rate, ch, enc)
            for n, (path, a, e) in enumerate(zip(paths, begins, ends, strict=True))]


def load_known(base: Path, known: Mapping[int, int], remote: Mapping[str, RemoteFile], *,
               rate: int) -> list[Part]:
    """The parts of an archive that may be spread over gateways and the object store (issue
    23): ``known`` the start of each part the metadata store knows (part number → stream
    frame), ``remote`` the files in the object store by name, ``rate`` the stream's.

    The local sidecar (if any) and ``known`` together give each part's start; each part's
    file is the local one when there is one (its finished form first), else the object.
    Every part but the last holds up to the next one's start (what its file holds beyond
    it was never acknowledged: a gateway that died, the stream continued elsewhere); the
    last, what its file holds. FileNotFoundError when part 0 is nowhere, StorageError when
    an earlier part is not in the object store yet."""
    meta = read_sidecar(base)
    starts: dict[int, int] = {0: 0}
    if meta is not None:
        starts.update(enumerate(int(s) for s in meta["starts"]))
    starts.update(known)
    order: list[int] = []
    while len(order) in starts:
        order.append(starts[len(order)])
    files: list[Source] = []
    for n in range(len(order)):
        local = find_part(base, n)
        if local.exists():
            files.append(local)
            continue
        got = next((remote[part_path(base, n, suf).name] for suf in SUFFIXES
                    if part_path(base, n, suf).name in remote), None)
        if got is None:
            if n == 0 and len(order) == 1:
                raise FileNotFoundError(f"{base.name}: no part 0 here or in the object store")
            if n == len(order) - 1 and n > 0:  # claimed, nothing written yet
                order.pop()
                break
            raise StorageError(f"part {n} of {base.name} is not in the object store yet (its "
                               "gateway uploads it when it is back)")
        files.append(got)
    held, frate, ch, enc = _open_info(files[-1])
    srate = int((meta or {}).get("rate") or rate)
    scale = frate / srate if srate and srate != frate else 1.0
    begins = [round(s * scale) for s in order]
    ends = [*begins[1:], begins[-1] + held]
    total = (meta or {}).get("frames")
    if total is not None and len(files) == len((meta or {}).get("starts", [])):
        ends[-1] = min(ends[-1], round(int(total) * scale))
    return [Part(n, f, a, max(0, e - a), frate, ch, enc)
            for n, (f, a, e) in enumerate(zip(files, begins, ends, strict=True))]


def total_frames(parts: list[Part]) -> int:
    return parts[-1].end if parts else 0


def kind(parts: list[Part]) -> tuple[WavEncoding, int, int]:
    """(encoding, rate, channels) of what reading the parts yields; one for all parts."""
    kinds = {(p.encoding, p.rate, p.channels) for p in parts}
    if len(kinds) != 1:
        raise StorageError(f"the parts of {parts[0].path.name} differ: {sorted(kinds)}")
    return kinds.pop()


def iter_frames(parts: list[Part], a: int, b: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    """Frames ``[a, b)`` of the whole archive as raw interleaved samples in the parts'
    :func:`kind` encoding, in chunks of at most ``chunk`` bytes (about; decoded parts by
    blocks). WAV parts are read with ``os.pread`` (only the range), FLAC/Ogg decoded from a
    seek. Exactly ``(b - a) * frame_bytes`` bytes (zeros if a file shrank under us)."""
    starts = [p.start for p in parts]
    for n, lo, hi in split_range(starts, total_frames(parts), a, b):
        p = parts[n]
        want = (hi - lo) * p.frame_bytes
        got = 0
        for data in _read_part(p, lo, hi, chunk):
            data = data[: want - got]
            got += len(data)
            yield data
            if got >= want:
                break
        while got < want:  # never short: the header promised these bytes
            pad = min(chunk, want - got)
            got += pad
            yield bytes(pad)


def _read_part(p: Part, lo: int, hi: int, chunk: int) -> Iterator[bytes]:
    """WAV parts in the expected layout: their bytes as they are (``os.pread``, only the
    range); anything else (FLAC, Ogg) decoded from a seek to the expected sample type."""
    fb = p.frame_bytes
    lay = None
    src = p.path
    if not isinstance(src, Path):
        if src.suffix == ".wav":
            lay = parse_layout(src.pread(0, 4096))
            if (lay.encoding, lay.rate, lay.channels) == (p.encoding, p.rate, p.channels):
                yield from src.iter_range(lay.data_start + lo * fb, lay.data_start + hi * fb,
                                          max(fb, chunk // fb * fb))
                return
        yield from _decode(p, lo, hi, chunk)
        return
    if src.suffix == ".wav":
        with open(src, "rb") as f:
            lay = parse_layout(f.read(4096))
        if (lay.encoding, lay.rate, lay.channels) != (p.encoding, p.rate, p.channels):
            lay = None
    if lay is not None:
        yield from read_bytes(src, lay.data_start + lo * fb, (hi - lo) * fb,
                              max(fb, chunk // fb * fb))
        return
    yield from _decode(p, lo, hi, chunk)


def _decode(p: Part, lo: int, hi: int, chunk: int) -> Iterator[bytes]:
    fb = p.frame_bytes
    dtype = "int16" if p.encoding == "pcm16" else "float32"
    with sound_file(p.path) as f:
        f.seek(lo)
        left = hi - lo
        block = max(1, chunk // fb)
        while left > 0:
            x = f.read(min(block, left), dtype=dtype, always_2d=True)
            if not len(x):
                return
            left -= len(x)
            yield x.astype("<i2" if dtype == "int16" else "<f4", copy=False).tobytes()


def rf64_header(encoding: WavEncoding, rate: int, channels: int, data_bytes: int) -> bytes:
    """An RF64 header (EBU Tech 3306) for a WAV of more than 4 GiB: ``ds64`` holds the
    64-bit sizes; the 32-bit ones are 0xFFFFFFFF."""
    sample = 2 if encoding == "pcm16" else 4
    fb = sample * channels
    tag = 1 if encoding == "pcm16" else 3
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * fb, fb, sample * 8)
    chunks_ = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    head_len = 4 + (8 + 28) + len(chunks_) + 8  # WAVE, ds64, fmt, data header
    ds64 = b"ds64" + struct.pack("<IQQQI", 28, head_len + data_bytes, data_bytes,
                                 data_bytes // fb, 0)
    return (b"RF64" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + ds64 + chunks_ + b"data"
            + struct.pack("<I", 0xFFFFFFFF))


def wav_header(encoding: WavEncoding, rate: int, channels: int, data_bytes: int) -> bytes:
    """A plain WAV header, or RF64 past the 32-bit size limit."""
    from earshot.storage.wav import MAX_DATA_BYTES, header

    if data_bytes > MAX_DATA_BYTES:
        return rf64_header(encoding, rate, channels, data_bytes)
    return header(encoding, rate, channels, data_bytes)


# -- recovery ----------------------------------------------------------------------------------
def recover(base: Path, fmt: str = "wav") -> int:
    """Start-up repair of a live archive a crash left open; returns the frames it holds.

    Every WAV part is repaired (idempotent: a consistent one is left byte-for-byte as is),
    parts created but not yet listed are added to the sidecar. When some parts are already
    in their finished form (a crash while finalizing, ``fmt`` flac or ogg), the others are
    finalized too and FileNotFoundError is raised for part 0's WAV: the stream had stopped and is
    finished (the caller finds part 0's finished file)."""
    from earshot.storage.wav import repair

    paths = on_disk(base)
    try:
        meta = read_sidecar(base)
    except StorageError:  # torn by a power cut before its fsync: rebuilt from the parts
        meta = None
    if meta is None and len(paths) == 1:
        return repair(base)
    if any(p.suffix != ".wav" for p in paths):
        from earshot.storage.finalize import finalize_one

        finalize_parts(base, paths, meta, lambda p: finalize_one(p, fmt))
        raise FileNotFoundError(f"{base.name}: finalized after a crash while finishing")
    frames = [repair(p) for p in paths]
    listed = [int(s) for s in (meta or {}).get("starts", [0])]
    starts = reconcile(listed, frames)
    if starts != listed:
        rate = int((meta or {}).get("rate") or _open_info(paths[0])[1])
        write_sidecar(base, {"rate": rate, "starts": starts})
    return starts[-1] + frames[-1]


def finalize_parts(base: Path, paths: list[Path], meta: dict[str, Any] | None,
                   finalize_part: Callable[[Path], Path]) -> None:
    """Finalize every part still a WAV: the later parts first, then the sidecar (with the
    total), then part 0, so that part 0's finished file means the whole archive is."""
    conv = finalize_part
    frames = []
    for p in paths:
        frames.append(_open_info(p)[0] if p.suffix == ".wav" else None)
    meta = dict(meta or {})
    starts = [int(s) for s in meta.get("starts", [0])]
    if len(starts) < len(paths) and all(f is not None for f in frames):
        starts = reconcile(starts, [f or 0 for f in frames])
    if "frames" not in meta:
        last = paths[-1]
        held = frames[-1] if frames[-1] is not None else _open_info(last)[0]
        meta["frames"] = starts[len(paths) - 1] + held
    meta["starts"] = starts[: len(paths)]
    if "rate" not in meta:
        meta["rate"] = _open_info(paths[0])[1]
    for p in reversed(paths[1:]):
        if p.suffix == ".wav":
            _finish_one(p, conv)
    write_sidecar(base, meta)
    if paths[0].suffix == ".wav":
        _finish_one(paths[0], conv)


def _finish_one(path: Path, conv: Callable[[Path], object]) -> None:
    for suffix in FINAL_SUFFIXES:
        done = path.with_suffix(suffix)
        if done.exists():  # converted, the WAV not yet removed
            path.unlink(missing_ok=True)
            return
    conv(path)


def is_rotated(base: Path) -> bool:
    """Whether the archive whose part 0 is ``base`` has more than one part (a sidecar)."""
    return sidecar_path(base).exists()
