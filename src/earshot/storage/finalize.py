"""A closed WAV file in its final form: FLAC or Ogg Opus, converted block by block (never
the whole file in memory), then put in place of the WAV atomically. Used when a stream
stops (:func:`earshot.storage.archive.finalize`) and by crash repair of a stream that was
being finalized (:func:`earshot.storage.parts.recover`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from earshot.fsutil import fsync_dir, fsync_file

#: the file suffix of each archive format that is converted at stop (WAV formats are final)
FINAL_SUFFIX = {"flac": ".flac", "ogg": ".ogg"}


def finalize_one(path: Path, fmt: str, fsync: bool = False) -> Path:
    """One closed WAV file in its final form (the old one replaced atomically). With
    ``fsync``, the converted file is fsynced before its rename, and the directory after it,
    before the WAV is removed: a power cut at any point leaves one whole archive."""
    if fmt == "ogg":
        return _replace(path, _to_ogg(path), fsync)
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
    return _replace(path, tmp, fsync)


def _replace(wav: Path, tmp: Path, fsync: bool) -> Path:
    """``tmp`` (``X.flac.part``) in place as ``X.flac``, then ``wav`` removed."""
    target = tmp.with_suffix("") if tmp.suffix == ".part" else tmp
    if fsync:
        fsync_file(tmp)
    os.replace(tmp, target)
    if fsync:
        fsync_dir(target.parent)  # the new name is durable before the old file goes
    wav.unlink()
    if fsync:
        fsync_dir(target.parent)
    return target


def _to_ogg(path: Path) -> Path:
    """The Ogg Opus file written beside ``path``, as ``X.ogg.part``."""
    from earshot.codec.opus import OPUS_RATES
    from earshot.storage.oggopus import OggOpusWriter

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
    return tmp
