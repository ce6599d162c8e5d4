"""Speculative second passes in the scheduler, with a two-pass engine double: a final whose
audio was decoded speculatively uses that decode (waiting for it if it still runs); one whose
utterance went on after the speculation does not (a miss, its seconds wasted); speculative
jobs run only on a spare worker, after finals and interims, and go first under load."""

from __future__ import annotations

import threading
import time

import numpy as np

from asr_helpers import TRUTH, Results, run_asr
from earshot.asr.engine import Transcription, Word
from earshot.asr.policy import DecodeRequest
from earshot.asr.scheduler import AsrScheduler

RATE = 16000


def req(segment: int, seconds: float, *, final: bool = False, speculative: bool = False,
        version: int = 1) -> DecodeRequest:
    return DecodeRequest(segment, 0, np.zeros(int(seconds * RATE), np.float32), final,
                         version, speculative=speculative)


def tr(text: str, duration: float, **kw: object) -> Transcription:
    return Transcription(text, (Word(text, 0.0, duration, 0.9),), "en", duration,
                         **kw)  # type: ignore[arg-type]


class Spec:
    """Two-pass double: the first pass's text is 'first N', a finish's second pass
    'second N', a speculative one (on the utterance's decoder) 'whole N' (N: frames).
    ``whole_gate`` holds speculative decodes, ``final_gate`` finishes; ``log`` records calls
    in order."""

    name = "spec-double"
    incremental = True
    two_pass = True
    speculative = True

    def __init__(self, whole_delay: float = 0.0) -> None:
        self.whole_delay = whole_delay
        self.whole_gate = threading.Event()
        self.whole_gate.set()
        self.final_gate = threading.Event()
        self.final_gate.set()
        self.log: list[tuple[str, int]] = []
        self.wholes = 0

    def transcribe(self, audio: np.ndarray, *, final: bool) -> Transcription:
        raise AssertionError("fed, not transcribed")

    def begin(self, *, language: str | None = None) -> SpecUtt:
        return SpecUtt(self)



class SpecUtt:
    def __init__(self, engine: Spec) -> None:
        self.engine, self.n, self.tail = engine, 0, 0

    def feed(self, audio: np.ndarray) -> None:
        self.engine.log.append(("feed", audio.size))
        self.n += audio.size

    def append(self, audio: np.ndarray) -> None:
        self.tail += audio.size

    def speculate(self, audio: np.ndarray) -> Transcription:
        self.tail += audio.size
        total = self.n + self.tail
        self.engine.log.append(("whole", total))
        self.engine.whole_gate.wait(20)
        time.sleep(self.engine.whole_delay)
        self.engine.wholes += 1
        return tr(f"whole {total}", total / RATE, second_decode=0.125)

    def partial(self) -> Transcription:
        return tr(f"first {self.n}", self.n / RATE)

    def finish(self) -> Transcription:
        self.engine.final_gate.wait(20)
        self.engine.log.append(("finish", self.n + self.tail))
        total = self.n + self.tail
        return tr(f"second {total}", total / RATE, first_text=f"first {self.n}",
                  first_decode=0.25, second_decode=0.5)

    def finish_with(self, second: Transcription) -> Transcription:
        self.engine.log.append(("finish_with", self.n))
        return Transcription(second.text, second.words, second.language, second.duration,
                             first_text=f"first {self.n}", first_decode=0.25,
                             second_decode=second.second_decode)

    def close(self) -> None:
        pass


def settle(sched: AsrScheduler, n: int) -> None:
    deadline = time.monotonic() + 10
    while sched.stats.speculative_decoded < n:
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_a_final_with_the_speculated_audio_uses_the_speculative_second_pass() -> None:
    engine = Spec()
    results = Results()
    sched = AsrScheduler(engine, workers=2)
    try:
        assert sched.speculates
        sched.submit("s", req(0, 0.5), results)
        results.wait(1)
        sched.submit("s", req(0, 1.8, speculative=True, version=2), results)
        settle(sched, 1)
        sched.submit("s", req(0, 1.8, final=True, version=3), results)
        got = results.wait(2)
    finally:
        sched.close()
    final = got[-1]
    assert len(got) == 2 and final.request.final  # nothing delivered for the speculation
    assert final.transcription is not None and final.transcription.text == "whole 28800"
    assert final.transcription.first_text == "first 8000"
    assert final.transcription.second_decode == 0.125
    assert (final.speculative, final.spec_misses, final.spec_wasted) == (True, 0, 0.0)
    assert engine.log == [("feed", 8000), ("whole", 28800), ("finish_with", 8000)]
    assert sched.stats.speculative_hits == 1 and sched.stats.speculative_misses == 0


def test_a_final_waits_for_its_running_speculative_decode_instead_of_decoding_again() -> None:
    engine = Spec(whole_delay=0.2)
    engine.whole_gate.clear()
    results = Results()
    sched = AsrScheduler(engine, workers=2)
    try:
        sched.submit("s", req(0, 1.0, speculative=True), results)
        deadline = time.monotonic() + 5
        while ("whole", 16000) not in engine.log:  # running
            assert time.monotonic() < deadline
            time.sleep(0.005)
        sched.submit("s", req(0, 1.0, final=True, version=2), results)
        time.sleep(0.05)
        engine.whole_gate.set()
        got = results.wait(1)
    finally:
        sched.close()
    assert got[0].transcription is not None and got[0].transcription.text == "whole 16000"
    assert got[0].speculative is True and engine.wholes == 1
    assert got[0].transcription.first_text == "first 0"  # no interim: the first pass heard
    assert ("finish", 16000) not in engine.log  # nothing, and the final decoded nothing


