"""Streaming level meter: RMS, peak and clip count per fixed interval."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from earshot.dsp._util import as_mono, check_offset, check_rate
from earshot.errors import ProcessorError

FLOOR_DB = -120.0
_MS_FLOOR = 10.0 ** (FLOOR_DB / 10.0)
_PEAK_FLOOR = 10.0 ** (FLOOR_DB / 20.0)


@dataclass(frozen=True, slots=True)
class LevelReading:
    """Levels of one interval; dBFS with full scale 1.0 = 0 dB, floored at -120."""

    offset: int
    frames: int
    rms_db: float
    peak_db: float
    clipped: int


class LevelMeter:
    """Emit one :class:`LevelReading` per complete ``interval_s`` of mono float32 input.

    Intervals sit on a fixed grid starting at ``offset`` (frame of the first sample fed),
    so readings do not depend on how the input is chunked.
    """

    def __init__(
        self,
        rate: int,
        interval_s: float = 0.05,
        clip_level: float = 0.999,
        *,
        offset: int = 0,
    ) -> None:
        self.rate = check_rate(rate)
        interval = round(self.rate * interval_s)
        if not interval_s > 0 or interval < 1:
            raise ProcessorError(f"interval_s too small for rate {rate}: {interval_s!r}")
        if not clip_level > 0:
            raise ProcessorError(f"clip_level must be > 0, got {clip_level!r}")
        self.interval = interval
        self.clip_level = float(clip_level)
        self._pos = check_offset(offset)  # frame offset of _buf[0]
        self._buf = np.zeros(interval, dtype=np.float32)
        self._fill = 0

    @property
    def position(self) -> int:
        """Frame offset just past the last sample fed."""
        return self._pos + self._fill

    def feed(self, samples: np.ndarray) -> list[LevelReading]:
        """Consume samples; return readings for every interval completed by them."""
        x = as_mono(samples)
        out: list[LevelReading] = []
        if self._fill:
            take = min(self.interval - self._fill, x.size)
            self._buf[self._fill : self._fill + take] = x[:take]
            self._fill += take
            x = x[take:]
            if self._fill < self.interval:
                return out
            out += self._measure(self._buf[None, :])
            self._fill = 0
        n = x.size // self.interval
        if n:
            out += self._measure(x[: n * self.interval].reshape(n, self.interval))
        rest = x[n * self.interval :]
        self._buf[: rest.size] = rest
        self._fill = rest.size
        return out

    def flush(self) -> list[LevelReading]:
        """Emit the partial last interval (if any); call at end of stream."""
        if not self._fill:
            return []
        out = self._measure(self._buf[None, : self._fill])
        self._fill = 0
        return out

    def _measure(self, blocks: np.ndarray) -> list[LevelReading]:
        """Readings for rows of ``blocks`` (n, frames) starting at ``self._pos``; advance it."""
        n, frames = blocks.shape
        mag = np.abs(blocks)
        peak = mag.max(axis=1)
        ms = np.einsum("ij,ij->i", blocks, blocks, dtype=np.float64) / frames
        if (peak >= self.clip_level).any():
            clipped = np.count_nonzero(mag >= self.clip_level, axis=1).tolist()
        else:
            clipped = [0] * n
        rms_db = 10.0 * np.log10(np.maximum(ms, _MS_FLOOR))
        peak_db = 20.0 * np.log10(np.maximum(peak.astype(np.float64), _PEAK_FLOOR))
        start = self._pos
        self._pos += n * frames
        return [
            LevelReading(start + i * frames, frames, r, p, c)
            for i, (r, p, c) in enumerate(
                zip(rms_db.tolist(), peak_db.tolist(), clipped, strict=True)
            )
        ]
