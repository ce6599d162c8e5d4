"""The shared scheduler with engine doubles: finals first, fair interims, stale interims
skipped, finals of several streams batched into one call, incremental engines fed each
sample once, per-stream languages passed through."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from asr_helpers import Results
from earshot.asr.engine import Transcription, Word
from earshot.asr.policy import DecodeRequest
from earshot.asr.scheduler import AsrScheduler

RATE = 16000


def req(segment: int, seconds: float, *, final: bool, version: int = 1) -> DecodeRequest:
    return DecodeRequest(segment, 0, np.zeros(int(seconds * RATE), np.float32), final, version)


def tr(text: str, duration: float) -> Transcription:
    return Transcription(text, (Word(text, 0.0, duration, 0.9),), "en", duration)


class BatchDouble:
    """A slow batching engine: ``delay`` seconds per call, whatever the batch size; the
    text names the audio's length so results can be matched to their streams."""

    name = "batch-double"
    languages = None  # any

    def __init__(self, delay: float = 0.3, max_batch: int = 8) -> None:
        self.delay = delay
        self.max_batch = max_batch
        self.calls: list[tuple[str, int, bool]] = []  # (kind, size, final)
        self.languages_seen: list[str | None] = []
        self.gate = threading.Event()
        self.gate.set()

    def transcribe(self, audio: np.ndarray, *, final: bool,
                   language: str | None = None) -> Transcription:
        self.gate.wait(20)
        self.calls.append(("one", 1, final))
        self.languages_seen.append(language)
        time.sleep(self.delay)
        return tr(f"{audio.size}", audio.size / RATE)

    def transcribe_batch(self, audios: Sequence[np.ndarray], *, final: bool,
                         languages: Sequence[str | None]) -> list[Transcription]:
        self.gate.wait(20)
        self.calls.append(("batch", len(audios), final))
        self.languages_seen.extend(languages)
        time.sleep(self.delay)
        return [tr(f"{a.size}", a.size / RATE) for a in audios]


def test_four_simultaneous_finals_are_decoded_in_one_batch_in_stream_order() -> None:
    engine = BatchDouble()
    results = Results()
    sched = AsrScheduler(engine)
    try:
        engine.gate.clear()  # the worker is busy with another stream's final...
        sched.submit("busy", req(0, 1.0, final=True), results)
        time.sleep(0.2)
        for i in range(4):  # ...while four streams end an utterance at the same moment
            sched.submit(f"s{i}", req(0, 1.0 + i / 10, final=True), results)
        engine.gate.set()
        got = results.wait(5)
    finally:
        sched.close()
    assert engine.calls == [("one", 1, True), ("batch", 4, True)]
    assert [r.stream for r in got] == ["busy", "s0", "s1", "s2", "s3"]
    for r in got[1:]:
        i = int(r.stream[1:])
        assert r.transcription is not None and r.transcription.text == str(16000 + i * 1600)
        assert r.batch == 4 and r.request.final
        assert r.wait >= 0.3  # waited for the busy decode: the queue wait is reported
    assert sched.stats.largest_batch == 4 and sched.stats.batches == 2
    assert sched.stats.decoded_finals == 5 and sched.stats.batched_jobs == 4


def test_batching_off_decodes_one_at_a_time() -> None:
    engine = BatchDouble(delay=0.05)
    results = Results()
    sched = AsrScheduler(engine, batch=False)
    try:
        engine.gate.clear()
        sched.submit("busy", req(0, 1.0, final=True), results)
        time.sleep(0.1)
        for i in range(4):
            sched.submit(f"s{i}", req(0, 1.0, final=True), results)
        engine.gate.set()
        got = results.wait(5)
    finally:
        sched.close()
    assert [c[:2] for c in engine.calls] == [("one", 1)] * 5
    assert [r.stream for r in got] == ["busy", "s0", "s1", "s2", "s3"]


