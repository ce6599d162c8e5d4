"""The mixer core, driven by simulated time: seats send 20 ms frames (with chosen delays),
the room ticks every 20 ms; every mix-minus is checked sample by sample."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import soxr

from earshot.rooms.errors import RoomError
from earshot.rooms.mixer import Mixer, Tick, limit

RATE = 48000
T = 960  # one tick at 48 kHz
TICK = 0.02


def voice(seed: int, seconds: float, rate: int = RATE) -> np.ndarray:
    """A distinct int16-valued signal per seat (band-limited noise bursts), as float32."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    x = rng.standard_normal(n)
    x = np.convolve(x, np.ones(8) / 8, mode="same")  # keep it below Nyquist-ish
    env = (np.sin(np.arange(n) * 2 * np.pi * (0.7 + seed * 0.13) / rate) > -0.3).astype(float)
    q = np.round(np.clip(x * env * 0.1, -1, 1) * 32767).astype(np.int16)
    return q.astype(np.float32) / 32768


@dataclass
class Sender:
    """A seat that sends ``signal`` in ``frame``-sample pieces from ``start`` (seconds),
    piece ``k`` arriving at ``start + (k + 1) * frame / rate + delay(k)``."""

    signal: np.ndarray
    rate: int = RATE
    start: float = 0.0
    frame: int = T
    delay: Callable[[int], float] = field(default=lambda k: 0.003)
    first_offset: int = 0

    def arrivals(self) -> list[tuple[float, int, np.ndarray]]:
        out = []
        for k, i in enumerate(range(0, len(self.signal), self.frame)):
            t = self.start + (k + 1) * self.frame / self.rate + self.delay(k)
            out.append((t, self.first_offset + i, self.signal[i:i + self.frame]))
        return out


def run(mixer: Mixer, senders: dict[str, Sender], seconds: float,
        joins: dict[str, float] | None = None) -> list[Tick]:
    """Push every arrival and tick the mixer every 20 ms, in time order (pushes first)."""
    joins = joins or {}
    events: list[tuple[float, int, str, int, np.ndarray | None]] = []
    for name, s in senders.items():
        for t, off, x in s.arrivals():
            events.append((t, 0, name, off, x))
    k = 0
    while k * TICK <= seconds:
        events.append((mixer.origin + k * TICK, 1, "", 0, None))
        k += 1
    for name, t in joins.items():
        events.append((t, -1, name, 0, None))
    events.sort(key=lambda e: (e[0], e[1]))
    ticks: list[Tick] = []
    for t, kind, name, off, x in events:
        if kind == -1:
            mixer.add_seat(name, senders[name].rate)
        elif kind == 0:
            if name in mixer.seats:
                mixer.push(name, off, x, t)
        else:
            ticks.extend(mixer.tick(t))
    return ticks


def exact(mixer: Mixer) -> Mixer:
    return mixer


def frame_of(signal: np.ndarray, pos: int | None, first_offset: int = 0) -> np.ndarray:
    out = np.zeros(T, np.float32)
    if pos is None:
        return out
    i = pos - first_offset
    piece = signal[max(0, i):i + T]
    out[max(0, -i):max(0, -i) + len(piece)] = piece
    return out


