"""LevelMeter: known signals, clip counting, grid/flush behaviour, chunking invariance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from earshot.dsp.level import LevelMeter, LevelReading
from earshot.errors import ProcessorError


def chunks(x: np.ndarray, cuts: list[int]) -> list[np.ndarray]:
    return np.split(x, sorted(min(c, x.size) for c in cuts))


def sine(rate: int, freq: float, seconds: float, amp: float = 1.0) -> np.ndarray:
    n = np.arange(round(rate * seconds))
    return (amp * np.sin(2 * np.pi * freq * n / rate)).astype(np.float32)


@pytest.mark.parametrize("rate", [16000, 48000])
def test_full_scale_sine(rate: int) -> None:
    meter = LevelMeter(rate)
    readings = meter.feed(sine(rate, 1000.0, 1.0))
    assert len(readings) == 20
    for r in readings:
        assert r.frames == rate // 20
        assert r.rms_db == pytest.approx(-10 * math.log10(2), abs=1e-3)  # -3.0103
        assert r.peak_db == pytest.approx(0.0, abs=1e-3)
        assert r.clipped == 2 * 50  # one positive and one negative peak per cycle
    assert meter.flush() == []


def test_half_scale_sine() -> None:
    (r,) = LevelMeter(16000, interval_s=0.1).feed(sine(16000, 500.0, 0.1, amp=0.5))
    assert r.rms_db == pytest.approx(-3.0103 - 6.0206, abs=1e-3)
    assert r.peak_db == pytest.approx(-6.0206, abs=1e-3)
    assert r.clipped == 0


def test_silence_floors_at_minus_120() -> None:
    readings = LevelMeter(16000).feed(np.zeros(1600, dtype=np.float32))
    assert readings == [
        LevelReading(0, 800, -120.0, -120.0, 0),
        LevelReading(800, 800, -120.0, -120.0, 0),
    ]


def test_clip_counting() -> None:
    x = np.zeros(800, dtype=np.float32)
    x[[3, 10, 500]] = [0.999, -1.0, 1.5]
    x[[20, 30]] = [0.998, -0.9989]
    (r,) = LevelMeter(16000).feed(x)
    assert r.clipped == 3
    assert r.peak_db == pytest.approx(20 * math.log10(1.5))
    (r2,) = LevelMeter(16000, clip_level=0.5).feed(x)
    assert r2.clipped == 5


def test_grid_offsets_and_flush() -> None:
    meter = LevelMeter(1000, interval_s=0.01, offset=50)  # 10-frame intervals from frame 50
    assert meter.feed(np.ones(7, dtype=np.float32)) == []
    out = meter.feed(np.ones(18, dtype=np.float32))
    assert [(r.offset, r.frames) for r in out] == [(50, 10), (60, 10)]
    assert meter.position == 75
    (last,) = meter.flush()
    assert (last.offset, last.frames, last.rms_db, last.clipped) == (70, 5, 0.0, 5)
    assert meter.flush() == []
    assert meter.feed(np.zeros(0, dtype=np.float32)) == []


def test_accepts_other_dtypes_and_rejects_2d() -> None:
    (r,) = LevelMeter(100, interval_s=0.1).feed(np.full(10, 0.5))  # float64 in
    assert r.peak_db == pytest.approx(-6.0206, abs=1e-3)
    with pytest.raises(ValueError):
        LevelMeter(100).feed(np.zeros((10, 2), dtype=np.float32))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": 0},
        {"rate": 16000, "interval_s": 0.0},
        {"rate": 10, "interval_s": 0.01},
        {"rate": 16000, "clip_level": 0.0},
        {"rate": 16000, "offset": -1},
    ],
)
def test_bad_config(kwargs: dict) -> None:
    with pytest.raises(ProcessorError):
        LevelMeter(**kwargs)


@settings(max_examples=60, deadline=None, database=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 5000),
    cuts=st.lists(st.integers(0, 5000), max_size=12),
)
def test_chunking_is_invisible(seed: int, n: int, cuts: list[int]) -> None:
    x = (np.random.default_rng(seed).standard_normal(n) * 0.4).astype(np.float32)
    whole = LevelMeter(8000, interval_s=0.0125)  # 100-frame intervals
    expected = whole.feed(x) + whole.flush()
    meter = LevelMeter(8000, interval_s=0.0125)
    got: list[LevelReading] = []
    for c in chunks(x, cuts):
        got += meter.feed(c)
    got += meter.flush()
    assert got == expected
    assert sum(r.frames for r in got) == n


def test_speech_fixture_onset_at_48k(speech_48k: np.ndarray, speech_truth: dict) -> None:
    readings = LevelMeter(48000, interval_s=0.01).feed(speech_48k)
    loud = [r for r in readings if r.rms_db > -60.0]
    onset_s = loud[0].offset / 48000
    assert onset_s == pytest.approx(speech_truth["speech"][0]["start_s"], abs=0.011)


@given(st.lists(st.integers(0, 3000), min_size=1, max_size=12),
       st.lists(st.booleans(), min_size=12, max_size=12), st.integers(0, 5000))
@settings(max_examples=200, deadline=None)
def test_skipping_keeps_the_grid(sizes: list[int], measured: list[bool], offset: int) -> None:
    """Whatever is skipped and fed, in any chunks: every reading is a whole interval of the
    grid that starts at ``offset``, not overlapping skipped audio, equal to the reading of
    that interval measured whole; and every whole interval fed entirely is read."""
    rate, interval = 16000, 800
    x = np.random.default_rng(len(sizes)).uniform(-1, 1, sum(sizes)).astype(np.float32)
    meter = LevelMeter(rate, interval_s=0.05, offset=offset)
    reference = {r.offset: r for r in LevelMeter(rate, interval_s=0.05, offset=offset).feed(x)}
    got, fed = [], np.zeros(x.size, bool)
    pos = 0
    for size, measure in zip(sizes, measured, strict=False):
        if measure:
            got += meter.feed(x[pos:pos + size])
            fed[pos:pos + size] = True
        else:
            meter.skip(size)
        pos += size
        assert meter.position == offset + pos
    for r in got:
        start = r.offset - offset
        assert start % interval == 0 and r.frames == interval
        assert fed[start:start + interval].all()
        assert r == reference[r.offset]
    whole = [s for s in range(0, x.size - interval + 1, interval) if fed[s:s + interval].all()]
    assert sorted(r.offset - offset for r in got) == whole


def test_skip_refuses_negative_counts() -> None:
    with pytest.raises(ProcessorError):
        LevelMeter(16000).skip(-1)