def test_finals_first_interims_round_robin_stale_ones_skipped() -> None:
    engine = BatchDouble(delay=0.02, max_batch=1)
    results = Results()
    sched = AsrScheduler(engine)
    try:
        engine.gate.clear()
        sched.submit("a", req(0, 0.5, final=False, version=1), results)  # taken at once
        time.sleep(0.1)
        sched.submit("a", req(0, 1.0, final=False, version=2), results)
        sched.submit("a", req(0, 1.5, final=False, version=3), results)  # replaces v2
        sched.submit("b", req(0, 0.5, final=False, version=1), results)
        sched.submit("c", req(0, 0.7, final=False, version=1), results)
        sched.submit("c", req(0, 0.9, final=True, version=2), results)  # c's interim is stale
        engine.gate.set()
        got = results.wait(6)
    finally:
        sched.close()
    skipped = [(r.stream, r.request.version) for r in got if r.transcription is None]
    assert sorted(skipped) == [("a", 2), ("c", 1)]
    decoded = [(r.stream, r.request.final, r.request.version) for r in got
               if r.transcription is not None]
    # the final first, then one interim per stream in turn order
    assert decoded == [("a", False, 1), ("c", True, 2), ("a", False, 3), ("b", False, 1)]
    assert sched.stats.skipped_interims == 2


def test_per_stream_language_reaches_the_engine() -> None:
    engine = BatchDouble(delay=0.0, max_batch=1)
    results = Results()
    sched = AsrScheduler(engine)
    try:
        sched.submit("fr", req(0, 0.5, final=True), results, language="fr")
        results.wait(1)
        sched.submit("any", req(0, 0.5, final=True), results)
        results.wait(2)
    finally:
        sched.close()
    assert engine.languages_seen == ["fr", None]


class IncrementalDouble:
    """Records what each utterance decoder is fed; the hypothesis is the frames so far."""

    name = "incremental-double"
    incremental = True
    languages = ("en",)

    def __init__(self) -> None:
        self.fed: dict[int, list[int]] = {}
        self.finished: list[int] = []
        self.closed: list[int] = []
        self.transcribed = 0

    def transcribe(self, audio: np.ndarray, *, final: bool,
                   language: str | None = None) -> Transcription:
        self.transcribed += 1
        return tr(str(audio.size), audio.size / RATE)

    def begin(self, *, language: str | None = None) -> _Utt:
        uid = len(self.fed)
        self.fed[uid] = []
        return _Utt(self, uid)


class _Utt:
    def __init__(self, engine: IncrementalDouble, uid: int) -> None:
        self.engine, self.uid = engine, uid

    def feed(self, audio: np.ndarray) -> None:
        self.engine.fed[self.uid].append(audio.size)

    def partial(self) -> Transcription:
        n = sum(self.engine.fed[self.uid])
        return tr(str(n), n / RATE)

    def finish(self) -> Transcription:
        self.engine.finished.append(self.uid)
        return self.partial()

    def close(self) -> None:
        self.engine.closed.append(self.uid)


def test_incremental_engine_is_fed_each_sample_once() -> None:
    engine = IncrementalDouble()
    results = Results()
    sched = AsrScheduler(engine, workers=2)
    try:
        for k, seconds in enumerate((0.5, 1.0, 1.5), 1):
            sched.submit("s", req(0, seconds, final=False, version=k), results)
            results.wait(k)
        sched.submit("s", req(0, 1.8, final=True, version=4), results)
        sched.submit("t", req(0, 0.5, final=False), results)  # another stream: its own decoder
        got = results.wait(5)
        sched.submit("s", req(1, 0.6, final=False, version=5), results)  # the next utterance
        results.wait(6)
        sched.forget("s")  # the stream ends with that utterance open: its decoder is closed
    finally:
        sched.close()
    texts = [(r.stream, r.request.segment, r.request.final, r.transcription.text)
             for r in got if r.transcription is not None]
    assert texts[:4] == [("s", 0, False, "8000"), ("s", 0, False, "16000"),
                         ("s", 0, False, "24000"), ("s", 0, True, "28800")]
    assert engine.fed[0] == [8000, 8000, 8000, 4800]  # only the new audio, every time
    assert engine.finished == [0] and engine.transcribed == 0
    assert sorted(engine.closed) == [1, 2]  # t's decoder at close, s's second at forget
    assert sched.incremental and sched.max_batch == 1


