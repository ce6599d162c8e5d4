"""Opus: TOC parsing, encode → decode alignment, resume with fresh decoders, concealment,
and Ogg Opus archives checked with independent readers (ffprobe, ffmpeg, PyAV)."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from earshot.codec.opus import OpusDecoder, OpusEncoder, packet_samples, parse_packet
from earshot.errors import ProtocolError, StorageError
from earshot.storage.oggopus import OggOpusWriter, ogg_crc, ogg_page, scan
from helpers import ffprobe_duration, require_tool

av = pytest.importorskip("av")

FIXTURES = Path(__file__).parent.parent / "fixtures"


@cache
def speech(rate: int) -> np.ndarray:
    x, r = sf.read(FIXTURES / f"speech_{rate // 1000}k.wav", dtype="float32")
    assert r == rate
    return x


@cache
def encoded(rate: int) -> tuple[tuple[bytes, ...], int, int]:
    """The whole fixture, fed in irregular chunks: (packets, pre_skip, padding)."""
    x = speech(rate)
    enc = OpusEncoder(rate, 1)
    packets: list[bytes] = []
    for i in range(0, len(x), 1234):
        packets += enc.encode(x[i : i + 1234])
    packets += enc.flush()
    return tuple(packets), enc.pre_skip, enc.padding


def corr(a: np.ndarray, b: np.ndarray, lag: int = 0) -> float:
    """Correlation of a[k + lag] with b[k] over their common span."""
    n = min(len(a), len(b)) - abs(lag)
    a = a[max(lag, 0) : max(lag, 0) + n]
    b = b[max(-lag, 0) : max(-lag, 0) + n]
    return float(np.corrcoef(a, b)[0, 1])


def bad(call, *args) -> ProtocolError:
    with pytest.raises(ProtocolError) as e:
        call(*args)
    assert e.value.code == "bad_opus" and e.value.message
    return e.value


# -- TOC parsing ---------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [16000, 48000])
@pytest.mark.parametrize("frame_ms", [10, 20, 40, 60])
def test_packet_samples_of_real_packets(rate: int, frame_ms: int) -> None:
    x = speech(rate)[: rate // 2]
    enc = OpusEncoder(rate, 1, frame_ms=frame_ms)
    packets = enc.encode(x)
    assert len(packets) == len(x) // enc.frame_size  # one packet per frame, no latency
    dec = OpusDecoder(rate, 1)
    for p in packets:
        n = rate * frame_ms // 1000
        assert packet_samples(p, rate) == dec.samples_per_packet(p) == n
        assert len(dec.decode(p)) == n


def test_packet_samples_codes_0_to_3() -> None:
    silk20, celt2_5 = 1 << 3, 16 << 3  # config 1: SILK NB 20 ms; 16: CELT NB 2.5 ms
    assert packet_samples(bytes([silk20]) + b"abc", 16000) == 320
    assert packet_samples(bytes([silk20 | 1]) + b"abcd", 16000) == 640  # two equal frames
    assert packet_samples(bytes([silk20 | 2, 2]) + b"abcde", 8000) == 320  # sizes 2 and 3
    assert packet_samples(bytes([silk20 | 3, 3]) + b"abcdef", 48000) == 2880  # CBR x3
    vbr_padded = bytes([celt2_5 | 3, 0xC0 | 4, 2, 1, 0, 2]) + b"abcdefgh" + b"\0\0"
    assert packet_samples(vbr_padded, 48000) == 480
    assert packet_samples(bytes([celt2_5 | 3, 48]), 8000) == 960  # 48 x 2.5 ms = 120 ms
    assert parse_packet(bytes([celt2_5 | 4])) == (celt2_5 | 4, 120)  # TOC only: a lost frame


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x0b",  # code 3 without its count byte
        b"\x0b\x00",  # code 3, zero frames
        bytes([16 << 3 | 3, 49]),  # 49 x 2.5 ms > 120 ms
        bytes([1 << 3 | 1]) + b"abc",  # code 1, odd payload
        bytes([1 << 3 | 2, 200, 1]),  # code 2, first frame overruns
        bytes([1 << 3 | 2, 253]),  # code 2, truncated two-byte length
        bytes([1 << 3 | 3, 2]) + b"abc",  # code 3 CBR, 3 bytes for 2 frames
        bytes([1 << 3 | 3, 0x42, 9]),  # padding overruns
        bytes([1 << 3]) + bytes(1276),  # frame above 1275 bytes
        "not bytes",
    ],
)
def test_malformed_packets_are_bad_opus(packet: bytes) -> None:
    bad(packet_samples, packet, 16000)
    dec = OpusDecoder(16000, 1)
    bad(dec.decode, packet)
    good = encoded(16000)[0][10]
    assert len(dec.decode(good)) == 320  # still usable


# -- encode → decode -------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [16000, 48000])
def test_roundtrip_is_sample_aligned(rate: int) -> None:
    x = speech(rate)
    packets, pre_skip, padding = encoded(rate)
    assert pre_skip == rate * 13 // 2000  # libopus lookahead: 6.5 ms
    dec = OpusDecoder(rate, 1, pre_skip=pre_skip)
    y = np.concatenate([dec.decode(p) for p in packets])[:, 0]
    assert len(y) - padding == len(x) == dec.frames - padding
    assert np.all(np.abs(y[len(x) :]) < 0.05)  # the padding is (nearly) silence
    y = y[: len(x)]
    assert corr(x, y) >= 0.9
    assert corr(x, y, -pre_skip) < 0.3  # the check has teeth: ignoring the pre-skip fails
    # best lag: exactly 0 for SILK/CELT (16 kHz); hybrid packets (48 kHz) come back 2-3
    # samples (~50 us) early, as libopus's reference decoder has them
    best = max(range(-6, 7), key=lambda lag: corr(x, y, lag))
    assert 0 <= best <= (0 if rate == 16000 else 3)


def test_voip_application_is_aligned_too() -> None:
    x = speech(16000)[:32000]
    enc = OpusEncoder(16000, 1, application="voip", frame_ms=40)
    packets = enc.encode(x) + enc.flush()
    dec = OpusDecoder(16000, 1, pre_skip=enc.pre_skip)
    y = np.concatenate([dec.decode(p) for p in packets])[:, 0]
    assert len(y) - enc.padding == len(x)
    assert corr(x, y[: len(x)]) >= 0.9


def test_stereo_roundtrip() -> None:
    x48 = speech(48000)[:48000]
    x = np.stack([x48, np.roll(x48, 480) * 0.5], axis=1)
    enc = OpusEncoder(48000, 2, bitrate=64000)
    packets = enc.encode(x) + enc.flush()
    dec = OpusDecoder(48000, 2, pre_skip=enc.pre_skip)
    y = np.concatenate([dec.decode(p) for p in packets])
    assert y.shape == (len(x) + enc.padding, 2)
    assert corr(x[600:, 0], y[600 : len(x), 0]) >= 0.9
    assert corr(x[600:, 1], y[600 : len(x), 1]) >= 0.9


def test_fresh_decoder_mid_stream_keeps_offsets_exact() -> None:
    """Resume: the client resends from packet ``i`` (stream offset ``D_i - pre_skip``), the
    server holds more than that, a fresh decoder drops the overlap (= the warm-up)."""
    rate, x = 16000, speech(16000)
    packets, pre_skip, _ = encoded(rate)
    starts = np.cumsum([0] + [packet_samples(p, rate) for p in packets]) - pre_skip
    i = 200
    offset = int(starts[i])
    held = int(starts[i + 2])  # the server already has two more packets
    dec = OpusDecoder(rate, 1, pre_skip=held - offset)
    y = np.concatenate([dec.decode(p) for p in packets[i:]])[:, 0]
    assert len(y) == int(starts[-1]) - held
    assert corr(x[held:], y[: len(x) - held]) >= 0.9
    # no overlap at all: counts still exact, quality only dips for a packet or two
    cold = OpusDecoder(rate, 1)
    z = np.concatenate([cold.decode(p) for p in packets[i:]])[:, 0]
    assert len(z) == int(starts[-1]) - offset
    assert corr(x[offset + 640 :], z[640 : len(x) - offset]) >= 0.9


def test_conceal_counts_exactly_and_extrapolates() -> None:
    rate = 16000
    packets, pre_skip, _ = encoded(rate)
    frame_rms = [float(np.sqrt(np.mean(speech(rate)[k * 320 : k * 320 + 320] ** 2)))
                 for k in range(len(packets) - 2)]
    loud = int(np.argmax(frame_rms))
    dec = OpusDecoder(rate, 1, pre_skip=pre_skip)
    for p in packets[:loud]:
        dec.decode(p)
    before = dec.frames
    lost = dec.conceal(320)
    assert lost.shape == (320, 1) and lost.dtype == np.float32
    assert float(np.sqrt(np.mean(lost**2))) > 0.02  # speech-like, not silence
    assert dec.conceal(77).shape == (77, 1) and dec.conceal(0).shape == (0, 1)
    assert len(dec.decode(packets[loud + 2])) == 320
    assert dec.frames == before + 320 + 77 + 320 and dec.concealed == 397
    fresh = OpusDecoder(rate, 1, pre_skip=100)
    assert fresh.conceal(90).shape == (0, 1)  # pre-skip applies to concealment too
    assert np.array_equal(fresh.conceal(30), np.zeros((20, 1), np.float32))


def test_pyav_backend_counts_and_alignment() -> None:
    rate = 16000
    x = speech(rate)[: 2 * rate]
    packets, pre_skip, _ = encoded(rate)
    dec = OpusDecoder(rate, 1, pre_skip=pre_skip, backend="pyav")
    assert dec.backend == "pyav"
    y = np.concatenate([dec.decode(p) for p in packets[:101]])[:, 0]
    assert len(y) == 101 * 320 - pre_skip
    assert corr(x, y[: len(x)]) >= 0.9
    bad(dec.decode, b"\x0b")
    assert dec.conceal(100).shape == (100, 1)


# -- Ogg Opus ----------------------------------------------------------------------------------
def _ogg_crc_reference(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def test_ogg_crc() -> None:
    rng = np.random.default_rng(1)
    for n in (0, 1, 27, 300):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert ogg_crc(data) == _ogg_crc_reference(data)
    page = ogg_page(0, 960, 7, 3, [b"x" * 300, b"y"])
    assert page[26] == 3 and list(page[27:30]) == [255, 45, 1]


def _ffmpeg_decode(path: Path, rate: int) -> np.ndarray:
    out = path.with_suffix(".wav")
    subprocess.run([require_tool("ffmpeg"), "-v", "error", "-y", "-i", str(path),
                    "-ar", str(rate), str(out)], check=True)
    y, r = sf.read(out, dtype="float32")
    assert r == rate
    return y


def test_ogg_from_packets_has_the_exact_length(tmp_path: Path) -> None:
    rate, x = 16000, speech(16000)
    packets, pre_skip, _ = encoded(rate)
    path = tmp_path / "a.opus"
    w = OggOpusWriter(path, rate, 1, pre_skip=pre_skip)
    for p in packets:
        w.write_packet(p, packet_samples(p, rate))
    assert w.position == sum(packet_samples(p, rate) for p in packets) - pre_skip
    assert w.close(len(x)) == len(x)
    info = scan(path)
    assert info.eos and info.frames(rate) == len(x) and info.valid_bytes == info.size
    assert info.head.pre_skip_48k == pre_skip * 3 and info.head.input_rate == rate
    # ffprobe reports the last granule, i.e. it counts the 6.5 ms pre-skip as well
    assert abs(ffprobe_duration(path) - len(x) / rate) <= 0.02
    y = _ffmpeg_decode(path, rate)  # pre-skip and end trimming applied by ffmpeg
    assert len(y) == len(x) and corr(x, y) >= 0.9
    with av.open(str(path)) as c:
        n48 = sum(f.samples for f in c.decode(audio=0))
    assert n48 == len(x) * 3


def test_ogg_encode_mode_48k(tmp_path: Path) -> None:
    rate, x = 48000, speech(48000)[: 3 * 48000 + 123]
    path = tmp_path / "b.opus"
    with OggOpusWriter(path, rate, 1, page_ms=500) as w:
        for i in range(0, len(x), 4000):
            w.write(x[i : i + 4000])
    assert w.final_frames == len(x) == scan(path).frames(rate)
    assert abs(ffprobe_duration(path) - len(x) / rate) <= 0.02
    with av.open(str(path)) as c:
        y = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    assert len(y) == len(x) and corr(x, y) >= 0.9


def test_ogg_survives_a_crash_and_reopens(tmp_path: Path) -> None:
    rate, x = 16000, speech(16000)
    packets, pre_skip, _ = encoded(rate)
    path, crashed = tmp_path / "c.opus", tmp_path / "crashed.opus"
    w = OggOpusWriter(path, rate, 1, pre_skip=pre_skip)
    for p in packets[:300]:  # 6 s
        w.write_packet(p)
    shutil.copy(path, crashed)  # what kill -9 would leave behind
    durable = w.durable_position
    assert 6 * rate - 1.2 * rate < durable < 6 * rate - pre_skip
    w.close()
    with open(crashed, "ab") as f:
        f.write(ogg_page(0, 10**6, 1, 99, [b"torn" * 100])[:200])  # a torn page
    info = scan(crashed)
    assert not info.eos and info.frames(rate) == durable and info.valid_bytes < info.size
    y = _ffmpeg_decode(crashed, rate)
    assert len(y) == durable and corr(x[:durable], y) >= 0.9
    # continue from the last good page: the client resends from the packet there
    w2 = OggOpusWriter.reopen(crashed, rate)
    assert w2.position == durable
    starts = np.cumsum([0] + [packet_samples(p, rate) for p in packets]) - pre_skip
    i = int(np.searchsorted(starts, durable))
    assert starts[i] == durable
    for p in packets[i:]:
        w2.write_packet(p)
    assert w2.close(len(x)) == len(x)
    y = _ffmpeg_decode(crashed, rate)
    assert len(y) == len(x) and corr(x, y) >= 0.9
    with pytest.raises(StorageError):
        OggOpusWriter.reopen(crashed, rate)  # finished


def test_ogg_writer_refusals(tmp_path: Path) -> None:
    path = tmp_path / "d.opus"
    w = OggOpusWriter(path, 16000, 1, pre_skip=104)
    with pytest.raises(StorageError):
        OggOpusWriter(path, 16000, 1, pre_skip=104)  # never overwrites
    with pytest.raises(StorageError):
        w.write(np.zeros(320, np.float32))  # remux mode
    bad(w.write_packet, b"\x0b")
    packet = encoded(16000)[0][5]
    bad(w.write_packet, packet, 160)  # duration disagrees with the TOC
    w.write_packet(packet)
    with pytest.raises(StorageError):
        w.close(10_000)  # more than the packets hold
    with pytest.raises(StorageError):
        w.write_packet(packet)  # closed
    with pytest.raises(StorageError):
        OggOpusWriter(tmp_path / "e.opus", 44100, 1)
