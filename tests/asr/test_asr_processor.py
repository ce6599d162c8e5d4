"""The asr processor with an engine double through the real runner: chunk size does not
change what is decoded, and the language of the stream reaches the engine or is refused."""

from __future__ import annotations

import numpy as np
import pytest

from asr_helpers import TRUTH, run_asr
from earshot.asr.engine import Transcription, Word


class Lengths:
    """'Transcribes' audio as its length in frames."""

    name = "lengths"
    languages = ("en", "fr")

    def __init__(self) -> None:
        self.languages_seen: list[str | None] = []

    def transcribe(self, audio: np.ndarray, *, final: bool,
                   language: str | None = None) -> Transcription:
        self.languages_seen.append(language)
        return Transcription(str(audio.size), (Word(str(audio.size), 0.0, 0.1, 1.0),), "en",
                             audio.size / 16000)


def finals(chunk_seconds: float, **options: object) -> tuple[list[dict], Lengths]:
    engine = Lengths()
    events, _ = run_asr(engine, chunk_seconds, **options)
    return [e for e in events if e["type"] == "transcript" and e["final"]], engine


@pytest.mark.parametrize("chunk", [0.02, 3.0])
def test_chunk_size_does_not_change_the_finals(chunk: float) -> None:
    got, _ = finals(chunk)
    ref, _ = finals(0.1)
    assert [(f["start"], f["end"], f["text"]) for f in got] == \
        [(f["start"], f["end"], f["text"]) for f in ref]
    assert len(got) == len(TRUTH)
    for f, truth in zip(got, TRUTH, strict=True):
        assert abs(f["start"] - truth["start_s"]) <= 0.1
        # the audio decoded: the utterance plus the 0.1 s lead-in before it
        assert int(f["text"]) == round((f["end"] - f["start"] + 0.1) * 16000)


def test_language_option_reaches_the_engine() -> None:
    _, engine = finals(0.1, language="fr-FR")
    assert set(engine.languages_seen) == {"fr"}
    _, engine = finals(0.1)
    assert set(engine.languages_seen) == {None}


class Retracting:
    """Interims that agree twice, then take most of it back: 'a b c', 'a b c d', 'a', …"""

    name = "retracting"
    languages = ("en",)
    HYPOTHESES = ("a b c", "a b c d", "a")

    def __init__(self) -> None:
        self.interims = 0

    def transcribe(self, audio: np.ndarray, *, final: bool,
                   language: str | None = None) -> Transcription:
        if final:
            text = "a b c d e"
        else:
            text = self.HYPOTHESES[self.interims % len(self.HYPOTHESES)]
            self.interims += 1
        dur = audio.size / 16000
        words = text.split()
        return Transcription(text, tuple(Word(w, i * dur / len(words), (i + 1) * dur / len(words),
                                              0.9) for i, w in enumerate(words)), "en", dur)


def test_an_interim_never_takes_back_what_was_promised_stable() -> None:
    """Found by the tiny random Whisper: an interim shorter than the stable prefix came out
    as it was, its text no longer starting with its own `stable`."""
    engine = Retracting()
    events, _ = run_asr(engine)
    interims = [e for e in events if e["type"] == "transcript" and not e["final"]]
    assert engine.interims >= 3 and any(e["stable"] for e in interims)
    promised: dict[int, str] = {}
    for e in interims:
        assert e["text"].startswith(e["stable"]), e
        assert [w["w"] for w in e["words"]] == e["text"].split()
        before = promised.get(e["segment"], "")
        assert e["stable"].startswith(before), (before, e)  # a stable prefix only grows
        promised[e["segment"]] = e["stable"]


class TwoPass:
    """An incremental two-pass engine double: interims say 'first N', finals 'second'."""

    name = "two-pass"
    incremental = True
    two_pass = True
    languages = ("en",)

    class Utt:
        def __init__(self) -> None:
            self.n = 0

        def feed(self, audio: np.ndarray) -> None:
            self.n += audio.size

        def partial(self) -> Transcription:
            return Transcription(f"first {self.n}", (Word("first", 0, 0.1, 0.5),
                                                     Word(str(self.n), 0.1, 0.2, 0.5)),
                                 "en", self.n / 16000)

        def finish(self) -> Transcription:
            return Transcription("second pass", (Word("second", 0, 0.1, 0.9),
                                                 Word("pass", 0.1, 0.2, 0.9)), "en",
                                 self.n / 16000, first_text=f"first {self.n}",
                                 first_decode=0.25, second_decode=0.125)

        def close(self) -> None:
            pass

    def begin(self, *, language: str | None = None) -> TwoPass.Utt:
        return TwoPass.Utt()

    def transcribe(self, audio: np.ndarray, *, final: bool) -> Transcription:
        raise AssertionError("an incremental engine is fed, not asked to transcribe")


def test_a_two_pass_final_replaces_its_interims_and_reports_both_passes() -> None:
    events, _ = run_asr(TwoPass())
    ts = [e for e in events if e["type"] == "transcript"]
    finals = [e for e in ts if e["final"]]
    assert len(finals) == len(TRUTH)
    for f in finals:
        interims = [e for e in ts if e["segment"] == f["segment"] and not e["final"]]
        assert interims and all(e["stable"] == "" for e in interims)  # nothing promised
        assert f["text"] == f["stable"] == "second pass" != interims[-1]["text"]
        assert f["first_pass"]["text"].startswith("first ")
        assert f["first_pass"]["decode"] == 0.25 and f["second_pass"] == {"decode": 0.125}
    # the holdback option asks for a promise: then the final keeps the stable prefix
    events, _ = run_asr(TwoPass(), holdback=0)
    promised = [e for e in events if e["type"] == "transcript" and e["final"]
                and e["text"] != "second pass"]
    assert promised and all(e["text"].startswith("first") for e in promised)


class Slow(Lengths):
    """Takes 50 ms a decode: audio sent faster than that saturates it."""

    def transcribe(self, audio: np.ndarray, *, final: bool,
                   language: str | None = None) -> Transcription:
        import time

        time.sleep(0.05)
        return super().transcribe(audio, final=final, language=language)


def test_saturated_decoders_skip_interims_first_and_a_lag_event_says_so() -> None:
    # every 0.1 s of audio an interim, pushed through at once
    events, scheduler = run_asr(Slow(), interim_interval=0.1)
    finals = [e for e in events if e["type"] == "transcript" and e["final"]]
    assert len(finals) == len(TRUTH)  # every final, none waited behind an interim
    lags = [e for e in events if e["type"] == "lag"]
    assert lags and scheduler.stats.skipped_interims >= 2
    assert all(e["processor"] == "asr" and e["interims_skipped"] >= 0 for e in lags)
    assert any(e["interims_skipped"] >= 2 and "interims skipped, finals first" in e["message"]
               for e in lags)
    assert sum(e["interims_skipped"] for e in lags) <= scheduler.stats.skipped_interims
