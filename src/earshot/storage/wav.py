"""A crash-safe, append-only WAV writer, and repair of WAV files left open by a crash.

Audio is appended with plain ``os.write`` calls — no user-space buffer — so once a write
returns, the bytes belong to the OS and survive ``kill -9`` of this process (``fsync`` adds
power-loss safety). The RIFF/data size fields are patched in place with ``pwrite`` every
so often and on close; after a crash, :func:`repair` recomputes them from the file size and
drops a trailing partial frame, which is exactly the audio that was never acknowledged.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from earshot.errors import StorageError

WavEncoding = Literal["pcm16", "float32"]
_FORMAT_TAG = {"pcm16": 1, "float32": 3}
_SAMPLE_BYTES = {"pcm16": 2, "float32": 4}
MAX_DATA_BYTES = 0xFFFFFFFF - 64


@dataclass(frozen=True, slots=True)
class WavLayout:
    """Where things are in a WAV file we wrote (or parsed)."""

    encoding: WavEncoding
    rate: int
    channels: int
    data_start: int  # byte offset of the first sample
    fact_pos: int | None  # byte offset of the fact chunk's frame count, if any

    @property
    def frame_bytes(self) -> int:
        return _SAMPLE_BYTES[self.encoding] * self.channels


def header(encoding: WavEncoding, rate: int, channels: int, data_bytes: int = 0) -> bytes:
    """A canonical WAV header: RIFF, fmt (16 bytes for PCM, 18 + fact for float), data."""
    frame_bytes = _SAMPLE_BYTES[encoding] * channels
    bits = _SAMPLE_BYTES[encoding] * 8
    fmt = struct.pack(
        "<HHIIHH", _FORMAT_TAG[encoding], channels, rate, rate * frame_bytes, frame_bytes, bits
    )
    chunks = b""
    if encoding == "float32":
        fmt += struct.pack("<H", 0)  # cbSize
        chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
        chunks += b"fact" + struct.pack("<II", 4, data_bytes // frame_bytes)
    else:
        chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body = b"WAVE" + chunks + b"data" + struct.pack("<I", data_bytes)
    return b"RIFF" + struct.pack("<I", len(body) + data_bytes) + body


def parse_layout(head: bytes) -> WavLayout:
    """Find the fmt, fact and data chunks in the first bytes of a WAV file."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise StorageError("not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, ...] | None = None
    fact_pos = None
    while pos + 8 <= len(head):
        cid, size = head[pos : pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if cid == b"fmt ":
            fmt = struct.unpack_from("<HHIIHH", head, pos + 8)
        elif cid == b"fact":
            fact_pos = pos + 8
        elif cid == b"data":
            if fmt is None:
                raise StorageError("WAV data chunk before fmt chunk")
            tag, channels, rate, _, _, bits = fmt
            if (tag, bits) == (1, 16):
                encoding: WavEncoding = "pcm16"
            elif (tag, bits) == (3, 32):
                encoding = "float32"
            else:
                raise StorageError(f"unsupported WAV encoding tag={tag} bits={bits}")
            return WavLayout(encoding, rate, channels, pos + 8, fact_pos)
        pos += 8 + size + (size & 1)
    raise StorageError("no data chunk in the WAV header")


class WavWriter:
    """Append-only WAV writer on a raw file descriptor.

    Use :meth:`create` for a new file and :meth:`reopen` to continue one (after a crash
    or a dropped connection); both leave the file valid at every moment but for the size
    fields, which :meth:`sync_header` brings up to date.
    """

    def __init__(self, path: Path, fd: int, layout: WavLayout, frames: int) -> None:
        self.path = path
        self.layout = layout
        self.frames = frames
        self._fd = fd
        self._synced_frames = -1

    @classmethod
    def create(cls, path: Path, encoding: WavEncoding, rate: int, channels: int) -> WavWriter:
        head = header(encoding, rate, channels)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise StorageError(f"{path} already exists; archives are never overwritten") from None
        try:
            os.write(fd, head)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, parse_layout(head), 0)

    @classmethod
    def reopen(cls, path: Path) -> WavWriter:
        """Open an existing file for appending, repairing it first."""
        frames = repair(path)
        fd = os.open(path, os.O_WRONLY)
        with open(path, "rb") as f:
            layout = parse_layout(f.read(4096))
        os.lseek(fd, layout.data_start + frames * layout.frame_bytes, os.SEEK_SET)
        w = cls(path, fd, layout, frames)
        w._synced_frames = frames
        return w

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append whole frames, already in the file's encoding."""
        fb = self.layout.frame_bytes
        if len(data) % fb:
            raise StorageError(f"{len(data)} bytes is not a whole number of {fb}-byte frames")
        if (self.frames * fb + len(data)) > MAX_DATA_BYTES:
            raise StorageError("WAV archive would exceed 4 GiB; start a new stream")
        n = os.write(self._fd, data)
        while n < len(data):  # short writes are rare; copying the rest is fine then
            n += os.write(self._fd, bytes(data[n:]))
        self.frames += len(data) // fb

    def truncate(self, frames: int) -> None:
        """Cut the file back to ``frames`` (never grows it)."""
        if frames >= self.frames:
            return
        os.ftruncate(self._fd, self.layout.data_start + frames * self.layout.frame_bytes)
        os.lseek(self._fd, 0, os.SEEK_END)
        self.frames = frames
        self.sync_header()

    def sync_header(self) -> None:
        """Patch the RIFF, fact and data sizes to the frames written so far."""
        if self._synced_frames == self.frames or self._fd < 0:
            return
        _patch_sizes(self._fd, self.layout, self.frames)
        self._synced_frames = self.frames

    def fsync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            self.sync_header()
            os.close(self._fd)
            self._fd = -1


def _patch_sizes(fd: int, layout: WavLayout, frames: int) -> None:
    data_bytes = frames * layout.frame_bytes
    os.pwrite(fd, struct.pack("<I", layout.data_start - 8 + data_bytes), 4)
    os.pwrite(fd, struct.pack("<I", data_bytes), layout.data_start - 4)
    if layout.fact_pos is not None:
        os.pwrite(fd, struct.pack("<I", frames), layout.fact_pos)


def repair(path: Path) -> int:
    """Make a WAV left open by a crash valid again; return the frames it holds.

    Drops a trailing partial frame (never acknowledged) and rewrites the size fields.
    Idempotent; a file that is already consistent is left byte-for-byte unchanged.
    """
    with open(path, "r+b") as f:
        layout = parse_layout(f.read(4096))
        size = os.fstat(f.fileno()).st_size
        frames = max(0, size - layout.data_start) // layout.frame_bytes
        end = layout.data_start + frames * layout.frame_bytes
        if end != size:
            f.truncate(end)
        _patch_sizes(f.fileno(), layout, frames)
    return frames
