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

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from earshot.audio import (
    ArchiveFormat,
    StreamSpec,
    f32_to_s16,
    s16_to_f32,
    sanitize_f32,
)
from earshot.errors import StorageError
from earshot.storage.wav import WavEncoding, WavWriter

MEDIA_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg"}
FINAL_SUFFIX = {"flac": ".flac", "ogg": ".ogg"}


@dataclass(slots=True)
class AppendResult:
    frames: int
    non_finite: int = 0
    clipped: int = 0
    written: bytes | bytearray = b""  # the bytes appended, in the archive's encoding


def encoding_for(fmt: ArchiveFormat) -> WavEncoding:
    return "float32" if fmt == "wav-f32" else "pcm16"


class Archive:
    """Appends a stream's wire audio to its archive file, converting as needed."""

    def __init__(self, writer: WavWriter, spec: StreamSpec, fmt: ArchiveFormat) -> None:
        self.writer = writer
        self.spec = spec
        self.format = fmt
        self._encoding = writer.layout.encoding

    @classmethod
    def create(cls, path: Path, spec: StreamSpec, fmt: ArchiveFormat) -> Archive:
        """``path`` is the live file (always a ``.wav``)."""
        writer = WavWriter.create(path, encoding_for(fmt), spec.rate, spec.channels)
        return cls(writer, spec, fmt)

    @classmethod
    def reopen(cls, path: Path, spec: StreamSpec, fmt: ArchiveFormat) -> Archive:
        writer = WavWriter.reopen(path)
        layout = writer.layout
        if (layout.rate, layout.channels) != (spec.rate, spec.channels):
            writer.close()
            raise StorageError(
                f"archive {path.name} is {layout.rate} Hz x{layout.channels}, "
                f"not {spec.rate} Hz x{spec.channels}"
            )
        return cls(writer, spec, fmt)

    @property
    def frames(self) -> int:
        return self.writer.frames

    @property
    def sample_format(self) -> str:
        """How the archived samples are laid out: ``s16`` or ``f32`` (little-endian,
        interleaved): the layout of :attr:`AppendResult.written`."""
        return "s16" if self._encoding == "pcm16" else "f32"

    @property
    def path(self) -> Path:
        return self.writer.path

    def append(self, data: bytes | bytearray) -> AppendResult:
        """Append whole frames of wire-format audio. Returns what had to be fixed."""
        wire = self.spec.format
        frames = len(data) // self.spec.frame_bytes
        result = AppendResult(frames)
        if wire == "s16" and self._encoding == "pcm16":
            self.writer.write(data)
            result.written = data
            return result
        if wire == "s16":
            out = s16_to_f32(np.frombuffer(data, "<i2")).astype("<f4")
        else:
            x = np.frombuffer(data, "<f4")
            fixed = f32_to_s16(x) if self._encoding == "pcm16" else sanitize_f32(x)
            out = fixed.samples
            result.non_finite, result.clipped = fixed.non_finite, fixed.clipped
        result.written = out.tobytes()
        self.writer.write(result.written)
        return result

    def sync(self, fsync: bool = False) -> None:
        self.writer.sync_header()
        if fsync:
            self.writer.fsync()

    def close(self) -> None:
        self.writer.close()


def finalize(path: Path, fmt: ArchiveFormat) -> Path:
    """Turn a closed live WAV into its final form; returns the final path.

    For FLAC and Ogg Opus, converts block by block (never the whole file in memory), then
    replaces the WAV atomically. Other formats are already final.
    """
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
