"""Sample conversions: saturation, NaN/Inf, the 1-LSB guarantee, round trips."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from earshot.audio import (
    StreamSpec,
    decode,
    encode,
    f32_to_s16,
    s16_to_f32,
    sanitize_f32,
    to_mono,
)

any_floats = arrays(np.float32, st.integers(0, 300),
                    elements=st.floats(width=32, allow_nan=True, allow_infinity=True))
in_range = arrays(np.float32, st.integers(1, 300), elements=st.floats(-1.0, 1.0, width=32))


@given(in_range)
def test_f32_to_s16_is_within_one_lsb(x: np.ndarray) -> None:
    back = s16_to_f32(f32_to_s16(x).samples)
    assert np.max(np.abs(back - x)) <= 1 / 32768 + 1e-9


def test_f32_to_s16_is_rint_of_x_times_32768_for_every_sample_near_the_edges() -> None:
    """The fast path (a rounding cast into int16, saturation only when a sample reaches
    32767.5 / 32768) gives exactly ``clip(rint(x * 32768))``: every float32 within 8 steps
    of 16-bit's rounding ties and of ±1.0, and a quarter of a million samples between."""
    ties = (np.arange(-32768, 32768, dtype=np.float64) + 0.5) / 32768
    near = [np.nextafter(np.float32(t), np.float32(d), dtype=np.float32)
            for t in (-1.0, 1.0, 32767.5 / 32768, -32768.5 / 32768) for d in (-2.0, 2.0)]
    steps = [ties.astype(np.float32)]
    for direction in (-2.0, 2.0):
        y = ties.astype(np.float32)
        for _ in range(8):
            y = np.nextafter(y, np.float32(direction), dtype=np.float32)
            steps.append(y)
    x = np.concatenate([*steps, np.array([*near, 1.0, -1.0, 0.0, -0.0], np.float32),
                        np.linspace(-1, 1, 1 << 18, dtype=np.float32)])
    x = x[np.abs(x) <= 1.0]
    want = np.clip(np.rint(x.astype(np.float64) * 32768), -32768, 32767).astype("<i2")
    for part in (np.ones(len(x), bool), np.abs(x) < 0.5):  # with, without a loud sample
        r = f32_to_s16(x[part])
        assert (r.non_finite, r.clipped) == (0, 0)
        assert np.array_equal(r.samples, want[part])


@given(any_floats)
def test_f32_to_s16_saturates_and_zeroes_non_finite(x: np.ndarray) -> None:
    r = f32_to_s16(x)
    assert r.samples.dtype == np.dtype("<i2")
    finite = np.isfinite(x)
    assert r.non_finite == int((~finite).sum())
    assert np.all(r.samples[~finite] == 0)
    with np.errstate(invalid="ignore"):
        hi = finite & (x >= 1.0)
        lo = finite & (x <= -1.0)
    assert np.all(r.samples[hi] == 32767)
    assert np.all(r.samples[lo] == -32768)
    # monotonic: never wraps around
    order = np.argsort(np.where(finite, x, 0), kind="stable")
    assert np.all(np.diff(r.samples[order].astype(int)) >= 0)


def test_extremes_exact() -> None:
    x = np.array([1e9, -1e9, 1.0, -1.0, 0.5, np.nan, np.inf, -np.inf], np.float32)
    r = f32_to_s16(x)
    assert r.samples.tolist() == [32767, -32768, 32767, -32768, 16384, 0, 0, 0]
    assert (r.non_finite, r.clipped) == (3, 2)


@given(arrays(np.int16, st.integers(0, 300)))
def test_s16_roundtrip_is_exact(x: np.ndarray) -> None:
    assert np.array_equal(f32_to_s16(s16_to_f32(x)).samples, x)


@given(any_floats)
def test_sanitize_output_is_finite_and_bounded(x: np.ndarray) -> None:
    y = sanitize_f32(x).samples
    assert np.all(np.isfinite(y)) and np.all(np.abs(y) <= 1.0)


@given(st.sampled_from(["s16", "f32"]), st.integers(1, 4), st.integers(0, 50))
def test_encode_decode_shapes(fmt: str, channels: int, frames: int) -> None:
    rng = np.random.default_rng(frames)
    x = rng.uniform(-1, 1, (frames, channels)).astype(np.float32)
    data = encode(x, fmt)  # type: ignore[arg-type]
    assert len(data) == frames * StreamSpec(fmt, 8000, channels).frame_bytes  # type: ignore[arg-type]
    y = decode(data, fmt, channels)  # type: ignore[arg-type]
    assert y.shape == (frames, channels)
    assert np.max(np.abs(y - x), initial=0) <= 1 / 32768 + 1e-9


def test_to_mono_averages() -> None:
    x = np.array([[1.0, 0.0], [0.5, 0.5]], np.float32)
    assert to_mono(x).tolist() == [0.5, 0.5]
    assert to_mono(x[:, :1]).tolist() == [1.0, 0.5]
