"""LogMelSpectrogram: reference computation, mel-band placement, chunking invariance."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from earshot.dsp.mel import (
    LOG_FLOOR,
    POWER_FLOOR,
    LogMelSpectrogram,
    MelFrames,
    hz_to_mel,
    mel_to_hz,
)
from earshot.errors import ProcessorError


def chunks(x: np.ndarray, cuts: list[int]) -> list[np.ndarray]:
    return np.split(x, sorted(min(c, x.size) for c in cuts))


def reference(spec: LogMelSpectrogram, x: np.ndarray) -> np.ndarray:
    """Direct, non-streaming float64 computation with the dense filterbank."""
    n = 1 + (x.size - spec.win) // spec.hop if x.size >= spec.win else 0
    window = np.hanning(spec.win + 1)[:-1]  # periodic Hann
    rows = []
    for k in range(n):
        frame = x[k * spec.hop : k * spec.hop + spec.win].astype(np.float64) * window
        power = np.abs(np.fft.rfft(frame, n=spec.n_fft)) ** 2
        rows.append(np.log10(np.maximum(spec.filterbank @ power, POWER_FLOOR)))
    return np.array(rows).reshape(n, spec.n_mels)


def collect(spec: LogMelSpectrogram, pieces: list[np.ndarray]) -> tuple[int | None, np.ndarray]:
    """Feed pieces; check the returned offsets are contiguous; return first offset + data."""
    first: int | None = None
    expected_offset: int | None = None
    parts = [np.zeros((0, spec.n_mels), dtype=np.float32)]
    for p in pieces:
        out = spec.feed(p)
        if out is None:
            continue
        assert isinstance(out, MelFrames)
        assert out.hop == spec.hop and out.data.dtype == np.float32
        assert out.n_frames > 0
        if expected_offset is not None:
            assert out.offset == expected_offset
        first = out.offset if first is None else first
        expected_offset = out.offset + out.n_frames * out.hop
        parts.append(out.data)
    assert spec.flush() is None
    return first, np.concatenate(parts)


def test_mel_scale_round_trip() -> None:
    hz = np.array([0.0, 100.0, 999.0, 1000.0, 4000.0, 24000.0])
    assert hz_to_mel(1000.0) == pytest.approx(15.0)
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_matches_direct_computation(rate: int) -> None:
    x = (np.random.default_rng(rate).standard_normal(rate // 2) * 0.3).astype(np.float32)
    spec = LogMelSpectrogram(rate, n_mels=40, fmin=50.0)
    assert spec.n_fft >= spec.win and spec.n_fft & (spec.n_fft - 1) == 0
    offset, got = collect(spec, [x])
    want = reference(LogMelSpectrogram(rate, n_mels=40, fmin=50.0), x)
    assert offset == 0 and got.shape == want.shape == (1 + (x.size - spec.win) // spec.hop, 40)
    np.testing.assert_allclose(got, want, atol=2e-4)


@pytest.mark.parametrize("rate", [16000, 48000])
@pytest.mark.parametrize("band", [5, 20, 40, 60])
def test_sine_lands_in_its_band(rate: int, band: int) -> None:
    spec = LogMelSpectrogram(rate)
    freq = float(spec.center_freqs_hz[band])
    n = np.arange(rate // 4)
    x = (0.5 * np.sin(2 * np.pi * freq * n / rate)).astype(np.float32)
    out = spec.feed(x)
    assert out is not None
    mean = out.data.mean(axis=0)
    assert int(np.argmax(mean)) == band
    others = np.delete(mean, band)
    assert mean[band] - others.max() > 0.3  # > 3 dB above every other band


def test_silence_is_floored() -> None:
    out = LogMelSpectrogram(16000).feed(np.zeros(16000, dtype=np.float32))
    assert out is not None and out.data.shape == (98, 64)
    assert np.all(out.data == LOG_FLOOR)


def test_short_input_and_flush_drop_partial_window() -> None:
    spec = LogMelSpectrogram(16000, offset=1000)  # win 400, hop 160
    assert spec.feed(np.zeros(399, dtype=np.float32)) is None
    out = spec.feed(np.zeros(1, dtype=np.float32))
    assert out is not None and (out.offset, out.n_frames) == (1000, 1)
    out = spec.feed(np.zeros(330, dtype=np.float32))  # 730 fed: frames at 160, 320
    assert out is not None and (out.offset, out.n_frames) == (1160, 2)
    assert spec.flush() is None
    # after flush the next frame starts where the stream left off
    out = spec.feed(np.zeros(400, dtype=np.float32))
    assert out is not None and out.offset == 1730


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": -1},
        {"rate": 16000, "n_mels": 0},
        {"rate": 16000, "hop_ms": 30.0},
        {"rate": 16000, "fmin": 9000.0},
        {"rate": 16000, "fmax": 9000.0},
        {"rate": 16000, "fmin": 500.0, "fmax": 400.0},
        {"rate": 100, "win_ms": 5.0},
    ],
)
def test_bad_config(kwargs: dict) -> None:
    with pytest.raises(ProcessorError):
        LogMelSpectrogram(**kwargs)


@settings(max_examples=50, deadline=None, database=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 6000),
    cuts=st.lists(st.integers(0, 6000), max_size=15),
    rate=st.sampled_from([8000, 16000, 48000]),
)
def test_chunking_is_invisible(seed: int, n: int, cuts: list[int], rate: int) -> None:
    x = (np.random.default_rng(seed).standard_normal(n) * 0.3).astype(np.float32)
    offset_whole, whole = collect(LogMelSpectrogram(rate), [x])
    offset_split, split = collect(LogMelSpectrogram(rate), chunks(x, cuts))
    assert offset_split == offset_whole
    assert np.array_equal(split, whole)  # bit-identical, not merely close
