"""The engine interface and the faster-whisper wrapper's logic, with a stand-in library.

Nothing here needs faster-whisper: a fake ``faster_whisper`` module is put in
``sys.modules`` (see test_asr_whisper.py for the real library and the tiny model).
"""

from __future__ import annotations

import builtins
import dataclasses
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from earshot.asr.engine import Engine, EngineConfig, Transcription, Word, load_engine
from earshot.asr.whisper import FasterWhisperEngine, token_budget
from earshot.errors import ConfigError, EarshotError, MissingDependency

RATE = 16000


@dataclasses.dataclass
class FakeWord:
    start: float
    end: float
    word: str
    probability: float


@dataclasses.dataclass
class FakeSegment:
    start: float
    end: float
    text: str
    words: list[FakeWord] | None


class FakeWhisperModel:
    """Records its arguments and returns canned segments (some made up past the end)."""

    instances: list[FakeWhisperModel] = []
    segments: list[FakeSegment] = []

    def __init__(self, model: str, **kwargs: Any) -> None:
        if "broken" in model:
            raise RuntimeError("Unable to open file 'model.bin' in model 'broken'\nsecond line")
        self.args = (model, kwargs)
        self.calls: list[dict[str, Any]] = []
        self.model = types.SimpleNamespace(is_multilingual=False)
        self.supported_languages = ["en"]
        FakeWhisperModel.instances.append(self)

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[Any, Any]:
        self.calls.append({"audio": audio, **kwargs})
        return iter(self.segments), types.SimpleNamespace(language="en")


@pytest.fixture
def fake_fw(monkeypatch: pytest.MonkeyPatch) -> type[FakeWhisperModel]:
    module = types.ModuleType("faster_whisper")
    module.WhisperModel = FakeWhisperModel  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "faster_whisper", module)
    FakeWhisperModel.instances = []
    FakeWhisperModel.segments = [
        FakeSegment(0.0, 1.0, " Hello", [FakeWord(-0.05, 0.4, " Hello", 0.9)]),
        FakeSegment(1.0, 2.4, " world !", [FakeWord(1.2, 2.6, " world", 1.2),
                                           FakeWord(2.6, 2.7, " ", 0.5),
                                           FakeWord(2.7, 2.5, "!", 0.4)]),
        # its tokens went into the previous segment's words (faster-whisper does that when
        # a word runs over a segment boundary): the text follows the words
        FakeSegment(2.4, 2.45, "\ufffd", []),
        FakeSegment(2.5, 30.0, " made up", [FakeWord(2.5, 29.0, " made", 0.1),
                                            FakeWord(29.0, 30.0, " up", 0.1)]),
        FakeSegment(2.5, 3.0, " no words", None),
    ]
    return FakeWhisperModel


