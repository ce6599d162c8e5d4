"""The jitter buffer against a simulated network: continuity, adaptation, loss, accounting."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from earshot.client.jitter import JitterBuffer, JitterError, JitterStats, Playout
from earshot.errors import EarshotError

RATE = 48_000
FRAME = 960  # 20 ms
T = FRAME / RATE
PHASE = 0.0073  # pops are not aligned with arrivals, and never tie with them

Arrivals = list[tuple[float, int]]  # (arrival time in seconds, packet index)


# -- network models: packet k is sent at k * T ---------------------------------------------


def constant(n: int, delay: float = 0.05) -> Arrivals:
    return [(k * T + delay, k) for k in range(n)]


def jittered(n: int, spread: float, seed: int, delay: float = 0.05) -> Arrivals:
    rng = np.random.default_rng(seed)
    return [(k * T + delay + float(rng.uniform(0, spread)), k) for k in range(n)]


def burst(arrivals: Arrivals, start: float, gap: float) -> Arrivals:
    """Nothing arrives in [start, start + gap); all of it arrives at start + gap, in order."""
    end = start + gap
    return [(end if start <= t < end else t, k) for t, k in arrivals]


def swap_pairs(arrivals: Arrivals) -> Arrivals:
    """Packets 2j and 2j+1 arrive in swapped order (each takes the other's arrival time)."""
    out = list(arrivals)
    for i in range(0, len(out) - 1, 2):
        (t0, k0), (t1, k1) = out[i], out[i + 1]
        out[i], out[i + 1] = (t1, k0), (t0, k1)
    return out


def drop_every(arrivals: Arrivals, nth: int) -> Arrivals:
    return [(t, k) for t, k in arrivals if k % nth != nth - 1]


# -- the playout loop -----------------------------------------------------------------------


@dataclass
class Run:
    buf: JitterBuffer
    times: list[float]  # pop times
    outs: list[Playout]
    stats: list[JitterStats]  # after each pop
    pushes: list[tuple[float, int]]  # every push made, in order

    def at(self, t: float) -> JitterStats:
        """Stats after the last pop at or before ``t``."""
        i = max(i for i, pt in enumerate(self.times) if pt <= t)
        return self.stats[i]

    def started(self) -> list[Playout]:
        first = next(i for i, o in enumerate(self.outs) if o.kind != "waiting")
        return self.outs[first:]


def payload(k: int) -> tuple[str, int]:
    return ("pkt", k)


def simulate(
    arrivals: Arrivals, duration: float, buf: JitterBuffer | None = None, t0: float = 0.0
) -> Run:
    """Pop every T from ``t0`` to ``duration``, pushing each packet once its time has come."""
    if buf is None:
        buf = JitterBuffer(RATE, FRAME)
    events = sorted(arrivals, key=lambda e: e[0])  # stable: equal times keep their order
    run = Run(buf, [], [], [], [])
    i = 0
    for n in range(round((duration - t0) / T)):
        now = t0 + PHASE + n * T
        while i < len(events) and events[i][0] <= now:
            t, k = events[i]
            buf.push(k * FRAME, FRAME, payload(k), t)
            run.pushes.append((t, k))
            i += 1
        run.times.append(now)
        run.outs.append(buf.pop(now))
        run.stats.append(buf.stats)
    return run


def assert_continuous(run: Run) -> None:
    outs = run.started()
    assert all(o.frames == FRAME for o in run.outs)
    assert [o.offset for o in outs] == [outs[0].offset + i * FRAME for i in range(len(outs))]


def check_accounting(run: Run) -> None:
    """Every stream frame consumed once; every distinct packet played, skipped, late or
    still buffered; the counters agree with what the pops reported."""
    first_push = {}
    for t, k in run.pushes:
        first_push.setdefault(k * FRAME, t)
    played, lost, skipped_present = set(), set(), 0
    held = 0
    nxt = None
    for now, o in zip(run.times, run.outs, strict=True):
        if o.media_offset is None:
            assert o.skipped == 0
            held += o.kind == "concealed"
            if o.kind == "waiting":
                nxt = None  # a stall: playback restarts wherever the stream now is
            continue
        start = o.media_offset - o.skipped * FRAME
        assert nxt is None or start == nxt  # contiguous: no frame consumed twice or forgotten
        for m in range(start, o.media_offset, FRAME):  # skipped frames
            skipped_present += m in first_push and first_push[m] <= now
        if o.kind == "audio":
            assert o.payload == payload(o.media_offset // FRAME)
            assert first_push[o.media_offset] <= now
            played.add(o.media_offset)
        else:
            assert o.kind == "concealed" and o.payload is None
            # concealed only if the packet had not arrived by then (never, or late)
            assert first_push.get(o.media_offset, np.inf) > now
            lost.add(o.media_offset)
        nxt = o.media_offset + FRAME
    s = run.buf.stats
    assert s.played_frames == len(played)
    assert s.lost_frames == len(lost)
    assert s.held_frames == held
    assert s.concealed_frames == len(lost) + held
    assert s.received == len(first_push)
    assert s.duplicates == len(run.pushes) - len(first_push)
    assert s.late == len(first_push) - len(played) - skipped_present - s.buffered_packets


# -- tests ---------------------------------------------------------------------------------


def test_waits_for_first_packet_then_prebuffers_to_initial_delay() -> None:
    buf = JitterBuffer(RATE, FRAME)  # initial_delay 60 ms = 3 frames, + the frame to play
    assert buf.pop(0.0).kind == "waiting"
    for k in range(3):
        buf.push(k * FRAME, FRAME, payload(k), 0.01 * k)
        assert buf.pop(0.01 * k).kind == "waiting"
        assert not buf.started
    buf.push(3 * FRAME, FRAME, payload(3), 0.05)
    out = buf.pop(0.05)
    assert (out.kind, out.offset, out.media_offset, out.payload) == ("audio", 0, 0, payload(0))
    assert buf.started
    assert buf.stats.delay == pytest.approx(3 * T)


def test_constant_delay_plays_everything_without_concealment() -> None:
    run = simulate(constant(500), 10.0)
    assert_continuous(run)
    check_accounting(run)
    s = run.buf.stats
    assert (s.concealed_frames, s.late, s.duplicates) == (0, 0, 0)
    assert [o.kind for o in run.started()[:400]] == ["audio"] * 400
    # no jitter: once the history is full the target falls to min_delay and delay follows
    assert run.at(5.0).target_delay == pytest.approx(0.02)
    assert all(x.delay <= 0.02 + T + 1e-9 for x in run.stats[250:400])
    assert s.accelerated_frames == 2  # 3 frames of initial cushion -> 1


def test_random_jitter_sets_target_near_p95_and_is_concealment_free() -> None:
    run = simulate(jittered(500, spread=0.04, seed=7), 10.0)
    assert_continuous(run)
    check_accounting(run)
    s = run.at(9.0)
    assert 0.03 <= s.target_delay <= 0.04  # p95 of uniform [0, 40 ms]
    assert s.concealed_frames == 0 and s.late == 0
    assert s.delay <= 0.04 + 2 * T + 1e-9


def test_burst_delay_adapts_up_then_back_down() -> None:
    gap_start, gap = 3.0, 0.3
    run = simulate(burst(constant(500), gap_start, gap), 10.0)
    assert_continuous(run)
    check_accounting(run)
    before = run.at(gap_start)
    assert before.delay <= 0.02 + T + 1e-9
    after = run.at(gap_start + gap + 2 * T)
    assert after.concealed_frames > 10  # the gap was stretched (held), not skipped
    assert after.late == 0  # so every packet of the burst still plays
    assert after.delay >= 0.25 and after.target_delay >= 0.1  # delay adapted up
    settled = run.at(gap_start + gap + 2.0 + 1.5)  # burst out of history, surplus skipped
    assert settled.target_delay == pytest.approx(0.02)
    assert settled.delay <= settled.target_delay + T + 1e-9
    assert settled.accelerated_frames >= 10
    assert run.buf.stats.concealed_frames == after.concealed_frames  # nothing else concealed


def test_reordering_within_target_delay_is_not_concealed() -> None:
    run = simulate(swap_pairs(constant(500)), 10.0)
    assert_continuous(run)
    check_accounting(run)
    s = run.buf.stats
    assert s.concealed_frames == 0 and s.late == 0
    assert s.target_delay == pytest.approx(0.04)  # a swap delays one packet by a frame
    assert s.played_frames + s.accelerated_frames == s.received - s.buffered_packets


def last_audio(run: Run) -> JitterStats:
    """Stats when the last packet played (before the end of the stream empties the buffer)."""
    return run.stats[max(i for i, o in enumerate(run.outs) if o.kind == "audio")]


def test_losses_are_concealed_and_counted() -> None:
    buf = JitterBuffer(RATE, FRAME, initial_delay=0.02)  # no initial surplus to skip
    run = simulate(drop_every(constant(501), 10), 10.5, buf)
    assert_continuous(run)
    check_accounting(run)
    s = last_audio(run)
    assert s.late == 0 and s.accelerated_frames == 0 and s.held_frames == 0
    assert s.concealed_frames == s.lost_frames == 50
    assert s.concealed_ms == pytest.approx(50 * 20)
    assert s.loss_rate == pytest.approx(50 / 501)
    lost = {o.media_offset for o in run.outs if o.kind == "concealed" and o.media_offset}
    assert lost == {k * FRAME for k in range(9, 500, 10)}


def test_late_packets_are_dropped_and_counted() -> None:
    arrivals = constant(300)
    arrivals[150] = (arrivals[150][0] + 0.5, 150)  # one packet held up for half a second
    run = simulate(arrivals, 6.5)
    assert_continuous(run)
    check_accounting(run)
    s = last_audio(run)
    assert (s.late, s.lost_frames, s.concealed_frames, s.received) == (1, 1, 1, 300)
    assert s.played_frames == 299 - s.accelerated_frames
    assert 150 * FRAME not in {o.media_offset for o in run.outs if o.kind == "audio"}
    assert s.target_delay == pytest.approx(0.02)  # one spike is not the 95th percentile


def test_duplicates_are_ignored() -> None:
    arrivals = constant(300)
    dups = [(t + 0.005, k) for t, k in arrivals[::3]]  # shortly after: still buffered
    old = [(t + 0.3, k) for t, k in arrivals[::7]]  # long after: already played
    run = simulate(arrivals + dups + old, 6.5)
    clean = simulate(arrivals, 6.5)
    assert run.outs == clean.outs
    check_accounting(run)
    s = run.buf.stats
    assert s.duplicates == len(dups) + len(old)
    assert (s.late, s.received) == (0, 300)


def test_outage_with_loss_gives_back_the_stretched_delay() -> None:
    """Nothing for 300 ms and those packets never come: stretch, then skip the lost span."""
    arrivals = [(t, k) for t, k in constant(300) if not 3.0 <= t < 3.3]
    run = simulate(arrivals, 6.5)
    assert_continuous(run)
    check_accounting(run)
    s = last_audio(run)
    assert s.late == 0 and s.received == 285
    assert s.concealed_frames == 15  # the outage was concealed once: stretch, then skip
    assert s.held_frames >= 13
    assert run.at(3.4).delay <= 0.06 + T + 1e-9  # and the delay it added was given back


def test_stall_returns_to_waiting_and_restarts() -> None:
    before = constant(100)
    after = [(t + 4.0, k + 250) for t, k in constant(100)]  # 2 s silence, sender moved on
    run = simulate(before + after, 9.0)
    assert_continuous(run)  # the playout position keeps running through the stall
    check_accounting(run)
    kinds = [o.kind for o in run.started()]
    i = kinds.index("waiting")
    assert kinds[i - 50 : i] == ["concealed"] * 50  # max_delay (1 s) of stretch, then waiting
    assert run.at(3.9).held_frames == 50 and run.at(3.9).lost_frames == 0
    resumed = [o for o in run.outs[i:] if o.kind == "audio"]
    media = [o.media_offset for o in resumed]
    assert media[0] == 250 * FRAME and media[-1] == 349 * FRAME and media == sorted(set(media))
    assert last_audio(run).lost_frames == 0


def test_reset_starts_a_new_stream_on_the_same_playout_clock() -> None:
    buf = JitterBuffer(RATE, FRAME)
    first = simulate(constant(100), 2.5, buf)
    buf.push(0, FRAME, payload(0), 2.5)  # the source restarted: without a reset, this is
    assert buf.stats.duplicates == 1  # a packet it has already played
    buf.reset()
    second = simulate([(t + 2.5, k) for t, k in constant(100)], 5.0, buf, t0=2.5)
    outs = first.outs + second.outs
    started = outs[next(i for i, o in enumerate(outs) if o.kind != "waiting") :]
    assert [o.offset for o in started] == [started[0].offset + i * FRAME
                                           for i in range(len(started))]
    played = [o.media_offset for o in second.outs if o.kind == "audio"]
    assert played[0] == 0 and played[-1] == 99 * FRAME and played == sorted(set(played))
    assert buf.stats.received == 200 and buf.stats.late == 0


def test_stream_jumping_ahead_is_a_discontinuity_not_a_loss() -> None:
    before = constant(100)
    after = [(t + 2.0, k + 1000) for t, k in constant(100)]  # right on, 20 s later in media
    run = simulate(before + after, 6.0)
    assert_continuous(run)
    check_accounting(run)
    s = last_audio(run)
    assert s.lost_frames == 0
    played = [o.media_offset for o in run.outs if o.kind == "audio"]
    assert played[-20:] == [k * FRAME for k in range(1080, 1100)]
    assert s.target_delay <= 0.06  # the jump did not look like 20 s of jitter


def test_overflow_jumps_to_the_live_edge() -> None:
    buf = JitterBuffer(RATE, FRAME, max_delay=0.2)
    run = simulate(constant(50), 1.5, buf)
    for k in range(50, 150):  # 2 s of media at once
        buf.push(k * FRAME, FRAME, payload(k), 1.5)
    out = buf.pop(1.5)
    assert out.kind == "audio" and out.skipped > 0
    assert buf.stats.delay <= 0.2 + T
    assert out.offset == run.outs[-1].offset + FRAME


def test_packet_contract_is_enforced() -> None:
    buf = JitterBuffer(RATE, FRAME)
    with pytest.raises(JitterError, match="exactly 960"):
        buf.push(0, 480, b"", 0.0)
    buf.push(100, FRAME, b"", 0.0)  # sets the grid
    with pytest.raises(JitterError, match="grid"):
        buf.push(960, FRAME, b"", 0.0)
    with pytest.raises(JitterError, match="negative"):
        buf.push(-860, FRAME, b"", 0.0)
    with pytest.raises(JitterError, match="integer"):
        buf.push(1.5, FRAME, b"", 0.0)  # type: ignore[arg-type]
    with pytest.raises(JitterError, match="finite"):
        buf.push(1060, FRAME, b"", float("nan"))
    with pytest.raises(JitterError, match="finite"):
        buf.pop(float("inf"))
    buf.push(np.int64(1060), FRAME, b"", 0.0)  # numpy integers are fine
    assert buf.stats.buffered_packets == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": 0},
        {"frame": -1},
        {"min_delay": 0.5, "max_delay": 0.1},
        {"min_delay": -0.1},
        {"history": 0.0},
        {"initial_delay": float("nan")},
        {"accelerate_every": 0},
    ],
)
def test_bad_settings_raise(kwargs: dict[str, float]) -> None:
    args = {"rate": RATE, "frame": FRAME} | kwargs
    with pytest.raises(JitterError) as info:
        JitterBuffer(**args)  # type: ignore[arg-type]
    assert isinstance(info.value, EarshotError)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 40))
def test_any_arrival_order_is_continuous_and_conserves_packets(
    data: st.DataObject, n: int
) -> None:
    delays = data.draw(st.lists(st.floats(0.0, 0.6), min_size=n, max_size=n))
    lost = data.draw(st.sets(st.integers(0, n - 1)))
    dups = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.floats(0.0, 0.8)), max_size=8))
    max_delay = data.draw(st.sampled_from([0.1, 1.0]))
    arrivals = [(k * T + d, k) for k, d in enumerate(delays) if k not in lost]
    arrivals += [(k * T + d, k) for k, d in dups]
    buf = JitterBuffer(RATE, FRAME, max_delay=max_delay, min_delay=0.0)
    run = simulate(arrivals, n * T + 2.0, buf)
    if any(o.kind != "waiting" for o in run.outs):
        assert_continuous(run)
    check_accounting(run)