def test_speech_resumed_the_speculation_is_a_miss_and_its_time_is_counted() -> None:
    engine = Spec(whole_delay=0.05)
    results = Results()
    sched = AsrScheduler(engine, workers=2)
    try:
        sched.submit("s", req(0, 1.0), results)
        results.wait(1)
        sched.submit("s", req(0, 1.2, speculative=True, version=2), results)
        settle(sched, 1)
        sched.submit("s", req(0, 1.5), results)  # the utterance goes on
        results.wait(2)
        sched.submit("s", req(0, 2.0, final=True, version=4), results)
        got = results.wait(3)
    finally:
        sched.close()
    final = got[-1]
    assert final.transcription is not None and final.transcription.text == "second 32000"
    assert final.speculative is False and final.spec_misses == 1
    assert 0.05 <= final.spec_wasted < 1.0
    assert sched.stats.speculative_misses == 1 and sched.stats.speculative_hits == 0
    assert sched.stats.speculative_wasted == final.spec_wasted or \
        abs(sched.stats.speculative_wasted - final.spec_wasted) < 1e-3


def test_speculation_waits_for_a_spare_worker_and_is_dropped_when_its_final_comes() -> None:
    """Two workers, one busy with another stream's final: interims still go, the speculative
    job waits (it would take the last free worker); the final of its utterance then comes
    and is decoded on its own; the speculation never runs."""
    engine = Spec()
    engine.final_gate.clear()
    results = Results()
    sched = AsrScheduler(engine, workers=2)
    try:
        sched.submit("busy", req(0, 1.0, final=True), results)
        time.sleep(0.05)
        sched.submit("s", req(0, 1.0, speculative=True), results)
        sched.submit("t", req(0, 0.5), results)  # an interim: taken by the free worker
        got = results.wait(1)
        assert got[0].stream == "t"
        time.sleep(0.1)
        assert engine.wholes == 0 and ("whole", 16000) not in engine.log
        sched.submit("s", req(0, 1.0, final=True, version=2), results)  # the free worker
        engine.final_gate.set()
        got = results.wait(3)
    finally:
        sched.close()
    final = next(r for r in got if r.stream == "s")
    assert final.speculative is False and final.spec_misses == 0
    assert final.transcription is not None and final.transcription.text == "second 16000"
    assert sched.stats.speculative_dropped == 1 and engine.wholes == 0


def test_finals_and_interims_go_before_speculation_with_one_worker() -> None:
    engine = Spec()
    engine.final_gate.clear()
    results = Results()
    sched = AsrScheduler(engine, workers=1)
    try:
        sched.submit("busy", req(0, 1.0, final=True), results)
        time.sleep(0.05)  # the only worker is busy: everything below waits
        sched.submit("a", req(0, 1.0, speculative=True), results)
        sched.submit("b", req(0, 0.5), results)
        sched.submit("c", req(0, 2.0, final=True), results)
        sched.submit("a", req(0, 1.5, speculative=True, version=2), results)  # replaces
        engine.final_gate.set()
        got = results.wait(3)
        settle(sched, 1)
    finally:
        sched.close()
    assert [(r.stream, r.request.final) for r in got] == \
        [("busy", True), ("c", True), ("b", False)]
    wholes = [e for e in engine.log if e[0] == "whole"]
    assert wholes == [("whole", 24000)]  # the newer one only, last
    assert engine.log.index(("whole", 24000)) > engine.log.index(("finish", 32000))
    assert sched.stats.speculative_dropped == 1


def test_two_pass_finals_without_speculation_say_so() -> None:
    engine = Spec()
    results = Results()
    sched = AsrScheduler(engine)
    try:
        sched.submit("s", req(0, 1.0, final=True), results)
        got = results.wait(1)
        sched.forget("s")
    finally:
        sched.close()
    assert got[0].speculative is False and got[0].transcription is not None
    assert got[0].transcription.text == "second 16000"


def test_the_asr_processor_speculates_and_its_finals_say_whether_it_paid_off() -> None:
    """Through the real runner on the speech fixture: each final is either the speculative
    decode of exactly its own audio or the second pass after the end, and says which."""
    events, scheduler = run_asr(Spec(), 0.02, workers=1)
    finals = [e for e in events if e["type"] == "transcript" and e["final"]]
    assert len(finals) == len(TRUTH)
    for f in finals:
        frames = round((f["end"] - f["start"] + 0.1) * RATE)  # with the 0.1 s lead-in
        kind, n = f["text"].split()
        # the second pass, speculative or not, decodes all the decoder heard: the final's
        # audio, and any of the VAD's silence after the end that an interim fed it first
        assert frames - 1 <= int(n) <= frames + 0.35 * RATE and kind in ("whole", "second")
        sp = f["second_pass"]
        assert sp["speculative"] is (kind == "whole") and sp["misses"] >= 0
        assert sp["wasted"] >= 0.0
    assert scheduler.stats.speculative_hits >= 1
    assert scheduler.stats.speculative_hits == sum(f["second_pass"]["speculative"]
                                                   for f in finals)
