"""PocketSphinx (CMU Sphinx) as an earshot speech-to-text engine: the default, offline.

The ``pocketsphinx`` wheel on PyPI carries a US English acoustic model, the CMU
pronouncing dictionary and a trigram language model (BSD-style licence, CMU), so speech-to-
text works with no download and no configuration. Accuracy is far below Whisper's on real
microphones; it is here so that a fresh server transcribes at all.

PocketSphinx decodes incrementally: audio is fed as it arrives and the partial hypothesis
can be read at any time, so interims cost only the new audio (the engine declares
``incremental = True``).

Finals take two passes (``two_pass``, the default; ``--asr-final incremental`` for one):
the incremental decoder serves the interims, and when the utterance ends the same child
decodes the whole utterance again in one call (``process_raw(..., full_utt=True)``), which
normalises the cepstrum over the whole utterance instead of a running estimate that starts
from the model's default or the last utterance's (of any stream): on human speech this is
the gap between the streaming and the offline word error rate (docs/asr.md). PocketSphinx's
own flat-lexicon rescoring pass (``fwdflat``) is off: it cost a third of the CPU and did not
improve the words on either fixture. The child keeps
the utterance's audio (32 kB a second) for it, so nothing is sent twice.

The second pass may also run before the end is sure (:meth:`_Utterance.speculate`, the
child's ``spec`` op): the scheduler asks for it while the VAD waits out its silence
(speculative second passes, docs/asr.md). It runs on the utterance's own decoder, right
after ending its first pass: the second pass owes much of its gain to the state the first
pass left in that decoder (on a spare decoder the LibriVox WER was 0.282 instead of
0.225). If speech goes on, the first pass resumes on the same decoder (interims show the
words before the pause, then the new ones) and the final decodes everything again.

PocketSphinx's native code holds the GIL while it decodes, which would stall the server's
event loop, VAD and levels behind every decode. So the decoders live in child processes
(``--asr-workers`` of them, ``python -m earshot.asr.pocketsphinx``): the server's
scheduler threads send audio over a pipe and wait for the hypothesis with the GIL released.
A ``Decoder`` holds its own copy of the models (about 90 MB) and decodes one utterance at a
time, so each child keeps a pool: one decoder per utterance being spoken, reused afterwards.
A child that dies is restarted on the next utterance; the utterances it held fail with an
``asr_failed`` error event.

``--asr-model`` may name ``en-us`` (the bundled model, the default) or a directory holding
an acoustic model directory (with ``mdef``), a ``*.lm.bin`` (or ``*.lm``) language model
and a ``*.dict`` pronouncing dictionary, e.g. a model from cmusphinx.github.io.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import numpy as np

from earshot.asr.engine import EngineConfig, Transcription, Word, primary_language
from earshot.errors import ConfigError, MissingDependency

log = logging.getLogger("earshot.asr")

RATE = 16000
FRAME_RATE = 100  # PocketSphinx's feature frames per second
PIECE = RATE // 10  # samples fed per call
DEFAULT_MODEL = "en-us"
INSTALL_HINT = "pip install pocketsphinx"
#: decoder settings beyond the model paths: at most 3000 active HMMs per frame (the library
#: allows 30000) decodes the fixture as accurately with 30 % less CPU; no fwdflat pass (above)
DECODER_OPTIONS: dict[str, Any] = {"maxhmmpf": 3000, "fwdflat": False}
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
        paths = {"hmm": base / "en-us", "lm": base / "en-us.lm.bin",
                 "dict": base / "cmudict-en-us.dict"}
        missing = [str(p) for p in paths.values() if not p.exists()]
        if missing:
            raise ConfigError("the pocketsphinx package has no bundled model "
                              f"({', '.join(missing)} missing): reinstall it ({INSTALL_HINT})")
        return {k: str(v) for k, v in paths.items()}
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
        raise ConfigError(f"cannot load pocketsphinx model {model!r}: the directory lacks "
                          f"{'; '.join(missing)}")
    return {"hmm": str(hmm[0]), "lm": str(lms[0]), "dict": str(dicts[0])}


def _pcm16(audio: np.ndarray) -> bytes:
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"audio must be mono (one dimension), not shape {x.shape}")
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def _timed(raw: list[tuple[str, int, int, float]], duration: float) -> list[Word]:
    """The child's (word, start frame, end frame, prob) as words timed within the audio."""
    words: list[Word] = []
    for w, a, b, p in raw:
        start = min(max(a / FRAME_RATE, 0.0), duration)
        end = min(max(b / FRAME_RATE, start), duration)
        words.append(Word(w, round(start, 3), round(end, 3), round(min(max(p, 0.0), 1.0), 3)))
    return words


