"""A closed WAV file in its final form: FLAC or Ogg Opus, converted block by block (never
the whole file in memory), then put in place of the WAV atomically. Used when a stream
stops (:func:`earshot.storage.archive.finalize`) and by crash repair of a stream that was
being finalized (:func:`earshot.storage.parts.recover`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

#: the file suffix of each archive format that is converted at stop (WAV formats are final)
FINAL_SUFFIX = {"flac": ".flac", "ogg": ".ogg"}


def finalize_one(path: Path, fmt: str) -> Path:
    """One closed WAV file in its final form (the old one replaced atomically)."""
    if fmt == "ogg":
        return _to_ogg(path)
    if fmt != "flac":
        return path
    target = path.with_suffix(".flac")
    tmp = target.with_suffix(".flac.part")
    with sf.SoundFile(path) as src, sf.SoundFile(
        tmp, "w", samplerate=src.samplerate, channels=src.channels, format="FLAC",
        subtype="PCM_16",
    ) as dst:
        for block in src.blocks(blocksize=65536, dtype="int16", always_2d=True):
            dst.write(block)
    os.replace(tmp, target)
    path.unlink()
    return target


def _to_ogg(path: Path) -> Path:
    from earshot.codec.opus import OPUS_RATES
    from earshot.storage.oggopus import OggOpusWriter

    target = path.with_suffix(".ogg")
    tmp = path.with_suffix(".ogg.part")
    tmp.unlink(missing_ok=True)
    with sf.SoundFile(path) as src:
        rate, channels = src.samplerate, min(src.channels, 2)
        out_rate = rate if rate in OPUS_RATES else 48000
        resampler = None
        if out_rate != rate:
            import soxr

            resampler = soxr.ResampleStream(rate, out_rate, channels, dtype="float32")
        writer = OggOpusWriter(tmp, out_rate, channels)
        total = 0
        for block in src.blocks(blocksize=65536, dtype="float32", always_2d=True):
            x = block[:, :channels]
            if resampler is not None:
                x = resampler.resample_chunk(x)
            writer.write(x)
            total += len(x)
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros((0, channels), np.float32), last=True)
            writer.write(tail)
            total += len(tail)
        writer.close(length=total)
    os.replace(tmp, target)
    path.unlink()
    return target
