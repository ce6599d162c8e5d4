"""VadSegmenter on synthetic probabilities (10 ms windows: 160 frames at 16 kHz).

With the defaults that is min_speech 25 windows, min_silence 30 windows, pad 10 windows.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from earshot.dsp.vad import VadEvent, VadSegmenter
from earshot.errors import ProcessorError

W = 160


def seg(**kwargs: float) -> VadSegmenter:
    return VadSegmenter(window=W, rate=16000, **kwargs)  # type: ignore[arg-type]


def run(s: VadSegmenter, probs: list[float]) -> list[tuple[int, VadEvent]]:
    """Feed one window at a time; return (index of the window that emitted it, event)."""
    out = []
    for i, p in enumerate(probs):
        out += [(i, e) for e in s.feed([p], i * W)]
    return out


def events(s: VadSegmenter, probs: list[float], offset: int = 0) -> list[tuple[str, int]]:
    return [(e.kind, e.offset) for e in s.feed(probs, offset)]


def test_defaults() -> None:
    s = VadSegmenter()
    assert (s.threshold, s.neg_threshold, s.window, s.rate) == (0.5, 0.35, 512, 16000)
    assert (s.min_speech, s.min_silence, s.pad) == (4000, 4800, 1600)
    assert VadSegmenter(threshold=0.1).neg_threshold == 0.01


def test_basic_segment_offsets_and_emission_delay() -> None:
    probs = [0.0] * 50 + [0.9] * 50 + [0.0] * 50
    s = seg()
    got = run(s, probs)
    assert [(i, e.kind, e.offset) for i, e in got] == [
        (50 + 25 - 1, "speech_start", (50 - 10) * W),  # reported once 25 windows long
        (100 + 30 - 1, "speech_end", (100 + 10) * W),  # reported after 30 silent windows
    ]
    assert got[0][1].prob == pytest.approx(0.9) and got[1][1].prob == 0.0
    assert not s.in_speech
    assert s.flush(150 * W) == []


def test_in_speech_flag() -> None:
    s = seg()
    s.feed([0.9] * 24, 0)
    assert not s.in_speech
    s.feed([0.9], 24 * W)
    assert s.in_speech


def test_short_segments_are_never_reported() -> None:
    assert events(seg(), [0.0] * 5 + [1.0] * 24 + [0.0] * 40) == []
    assert events(seg(), [0.0] * 5 + [1.0] * 25 + [0.0] * 40) == [
        ("speech_start", 0),
        ("speech_end", 40 * W),
    ]
    # a short blip between two real segments does not disturb them
    probs = [1.0] * 30 + [0.0] * 40 + [1.0] * 5 + [0.0] * 40 + [1.0] * 30 + [0.0] * 40
    assert events(seg(), probs) == [
        ("speech_start", 0),
        ("speech_end", 40 * W),
        ("speech_start", 105 * W),
        ("speech_end", 155 * W),
    ]


def test_min_speech_zero_confirms_immediately() -> None:
    assert run(seg(min_speech_ms=0, pad_ms=0), [0.0, 0.8])[0][0] == 1


def test_hysteresis_between_thresholds_keeps_speech_going() -> None:
    probs = [1.0] * 30 + [0.4] * 50 + [0.0] * 40
    assert events(seg(), probs) == [("speech_start", 0), ("speech_end", (80 + 10) * W)]
    # starting needs threshold, the in-between band alone never opens a segment
    assert events(seg(), [0.0] * 10 + [0.49] * 100 + [0.0] * 40) == []


def test_in_between_probs_do_not_cancel_a_silence_countdown() -> None:
    probs = [1.0] * 30 + [0.0] * 10 + [0.4] * 25 + [0.0] * 5
    got = run(seg(), probs)
    assert [(i, e.kind, e.offset) for i, e in got] == [
        (24, "speech_start", 0),
        (30 + 30 - 1, "speech_end", (30 + 10) * W),
    ]


def test_short_dip_does_not_split() -> None:
    probs = [1.0] * 30 + [0.0] * 29 + [1.0] * 30 + [0.0] * 40
    assert events(seg(), probs) == [("speech_start", 0), ("speech_end", (89 + 10) * W)]


def test_long_dip_splits_and_start_padding() -> None:
    probs = [0.0] * 5 + [1.0] * 30 + [0.0] * 30 + [1.0] * 30 + [0.0] * 40
    assert events(seg(), probs) == [
        ("speech_start", 0),  # 5 windows in: padding clamps at 0
        ("speech_end", (35 + 10) * W),
        ("speech_start", (65 - 10) * W),
        ("speech_end", (95 + 10) * W),
    ]


def test_start_never_precedes_previous_end() -> None:
    probs = [1.0] * 30 + [0.0] * 30 + [1.0] * 30 + [0.0] * 60
    # pad 40 windows > half the gap: the second start is clamped to the first end
    assert events(seg(pad_ms=400), probs) == [
        ("speech_start", 0),
        ("speech_end", 70 * W),
        ("speech_start", 70 * W),
        ("speech_end", 130 * W),
    ]


def test_offset_shifts_everything() -> None:
    probs = [0.0] * 20 + [1.0] * 30 + [0.0] * 30
    base = 123_456
    assert events(seg(), probs, base) == [
        ("speech_start", base + 10 * W),
        ("speech_end", base + 60 * W),
    ]


def test_flush_closes_an_open_segment() -> None:
    s = seg()
    assert events(s, [0.0] * 20 + [0.8] * 40) == [("speech_start", 10 * W)]
    (end,) = s.flush(60 * W + 37)  # stream ended mid-window, pad capped at stream end
    assert (end.kind, end.offset, end.prob) == ("speech_end", 60 * W + 37, pytest.approx(0.8))
    assert s.flush(60 * W + 37) == []
    # a later segment still cannot start before that end
    assert events(s, [1.0] * 30 + [0.0] * 30, 60 * W + 37)[0] == ("speech_start", 60 * W + 37)


def test_flush_during_countdown_and_unconfirmed() -> None:
    s = seg()
    s.feed([1.0] * 30 + [0.1] * 5, 0)
    (end,) = s.flush(1_000_000)
    assert (end.offset, end.prob) == ((30 + 10) * W, pytest.approx(0.1))
    s = seg()
    assert s.feed([1.0] * 10, 0) == []
    assert s.flush(10 * W) == []  # too short: never reported


def test_flush_on_idle_is_empty() -> None:
    assert seg().flush(0) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 0.0},
        {"threshold": 1.5},
        {"threshold": 0.5, "neg_threshold": 0.6},
        {"neg_threshold": -0.1},
        {"min_speech_ms": -1.0},
        {"pad_ms": -5.0},
        {"window": 0},
        {"rate": 0},
    ],
)
def test_bad_config(kwargs: dict) -> None:
    with pytest.raises(ProcessorError):
        VadSegmenter(**kwargs)


probability = st.sampled_from([0.0, 0.1, 0.3, 0.36, 0.45, 0.5, 0.7, 1.0])
runs = st.lists(st.tuples(probability, st.integers(1, 40)), max_size=25)


@settings(max_examples=150, deadline=None, database=None)
@given(runs=runs, cuts=st.lists(st.integers(0, 1000), max_size=10))
def test_chunking_is_invisible(runs: list[tuple[float, int]], cuts: list[int]) -> None:
    probs = [p for p, n in runs for _ in range(n)]
    whole = seg()
    expected = whole.feed(probs, 0) + whole.flush(len(probs) * W)
    s = seg()
    got: list[VadEvent] = []
    points = [0, *sorted(min(c, len(probs)) for c in cuts), len(probs)]
    for a, b in itertools.pairwise(points):
        got += s.feed(probs[a:b], a * W)
    got += s.flush(len(probs) * W)
    assert got == expected
    # events alternate start/end, are ordered, and every segment is long enough
    kinds = [e.kind for e in got]
    assert kinds == ["speech_start", "speech_end"] * (len(got) // 2)
    offsets = [e.offset for e in got]
    assert offsets == sorted(offsets)
    for start, end in zip(offsets[::2], offsets[1::2], strict=True):
        assert end - start >= 4000


def test_pending_end_is_the_end_a_silence_will_give_unless_speech_resumes() -> None:
    s = seg()
    s.feed([0.9] * 40, 0)
    assert s.in_speech and s.pending_end is None  # speaking: no end in sight
    s.feed([0.0], 40 * W)  # silence begins: the countdown starts
    assert s.pending_end == (40 + 10) * W
    s.feed([0.4] * 5, 41 * W)  # in-between windows do not cancel it
    assert s.pending_end == (40 + 10) * W
    s.feed([0.9] * 10, 46 * W)  # speech resumes: no end pending
    assert s.pending_end is None
    s.feed([0.0] * 5, 56 * W)  # a new silence: a later end
    assert s.pending_end == (56 + 10) * W
    got = events(s, [0.0] * 30, 61 * W)  # it lasts: the end is the one announced
    assert got == [("speech_end", (56 + 10) * W)] and s.pending_end is None


def test_no_pending_end_for_a_segment_not_yet_reported() -> None:
    s = seg()
    s.feed([0.9] * 10 + [0.0], 0)  # too short to have been reported
    assert not s.in_speech and s.pending_end is None
