"""The spool's core (earshot.client.spool), directly: segments, index, acks, limits, locks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import earshot.client.spool as spool_mod
from earshot.client.spool import Spool, SpoolError, SpoolFull

RATE = 1000  # 1 kHz s16 mono: 2 bytes a frame, 10 s segments = 10000 frames = 20 kB


def frames(start: int, n: int) -> bytes:
    return (np.arange(start, start + n) % 30000).astype("<i2").tobytes()


def make(path: Path, **kw: object) -> Spool:
    return Spool(path, segment_seconds=1.0, **kw)  # type: ignore[arg-type]


def test_appends_roll_into_segments_and_read_back_exactly(tmp_path: Path) -> None:
    sp = make(tmp_path)
    e = sp.create(format="s16", rate=RATE, channels=1, name="pi", processors=["vad"])
    for i in range(0, 3500, 250):
        sp.append(e, frames(i, 250))
    assert e.written == 3500
    assert [s for s, _ in e.segments] == [0, 1000, 2000, 3000]
    files = sorted(p.name for p in e.path.glob("*.pcm"))
    assert files == ["000000000000.pcm", "000000001000.pcm", "000000002000.pcm",
                     "000000003000.pcm"]
    got = b""
    pos = 0
    while chunk := e.read(pos, 700):  # never crosses a segment
        got += chunk
        pos += len(chunk) // 2
    assert got == frames(0, 3500)
    assert e.read(3500, 10) == b""
    meta = json.loads((e.path / "meta.json").read_text())
    assert (meta["name"], meta["processors"], meta["rate"]) == ("pi", ["vad"], RATE)


def test_a_reopened_spool_finds_everything_and_cuts_a_torn_frame(tmp_path: Path) -> None:
    sp = make(tmp_path)
    e = sp.create(format="s16", rate=RATE, channels=1)
    sp.append(e, frames(0, 1500))
    e.set_stream("abc", "tok")
    sp.close()  # the process goes away (as after kill -9: files and index are what is left)
    with open(e.path / "000000001000.pcm", "ab") as f:
        f.write(b"\x01")  # half a frame: a write cut short
    again = make(tmp_path).entries()
    assert len(again) == 1
    r = again[0]
    assert (r.written, r.stream_id, r.resume_token, r.closed) == (1500, "abc", "tok", False)
    assert (r.path / "000000001000.pcm").stat().st_size == 1000  # torn frame gone
    assert r.read(1000, 500) == frames(1000, 500)
    assert r.status()["state"] == "interrupted"  # nobody holds its lock


def test_acks_delete_whole_segments_and_survive_a_restart(tmp_path: Path) -> None:
    sp = make(tmp_path)
    e = sp.create(format="s16", rate=RATE, channels=1)
    sp.append(e, frames(0, 3000))
    e.ack(1999, force=True)
    assert [s for s, _ in e.segments] == [1000, 2000]  # [1000, 2000) still has 1999
    assert e.pending == 1001
    e.ack(2500, force=True)
    assert [s for s, _ in e.segments] == [2000]
    assert sp.bytes_used == 1000 * 2
    sp.close()
    r = make(tmp_path).entries()[0]
    assert (r.acked, r.written, r.pending) == (2500, 3000, 500)
    assert r.read(2500, 500) == frames(2500, 500)


def test_drop_oldest_reports_the_loss_and_starts_a_new_server_stream(tmp_path: Path) -> None:
    sp = make(tmp_path, max_bytes=3 * 1000 * 2)  # room for 3 segments
    e = sp.create(format="s16", rate=RATE, channels=1)
    sp.append(e, frames(0, 1000))
    e.set_stream("s1", "t1")
    e.ack(400, force=True)
    dropped = []
    for i in range(1000, 4500, 500):
        dropped += sp.append(e, frames(i, 500))
    # 4500 frames need 5 segments: the 2 oldest went, the first with 600 unacked frames
    assert [(d.start, d.end) for d in dropped] == [(400, 1000), (1000, 2000)]
    assert sum(d.frames for d in dropped) == 1600
    assert sp.bytes_used <= 3 * 1000 * 2
    assert e.dropped == 1600 and e.meta["gaps"] == [[400, 1000], [1000, 2000]]
    # the audio after the gap is a new stream; the old one is to be stopped as it is
    assert (e.stream_id, e.origin, e.finish) == (None, 2000, [["s1", "t1", 0]])
    assert e.read(2000, 10) == frames(2000, 10)
    assert e.read(1999, 1) == b""
    assert e.status()["dropped_frames"] == 1600
    # s1 turned out to hold 2500 frames (sent before they were dropped from disk): the
    # next stream begins after them, so nothing is delivered twice
    e.finished("s1", 2500)
    assert (e.finish, e.origin, e.acked) == ([], 2500, 2500)
    assert make(tmp_path).entries()[0].origin == 2500  # persisted


def test_when_full_stop_refuses_and_keeps_what_it_has(tmp_path: Path) -> None:
    sp = make(tmp_path, max_bytes=2500 * 2, when_full="stop")
    e = sp.create(format="s16", rate=RATE, channels=1)
    sp.append(e, frames(0, 2000))
    with pytest.raises(SpoolFull, match="capture stopped"):
        sp.append(e, frames(2000, 1000))
    assert e.written == 2000 and e.read(1000, 1000) == frames(1000, 1000)


def test_the_segment_being_written_is_never_dropped(tmp_path: Path) -> None:
    sp = make(tmp_path, max_bytes=500 * 2)
    e = sp.create(format="s16", rate=RATE, channels=1)
    sp.append(e, frames(0, 400))
    with pytest.raises(SpoolFull, match="raise --spool-size"):
        sp.append(e, frames(400, 400))


def test_older_entries_are_dropped_first_and_entries_come_in_order(tmp_path: Path) -> None:
    sp = make(tmp_path, max_bytes=4 * 1000 * 2)
    old = sp.create(format="s16", rate=RATE, channels=1, name="old")
    sp.append(old, frames(0, 2000))
    old.close_capture()
    new = sp.create(format="f32", rate=RATE, channels=2, name="new")
    assert new.number == old.number + 1 and new.frame_bytes == 8
    x = np.zeros((600, 2), np.float32).tobytes()
    dropped = sp.append(new, x)
    assert [d.entry for d in dropped] == [old.id]  # 4000 old bytes + 4800 new > 8000
    assert (dropped[0].start, dropped[0].end) == (0, 1000)
    assert [e.name for e in sp.entries()] == ["old", "new"]
    with pytest.raises(SpoolError, match="PCM"):
        sp.create(format="opus", rate=16000, channels=1)


def test_an_entry_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    a = make(tmp_path)
    e = a.create(format="s16", rate=RATE, channels=1)
    a.append(e, frames(0, 10))
    b = make(tmp_path)
    seen = b.entries()[0]
    assert not seen.try_lock() and seen.locked_elsewhere()
    assert seen.status()["state"] == "capturing"
    e.close_capture()
    assert make(tmp_path).entries()[0].status()["state"] == "delivering"
    a.close()  # lock released (as by the death of the process)
    assert seen.status()["state"] == "ended"
    assert seen.try_lock() and seen.closed


def test_fsync_policy_interval_syncs_at_most_once_a_second(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    calls: list[int] = []
    real = spool_mod.os.fsync
    monkeypatch.setattr(spool_mod.os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    sp = Spool(tmp_path, segment_seconds=100, clock=lambda: now[0])
    e = sp.create(format="s16", rate=RATE, channels=1)
    base = len(calls)
    for _ in range(10):
        sp.append(e, frames(0, 10))
        now[0] += 0.25
    # 10 appends over 2.5 s: synced at t=1.0 and 2.0 (plus the new segment's directory)
    assert len(calls) - base == 3
    calls.clear()
    always = Spool(tmp_path / "b", segment_seconds=100, fsync="always")
    e2 = always.create(format="s16", rate=RATE, channels=1)
    base = len(calls)
    for _ in range(5):
        always.append(e2, frames(0, 10))
    assert len(calls) - base == 5 + 1
    with pytest.raises(SpoolError):
        Spool(tmp_path / "c", when_full="wait")  # type: ignore[arg-type]


def test_delivered_entries_are_removed(tmp_path: Path) -> None:
    sp = make(tmp_path)
    e = sp.create(format="s16", rate=RATE, channels=1)
    sp.append(e, frames(0, 1500))
    e.set_stream("s", "t")
    e.close_capture()
    assert not e.delivered
    e.mark_stopped(1500)
    assert e.delivered and e.pending == 0 and not list(e.path.glob("*.pcm"))
    e.remove()
    assert sp.entries() == [] and list(tmp_path.iterdir()) == []
