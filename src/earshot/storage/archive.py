"""One stream's lossless archive: wire audio converted to the archive encoding, appended.

Archive formats:

* ``wav`` (default) — PCM16 WAV. s16 input is stored bit-exact; f32 input is converted
  (saturating, NaN/Inf → 0, within 1 LSB).
* ``wav-f32`` — 32-bit float WAV; f32 input is stored exactly (after NaN/Inf → 0 and
  saturation to ±1.0).
* ``flac`` — written as PCM16 WAV while live (crash-safe) and losslessly converted to FLAC
  when the stream finishes.
* ``ogg`` — Ogg Opus (lossy, about 30x smaller): PCM16 WAV while live, encoded at 32 kbit/s
  when the stream finishes (at 48 kHz if the stream's rate is not an Opus rate).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from earshot.audio import (
    ArchiveFormat,
    StreamSpec,
    f32_to_s16,
    s16_to_f32,
    sanitize_f32,
)
from earshot.errors import StorageError
from earshot.fsutil import fsync_dir
from earshot.storage import parts as P
from earshot.storage.finalize import FINAL_SUFFIX, finalize_one
from earshot.storage.parts import chunks
from earshot.storage.wav import MAX_DATA_BYTES, WavEncoding, WavWriter

MEDIA_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg"}


@dataclass(slots=True)
class AppendResult:
    frames: int
    non_finite: int = 0
    clipped: int = 0
    written: bytes | bytearray | memoryview = b""  # appended, in the archive's encoding


def encoding_for(fmt: ArchiveFormat) -> WavEncoding:
    return "float32" if fmt == "wav-f32" else "pcm16"


class Archive:
    """Appends a stream's wire audio to its archive, converting as needed, rotating into a
    new part every ``part_frames`` frames (0: one file; storage/parts.py)."""

    def __init__(self, writer: WavWriter, spec: StreamSpec, fmt: ArchiveFormat, *,
                 base: Path | None = None, starts: list[int] | None = None,
                 part_frames: int = 0) -> None:
        self.part = writer  # the part being written
        self.spec = spec
        self.format = fmt
        self._encoding = writer.layout.encoding
        self.base = base or writer.path  # part 0's path
        self.starts = starts or [0]  # stream frame of each part's first frame
        self.part_frames = max(0, part_frames)
        fb = writer.layout.frame_bytes
        if self.part_frames and self.part_frames * fb > MAX_DATA_BYTES:
            self.part_frames = MAX_DATA_BYTES // fb  # no part ever nears the 4 GiB limit
        self._unsynced: list[Path] = []  # closed parts (and the sidecar) not yet fsynced
        self.writer = _PartsWriter(self)
        #: called after a rotation with the archive and the number of the part just closed
        #: (the archive store uploads it: server/streams/objects.py)
        self.on_rotate: Callable[[Archive, int], None] | None = None

    @staticmethod
    def frames_for(seconds: float, rate: int) -> int:
        """The part size in frames for ``archive_part`` seconds (0: one file)."""
        return max(1, round(seconds * rate)) if seconds > 0 else 0

    @classmethod
    def create(cls, path: Path, spec: StreamSpec, fmt: ArchiveFormat, *,
               part_seconds: float = 0.0, fsync: bool = False) -> Archive:
        """``path`` is the live file (always a ``.wav``): part 0. ``fsync``: its header
        and its directory entry are made durable now (before the stream is registered)."""
        writer = WavWriter.create(path, encoding_for(fmt), spec.rate, spec.channels)
        if fsync:
            writer.fsync()
            fsync_dir(path.parent)
        return cls(writer, spec, fmt, part_frames=cls.frames_for(part_seconds, spec.rate))

    @classmethod
    def reopen(cls, path: Path, spec: StreamSpec, fmt: ArchiveFormat, *,
               part_seconds: float = 0.0) -> Archive:
        """Continue the archive whose part 0 is ``path``: its last part, repaired, at the
        total offset across parts."""
        if not P.is_rotated(path) and len(P.on_disk(path)) == 1:
            starts, last = [0], path
        else:
            P.recover(path)  # repairs the parts and lists any the sidecar missed
            starts = [int(s) for s in (P.read_sidecar(path) or {}).get("starts", [0])]
            last = P.part_path(path, len(starts) - 1)
        writer = WavWriter.reopen(last)
        layout = writer.layout
        if (layout.rate, layout.channels) != (spec.rate, spec.channels):
            writer.close()
            raise StorageError(
                f"archive {path.name} is {layout.rate} Hz x{layout.channels}, "
                f"not {spec.rate} Hz x{spec.channels}"
            )
        return cls(writer, spec, fmt, base=path, starts=starts,
                   part_frames=cls.frames_for(part_seconds, spec.rate))

    @classmethod
    def continue_at(cls, path: Path, spec: StreamSpec, fmt: ArchiveFormat, starts: list[int],
                    *, part_seconds: float = 0.0) -> Archive:
        """Continue, on this gateway, an archive whose earlier parts are elsewhere (another
        gateway's disk, the object store): a new part ``len(starts) - 1`` beginning at
        stream frame ``starts[-1]``, listed with the earlier parts' starts in the sidecar.
        ``path`` is part 0's (absent here)."""
        n = len(starts) - 1
        if n < 1:
            raise ValueError("a continued archive starts at part 1 or later")
        new = P.part_path(path, n)
        writer = WavWriter.create(new, encoding_for(fmt), spec.rate, spec.channels)
        archive = cls(writer, spec, fmt, base=path, starts=list(starts),
                      part_frames=cls.frames_for(part_seconds, spec.rate))
        try:
            archive._list_parts(archive.starts)
        except BaseException:
            writer.close()
            new.unlink(missing_ok=True)
            raise
        return archive

    @classmethod
    def reopen_last(cls, path: Path, spec: StreamSpec, fmt: ArchiveFormat, *,
                    part_seconds: float = 0.0) -> Archive:
        """Continue a continued archive (:meth:`continue_at`; part 0 not here): its last
        listed part, repaired, at the offset the sidecar and that part give."""
        from earshot.storage.wav import repair

        meta = P.read_sidecar(path)
        if meta is None:
            raise FileNotFoundError(f"{path.name}: no parts here")
        starts = [int(s) for s in meta["starts"]]
        last = P.part_path(path, len(starts) - 1)
        repair(last)
        writer = WavWriter.reopen(last)
        return cls(writer, spec, fmt, base=path, starts=starts,
                   part_frames=cls.frames_for(part_seconds, spec.rate))

    @property
    def continued(self) -> bool:
        """Whether some part is not on this disk (elsewhere: another gateway, the object
        store); such an archive is left as written at its stop (no FLAC/Ogg conversion)."""
        return not all(any(P.part_path(self.base, n, s).exists() for s in P.SUFFIXES)
                       for n in range(len(self.starts)))

    @property
    def frames(self) -> int:
        """Frames across all parts: the stream's offset."""
        return self.starts[-1] + self.part.frames

    @property
    def sample_format(self) -> str:
        """How the archived samples are laid out: ``s16`` or ``f32`` (little-endian,
        interleaved): the layout of :attr:`AppendResult.written`."""
        return "s16" if self._encoding == "pcm16" else "f32"

    @property
    def path(self) -> Path:
        """Part 0's path: what names the archive (readers find the parts from it)."""
        return self.base

    def append(self, data: bytes | bytearray) -> AppendResult:
        """Append whole frames of wire-format audio. Returns what had to be fixed."""
        wire = self.spec.format
        frames = len(data) // self.spec.frame_bytes
        result = AppendResult(frames)
        if wire == "s16" and self._encoding == "pcm16":
            self._write(data)
            result.written = data
            return result
        if wire == "s16":
            out = s16_to_f32(np.frombuffer(data, "<i2")).astype("<f4")
        else:
            x = np.frombuffer(data, "<f4")
            fixed = f32_to_s16(x) if self._encoding == "pcm16" else sanitize_f32(x)
            out = fixed.samples
            result.non_finite, result.clipped = fixed.non_finite, fixed.clipped
        result.written = memoryview(out.data).cast("B")  # (no copy: os.write takes it)
        self._write(result.written)
        return result

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        """Into the current part, rotating at a frame boundary when it is full."""
        fb = self.part.layout.frame_bytes
        if len(data) % fb:
            raise StorageError(f"{len(data)} bytes is not a whole number of {fb}-byte frames")
        part = self.part
        if not self.part_frames or part.frames + len(data) // fb <= self.part_frames:
            part.write(data)  # the common case: it fits in the current part
            return
        view = memoryview(data)
        for i, n in enumerate(chunks(part.frames, self.part_frames, len(data) // fb)):
            if i:
                self._rotate()
            if n:
                self.part.write(view[: n * fb])
                view = view[n * fb:]

    def _rotate(self) -> None:
        """Close the full part (header patched) and start the next: its file first, then
        the sidecar that lists it (a crash between leaves an empty unlisted part, which
        recovery lists). Nothing is fsynced here, on the event loop: with ``--fsync`` the
        next ``sync(fsync=True)`` (before the ack, in a thread) fsyncs the closed part, the
        sidecar and the directory too."""
        offset = self.frames
        path = P.part_path(self.base, len(self.starts))
        new = WavWriter.create(path, self._encoding, self.spec.rate, self.spec.channels)
        try:  # (a full disk here leaves everything as it was: the old part is kept open)
            self._list_parts([*self.starts, offset])
        except BaseException:
            new.close()
            path.unlink(missing_ok=True)
            raise
        self.part.close()
        self._unsynced.append(self.part.path)
        self.part = new
        self.starts.append(offset)
        if self.on_rotate is not None:
            self.on_rotate(self, len(self.starts) - 2)

    def _list_parts(self, starts: list[int]) -> None:
        P.write_sidecar(self.base, {"rate": self.spec.rate, "starts": starts}, fsync=False)
        self._unsynced.append(P.sidecar_path(self.base))

    def truncate(self, frames: int) -> None:
        """Cut the archive back to ``frames`` in all (never grows it); parts left empty
        past the cut are removed."""
        while len(self.starts) > 1 and frames <= self.starts[-1]:
            self.part.close()
            self.part.path.unlink()
            self.starts.pop()
            self._list_parts(self.starts)
            self.part = WavWriter.reopen(P.part_path(self.base, len(self.starts) - 1))
        self.part.truncate(frames - self.starts[-1])

    def sync(self, fsync: bool = False) -> None:
        self.part.sync_header()
        if fsync:
            self.part.fsync()
            if self._unsynced:
                done, self._unsynced = self._unsynced, []
                for path in dict.fromkeys(done):
                    with contextlib.suppress(FileNotFoundError):  # (a part truncated away)
                        fd = os.open(path, os.O_RDONLY)
                        try:
                            os.fsync(fd)
                        finally:
                            os.close(fd)
                fsync_dir(self.base.parent)

    def close(self) -> None:
        self.part.close()


class _PartsWriter:
    """``archive.writer`` as the stream writer and the hub use it (closed, truncate in
    stream frames), across parts."""

    def __init__(self, archive: Archive) -> None:
        self._archive = archive

    @property
    def closed(self) -> bool:
        return self._archive.part.closed

    @property
    def frames(self) -> int:
        return self._archive.frames

    def truncate(self, frames: int) -> None:
        self._archive.truncate(frames)

    def sync_header(self) -> None:
        self._archive.part.sync_header()

    def fsync(self) -> None:
        self._archive.part.fsync()

    def close(self) -> None:
        self._archive.close()


def finalize(path: Path, fmt: ArchiveFormat, fsync: bool = False) -> Path:
    """Turn a closed live archive (``path``: part 0's WAV) into its final form; returns
    part 0's final path. Every part is finalized like a one-file archive (the later parts
    first, part 0 last: see storage/parts.py).

    For FLAC and Ogg Opus, converts block by block (never the whole file in memory), then
    replaces the WAV atomically. Other formats are already final. ``fsync`` (``--fsync``):
    each new file fsynced before its rename, the directory after it, before a WAV goes.
    """
    meta = P.read_sidecar(path)
    if meta is None:
        return finalize_one(path, fmt, fsync)
    if fmt in FINAL_SUFFIX:
        P.finalize_parts(path, P.on_disk(path), meta, lambda p: finalize_one(p, fmt, fsync))
    else:
        P.finalize_parts(path, P.on_disk(path), meta, lambda p: p)
    return P.find_part(path, 0)
