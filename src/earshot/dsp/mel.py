"""Streaming log-mel spectrogram (Hann window, rfft power, Slaney mel filterbank)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from earshot.dsp._util import as_mono, check_offset, check_rate
from earshot.errors import ProcessorError

POWER_FLOOR = 1e-10
"""Mel power is clamped to this before log10."""
LOG_FLOOR = -10.0
"""The output floor, ``log10(POWER_FLOOR)``, exactly."""

_F_SP = 200.0 / 3.0  # Slaney: linear part, Hz per mel
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale (linear below 1 kHz, logarithmic above), as librosa's default."""
    f = np.asarray(hz, dtype=np.float64)
    mel = f / _F_SP
    log = f >= _MIN_LOG_HZ
    return np.where(
        log, _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP, mel
    )


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(mel, dtype=np.float64)
    return np.where(
        m >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), _F_SP * m
    )


def mel_filterbank(
    rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float
) -> tuple[np.ndarray, np.ndarray]:
    """Slaney-normalised triangular filterbank, shape (n_mels, n_fft // 2 + 1), float64.

    Also returns the n_mels + 2 band edge frequencies in Hz (filter j peaks at edge j + 1).
    """
    freqs = np.arange(n_fft // 2 + 1) * (rate / n_fft)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower = (freqs[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    upper = (edges[2:, None] - freqs[None, :]) / np.diff(edges)[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights, edges


@dataclass(frozen=True, slots=True, eq=False)
class MelFrames:
    """Consecutive log-mel frames; frame k's window starts at ``offset + k * hop``."""

    offset: int
    hop: int
    data: np.ndarray  # (n_frames, n_mels) float32, log10 of mel power

    @property
    def n_frames(self) -> int:
        """Number of frames (rows of ``data``)."""
        return int(self.data.shape[0])


class LogMelSpectrogram:
    """Streaming log10 mel power spectrogram of mono float32 audio.

    Frames are computed only once their whole window has been fed; the overlap is
    carried between calls, so the output does not depend on chunking. Output values are
    ``log10(max(mel_power, 1e-10))`` where mel power is the Slaney-weighted ``|rfft|**2``
    of the Hann-windowed frame (zero-padded to ``n_fft``, no further scaling).
    """

    def __init__(
        self,
        rate: int,
        n_mels: int = 64,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        fmin: float = 0.0,
        fmax: float | None = None,
        *,
        offset: int = 0,
    ) -> None:
        self.rate = check_rate(rate)
        self.win = round(self.rate * win_ms / 1000.0)
        self.hop = round(self.rate * hop_ms / 1000.0)
        if self.win < 2 or self.hop < 1:
            raise ProcessorError(f"window/hop too short at {rate} Hz: {win_ms} / {hop_ms} ms")
        if self.hop > self.win:
            raise ProcessorError(f"hop ({hop_ms} ms) must not exceed the window ({win_ms} ms)")
        nyquist = self.rate / 2.0
        fmax = nyquist if fmax is None else float(fmax)
        if not 0.0 <= fmin < fmax <= nyquist:
            raise ProcessorError(f"need 0 <= fmin < fmax <= {nyquist}, got {fmin}, {fmax}")
        if n_mels < 1:
            raise ProcessorError(f"n_mels must be >= 1, got {n_mels}")
        self.n_mels = int(n_mels)
        self.n_fft = 1 << (self.win - 1).bit_length()
        self.fmin = float(fmin)
        self.fmax = fmax
        # Periodic Hann window.
        self.window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(self.win) / self.win)).astype(
            np.float32
        )
        weights, self.band_edges_hz = mel_filterbank(
            self.rate, self.n_fft, self.n_mels, self.fmin, self.fmax
        )
        self.filterbank = weights.astype(np.float32)  # (n_mels, n_fft // 2 + 1)
        self._init_projection()
        self._start = check_offset(offset)  # frame offset of _buf[0]
        self._buf = np.zeros(0, dtype=np.float32)

    @property
    def center_freqs_hz(self) -> np.ndarray:
        """Peak frequency of each mel filter, Hz."""
        return self.band_edges_hz[1:-1]

    def feed(self, samples: np.ndarray) -> MelFrames | None:
        """Consume samples; return the frames completed by them, or None if there are none."""
        x = as_mono(samples)
        data = np.concatenate((self._buf, x)) if self._buf.size else x
        if data.size < self.win:
            self._buf = data.copy()
            return None
        n = 1 + (data.size - self.win) // self.hop
        # Strided (n, win) view of the contiguous buffer: frame k starts at k * hop.
        frames = np.ndarray((n, self.win), np.float32, data, 0, (self.hop * 4, 4))
        spec = np.fft.rfft(frames * self.window, n=self.n_fft, axis=1)
        power = np.square(np.abs(spec)).astype(np.float32, copy=False)
        logmel = np.log10(np.maximum(self._project(power), POWER_FLOOR))
        logmel = np.maximum(logmel, LOG_FLOOR).astype(np.float32, copy=False)
        out = MelFrames(self._start, self.hop, logmel)
        consumed = n * self.hop
        self._buf = data[consumed:].copy()
        self._start += consumed
        return out

    def flush(self) -> None:
        """End of stream: the trailing partial window (fewer than ``win`` samples) is dropped."""
        self._start += self._buf.size
        self._buf = np.zeros(0, dtype=np.float32)

    def _init_projection(self) -> None:
        # Every rfft bin lies on the rising edge of at most one filter and the falling edge
        # of at most one other, so the filterbank product is segment sums (one reduceat)
        # over [power * rise, 0, power * fall, 0]. Unlike a BLAS matmul this gives
        # bit-identical rows whatever the number of frames, so chunking stays invisible.
        nb = self.n_fft // 2 + 1
        freqs = np.arange(nb) * (self.rate / self.n_fft)
        seg = np.searchsorted(freqs, self.band_edges_hz, side="left")  # first bin >= edge
        weights = np.zeros(2 * nb + 2, dtype=np.float32)
        for j in range(self.n_mels):
            rise = slice(seg[j], seg[j + 1])
            fall = slice(seg[j + 1], seg[j + 2])
            weights[rise] = self.filterbank[j, rise]
            weights[nb + 1 :][fall] = self.filterbank[j, fall]
        self._weights = weights
        self._seg_idx = np.concatenate((seg[:-2], seg[1:-1] + nb + 1))
        # reduceat yields a[i] (not 0) for an empty segment: mask those out.
        nonempty = np.concatenate((seg[1:-1] > seg[:-2], seg[2:] > seg[1:-1]))
        self._seg_mask = nonempty.astype(np.float32)

    def _project(self, power: np.ndarray) -> np.ndarray:
        """Mel power, (n_frames, n_bins) -> (n_frames, n_mels)."""
        n, nb = power.shape
        prod = np.empty((n, 2 * nb + 2), dtype=np.float32)
        np.multiply(power, self._weights[:nb], out=prod[:, :nb])
        np.multiply(power, self._weights[nb + 1 : -1], out=prod[:, nb + 1 : -1])
        prod[:, nb] = 0.0
        prod[:, -1] = 0.0
        sums = np.add.reduceat(prod, self._seg_idx, axis=1)
        sums *= self._seg_mask
        return sums[:, : self.n_mels] + sums[:, self.n_mels :]
