"""The admission guard's core (time passed in) and the loop-lag probe, directly."""

from __future__ import annotations

import asyncio
import errno
import time
from pathlib import Path

import pytest

from earshot.client import Reconnect
from earshot.config import Settings
from earshot.errors import ConfigError, StorageError
from earshot.ranges import parse_size
from earshot.server.streams.admission import Admission, Smoothed, probe_loop_lag
from earshot.server.streams.lifecycle import read_held, write_held
from earshot.server.streams.space import Space, is_no_space
from earshot.wire.ingest import BUSY, FATAL_CLOSE, RETRYABLE


def test_max_streams_counts_held_streams_and_reserved_slots() -> None:
    a = Admission(max_streams=2, resume_grace=30)
    assert a.refusal([], 0.0) is None
    assert a.refusal(["s1"], 0.0) is None
    assert a.state(["s1", "s2"], 0.0) == "full"
    assert "maximum of 2 streams" in (a.refusal(["s1", "s2"], 0.0) or "")
    # after a restart: two streams were held; their slots wait for them
    a.reserve(["r1", "r2"], now=100.0)
    assert a.state([], 101.0) == "full"
    assert "kept for streams resuming" in (a.refusal([], 101.0) or "")
    a.resumed("r1")
    assert a.state(["r1"], 102.0) == "full"  # r1 held again, r2 still kept
    assert a.state([], 102.0) == "ok"  # r1 gone again: its reservation is spent
    assert a.state(["r1"], 131.0) == "ok"  # r2's grace ran out
    assert a.reserved == {}


def test_a_reserved_stream_held_again_is_not_counted_twice() -> None:
    a = Admission(max_streams=2)
    a.reserve(["r1"], now=0.0)
    assert a.state(["r1"], 1.0) == "ok"  # held: counted once
    assert a.state(["r1", "x"], 1.0) == "full"


def test_headroom_needs_sustained_lag_not_one_spike() -> None:
    a = Admission(max_loop_lag=0.2, window=2.0)
    for i in range(50):  # 5 s of a healthy loop
        a.observe_loop_lag(0.002, i * 0.1)
    a.observe_loop_lag(1.5, 5.0)  # one GC pause
    assert a.state([], 5.0) == "ok"
    t = 5.0
    while a.state([], t) == "ok":  # then the loop stays 0.4 s behind
        t += 0.5
        a.observe_loop_lag(0.4, t)
        assert t < 20
    assert 5.5 <= t <= 10  # noticed within a few windows
    assert "overloaded" in (a.refusal([], t) or "")
    # an idle server recovers by itself (no samples: the mean decays)
    assert a.state([], t + 10) == "ok"


def test_ack_latency_guard_and_zero_disables() -> None:
    a = Admission(max_ack_latency=0.05)
    for i in range(40):
        a.observe_ack_latency(0.2, i * 0.1)
    assert a.state([], 4.0) == "overloaded"
    off = Admission()
    for i in range(40):
        off.observe_ack_latency(5.0, i * 0.1)
        off.observe_loop_lag(5.0, i * 0.1)
    assert off.state(["x"] * 1000, 4.0) == "ok"


def test_draining_refuses_everything_new() -> None:
    a = Admission(max_streams=0)
    a.draining = True
    assert a.state([], 0.0) == "draining"
    assert "shutting down" in (a.refusal([], 0.0) or "")


def test_smoothed_mean_follows_the_window() -> None:
    s = Smoothed(window=1.0)
    assert s.current(0.0) == 0.0
    s.add(1.0, 0.0)
    s.add(0.0, 1.0)  # one window later: 1 - 1/e of the way
    assert s.value == pytest.approx(1 / 2.718281828, rel=1e-3)


def test_wire_codes_are_retryable_with_close_1013() -> None:
    assert FATAL_CLOSE["server_full"] == 1013 == FATAL_CLOSE["storage_full"]
    assert {"server_full", "storage_full", "shutting_down"} <= BUSY <= RETRYABLE


def test_busy_backoff_is_spread_and_bounded() -> None:
    r = Reconnect(initial=0.2, maximum=2.0)
    delays = [r.busy_delay(3) for _ in range(400)]
    assert 0.4 <= min(delays) < 0.5 and 1.1 < max(delays) <= 1.2  # 0.8 s x [0.5, 1.5]
    assert len({round(d, 3) for d in delays}) > 100  # not a herd
    assert max(r.busy_delay(50) for _ in range(100)) <= 3.0