def test_mix_minus_is_the_exact_sum_of_everyone_else():
    m = Mixer(origin=0.0, fade_ms=0, knee=None)
    sig = {n: voice(i, 3.0) for i, n in enumerate("abc")}
    for n in sig:
        m.add_seat(n, RATE)
    jit = {"a": lambda k: 0.002, "b": lambda k: 0.004 + 0.006 * (k % 3 == 0),
           "c": lambda k: 0.011}
    ticks = run(m, {n: Sender(sig[n], delay=jit[n]) for n in sig}, 3.2)
    assert [t.index for t in ticks] == list(range(len(ticks)))
    played = {n: 0 for n in sig}
    for tk in ticks:
        frames = {n: frame_of(sig[n], tk.positions[n]) for n in sig}
        for n in sig:
            if tk.status[n] == "audio":
                played[n] += 1
            else:
                assert tk.positions[n] is None
        for n in sig:
            # sum in int16 units: exact, and so is the float32 mix-minus
            want = sum(np.round(frames[o] * 32768).astype(np.int64) for o in sig if o != n)
            assert np.array_equal(np.round(tk.mixes[n] * 32768).astype(np.int64), want)
            assert np.array_equal(tk.mixes[n] * np.float32(32768), want.astype(np.float32))
        want_full = sum(np.round(f * 32768).astype(np.int64) for f in frames.values())
        assert np.array_equal(tk.full * np.float32(32768), want_full.astype(np.float32))
    # every frame of every seat played once, in order; none lost or late; the only ones
    # left out are those the jitter buffer skipped to bring its delay down
    for n in sig:
        pos = [tk.positions[n] for tk in ticks if tk.positions[n] is not None]
        assert pos == sorted(set(pos)) and pos[0] == 0
        st = m.stats(n).jitter
        missing = set(range(0, pos[-1], T)) - set(pos)
        assert len(missing) == st.accelerated_frames <= 3
        assert st.late == 0 and st.lost_frames == 0
        assert len(pos) >= len(sig[n]) // T - 5


def test_own_voice_is_absent_from_own_mix():
    m = Mixer(origin=0.0)
    sig = {"a": voice(1, 2.0), "b": np.zeros(2 * RATE, np.float32)}
    for n in sig:
        m.add_seat(n, RATE)
    ticks = run(m, {n: Sender(sig[n]) for n in sig}, 2.2)
    heard_a = np.concatenate([t.mixes["a"] for t in ticks])
    heard_b = np.concatenate([t.mixes["b"] for t in ticks])
    assert not heard_a.any()  # b is silent and a never hears itself
    assert np.sqrt(np.mean(heard_b ** 2)) > 0.01


def test_a_hiccup_is_concealed_without_delaying_the_others():
    """b's link stalls for 150 ms at 1.0 s (frames 50.. arrive together at 1.173 s, in
    order, as over one connection): b is concealed meanwhile, a and c go on exactly on
    time; b's held-up audio is then mixed late and its delay brought back down."""
    m = Mixer(origin=0.0, fade_ms=0, knee=None, initial_delay=0.0)
    sig = {"a": np.zeros(5 * RATE, np.float32), "b": voice(2, 5.0), "c": voice(3, 5.0)}
    for n in sig:
        m.add_seat(n, RATE)
    held = 51 * TICK + 0.153

    def delay(k: int) -> float:
        return 0.003 if k < 50 else max(0.003, held + 1e-5 * k - (k + 1) * TICK)

    ticks = run(m, {"a": Sender(sig["a"]), "b": Sender(sig["b"], delay=delay),
                    "c": Sender(sig["c"])}, 5.2)
    assert [t.index for t in ticks] == list(range(len(ticks)))

    def lag(tk: Tick) -> float:
        return tk.t - tk.positions["b"] / RATE

    assert all(lag(t) <= 0.045 for t in ticks if 0.5 <= t.t < 1.0)
    hiccup = [t for t in ticks if 1.0 <= t.t < 1.2 and t.status["b"] != "audio"]
    assert 5 <= len(hiccup) <= 8 and all(t.status["b"] == "concealed" for t in hiccup)
    # c never waited for b: every c frame played, in order, one per tick
    c_pos = [t.positions["c"] for t in ticks if t.positions["c"] is not None]
    assert c_pos == list(range(0, 5 * RATE, T))
    for tk in ticks:  # and every mix is exact, b's hiccup included
        fb, fc = frame_of(sig["b"], tk.positions["b"]), frame_of(sig["c"], tk.positions["c"])
        assert np.array_equal(tk.mixes["a"], fb + fc)
        assert np.array_equal(tk.mixes["b"], fc)
    # b's held-up audio was mixed late, never twice, and its delay came back down
    b_pos = [t.positions["b"] for t in ticks if t.positions["b"] is not None]
    assert b_pos == sorted(set(b_pos))
    assert m.stats("b").jitter.lost_frames == 0 and m.stats("b").jitter.late == 0
    after = [lag(t) for t in ticks if t.t >= 1.2 and t.positions["b"] is not None]
    assert 0.1 <= max(after) <= 0.2 + 2 * TICK
    assert all(lag(t) <= 0.045 for t in ticks if t.t >= 4.0 and t.positions["b"] is not None)


