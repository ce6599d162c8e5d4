"""Processors used by the tests (importable by server and worker subprocesses via PYTHONPATH)."""

from __future__ import annotations

import time

import numpy as np

from earshot.processors import Chunk, Event, Processor


class Heard(Processor):
    """Reports exactly which audio it received."""

    name = "heard"

    def process(self, chunk: Chunk) -> list[Event]:
        return [self.event("heard", chunk.t, offset=chunk.offset, frames=chunk.frames,
                           rate=chunk.rate, sum=float(np.sum(chunk.samples, dtype=np.float64)))]


class Slow(Processor):
    """Takes ``factor`` times real time for whatever it is given."""

    name = "slow"

    def __init__(self, factor: float = 10.0) -> None:
        self.factor = factor

    def process(self, chunk: Chunk) -> list[Event]:
        time.sleep(chunk.frames / chunk.rate * self.factor)
        return [self.event("slow_done", chunk.t, frames=chunk.frames)]


class Boom(Processor):
    """Raises once the stream passes ``after`` seconds."""

    name = "boom"

    def __init__(self, after: float = 0.5) -> None:
        self.after = after

    def process(self, chunk: Chunk) -> list[Event]:
        if chunk.t >= self.after:
            raise RuntimeError(f"boom at {chunk.t:.2f} s")
        return []


class SlowEngine:
    """A speech-to-text engine double: takes ``delay`` seconds per decode (given as the
    model name, e.g. ``--asr-model 1.5``) and 'transcribes' the audio's duration."""

    name = "slow-test"

    def __init__(self, cfg: object) -> None:
        self.delay = float(cfg.model)  # type: ignore[attr-defined]
        self.calls = 0

    def transcribe(self, audio: np.ndarray, *, final: bool) -> object:
        from earshot.asr.engine import Transcription, Word

        self.calls += 1
        time.sleep(self.delay)
        dur = len(audio) / 16000
        words = (Word("words", 0.0, dur / 2, 0.9), Word(f"{dur:.2f}", dur / 2, dur, 0.8))
        return Transcription(text=f"words {dur:.2f}", words=words, language="en", duration=dur)


class LoopHog(Processor):
    """Runs ON the event loop (inline) and takes ``factor`` times real time: a server that
    has run out of CPU headroom (for the admission guard's tests)."""

    name = "loophog"
    inline = True

    def __init__(self, factor: float = 3.0) -> None:
        self.factor = factor

    def process(self, chunk: Chunk) -> list[Event]:
        time.sleep(chunk.frames / chunk.rate * self.factor)
        return []


class LoopBurn(Processor):
    """Runs ON the event loop (inline) and burns ``share`` of a core while the stream
    runs (a busy loop, not a sleep): an event loop busy with real CPU work."""

    name = "loopburn"
    inline = True

    def __init__(self, share: float = 0.8) -> None:
        self.share = share

    def process(self, chunk: Chunk) -> list[Event]:
        end = time.thread_time() + chunk.frames / chunk.rate * self.share
        while time.thread_time() < end:
            pass
        return []
