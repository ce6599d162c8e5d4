"""The PocketSphinx engine (the default) with its bundled model, on real words."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from earshot.asr.engine import (
    EngineConfig,
    is_incremental,
    language_problem,
    load_engine,
    primary_language,
)
from earshot.asr.pocketsphinx import DecoderDied, PocketSphinxEngine
from earshot.errors import ConfigError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
READING = json.loads((FIXTURES / "reading_16k.json").read_text())


@pytest.fixture(scope="module")
def engine() -> Iterator[PocketSphinxEngine]:
    e = load_engine(EngineConfig(model="en-us"), "pocketsphinx")
    assert isinstance(e, PocketSphinxEngine)
    yield e
    e.close()


@pytest.fixture(scope="module")
def reading() -> np.ndarray:
    x, rate = sf.read(FIXTURES / "reading_16k.wav", dtype="float32")
    assert rate == 16000
    return x


def sentence(x: np.ndarray, n: int, pad: float = 0.1) -> np.ndarray:
    s = READING["speech"][n]
    return x[s["start"] - int(pad * 16000): s["end"] + int(0.4 * 16000)]


def test_declares_its_capabilities(engine: PocketSphinxEngine) -> None:
    assert engine.name == "pocketsphinx" and is_incremental(engine)
    assert engine.languages == ("en",)
    assert language_problem(engine, "en-US") is None
    problem = language_problem(engine, "fr-FR")
    assert problem is not None and "only en" in problem and "'fr-FR'" in problem
    assert primary_language("pt_BR") == "pt"


def test_one_sentence_word_for_word_with_times(engine: PocketSphinxEngine,
                                               reading: np.ndarray) -> None:
    s = READING["speech"][2]
    out = engine.transcribe(sentence(reading, 2), final=True)
    assert out.text == s["text"] and [w.w for w in out.words] == s["text"].split()
    speech = (s["end"] - s["start"]) / 16000
    assert out.words[0].start == pytest.approx(0.1, abs=0.1)
    assert out.words[-1].end == pytest.approx(0.1 + speech, abs=0.15)
    assert all(0 <= w.start <= w.end <= out.duration and 0 <= w.p <= 1 for w in out.words)
    assert out.language == "en"


def test_incremental_partials_grow_and_the_final_matches(engine: PocketSphinxEngine,
                                                         reading: np.ndarray) -> None:
    x = sentence(reading, 8)
    utt = engine.begin()
    partials = []
    for i in range(0, x.size, 8000):
        utt.feed(x[i:i + 8000])
        partials.append(utt.partial().text)
    final = utt.finish()
    assert final.text == READING["speech"][8]["text"]
    assert partials[0] != partials[-1] and len(partials[-1].split()) >= 5
    assert all(len(p.split()) <= len(final.text.split()) + 2 for p in partials)
    with pytest.raises(RuntimeError, match="finished"):
        utt.feed(x[:100])
    utt.close()  # idempotent


def test_many_utterances_at_once_each_get_their_own_decoder(engine: PocketSphinxEngine,
                                                            reading: np.ndarray) -> None:
    a, b = engine.begin(), engine.begin()
    xa, xb = sentence(reading, 5), sentence(reading, 6)
    for i in range(0, max(xa.size, xb.size), 4000):
        a.feed(xa[i:i + 4000])
        b.feed(xb[i:i + 4000])
    assert (a.finish().text, b.finish().text) == (READING["speech"][5]["text"],
                                                 READING["speech"][6]["text"])


def test_a_dead_decoder_process_fails_its_utterance_and_is_restarted(
        engine: PocketSphinxEngine, reading: np.ndarray) -> None:
    utt = engine.begin()
    utt.feed(sentence(reading, 3)[:8000])
    proc = engine._procs[0]
    assert proc is not None
    proc.proc.kill()
    proc.proc.wait()
    with pytest.raises(DecoderDied, match="died"):
        utt.feed(sentence(reading, 3)[8000:])
    utt.close()
    assert engine.transcribe(sentence(reading, 3), final=True).text == \
        READING["speech"][3]["text"]


def test_bad_configuration(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="English only"):
        PocketSphinxEngine(EngineConfig(model="en-us", language="de"))
    with pytest.raises(ConfigError, match="CPU only"):
        PocketSphinxEngine(EngineConfig(model="en-us", device="cuda"))
    with pytest.raises(ConfigError, match="not 'en-us'"):
        PocketSphinxEngine(EngineConfig(model=str(tmp_path / "nope")))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "words.dict").write_text("hello HH AH L OW\n")
    with pytest.raises(ConfigError, match=r"lacks an acoustic model .*; a language model"):
        PocketSphinxEngine(EngineConfig(model=str(tmp_path / "m")))
    with pytest.raises(ConfigError, match="is not one of"):
        load_engine(EngineConfig(model="x"), "nosuchengine")


def test_the_bundled_model_loads_when_a_stream_first_needs_it() -> None:
    import time

    e = PocketSphinxEngine(EngineConfig(model="en-us"))
    try:
        assert e._procs == [None]  # a server whose streams never ask for asr spawns nothing
        e.warm()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (e._procs[0] and e._procs[0].alive):
            time.sleep(0.05)
        first = e._procs[0]
        assert first is not None and first.alive
        e.warm()  # idempotent
        assert e.transcribe(np.zeros(8000, np.float32), final=True).text == ""
        assert e._procs[0] is first
    finally:
        e.close()


LIBRIVOX = json.loads((FIXTURES / "librivox_16k.json").read_text())


def test_two_passes_a_final_decoded_whole_can_differ_from_the_incremental_one() -> None:
    """Human speech (the LibriVox fixture's five clips, one utterance each, on a fresh
    engine): the incremental pass normalises the cepstrum with a running estimate, the
    whole-utterance pass over the whole utterance, and its words are closer to the text;
    the final carries both passes."""
    from earshot.asr.wer import wer

    x, _ = sf.read(FIXTURES / "librivox_16k.wav", dtype="float32")
    clips = [x[s["start"] - 1600: s["end"] + 4800] for s in LIBRIVOX["speech"]]
    e = load_engine(EngineConfig(model="en-us"), "pocketsphinx")
    got = []
    try:
        for clip in clips:
            utt = e.begin()  # type: ignore[attr-defined]
            for i in range(0, clip.size, 8000):
                utt.feed(clip[i:i + 8000])
            got.append((utt.partial().text, utt.finish()))
    finally:
        e.close()  # type: ignore[attr-defined]
    first = [f.first_text or "" for _, f in got]
    whole = [f.text for _, f in got]
    first_wer, whole_wer = wer(LIBRIVOX["text"], first), wer(LIBRIVOX["text"], whole)
    print(f"\nWER first pass {first_wer:.3f} {first}\nWER whole      {whole_wer:.3f} {whole}")
    assert whole_wer < first_wer
    assert any(f.text != interim for interim, f in got)  # a final differs from its interims
    for _, final in got:
        assert final.first_decode is not None and final.first_decode > 0
        assert final.second_decode is not None and final.second_decode > 0
        assert [w.w for w in final.words] == final.text.split()
        assert all(0 <= w.start <= w.end <= final.duration for w in final.words)
    one = load_engine(EngineConfig(model="en-us", two_pass=False), "pocketsphinx")
    try:
        single = one.transcribe(clips[1], final=True)
    finally:
        one.close()  # type: ignore[attr-defined]
    assert single.first_text is None and single.second_decode is None


def test_a_final_whose_audio_was_only_appended_is_decoded_by_the_second_pass(
        engine: PocketSphinxEngine, reading: np.ndarray) -> None:
    """Under load every interim of an utterance may be skipped: the final then appends the
    whole utterance for the second pass, and the first pass heard nothing (found by
    benchmarks/bench_speaking.py at 4 streams: the empty first pass failed the final)."""
    utt = engine.begin()
    utt.append(sentence(reading, 5))
    final = utt.finish()
    assert final.text == READING["speech"][5]["text"]
    assert final.first_text == "" and final.second_decode is not None
    half = sentence(reading, 6)
    utt = engine.begin()
    utt.feed(half[:half.size // 2])
    utt.append(half[half.size // 2:])
    assert utt.finish().text == READING["speech"][6]["text"]


def test_a_speculative_second_pass_gives_the_words_of_the_second_pass() -> None:
    """speculate (the second pass on the utterance's own decoder while the VAD waits)
    decodes each LibriVox clip word for word as the final's second pass does, and
    finish_with then only finishes the first pass. When speech goes on after it, the first
    pass resumes (interims keep the words before the pause) and the final is decoded again,
    whole."""
    x, _ = sf.read(FIXTURES / "librivox_16k.wav", dtype="float32")
    clips = [x[s["start"] - 1600: s["end"] + 4800] for s in LIBRIVOX["speech"]]
    e = load_engine(EngineConfig(model="en-us", workers=2), "pocketsphinx")
    assert isinstance(e, PocketSphinxEngine) and e.speculative
    try:
        for clip in clips[:3]:
            cut = clip.size - 4800  # the first pass has not heard the last 0.3 s
            utts = [e.begin(), e.begin()]
            for i in range(0, cut, 8000):
                for u in utts:
                    u.feed(clip[i:min(i + 8000, cut)])
            whole = utts[0].speculate(clip[cut:])
            assert whole.second_decode is not None and whole.second_decode > 0
            assert whole.first_text is None and whole.duration == clip.size / 16000
            final = utts[0].finish_with(whole)
            utts[1].append(clip[cut:])
            regular = utts[1].finish()
            assert final.text == regular.text and final.words == regular.words
            assert final.first_text == regular.first_text
            assert final.first_decode is not None and final.first_decode > 0
        clip = clips[0]
        half = clip.size // 2
        utt = e.begin()
        utt.feed(clip[:half - 8000])
        early = utt.speculate(clip[half - 8000:half])  # a pause, then speech goes on
        utt.feed(clip[half:half + 8000])
        assert utt.partial().text.startswith(early.text.split()[0])
        utt.append(clip[half + 8000:])
        late = utt.finish()  # decoded again whole: words after the pause too
        assert late.duration == clip.size / 16000 and late.second_decode is not None
        assert late.words[-1].end > half / 16000 + 1.0 and len(late.words) > len(early.words)
        assert late.first_text is not None and late.first_text.startswith(early.text.split()[0])
    finally:
        e.close()