def test_a_dropped_connection_is_not_replayed_late():
    """b's link dies for 2 s; its backlog then arrives at once (a resume resending what was
    not acknowledged) and it goes on live: a hears a gap, then b live again."""
    m = Mixer(origin=0.0, fade_ms=0, knee=None)
    sig = {"a": np.zeros(6 * RATE, np.float32), "b": voice(4, 6.0)}
    for n in sig:
        m.add_seat(n, RATE)
    cut, back = 2.0, 4.0

    def delay(k: int) -> float:  # in order, as over one connection
        t = (k + 1) * TICK
        return back - t + 1e-5 * k if cut <= t < back else 0.003

    ticks = run(m, {"a": Sender(sig["a"]), "b": Sender(sig["b"], delay=delay)}, 6.2)
    before = [t for t in ticks if 1.5 <= t.t < cut]
    after = [t for t in ticks if t.t >= back and t.positions["b"] is not None]
    lag_before = max(t.t - t.positions["b"] / RATE for t in before)
    assert lag_before <= 0.1  # 20 ms frames, 3 ms transit, 40 ms initial target, the tick
    for tk in after:  # once back, b plays about as close to the live edge as before
        assert tk.t - tk.positions["b"] / RATE <= lag_before + TICK + 1e-9
    gap = [t for t in ticks if cut + 0.3 <= t.t < back]
    assert gap and all(t.status["b"] != "audio" for t in gap)
    assert all(not t.mixes["a"].any() for t in gap)
    played = {t.positions["b"] for t in ticks if t.positions["b"] is not None}
    replayed = [p for p in played if cut <= p / RATE < back - 0.2]
    assert replayed == []  # the backlog of the outage never reached a's ears
    assert m.stats("b").stale_frames >= 90  # the backlog, dropped before the buffer


@pytest.mark.parametrize("jitter", [0.0, 0.004])
def test_jitter_within_the_tick_costs_no_cushion(jitter):
    """Frames arriving 9-13 ms before their tick are mixed at that tick: the jitter never
    moves one past it, so no frame of cushion is added (fed on arrival, it would be)."""
    m = Mixer(origin=0.0)
    m.add_seat("a", RATE)
    m.add_seat("b", RATE)
    rng = np.random.default_rng(3)
    jit = rng.uniform(0, jitter, 500)
    sender = Sender(voice(70, 8.0), delay=lambda k: 0.007 + jit[k])
    arrived = {off: t for t, off, _ in sender.arrivals()}
    ticks = run(m, {"a": sender}, 8.0)
    waits = [t.t - arrived[t.positions["a"]] for t in ticks
             if t.t > 3.0 and t.positions["a"] is not None]
    assert len(waits) > 200
    assert max(waits) < TICK  # always the first tick after arrival
    assert m.stats("a").jitter.concealed_frames <= 3  # the end of the stream


