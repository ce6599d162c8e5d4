"""The doors' shared pieces: stable-text growth across utterances, G.711 tables."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from door_events import final, interim, two_sentences
from earshot.integrations.common import SegmentedGrowth, final_words
from earshot.integrations.g711 import ALAW_TABLE, MULAW_TABLE, alaw_to_s16, mulaw_to_s16


def test_growth_only_ever_adds_the_stable_text_then_the_finals() -> None:
    g = SegmentedGrowth(first=0)
    pieces = [g.update(e) for e in two_sentences() if e["type"] == "transcript"]
    assert pieces == ["", "the birch", " canoe", " slid on the smooth planks",
                      "", " glue the", " sheet to the dark blue background"]
    assert "".join(pieces) == g.text == g.final_text() == (
        "the birch canoe slid on the smooth planks glue the sheet to the dark blue background")
    assert not g.diverged


def test_a_later_utterance_waits_for_the_final_of_the_one_before() -> None:
    g = SegmentedGrowth(first=0)
    assert g.update(interim(0, "one two three", "one two", 0.0, 1.0)) == "one two"
    # utterance 1 is heard before utterance 0's final is decoded
    assert g.update(interim(1, "four five", "four", 2.0, 2.5)) == ""
    assert g.update(final(0, "one two three", 0.0, 1.2)) == " three four"
    assert g.update(final(1, "four five six", 2.0, 3.0)) == " five six"
    assert g.finish() == ""
    assert g.text == "one two three four five six"


def test_a_final_that_breaks_the_promise_stops_the_growth_and_is_reported() -> None:
    g = SegmentedGrowth(first=0)
    assert g.update(interim(0, "a b c", "a b", 0.0, 1.0)) == "a b"
    assert g.update(final(0, "x b c", 0.0, 1.0)) == ""
    assert g.diverged
    assert g.text == "a b"  # what was promised stays as it was
    assert g.final_text() == "x b c"


def test_finish_keeps_what_an_utterance_without_a_final_promised() -> None:
    g = SegmentedGrowth(first=0)
    g.update(final(0, "hello there", 0.0, 1.0))
    g.update(interim(2, "late words", "late", 5.0, 5.5))  # utterance 1 never came
    assert g.text == "hello there"
    assert g.finish() == " late"
    assert g.text == "hello there late"


def test_an_asr_error_closes_its_utterance_with_no_words() -> None:
    g = SegmentedGrowth(first=0)
    assert g.update(interim(0, "lost words", "lost", 0.0, 1.0)) == "lost"
    g2 = SegmentedGrowth(first=0)
    assert g2.update({"type": "error", "processor": "asr", "segment": 0,
                      "code": "asr_failed"}) == ""
    assert g2.update(final(1, "next one", 2.0, 3.0)) == "next one"


def test_final_words_in_order_without_blank_words() -> None:
    a, b = final(0, "one two", 0.0, 1.0), final(1, "three", 2.0, 3.0)
    a["words"].append({"w": " ", "start": 1.0, "end": 1.0, "p": 0.1})
    assert [w["w"] for w in final_words([a, b])] == ["one", "two", "three"]


def test_g711_tables_match_the_standard_reference() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # CPython's C G.711 (gone in 3.13)
    codes = bytes(range(256))
    assert np.array_equal(mulaw_to_s16(codes), np.frombuffer(audioop.ulaw2lin(codes, 2), "<i2"))
    assert np.array_equal(alaw_to_s16(codes), np.frombuffer(audioop.alaw2lin(codes, 2), "<i2"))


def test_g711_known_codes() -> None:
    # μ-law: 0xFF and 0x7F are the two zeros, 0x00 the most negative (-32124)
    assert MULAW_TABLE[0xFF] == 0 and MULAW_TABLE[0x7F] == 0
    assert MULAW_TABLE[0x00] == -32124 and MULAW_TABLE[0x80] == 32124
    # A-law: 0xD5 is the smallest positive step (+8), 0x55 the smallest negative (-8)
    assert ALAW_TABLE[0xD5] == 8 and ALAW_TABLE[0x55] == -8
    assert ALAW_TABLE[0xAA] == 32256 and ALAW_TABLE[0x2A] == -32256
    # a sine through μ-law keeps its shape (G.711's ~38 dB SNR)
    t = np.arange(8000) / 8000
    x = (np.sin(2 * np.pi * 440 * t) * 20000).astype(np.int16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    y = mulaw_to_s16(audioop.lin2ulaw(x.tobytes(), 2)).astype(np.float64)
    snr = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum((y - x) ** 2))
    assert snr > 30
