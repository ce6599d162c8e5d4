"""The speaking side's echo cancellation, measured in a simulated room.

The room: participant A's microphone hears A's own voice (the near end, ``speech_16k``)
plus what A's speaker plays (the far end, B's voice: ``reading_16k``) coming back after
50-150 ms, 10 dB down (x0.3). B's voice starts 12 s before A speaks, and goes on after A
stops, so there is far-end single talk (what B would hear as its own echo while A is
silent) and double talk (both at once).

Two measures of the echo left in A's cleaned microphone, AEC on against the raw microphone
(what B hears without cancellation):

* single talk: the output's energy where A is silent and B's echo is present (ERLE);
* double talk: where A speaks, the part of the output that a least-squares FIR fit on the
  known echo (±4 ms around its delay, per 0.5 s block) explains, i.e. the echo that is
  still correlated with B's voice.
"""

from __future__ import annotations

import numpy as np
import pytest

from earshot.rooms.echo import VoiceProcessor
from earshot.rooms.errors import RoomError

RATE = 16000
BLOCK = RATE // 100
NEAR_AT = 12 * RATE  # A starts speaking 12 s into B's reading
ECHO_GAIN = 0.3


def _room(speech: np.ndarray, reading: np.ndarray, delay_ms: int, rate: int = RATE):
    far = reading.copy()
    n = len(far) // (rate // 100) * (rate // 100)
    far = far[:n]
    near = np.zeros(n, np.float32)
    at = NEAR_AT * rate // RATE
    near[at:at + len(speech)] = speech
    d = rate * delay_ms // 1000
    echo = np.zeros(n, np.float32)
    echo[d:] = ECHO_GAIN * far[:n - d]
    return near, far, echo, near + echo


def _run(vp: VoiceProcessor, mic: np.ndarray, far: np.ndarray) -> np.ndarray:
    f = vp.frame
    out = np.empty_like(mic)
    for i in range(0, len(mic), f):
        vp.process_reverse(far[i:i + f])
        out[i:i + f] = vp.process(mic[i:i + f])
    return out


def _lag(out: np.ndarray, ref: np.ndarray, rate: int) -> int:
    """The delay of ``ref`` in ``out`` (0..20 ms), by normalised cross-correlation."""
    n = len(ref)
    best, lag = -2.0, 0
    for k in range(0, rate // 50):
        a, b = out[k:], ref[:n - k]
        c = float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b) + 1e-20))
        if c > best:
            best, lag = c, k
    return lag


def _align(out: np.ndarray, lag: int) -> np.ndarray:
    return np.concatenate([out[lag:], np.zeros(lag, np.float32)])


def _single_talk(near: np.ndarray, echo: np.ndarray, rate: int) -> np.ndarray:
    """Blocks after 4 s where A is silent (and was within 10 ms) and B's echo is present."""
    f = rate // 100
    mask = np.zeros(len(near), bool)
    for i in range(4 * rate, len(near) - f, f):
        quiet = not np.any(near[max(0, i - f):i + 2 * f])
        if quiet and np.sqrt(np.mean(echo[i:i + f] ** 2)) > 0.003:
            mask[i:i + f] = True
    return mask