def test_a_seat_joining_mid_call():
    m = Mixer(origin=0.0, fade_ms=0, knee=None)
    sig = {n: voice(i + 10, 3.0) for i, n in enumerate("ab")}
    sig["c"] = voice(12, 1.5)
    m.add_seat("a", RATE)
    m.add_seat("b", RATE)
    senders = {n: Sender(sig[n]) for n in "ab"}
    senders["c"] = Sender(sig["c"], start=1.5, first_offset=5 * RATE)  # its stream is older
    ticks = run(m, senders, 3.2, joins={"c": 1.49})
    before = [t for t in ticks if t.t < 1.49]
    after = [t for t in ticks if t.t >= 1.5]
    assert all("c" not in t.mixes for t in before)
    assert all(set(t.mixes) == {"a", "b", "c"} for t in after)
    c_pos = [t.positions["c"] for t in after if t.positions["c"] is not None]
    assert c_pos[0] == 5 * RATE and c_pos == list(range(5 * RATE, 5 * RATE + len(c_pos) * T, T))
    assert len(c_pos) == len(sig["c"]) // T
    for tk in after:
        fc = frame_of(sig["c"], tk.positions["c"], 5 * RATE)
        fa, fb = frame_of(sig["a"], tk.positions["a"]), frame_of(sig["b"], tk.positions["b"])
        assert np.array_equal(tk.mixes["c"], fa + fb)
        assert np.array_equal(tk.mixes["a"] * 32768, np.round((fb + fc) * 32768))


@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_a_seat_at_another_rate_is_resampled(rate):
    m = Mixer(origin=0.0, fade_ms=0, knee=None)
    x = voice(20, 2.0, rate)
    m.add_seat("listener", RATE)
    m.add_seat("slow", rate)
    frame = rate // 50 if rate % 50 == 0 else 882
    ticks = run(m, {"listener": Sender(np.zeros(2 * RATE, np.float32)),
                    "slow": Sender(x, rate=rate, frame=frame)}, 2.4)
    want = soxr.resample(x, rate, RATE, quality="VHQ").astype(np.float32)
    got = np.zeros(len(want) + 4 * T, np.float32)
    for tk in ticks:
        p = tk.positions["slow"]
        if p is not None:
            room = round(p * RATE / rate / T) * T  # back to the room-rate grid
            got[room:room + T] = tk.mixes["listener"]
    n = len(want) - 2 * T  # the tail the stream resampler still holds is not compared
    cs = {lag: np.corrcoef(got[T + lag:n + lag], want[T:n])[0, 1] for lag in range(0, 24)}
    lag = max(cs, key=lambda k: cs[k])
    assert lag <= 12  # placed at most 0.25 ms late (the resampler's hold, see the mixer)
    assert cs[lag] >= 0.99, f"resampled seat correlates {cs[lag]:.4f} with offline resampling"
    assert m.stats("slow").rate == rate and m.stats("slow").frames_in == len(x)


@pytest.mark.parametrize(("rate", "quality", "held"), [
    (16000, "QQ", 0), (8000, "QQ", 0), (44100, "QQ", 0), (16000, "LQ", 1), (16000, "MQ", 1),
])
def test_resampling_holds_no_frame_back_at_qq(rate, quality, held):
    """With QQ a seat's frame is ready for the mix as soon as its 20 ms are in."""
    m = Mixer(origin=0.0, quality=quality)
    m.add_seat("s", rate)
    f = rate // 50 if rate % 50 == 0 else 882
    x = voice(60, 1.0, rate)
    lagging = 0
    for k in range(40):
        m.push("s", k * f, x[k * f:(k + 1) * f], 0.02 * (k + 1))
        lagging = max(lagging, (k + 1) - m.stats("s").jitter.received)
    assert (lagging > 0) == bool(held)


def test_eight_seats_each_hear_the_seven_others():
    m = Mixer(origin=0.0, fade_ms=0, knee=None, max_seats=8)
    names = [f"p{i}" for i in range(8)]
    sig = {n: voice(30 + i, 1.0) for i, n in enumerate(names)}
    for n in names:
        m.add_seat(n, RATE)
    with pytest.raises(RoomError) as err:
        m.add_seat("p8", RATE)
    assert err.value.code == "room_full"
    ticks = run(m, {n: Sender(sig[n], delay=lambda k, i=i: 0.001 * i) for i, n in
                    enumerate(names)}, 1.2)
    checked = 0
    for tk in ticks:
        ints = {n: np.round(frame_of(sig[n], tk.positions[n]) * 32768).astype(np.int64)
                for n in names}
        total = sum(ints.values())
        for n in names:
            assert np.array_equal(np.round(tk.mixes[n] * 32768).astype(np.int64),
                                  total - ints[n])
            checked += tk.positions[n] is not None
    assert checked >= 8 * 45


