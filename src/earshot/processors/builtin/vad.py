"""``vad``: silero voice activity detection (onnxruntime, no torch), speech segments.

Emits ``speech_start`` (``t`` = segment start) and ``speech_end`` (``t`` = segment end, with
``start``, ``end`` and ``duration``), all in stream seconds. The server cuts each segment
from the archive into its own file and announces it in a ``segment`` event.
"""

from __future__ import annotations

from typing import Any

from earshot.dsp.vad import StreamingVad, VadEvent
from earshot.processors.base import Chunk, Event, Processor
from earshot.processors.builtin.vad_batch import batcher_for
from earshot.processors.schema import VAD


class Vad(Processor):
    name = "vad"
    client_options = VAD
    rate = 16000

    def __init__(self, threshold: float = 0.5, min_speech_ms: float = 250.0,
                 min_silence_ms: float = 300.0, pad_ms: float = 30.0,
                 neg_threshold: float | None = None, refine_db: float | None = 35.0) -> None:
        self.options: dict[str, Any] = dict(
            threshold=threshold, neg_threshold=neg_threshold, min_speech_ms=min_speech_ms,
            min_silence_ms=min_silence_ms, pad_ms=pad_ms, refine_db=refine_db)
        self._vad: StreamingVad | None = None
        self._start: int | None = None
        self._processed = 0
        self._last_end = 0  # end of the last utterance (a fresh VAD may start there)

    def process(self, chunk: Chunk) -> list[Event]:
        out = self._prepare(chunk)
        self._processed = chunk.end
        assert self._vad is not None
        return out + self._events(self._vad.feed(chunk.samples, chunk.offset).events,
                                  chunk.rate)

    def _prepare(self, chunk: Chunk) -> list[Event]:
        """Make the VAD for ``chunk``; after a gap (audio dropped for lag) the open segment is
        closed where the audio stopped and a fresh VAD starts at the chunk."""
        out: list[Event] = []
        vad = self._vad
        if vad is not None and vad.position is not None and chunk.offset != vad.position:
            out = self._events(vad.flush(), vad.rate)
            self._vad = None
        if self._vad is None:
            self._vad = StreamingVad(chunk.rate, **self.options)
        return out

    async def process_async(self, chunk: Chunk) -> list[Event]:
        """:meth:`process`, batched with every other stream's VAD (see
        :mod:`earshot.processors.builtin.vad_batch`): the runner awaits this on the loop instead of
        calling :meth:`process` on a thread. Same events, same offsets."""
        out = self._prepare(chunk)
        assert self._vad is not None
        result = await batcher_for(self._vad.model).submit(self._vad, chunk.samples,
                                                            chunk.offset)
        self._processed = chunk.end
        return out + self._events(result.events, chunk.rate)

    #: silence kept before the checkpoint: a fresh VAD settles, and speech just begun
    #: (not yet min_speech_ms long) is found again from there
    CONTEXT_S = 1.0

    def checkpoint(self) -> int | None:
        if self._vad is None:
            return None
        ctx = int(self.CONTEXT_S * self._vad.rate)
        if self._start is not None:  # in speech: replay from before its start
            return max(0, self._start - ctx)
        return max(0, self._last_end, self._processed - ctx)

    def finalize(self) -> list[Event]:
        """The utterance in progress ends here (its ``speech_end``); a fresh VAD goes on."""
        if self._vad is None:
            return []
        out = self._events(self._vad.flush(), self._vad.rate)
        self._vad = None  # the next chunk starts a fresh one (at its offset)
        return out

    def flush(self) -> list[Event]:
        if self._vad is None:
            return []
        return self._events(self._vad.flush(), self._vad.rate)

    def _events(self, events: list[VadEvent], rate: int) -> list[Event]:
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
