"""faster-whisper with the tiny random Whisper model in tests/fixtures/tiny-whisper.

The model (made by scripts/make_tiny_whisper.py) has random weights: its "transcripts" are
gibberish, but loading, decoding, timestamp rules and word alignment are the real thing.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("faster_whisper")

from earshot.asr.engine import Engine, EngineConfig, Transcription, load_engine
from earshot.asr.whisper import FasterWhisperEngine
from earshot.errors import ConfigError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MODEL = FIXTURES / "tiny-whisper"
RATE = 16000


@pytest.fixture(scope="module")
def engine() -> Engine:
    return load_engine(EngineConfig(model=str(MODEL), threads=1))


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="float32")
    assert rate == RATE and x.ndim == 1
    return x


def check(tr: Transcription, duration: float) -> None:
    assert tr.duration == pytest.approx(duration)
    assert tr.language == "en"  # an English-only model
    assert tr.text == tr.text.strip()
    if tr.words:  # the text is the words (with their spacing)
        assert "".join(tr.text.split()) == "".join(w.w for w in tr.words)
    for w in tr.words:
        assert w.w and w.w == w.w.strip()
        assert 0.0 <= w.start <= w.end <= tr.duration
        assert 0.0 <= w.p <= 1.0


def test_loads_through_load_engine(engine: Engine) -> None:
    assert isinstance(engine, FasterWhisperEngine)
    assert isinstance(engine, Engine)
    assert engine.name == "faster-whisper"
    assert engine.model.model.is_multilingual is False


@pytest.mark.parametrize("final", [True, False])
def test_deterministic_on_speech(engine: Engine, speech: np.ndarray, final: bool) -> None:
    audio = speech[: 2 * RATE]
    first = engine.transcribe(audio, final=final)
    second = engine.transcribe(audio.copy(), final=final)
    assert first == second
    check(first, 2.0)
    # the random model happens to produce words here, so the bounds above are exercised
    assert first.text and first.words


def test_bounds_on_various_inputs(engine: Engine, speech: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    inputs = [speech[:1], speech[:400], speech[: RATE // 10], speech[: 5 * RATE],
              np.zeros(RATE, np.float32), 0.1 * rng.standard_normal(3 * RATE)]
    n_words = 0
    for audio in inputs:
        for final in (True, False):
            tr = engine.transcribe(audio, final=final)
            check(tr, len(audio) / RATE)
            n_words += len(tr.words)
    assert n_words > 0


def test_concurrent_calls_match_sequential(engine: Engine, speech: np.ndarray) -> None:
    clips = [speech[i * RATE : (i + 2) * RATE] for i in range(4)]
    expected = [engine.transcribe(c, final=i % 2 == 0) for i, c in enumerate(clips)]
    results: list[Transcription | None] = [None] * len(clips)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(2):
                results[i] = engine.transcribe(clips[i], final=i % 2 == 0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(clips))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert results == expected


def test_bad_model_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such model directory") as info:
        load_engine(EngineConfig(model=str(tmp_path / "nope")))
    assert str(tmp_path / "nope") in str(info.value)
    assert "give a faster-whisper model name" in str(info.value)


def test_unknown_model_name() -> None:
    with pytest.raises(ConfigError, match="cannot load speech-to-text model 'no-such-model'"):
        load_engine(EngineConfig(model="no-such-model"))


def test_corrupt_model_directory(tmp_path: Path) -> None:
    for name in ("config.json", "tokenizer.json", "vocabulary.json",
                 "preprocessor_config.json"):
        (tmp_path / name).write_bytes((MODEL / name).read_bytes())
    (tmp_path / "model.bin").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="cannot load speech-to-text model") as info:
        load_engine(EngineConfig(model=str(tmp_path)))
    assert "\n" not in str(info.value)


def test_language_not_supported_by_an_english_only_model() -> None:
    with pytest.raises(ConfigError, match="does not know language 'de'"):
        load_engine(EngineConfig(model=str(MODEL), language="de"))


def test_batch_decodes_each_audio_as_alone_in_order(engine: Engine, speech: np.ndarray) -> None:
    """Whisper-tiny's words are noise: this checks batching mechanics, not accuracy."""
    from earshot.asr.engine import batch_size

    assert batch_size(engine) == 8
    parts = [speech[12800:54244], speech[70244:96525], speech[115725:139147],
             speech[12800:54244], np.zeros(0, np.float32)]
    batch = engine.transcribe_batch(parts, final=True,  # type: ignore[attr-defined]
                                    languages=[None, "en", None, None, None])
    assert len(batch) == len(parts)
    alone = [engine.transcribe_batch([p], final=True, languages=["en"])[0]  # type: ignore[attr-defined]
             for p in parts[:3]]
    assert [t.text for t in batch[:3]] == [t.text for t in alone]
    assert batch[0] == batch[3]  # same audio, same result, wherever in the batch
    for t, p in zip(batch, parts, strict=True):
        check(t, p.size / RATE)
    assert batch[4].text == "" and batch[4].words == ()
    assert engine.languages == ("en",)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="mono"):
        engine.transcribe_batch([np.zeros((10, 2), np.float32), parts[0]],  # type: ignore[attr-defined]
                                final=False, languages=[None, None])