def test_limiter_is_exactly_what_it_says():
    x = np.linspace(-3, 3, 60001, dtype=np.float32)
    y = limit(x, 0.75)
    small = np.abs(x) <= 0.75
    assert np.array_equal(y[small], x[small])
    big = ~small
    want = np.sign(x[big]) * (0.75 + 0.25 * np.tanh((np.abs(x[big]) - 0.75) / 0.25))
    assert np.allclose(y[big], want, atol=1e-7)
    assert np.all(np.abs(y) <= 1.0) and np.all(np.diff(y) >= 0)
    # the mixer applies it after the exact sum: two loud seats do not clip
    m = Mixer(origin=0.0, fade_ms=0)
    loud = np.full(RATE, 0.6, np.float32)
    for n in ("a", "b", "c"):
        m.add_seat(n, RATE)
    ticks = run(m, {"a": Sender(loud), "b": Sender(loud), "c": Sender(loud * 0)}, 1.0)
    full = [t for t in ticks if t.status["a"] == t.status["b"] == "audio"]
    assert full
    for tk in full:
        assert np.allclose(tk.mixes["c"], limit(np.full(T, 1.2, np.float32)))
        assert np.array_equal(tk.mixes["a"], np.full(T, 0.6, np.float32))  # below the knee


def test_fades_at_concealment_are_continuous():
    m = Mixer(origin=0.0, fade_ms=2.5, knee=None, initial_delay=0.0)
    ramp = np.linspace(0.1, 0.5, 2 * T, dtype=np.float32)
    x = np.concatenate([ramp, ramp])  # b sends 4 frames, then a frame is missing
    m.add_seat("a", RATE)
    m.add_seat("b", RATE)
    ticks = run(m, {"a": Sender(np.zeros(RATE, np.float32)),
                    "b": Sender(x)}, 0.4)
    heard = [(t.status["b"], t.mixes["a"]) for t in ticks]
    first = next(i for i, (s, _) in enumerate(heard) if s == "audio")
    f = 120  # 2.5 ms at 48 kHz
    ramp_in = (np.arange(f) + 0.5) / f
    np.testing.assert_allclose(heard[first][1][:f], ramp[:f] * ramp_in, rtol=1e-6)
    assert np.array_equal(heard[first][1][f:], ramp[f:T])  # the rest untouched
    last = max(i for i, (s, _) in enumerate(heard) if s == "audio")
    tail = heard[last][1][-1]
    fade = heard[last + 1][1]
    assert heard[last + 1][0] in ("concealed", "waiting")
    assert abs(fade[0] - tail) < 0.01 and not fade[f:].any()  # continuous, then silence
    assert np.all(np.abs(np.diff(fade[:f])) < 0.01)


def test_muted_seat_is_consumed_on_time_but_silent():
    m = Mixer(origin=0.0, fade_ms=0, knee=None)
    sig = voice(40, 2.0)
    m.add_seat("a", RATE)
    m.add_seat("b", RATE)
    events = Sender(sig).arrivals()
    ticks: list[Tick] = []
    k = 0
    for t, off, x in events:
        while k * TICK < t:
            if k == 50:
                m.set_muted("b", True)
            if k == 75:
                m.set_muted("b", False)
            ticks.extend(m.tick(k * TICK))
            k += 1
        m.push("a", off, np.zeros(len(x), np.float32), t)
        m.push("b", off, x, t)
    muted = [t for t in ticks if t.status["b"] == "muted"]
    assert len(muted) == 25 and all(not t.mixes["a"].any() for t in muted)
    after = [t for t in ticks if t.index > 75 and t.status["b"] == "audio"]
    assert after and after[0].positions["b"] - muted[-1].index * T < 4 * T  # kept live


