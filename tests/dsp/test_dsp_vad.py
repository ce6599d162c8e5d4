"""SileroModel and StreamingVad against the bundled model and the speech fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from earshot.dsp.vad import DEFAULT_MODEL_PATH, SileroModel, StreamingVad, VadEvent
from earshot.errors import ProcessorError

RATE = 16000


def segments(events: list[VadEvent]) -> list[tuple[int, int]]:
    kinds = [e.kind for e in events]
    assert kinds == ["speech_start", "speech_end"] * (len(events) // 2)
    return [(a.offset, b.offset) for a, b in zip(events[::2], events[1::2], strict=True)]


def run_vad(vad: StreamingVad, x: np.ndarray, chunk: int, offset: int = 0) -> list[VadEvent]:
    events: list[VadEvent] = []
    for i in range(0, x.size, chunk):
        events += vad.feed(x[i : i + chunk], offset + i).events
    return events + vad.flush()


def test_model_ships_with_licence() -> None:
    assert DEFAULT_MODEL_PATH.is_file()
    assert DEFAULT_MODEL_PATH.stat().st_size < 3_000_000
    licence = DEFAULT_MODEL_PATH.with_name("LICENSE-silero-vad.txt").read_text()
    assert "MIT License" in licence and "Silero Team" in licence


def test_session_is_shared_state_is_not(speech_16k: np.ndarray) -> None:
    a, b = SileroModel(), SileroModel()
    assert a._session is b._session
    windows = speech_16k[13_000 : 13_000 + 20 * 512].reshape(20, 512)
    pa = a.score(windows)
    assert b(np.zeros(512, dtype=np.float32)) < 0.1  # b's state diverges from a's
    a.reset()
    assert np.array_equal(a.score(windows), pa)
    assert pa.dtype == np.float32 and pa.max() > 0.9


def test_score_equals_repeated_calls(speech_16k: np.ndarray) -> None:
    x = speech_16k[12_000 : 12_000 + 30 * 512]
    batch = SileroModel().score(x)  # 1-D input of whole windows is accepted
    single = SileroModel()
    assert np.array_equal(batch, np.array([single(w) for w in x.reshape(-1, 512)], np.float32))


def test_model_input_validation(tmp_path: Path) -> None:
    m = SileroModel()
    with pytest.raises(ValueError):
        m(np.zeros(511, dtype=np.float32))
    with pytest.raises(ValueError):
        m.score(np.zeros((2, 256), dtype=np.float32))
    with pytest.raises(ProcessorError):
        SileroModel(rate=44100)
    with pytest.raises(ProcessorError):
        SileroModel(tmp_path / "missing.onnx")
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(ProcessorError):
        SileroModel(bogus)


def test_streaming_vad_config_errors() -> None:
    with pytest.raises(ProcessorError):
        StreamingVad(44100)
    with pytest.raises(ProcessorError):
        StreamingVad(16000, model=SileroModel(rate=8000))
    with pytest.raises(ProcessorError):
        StreamingVad(threshold=2.0)


def test_finds_the_three_phrases(speech_16k: np.ndarray, speech_truth: dict) -> None:
    vad = StreamingVad()
    pad = vad.segmenter.pad
    found = segments(run_vad(vad, speech_16k, chunk=320))  # 20 ms chunks
    truth = [(s["start"], s["end"]) for s in speech_truth["speech"]]
    assert len(found) == len(truth) == 3
    # Boundaries are on the 32 ms window grid and Silero's output lags the audio by one
    # to three windows, so allow 100 ms plus one window around the detected (unpadded)
    # boundaries; the padded segment must contain the whole phrase.
    tol = RATE // 10 + vad.window
    for (start, end), (t_start, t_end) in zip(found, truth, strict=True):
        assert start <= t_start and end >= t_end
        assert abs(start + pad - t_start) <= tol, (start, t_start)
        assert abs(end - pad - t_end) <= tol, (end, t_end)


def test_probabilities_and_offsets(speech_16k: np.ndarray) -> None:
    vad = StreamingVad()
    first = vad.feed(speech_16k[:1000], 48_000)  # stream attached mid-way: frame 48000
    assert first.probs_offset == 48_000 and first.probs.shape == (1,)
    second = vad.feed(speech_16k[1000:2000], 49_000)
    assert second.probs_offset == 48_512 and second.probs.shape == (2,)
    assert vad.position == 50_000
    with pytest.raises(ValueError):
        vad.feed(speech_16k[:10], 49_999)
    assert vad.flush() == []
    assert StreamingVad().flush() == []


def test_offset_shifts_events(speech_16k: np.ndarray) -> None:
    base = 10 * 512 * 1000
    plain = run_vad(StreamingVad(), speech_16k, chunk=4096)
    shifted = run_vad(StreamingVad(), speech_16k, chunk=4096, offset=base)
    assert [(e.kind, e.offset + base, e.prob) for e in plain] == [
        (e.kind, e.offset, e.prob) for e in shifted
    ]


def test_48k_fixture_has_same_timing(speech_48k: np.ndarray, speech_truth: dict) -> None:
    x = soxr.resample(speech_48k, 48000, RATE).astype(np.float32)
    vad = StreamingVad()
    found = segments(run_vad(vad, x, chunk=1600))
    truth = [(s["start"], s["end"]) for s in speech_truth["speech"]]
    assert len(found) == 3
    for (start, end), (t_start, t_end) in zip(found, truth, strict=True):
        assert start <= t_start and end >= t_end


def test_8k_model(speech_16k: np.ndarray) -> None:
    x = soxr.resample(speech_16k, RATE, 8000).astype(np.float32)
    vad = StreamingVad(8000)
    assert vad.window == 256
    assert len(segments(run_vad(vad, x, chunk=160))) == 3


@settings(max_examples=12, deadline=None, database=None)
@given(cuts=st.lists(st.integers(0, 48_000), max_size=12))
def test_chunking_is_invisible(speech_16k: np.ndarray, cuts: list[int]) -> None:
    x = speech_16k[60_000:108_000]  # 3 s around phrase B
    whole = StreamingVad()
    r = whole.feed(x, 60_000)
    expected = r.events + whole.flush()
    vad = StreamingVad()
    events: list[VadEvent] = []
    probs = []
    pos = 60_000
    for piece in np.split(x, sorted(cuts)):
        res = vad.feed(piece, pos)
        assert res.probs_offset == 60_000 + 512 * sum(p.size for p in probs)
        pos += piece.size
        events += res.events
        probs.append(res.probs)
    events += vad.flush()
    assert events == expected and len(expected) == 2
    assert np.array_equal(np.concatenate(probs), r.probs)


def test_tentative_end_announces_each_speech_end_before_it_comes(
        speech_16k: np.ndarray) -> None:
    """The tentative end appears when silence begins (before the VAD is sure) and is the
    very offset of the speech_end that follows (refined the same way); it goes away when
    speech resumes, and a later silence announces a later end."""
    vad = StreamingVad(min_silence_ms=300, pad_ms=30)
    announced: list[tuple[int, int]] = []  # (position when first seen, tentative end)
    ends: list[tuple[int, int]] = []  # (position when reported, offset)
    for i in range(0, speech_16k.size, 320):
        r = vad.feed(speech_16k[i:i + 320], i)
        t = vad.tentative_end
        if t is not None and (not announced or announced[-1][1] != t):
            announced.append((i + 320, t))
        ends += [(i + 320, e.offset) for e in r.events if e.kind == "speech_end"]
    assert len(ends) == 3 and vad.tentative_end is None
    for at, end in ends:
        before = [(a, t) for a, t in announced if a < at]
        assert before and before[-1][1] == end  # announced, exactly
        assert at - before[-1][0] >= 0.25 * RATE  # most of the silence earlier
