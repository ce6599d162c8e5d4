"""The speech-to-text engine interface: what the scheduler calls, whatever decodes.

An engine is anything with a ``name`` and a thread-safe
``transcribe(audio, *, final) -> Transcription``; one shared instance serves every stream
from several worker threads. Adding another engine (sherpa-onnx, Vosk, ...) is one module
with a class taking an :class:`EngineConfig` (the server's ``--asr-engine module:Class``), or
a name in :data:`ENGINES`. Engine modules import their library lazily and raise
:class:`~earshot.errors.MissingDependency` when it is absent and
:class:`~earshot.errors.ConfigError` when the model cannot be loaded.

Optional capabilities, each declared by a class attribute (absent means no):

* ``languages: tuple[str, ...] | None`` — the languages (ISO 639-1 codes) a stream may ask
  for; ``transcribe`` then takes ``language=`` per call. An engine without the attribute
  only ever decodes its configured language, and a stream asking for another one gets a
  ``warning``.
* ``incremental = True`` — the engine decodes as audio arrives (:class:`IncrementalEngine`):
  ``begin()`` opens an :class:`UtteranceDecoder` per utterance, which is fed only the new
  audio for every interim and finished for the final, instead of re-decoding the utterance
  so far each time. The scheduler keeps one decoder per stream's open utterance.
* ``two_pass = True`` (with ``incremental``) — the final is not the incremental decoder's
  hypothesis but a second decode of the whole finished utterance (PocketSphinx then
  normalises the cepstrum over the whole utterance: fewer errors), so a final may differ from
  the interims; its :class:`Transcription` carries the first pass's text and both timings.
* ``speculative = True`` (with ``two_pass``) — its utterance decoders also offer
  ``speculate(audio) -> Transcription`` (add ``audio``, the rest of the utterance up to
  where it may end, and decode the utterance so far whole, now; the utterance may go on)
  and ``finish_with(second) -> Transcription`` (finish the first pass only and return
  ``second`` with the first pass's text and seconds): the scheduler then decodes a finished
  utterance speculatively while the VAD waits to confirm its end (docs/asr.md).
* ``max_batch: int`` greater than 1 — ``transcribe_batch`` decodes several streams' audio
  in one call (:class:`BatchEngine`); the scheduler hands it up to ``max_batch`` waiting
  finals (or interims) at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, cast, runtime_checkable

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
    #: two-pass engines (a final decoded again whole): the first pass's text and the
    #: seconds each pass took (None: one pass)
    first_text: str | None = None
    first_decode: float | None = None
    second_decode: float | None = None


@runtime_checkable
class Engine(Protocol):
    name: str

    def transcribe(self, audio: np.ndarray, *, final: bool) -> Transcription:
        """Transcribe ``audio`` (float32 mono 16 kHz, at most a few tens of seconds).

        ``final=False`` (interim hypotheses) may trade accuracy for speed, e.g. greedy
        decoding; ``final=True`` uses the configured beam size. Word times lie within
        ``[0, duration]``. Must be safe to call from several threads at once. Engines that
        declare ``languages`` also take ``language: str | None`` (None: the configured
        one); it is passed only when a stream asks for a language.
        """
        ...


@runtime_checkable
class UtteranceDecoder(Protocol):
    """One utterance being decoded incrementally. Used by one thread at a time."""

    def feed(self, audio: np.ndarray) -> None:
        """Decode the next ``audio`` (float32 mono 16 kHz, following what came before)."""
        ...

    def partial(self) -> Transcription:
        """The hypothesis for the audio fed so far (cheap: no new decoding)."""
        ...

    def finish(self) -> Transcription:
        """The final transcription of everything fed; the decoder is closed afterwards."""
        ...

    def close(self) -> None:
        """Abandon the utterance (no result) and release what it holds. Idempotent."""
        ...


@runtime_checkable
class IncrementalEngine(Engine, Protocol):
    incremental: Literal[True]

    def begin(self, *, language: str | None = None) -> UtteranceDecoder:
        """A decoder for a new utterance (thread-safe: many may be open at once)."""
        ...


@runtime_checkable
class BatchEngine(Engine, Protocol):
    max_batch: int

    def transcribe_batch(self, audios: Sequence[np.ndarray], *, final: bool,
                         languages: Sequence[str | None]) -> list[Transcription]:
        """``transcribe`` for several audios in one call: one result per audio, in order."""
        ...


def is_incremental(engine: object) -> bool:
    return getattr(engine, "incremental", False) is True and callable(
        getattr(engine, "begin", None))


def is_two_pass(engine: object) -> bool:
    """The engine decodes finals again, whole (they may differ from the interims)."""
    return is_incremental(engine) and getattr(engine, "two_pass", False) is True


def batch_size(engine: object) -> int:
    """How many audios the engine decodes in one call (1: no batching)."""
    n = getattr(engine, "max_batch", 1)
    if not isinstance(n, int) or n < 1 or not callable(getattr(engine, "transcribe_batch",
                                                               None)):
        return 1
    return n


def primary_language(tag: str) -> str:
    """The ISO 639 code of a BCP 47 tag: ``"en-US"`` → ``"en"``, ``"pt_BR"`` → ``"pt"``."""
    return tag.strip().replace("_", "-").split("-")[0].lower()


def language_problem(engine: object, language: str) -> str | None:
    """Why ``engine`` cannot decode ``language`` for one stream (None: it can)."""
    code = primary_language(language)
    known = getattr(engine, "languages", None)
    name = getattr(engine, "name", "this engine")
    if known is None:
        if hasattr(engine, "languages"):
            return None  # declared: any language
        return (f"the speech-to-text engine {name} does not take a language per stream; "
                f"{language!r} is ignored")
    if code not in known:
        shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
        only = " only" if len(known) <= 3 else ""
        fallback = f"; transcribing as {known[0]}" if known else ""
        return (f"the speech-to-text engine {name} knows{only} {shown}, "
                f"not {language!r}{fallback}")
    return None


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    model: str  # a model name the engine knows, or a local model directory
    device: str = "cpu"  # auto | cpu | cuda (what the engine supports)
    compute_type: str = "default"  # e.g. default, int8, float16, int8_float16
    language: str | None = None  # None: detect (multilingual models)
    beam_size: int = 5  # beam width of final decodes
    threads: int = 0  # CPU threads per decode; 0 = the library's default
    workers: int = 1  # decodes the engine may run at the same time
    two_pass: bool = True  # incremental engines: decode each finished utterance whole again

    def __post_init__(self) -> None:
        if not self.model or not self.model.strip():
            raise ConfigError("no speech-to-text model given (a model name or directory)")
        if self.beam_size < 1:
            raise ConfigError(f"speech-to-text beam size must be ≥ 1, not {self.beam_size}")
        if self.threads < 0:
            raise ConfigError(f"speech-to-text threads must be ≥ 0, not {self.threads}")
        if self.language is not None and not self.language.strip():
            raise ConfigError("speech-to-text language must be a code like 'en', or unset")


#: built-in engines: ``--asr-engine`` name → ``module:Class``
ENGINES = {
    "faster-whisper": "earshot.asr.whisper:FasterWhisperEngine",
    "pocketsphinx": "earshot.asr.pocketsphinx:PocketSphinxEngine",
}


def load_engine(cfg: EngineConfig, engine: str = "faster-whisper") -> Engine:
    """The engine named ``engine`` (a name in :data:`ENGINES` or ``package.module:Class``)
    for ``cfg``, with its model loaded.

    Raises MissingDependency when the engine's library is not installed and ConfigError
    when the engine or the model cannot be loaded.
    """
    import importlib

    target = ENGINES.get(engine, engine)
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"speech-to-text engine {engine!r} is not one of "
                          f"{', '.join(ENGINES)} nor package.module:Class")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load speech-to-text engine {engine!r}: {exc}") from None
    try:
        return cast(Engine, cls(cfg))
    except TypeError as exc:
        raise ConfigError(f"cannot load speech-to-text engine {engine!r}: {exc}") from None