def _echo_energy_in_double_talk(out: np.ndarray, near: np.ndarray, echo: np.ndarray,
                                rate: int) -> float:
    taps = range(-rate // 250, rate // 250 + 1)
    block = rate // 2
    energy, count = 0.0, 0
    for i in range(0, len(out) - block, block):
        if np.mean(near[i:i + block] != 0) < 0.5:
            continue
        if i + taps[0] < 0:
            continue
        x = np.stack([echo[i - t:i - t + block] for t in taps], 1).astype(np.float64)
        y = out[i:i + block].astype(np.float64)
        xtx = x.T @ x
        xtx += np.eye(len(xtx)) * (1e-9 * np.trace(xtx) + 1e-12)  # (blocks where B pauses)
        coef = np.linalg.solve(xtx, x.T @ y)  # least squares, by the normal equations
        energy += float(np.sum((x @ coef) ** 2))
        count += block
    assert count >= 3 * rate  # A speaks for several seconds over B
    return energy / count


def _db(a: float, b: float) -> float:
    return 10 * np.log10(a / b)


@pytest.mark.parametrize("delay_ms", [50, 100, 150])
def test_echo_of_the_far_end_is_20_db_quieter_with_aec(speech, reading, delay_ms):
    near, far, echo, mic = _room(speech, reading, delay_ms)
    off = _run(VoiceProcessor(RATE, aec=False, agc=False, ns=False), mic, far)
    assert np.array_equal(off, mic)  # everything off: what B hears without cancellation
    on = _run(VoiceProcessor(RATE, aec=True, agc=False, ns=False), mic, far)

    lag = _lag(on, near, RATE)
    assert lag == 8 * RATE // 1000  # AEC3's 8 ms
    on_al = _align(on, lag)

    single = _single_talk(near, echo, RATE)
    assert single.sum() > 5 * RATE  # seconds of B alone, to measure on
    erle = _db(float(np.mean(off[single] ** 2)), float(np.mean(on_al[single] ** 2)))
    print(f"delay {delay_ms} ms: single talk {erle:.1f} dB", end="; ")
    assert erle >= 20.0, f"single-talk echo only {erle:.1f} dB down"
    assert erle >= 40.0  # measured 53-69 dB: AEC3's suppressor silences a lone echo

    dt = _db(_echo_energy_in_double_talk(off, near, echo, RATE),
             _echo_energy_in_double_talk(on_al, near, echo, RATE))
    print(f"double talk {dt:.1f} dB")
    assert dt >= 10.0, f"double-talk echo only {dt:.1f} dB down"  # measured 14.6-19.9 dB

    # A's own voice survives (it is what B should hear)
    talk = near != 0
    assert np.corrcoef(on_al[talk], near[talk])[0, 1] >= 0.7  # measured 0.80-0.82

    # the microphone's defaults (AGC and NS on too): AGC lifts what is left, still far down
    full = VoiceProcessor(RATE)
    both = _align(_run(full, mic, far), round(full.latency_ms * RATE / 1000))
    erle_full = _db(float(np.mean(off[single] ** 2)), float(np.mean(both[single] ** 2)))
    print(f"all on {erle_full:.1f} dB", end="; ")
    assert erle_full >= 20.0  # measured 30-50 dB


def test_echo_cancelled_at_48k_with_a_delay_hint(speech, reading):
    import soxr

    s48 = soxr.resample(speech, RATE, 48000).astype(np.float32)
    r48 = soxr.resample(reading, RATE, 48000).astype(np.float32)
    near, far, echo, mic = _room(s48, r48, 100, rate=48000)
    off = _run(VoiceProcessor(48000, aec=False, agc=False, ns=False), mic, far)
    on = _run(VoiceProcessor(48000, aec=True, agc=False, ns=False, delay_ms=100), mic, far)
    lag = _lag(on, near, 48000)
    assert abs(lag - 9 * 48) <= 2  # 8 ms + 1 ms of band split
    single = _single_talk(near, echo, 48000)
    erle = _db(float(np.mean(off[single] ** 2)), float(np.mean(_align(on, lag)[single] ** 2)))
    assert erle >= 20.0, f"single-talk echo only {erle:.1f} dB down"


@pytest.mark.parametrize(("rate", "aec", "agc", "ns"), [
    (16000, True, False, False), (16000, False, False, True), (16000, True, True, True),
    (48000, True, True, True), (48000, False, True, False), (32000, True, False, True),
])
def test_latency_is_what_it_says(speech, rate, aec, agc, ns):
    import soxr

    x = speech if rate == RATE else soxr.resample(speech, RATE, rate).astype(np.float32)
    f = rate // 100
    x = x[:len(x) // f * f]
    vp = VoiceProcessor(rate, aec=aec, agc=agc, ns=ns)
    out = _run(vp, x, np.zeros_like(x))
    assert abs(_lag(out, x, rate) - vp.latency_ms * rate / 1000) <= 2


def test_chunked_calls_pair_blocks_as_interleaved_ones(speech, reading):
    _near, far, _echo, mic = _room(speech[:3 * RATE], reading[:16 * RATE], 80)
    one = _run(VoiceProcessor(RATE), mic, far)
    vp = VoiceProcessor(RATE)
    out = []
    for i in range(0, len(mic), 4 * BLOCK):  # the speaker's callback gives 40 ms at once
        vp.process_reverse(far[i:i + 4 * BLOCK])
        out.append(vp.process(mic[i:i + 4 * BLOCK]))
    assert np.array_equal(np.concatenate(out), one)
    assert vp.stats.reverse_missing == 0 and vp.stats.reverse_dropped == 0
    assert vp.stats.blocks == vp.stats.reverse_blocks == len(mic) // BLOCK


def test_far_end_queue_missing_and_dropped():
    vp = VoiceProcessor(RATE, aec=True, agc=False, ns=False, max_pending=3)
    block = np.full(BLOCK, 0.01, np.float32)
    vp.process(block)  # nothing played yet: silence is the reference
    assert vp.stats.reverse_missing == 1
    vp.process_reverse(np.zeros(5 * BLOCK, np.float32))  # the speaker ran 50 ms ahead
    assert vp.stats.reverse_dropped == 2 and vp.stats.reverse_blocks == 5
    vp.process(np.tile(block, 4))  # 3 pending far blocks, then one missing
    assert vp.stats.reverse_missing == 2 and vp.stats.blocks == 5


def test_switches_rebuild_and_take_effect(speech, reading):
    near, far, echo, mic = _room(speech, reading, 100)
    vp = VoiceProcessor(RATE, aec=True, agc=False, ns=False)
    assert vp.active and vp.latency_ms == 8.0
    half = NEAR_AT  # B alone for the first 12 s
    first = _run(vp, mic[:half], far[:half])
    vp.aec = False  # from now on the echo goes through
    assert vp.stats.rebuilds == 1 and vp.latency_ms == 0.0
    second = _run(vp, mic[half:], far[half:])
    single = _single_talk(near, echo, RATE)
    e1 = float(np.mean(first[single[:half]] ** 2))
    e2 = float(np.mean(second[single[half:]] ** 2))
    assert _db(e2, e1) >= 20.0
    assert not vp.active and vp.latency_ms == 0.0
    x = mic[:BLOCK * 10]
    assert np.array_equal(vp.process(x), x)  # all off: unchanged
    vp.ns = True
    assert vp.latency_ms == 6.0 and vp.stats.rebuilds == 2
    vp.delay_ms = 120
    assert vp.delay_ms == 120


def test_int16_input_is_scaled():
    vp = VoiceProcessor(RATE, aec=False, agc=False, ns=False)
    x = np.array([0, 16384, -32768, 32767] * (BLOCK // 4), np.int16)
    out = vp.process(x)
    assert out.dtype == np.float32
    assert np.array_equal(out, x.astype(np.float32) / 32768)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"rate": 44100}, "44100"), ({"rate": 16000.5}, "integer"), ({"ns_level": 4}, "ns_level"),
    ({"delay_ms": 900}, "delay_ms"), ({"max_pending": 0}, "max_pending"),
])
def test_bad_settings(kwargs, needle):
    with pytest.raises(RoomError, match=needle) as err:
        VoiceProcessor(**kwargs)
    assert err.value.code == "bad_audio"


@pytest.mark.parametrize(("samples", "needle"), [
    (np.zeros(BLOCK + 1, np.float32), "whole number of 10 ms"),
    (np.zeros(0, np.float32), "whole number of 10 ms"),
    (np.zeros((BLOCK, 2), np.float32), "mono"),
    (np.zeros(BLOCK, np.int32), "float32 or int16"),
    (np.full(BLOCK, np.nan, np.float32), "NaN"),
])
def test_bad_frames(samples, needle):
    vp = VoiceProcessor(RATE)
    with pytest.raises(RoomError, match=needle):
        vp.process(samples)
    with pytest.raises(RoomError, match=needle):
        vp.process_reverse(samples)
    assert vp.stats.blocks == 0 and vp.stats.reverse_blocks == 0