def test_settings_ranges() -> None:
    assert Settings.of(max_streams=5).admission.max_streams == 5
    with pytest.raises(ConfigError, match="max streams"):
        Settings.of(max_streams=-1)
    with pytest.raises(ConfigError, match="max loop lag"):
        Settings.of(max_loop_lag=-0.1)


async def test_probe_measures_a_blocked_loop() -> None:
    seen: list[float] = []
    task = asyncio.create_task(probe_loop_lag(lambda lag, now: seen.append(lag), period=0.02))
    await asyncio.sleep(0.1)
    time.sleep(0.3)  # block the loop
    await asyncio.sleep(0.1)
    task.cancel()
    assert max(seen) >= 0.25  # the block was seen...
    assert sorted(seen)[len(seen) // 2] < 0.25  # ...and the rest was not lag


async def test_an_idle_probe_sleeps_longer_and_still_measures_lag() -> None:
    seen: list[float] = []
    idle = True
    task = asyncio.create_task(probe_loop_lag(lambda lag, now: seen.append(lag), period=0.01,
                                              idle=lambda: idle, idle_period=0.2))
    await asyncio.sleep(0.05)
    time.sleep(0.3)  # block the loop while idle: the late wake-up is still lag
    await asyncio.sleep(0.05)
    assert len(seen) == 1 and seen[0] >= 0.1  # one 0.2 s sleep, woken 0.15 s late
    idle = False  # a stream came: back to the short period after the current sleep
    await asyncio.sleep(0.5)
    task.cancel()
    assert len(seen) >= 10


def test_held_at_shutdown_file_round_trip(tmp_path: Path) -> None:
    write_held(tmp_path, ["a", "b"])
    ids, left = read_held(tmp_path, grace=30)
    assert ids == ["a", "b"] and 29 < left <= 30
    assert read_held(tmp_path, grace=30) == ([], 0.0)  # consumed
    (tmp_path / "held-at-shutdown.json").write_text("{not json")
    assert read_held(tmp_path, grace=30) == ([], 0.0)
    (tmp_path / "held-at-shutdown.json").write_text('{"at": 0, "streams": ["old"]}')
    assert read_held(tmp_path, grace=30) == ([], 0.0)  # too long ago


def test_space_states_and_recovery(caplog: pytest.LogCaptureFixture) -> None:
    mb = 1 << 20
    s = Space(min_free=64 * mb, where="/data")
    assert s.update(100 * mb, 0.0) == "ok" and s.refusal(resume=False) is None
    assert s.update(10 * mb, 1.0) == "low"
    assert "reserve of 64.0 MiB" in (s.refusal(resume=False) or "")
    assert s.refusal(resume=True) is None  # held streams and resumes use the reserve
    s.write_failed("stream x")
    s.write_failed("stream y")  # logged once
    assert s.state == "full" and s.refusal(resume=True)
    assert s.update(30 * mb, 2.0) == "full"  # still below the reserve
    assert s.update(70 * mb, 3.0) == "ok"
    lines = [r.getMessage() for r in caplog.records]
    assert sum("storage full on /data" in m for m in lines) == 1
    assert sum("storage low on" in m for m in lines) == 1
    assert sum("space is back" in m for m in lines) == 1
    off = Space(min_free=0)
    off.write_failed("x")
    assert off.update(512 * 1024, 0.0) == "full"  # a failed write needs 1 MiB back
    assert off.update(2 * mb, 1.0) == "ok"
    assert not s.due(3.5) and s.due(4.0)


def test_no_space_detection_and_sizes() -> None:
    assert is_no_space(OSError(errno.ENOSPC, "No space left on device"))
    assert is_no_space(StorageError("SQLite x.db: database or disk is full"))
    assert not is_no_space(OSError(errno.EACCES, "Permission denied"))
    assert parse_size("64M") == 64 << 20 and parse_size("1.5g") == 3 << 29
    assert parse_size("512KiB") == 512 << 10 and parse_size("1000") == 1000
    for bad in ("", "-1M", "lots", "infG"):
        with pytest.raises(ValueError):
            parse_size(bad)
