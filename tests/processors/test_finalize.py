"""Finalize (a door's client ends the utterance now): through the real runner, the ``vad``
and ``asr`` processors cut the utterance in progress where the request falls in the audio,
its final carries ``"finalize": true`` and exactly one ``finalized`` follows it; a request
in silence gets ``finalized`` with ``segment`` null; marks are never dropped for lag."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from earshot.asr.engine import Transcription, Word
from earshot.asr.scheduler import AsrScheduler
from earshot.processors import Chunk, Event, Processor, StreamInfo
from earshot.processors.builtin.asr import Asr
from earshot.processors.builtin.vad import Vad
from earshot.processors.runner import StreamPipeline

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TRUTH = json.loads((FIXTURES / "speech_16k.json").read_text())["speech"]


class Lengths:
    """'Transcribes' audio as its length in frames."""

    name = "lengths"
    languages = ("en",)

    def transcribe(self, audio: np.ndarray, *, final: bool,
                   language: str | None = None) -> Transcription:
        return Transcription(str(audio.size), (Word(str(audio.size), 0.0, 0.1, 1.0),), "en",
                             audio.size / 16000)


class SlowFinals(Lengths):
    """Finals take a while to decode."""

    def transcribe(self, audio: np.ndarray, *, final: bool,
                   language: str | None = None) -> Transcription:
        if final:
            time.sleep(0.3)
        return super().transcribe(audio, final=final, language=language)


async def run(cuts: list[float], block: float = 0.1, engine: Lengths | None = None
              ) -> list[Event]:
    """Feed speech_16k.wav in blocks, asking for a finalize at each time in ``cuts``."""
    scheduler = AsrScheduler(engine or Lengths())
    events: list[Event] = []
    try:
        x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="float32")
        procs: list[Processor] = [Vad(), type("Asr", (Asr,), {"scheduler": scheduler})()]
        pipe = StreamPipeline(StreamInfo("s", rate, 1), procs, events.extend)
        answers = []
        step = int(block * rate)
        todo = sorted(round(c * rate) for c in cuts)
        for i in range(0, len(x), step):
            pipe.feed(x[i:i + step, None], i)
            while todo and todo[0] <= i + step:
                todo.pop(0)
                answers.append(pipe.finalize())
            await asyncio.sleep(0)
        await pipe.idle()
        assert await pipe.close(30) == []
        await asyncio.sleep(0.05)  # the last emits (call_soon_threadsafe) land
        assert answers == [True] * len(cuts)
    finally:
        scheduler.close()
    return events


async def test_finalize_mid_utterance_cuts_it_there_then_finalized_follows() -> None:
    cut = TRUTH[0]["start_s"] + 1.0  # one second into the first sentence
    events = await run([cut])
    finals = [e for e in events if e["type"] == "transcript" and e["final"]]
    first = finals[0]
    assert first["finalize"] is True and first["segment"] == 0
    # cut where the request fell in the audio (the block it came after: 0.1 s)
    assert cut - 0.01 <= first["end"] <= cut + 0.1 + 0.01
    assert not any(f.get("finalize") for f in finals[1:])
    done = [e for e in events if e["type"] == "finalized"]
    assert len(done) == 1 and done[0]["segment"] == 0 and done[0]["processor"] == "asr"
    assert events.index(done[0]) > events.index(first)
    # the VAD ended its speech there too, and a fresh VAD found the rest of the sentence
    ends = [e for e in events if e["type"] == "speech_end"]
    assert abs(ends[0]["end"] - first["end"]) <= 0.1
    assert len(finals) == len(TRUTH) + 1  # the rest of sentence 0 became an utterance


async def test_finalize_in_silence_answers_with_no_segment() -> None:
    gap = (TRUTH[0]["end_s"] + TRUTH[1]["start_s"]) / 2 + 0.3
    events = await run([0.3, gap])
    done = [e for e in events if e["type"] == "finalized"]
    assert [d["segment"] for d in done] == [None, None]
    assert abs(done[0]["t"] - 0.4) <= 0.11
    finals = [e for e in events if e["type"] == "transcript" and e["final"]]
    assert len(finals) == len(TRUTH) and not any(f.get("finalize") for f in finals)


async def test_finalize_after_an_utterance_ended_waits_for_its_final() -> None:
    """Nothing is being said, but the last utterance's final is still being decoded: the
    ``finalized`` comes after it (a client reads the finals up to its Finalize)."""
    cut = TRUTH[0]["end_s"] + 0.5  # the VAD ended it (0.3 s of silence); its final decodes
    events = await run([cut], engine=SlowFinals())
    done = [e for e in events if e["type"] == "finalized"]
    assert len(done) == 1 and done[0]["segment"] is None
    first = next(e for e in events if e["type"] == "transcript" and e["final"])
    assert first["segment"] == 0 and not first.get("finalize")
    assert events.index(first) < events.index(done[0])


class Slow(Processor):
    name = "slow"
    finalizes = True

    def __init__(self) -> None:
        self.seen: list[object] = []

    def process(self, chunk: Chunk) -> list[Event]:
        self.seen.append(chunk.offset)
        return []

    def finalize(self) -> list[Event]:
        self.seen.append("finalize")
        return [self.event("finalized", 0.0, segment=None)]


async def test_finalize_marks_keep_their_place_and_survive_drops() -> None:
    events: list[Event] = []
    proc = Slow()
    pipe = StreamPipeline(StreamInfo("s", 16000, 1), [proc], events.extend, max_lag=0.5)
    block = np.zeros((1600, 1), np.float32)
    pipe.feed(block, 0)
    assert pipe.finalize() is True
    for i in range(1, 20):  # 1.9 s queued at once: past max_lag, old audio is dropped
        pipe.feed(block, i * 1600)
    await pipe.idle()
    await pipe.close(5)
    assert proc.seen.count("finalize") == 1
    assert proc.seen.index("finalize") == 1 or proc.seen[0] == "finalize"
    assert [e["type"] for e in events].count("finalized") == 1
