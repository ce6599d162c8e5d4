"""faster-whisper (Whisper on CTranslate2) as an earshot speech-to-text engine.

``faster_whisper`` is imported lazily (``pip install 'earshot[asr]'``). One
:class:`FasterWhisperEngine` serves every stream: ``WhisperModel.transcribe`` keeps no state
between calls on the model object and CTranslate2 queues concurrent ``generate``/``align``
calls onto its worker replicas (one by default, so concurrent decodes are serialised inside
CTranslate2 while the GIL is released), hence no lock here.

Whisper quirks handled here:

* Audio is padded to 30 s windows, and a confused model (or a random one) happily emits
  timestamps, segments and words in that padding: segments starting at or after the end of
  the audio are dropped and word times are clamped to ``[0, duration]``.
* Decoding can run on without an end-of-text token (repetition loops): the tokens per window
  are capped in proportion to the audio's length (:func:`token_budget`).
* The text is the words joined (they keep their leading spaces), so text and words agree
  even when faster-whisper hands a word spanning two segments to the first one only.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from earshot.asr.engine import EngineConfig, Transcription, Word
from earshot.errors import ConfigError, MissingDependency

RATE = 16000
WINDOW = 30.0  # seconds Whisper sees per decoding window
DEVICES = ("auto", "cpu", "cuda")
INSTALL_HINT = "pip install 'earshot[asr]'"
MODEL_HINT = ("give a faster-whisper model name (tiny, base.en, small, large-v3, ...) "
              "or a local model directory")
_MAX_LENGTH = 448  # Whisper's decoder context; prompt + new tokens must fit


def import_faster_whisper() -> Any:
    try:
        import faster_whisper
    except (ImportError, OSError) as exc:  # OSError: a native library failed to load
        raise MissingDependency(
            f"speech-to-text needs faster-whisper ({exc}): {INSTALL_HINT}"
        ) from None
    return faster_whisper


def token_budget(seconds: float) -> int:
    """``max_new_tokens`` per window for ``seconds`` of audio: 32 + 16 per second, ≤ 440.

    Fluent speech is 3-6 tokens per second (plus two timestamps per segment), so this only
    stops runaway repetition; it also keeps a looping interim on a short buffer cheap.
    CTranslate2 4.x additionally caps every window at ``max_length // 2`` decoding steps
    (faster-whisper passes ``max_length = len(prompt) + max_new_tokens``), so the effective
    cap is about half of this, and 224 tokens at most, as without a budget.
    """
    window = min(max(seconds, 0.0), WINDOW)
    return min(_MAX_LENGTH - 8, 32 + math.ceil(16 * window))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _model_argument(model: str) -> str:
    """``model`` as faster-whisper should get it; fail early on a broken local directory.

    A directory must hold model.bin and tokenizer.json (without tokenizer.json faster-whisper
    would silently fetch openai/whisper-tiny's tokenizer from the Hugging Face Hub). Anything
    that is clearly a path but not a directory is an error rather than a Hub model id.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        missing = [f for f in ("model.bin", "tokenizer.json") if not (path / f).is_file()]
        if missing:
            raise ConfigError(
                f"cannot load speech-to-text model {model!r}: the directory has no "
                f"{' and no '.join(missing)}; it must be a faster-whisper (CTranslate2) "
                "conversion, e.g. made with ct2-transformers-converter --copy_files "
                "tokenizer.json preprocessor_config.json"
            )
        return str(path)
    looks_like_path = (
        path.is_absolute()
        or model.startswith(("~", "."))
        or "\\" in model
        or model.count("/") > 1  # Hub ids are "owner/name"
        or path.exists()
    )
    if looks_like_path:
        raise ConfigError(
            f"cannot load speech-to-text model {model!r}: no such model directory; {MODEL_HINT}"
        )
    return model


class FasterWhisperEngine:
    """A faster-whisper ``WhisperModel`` behind the :class:`~earshot.asr.engine.Engine`
    interface. ``cfg.model`` is a model name (downloaded on first use where there is
    internet), a Hub id ``owner/name``, or a local CTranslate2 model directory.

    Batching (``max_batch``): several streams' utterances (each at most 30 s, one Whisper
    window) are encoded and decoded in one CTranslate2 ``generate`` call on a batch, through
    faster-whisper's ``BatchedInferencePipeline.forward`` — one call per language in the
    batch. Utterances of unknown language on a multilingual model are decoded one by one
    (language detection per utterance).
    """

    name = "faster-whisper"
    max_batch = 8

    def __init__(self, cfg: EngineConfig) -> None:
        fw = import_faster_whisper()
        if cfg.device not in DEVICES:
            raise ConfigError(
                f"speech-to-text device {cfg.device!r} is not one of {', '.join(DEVICES)}"
            )
        model_arg = _model_argument(cfg.model)
        quiet = logging.getLogger("faster_whisper")
        if quiet.level == logging.NOTSET:  # it logs every call at INFO
            quiet.setLevel(logging.WARNING)
        try:
            model = fw.WhisperModel(model_arg, device=cfg.device,
                                    compute_type=cfg.compute_type, cpu_threads=cfg.threads,
                                    num_workers=max(1, cfg.workers))
        except Exception as exc:  # ValueError, RuntimeError, OSError, Hub errors, ...
            raise ConfigError(
                f"cannot load speech-to-text model {cfg.model!r} (device {cfg.device}, "
                f"compute type {cfg.compute_type}): {_one_line(exc)}; a model name is "
                "downloaded from the Hugging Face Hub on first use, which needs internet: if "
                "it could not be downloaded, fetch the faster-whisper model where there is "
                "internet, copy its directory (model.bin, tokenizer.json, ...) here and give "
                "that directory instead, e.g. --asr-model ./models/faster-whisper-small.en"
            ) from exc
        languages = list(model.supported_languages)
        if cfg.language is not None and cfg.language not in languages:
            shown = ", ".join(languages[:12]) + (", ..." if len(languages) > 12 else "")
            raise ConfigError(
                f"speech-to-text model {cfg.model!r} does not know language "
                f"{cfg.language!r} (it knows {shown})"
            )
        self.config = cfg
        self.model = model
        self.multilingual = bool(model.model.is_multilingual)
        #: languages a stream may ask for (English-only models: just "en")
        self.languages: tuple[str, ...] = tuple(languages) if self.multilingual else ("en",)

    def transcribe(self, audio: np.ndarray, *, final: bool,
                   language: str | None = None) -> Transcription:
        cfg = self.config
        language = language or cfg.language
        x = np.ascontiguousarray(audio, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"audio must be mono (one dimension), not shape {x.shape}")
        duration = x.size / RATE
        if x.size == 0:
            language = language or (None if self.multilingual else "en")
            return Transcription(text="", words=(), language=language, duration=0.0)
        segments, info = self.model.transcribe(
            x,
            language=language,
            beam_size=cfg.beam_size if final else 1,
            temperature=0.0,
            word_timestamps=True,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=False,
            max_new_tokens=token_budget(duration),
        )
        texts: list[str] = []
        raw_words: list[str] = []
        words: list[Word] = []
        for seg in segments:  # a lazy generator: decoding happens while iterating
            if seg.start >= duration:
                continue  # made up in the padding after the end of the audio
            texts.append(seg.text)
            for w in seg.words or ():
                raw_words.append(w.word)
                token = w.word.strip()
                if not token:
                    continue
                start = min(max(round(float(w.start), 3), 0.0), duration)
                end = min(max(round(float(w.end), 3), start), duration)
                p = min(max(float(w.probability), 0.0), 1.0)
                words.append(Word(token, start, end, p))
        # The words carry their leading spaces, so joined they are the segments' text. Not
        # always: faster-whisper aligns a window's tokens at once and a word running over a
        # segment boundary (e.g. a split UTF-8 sequence) goes to the first segment only. The
        # text is made of the words then, so that text and words always agree.
        text = "".join(raw_words if words else texts).strip()
        return Transcription(text=text, words=tuple(words), language=info.language,
                             duration=duration)

    def transcribe_batch(self, audios: Sequence[np.ndarray], *, final: bool,
                         languages: Sequence[str | None]) -> list[Transcription]:
        out: list[Transcription | None] = [None] * len(audios)
        groups: dict[str | None, list[int]] = {}
        for i, (audio, language) in enumerate(zip(audios, languages, strict=True)):
            language = language or self.config.language or (None if self.multilingual
                                                            else "en")
            if language is None or np.asarray(audio).size == 0:
                out[i] = self.transcribe(audio, final=final)  # detect, or nothing to decode
            else:
                groups.setdefault(language, []).append(i)
        for language, idx in groups.items():
            assert language is not None
            for i, result in zip(idx, self._batch([audios[i] for i in idx], final, language),
                                 strict=True):
                out[i] = result
        return [r for r in out if r is not None]

    def _batch(self, audios: list[np.ndarray], final: bool,
               language: str) -> list[Transcription]:
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import (
            BatchedInferencePipeline,
            TranscriptionOptions,
            get_suppressed_tokens,
        )

        model = self.model
        defaults = inspect.signature(model.transcribe).parameters  # the library's punctuation
        xs = []
        for a in audios:
            x = np.ascontiguousarray(a, dtype=np.float32)
            if x.ndim != 1:
                raise ValueError(f"audio must be mono (one dimension), not shape {x.shape}")
            xs.append(x[: int(WINDOW * RATE)])
        durations = [x.size / RATE for x in xs]
        features = np.stack([pad_or_trim(model.feature_extractor(x)[..., :-1]) for x in xs])
        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual,
                              task="transcribe", language=language)
        options = TranscriptionOptions(
            beam_size=self.config.beam_size if final else 1, best_of=1, patience=1.0,
            length_penalty=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0,
            log_prob_threshold=None, no_speech_threshold=None,
            compression_ratio_threshold=None, condition_on_previous_text=False,
            prompt_reset_on_temperature=0.5, temperatures=[0.0], initial_prompt=None,
            prefix=None, suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]), without_timestamps=False,
            max_initial_timestamp=1.0, word_timestamps=True,
            prepend_punctuations=defaults["prepend_punctuations"].default,
            append_punctuations=defaults["append_punctuations"].default, multilingual=False,
            max_new_tokens=token_budget(max(durations)), clip_timestamps="0",
            hallucination_silence_threshold=None, hotwords=None)
        metadata = [{"offset": 0.0, "duration": d, "segments": []} for d in durations]
        outputs = BatchedInferencePipeline(model).forward(features, tokenizer, metadata,
                                                          options)
        results = []
        for segments, duration in zip(outputs, durations, strict=True):
            raw_words: list[str] = []
            texts: list[str] = []
            words: list[Word] = []
            for seg in segments:
                if seg["start"] >= duration:
                    continue  # made up in the padding after the end of the audio
                texts.append(seg["text"])
                for w in seg.get("words") or ():
                    raw_words.append(w["word"])
                    token = w["word"].strip()
                    if not token:
                        continue
                    start = min(max(round(float(w["start"]), 3), 0.0), duration)
                    end = min(max(round(float(w["end"]), 3), start), duration)
                    p = min(max(float(w["probability"]), 0.0), 1.0)
                    words.append(Word(token, start, end, p))
            text = "".join(raw_words if words else texts).strip()
            results.append(Transcription(text=text, words=tuple(words), language=language,
                                         duration=duration))
        return results

    def __repr__(self) -> str:
        return f"FasterWhisperEngine(model={self.config.model!r}, device={self.config.device!r})"

