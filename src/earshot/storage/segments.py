"""Speech segments cut from a stream's archive into files of their own."""

from __future__ import annotations

import os
from pathlib import Path

from earshot.errors import StorageError
from earshot.storage.wav import header, parse_layout


def cut(archive: Path, start: int, end: int, target: Path) -> int:
    """Copy frames [start, end) of a WAV archive (live or closed) into a new WAV file.

    The bytes are copied as they are, so the segment holds exactly the archive's samples.
    Written to a temporary name and renamed, so a segment file is complete or absent.
    Returns the frames copied (fewer than asked if the archive is shorter).
    """
    with open(archive, "rb") as f:
        layout = parse_layout(f.read(4096))
        fb = layout.frame_bytes
        size = os.fstat(f.fileno()).st_size
        held = (size - layout.data_start) // fb
        start, end = max(0, start), min(end, held)
        if end <= start:
            raise StorageError(f"segment [{start}, {end}) is empty or beyond the archive")
        f.seek(layout.data_start + start * fb)
        data = f.read((end - start) * fb)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    with open(tmp, "wb") as out:
        out.write(header(layout.encoding, layout.rate, layout.channels, len(data)))
        out.write(data)
    os.replace(tmp, target)
    return end - start
