"""Waveform peaks of an archive, read block by block (never the whole file in memory), across
all its parts (storage/parts.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from earshot.audio import to_mono
from earshot.storage import parts as P


def peaks(path: Path, width: int, *, block: int = 1 << 16,
          parts: list[P.Part] | None = None) -> tuple[list[float], list[float], int]:
    """Min and max of the mono mix in ``width`` equal columns; and the frame count.
    ``path`` is the archive's part 0; ``parts`` its parts when already loaded (e.g. some in
    the object store: :func:`earshot.storage.parts.load_known`)."""
    lo = np.full(width, np.inf, np.float32)
    hi = np.full(width, -np.inf, np.float32)
    parts = P.load(path) if parts is None else parts
    frames = P.total_frames(parts)
    for part in parts:
        if not part.frames:
            continue
        with P.sound_file(part.path) as f:
            pos, left = part.start, part.frames
            for data in f.blocks(blocksize=block, dtype="float32", always_2d=True):
                x = to_mono(data[:left])
                if not len(x):
                    break
                cols = (np.arange(pos, pos + len(x), dtype=np.int64) * width) // max(frames, 1)
                starts = np.concatenate(([0], np.flatnonzero(np.diff(cols)) + 1))
                ids = cols[starts]
                lo[ids] = np.minimum(lo[ids], np.minimum.reduceat(x, starts))
                hi[ids] = np.maximum(hi[ids], np.maximum.reduceat(x, starts))
                pos += len(x)
                left -= len(x)
    empty = ~np.isfinite(lo)  # more columns than frames
    lo[empty] = 0.0
    hi[empty] = 0.0
    return np.round(lo, 4).tolist(), np.round(hi, 4).tolist(), frames