# -- the child process --------------------------------------------------------------------
def _words(decoder: Any) -> list[tuple[str, int, int, float]]:
    out = []
    for seg in decoder.seg() or ():  # None: no hypothesis (e.g. no audio decoded)
        w = _ALT.sub("", seg.word)
        if not w or w.startswith(("<", "[", "+")):  # <s>, </s>, <sil>, [NOISE], ++UH++
            continue
        out.append((w, int(seg.start_frame), int(seg.end_frame) + 1, float(seg.prob)))
    return out


def _child(paths: dict[str, str]) -> None:  # pragma: no cover - runs in the child
    """Decoder process: answers ``(op, id, payload)`` messages read from stdin with
    ``("ok"|"err", value)`` on the original stdout (fd 1 is sent to stderr, so that
    nothing the library prints can corrupt the channel)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    inbox = Connection(os.dup(0), writable=False)
    conn_out = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)
    import pocketsphinx

    class _Both:  # send on one pipe, receive on the other
        def send(self, obj: Any) -> None:
            conn_out.send(obj)

        def recv(self) -> Any:
            return inbox.recv()

    conn = _Both()

    free: list[Any] = []
    open_: dict[int, Any] = {}
    audio: dict[int, bytearray] = {}  # each open utterance's audio (for a second pass)
    busy: dict[int, float] = {}  # seconds each open utterance's first pass took
    #: after a speculative second pass (op "spec"): the bytes of audio it decoded and the
    #: first pass's words until then; the first pass goes on from there in a new decoder
    #: utterance (``ended``: none open yet) on the same decoder
    spec_at: dict[int, int] = {}
    first_words: dict[int, list[str]] = {}
    ended: set[int] = set()

    def decoder() -> Any:
        return free.pop() if free else pocketsphinx.Decoder(loglevel="FATAL", samprate=RATE,
                                                            **DECODER_OPTIONS, **paths)

    def end_first(uid: int, d: Any) -> list[tuple[str, int, int, float]]:
        """End the first pass's open decoder utterance; its words (none if ended)."""
        if uid in ended:
            return []
        ended.add(uid)
        d.end_utt()
        return _words(d)

    def drop(uid: int) -> None:
        for m in (open_, audio, busy, spec_at, first_words):
            m.pop(uid, None)
        ended.discard(uid)

    try:
        free.append(decoder())
    except Exception as exc:
        conn.send(("err", " ".join(str(exc).split()) or type(exc).__name__))
        return
    conn.send(("ok", None))
    while True:
        try:
            op, uid, payload = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        try:
            value: Any = None
            if op == "begin":
                d = decoder()
                d.start_utt()
                open_[uid] = d
                audio[uid] = bytearray()
                busy[uid] = 0.0
                first_words[uid] = []
            elif op == "feed":
                t = time.perf_counter()
                d = open_[uid]
                if uid in ended:  # speech went on after a speculative pass
                    ended.discard(uid)
                    d.start_utt()
                for i in range(0, len(payload), 2 * PIECE):
                    d.process_raw(payload[i:i + 2 * PIECE], False, False)
                hyp = d.hyp()
                value = " ".join([*first_words[uid], hyp.hypstr if hyp is not None else ""])
                value = value.strip()
                audio[uid] += payload
                busy[uid] += time.perf_counter() - t
            elif op == "append":  # audio for the second pass only (the final's tail)
                audio[uid] += payload
            elif op == "spec":  # the second pass now, on the same decoder (its state helps)
                d = open_[uid]
                audio[uid] += payload
                t = time.perf_counter()
                first_words[uid] += [w[0] for w in end_first(uid, d)]
                busy[uid] += time.perf_counter() - t
                t = time.perf_counter()
                d.start_utt()
                d.process_raw(bytes(audio[uid]), False, True)
                d.end_utt()
                spec_at[uid] = len(audio[uid])
                value = {"words": _words(d), "second_s": time.perf_counter() - t}
            elif op in ("finish", "close"):
                d = open_.get(uid)
                pcm = audio.get(uid, b"")
                first_s = busy.get(uid, 0.0)
                first = first_words.get(uid, [])
                if d is not None:
                    t = time.perf_counter()
                    last = end_first(uid, d)
                    if op == "finish":
                        first = first + [w[0] for w in last]
                        first_s += time.perf_counter() - t
                        if payload == "spec":  # the speculative pass stands: first only
                            value = {"words": [], "first": first, "first_s": first_s}
                        elif not payload and uid not in spec_at:  # one pass
                            value = {"words": last, "first": None, "first_s": first_s}
                        elif pcm:  # the second pass: the whole utterance at once
                            t = time.perf_counter()
                            d.start_utt()
                            d.process_raw(bytes(pcm), False, True)
                            d.end_utt()
                            value = {"words": _words(d), "first": first,
                                     "first_s": first_s, "second_s": time.perf_counter() - t}
                        else:
                            value = {"words": [], "first": first, "first_s": first_s,
                                     "second_s": 0.0}
                    free.append(d)
                drop(uid)
            elif op == "stop":
                conn.send(("ok", None))
                return
            else:
                raise ValueError(f"unknown operation {op!r}")
            conn.send(("ok", value))
        except Exception as exc:
            drop(uid)  # a decoder in a bad state is dropped, not pooled
            conn.send(("err", f"{type(exc).__name__}: {exc}"))