def test_resent_audio_is_trimmed_and_holes_filled():
    m = Mixer(origin=0.0, fade_ms=0, knee=None, initial_delay=0.0)
    x = voice(50, 1.0)
    m.add_seat("a", RATE)
    m.add_seat("b", RATE)
    m.push("b", 0, x[:3 * T], 0.061)
    m.push("b", 2 * T, x[2 * T:5 * T], 0.101)  # a resume resends frame 2
    m.push("b", 6 * T, x[6 * T:8 * T], 0.161)  # frame 5 never comes: 20 ms of silence
    m.push("b", 20 * RATE, x[:T], 0.2)  # 20 s ahead: a new timeline
    st = m.stats("b")
    assert st.repeated_frames == T and st.gaps == 2 and st.restarts == 1
    assert st.frames_in == 8 * T  # 3 + 2 new + 2, then 1 after the jump
    ticks = m.tick(0.3)
    assert len(ticks) == 5 and m.skipped == 11  # 16 due; the caller fell behind
    assert [t.index for t in ticks] == [11, 12, 13, 14, 15]


@pytest.mark.parametrize(("call", "code", "needle"), [
    (lambda m: m.push("zed", 0, np.zeros(T, np.float32), 0.0), "not_in_room", "zed"),
    (lambda m: m.push("a", -1, np.zeros(T, np.float32), 0.0), "bad_audio", "negative"),
    (lambda m: m.push("a", 1.5, np.zeros(T, np.float32), 0.0), "bad_audio", "integer"),
    (lambda m: m.push("a", 0, np.full(T, np.inf, np.float32), 0.0), "bad_audio", "NaN"),
    (lambda m: m.push("a", 0, np.zeros((T, 2), np.float32), 0.0), "bad_audio", "channels"),
    (lambda m: m.push("a", 0, np.zeros(T, np.int32), 0.0), "bad_audio", "float32 or int16"),
    (lambda m: m.push("a", 0, np.zeros((2, 2, 2), np.float32), 0.0), "bad_audio", "1-D"),
    (lambda m: m.tick(float("nan")), "bad_time", "finite"),
    (lambda m: (m.tick(1.0), m.tick(0.5)), "bad_time", "backwards"),
    (lambda m: m.add_seat("a", RATE), "name_taken", "already"),
    (lambda m: m.add_seat("x", 0), "bad_audio", "positive"),
    (lambda m: m.add_seat("x", RATE, 9), "bad_audio", "channels"),
    (lambda m: m.remove_seat("x"), "not_in_room", "x"),
])
def test_bad_input_is_refused_clearly(call, code, needle):
    m = Mixer(origin=0.0)
    m.add_seat("a", RATE)
    with pytest.raises(RoomError, match=needle) as err:
        call(m)
    assert err.value.code == code


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"rate": 44100, "tick_ms": 15}, "whole number"), ({"knee": 1.5}, "knee"),
    ({"fade_ms": 30}, "fade_ms"), ({"quality": "XQ"}, "quality"),
    ({"min_delay": 0.5, "max_delay": 0.2}, "exceeds"), ({"origin": float("inf")}, "finite"),
])
def test_bad_settings_are_refused(kwargs, needle):
    kwargs = {"origin": 0.0, **kwargs}
    with pytest.raises(RoomError, match=needle):
        Mixer(**kwargs)


def test_stereo_seat_is_averaged_and_int16_scaled():
    m = Mixer(origin=0.0, fade_ms=0, knee=None, initial_delay=0.0)
    m.add_seat("a", RATE)
    m.add_seat("st", RATE, channels=2)
    left = np.full(T, 1000, np.int16)
    right = np.full(T, 3000, np.int16)
    m.push("st", 0, np.stack([left, right], 1), 0.021)
    m.push("st", T, np.stack([left, right], 1).reshape(-1), 0.041)  # interleaved
    ticks = m.tick(0.06)
    audio = [t for t in ticks if t.status["st"] == "audio"]
    assert audio and np.all(audio[0].mixes["a"] == np.float32(2000 / 32768))
