"""The scale-out cores without sockets: dedup of replayed events, the lease plan, keys,
checkpoints of the pipeline and the VAD."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from earshot.cluster.bus.keys import Keys, parse_bus_url
from earshot.cluster.consumer import decode_audio, plan
from earshot.cluster.dedup import Deduper
from earshot.errors import ConfigError
from earshot.processors.base import StreamInfo
from earshot.processors.builtin.vad import Vad
from earshot.processors.runner import StreamPipeline
from helpers import FIXTURES


def _utterance(start: float, end: float) -> list[dict]:
    return [{"type": "speech_start", "t": start},
            {"type": "speech_end", "t": end, "start": start, "end": end}]


def test_a_replayed_utterance_is_dropped_whole() -> None:
    d = Deduper()
    assert d.filter(_utterance(0.8, 3.39)) == _utterance(0.8, 3.39)
    # the next worker replays from before it: the VAD finds it again, a window off
    assert d.filter(_utterance(0.78, 3.42)) == []
    assert d.filter(_utterance(4.39, 6.03)) == _utterance(4.39, 6.03)


def test_an_utterance_in_progress_gets_exactly_one_end() -> None:
    d = Deduper()
    assert d.filter([{"type": "speech_start", "t": 0.8}])
    state = json.loads(json.dumps(d.state()))  # what goes to Redis and back
    d2 = Deduper(state)  # the worker taking over
    again = _utterance(0.83, 3.39)
    assert d2.filter(again) == [again[1]]
    assert d2.filter([again[1]]) == []


def test_finals_and_timed_events_are_delivered_once() -> None:
    d = Deduper()
    f1 = {"type": "transcript", "final": True, "t": 3.4, "start": 0.8, "end": 3.4}
    interim = {"type": "transcript", "final": False, "t": 3.0, "start": 0.8, "end": 3.0}
    assert d.admit(f1) and not d.admit(dict(f1)) and not d.admit(interim)
    levels = [{"type": "level", "t": i * 0.05} for i in range(10)]
    assert len(d.filter(levels)) == 10
    assert d.filter(levels[5:]) == []
    assert d.filter([{"type": "level", "t": 0.5}]) == [{"type": "level", "t": 0.5}]
    for e in ({"type": "lag", "t": 0.1}, {"type": "error", "t": 0.0}, {"type": "x"}):
        assert d.admit(e) and d.admit(e)


def test_lease_plan_shares_partitions_fairly_and_takes_dead_workers_leases() -> None:
    free: dict[int, str | None] = dict.fromkeys(range(16))
    take, give = plan(16, free, ["a"], "a")
    assert take == list(range(16)) and give == []
    all_a: dict[int, str | None] = dict.fromkeys(range(16), "a")
    # b joins: a gives back 8 (the least busy), b can take what is free
    take, give = plan(16, all_a, ["a", "b"], "a", busy={0: 2, 15: 1})
    assert take == [] and len(give) == 8 and 0 not in give and 15 not in give
    half = {p: ("a" if p < 8 else None) for p in range(16)}
    take, give = plan(16, half, ["a", "b"], "b")
    assert take == list(range(8, 16)) and give == []
    # c holds 6 and died: its partitions are free for the living
    mixed = {p: ("a" if p < 5 else "b" if p < 10 else "c") for p in range(16)}
    take, give = plan(16, mixed, ["a", "b"], "a")
    assert take == [10, 11, 12] and give == []


def test_keys_and_bus_urls() -> None:
    url, keys = parse_bus_url("redis://h:1/2?prefix=x:&partitions=4")
    assert url == "redis://h:1/2" and keys == Keys("x:", 4)
    assert keys.audio_of("abc") == f"x:audio:{keys.partition('abc')}"
    assert 0 <= keys.partition("abc") < 4
    for bad in ("http://h:1", "redis://h:1/0?partitions=0", "redis://h/0?partitions=x"):
        with pytest.raises(ConfigError):
            parse_bus_url(bad)


def test_audio_entries_decode_to_the_archived_samples() -> None:
    x = (np.arange(-6, 6, dtype=np.int16) * 1000).reshape(-1, 2)
    got = decode_audio({b"channels": b"2", b"format": b"s16", b"data": x.tobytes()})
    assert got.shape == (6, 2) and np.array_equal(np.round(got * 32768).astype(np.int16), x)
    f = np.linspace(-1, 1, 8, dtype=np.float32)
    assert np.array_equal(decode_audio({b"channels": b"1", b"format": b"f32",
                                        b"data": f.tobytes()})[:, 0], f)


async def test_vad_checkpoint_stays_before_an_utterance_in_progress() -> None:
    """Entries are acknowledged up to the checkpoint only: a fresh VAD started there finds
    the utterance in progress again, whole."""
    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="float32", always_2d=True)
    events: list[dict] = []
    pipe = StreamPipeline(StreamInfo("s", rate, 1), [Vad()], events.extend)
    cut = int(2.0 * rate)  # inside the first phrase (0.80 - 3.39 s)
    for i in range(0, cut, 1600):
        pipe.feed(x[i:min(i + 1600, cut)], i)
        await pipe.idle()
        assert pipe.checkpoint() <= pipe.offset
    assert [e["type"] for e in events] == ["speech_start"]
    safe = pipe.checkpoint()
    assert safe <= int(0.8 * rate) - int(0.5 * rate), safe / rate
    await pipe.close(0.0)
    # a new worker from the checkpoint finds the whole phrase
    again: list[dict] = []
    pipe2 = StreamPipeline(StreamInfo("s", rate, 1), [Vad()], again.extend, start_offset=safe)
    for i in range(safe, int(4.2 * rate), 1600):  # to the silence before phrase 2
        pipe2.feed(x[i:i + 1600], i)
        await pipe2.idle()
    ends = [e for e in again if e["type"] == "speech_end"]
    assert abs(ends[0]["start"] - events[0]["t"]) <= 0.05 and abs(ends[0]["end"] - 3.39) <= 0.1
    # after the phrase, in silence, the checkpoint moves on to its end
    assert pipe2.checkpoint() >= round(ends[0]["end"] * rate)
    await pipe2.close(None)
