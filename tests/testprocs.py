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
