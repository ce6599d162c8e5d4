"""Streaming level meter: RMS, peak and clip count per fixed interval."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from earshot.dsp._util import as_mono, check_offset, check_rate
from earshot.errors import ProcessorError

FLOOR_DB = -120.0
_MS_FLOOR = 10.0 ** (FLOOR_DB / 10.0)
_PEAK_FLOOR = 10.0 ** (FLOOR_DB / 20.0)
_max, _count = np.maximum.reduce, np.count_nonzero
if hasattr(np, "vecdot"):  # numpy 2: a gufunc, half of einsum's per-call cost here
    def _sumsq(blocks: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.vecdot(blocks, blocks)
        return out
else:  # pragma: no cover - numpy 1.26
    def _sumsq(blocks: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.einsum("ij,ij->i", blocks, blocks)
        return out


class LevelReading(NamedTuple):
    """Levels of one interval; dBFS with full scale 1.0 = 0 dB, floored at -120.

    (A named tuple: two are made per 100 ms of every stream, on the ingest hot path.)"""

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
        self._scratch = np.empty(0, np.float32)
        self._fill = 0
        self._skip = 0  # frames still to pass over before the grid point at _pos

    @property
    def position(self) -> int:
        """Frame offset just past the last sample fed."""
        return self._pos + self._fill - self._skip

    def skip(self, frames: int) -> None:
        """Pass over ``frames`` samples unmeasured: the interval they end in is dropped, and
        the next reading is the next whole interval of the grid."""
        if frames < 0:
            raise ProcessorError(f"cannot skip {frames} frames")
        if frames <= self._skip:  # still before the grid point
            self._skip -= frames
            return
        passed = frames - self._skip + self._fill  # frames past the grid point _pos
        self._fill = 0
        whole, part = divmod(passed, self.interval)
        self._pos += whole * self.interval
        self._skip = 0
        if part:  # inside an interval: it is dropped; the grid resumes after it
            self._pos += self.interval
            self._skip = self.interval - part

    def feed(self, samples: np.ndarray) -> list[LevelReading]:
        """Consume samples; return readings for every interval completed by them."""
        x = as_mono(samples)
        if self._skip:  # the rest of an interval passed over
            take = min(self._skip, x.size)
            self._skip -= take
            x = x[take:]
            if not x.size:
                return []
        if not self._fill and x.size and not x.size % self.interval:  # whole intervals
            return self._measure(x.reshape(-1, self.interval))
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
        """Readings for rows of ``blocks`` (n, frames) starting at ``self._pos``; advance it.

        A few whole-array numpy calls, the ufuncs' own ``reduce`` (blocks are short:
        numpy's per-call cost dominates, and ``ndarray.max``'s Python wrapper shows), then
        plain floats: a 100 ms ack batch at 48 kHz holds two 50 ms blocks."""
        n, frames = blocks.shape
        sq = _sumsq(blocks).tolist()  # float32 sums: ~1e-6 relative
        mag = self._magnitude(blocks)
        peaks = _max(mag, axis=1).tolist()
        clip = self.clip_level
        clipped = _count(mag >= clip, axis=1).tolist() if max(peaks) >= clip else [0] * n
        start = self._pos
        self._pos += n * frames
        log10 = math.log10
        return [
            LevelReading(start + i * frames, frames,
                         10.0 * log10(s / frames) if s > _MS_FLOOR * frames else FLOOR_DB,
                         20.0 * log10(p) if p > _PEAK_FLOOR else FLOOR_DB, c)
            for i, (s, p, c) in enumerate(zip(sq, peaks, clipped, strict=True))
        ]

    def _magnitude(self, blocks: np.ndarray) -> np.ndarray:
        """|blocks|, into a scratch buffer kept between calls."""
        size = blocks.size
        if self._scratch.size < size:
            self._scratch = np.empty(size, np.float32)
        out: np.ndarray = np.abs(blocks, out=self._scratch[:size].reshape(blocks.shape))
        return out
