"""A time range of an archive as a WAV of its own, sample-exact, without reading the rest.

Stream seconds map to frames as ``round(seconds * rate)``: the range ``[start, end)`` is
frames ``[round(start * rate), round(end * rate))``, clipped to what the archive holds.

* The server reads every archive through its parts (storage/parts.py,
  ``parts.iter_frames``): WAV parts (live or finished) from the header and the file size
  only, then the range's bytes copied as they are (``os.pread``), in bounded chunks; FLAC
  and Ogg parts decoded from a seek (libsndfile), block by block.
* :func:`wav_range` and :func:`iter_range` do the same for one WAV file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from earshot.errors import StorageError
from earshot.storage.wav import header, parse_layout

MAX_RANGE_SECONDS = 6 * 3600.0  # one response; longer ranges are split by the caller


class RangeError(StorageError):
    """A range that is empty, reversed or beyond the archive (HTTP 400 / 416)."""

    def __init__(self, message: str, *, beyond: bool = False) -> None:
        super().__init__(message)
        self.beyond = beyond


def frame_range(start: float | None, end: float | None, rate: int, held: int) -> tuple[int, int]:
    """Seconds ``[start, end)`` (None: from the beginning / to the end) as frames, clipped
    to the ``held`` frames of the archive. Pure."""
    a = 0 if start is None else round(start * rate)
    b = held if end is None else round(end * rate)
    if a < 0 or b < 0:
        raise RangeError("start and end must be >= 0")
    if b <= a:
        raise RangeError(f"empty range: end ({end}) must be after start ({start})")
    if (b - a) > MAX_RANGE_SECONDS * rate:
        raise RangeError(f"a range is at most {MAX_RANGE_SECONDS:.0f} s; ask for less")
    if a >= held:
        raise RangeError(f"start {start} s is beyond the archive ({held / rate:.3f} s)",
                         beyond=True)
    return a, min(b, held)


@dataclass(frozen=True, slots=True)
class WavRange:
    """What to send: ``header`` then ``length`` bytes of the file from ``offset``."""

    header: bytes
    offset: int
    length: int
    start: int  # frames
    end: int
    rate: int


def wav_range(path: Path, start: float | None, end: float | None) -> WavRange:
    """Plan the range of a WAV archive from its header and size alone."""
    with open(path, "rb") as f:
        layout = parse_layout(f.read(4096))
        size = os.fstat(f.fileno()).st_size
    fb = layout.frame_bytes
    held = max(0, (size - layout.data_start) // fb)
    a, b = frame_range(start, end, layout.rate, held)
    length = (b - a) * fb
    return WavRange(header(layout.encoding, layout.rate, layout.channels, length),
                    layout.data_start + a * fb, length, a, b, layout.rate)


def iter_range(path: Path, plan: WavRange, chunk: int = 1 << 16) -> Iterator[bytes]:
    """The header, then the range's bytes in chunks of at most ``chunk`` bytes."""
    yield plan.header
    yield from read_bytes(path, plan.offset, plan.length, chunk)


def read_bytes(path: Path, offset: int, length: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    """``length`` bytes of a file from ``offset`` (``os.pread``), in chunks of at most
    ``chunk``; a file that shrank (deleted under us) stops short, never padded."""
    fd = os.open(path, os.O_RDONLY)
    try:
        pos, left = offset, length
        while left > 0:
            data = os.pread(fd, min(chunk, left), pos)
            if not data:
                return
            pos += len(data)
            left -= len(data)
            yield data
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Piece:
    """``frames`` output frames from ``out`` on: from ``key``'s frame ``src`` on, or
    silence when ``key`` is None."""

    key: str | None
    out: int
    frames: int
    src: int = 0


def stitch_plan(spans: list[tuple[str, float, int]], t_from: float, t_to: float,
                rate: int) -> tuple[list[Piece], list[tuple[float, float]]]:
    """Several archives of one source on one wall-clock timeline. Pure.

    ``spans`` are ``(key, wall time of the first frame, frames)``. Stream frame ``k`` of a
    span starting at ``s`` sits at output frame ``round((s - t_from) * rate) + k``; where
    spans overlap the earlier one keeps its frames; silence fills the rest. Returns the
    pieces in output order and the gaps, as ``(start, end)`` seconds from ``t_from``."""
    if t_to <= t_from:
        raise RangeError("empty range: 'to' must be after 'from'")
    if t_to - t_from > MAX_RANGE_SECONDS:
        raise RangeError(f"a range is at most {MAX_RANGE_SECONDS:.0f} s; ask for less")
    total = round((t_to - t_from) * rate)
    pieces: list[Piece] = []
    pos = 0  # output frames [0, pos) are decided
    for key, start, frames in sorted(spans, key=lambda s: (s[1], s[0])):
        a = round((start - t_from) * rate)
        lo, hi = max(a, pos), min(a + frames, total)
        if hi <= lo:
            continue
        if lo > pos:
            pieces.append(Piece(None, pos, lo - pos))
        pieces.append(Piece(key, lo, hi - lo, lo - a))
        pos = hi
    if pos < total:
        pieces.append(Piece(None, pos, total - pos))
    gaps = [(p.out / rate, (p.out + p.frames) / rate) for p in pieces if p.key is None]
    return pieces, gaps
