"""Voice cleanup core (earshot.dsp.cleanup) on real signals: gain, AGC, noise suppression,
chunking, latency and stream-time alignment."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
import soundfile as sf

from earshot.dsp.cleanup import (
    AlignedCleanup,
    FilterChain,
    FilterError,
    parse_filters,
    start_filters,
)
from earshot.errors import MissingDependency, ProtocolError
from earshot.server.streams.cleanup import open_cleanup
from helpers import FIXTURES


def db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64))))


def tone(rate: int, seconds: float, amp: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def run(chain: FilterChain, x: np.ndarray, step: int) -> np.ndarray:
    return np.concatenate([chain.process(x[i:i + step]) for i in range(0, len(x), step)])


def test_parse_specs_and_errors() -> None:
    specs = parse_filters(["gain:db=6", "agc", {"name": "denoise", "level": 3}])
    assert [str(s) for s in specs] == ["gain:db=6", "agc:target=-20,max_gain=30",
                                       "denoise:level=3"]
    assert parse_filters("agc;denoise:level=1")[1].params == {"level": 1}
    for bad, words in [("loud", "unknown filter 'loud'"), ("gain", "needs db"),
                       ("gain:db=99", "between -60 and 60"), ("denoise:level=2.5", "integer"),
                       ("agc:speed=2", "no parameter 'speed'"), ("gain:db", "key=value"),
                       ({"db": 3}, "no 'name'"), (7, "string or an object")]:
        with pytest.raises(FilterError, match=words):
            parse_filters([bad])  # type: ignore[list-item]
    with pytest.raises(ProtocolError) as err:
        start_filters(["denoise:level=9"])
    assert err.value.code == "bad_start" and "between 1 and 4" in err.value.message
    assert start_filters(None) is None and start_filters([]) == ()


@pytest.mark.parametrize("channels", [1, 2])
def test_gain_is_exact_and_has_no_latency(channels: int) -> None:
    x = np.random.default_rng(0).uniform(-0.3, 0.3, (4801, channels)).astype(np.float32)
    chain = FilterChain(parse_filters(["gain:db=6"]), 48000, channels)
    assert chain.latency == 0
    y = run(chain, x, 333)
    np.testing.assert_array_equal(y, x * np.float32(10 ** (6 / 20)))
    one = FilterChain(parse_filters(["gain:db=-20"]), 48000, 1).process(x[:, 0])
    assert one.shape == (4801,) and one.dtype == np.float32
    np.testing.assert_allclose(one, x[:, 0] / 10, rtol=1e-6)


@pytest.mark.parametrize("rate", [16000, 48000])
def test_agc_brings_quiet_and_loud_tones_to_the_target(rate: int) -> None:
    for amp in (0.01, 0.7):  # -43 and -6 dBFS (RMS)
        x = tone(rate, 3.0, amp)
        y = run(FilterChain(parse_filters(["agc:target=-20"]), rate), x, rate // 50)
        assert abs(db(y[2 * rate:]) - -20) < 1.0, (amp, db(y[2 * rate:]))
    # at most max_gain: a -53.5 dBFS tone gets 12 dB with max_gain=12
    x = tone(rate, 2.0, 0.003)
    y = FilterChain(parse_filters(["agc:target=-20,max_gain=12"]), rate).process(x)
    assert abs(db(y[rate:]) - (db(x[rate:]) + 12)) < 0.1
    # silence stays silence (no gain pumped into digital zeros)
    assert not FilterChain(parse_filters(["agc"]), rate).process(np.zeros(rate)).any()


def speech_and_noise(rate: int) -> tuple[np.ndarray, np.ndarray]:
    speech, r = sf.read(FIXTURES / ("speech_16k.wav" if rate == 16000 else "speech_48k.wav"),
                        dtype="float32")
    assert r == rate
    speech = speech[: rate * 4]
    noise = (0.02 * np.random.default_rng(1).standard_normal(len(speech))).astype(np.float32)
    return speech, noise


@pytest.mark.parametrize("rate", [16000, 48000])
def test_denoise_lowers_the_noise_floor_and_keeps_the_speech(rate: int) -> None:
    speech, noise = speech_and_noise(rate)
    chain = FilterChain(parse_filters(["denoise:level=2"]), rate)
    y = run(chain, speech + noise, rate // 50)
    y = y[chain.latency:]  # aligned with the input
    n = len(y)
    quiet = np.abs(speech[:n]) < 1e-4  # the fixture's leading digital silence
    loud = np.zeros(n, bool)
    env = np.convolve(np.abs(speech[:n]), np.ones(rate // 50) / (rate // 50), "same")
    loud[env > 0.05] = True
    assert quiet[: rate // 2].all() and loud.sum() > rate // 2
    floor_in, floor_out = db(noise[:n][quiet][rate // 10:]), db(y[quiet][rate // 10:])
    assert floor_out < floor_in - 8, (floor_in, floor_out)  # the noise floor: >= 8 dB down
    kept = db(y[loud]) - db(speech[:n][loud])
    assert kept > -3, kept  # the speech keeps its energy (within 3 dB)


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
@pytest.mark.parametrize("spec", ["denoise", "agc", "gain:db=3,agc,denoise:level=1"])
def test_output_does_not_depend_on_chunking(rate: int, spec: str) -> None:
    x = np.random.default_rng(2).uniform(-0.2, 0.2, (rate // 2, 2)).astype(np.float32)
    x += tone(rate, 0.5, 0.3)[:, None]
    specs = parse_filters(spec.split(","))
    a = run(FilterChain(specs, rate, 2), x, max(1, rate // 1000))  # 1 ms chunks
    b = run(FilterChain(specs, rate, 2), x, rate // 10)  # 100 ms chunks
    c = run(FilterChain(specs, rate, 2), x, 7)  # odd ones
    assert a.shape == x.shape
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("rate", [16000, 48000, 8000])
def test_latency_is_fixed_and_aligned_output_keeps_stream_time(rate: int) -> None:
    """A click at frame k comes out of AlignedCleanup stamped at frame k, and the aligned
    output covers exactly the frames fed (no more, no less), whatever the chunks."""
    n = rate  # one second
    x = (0.01 * np.random.default_rng(3).standard_normal((n, 1))).astype(np.float32)
    k = rate // 2 + 37
    x[k:k + rate // 100] += 0.8  # a 10 ms burst
    start = 12345  # a stream that (re)opened at frame 12345
    ac = AlignedCleanup(parse_filters(["denoise:level=1"]), rate, 1, start)
    delay16 = 96 * rate // 16000
    assert ac.latency == ac.chain.latency and ac.latency >= 160 * rate // 16000 + delay16
    parts, firsts, pos = [], [], start
    for step in (1, 50, rate // 50, 333, rate // 10) * 100:
        if pos - start >= n:
            break
        chunk = x[pos - start:pos - start + step]
        out, first = ac.feed(chunk, pos)
        parts.append(out)
        firsts.append((first, len(out)))
        pos += len(chunk)
    out, first = ac.tail()
    parts.append(out)
    firsts.append((first, len(out)))
    y = np.concatenate(parts)
    assert len(y) == n and firsts[0][0] == start
    assert all(a + la == b for (a, la), (b, _) in itertools.pairwise(firsts))
    env = np.abs(y[:, 0])
    onset = int(np.argmax(env > 0.3))
    assert abs(onset - k) <= max(2, rate // 4000), (onset, k)  # within 0.25 ms


def test_a_jump_in_offsets_starts_a_fresh_chain() -> None:
    ac = AlignedCleanup(parse_filters(["gain:db=6", "agc"]), 16000, 1, 0)
    x = tone(16000, 0.1, 0.1)[:, None]
    out, first = ac.feed(x, 0)
    assert first == 0 and len(out) == len(x)  # no latency: all of it at once
    out, first = ac.feed(x, 5000)  # a gap (nobody listened meanwhile)
    assert first == 5000 and len(out) == len(x)


def test_a_missing_library_is_a_warning_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from earshot.config import Settings

    monkeypatch.setitem(sys.modules, "webrtc_noise_gain", None)  # as if not installed
    with pytest.raises(MissingDependency, match=r"pip install 'earshot\[cleanup\]'"):
        FilterChain(parse_filters(["denoise"]), 16000)
    cleanup, warnings = open_cleanup(Settings(), parse_filters(["agc", "denoise"]), 16000, 1, 0)
    assert cleanup is not None and [s.name for s in cleanup.specs] == ["agc"]
    assert [w["code"] for w in warnings] == ["filter_unavailable"]
    assert "earshot[cleanup]" in warnings[0]["message"] and warnings[0]["filter"] == "denoise"
    none, _ = open_cleanup(Settings.of(filters=("denoise",)), None, 16000, 1, 0)
    assert none is None


@pytest.mark.parametrize("rate", [8000, 22050, 32000, 44100, 48000])
def test_the_resampled_denoise_never_runs_dry(rate: int) -> None:
    """The fixed latency covers the resamplers' buffering at every point, for any chunks."""
    chain = FilterChain(parse_filters(["denoise"]), rate)
    rng = np.random.default_rng(rate)
    x = (0.1 * rng.standard_normal(rate * 5)).astype(np.float32)
    i = 0
    while i < len(x):
        step = int(rng.choice([1, 3, rate // 1000, rate // 50, rate // 7]))
        chain.process(x[i:i + step])
        i += step
    assert chain._filters[0]._out.short == 0  # type: ignore[attr-defined]


def test_start_message_filters_field() -> None:
    from earshot.wire.ingest import Limits, Start, parse_message

    limits = Limits()
    msg = parse_message('{"type":"start","rate":16000,"filters":["agc",'
                        '{"name":"gain","db":-3}]}', limits)
    assert isinstance(msg, Start)
    assert [str(s) for s in msg.filters or ()] == ["agc:target=-20,max_gain=30", "gain:db=-3"]
    assert parse_message('{"type":"start"}', limits).filters is None  # type: ignore[union-attr]
    for bad in ('"agc"', '["gain:db=nan"]', '[["agc"]]', '[{"name":1}]',
                '[' + ','.join(['"agc"'] * 9) + ']', '[{"name":"gain","db":[1]}]'):
        with pytest.raises(ProtocolError) as err:
            parse_message('{"type":"start","filters":' + bad + '}', limits)
        assert err.value.code == "bad_start" and "filter" in err.value.message
