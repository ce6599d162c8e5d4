"""The event rules and the router, without sockets: a real store, archive and bus."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from earshot.audio import StreamSpec
from earshot.cluster.bus import MemoryBus
from earshot.server.events import EventRouter, Work, segment_span, storage_work
from earshot.server.metrics import Metrics
from earshot.storage.archive import Archive
from earshot.storage.metadata import SqliteStore, StreamRecord
from helpers import RecordingOwner

RATE = 16000


@pytest.mark.parametrize(("event", "work"), [
    ({"type": "transcript", "final": True, "text": "x"}, Work.STORE_FINAL),
    ({"type": "transcript", "final": False, "text": "x"}, None),
    ({"type": "speech_end", "start": 1.0, "end": 2.0}, Work.CUT_SEGMENT),
    ({"type": "speech_end", "t": 2.0}, None),  # no span: nothing to cut
    ({"type": "level", "rms": 0.1}, None),
    ({"type": "segment", "start": 1.0, "end": 2.0}, None),
])
def test_storage_work_is_the_one_rule(event: dict[str, Any], work: Work | None) -> None:
    assert storage_work(event) is work


@pytest.mark.parametrize(("start", "end"), [(1.0, 1.0), (2.0, 1.0), (0.0, float("inf")),
                                            (float("nan"), 1.0)])
def test_segment_spans_must_be_finite_and_not_empty(start: float, end: float) -> None:
    with pytest.raises(ValueError):
        segment_span({"start": start, "end": end}, RATE)


@pytest.fixture
def world(tmp_path: Path) -> Any:
    store = SqliteStore(tmp_path / "earshot.db")
    rec = StreamRecord(id="s1", name=None, created=0.0, format="s16", archive_format="wav",
                       rate=RATE, channels=1, path="streams/s1.wav", token_hash="")
    store.create(rec)
    (tmp_path / "streams").mkdir()
    archive = Archive.create(tmp_path / rec.path, StreamSpec("s16", RATE, 1), "wav")
    x = np.arange(3 * RATE, dtype=np.int64).astype("<i2")
    archive.append(x.tobytes())
    archive.sync()
    bus = MemoryBus()
    owner = RecordingOwner()
    router = EventRouter(store, bus, Metrics(), tmp_path, lambda sid: owner)
    yield store, rec, tmp_path / rec.path, bus, owner, router, x
    archive.close()
    store.close()


async def test_emit_posts_publishes_stores_and_cuts(world: Any, tmp_path: Path) -> None:
    store, rec, path, bus, owner, router, x = world
    sub = bus.subscribe("s1")
    final = {"type": "transcript", "final": True, "text": "hi", "start": 0.5, "end": 1.0,
             "segment": 0}
    end = {"type": "speech_end", "t": 2.0, "start": 0.5, "end": 1.5}
    router.emit(rec, path, [final, end])
    assert [m["type"] for m in owner.posted] == ["transcript", "speech_end", "segment"]
    seg = owner.posted[-1]
    assert (seg["start"], seg["end"]) == (0.5, 1.5)
    cut, rate = sf.read(tmp_path / "streams/s1.segments/0000.wav", dtype="int16")
    assert rate == RATE and np.array_equal(cut, x[8000:24000])
    assert store.transcripts("s1")[0]["text"] == "hi"
    assert [(await sub.get())["type"] for _ in range(3)] == ["transcript", "speech_end",  # type: ignore[index]
                                                             "segment"]


def test_a_malformed_final_is_logged_not_raised(world: Any,
                                                caplog: pytest.LogCaptureFixture) -> None:
    store, rec, path, _, owner, router, _ = world
    with caplog.at_level(logging.WARNING, "earshot.router"):
        router.emit(rec, path, [{"type": "transcript", "final": True, "text": "x"}])
    assert "malformed final transcript" in caplog.text
    assert store.transcripts("s1") == [] and owner.posted[0]["text"] == "x"


def test_a_bad_span_is_a_segment_failed_error(world: Any) -> None:
    _, rec, path, _, owner, router, _ = world
    router.emit(rec, path, [{"type": "speech_end", "t": 1, "start": 1.0, "end": 1.0}])
    assert owner.posted[-1]["type"] == "error"
    assert owner.posted[-1]["code"] == "segment_failed"


async def test_a_replay_reuses_segments_the_stream_has(world: Any) -> None:
    store, rec, path, _, owner, router, _ = world
    end = {"type": "speech_end", "t": 2.0, "start": 0.5, "end": 1.5}
    router.emit(rec, path, [dict(end)])
    first = owner.posted[-1]
    segs = await router.replayed(rec, path, [dict(end), {"type": "speech_end", "t": 3.0,
                                                        "start": 2.0, "end": 2.5}])
    assert segs[0]["segment"] == first["segment"] and segs[0]["replay"] is True
    assert segs[1]["segment"] == first["segment"] + 1  # a new one is cut
    assert len(store.segments("s1")) == 2


async def test_a_job_from_the_bus_cuts_once_in_the_cluster(world: Any) -> None:
    store, _, _, _, owner, router, _ = world
    end = {"type": "speech_end", "t": 2.0, "start": 0.5, "end": 1.5, "processor": "vad"}
    await router.job("s1", dict(end))
    await router.job("s1", dict(end))  # the same event again (another gateway's job)
    assert len(store.segments("s1")) == 1
    assert [m["type"] for m in owner.posted] == ["segment"]


async def test_a_segment_of_an_archive_elsewhere_is_cut_from_its_parts(world: Any,
                                                                       tmp_path: Path) -> None:
    """With an archive store, a job for a stream whose archive is not on this disk cuts the
    segment from the parts the store finds (here: the archive moved to another directory,
    as if on another gateway or in the bucket)."""
    from earshot.storage import parts as P

    _, _, path, _, owner, router, x = world
    elsewhere = tmp_path / "elsewhere.wav"
    path.rename(elsewhere)
    router.parts_of = lambda r: P.load(elsewhere)
    end = {"type": "speech_end", "t": 2.0, "start": 1.0, "end": 2.5, "processor": "vad"}
    await router.job("s1", dict(end))
    assert owner.posted[-1]["type"] == "segment"
    cut, _ = sf.read(tmp_path / "streams/s1.segments/0000.wav", dtype="int16")
    assert np.array_equal(cut, x[16000:40000])
