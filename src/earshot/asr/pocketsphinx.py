"""PocketSphinx (CMU Sphinx) as an earshot speech-to-text engine: the default, offline.

The ``pocketsphinx`` wheel on PyPI carries a US English acoustic model, the CMU
pronouncing dictionary and a trigram language model (BSD-style licence, CMU), so speech-to-
text works with no download and no configuration. Accuracy is far below Whisper's on real
microphones; it is here so that a fresh server transcribes at all.

PocketSphinx decodes incrementally: audio is fed as it arrives and the partial hypothesis
can be read at any time, so interims cost only the new audio (the engine declares
``incremental = True``). A ``Decoder`` holds its own copy of the models (about 90 MB) and
is not thread-safe: the engine keeps a pool, one decoder per utterance being decoded,
reused afterwards. Its native code holds the GIL, so audio is fed in pieces of 0.1 s (a few
ms of CPU each) to keep the event loop responsive.

``--asr-model`` may name ``en-us`` (the bundled model, the default) or a directory holding
an acoustic model directory (with ``mdef``), a ``*.lm.bin`` (or ``*.lm``) language model
and a ``*.dict`` pronouncing dictionary, e.g. a model from cmusphinx.github.io.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from earshot.asr.engine import EngineConfig, Transcription, Word, primary_language
from earshot.errors import ConfigError, MissingDependency

RATE = 16000
FRAME_RATE = 100  # PocketSphinx's feature frames per second
PIECE = RATE // 10  # samples fed per call
DEFAULT_MODEL = "en-us"
INSTALL_HINT = "pip install pocketsphinx"
_ALT = re.compile(r"\(\d+\)$")  # alternate pronunciations: "to(2)"


def import_pocketsphinx() -> Any:
    try:
        import pocketsphinx
    except (ImportError, OSError) as exc:
        raise MissingDependency(
            f"the pocketsphinx speech-to-text engine needs pocketsphinx ({exc}): "
            f"{INSTALL_HINT}") from None
    return pocketsphinx


def model_paths(model: str, bundled: Path) -> dict[str, str]:
    """The ``hmm``, ``lm`` and ``dict`` paths for ``--asr-model`` (``en-us`` or a dir)."""
    if model == DEFAULT_MODEL:
        base = bundled / "en-us"
        return {"hmm": str(base / "en-us"), "lm": str(base / "en-us.lm.bin"),
                "dict": str(base / "cmudict-en-us.dict")}
    root = Path(model).expanduser()
    if not root.is_dir():
        raise ConfigError(f"cannot load pocketsphinx model {model!r}: not 'en-us' (the bundled "
                          "US English model) nor a model directory")
    hmm = [p.parent for p in sorted(root.rglob("mdef"))]
    lms = sorted(root.rglob("*.lm.bin")) or sorted(root.rglob("*.lm"))
    lms = [p for p in lms if "phone" not in p.name]
    dicts = sorted(root.rglob("*.dict"))
    missing = [what for what, found in (("an acoustic model (a directory with mdef)", hmm),
                                        ("a language model (*.lm.bin or *.lm)", lms),
                                        ("a dictionary (*.dict)", dicts)) if not found]
    if missing:
        raise ConfigError(f"cannot load pocketsphinx model {model!r}: the directory has no "
                          f"{' and no '.join(missing)}")
    return {"hmm": str(hmm[0]), "lm": str(lms[0]), "dict": str(dicts[0])}


def _pcm16(audio: np.ndarray) -> np.ndarray:
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"audio must be mono (one dimension), not shape {x.shape}")
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")


class _Utterance:
    """One utterance on a pooled decoder (the :class:`UtteranceDecoder` of this engine)."""

    def __init__(self, engine: PocketSphinxEngine, decoder: Any) -> None:
        self._engine = engine
        self._decoder: Any = decoder
        self._frames = 0
        decoder.start_utt()

    def feed(self, audio: np.ndarray) -> None:
        d = self._decoder
        if d is None:
            raise RuntimeError("this utterance is finished")
        pcm = _pcm16(audio)
        for i in range(0, pcm.size, PIECE):
            d.process_raw(pcm[i:i + PIECE].tobytes(), False, False)
        self._frames += pcm.size

    def partial(self) -> Transcription:
        d = self._decoder
        if d is None:
            raise RuntimeError("this utterance is finished")
        hyp = d.hyp()
        text = hyp.hypstr if hyp is not None else ""
        duration = self._frames / RATE
        n = max(1, len(text.split()))
        # no word times mid-utterance (the segmentation is only known at the end): spread
        # the words evenly, which is what interims need for display
        words = tuple(Word(w, round(duration * i / n, 3), round(duration * (i + 1) / n, 3),
                           0.5) for i, w in enumerate(text.split()))
        return Transcription(text=text, words=words, language="en", duration=duration)

    def finish(self) -> Transcription:
        d = self._decoder
        if d is None:
            raise RuntimeError("this utterance is finished")
        try:
            d.end_utt()
            result = _result(d, self._frames / RATE)
        finally:
            self._release()
        return result

    def close(self) -> None:
        d = self._decoder
        if d is None:
            return
        try:
            d.end_utt()
        except Exception:  # a decoder in a bad state is dropped, not pooled
            self._decoder = None
            return
        self._release()

    def _release(self) -> None:
        d, self._decoder = self._decoder, None
        if d is not None:
            self._engine._put(d)

    def __del__(self) -> None:
        if getattr(self, "_decoder", None) is not None:
            self.close()


def _result(decoder: Any, duration: float) -> Transcription:
    words: list[Word] = []
    for seg in decoder.seg():
        w = _ALT.sub("", seg.word)
        if not w or w.startswith(("<", "[", "+")):  # <s>, </s>, <sil>, [NOISE], ++UH++
            continue
        start = min(max(seg.start_frame / FRAME_RATE, 0.0), duration)
        end = min(max((seg.end_frame + 1) / FRAME_RATE, start), duration)
        p = min(max(float(seg.prob), 0.0), 1.0)
        words.append(Word(w, round(start, 3), round(end, 3), round(p, 3)))
    return Transcription(text=" ".join(w.w for w in words), words=tuple(words),
                         language="en", duration=duration)


class PocketSphinxEngine:
    """PocketSphinx behind the :class:`~earshot.asr.engine.Engine` interface, incremental."""

    name = "pocketsphinx"
    incremental = True
    languages = ("en",)

    def __init__(self, cfg: EngineConfig) -> None:
        ps = import_pocketsphinx()
        if cfg.device not in ("cpu", "auto"):
            raise ConfigError(f"the pocketsphinx engine runs on the CPU only, not {cfg.device!r}")
        if cfg.language is not None and primary_language(cfg.language) != "en":
            raise ConfigError(f"the pocketsphinx engine is English only, not {cfg.language!r}; "
                              "use --asr-model with a Whisper model for other languages")
        self.config = cfg
        self.paths = model_paths(cfg.model, Path(ps.get_model_path()))
        self._ps = ps
        self._lock = threading.Lock()
        self._free: list[Any] = []
        self.decoders = 0  # created so far
        self._put(self._new())  # load now: a bad model fails at start, not per stream

    def _new(self) -> Any:
        try:
            decoder = self._ps.Decoder(loglevel="FATAL", samprate=RATE, **self.paths)
        except Exception as exc:  # RuntimeError, ValueError from the native library
            raise ConfigError(f"cannot load pocketsphinx model {self.config.model!r}: "
                              f"{' '.join(str(exc).split()) or type(exc).__name__}") from exc
        with self._lock:
            self.decoders += 1
        return decoder

    def _get(self) -> Any:
        with self._lock:
            if self._free:
                return self._free.pop()
        return self._new()

    def _put(self, decoder: Any) -> None:
        with self._lock:
            self._free.append(decoder)

    def begin(self, *, language: str | None = None) -> _Utterance:
        return _Utterance(self, self._get())

    def transcribe(self, audio: np.ndarray, *, final: bool,
                   language: str | None = None) -> Transcription:
        utt = self.begin()
        try:
            utt.feed(audio)
        except BaseException:
            utt.close()
            raise
        return utt.finish()

    def __repr__(self) -> str:
        return f"PocketSphinxEngine(model={self.config.model!r})"
