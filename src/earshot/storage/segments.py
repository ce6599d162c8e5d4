"""Speech segments cut from a stream's archive into files of their own."""

from __future__ import annotations

import os
from pathlib import Path

from earshot.errors import StorageError
from earshot.storage import parts as P
from earshot.storage.wav import header


def cut(archive: Path, start: int, end: int, target: Path,
        parts: list[P.Part] | None = None) -> int:
    """Copy frames [start, end) of an archive (``archive``: its part 0; live or closed,
    across its parts) into a new WAV file.

    WAV bytes are copied as they are, so the segment holds exactly the archive's samples
    (FLAC parts decoded: the same PCM16). Written to a temporary name and renamed, so a
    segment file is complete or absent. Copied chunk by chunk (never the whole span in
    memory); callers on the event loop run it in a thread. Returns the frames copied
    (fewer than asked if the archive is shorter).
    """
    parts = P.load(archive) if parts is None else parts
    encoding, rate, channels = P.kind(parts)
    start, end = max(0, start), min(end, P.total_frames(parts))
    if end <= start:
        raise StorageError(f"segment [{start}, {end}) is empty or beyond the archive")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    written = 0
    with open(tmp, "wb") as out:  # a streaming copy: one chunk in memory at a time
        out.write(header(encoding, rate, channels, 0))
        for chunk in P.iter_frames(parts, start, end):
            out.write(chunk)
            written += len(chunk)
        out.seek(0)
        out.write(header(encoding, rate, channels, written))  # (the same size: in place)
    os.replace(tmp, target)
    return end - start
