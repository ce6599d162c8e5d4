"""The batch path driven directly: no sockets, no hub, a real archive, time passed in."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from earshot.audio import StreamSpec
from earshot.cluster.bus import AudioItem, MemoryBus
from earshot.errors import StorageFull
from earshot.server.metrics import Metrics
from earshot.server.streams.batch import BatchPath
from earshot.server.streams.live import LiveStream
from earshot.server.streams.space import Space
from earshot.storage.archive import Archive
from earshot.storage.metadata import StreamRecord
from helpers import RecordingOwner

RATE = 16000


def make(tmp_path: Path, fmt: str = "s16", *, interval: float = 0.1,
         bus: MemoryBus | None = None,
         quiet: float | None = None) -> tuple[BatchPath, LiveStream, RecordingOwner]:
    bus = bus or MemoryBus()
    path = BatchPath(bus, Metrics(), Space(), ack_interval=interval, header_interval=1.0,
                     quiet_interval=quiet)
    spec = StreamSpec(fmt, RATE, 1)
    archive = Archive.create(tmp_path / "s.wav", spec.pcm, "wav")
    rec = StreamRecord(id="s1", name=None, created=0.0, format=fmt, archive_format="wav",
                       rate=RATE, channels=1, path="s.wav", token_hash="")
    owner = RecordingOwner()
    live = LiveStream(rec, path.writer(archive, spec, 0, now=0.0), False, owner)
    path.attach(live, 0.0)
    return path, live, owner


def pcm(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-20000, 20000, n).astype("<i2")


def test_bytes_become_samples_in_the_archive_and_an_ack(tmp_path: Path) -> None:
    path, live, owner = make(tmp_path)
    x = pcm(RATE)  # 1 s in 50 messages of 20 ms
    for i in range(0, RATE, 320):
        now = i / RATE
        if path.add(live, x[i:i + 320].tobytes(), 320, now):  # 0.1 s pending: flush
            assert live.archive.frames == i + 320 - 1600  # nothing written before
            path.flush(live, now)
    assert owner.acks == list(range(1600, RATE + 1, 1600))  # one ack per 0.1 s batch
    live.archive.close()
    got, rate = sf.read(tmp_path / "s.wav", dtype="int16")
    assert rate == RATE and np.array_equal(got, x)


async def test_a_stream_nobody_receives_is_batched_longest_until_someone_does(
        tmp_path: Path) -> None:
    bus = MemoryBus()
    path, live, owner = make(tmp_path, bus=bus, quiet=0.25)
    x = pcm(3 * RATE)
    sub = None
    for i in range(0, len(x), 320):  # 20 ms messages
        if i == 12800:  # 0.8 s: a PCM listener subscribes
            sub = bus.subscribe(live.id, audio="pcm")
        if i == 31680:  # after the batch ending here was written: it leaves
            assert sub is not None
            bus.unsubscribe(sub)
        if path.add(live, x[i:i + 320].tobytes(), 320, now=i / RATE):
            path.flush(live, now=i / RATE)
    # the first batch is the cadence's (0.1 s: nothing is known yet); nobody receives the
    # stream, so the next are the longest (0.25 s: 4000 frames, in whole messages: 4160);
    # the batch under way when the listener came keeps its length, the next ones are
    # short; the one under way when it left is short, the next ones long again
    assert owner.acks == [1600, 5760, 9920, 14080, *range(15680, 31681, 1600), 33280,
                          37440, 41600, 45760]
    assert sub is not None
    got = [item async for item in sub]
    assert [(a.offset, len(a.samples)) for a in got] == [  # type: ignore[union-attr]
        (9920, 4160), *((f, 1600) for f in range(14080, 31680, 1600))]
    live.archive.close()
    assert np.array_equal(sf.read(tmp_path / "s.wav", dtype="int16")[0], x[:45760])


def test_the_cadence_never_shortens_a_quiet_streams_batches(tmp_path: Path) -> None:
    path, live, _ = make(tmp_path, quiet=0.25)
    path.add(live, pcm(1600).tobytes(), 1600, now=0.0)
    path.flush(live, now=0.1)
    assert live.quiet and live.writer.ack_interval == 0.25
    path.set_interval(0.15, [live])  # the loop got busy: batches stretch, a quiet one stays
    assert live.writer.ack_interval == 0.25
    path.set_interval(0.5, [live])  # (--ack-interval above --ack-interval-max: fixed)
    assert live.writer.ack_interval == 0.5


def test_nothing_new_is_not_acknowledged_twice(tmp_path: Path) -> None:
    path, live, owner = make(tmp_path)
    path.add(live, pcm(320).tobytes(), 320, now=0.0)
    assert path.flush(live, now=0.01) == 320
    assert path.flush(live, now=0.02) is None
    assert owner.acks == [320]


def test_a_trickling_stream_is_flushed_by_its_deadline(tmp_path: Path) -> None:
    path, live, owner = make(tmp_path)
    current = {live.id: live}
    assert path.add(live, pcm(160).tobytes(), 160, now=5.0) is False  # 10 ms: not by size
    assert path.due(5.05, current) == []
    assert path.due(5.1, current) == [live]  # its oldest audio waited one interval
    # (5.1 - 5.0 < 0.1 in floating point: the deadline and the check must agree)
    path.flush(live, now=5.1)
    assert owner.acks == [160]
    # a stream that ended meanwhile is not flushed by a stale deadline
    path.add(live, pcm(160).tobytes(), 160, now=6.0)
    assert path.due(7.0, {}) == []


def test_ack_latency_and_counts_reach_the_tally(tmp_path: Path) -> None:
    path, live, _ = make(tmp_path)
    path.add(live, pcm(1600).tobytes(), 1600, now=2.0)
    path.flush(live, now=2.03)
    t = path.take_tally()
    assert (t.frames, t.bytes, t.acks) == (1600, 3200, 1)
    assert t.latency == pytest.approx(0.03)
    assert path.take_tally().frames == 0  # taken


def test_a_full_disk_keeps_the_batch_and_says_storage_full(tmp_path: Path) -> None:
    path, live, owner = make(tmp_path)
    x = pcm(1600)
    path.add(live, x.tobytes(), 1600, now=0.0)

    def no_space(data: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    real = live.archive.append
    live.archive.append = no_space  # type: ignore[method-assign]
    with pytest.raises(StorageFull, match="disk is full"):
        path.flush(live, now=0.1)
    assert path.space.state == "full"
    assert owner.acks == []  # nothing acknowledged that is not written
    live.archive.append = real  # type: ignore[method-assign]


async def test_pcm_listeners_get_float32_samples_from_the_batch_offset(tmp_path: Path) -> None:
    bus = MemoryBus()
    path, live, _ = make(tmp_path, bus=bus)
    sub = bus.subscribe(live.id, audio="f32")
    x = pcm(3200, seed=3)
    path.add(live, x[:1600].tobytes(), 1600, now=0.0)
    path.flush(live, now=0.1)
    path.add(live, x[1600:].tobytes(), 1600, now=0.1)
    path.flush(live, now=0.2)
    items = [await sub.get() for _ in range(2)]
    assert all(isinstance(i, AudioItem) for i in items)
    assert [i.offset for i in items] == [0, 1600]  # type: ignore[union-attr]
    got = np.concatenate([i.samples[:, 0] for i in items])  # type: ignore[union-attr,index]
    assert np.allclose(got, x / 32768.0)


def test_f32_values_beyond_full_scale_are_saturated_and_warned_once(tmp_path: Path) -> None:
    path, live, owner = make(tmp_path, "f32")
    x = np.full(1600, 0.5, np.float32)
    x[10] = 3.0
    x[11] = np.nan
    path.add(live, x.tobytes(), 1600, now=0.0)
    path.flush(live, now=0.1)
    path.add(live, x.tobytes(), 1600, now=0.1)
    path.flush(live, now=0.2)
    codes = [m["code"] for m in owner.posted if m["type"] == "warning"]
    assert sorted(codes) == ["clipped", "non_finite"]  # once each, not per batch
    live.archive.close()
    got, _ = sf.read(tmp_path / "s.wav", dtype="int16")
    assert got[10] == 32767 and got[11] == 0 and got[1610] == 32767


def test_a_deadline_that_comes_early_is_kept(tmp_path: Path) -> None:
    path, live, _owner = make(tmp_path)
    current = {live.id: live}
    path.add(live, pcm(160).tobytes(), 160, now=0.0)
    path.set_interval(0.25, [live])  # the cadence stretched after the batch began
    assert path.due(0.1, current) == []  # not due yet under the new interval...
    assert path.due(0.25, current) == [live]  # ...but not forgotten either


def test_batches_flushed_by_size_leave_no_deadlines_behind(tmp_path: Path) -> None:
    """A stream sending 20 ms messages is flushed by size every 5th message; each batch's
    deadline goes once the batch is written, so the schedule stays about one per stream
    (it grew by one entry per batch, forever, and every tick walked all of them)."""
    path, live, owner = make(tmp_path)
    current = {live.id: live}
    now, sizes, flushed = 0.0, [], 0
    for i in range(500):  # 10 s of audio in 20 ms messages, ticks every 50 ms
        now = i * 0.02
        if path.add(live, pcm(320).tobytes(), 320, now=now):
            path.flush(live, now=now)
            flushed += 1
        if i % 3 == 2:
            assert path.due(now, current) == []  # never due: each batch filled by size
            sizes.append(path.scheduled())
    assert flushed == 100 and owner.acks[-1] == 500 * 320
    assert max(sizes) <= 2, sizes[-5:]
    path.add(live, pcm(160).tobytes(), 160, now=now + 0.02)  # a trickle: due by time
    assert path.due(now + 0.2, current) == [live]
    assert path.scheduled() == 0


def test_a_longer_interval_takes_effect_for_every_stream(tmp_path: Path) -> None:
    path, live, _ = make(tmp_path)
    path.set_interval(0.25, [live])
    due = [path.add(live, pcm(320).tobytes(), 320, now=0.0) for _ in range(13)]
    assert due.index(True) == 12  # 0.25 s = 4000 frames: the 13th 20 ms message
