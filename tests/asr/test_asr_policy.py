"""The streaming speech-to-text policy: interim cadence, finals, the cap cut, stabilization."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from earshot.asr.policy import RATE, LocalAgreement, UtterancePolicy


def feed_all(policy: UtterancePolicy, x: np.ndarray, start: int, step: int,
             vad: dict[int, tuple[str, int]] | None = None) -> list:
    out = []
    vad = vad or {}
    for i in range(0, len(x), step):
        for at, (kind, off) in sorted(vad.items()):
            if i <= at < i + step:
                out += policy.speech_start(off) if kind == "start" else policy.speech_end(off)
        out += policy.feed(x[i:i + step], start + i)
    return out


def test_interims_then_one_final_covering_the_utterance() -> None:
    x = np.random.default_rng(0).standard_normal(RATE * 4).astype(np.float32)
    p = UtterancePolicy(interim_interval=0.5)
    # the VAD reports the start 0.25 s late and the end 0.3 s late
    reqs = feed_all(p, x, 0, 1600, {
        int(1.25 * RATE): ("start", RATE), int(3.3 * RATE): ("end", 3 * RATE)})
    interims = [r for r in reqs if not r.final]
    finals = [r for r in reqs if r.final]
    assert len(finals) == 1 and finals[0].segment == 0
    assert (finals[0].start, finals[0].end) == (RATE, 3 * RATE)
    assert np.array_equal(finals[0].audio, x[RATE:3 * RATE])
    assert len(interims) >= 3 and all(r.start == RATE and r.segment == 0 for r in interims)
    assert [r.end for r in interims] == sorted(r.end for r in interims)
    assert all(np.array_equal(r.audio, x[r.start:r.end]) for r in interims)
    assert [r.version for r in reqs] == sorted(r.version for r in reqs)
    assert reqs[-1].final


def test_long_utterance_is_cut_at_its_quietest_point() -> None:
    x = (np.random.default_rng(1).standard_normal(RATE * 40) * 0.3).astype(np.float32)
    quiet = int(27.3 * RATE)
    x[quiet - 80:quiet + 80] *= 0.001
    p = UtterancePolicy(max_utterance=30.0, cut_search=5.0)
    reqs = feed_all(p, x, 0, 8000, {0: ("start", 0)})
    finals = [r for r in reqs if r.final]
    assert len(finals) == 1 and finals[0].start == 0
    assert abs(finals[0].end - quiet) <= RATE // 100
    later = [r for r in reqs if r.segment == 1]
    assert later and later[0].start == finals[0].end
    reqs2 = p.flush()
    assert reqs2[0].final and reqs2[0].segment == 1 and reqs2[0].end == len(x)


@given(st.integers(100, 5000))
def test_chunking_does_not_change_finals(step: int) -> None:
    x = np.random.default_rng(2).standard_normal(RATE * 3).astype(np.float32)
    vad = {int(0.6 * RATE): ("start", RATE // 4), int(2.5 * RATE): ("end", 2 * RATE)}
    finals = [r for r in feed_all(UtterancePolicy(), x, 0, step, vad) if r.final]
    assert len(finals) == 1 and (finals[0].start, finals[0].end) == (RATE // 4, 2 * RATE)
    assert np.array_equal(finals[0].audio, x[RATE // 4:2 * RATE])


def test_local_agreement() -> None:
    la = LocalAgreement()
    assert la.update(["hello"]) == ([], ["hello"])
    assert la.update(["hello", "wor"]) == (["hello"], ["wor"])
    assert la.update(["Hello,", "world", "how"]) == (["hello"], ["world", "how"])
    assert la.update(["hello", "world", "how", "are"]) == (["hello", "world", "how"], ["are"])
    # a hypothesis that disagrees never takes stable words back
    stable, unstable = la.update(["yellow", "word"])
    assert stable == ["hello", "world", "how"] and unstable == ["yellow", "word"]


def test_a_speculative_request_has_the_audio_of_the_final_if_the_end_holds() -> None:
    x = np.random.default_rng(3).standard_normal(RATE * 4).astype(np.float32)
    p = UtterancePolicy(interim_interval=0.5)
    assert p.speculate(RATE) is None  # no utterance
    reqs = feed_all(p, x[:int(2.3 * RATE)], 0, 1600, {int(1.25 * RATE): ("start", RATE)})
    spec = p.speculate(2 * RATE)  # the VAD saw silence begin: it will end at 2 s
    assert spec is not None and spec.speculative and not spec.final
    assert (spec.segment, spec.start, spec.end) == (0, RATE, 2 * RATE)
    assert np.array_equal(spec.audio, x[RATE:2 * RATE])
    assert p.speculate(2 * RATE) is None  # asked once per end
    assert p.speculate(RATE) is None  # nothing to decode
    reqs += feed_all(p, x[int(2.3 * RATE):int(2.6 * RATE)], int(2.3 * RATE), 1600)
    final = p.speech_end(2 * RATE)[0]
    assert final.final and not final.speculative
    assert (final.segment, final.start, final.end) == (spec.segment, spec.start, spec.end)
    assert np.array_equal(final.audio, spec.audio)
    assert not any(r.speculative for r in reqs)  # interims are never speculative


def test_speculation_after_speech_resumed_gives_a_later_end() -> None:
    x = np.random.default_rng(4).standard_normal(RATE * 5).astype(np.float32)
    p = UtterancePolicy()
    p.speech_start(0)
    p.feed(x[:3 * RATE], 0)
    first = p.speculate(2 * RATE)
    second = p.speculate(int(2.8 * RATE))  # speech resumed, then a new silence
    assert first is not None and second is not None
    assert second.end == int(2.8 * RATE) and second.version > first.version
    final = p.speech_end(int(2.8 * RATE))[0]
    assert final.end == second.end != first.end
