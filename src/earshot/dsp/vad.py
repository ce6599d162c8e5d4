"""Voice activity detection: Silero VAD (ONNX, no torch) plus a hysteresis segmenter.

* :class:`SileroModel` scores fixed windows (512 samples at 16 kHz, 256 at 8 kHz).
* :class:`VadSegmenter` turns per-window probabilities into speech start/end events.
* :class:`StreamingVad` combines them over arbitrarily chunked audio.

Emission delay: a ``speech_start`` is reported once the segment has lasted
``min_speech_ms`` (its ``offset`` is still the true, padded start); a ``speech_end`` is
reported once ``min_silence_ms`` of silence has followed the speech (its ``offset`` is the
end of the last speech window plus ``pad_ms``). Both delays are rounded up to whole windows.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from earshot.dsp._util import as_mono, check_rate
from earshot.errors import ProcessorError

if TYPE_CHECKING:
    import onnxruntime

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "models" / "silero_vad.onnx"
"""Silero VAD v6 (silero-vad 6.2.3 wheel), MIT licence: see models/LICENSE-silero-vad.txt."""

# rate -> (window, context): the model sees `context` trailing samples of the previous
# window prepended to each window.
_GEOMETRY = {16000: (512, 64), 8000: (256, 32)}
_STATE_SHAPE = (2, 1, 128)
_OUTPUTS = ["output", "stateN"]

_SESSIONS: dict[tuple[str, int], onnxruntime.InferenceSession] = {}
_SESSIONS_LOCK = threading.Lock()


def _load_session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    """Return the shared InferenceSession for ``path`` (loaded once per process)."""
    key = (str(path.resolve()), threads)
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is not None:
            return session
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
            raise ProcessorError("the VAD needs onnxruntime: pip install onnxruntime") from exc
        if not path.is_file():
            raise ProcessorError(f"VAD model not found: {path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ProcessorError(f"cannot load VAD model {path}: {exc}") from exc
        inputs = {i.name for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        if inputs != {"input", "state", "sr"} or not set(_OUTPUTS) <= outputs:
            raise ProcessorError(
                f"{path} is not a Silero VAD v5/v6 model with inputs (input, state, sr) "
                f"and outputs (output, stateN): got {sorted(inputs)} -> {sorted(outputs)}"
            )
        _SESSIONS[key] = session
        return session


class SileroModel:
    """Per-stream Silero VAD scorer carrying the recurrent state and the sample context.

    The ONNX session is shared by every instance with the same model path and thread
    count; the state is per instance, so use one instance per stream.
    """

    def __init__(self, path: Path | None = None, threads: int = 1, *, rate: int = 16000) -> None:
        if rate not in _GEOMETRY:
            raise ProcessorError(f"Silero VAD supports 16000 or 8000 Hz, not {rate}")
        if threads < 1:
            raise ProcessorError(f"threads must be >= 1, got {threads}")
        self.path = Path(path) if path is not None else DEFAULT_MODEL_PATH
        self.rate = rate
        self.window, self.context = _GEOMETRY[rate]
        self._session = _load_session(self.path, threads)
        self._sr = np.array(rate, dtype=np.int64)
        self._x = np.zeros((1, self.context + self.window), dtype=np.float32)
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)

    @property
    def session_id(self) -> int:
        """Identifies the ONNX session (models sharing one can be scored in one batch)."""
        return id(self._session)

    def reset(self) -> None:
        """Forget the recurrent state and context (start of a new stream)."""
        self._x.fill(0.0)
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)

    def __call__(self, window: np.ndarray) -> float:
        """Speech probability of the next ``self.window`` samples."""
        w = as_mono(window)
        if w.size != self.window:
            raise ValueError(f"expected {self.window} samples, got {w.size}")
        return self._run(w)

    def score(self, windows: np.ndarray) -> np.ndarray:
        """Probabilities (float32) for consecutive windows: shape (n, window) or n*window 1-D."""
        x = np.asarray(windows, dtype=np.float32)
        if x.ndim == 1 and x.size % self.window == 0:
            x = x.reshape(-1, self.window)
        if x.ndim != 2 or x.shape[1] != self.window:
            raise ValueError(f"expected (n, {self.window}) windows, got shape {x.shape}")
        out = np.empty(x.shape[0], dtype=np.float32)
        for i in range(x.shape[0]):
            out[i] = self._run(x[i])
        return out

    def _run(self, w: np.ndarray) -> float:
        x = self._x
        x[0, self.context :] = w
        feeds: dict[str, Any] = {"input": x, "state": self._state, "sr": self._sr}
        prob, self._state = self._session.run(_OUTPUTS, feeds)
        x[0, : self.context] = w[-self.context :]
        return float(prob[0, 0])


def score_batch(models: Sequence[SileroModel], windows: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Score many streams' windows with one ONNX call per step: ``probs[i]`` for ``windows[i]``
    ((n_i, window) float32, consecutive windows of ``models[i]``'s stream).

    The same numbers as ``models[i].score(windows[i])`` for each i (the model treats the
    batch rows independently: each row carries its own recurrent state and context, gathered
    into the batch and scattered back), but one ``session.run`` per step for all the streams
    that have a window at that step, instead of one per window. Step t scores window t of
    every stream with more than t windows; streams are sorted by window count, so the active
    streams are always a prefix of the batch. Every model must share one session and rate,
    and appear once.
    """
    if len(models) != len(windows):
        raise ValueError("one array of windows per model")
    if not models:
        return []
    first = models[0]
    win, ctx = first.window, first.context
    counts = [int(w.shape[0]) for w in windows]
    for m, w in zip(models, windows, strict=True):
        if m._session is not first._session or m.rate != first.rate:
            raise ValueError("score_batch needs models sharing one session and rate")
        if w.ndim != 2 or w.shape[1] != win:
            raise ValueError(f"expected (n, {win}) windows, got shape {w.shape}")
    out = [np.zeros(0, dtype=np.float32) for _ in models]
    order = sorted((i for i in range(len(models)) if counts[i]), key=lambda i: -counts[i])
    b = len(order)
    if not b:
        return out
    steps = counts[order[0]]
    # x[t, j] = the model input of stream order[j] at step t: context + window
    x = np.empty((steps, b, ctx + win), dtype=np.float32)
    state = np.empty((2, b, 128), dtype=np.float32)
    active = np.empty(steps, dtype=np.intp)  # streams with a window at step t: a prefix
    for j, i in enumerate(order):
        m, w, k = models[i], windows[i], counts[i]
        x[:k, j, ctx:] = w
        x[0, j, :ctx] = m._x[0, :ctx]
        if k > 1:
            x[1:k, j, :ctx] = w[:-1, -ctx:]
        state[:, j] = m._state[:, 0]
    active[:] = 0
    for i in order:
        active[: counts[i]] += 1
    probs = np.empty((steps, b), dtype=np.float32)
    run, sr = first._session.run, first._sr
    for t in range(steps):
        n = int(active[t])
        st = state if n == b else np.ascontiguousarray(state[:, :n])
        prob, new_state = run(_OUTPUTS, {"input": x[t, :n], "state": st, "sr": sr})
        probs[t, :n] = prob[:, 0]
        state[:, :n] = new_state
    for j, i in enumerate(order):
        m, k = models[i], counts[i]
        m._state = state[:, j : j + 1].copy()
        m._x[0, :ctx] = windows[i][-1, -ctx:]
        out[i] = probs[:k, j].copy()
    return out