def test_dataclasses() -> None:
    w = Word("hi", 0.1, 0.2, 0.9)
    t = Transcription(text="hi", words=(w,), language="en", duration=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.w = "no"  # type: ignore[misc]
    assert not hasattr(w, "__dict__") and not hasattr(t, "__dict__")  # slots
    cfg = EngineConfig(model="tiny")
    assert (cfg.device, cfg.compute_type, cfg.language, cfg.beam_size, cfg.threads) == (
        "cpu", "default", None, 5, 0)
    with pytest.raises(TypeError):
        EngineConfig("tiny")  # type: ignore[misc]  # keyword-only


@pytest.mark.parametrize("kwargs", [{"model": ""}, {"model": "  "},
                                    {"model": "tiny", "beam_size": 0},
                                    {"model": "tiny", "threads": -1},
                                    {"model": "tiny", "language": ""}])
def test_config_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        EngineConfig(**kwargs)


def test_protocol_is_structural() -> None:
    class Echo:
        name = "echo"

        def transcribe(self, audio: np.ndarray, *, final: bool) -> Transcription:
            return Transcription("", (), None, len(audio) / 16000)

    assert isinstance(Echo(), Engine)
    assert not isinstance(object(), Engine)


def test_missing_dependency_sys_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # import raises ImportError
    with pytest.raises(MissingDependency) as info:
        load_engine(EngineConfig(model="tiny"))
    msg = str(info.value)
    assert "faster-whisper" in msg and "pip install 'earshot[asr]'" in msg
    assert "\n" not in msg
    assert isinstance(info.value, EarshotError)


def test_missing_dependency_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "faster_whisper" or name.startswith("faster_whisper."):
            raise ModuleNotFoundError("No module named 'faster_whisper'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "faster_whisper", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MissingDependency, match=r"pip install 'earshot\[asr\]'"):
        FasterWhisperEngine(EngineConfig(model="tiny"))


def test_arguments_and_guards(fake_fw: type[FakeWhisperModel]) -> None:
    engine = load_engine(EngineConfig(model="tiny.en", compute_type="int8", threads=3,
                                      beam_size=4, language="en"))
    assert isinstance(engine, Engine) and engine.name == "faster-whisper"
    model = fake_fw.instances[-1]
    assert model.args == ("tiny.en", {"device": "cpu", "compute_type": "int8",
                                      "cpu_threads": 3, "num_workers": 1})

    audio = np.zeros(40000, np.float64)  # 2.5 s, not float32: converted
    tr = engine.transcribe(audio, final=True)
    call = model.calls[-1]
    assert call["audio"].dtype == np.float32 and call["audio"].shape == (40000,)
    assert {k: call[k] for k in ("language", "beam_size", "temperature", "word_timestamps",
                                 "vad_filter", "condition_on_previous_text",
                                 "without_timestamps", "max_new_tokens")} == {
        "language": "en", "beam_size": 4, "temperature": 0.0, "word_timestamps": True,
        "vad_filter": False, "condition_on_previous_text": False,
        "without_timestamps": False, "max_new_tokens": token_budget(2.5)}
    engine.transcribe(audio, final=False)
    assert model.calls[-1]["beam_size"] == 1

    # the segment starting at 2.5 s (= the end) is dropped; words are stripped and clamped
    assert tr.text == "Hello world !"
    assert tr.duration == 2.5 and tr.language == "en"
    assert tr.words == (Word("Hello", 0.0, 0.4, 0.9), Word("world", 1.2, 2.5, 1.0),
                        Word("!", 2.5, 2.5, 0.4))


def test_text_from_segments_without_words(fake_fw: type[FakeWhisperModel]) -> None:
    fake_fw.segments = [FakeSegment(0.0, 0.5, " No", None), FakeSegment(0.5, 1.0, " words.", []),
                        FakeSegment(1.0, 2.0, " Beyond the end", None)]
    tr = load_engine(EngineConfig(model="tiny")).transcribe(np.zeros(RATE), final=False)
    assert tr == Transcription("No words.", (), "en", 1.0)


def test_empty_and_bad_audio(fake_fw: type[FakeWhisperModel]) -> None:
    engine = load_engine(EngineConfig(model="tiny"))
    assert engine.transcribe(np.zeros(0, np.float32), final=True) == Transcription(
        "", (), "en", 0.0)
    assert fake_fw.instances[-1].calls == []  # never reaches the model
    with pytest.raises(ValueError, match="mono"):
        engine.transcribe(np.zeros((2, 100), np.float32), final=True)


def test_load_errors_are_config_errors(fake_fw: type[FakeWhisperModel]) -> None:
    with pytest.raises(ConfigError, match=r"'broken'.*Unable to open file 'model\.bin'.*"
                                          r"could not be downloaded.*give that directory") as info:
        load_engine(EngineConfig(model="broken"))
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="device 'tpu' is not one of auto, cpu, cuda"):
        load_engine(EngineConfig(model="tiny", device="tpu"))
    with pytest.raises(ConfigError, match="does not know language 'fr'"):
        load_engine(EngineConfig(model="tiny.en", language="fr"))


def test_bad_local_paths(fake_fw: type[FakeWhisperModel], tmp_path: Path) -> None:
    for bad in (str(tmp_path / "missing"), "./no/such/model", "~/no-such-model-dir",
                "models/whisper/small"):
        with pytest.raises(ConfigError, match="no such model directory"):
            load_engine(EngineConfig(model=bad))
    with pytest.raises(ConfigError, match=r"has no model\.bin and no tokenizer\.json"):
        load_engine(EngineConfig(model=str(tmp_path)))
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"has no tokenizer\.json"):
        load_engine(EngineConfig(model=str(tmp_path)))
    assert fake_fw.instances == []  # all refused before faster-whisper was asked
    # Hub ids and plain names go to faster-whisper as they are
    load_engine(EngineConfig(model="Systran/faster-whisper-tiny"))
    assert fake_fw.instances[-1].args[0] == "Systran/faster-whisper-tiny"


def test_token_budget() -> None:
    budgets = [token_budget(s) for s in (-1.0, 0.0, 0.5, 2.0, 10.0, 29.0, 30.0, 600.0)]
    assert budgets == sorted(budgets)
    assert budgets[0] == budgets[1] == 32
    assert token_budget(2.0) == 64
    assert max(budgets) <= 440  # + a 3-token prompt stays within Whisper's 448
