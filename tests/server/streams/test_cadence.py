"""The ack cadence (server/cadence.py): batches of ack_interval while the event loop has
headroom, stretching linearly to ack_interval_max as it gets busy, in steps, with a dead
band; and the stream writer following it."""

from __future__ import annotations

from pathlib import Path

import pytest

from earshot.audio import StreamSpec
from earshot.server.streams.cadence import HIGH, LOW, AckCadence
from earshot.server.streams.writer import StreamWriter
from earshot.storage.archive import Archive


def test_the_interval_follows_the_loop_s_busy_time() -> None:
    c = AckCadence(0.1, 0.25)
    assert c.target(0.0) == c.target(LOW) == 0.1
    assert c.target(HIGH) == c.target(1.5) == 0.25
    assert c.target((LOW + HIGH) / 2) == pytest.approx(0.18)  # halfway, on the 10 ms grid
    mids = [c.target(LOW + k * 0.01) for k in range(41)]
    assert mids == sorted(mids)  # monotonic


def test_updates_move_in_steps_with_a_dead_band_and_return_to_base() -> None:
    c = AckCadence(0.1, 0.25)
    assert c.update(0.3) is None and c.current == 0.1  # headroom: nothing to do
    assert c.update(0.7) == pytest.approx(0.18)
    assert c.update(0.75) is None and c.current == pytest.approx(0.18)  # 0.19: dead band
    assert c.update(0.8) == pytest.approx(0.21)  # three steps: it moves
    assert c.update(2.0) == pytest.approx(0.25)
    assert c.update(0.55) == pytest.approx(0.12)
    assert c.update(0.51) == 0.1  # back to base, even within a step (0.104: 0.10)
    assert c.update(0.2) is None


def test_a_fixed_cadence_and_bad_bounds() -> None:
    c = AckCadence(0.2, 0.2)
    assert not c.adaptive and c.target(5.0) == 0.2 and c.update(5.0) is None
    with pytest.raises(ValueError, match="below"):
        AckCadence(0.2, 0.1)


def test_a_writer_flushes_by_the_new_interval(tmp_path: Path) -> None:
    spec = StreamSpec("s16", 16000, 1)
    w = StreamWriter(Archive.create(tmp_path / "s.wav", spec, "wav"), ack_interval=0.1,
                     header_interval=1.0, now=0.0)
    frame = b"\0\0" * 320  # 20 ms
    assert [w.add(frame, 320, 0.0) for _ in range(5)][-1]  # 100 ms: due
    w.write()
    w.set_interval(0.25)
    due = [w.add(frame, 320, 0.0) for _ in range(13)]
    assert due.index(True) == 12  # due at 250 ms, not before
    assert not w.flush_due(0.2) and w.flush_due(0.25)  # a trickle waits 0.25 s of wall time