class DecoderDied(RuntimeError):
    """The decoder process exited (killed, out of memory)."""


class _Process:
    """One decoder child and the pipes to it; calls are serialised by a lock."""

    def __init__(self, paths: dict[str, str], timeout: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "earshot.asr.pocketsphinx", json.dumps(paths)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._out = Connection(os.dup(self.proc.stdin.fileno()), readable=False)
        self._in = Connection(os.dup(self.proc.stdout.fileno()), writable=False)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.lock = threading.Lock()
        self.utterances = 0  # open on this child
        if not self._in.poll(timeout):
            self.stop()
            raise ConfigError(f"the pocketsphinx decoder process did not start in {timeout} s")
        status, value = self._recv()
        if status != "ok":
            self.stop()
            raise ConfigError(f"cannot load pocketsphinx model: {value}")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _recv(self) -> tuple[str, Any]:
        try:
            return cast(tuple[str, Any], self._in.recv())
        except (EOFError, OSError) as exc:
            raise DecoderDied(f"the pocketsphinx decoder process died (exit code "
                              f"{self.proc.poll()})") from exc

    def call(self, op: str, uid: int, payload: Any = None) -> Any:
        with self.lock:
            try:
                self._out.send((op, uid, payload))
            except (OSError, ValueError) as exc:
                raise DecoderDied("the pocketsphinx decoder process died") from exc
            status, value = self._recv()
        if status != "ok":
            raise RuntimeError(f"pocketsphinx: {value}")
        return value

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                with self.lock:
                    self._out.send(("stop", 0, None))
            except (OSError, ValueError):
                pass
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(2)
        self._out.close()
        self._in.close()


class _Utterance:
    """One utterance on a decoder in a child (the :class:`UtteranceDecoder` of this engine)."""

    def __init__(self, engine: PocketSphinxEngine, proc: _Process, uid: int) -> None:
        self._engine = engine
        self._proc: _Process | None = proc
        self._uid = uid
        self._frames = 0
        self._text = ""

    def feed(self, audio: np.ndarray) -> None:
        if self._proc is None:
            raise RuntimeError("this utterance is finished")
        pcm = _pcm16(audio)
        self._text = self._proc.call("feed", self._uid, pcm)
        self._frames += len(pcm) // 2

    def append(self, audio: np.ndarray) -> None:
        """Audio the second pass decodes and the first pass never sees (two-pass finals:
        the tail of an utterance whose final is due is not worth decoding twice)."""
        if self._proc is None:
            raise RuntimeError("this utterance is finished")
        pcm = _pcm16(audio)
        self._proc.call("append", self._uid, pcm)
        self._frames += len(pcm) // 2

    def partial(self) -> Transcription:
        if self._proc is None:
            raise RuntimeError("this utterance is finished")
        duration = self._frames / RATE
        tokens = self._text.split()
        n = max(1, len(tokens))
        # word times are known at the end only; spread the words evenly meanwhile
        words = tuple(Word(_ALT.sub("", w), round(duration * i / n, 3),
                           round(duration * (i + 1) / n, 3), 0.5) for i, w in enumerate(tokens))
        return Transcription(text=" ".join(w.w for w in words), words=words, language="en",
                             duration=duration)

    def finish(self) -> Transcription:
        if self._proc is None:
            raise RuntimeError("this utterance is finished")
        proc, self._proc = self._proc, None
        try:
            raw = proc.call("finish", self._uid, self._engine.two_pass)
        finally:
            self._engine._release(proc)
        duration = self._frames / RATE
        words = _timed(raw["words"], duration)
        if raw["first"] is None:
            return Transcription(text=" ".join(w.w for w in words), words=tuple(words),
                                 language="en", duration=duration)
        return Transcription(text=" ".join(w.w for w in words), words=tuple(words),
                             language="en", duration=duration,
                             first_text=" ".join(raw["first"]),
                             first_decode=round(float(raw["first_s"]), 4),
                             second_decode=round(float(raw["second_s"]), 4))

    def speculate(self, audio: np.ndarray) -> Transcription:
        """The second pass now, before the end is sure: ``audio`` (the rest of the utterance
        up to where it may end) is added and the utterance so far decoded whole on this
        utterance's own decoder, right after its first pass (that decoder's state is what
        makes the second pass better: a spare decoder loses most of the gain). If speech
        goes on, the first pass continues on the same decoder and the final's second pass
        decodes everything again; if not, :meth:`finish_with` uses this result."""
        if self._proc is None:
            raise RuntimeError("this utterance is finished")
        pcm = _pcm16(audio)
        raw = self._proc.call("spec", self._uid, pcm)
        self._frames += len(pcm) // 2
        duration = self._frames / RATE
        words = _timed(raw["words"], duration)
        return Transcription(text=" ".join(w.w for w in words), words=tuple(words),
                             language="en", duration=duration,
                             second_decode=round(float(raw["second_s"]), 4))

    def finish_with(self, second: Transcription) -> Transcription:
        """Finish the first pass only: ``second`` (this utterance's :meth:`speculate`, whose
        audio was the whole utterance) with the first pass's text and seconds."""
        if self._proc is None:
            raise RuntimeError("this utterance is finished")
        proc, self._proc = self._proc, None
        try:
            raw = proc.call("finish", self._uid, "spec")
        finally:
            self._engine._release(proc)
        return dataclasses.replace(second, first_text=" ".join(raw["first"]),
                                   first_decode=round(float(raw["first_s"]), 4))

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.call("close", self._uid)
        except Exception:  # the child died or the decoder broke: nothing left to close
            pass
        finally:
            self._engine._release(proc)

    def __del__(self) -> None:
        if getattr(self, "_proc", None) is not None:
            self.close()


class PocketSphinxEngine:
    """PocketSphinx behind the :class:`~earshot.asr.engine.Engine` interface, incremental,
    decoding in ``cfg.workers`` child processes."""

    name = "pocketsphinx"
    incremental = True
    two_pass = True  # the configured value (EngineConfig.two_pass) replaces it
    speculative = True  # utterances offer speculate() and finish_with() (two passes only)
    languages = ("en",)

    def __init__(self, cfg: EngineConfig, *, start_timeout: float = 60.0) -> None:
        ps = import_pocketsphinx()
        if cfg.device not in ("cpu", "auto"):
            raise ConfigError(f"the pocketsphinx engine runs on the CPU only, not {cfg.device!r}")
        if cfg.language is not None and primary_language(cfg.language) != "en":
            raise ConfigError(f"the pocketsphinx engine is English only, not {cfg.language!r}; "
                              "use --asr-model with a Whisper model for other languages")
        self.config = cfg
        self.two_pass = cfg.two_pass
        self.paths = model_paths(cfg.model, Path(ps.get_model_path()))
        self.start_timeout = start_timeout
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._procs: list[_Process | None] = [None] * max(1, cfg.workers)
        self._warming = False
        if cfg.model != DEFAULT_MODEL:
            # a model directory is loaded now, so that a bad one fails at start; the bundled
            # model is known to load and waits for the first stream that asks for asr
            self._procs[0] = _Process(self.paths, start_timeout)

    def warm(self) -> None:
        """Start the decoder processes in the background (a stream with asr began)."""
        with self._lock:
            if self._warming or all(p is not None and p.alive for p in self._procs):
                return
            self._warming = True
        threading.Thread(target=self._warm, name="earshot-pocketsphinx-warm",
                         daemon=True).start()

    def _warm(self) -> None:
        try:
            with self._lock:
                for i, p in enumerate(self._procs):
                    if p is None or not p.alive:
                        self._procs[i] = _Process(self.paths, self.start_timeout)
        except Exception:
            log.exception("starting the pocketsphinx decoder process failed")
        finally:
            self._warming = False

    def _acquire(self) -> _Process:
        """The child with the fewest open utterances (started or restarted if needed)."""
        with self._lock:
            best = None
            for i, p in enumerate(self._procs):
                if p is None or not p.alive:
                    if p is not None:
                        p.stop()
                    p = self._procs[i] = _Process(self.paths, self.start_timeout)
                if best is None or p.utterances < best.utterances:
                    best = p
            assert best is not None
            best.utterances += 1
            return best

    def _release(self, proc: _Process) -> None:
        with self._lock:
            proc.utterances = max(0, proc.utterances - 1)

    def begin(self, *, language: str | None = None) -> _Utterance:
        proc = self._acquire()
        uid = next(self._ids)
        try:
            proc.call("begin", uid)
        except BaseException:
            self._release(proc)
            raise
        return _Utterance(self, proc, uid)

    def transcribe(self, audio: np.ndarray, *, final: bool,
                   language: str | None = None) -> Transcription:
        """The whole of ``audio`` as one utterance (offline use; streams go incrementally)."""
        utt = self.begin()
        try:
            utt.feed(audio)
        except BaseException:
            utt.close()
            raise
        return utt.finish()

    def close(self) -> None:
        """Stop the decoder processes (they also exit when the server does)."""
        with self._lock:
            procs, self._procs = self._procs, [None] * len(self._procs)
        for p in procs:
            if p is not None:
                p.stop()

    def __repr__(self) -> str:
        return f"PocketSphinxEngine(model={self.config.model!r})"


if __name__ == "__main__":  # pragma: no cover - the decoder child
    _child(json.loads(sys.argv[1]))
