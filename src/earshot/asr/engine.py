"""The speech-to-text engine interface: what the scheduler calls, whatever decodes.

An engine is anything with a ``name`` and a thread-safe
``transcribe(audio, *, final) -> Transcription``; one shared instance serves every stream
from several worker threads. Adding another engine (sherpa-onnx, Vosk, ...) is one module
with a class taking an :class:`EngineConfig` (the server's ``--asr-engine module:Class``), or
a branch in :func:`load_engine`. Engine modules import their library lazily and raise
:class:`~earshot.errors.MissingDependency` when it is absent and
:class:`~earshot.errors.ConfigError` when the model cannot be loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from earshot.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word; times in seconds from the start of the audio passed in."""

    w: str
    start: float
    end: float
    p: float  # probability / confidence in [0, 1]


@dataclass(frozen=True, slots=True)
class Transcription:
    text: str
    words: tuple[Word, ...]
    language: str | None
    duration: float  # seconds of audio transcribed


@runtime_checkable
class Engine(Protocol):
    name: str

    def transcribe(self, audio: np.ndarray, *, final: bool) -> Transcription:
        """Transcribe ``audio`` (float32 mono 16 kHz, at most a few tens of seconds).

        ``final=False`` (interim hypotheses) may trade accuracy for speed, e.g. greedy
        decoding; ``final=True`` uses the configured beam size. Word times lie within
        ``[0, duration]``. Must be safe to call from several threads at once.
        """
        ...


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    model: str  # a model name the engine knows, or a local model directory
    device: str = "cpu"  # auto | cpu | cuda (what the engine supports)
    compute_type: str = "default"  # e.g. default, int8, float16, int8_float16
    language: str | None = None  # None: detect (multilingual models)
    beam_size: int = 5  # beam width of final decodes
    threads: int = 0  # CPU threads per decode; 0 = the library's default
    workers: int = 1  # decodes the engine may run at the same time

    def __post_init__(self) -> None:
        if not self.model or not self.model.strip():
            raise ConfigError("no speech-to-text model given (a model name or directory)")
        if self.beam_size < 1:
            raise ConfigError(f"speech-to-text beam size must be ≥ 1, not {self.beam_size}")
        if self.threads < 0:
            raise ConfigError(f"speech-to-text threads must be ≥ 0, not {self.threads}")
        if self.language is not None and not self.language.strip():
            raise ConfigError("speech-to-text language must be a code like 'en', or unset")


def load_engine(cfg: EngineConfig) -> Engine:
    """The engine for ``cfg`` (currently always faster-whisper), with its model loaded.

    Raises MissingDependency when faster-whisper is not installed and ConfigError when the
    model cannot be loaded.
    """
    from earshot.asr.whisper import FasterWhisperEngine

    return FasterWhisperEngine(cfg)
