"""``vad``: silero voice activity detection (onnxruntime, no torch), speech segments.

Emits ``speech_start`` (``t`` = segment start) and ``speech_end`` (``t`` = segment end, with
``start``, ``end`` and ``duration``), all in stream seconds. The server cuts each segment
from the archive into its own file and announces it in a ``segment`` event.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import soxr

from earshot.dsp.vad import StreamingVad, VadEvent
from earshot.processors.base import Chunk, Event, Processor
from earshot.processors.vad_batch import batcher_for


class Vad(Processor):
    name = "vad"
    #: the stream's own rate: the VAD resamples to :attr:`VAD_RATE` itself, off the event
    #: loop (on its batcher's thread), once per batch of audio
    rate = None
    VAD_RATE = 16000

    def __init__(self, threshold: float = 0.5, min_speech_ms: float = 250.0,
                 min_silence_ms: float = 300.0, pad_ms: float = 30.0,
                 neg_threshold: float | None = None, refine_db: float | None = 35.0) -> None:
        self.options: dict[str, Any] = dict(
            threshold=threshold, neg_threshold=neg_threshold, min_speech_ms=min_speech_ms,
            min_silence_ms=min_silence_ms, pad_ms=pad_ms, refine_db=refine_db)
        self._vad: StreamingVad | None = None
        self._rs: soxr.ResampleStream | None = None  # stream rate -> VAD_RATE
        self._in_rate = self.VAD_RATE
        self._next = 0  # stream frame expected next
        self._first16 = 0  # VAD_RATE frame of the first sample (before any is scored)
        self._start: int | None = None  # these three in VAD_RATE frames
        self._processed = 0
        self._last_end = 0  # end of the last utterance (a fresh VAD may start there)

    def process(self, chunk: Chunk) -> list[Event]:
        out = self._prepare(chunk)
        vad = self._vad
        assert vad is not None
        x = self._resample(chunk.samples)
        out += self._events(vad.feed(x, self._offset16()).events)
        self._processed = vad.position or 0
        return out

    def _resample(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self._rs is None:
            return samples
        return self._rs.resample_chunk(np.ascontiguousarray(samples, dtype=np.float32),
                                       last=last)

    def _offset16(self) -> int:
        assert self._vad is not None
        pos = self._vad.position
        return self._first16 if pos is None else pos

    def _prepare(self, chunk: Chunk) -> list[Event]:
        """Make the VAD for ``chunk``; after a gap (audio dropped for lag) the open segment is
        closed where the audio stopped and a fresh VAD starts at the chunk."""
        out: list[Event] = []
        if self._vad is not None and chunk.offset != self._next:
            out = self._events(self._vad.flush())
            self._vad = None
        if self._vad is None:
            self._in_rate = chunk.rate
            self._rs = None if chunk.rate == self.VAD_RATE else soxr.ResampleStream(
                chunk.rate, self.VAD_RATE, 1, dtype="float32", quality="HQ")
            self._first16 = round(chunk.offset * self.VAD_RATE / chunk.rate)
            self._vad = StreamingVad(self.VAD_RATE, **self.options)
        self._next = chunk.end
        return out

    async def process_async(self, chunk: Chunk) -> list[Event]:
        """:meth:`process`, batched with every other stream's VAD (see
        :mod:`earshot.processors.vad_batch`), resampling included: the runner awaits this on
        the loop instead of calling :meth:`process` on a thread. Same events, same offsets."""
        out = self._prepare(chunk)
        vad = self._vad
        assert vad is not None
        convert = None if self._rs is None else self._resample
        result = await batcher_for(vad.model).submit(vad, chunk.samples, self._offset16(),
                                                     convert)
        self._processed = vad.position or 0
        return out + self._events(result.events)

    #: silence kept before the checkpoint: a fresh VAD settles, and speech just begun
    #: (not yet min_speech_ms long) is found again from there
    CONTEXT_S = 1.0

    def checkpoint(self) -> int | None:
        if self._vad is None:
            return None
        r = self.VAD_RATE
        ctx = int(self.CONTEXT_S * r)
        if self._start is not None:  # in speech: replay from before its start
            cp = max(0, self._start - ctx)
        else:
            cp = max(0, self._last_end, self._processed - ctx)
        return cp * self._in_rate // r  # in the stream's frames, rounded down (earlier)

    def flush(self) -> list[Event]:
        if self._vad is None:
            return []
        out: list[Event] = []
        if self._rs is not None:  # what the resampler still holds
            out += self._events(self._vad.feed(self._resample(np.zeros(0, np.float32), True),
                                               self._offset16()).events)
        return out + self._events(self._vad.flush())

    def _events(self, events: list[VadEvent]) -> list[Event]:
        rate = self.VAD_RATE
        out = []
        for e in events:
            if e.kind == "speech_start":
                self._start = e.offset
                out.append(self.event("speech_start", e.offset / rate, prob=round(e.prob, 3)))
            else:
                start = (self._start if self._start is not None else e.offset) / rate
                end = e.offset / rate
                out.append(self.event("speech_end", end, start=round(start, 6),
                                      end=round(end, 6), duration=round(end - start, 6),
                                      prob=round(e.prob, 3)))
                self._start = None
                self._last_end = e.offset
        return out
