"""The call recording (mix and tracks on the room clock) and the transcript by speaker."""

from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from earshot.asr.export import to_json, to_srt, to_txt, to_vtt
from earshot.rooms.errors import RoomError
from earshot.rooms.recording import (
    Track,
    call_frames,
    call_transcript,
    iter_call,
    mix_call,
    participants,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RATE = 48000


def archive(x16: np.ndarray, gain: float = 0.5) -> np.ndarray:
    """A 48 kHz int16 archive made from a 16 kHz fixture (what the server would hold)."""
    y = soxr.resample(x16, 16000, RATE) * gain
    return np.round(np.clip(y, -1, 1) * 32767).astype(np.int16)


@pytest.fixture(scope="module")
def archives(speech, reading):
    ann = archive(speech)
    bob = archive(reading[:12 * 16000], 0.45)
    cy = archive(np.concatenate([speech[::-1], speech]), 0.4)  # a third, different voice
    return {"ann": ann, "bob": bob, "cy": cy}


def call_of(archives):
    """ann opens the room; bob joins at 1.37 s with a stream already 0.5 s old and leaves
    after 8 s; cy joins at 2.5 s."""
    return [
        Track("ann", RATE, 0.0, samples=archives["ann"], stream="s-ann"),
        Track("bob", RATE, 1.37, offset=RATE // 2, frames=8 * RATE, samples=archives["bob"],
              stream="s-bob"),
        Track("cy", RATE, 2.5, samples=archives["cy"], stream="s-cy"),
    ]


def aligned_sum(tracks, n):
    """The reference: each archive's stretch placed at its join, summed as integers."""
    total = np.zeros(n, np.int64)
    chans = {}
    for t in tracks:
        s = round(t.joined_at * RATE)
        part = t.samples[t.offset:t.offset + t.available()].astype(np.int64)
        total[s:s + len(part)] += part
        ch = chans.setdefault(t.participant, np.zeros(n, np.int64))
        ch[s:s + len(part)] += part
    return total, chans


def test_the_recording_is_the_aligned_sum_within_one_lsb(archives):
    tracks = call_of(archives)
    mix = mix_call(tracks, RATE)
    n = call_frames(tracks, RATE)
    assert len(mix) == n == round(2.5 * RATE) + len(archives["cy"])
    want, _ = aligned_sum(tracks, n)
    assert np.abs(want).max() < 32768  # the sum stays inside full scale here
    # as float: exact (the archives are 16-bit, the sum float64, rounded once)
    assert np.array_equal(mix * np.float32(32768), want.astype(np.float32))
    # written as a 16-bit WAV and read back: within 1 LSB
    buf = io.BytesIO()
    sf.write(buf, mix, RATE, subtype="PCM_16", format="WAV")
    buf.seek(0)
    pcm, rate = sf.read(buf, dtype="int16")
    assert rate == RATE and len(pcm) == n
    assert np.abs(pcm.astype(np.int64) - want).max() <= 1
    # silence before anyone but ann had joined, and ann alone there
    ann = archives["ann"][:round(1.37 * RATE)]
    assert np.array_equal(np.round(mix[:len(ann)] * 32768).astype(np.int16), ann)


def test_tracks_give_one_channel_per_participant(archives):
    tracks = call_of(archives)
    multi = mix_call(tracks, RATE, tracks_mode=True)
    n = call_frames(tracks, RATE)
    assert multi.shape == (n, 3) and participants(tracks) == ["ann", "bob", "cy"]
    _, chans = aligned_sum(tracks, n)
    for i, name in enumerate(["ann", "bob", "cy"]):
        assert np.array_equal(multi[:, i] * np.float32(32768), chans[name].astype(np.float32))
    assert not multi[:round(1.37 * RATE), 1].any()  # bob had not joined
    assert not multi[round(1.37 * RATE) + 8 * RATE:, 1].any()  # bob had left
    assert not multi[:round(2.5 * RATE), 2].any()
    assert np.array_equal(multi.astype(np.float64).sum(axis=1).astype(np.float32),
                          mix_call(tracks, RATE))


def test_blocks_from_readers_equal_the_whole(archives):
    tracks = call_of(archives)
    reads = []

    def reader(name):
        def read(start, count):
            reads.append((name, start, count))
            return archives[name][start:start + count]
        return read

    lazy = [Track(t.participant, t.rate, t.joined_at, t.offset,
                  t.frames if t.frames is not None else len(archives[t.participant]) - t.offset,
                  read=reader(t.participant), stream=t.stream) for t in tracks]
    blocks = list(iter_call(lazy, RATE, block=0.25))
    assert all(len(b) == RATE // 4 for b in blocks[:-1])
    assert np.array_equal(np.concatenate(blocks), mix_call(tracks, RATE))
    assert ("bob", RATE // 2, RATE // 4 - (round(1.37 * RATE) % (RATE // 4))) in reads
    part = mix_call(tracks, RATE, start=1.0, end=3.0)
    assert np.array_equal(part, mix_call(tracks, RATE)[RATE:3 * RATE])


def test_a_track_at_another_rate_is_resampled_in_place(speech):
    x = np.round(speech * 0.5 * 32767).astype(np.int16)  # a 16 kHz participant
    tracks = [Track("ann", 16000, 0.75, samples=x, stream="a")]
    mix = mix_call(tracks, RATE)
    start = round(0.75 * RATE)
    assert len(mix) == start + len(x) * 3 and not mix[:start].any()
    want = soxr.resample(x.astype(np.float32) / 32768, 16000, RATE, quality="HQ")
    got = mix[start:]
    n = min(len(got), len(want))
    err = np.max(np.abs(got[:n] - want[:n]))
    assert err < 1e-4  # streaming HQ in 32k-frame reads: the same as resampling at once


def test_a_participant_who_left_and_came_back_keeps_one_channel(archives):
    a = archives["ann"]
    tracks = [
        Track("ann", RATE, 0.0, frames=RATE, samples=a, stream="s1"),
        Track("bob", RATE, 0.5, samples=archives["bob"][:2 * RATE], stream="s2"),
        Track("ann", RATE, 2.0, samples=a[RATE:2 * RATE], stream="s3"),  # a new stream
    ]
    multi = mix_call(tracks, RATE, tracks_mode=True)
    assert multi.shape[1] == 2
    ann = multi[:, 0] * 32768
    assert np.array_equal(ann[:RATE], a[:RATE].astype(np.float32))
    assert not ann[RATE:2 * RATE].any()
    assert np.array_equal(ann[2 * RATE:3 * RATE], a[RATE:2 * RATE].astype(np.float32))


def test_the_limiter_when_asked():
    loud = np.full(RATE, 0.6, np.float32)
    tracks = [Track("a", RATE, 0.0, samples=loud), Track("b", RATE, 0.0, samples=loud)]
    assert np.allclose(mix_call(tracks, RATE), 1.2)  # no limiter: the exact sum
    limited = mix_call(tracks, RATE, knee=0.75)
    assert np.allclose(limited, 0.75 + 0.25 * np.tanh(0.45 / 0.25)) and limited.max() < 1


def truth(name: str) -> list[dict]:
    """The fixtures' true sentences as the finals a recogniser would give."""
    d = json.loads((FIXTURES / name).read_text())
    finals = []
    for i, s in enumerate(d["speech"]):
        words = s["text"].split()
        span = (s["end_s"] - s["start_s"]) / len(words)
        finals.append({"segment": i, "start": s["start_s"], "end": s["end_s"],
                       "text": s["text"],
                       "words": [{"w": w, "start": s["start_s"] + k * span,
                                  "end": s["start_s"] + (k + 1) * span, "p": 0.9}
                                 for k, w in enumerate(words)]})
    return finals


def test_the_transcript_by_speaker():
    tracks = [
        Track("Ann", 16000, 0.0, samples=np.zeros(16000 * 10, np.int16), stream="s-ann"),
        # Bob's stream was 3 s old when he joined at 2.0 s: his 3.775 s is the room's 2.775 s
        Track("Bob <b>", 16000, 2.0, offset=3 * 16000, frames=16000 * 20,
              samples=np.zeros(16000 * 30, np.int16), stream="s-bob"),
    ]
    ann, bob = truth("speech_16k.json"), truth("reading_16k.json")
    out = call_transcript(tracks, {"s-ann": ann, "s-bob": bob})
    # bob's first sentence (0.8-2.78 s of his stream) was said before he joined: left out;
    # his last ones, after he left (at 23 s of his stream): left out
    bob_kept = [f for f in bob if f["end"] > 3.0 and f["start"] < 23.0]
    assert len(out) == len(ann) + len(bob_kept)
    assert [f["segment"] for f in out] == list(range(len(out)))
    assert [f["start"] for f in out] == sorted(f["start"] for f in out)
    by = {f["text"]: f for f in out}
    for f in ann:
        got = by[f["text"]]
        assert got["speaker"] == "Ann" and got["stream"] == "s-ann"
        assert got["start"] == round(f["start"], 6) and got["end"] == round(f["end"], 6)
    for f in bob_kept:
        got = by[f["text"]]
        assert got["speaker"] == "Bob <b>"
        assert got["start"] == pytest.approx(max(f["start"], 3.0) - 1.0, abs=1e-6)
        assert got["words"][-1]["end"] == pytest.approx(f["words"][-1]["end"] - 1.0, abs=1e-6)
    first_bob = next(f for f in out if f["speaker"] != "Ann")
    assert first_bob["text"] == "please send me the report by friday"
    assert first_bob["start"] == pytest.approx(2.77525)  # interleaved with ann's
    speakers = [f["speaker"] for f in out]
    assert speakers[:4] == ["Ann", "Bob <b>", "Ann", "Bob <b>"]

    # every renderer names the speaker of every cue
    rows = json.loads(to_json(out))
    assert [r["speaker"] for r in rows] == speakers
    srt = to_srt(out)
    lines = [b.split("\n")[2] for b in srt.strip().split("\n\n")]
    assert lines == [f"{f['speaker']}: {f['text']}" for f in out]
    vtt = to_vtt(out)
    cues = re.findall(r"^<v ([^>]*)>(.*)$", vtt, re.M)
    assert [(html.unescape(w), html.unescape(t)) for w, t in cues] == [
        (f["speaker"], f["text"]) for f in out]
    assert "<v Bob &lt;b&gt;>" in vtt
    assert to_txt(out).splitlines() == [f"{f['speaker']}: {f['text']}" for f in out]


def test_finals_without_a_speaker_render_as_before():
    f = [{"segment": 0, "start": 1.0, "end": 2.0, "text": "hello", "words": []}]
    assert "speaker" not in json.loads(to_json(f))[0]
    assert to_srt(f) == "1\n00:00:01,000 --> 00:00:02,000\nhello\n\n"
    assert to_vtt(f) == "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nhello\n"
    assert to_txt(f) == "hello\n"


@pytest.mark.parametrize(("make", "code"), [
    (lambda: Track("a", RATE, 0.0), "bad_stream"),
    (lambda: Track("a", RATE, 0.0, samples=np.zeros(4), read=lambda s, n: np.zeros(n)),
     "bad_stream"),
    (lambda: Track("a", 0, 0.0, samples=np.zeros(4)), "bad_stream"),
    (lambda: Track("a", RATE, -1.0, samples=np.zeros(4)), "bad_time"),
    (lambda: Track("a", RATE, float("nan"), samples=np.zeros(4)), "bad_time"),
    (lambda: Track("a", RATE, 0.0, offset=-3, samples=np.zeros(4)), "bad_stream"),
    (lambda: call_frames([Track("a", RATE, 0.0, read=lambda s, n: np.zeros(n))]),
     "bad_stream"),
    (lambda: mix_call([Track("a", RATE, 0.0, samples=np.zeros(4, np.int32))]), "bad_audio"),
    (lambda: mix_call([], RATE, knee=2.0), "bad_audio"),
    (lambda: list(iter_call([], RATE, block=0)), "bad_time"),
    (lambda: call_transcript([], {"nobody": []}), "bad_stream"),
    (lambda: call_transcript([Track("a", RATE, 0.0, samples=np.zeros(4), stream="s")],
                             {"s": [{"start": 0.0, "text": "x"}]}), "bad_transcript"),
    (lambda: call_transcript([Track("a", RATE, 0.0, samples=np.zeros(4), stream="s")],
                             {"s": [{"start": 0.0, "end": float("inf"), "text": "x"}]}),
     "bad_transcript"),
])
def test_bad_input_gets_a_clear_error(make, code):
    with pytest.raises(RoomError) as err:
        make()
    assert err.value.code == code


def test_an_empty_call():
    assert mix_call([], RATE).shape == (0,)
    assert call_frames([]) == 0 and call_transcript([], {}) == []
