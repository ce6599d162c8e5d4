"""Sample formats and conversions. Pure numpy: bytes or arrays in, arrays or bytes out.

Conventions (the same as libsndfile's, so soundfile reads back what we mean):

* ``f32`` is little-endian IEEE float, full scale ±1.0.
* ``s16`` is little-endian signed 16-bit; a float ``x`` maps to ``round(x * 32768)``
  saturated to ``[-32768, 32767]`` and an ``s16`` value ``v`` reads back as ``v / 32768``.
  So f32 → s16 → f32 is within half an LSB, and within one LSB at +1.0 exactly.
* Floats beyond ±1.0 saturate (never wrap around); NaN and ±Inf become 0 and are counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

SampleFormat = Literal["s16", "f32"]
SAMPLE_FORMATS: tuple[SampleFormat, ...] = ("s16", "f32")
WireFormat = Literal["s16", "f32", "opus"]
WIRE_FORMATS: tuple[WireFormat, ...] = ("s16", "f32", "opus")
# How a stream is archived (the writers live in earshot.storage.archive).
ArchiveFormat = Literal["wav", "wav-f32", "flac", "ogg"]
ARCHIVE_FORMATS: tuple[ArchiveFormat, ...] = ("wav", "wav-f32", "flac", "ogg")
BYTES_PER_SAMPLE: dict[str, int] = {"s16": 2, "f32": 4}
WIRE_DTYPE: dict[str, np.dtype] = {"s16": np.dtype("<i2"), "f32": np.dtype("<f4")}

S16_SCALE = 32768.0


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """What one stream's audio looks like on the wire."""

    format: WireFormat
    rate: int
    channels: int

    @property
    def frame_bytes(self) -> int:
        """Bytes per sample frame (one sample of every channel); 0 for packets (opus)."""
        return BYTES_PER_SAMPLE.get(self.format, 0) * self.channels

    @property
    def pcm(self) -> StreamSpec:
        """The PCM form of this stream as archived: Opus is decoded to s16 on arrival."""
        return StreamSpec("s16", self.rate, self.channels) if self.format == "opus" else self

    @property
    def sample_format(self) -> SampleFormat:
        """The PCM sample format of the stream as archived (Opus: s16)."""
        return "f32" if self.format == "f32" else "s16"


@dataclass(frozen=True, slots=True)
class Sanitized:
    """Result of cleaning float samples: the samples and what had to be fixed."""

    samples: np.ndarray
    non_finite: int
    clipped: int


def sanitize_f32(x: np.ndarray) -> Sanitized:
    """Replace NaN/±Inf by 0 and saturate to [-1, 1]; count both. Returns a new array."""
    x = np.asarray(x, dtype=np.float32)
    finite = np.isfinite(x)
    non_finite = int(x.size - np.count_nonzero(finite))
    y = np.where(finite, x, np.float32(0.0)) if non_finite else x.copy()
    clipped = int(np.count_nonzero(np.abs(y) > 1.0))
    if clipped:
        np.clip(y, -1.0, 1.0, out=y)
    return Sanitized(y, non_finite, clipped)


_max, _min = np.maximum.reduce, np.minimum.reduce
#: the smallest float sample that rounds to 32768 (saturated to 32767)
_TOP = np.float32(32767.5 / S16_SCALE)
_S16_MAX = np.float32(32767.0)


def f32_to_s16(x: np.ndarray) -> Sanitized:
    """Float samples to int16 (``rint(x * 32768)``) with saturation; NaN/Inf → 0 (counted)."""
    x = np.asarray(x, dtype=np.float32)
    # the common case (NaN fails both tests): three passes (the ufuncs' reduce directly,
    # then the scaling, then rounding cast straight into int16); this runs once per ack
    # batch of every stream, where ndarray.max's Python wrapper shows
    if x.size:
        hi = _max(x, axis=None)
        if hi <= 1.0 and _min(x, axis=None) >= -1.0:
            y = np.multiply(x, np.float32(S16_SCALE))
            if hi >= _TOP:  # only a sample this loud needs the saturation: +1.0 → 32767
                np.minimum(y, _S16_MAX, out=y)
            out = np.empty(x.shape, "<i2")
            np.rint(y, out=out, casting="unsafe")  # whole numbers in range: exact
            return Sanitized(out, 0, 0)
    s = sanitize_f32(x)
    y = np.rint(s.samples * np.float32(S16_SCALE))
    np.clip(y, -32768.0, 32767.0, out=y)
    return Sanitized(y.astype("<i2"), s.non_finite, s.clipped)


def s16_to_f32(x: np.ndarray) -> np.ndarray:
    """int16 samples to float32 in [-1, 1)."""
    return np.asarray(x, dtype="<i2").astype(np.float32) / np.float32(S16_SCALE)


def decode(data: bytes | bytearray | memoryview, fmt: SampleFormat, channels: int) -> np.ndarray:
    """Wire bytes (whole frames) to a float32 array of shape (frames, channels)."""
    raw = np.frombuffer(data, dtype=WIRE_DTYPE[fmt])
    out = s16_to_f32(raw) if fmt == "s16" else raw  # f32: a read-only view, no copy
    return out.reshape(-1, channels)


def encode(samples: np.ndarray, fmt: SampleFormat) -> bytes:
    """Float samples (any shape, interleaved in C order) to wire bytes."""
    if fmt == "s16":
        return f32_to_s16(samples).samples.tobytes()
    return np.ascontiguousarray(samples, dtype="<f4").tobytes()


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(frames, channels) → (frames,) by averaging channels."""
    if samples.ndim == 1:
        return samples
    if samples.shape[1] == 1:
        return samples[:, 0]
    mono: np.ndarray = samples.mean(axis=1, dtype=np.float32)
    return mono