def test_engine_failure_is_an_error_result_and_the_worker_survives() -> None:
    class Broken(BatchDouble):
        def transcribe(self, audio: np.ndarray, *, final: bool,
                       language: str | None = None) -> Transcription:
            if audio.size == 8000:
                raise RuntimeError("bad audio")
            return super().transcribe(audio, final=final, language=language)

    engine = Broken(delay=0.0, max_batch=1)
    results = Results()
    sched = AsrScheduler(engine)
    try:
        sched.submit("s", req(0, 0.5, final=True), results)
        sched.submit("s", req(1, 1.0, final=True), results)
        got = results.wait(2)
    finally:
        sched.close()
    assert got[0].transcription is None and got[0].error == "RuntimeError: bad audio"
    assert got[1].transcription is not None and got[1].transcription.text == "16000"
    assert sched.stats.failures == 1


@pytest.mark.parametrize("n", [0, -1, "x"])
def test_engines_without_a_usable_max_batch_are_not_batched(n: object) -> None:
    engine = BatchDouble(delay=0.0)
    engine.max_batch = n  # type: ignore[assignment]
    sched = AsrScheduler(engine)
    try:
        assert sched.max_batch == 1
    finally:
        sched.close()


@pytest.mark.parametrize(("batch", "expected"), [(True, 8), (False, 1), (1, 1), (3, 3), (20, 8)])
def test_batch_setting(batch: bool | int, expected: int) -> None:
    sched = AsrScheduler(BatchDouble(delay=0.0), batch=batch)
    try:
        assert sched.max_batch == expected
    finally:
        sched.close()


class TwoPassDouble(IncrementalDouble):
    """An incremental engine whose finals are decoded again whole: the final's tail is
    appended for the second pass, not fed to the first."""

    two_pass = True

    def __init__(self) -> None:
        super().__init__()
        self.appended: dict[int, list[int]] = {}

    def begin(self, *, language: str | None = None) -> _TwoPassUtt:
        uid = len(self.fed)
        self.fed[uid] = []
        self.appended[uid] = []
        return _TwoPassUtt(self, uid)


class _TwoPassUtt(_Utt):
    engine: TwoPassDouble

    def append(self, audio: np.ndarray) -> None:
        self.engine.appended[self.uid].append(audio.size)

    def finish(self) -> Transcription:
        self.engine.finished.append(self.uid)
        n = sum(self.engine.fed[self.uid]) + sum(self.engine.appended[self.uid])
        return tr(str(n), n / RATE)


def test_two_pass_final_appends_its_tail_for_the_second_pass_only() -> None:
    engine = TwoPassDouble()
    results = Results()
    sched = AsrScheduler(engine)
    try:
        sched.submit("s", req(0, 0.5, final=False, version=1), results)
        results.wait(1)
        sched.submit("s", req(0, 1.8, final=True, version=2), results)
        sched.submit("t", req(0, 1.0, final=True), results)  # no interim: the whole at once
        got = results.wait(3)
    finally:
        sched.close()
    assert sched.two_pass
    assert engine.fed == {0: [8000], 1: []}  # the first pass decodes interims' audio only
    assert engine.appended == {0: [20800], 1: [16000]}
    assert [r.transcription.text for r in got if r.transcription is not None] == \
        ["8000", "28800", "16000"]


class SlowFirst:
    """Decoding segment 0 takes long, the rest is quick (a long utterance, then a short)."""

    name = "slow-first"

    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []

    def transcribe(self, audio: np.ndarray, *, final: bool) -> Transcription:
        seg = int(audio.size // RATE)
        if seg == 0:
            time.sleep(0.3)
        return tr(str(seg), audio.size / RATE)


def test_a_streams_finals_arrive_in_order_with_several_workers() -> None:
    """Two workers: the second must not deliver a stream's next final before the first has
    delivered the long one before it; another stream's final goes on meanwhile."""
    results = Results()
    sched = AsrScheduler(SlowFirst(), workers=2)
    try:
        sched.submit("s", DecodeRequest(0, 0, np.zeros(RATE // 2, np.float32), True, 1),
                      results)
        sched.submit("s", DecodeRequest(1, 0, np.zeros(RATE + 10, np.float32), True, 2),
                     results)
        sched.submit("t", DecodeRequest(0, 0, np.zeros(RATE + 10, np.float32), True, 1),
                     results)
        got = results.wait(3)
    finally:
        sched.close()
    order = [(r.stream, r.request.segment) for r in got]
    assert order.index(("s", 0)) < order.index(("s", 1))
    assert order[0] == ("t", 0)  # not held up by s's long decode
    assert all(r.transcription is not None for r in got)
