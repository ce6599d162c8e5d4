"""The processor runner: batching, resampling offsets, lag and drops, failures, the harness."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from earshot.dsp.mel import LogMelSpectrogram
from earshot.errors import ProcessorError
from earshot.processors import Chunk, Event, Processor, StreamInfo
from earshot.processors.builtin.level import Level
from earshot.processors.builtin.spectrogram import Spectrogram, decode_spectrogram
from earshot.processors.builtin.vad import Vad
from earshot.processors.registry import Registry, parse_cli_spec, resolve
from earshot.processors.runner import Audience, StreamPipeline
from earshot.testing import run_processor


class Record(Processor):
    name = "record"

    def __init__(self, rate: int | None = None) -> None:
        self.chunks: list[Chunk] = []
        self.rate_wanted = rate

    def process(self, chunk: Chunk) -> list[Event]:
        self.chunks.append(chunk)
        return [self.event("seen", chunk.t, offset=chunk.offset, frames=chunk.frames)]


class Record16k(Record):
    name = "record16k"
    rate = 16000


class Gate(Processor):
    """Blocks in process() until released: a processor that is as slow as we like."""

    name = "gate"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.frames = 0

    def process(self, chunk: Chunk) -> list[Event]:
        self.release.wait(10)
        self.frames += chunk.frames
        return []


class Fails(Processor):
    name = "fails"

    def process(self, chunk: Chunk) -> list[Event]:
        raise ValueError("bad input")


def tone(rate: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)[:, None]


async def test_batches_are_merged_and_offsets_contiguous() -> None:
    rec = Record()
    events: list[Event] = []
    pipe = StreamPipeline(StreamInfo("s", 48000, 1), [rec], events.extend)
    x = tone(48000, 1.0)
    for i in range(0, len(x), 960):  # 50 frames of 20 ms fed at once
        pipe.feed(x[i:i + 960], i)
    await pipe.close()
    assert sum(c.frames for c in rec.chunks) == len(x)
    assert len(rec.chunks) < 50  # batched, not one call per frame
    ends = [c.offset for c in rec.chunks[1:]]
    assert ends == [c.end for c in rec.chunks[:-1]]
    assert all(e["processor"] == "record" for e in events)


async def test_one_resampler_per_rate_and_offsets_map_back() -> None:
    a, b = Record16k(), Spectrogram()
    pipe = StreamPipeline(StreamInfo("s", 48000, 2), [a, b, Level()], lambda e: None,
                          start_offset=48000)
    assert set(pipe.converters) == {(16000, True, False), (48000, True, False)}
    x = np.repeat(tone(48000, 2.0), 2, axis=1)
    x[24000:24010] = 0.9  # a click at 48 kHz frame 48000 + 24000
    pipe.feed(x, 48000)
    await pipe.close()
    first = a.chunks[0]
    assert first.offset == 16000 and first.rate == 16000  # resumed mid-stream: same time
    y = np.concatenate([c.samples for c in a.chunks])
    assert abs(len(y) - len(x) // 3) <= 1
    t_click = (16000 + int(np.argmax(np.abs(np.diff(y))))) / 16000
    assert abs(t_click - (48000 + 24000) / 48000) < 0.002


async def test_slow_processor_lags_drops_and_never_blocks_the_others() -> None:
    gate, rec = Gate(), Record()
    events: list[Event] = []
    pipe = StreamPipeline(StreamInfo("s", 16000, 1), [gate, rec], events.extend, max_lag=1.0)
    x = tone(16000, 3.0)
    for i in range(0, len(x), 1600):
        pipe.feed(x[i:i + 1600], i)
        await asyncio.sleep(0.01)
    assert sum(c.frames for c in rec.chunks) == len(x)  # the fast one kept up
    gate.release.set()
    await pipe.close()
    dropped = [e for e in events if e["type"] == "dropped"]
    assert dropped and dropped[0]["processor"] == "gate"
    total = sum(e["frames"] for e in dropped)
    assert gate.frames + total == len(x)  # every frame processed or reported dropped
    assert dropped[-1]["total_seconds"] == pytest.approx(total / 16000, abs=1e-3)
    lags = [e for e in events if e["type"] == "lag"]
    assert lags and lags[0]["processor"] == "gate" and lags[0]["lag"] >= 1.0


async def test_failing_processor_reports_once_and_others_go_on() -> None:
    rec = Record()
    events: list[Event] = []
    pipe = StreamPipeline(StreamInfo("s", 8000, 1), [Fails(), rec], events.extend)
    x = tone(8000, 1.0)
    for i in range(0, len(x), 800):
        pipe.feed(x[i:i + 800], i)
        await asyncio.sleep(0)
    await pipe.close()
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["processor"] == "fails"
    assert "ValueError: bad input" in errors[0]["message"]
    assert sum(c.frames for c in rec.chunks) == len(x)


def test_run_processor_level_values() -> None:
    events = run_processor(Level(), tone(16000, 1.0, amp=1.0)[:, 0], 16000)
    assert len(events) == 20 and [e["t"] for e in events[:3]] == [0.0, 0.05, 0.1]
    assert all(abs(e["rms"] + 3.01) < 0.05 and abs(e["peak"]) < 0.01 for e in events)
    assert all(e["stream"] == "test" and e["processor"] == "level" for e in events)


def test_run_processor_spectrogram_band() -> None:
    events = run_processor(Spectrogram(), tone(16000, 1.0, freq=1000.0)[:, 0], 16000)
    db = np.concatenate([decode_spectrogram(e) for e in events])
    assert db.shape == (98, 64)
    band = int(np.argmax(db[10:90].mean(axis=0)))
    centers = LogMelSpectrogram(16000, 64).center_freqs_hz
    assert abs(band - int(np.argmin(np.abs(centers - 1000.0)))) <= 1


def test_registry() -> None:
    reg = Registry(["vad,threshold=0.6", "testprocs:Heard"])
    assert [s.name for s in reg.defaults] == ["vad", "heard"]
    specs, problems = reg.for_start(("level", {"name": "vad", "options": {"pad_ms": 50}},
                                     "os:system", "nope"))
    assert [s.name for s in specs] == ["level", "vad"]
    assert specs[1].options == {"threshold": 0.6, "pad_ms": 50}
    assert len(problems) == 2 and "os:system" in problems[0]
    assert Registry().for_start(None)[0][0].name == "level"
    assert parse_cli_spec("x:Y,a=1,b=hi,c=[1]") == ("x:Y", {"a": 1, "b": "hi", "c": [1]})
    with pytest.raises(ProcessorError):
        resolve("vad", {"bogus": 1})
    with pytest.raises(ProcessorError):
        resolve("json:dumps")
    with pytest.raises(ProcessorError):
        resolve("no_such_module_x:Y")
    assert isinstance(resolve("vad").make(), Vad)


async def test_an_on_demand_processor_runs_for_its_audience_only() -> None:
    """``level`` left to the server's defaults: nothing is measured while nobody watches;
    readings go to the observers (never the sender) while someone does, on the stream's
    grid; a sender that named it gets them, and they are always made."""
    watching = [False]
    to_all: list[Event] = []
    to_observers: list[Event] = []
    audience = Audience(named=frozenset(), watched=lambda: watching[0],
                        observers=to_observers.extend)
    quiet = StreamPipeline(StreamInfo("s", 16000, 1), [Level(), Record()], to_all.extend,
                           audience=audience)
    named = StreamPipeline(StreamInfo("n", 16000, 1), [Level()], to_all.extend,
                           audience=Audience(named=frozenset({"level"}),
                                             watched=lambda: False, observers=to_observers.extend))
    x = tone(16000, 1.0)
    for i in range(0, 16000, 1000):  # 62.5 ms chunks: the grid is 50 ms
        watching[0] = 4000 <= i < 10000
        quiet.feed(x[i:i + 1000], i)
        named.feed(x[i:i + 1000], i)
    await quiet.close()
    await named.close()
    assert all(e["type"] == "level" for e in to_observers)
    assert [e["t"] for e in to_observers] == [round(0.05 * k, 6) for k in range(5, 12)]
    levels = [e for e in to_all if e["type"] == "level"]
    assert [e["t"] for e in levels] == [round(0.05 * k, 6) for k in range(20)]  # named
    assert len([e for e in to_all if e["type"] == "seen"]) > 0  # others are not affected
    level_runner = quiet.runners[0][1]
    assert level_runner.stats.processed == 6000 and level_runner.stats.skipped == 10000