@dataclass(frozen=True, slots=True)
class VadEvent:
    """A speech boundary at frame ``offset``.

    ``prob`` is the probability of the window that triggered it: the first window at or
    above ``threshold`` for a start, the first window below ``neg_threshold`` for an end
    (or the last window seen, when the segment is closed by :meth:`VadSegmenter.flush`).
    """

    kind: Literal["speech_start", "speech_end"]
    offset: int
    prob: float


def _ms_to_frames(ms: float, rate: int, name: str) -> int:
    if ms < 0:
        raise ProcessorError(f"{name} must be >= 0, got {ms}")
    return round(rate * ms / 1000.0)


class VadSegmenter:
    """Hysteresis state machine over per-window speech probabilities (no model inside).

    A segment opens on a window with ``prob >= threshold``. Once a window falls below
    ``neg_threshold`` a silence countdown starts; windows in between keep an unbroken
    segment going but do not cancel a countdown, only ``prob >= threshold`` does. After
    ``min_silence_ms`` of countdown the segment closes at the end of its last speech
    window. Segments shorter than ``min_speech_ms`` (unpadded) are never reported.
    Reported starts are ``pad_ms`` early (not below 0 nor before the previous reported
    end), reported ends ``pad_ms`` late. See the module docstring for emission delays.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        neg_threshold: float | None = None,
        min_speech_ms: float = 250.0,
        min_silence_ms: float = 300.0,
        pad_ms: float = 100.0,
        window: int = 512,
        rate: int = 16000,
    ) -> None:
        rate = check_rate(rate)
        if neg_threshold is None:
            neg_threshold = max(threshold - 0.15, 0.01)
        if not 0.0 < threshold <= 1.0:
            raise ProcessorError(f"threshold must be in (0, 1], got {threshold}")
        if not 0.0 <= neg_threshold <= threshold:
            raise ProcessorError(f"neg_threshold must be in [0, threshold], got {neg_threshold}")
        if window < 1:
            raise ProcessorError(f"window must be >= 1, got {window}")
        self.threshold = float(threshold)
        self.neg_threshold = float(neg_threshold)
        self.window = int(window)
        self.rate = rate
        self.min_speech = _ms_to_frames(min_speech_ms, rate, "min_speech_ms")
        self.min_silence = _ms_to_frames(min_silence_ms, rate, "min_silence_ms")
        self.pad = _ms_to_frames(pad_ms, rate, "pad_ms")
        self._prev_end = 0  # reported end of the previous segment
        self._open = False  # inside a (possibly not yet confirmed) segment
        self._confirmed = False  # speech_start reported for the open segment
        self._raw_start = 0  # start of the first speech window
        self._speech_end = 0  # end of the last speech window
        self._silence_from: int | None = None  # countdown start, if counting down
        self._start_prob = 0.0
        self._end_prob = 0.0
        self._last_prob = 0.0

    @property
    def in_speech(self) -> bool:
        """True between a reported ``speech_start`` and its ``speech_end``."""
        return self._confirmed

    @property
    def pending_end(self) -> int | None:
        """The offset the open segment's ``speech_end`` will have if the silence that began
        goes on for ``min_silence_ms`` (None: no reported segment is counting down). Only a
        window at or above ``threshold`` cancels the countdown; then this is None again, and
        a later silence gives a later end."""
        if self._confirmed and self._silence_from is not None:
            return self._speech_end + self.pad
        return None

    def feed(self, probs: Sequence[float] | np.ndarray, offset: int) -> list[VadEvent]:
        """Consume probabilities of consecutive windows, the first starting at ``offset``."""
        events: list[VadEvent] = []
        w = self.window
        values = probs.tolist() if isinstance(probs, np.ndarray) else probs
        if not values:
            return events
        if not self._open and max(values) < self.threshold:  # silence: nothing can change
            self._last_prob = float(values[-1])
            return events
        for i, p in enumerate(values):
            start = offset + i * w
            self._step(float(p), start, start + w, events)
        return events

    def flush(self, end_offset: int) -> list[VadEvent]:
        """Close an open segment at stream end (its end is capped at ``end_offset``)."""
        events: list[VadEvent] = []
        if self._confirmed:
            end = max(min(self._speech_end + self.pad, end_offset), self._speech_end)
            prob = self._end_prob if self._silence_from is not None else self._last_prob
            self._close(end, prob, events)
        self._open = self._confirmed = False
        self._silence_from = None
        return events

    def _step(self, p: float, start: int, end: int, events: list[VadEvent]) -> None:
        self._last_prob = p
        if not self._open:
            if p >= self.threshold:
                self._open, self._confirmed = True, False
                self._raw_start, self._speech_end = start, end
                self._silence_from = None
                self._start_prob = p
                self._maybe_confirm(events)
            return
        if p >= self.threshold:
            self._speech_end = end
            self._silence_from = None
        elif p >= self.neg_threshold:
            if self._silence_from is None:
                self._speech_end = end
        elif self._silence_from is None:
            self._silence_from = self._speech_end
            self._end_prob = p
        if self._silence_from is not None and end - self._silence_from >= self.min_silence:
            if self._confirmed:
                self._close(self._speech_end + self.pad, self._end_prob, events)
            self._open = self._confirmed = False
            self._silence_from = None
            return
        self._maybe_confirm(events)

    def _maybe_confirm(self, events: list[VadEvent]) -> None:
        if not self._confirmed and self._speech_end - self._raw_start >= self.min_speech:
            self._confirmed = True
            start = max(self._raw_start - self.pad, self._prev_end, 0)
            events.append(VadEvent("speech_start", start, self._start_prob))

    def _close(self, end: int, prob: float, events: list[VadEvent]) -> None:
        events.append(VadEvent("speech_end", end, prob))
        self._prev_end = end


@dataclass(frozen=True, slots=True, eq=False)
class VadResult:
    """Events from one :meth:`StreamingVad.feed`, plus the window probabilities it computed.

    ``probs[k]`` belongs to the window starting at ``probs_offset + k * window``.
    """

    events: list[VadEvent]
    probs: np.ndarray
    probs_offset: int


class StreamingVad:
    """Silero VAD over arbitrarily chunked 16 kHz (or 8 kHz) mono float32 audio.

    Partial windows are buffered between calls; the trailing partial window at
    :meth:`flush` is not scored.
    """

    def __init__(
        self,
        rate: int = 16000,
        *,
        threshold: float = 0.5,
        neg_threshold: float | None = None,
        min_speech_ms: float = 250.0,
        min_silence_ms: float = 300.0,
        pad_ms: float = 100.0,
        refine_db: float | None = 35.0,
        model: SileroModel | None = None,
    ) -> None:
        if rate not in _GEOMETRY:
            raise ProcessorError(f"VAD needs 16000 or 8000 Hz audio, not {rate}")
        self.refine_db = refine_db
        # audio history for end refinement: the silence countdown plus a second of speech
        self._hist_len = int(rate * (min_silence_ms / 1000 + 1.2))
        self._ring = np.empty(4 * self._hist_len + 8192, dtype=np.float32)
        self._hist_n = 0  # audio history: _ring[:_hist_n], ending at _pos
        if model is None:
            model = SileroModel(rate=rate)
        elif model.rate != rate:
            raise ProcessorError(f"model runs at {model.rate} Hz but the stream is {rate} Hz")
        self.rate = rate
        self.model = model
        self.window = model.window
        self.segmenter = VadSegmenter(
            threshold=threshold,
            neg_threshold=neg_threshold,
            min_speech_ms=min_speech_ms,
            min_silence_ms=min_silence_ms,
            pad_ms=pad_ms,
            window=self.window,
            rate=rate,
        )
        self._pos: int | None = None  # frame offset of _buf[0]
        self._buf = np.zeros(0, dtype=np.float32)
        self._pending_raw: int | None = None
        #: where the segment being spoken will end if the silence that began lasts (the
        #: ``speech_end`` offset, refined as it will be), or None: see :meth:`consume`
        self.tentative_end: int | None = None

    @property
    def position(self) -> int | None:
        """Frame offset just past the last sample fed (None before the first feed)."""
        return None if self._pos is None else self._pos + self._buf.size

    def feed(self, samples: np.ndarray, offset: int) -> VadResult:
        """Consume samples whose first frame is ``offset`` (contiguous with the last call)."""
        windows, probs_offset = self.frame(samples, offset)
        probs = self.model.score(windows) if len(windows) else np.zeros(0, dtype=np.float32)
        return self.consume(windows, probs, probs_offset)

    def frame(self, samples: np.ndarray, offset: int) -> tuple[np.ndarray, int]:
        """First half of :meth:`feed`: the whole windows now available, shape (n, window),
        and the offset of the first; the partial rest is buffered. Score the windows with
        ``self.model`` (alone or in :func:`score_batch`), then call :meth:`consume`."""
        x = as_mono(samples)
        if self._pos is None:
            if offset < 0:
                raise ValueError(f"offset must be >= 0, got {offset}")
            self._pos = offset
        elif offset != self._pos + self._buf.size:
            raise ValueError(
                f"non-contiguous input: expected offset {self._pos + self._buf.size}, got {offset}"
            )
        data = np.concatenate((self._buf, x)) if self._buf.size else x
        n = data.size // self.window
        probs_offset = self._pos
        windows = data[: n * self.window].reshape(n, self.window)
        self._buf = data[n * self.window :].copy()
        self._pos += n * self.window
        return windows, probs_offset

    def consume(self, windows: np.ndarray, probs: np.ndarray, probs_offset: int) -> VadResult:
        """Second half of :meth:`feed`: segment the probabilities of what :meth:`frame` gave."""
        if not len(windows):
            return VadResult([], probs, probs_offset)
        audio = self._push_history(windows.reshape(-1))
        start = probs_offset + windows.size - audio.size
        events = [self._refine(e, audio, start) for e in self.segmenter.feed(probs, probs_offset)]
        self._tentative(audio, start)
        return VadResult(events, probs, probs_offset)

    def _tentative(self, audio: np.ndarray, audio_start: int) -> None:
        """Update :attr:`tentative_end`: set when a reported segment's silence countdown
        begins (``min_silence_ms`` before its ``speech_end`` would be reported), to the very
        offset that ``speech_end`` will have (refined from the same audio) if no speech
        resumes; None when no countdown runs. Lets a consumer start work on the utterance
        while the VAD waits (asr's speculative second pass)."""
        raw = self.segmenter.pending_end
        if raw is None:
            self._pending_raw = self.tentative_end = None
        elif raw != self._pending_raw:
            self._pending_raw = raw
            self.tentative_end = self._refine(VadEvent("speech_end", raw, 0.0), audio,
                                              audio_start).offset

    def _push_history(self, scored: np.ndarray) -> np.ndarray:
        """Append scored audio to the history; return a view of all of it (at least the last
        ``_hist_len`` samples before ``scored``, then ``scored``), with no per-call copy of
        the whole history."""
        h, ring = self._hist_n, self._ring
        if h + scored.size > ring.size:
            keep = min(h, self._hist_len)
            if keep + scored.size > ring.size:
                ring = np.empty(2 * (keep + scored.size), dtype=np.float32)
            ring[:keep] = self._ring[h - keep : h]
            self._ring, h = ring, keep
        ring[h : h + scored.size] = scored
        self._hist_n = h + scored.size
        return ring[: self._hist_n]

    def _refine(self, event: VadEvent, audio: np.ndarray, audio_start: int) -> VadEvent:
        """Move a speech end back to where the sound actually stops.

        Silero's probability trails the audio: it stays high for a few windows after speech
        ends (50-130 ms here). Within the last 256 ms before the reported end, the end is
        moved back to the last 10 ms frame no more than ``refine_db`` below the loudest
        frame of the preceding second; never later, never by more than 256 ms.
        """
        if event.kind != "speech_end" or not self.refine_db:
            return event
        pad = self.segmenter.pad
        raw = event.offset - pad
        f = self.rate // 100
        lo = max(raw - self.rate, audio_start)
        lo += (raw - lo) % f  # frames end exactly at `raw`
        region = audio[lo - audio_start : raw - audio_start]
        if region.size < f:
            return event
        frames = region[: region.size // f * f].reshape(-1, f)
        db = 10 * np.log10(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-12)
        search = min(len(db), int(0.256 * self.rate) // f)
        loud = np.nonzero(db[-search:] >= db.max() - self.refine_db)[0]
        if not loud.size:
            return event
        new_raw = raw - (search - 1 - int(loud[-1])) * f
        return VadEvent("speech_end", min(new_raw, raw) + pad, event.prob)

    def flush(self) -> list[VadEvent]:
        """End of stream: close any open segment and drop the partial window."""
        if self._pos is None:
            return []
        end = self._pos + self._buf.size
        hist = self._ring[: self._hist_n]
        hist_start = self._pos - hist.size
        events = [self._refine(e, hist, hist_start) for e in self.segmenter.flush(end)]
        self._pending_raw = self.tentative_end = None
        self._pos = end
        self._buf = np.zeros(0, dtype=np.float32)
        return events
