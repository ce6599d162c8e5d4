"""``level``: RMS and peak in dBFS every ``interval`` seconds, and a clip count.

On demand (:attr:`Processor.on_demand`): readings are made while someone will receive them,
on the same grid of intervals whenever they are (a sender computes its own level from its
own audio; dashboards, ``earshot watch`` and MQTT subscribe to them)."""

from __future__ import annotations

from typing import Any

from earshot.dsp.level import LevelMeter
from earshot.processors.base import Chunk, Event, Processor
from earshot.processors.schema import LEVEL


class Level(Processor):
    name = "level"
    inline = True  # ~10 µs per 100 ms of audio: not worth a thread hop
    on_demand = True  # readings for whoever watches: a sender has its own audio's level
    client_options = LEVEL

    def __init__(self, interval: float = 0.05, clip_level: float = 0.999) -> None:
        self.interval = interval
        self.clip_level = clip_level
        self._meter: LevelMeter | None = None

    def process(self, chunk: Chunk) -> list[Event]:
        if self._meter is None:
            self._meter = LevelMeter(chunk.rate, self.interval, self.clip_level,
                                     offset=chunk.offset)
        return self._events(self._meter.feed(chunk.samples), chunk.rate)

    def skip(self, offset: int, frames: int, rate: int) -> None:
        if self._meter is None:
            self._meter = LevelMeter(rate, self.interval, self.clip_level, offset=offset)
        self._meter.skip(frames)

    def flush(self) -> list[Event]:
        return [] if self._meter is None else self._events(self._meter.flush(), self._meter.rate)

    def _events(self, readings: list[Any], rate: int) -> list[Event]:
        # dict literals: two of these per 100 ms per stream, on the ingest hot path
        return [{"type": "level", "t": round(r.offset / rate, 6), "rms": round(r.rms_db, 2),
                 "peak": round(r.peak_db, 2), "clipped": r.clipped,
                 "duration": round(r.frames / rate, 4)} for r in readings]
