"""The gateway's cores without sockets: the stream writer driven by a fake clock, the event
router with the in-memory bus and a real store and archive."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from earshot.audio import StreamSpec
from earshot.cluster.bus import MemoryBus
from earshot.server.events import EventRouter
from earshot.server.metrics import Metrics
from earshot.server.streams.writer import StreamWriter
from earshot.storage.archive import Archive
from earshot.storage.metadata import SqliteStore, StreamRecord

RATE = 16000


class FakeOwner:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def post(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def post_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def kick(self, code: str, message: str) -> None:
        self.sent.append({"type": "kick", "code": code})


def _writer(tmp_path: Path, fmt: str = "s16") -> StreamWriter:
    spec = StreamSpec(fmt, RATE, 1)  # type: ignore[arg-type]
    archive = Archive.create(tmp_path / "s.wav", spec, "wav")
    return StreamWriter(archive, ack_interval=0.1, header_interval=1.0, now=0.0)


def frames_s16(n: int, start: int = 0) -> bytes:
    return (np.arange(start, start + n) % 30000).astype("<i2").tobytes()


def test_a_flush_is_due_after_an_ack_interval_of_audio(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    due = [w.add(frames_s16(320, i * 320), 320, now=i * 0.001) for i in range(5)]
    assert due == [False, False, False, False, True]  # 5 x 20 ms = 100 ms
    assert w.offset == 1600 and w.archive.frames == 0 and w.take_ack() is None
    written = w.write()
    assert written is not None and (written.first, written.frames) == (0, 1600)
    assert w.take_ack() == 1600 and w.take_ack() is None  # told once
    assert w.write() is None


def test_a_batch_holds_each_message_as_it_was_when_added(tmp_path: Path) -> None:
    """The batch keeps the messages (joined once, when written): a caller that reuses its
    buffer after ``add`` must not change what is archived, and ``last`` is the newest."""
    w = _writer(tmp_path)
    buf = bytearray(frames_s16(320))
    w.add(buf, 320, now=0.0)
    assert w.last == frames_s16(320)
    buf[:] = frames_s16(320, 320)  # the caller's buffer, reused for the next message
    w.add(memoryview(buf), 320, now=0.02)
    buf[:] = bytes(640)  # and cleared
    assert w.last == frames_s16(320, 320)
    written = w.write()
    assert written is not None and written.data == frames_s16(640)
    w.archive.sync()
    x, _ = sf.read(tmp_path / "s.wav", dtype="int16")
    assert np.array_equal(x, np.frombuffer(frames_s16(640), "<i2"))


def test_a_trickling_client_is_flushed_by_wall_time(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    assert not w.add(frames_s16(160), 160, now=10.0)
    assert not w.flush_due(10.05)
    assert w.flush_due(10.11)
    w.write()
    assert not w.flush_due(10.2)  # nothing pending


def test_header_syncs_follow_the_clock_and_the_archive_reads_back(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.add(frames_s16(1600), 1600, now=0.0)
    w.write()
    assert not w.sync_header_if_due(0.5)
    assert sf.info(str(tmp_path / "s.wav")).frames == 0  # the header still says 0
    assert w.sync_header_if_due(1.0)
    x, sr = sf.read(tmp_path / "s.wav", dtype="int16")
    assert sr == RATE and np.array_equal(x, np.frombuffer(frames_s16(1600), "<i2"))


def test_fixed_samples_are_warned_about_once(tmp_path: Path) -> None:
    w = _writer(tmp_path, "f32")
    bad = np.array([0.5, np.nan, 2.0, -3.0], np.float32).tobytes()
    w.add(bad, 4, now=0.0)
    w.write()
    warnings = w.warnings()
    assert [(x["code"], x["count"]) for x in warnings] == [("non_finite", 1), ("clipped", 2)]
    w.add(bad, 4, now=0.0)
    w.write()
    assert w.warnings() == [] and w.fixed == {"non_finite": 2, "clipped": 4}


def test_trim_tail_cuts_only_an_encoder_s_padding(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.add(frames_s16(4000), 4000, now=0.0)
    w.write()
    assert w.trim_tail(3900, limit=RATE // 5) == 0 and w.archive.frames == 3900
    assert w.trim_tail(100, limit=RATE // 5) == 3800 and w.archive.frames == 3900


def _record(sid: str = "abcdef12") -> StreamRecord:
    return StreamRecord(id=sid, name=None, created=0.0, format="s16", archive_format="wav",
                        rate=RATE, channels=1, path=f"streams/{sid}.wav", token_hash="x")


async def test_router_delivers_cuts_segments_and_stores_finals(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    rec = _record()
    store.create(rec)
    (tmp_path / "streams").mkdir()
    x = (np.sin(np.arange(RATE * 2) / 10) * 10000).astype(np.int16)
    sf.write(tmp_path / rec.path, x, RATE, subtype="PCM_16")
    bus = MemoryBus()
    sub = bus.subscribe("*")
    owner = FakeOwner()
    router = EventRouter(store, bus, Metrics(), tmp_path,
                         lambda sid: owner if sid == rec.id else None)
    router.emit(rec, tmp_path / rec.path, [
        {"type": "speech_end", "t": 1.5, "start": 0.5, "end": 1.5},
        {"type": "transcript", "final": True, "segment": 0, "start": 0.5, "end": 1.5,
         "text": "hello", "t": 1.5},
        {"type": "lag", "t": 1.0, "lag": 2.0, "processor": "vad"},
    ])
    kinds = [m["type"] for m in owner.sent]
    assert kinds == ["speech_end", "segment", "transcript", "lag"]
    seg = owner.sent[1]
    assert (seg["start_frame"], seg["end_frame"], seg["segment"]) == (8000, 24000, 0)
    cut, _ = sf.read(tmp_path / store.segments(rec.id)[0].path, dtype="int16")
    assert np.array_equal(cut, x[8000:24000])
    assert store.transcripts(rec.id)[0]["text"] == "hello"
    got = []
    while sub._items:
        got.append((await sub.get())["type"])  # type: ignore[index]
    assert got == ["speech_end", "segment", "transcript", "lag"]
    # events for a stream not held here: subscribers only, through from_worker
    other = _record("bbbbbb22")
    store.create(other)
    assert router.from_worker(other.id, [{"type": "x", "t": 0.1}], None, None) is None
    assert router.from_worker("nosuch99", [{"type": "x"}], None, None) == (
        "unknown_stream", "no stream 'nosuch99'")
    assert len(owner.sent) == 4
    await asyncio.sleep(0)
    store.close()


async def test_finals_from_the_bus_are_stored_by_the_gateway_holding_the_stream(
        tmp_path: Path) -> None:
    """A worker's final reaches the sender through the bus: it is in the store before the
    sender's `stopped` (the job on the bus only repeats it, an upsert by segment)."""
    store = SqliteStore(tmp_path / "db")
    rec = _record()
    store.create(rec)
    owner = FakeOwner()
    router = EventRouter(store, MemoryBus(), Metrics(), tmp_path,
                         lambda sid: owner if sid == rec.id else None)
    final = {"type": "transcript", "final": True, "segment": 3, "start": 0.5, "end": 1.5,
             "text": "hello there", "t": 1.5, "stream": rec.id}
    router.from_bus(rec.id, [{**final, "final": False, "text": "hello"}, final])
    assert [m["text"] for m in owner.sent] == ["hello", "hello there"]
    assert [(t["segment"], t["text"]) for t in store.transcripts(rec.id)] == [(3, "hello there")]
    await router.job(rec.id, dict(final))  # the fallback job: still one row
    assert len(store.transcripts(rec.id)) == 1
    router.from_bus("bbbbbb22", [dict(final, stream="bbbbbb22")])  # not held here: no-op
    assert store.transcripts("bbbbbb22") == []
    store.close()
