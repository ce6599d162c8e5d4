"""StreamDecoder: compressed bytes in any pieces → exactly the PCM ffmpeg decodes."""

from __future__ import annotations

import random
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from earshot.integrations.common import DoorError
from earshot.integrations.decode import StreamDecoder
from helpers import require_tool

pytest.importorskip("av")

FIXTURE = Path(__file__).parents[1] / "fixtures" / "reading_16k.wav"


SECONDS = 10  # of the reading, encoded: enough for every check, and quick


def encode(tmp_path: Path, name: str, *args: str, source: Path = FIXTURE) -> Path:
    out = tmp_path / name
    subprocess.run([require_tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-y",
                    "-t", str(SECONDS), "-i", str(source), *args, str(out)], check=True)
    return out


def ffmpeg_decode(path: Path, fmt: str, channels: int) -> np.ndarray:
    """ffmpeg's own decode of the bytes read from a pipe, as float32 (frames, channels)."""
    out = subprocess.run([require_tool("ffmpeg"), "-hide_banner", "-loglevel", "error",
                          "-f", fmt, "-i", "pipe:0", "-f", "f32le", "-"],
                         input=path.read_bytes(), capture_output=True, check=True).stdout
    return np.frombuffer(out, "<f4").reshape(-1, channels)


def decode_in_pieces(data: bytes, fmt: str | None, seed: int = 1) -> tuple[StreamDecoder,
                                                                           np.ndarray]:
    rng = random.Random(seed)
    dec = StreamDecoder(fmt)
    blocks, i = [], 0
    while i < len(data):
        n = rng.choice([1, 7, 100, 417, 4096, 20000])
        blocks += dec.feed(data[i:i + n])
        i += n
    blocks += dec.close()
    assert dec.error is None
    return dec, np.concatenate(blocks)


@pytest.mark.parametrize("name, args, fmt, rate", [
    ("r.mp3", ("-c:a", "libmp3lame", "-b:a", "64k"), "mp3", 16000),
    ("r.ogg", ("-c:a", "libopus", "-b:a", "32k"), "ogg", 48000),  # Opus decodes at 48 kHz
    ("r.oga", ("-c:a", "libvorbis", "-q:a", "3"), "ogg", 16000),
])
def test_decodes_exactly_as_ffmpeg_does(tmp_path: Path, name: str, args: tuple[str, ...],
                                        fmt: str, rate: int) -> None:
    path = encode(tmp_path, name, *args)
    dec, x = decode_in_pieces(path.read_bytes(), fmt)
    ref = ffmpeg_decode(path, fmt, 1)
    assert (dec.rate, dec.channels) == (rate, 1)
    assert x.dtype == np.float32 and x.shape == ref.shape
    assert np.max(np.abs(x - ref)) < 1e-6
    assert dec.frames == len(x)
    # and it is the reading: within one frame of the source's length, correlated
    src, _ = sf.read(FIXTURE, dtype="float32", frames=SECONDS * 16000)
    n = len(src) * rate // 16000
    assert abs(len(x) - n) <= 1152 * rate // 16000
    if rate == 16000:
        m = min(len(src), len(x))
        assert np.corrcoef(src[:m], x[:m, 0])[0, 1] > 0.98


def test_flac_is_lossless_sample_for_sample(tmp_path: Path) -> None:
    path = encode(tmp_path, "r.flac", "-c:a", "flac")
    dec, x = decode_in_pieces(path.read_bytes(), "flac", seed=7)
    src, _ = sf.read(FIXTURE, dtype="int16", frames=SECONDS * 16000)
    assert dec.rate == 16000 and x.shape == (len(src), 1)
    assert np.array_equal(np.rint(x[:, 0] * 32768).astype(np.int16), src)


def test_stereo_44k_keeps_its_channels_apart(tmp_path: Path) -> None:
    wav = tmp_path / "stereo.wav"
    t = np.arange(44100 * 2) / 44100
    sf.write(wav, np.stack([0.5 * np.sin(2 * np.pi * 440 * t),
                            0.5 * np.sin(2 * np.pi * 1000 * t)], axis=1), 44100)
    path = encode(tmp_path, "s.mp3", "-c:a", "libmp3lame", "-b:a", "128k", source=wav)
    dec, x = decode_in_pieces(path.read_bytes(), "mp3")
    ref = ffmpeg_decode(path, "mp3", 2)
    assert (dec.rate, dec.channels) == (44100, 2) and x.shape == ref.shape
    assert np.max(np.abs(x - ref)) < 1e-6
    spectrum = np.abs(np.fft.rfft(x[44100:88200], axis=0))
    assert np.argmax(spectrum[:, 0]) == 440 and np.argmax(spectrum[:, 1]) == 1000


def test_probes_the_format_when_not_given(tmp_path: Path) -> None:
    path = encode(tmp_path, "r.ogg", "-c:a", "libopus", "-b:a", "32k")
    dec, x = decode_in_pieces(path.read_bytes(), None)
    assert dec.codec == "opus" and dec.rate == 48000
    assert x.shape == ffmpeg_decode(path, "ogg", 1).shape


def test_blocks_come_while_the_bytes_arrive_and_notify_wakes_the_reader(
        tmp_path: Path) -> None:
    data = encode(tmp_path, "r.mp3", "-c:a", "libmp3lame", "-b:a", "64k").read_bytes()
    woken = threading.Event()
    dec = StreamDecoder("mp3", notify=woken.set)
    dec.feed(data[:len(data) // 2])
    assert woken.wait(10)
    got = []
    for _ in range(200):  # the first half decodes before the input ends
        got += dec.take()
        if sum(len(b) for b in got) > 16000 * 3:
            break
        woken.wait(0.05)
        woken.clear()
    assert sum(len(b) for b in got) > 16000 * 3 and not dec.done
    dec.feed(data[len(data) // 2:])
    got += dec.close()
    assert sum(len(b) for b in got) == dec.frames == len(ffmpeg_decode(
        tmp_path / "r.mp3", "mp3", 1))


def test_bytes_that_are_not_audio_end_with_a_clear_error() -> None:
    dec = StreamDecoder("mp3")
    dec.feed(b"<html><body>this is not an mp3 stream</body></html>" * 500)
    assert dec.close() == []
    assert isinstance(dec.error, DoorError) and dec.error.code == "bad_audio"
    assert "cannot decode" in dec.error.message
    with pytest.raises(DoorError):  # once failed, more input is refused
        dec.feed(b"x")


def test_input_beyond_the_buffer_limit_is_refused() -> None:
    dec = StreamDecoder("mp3", max_buffered=1000)
    # the decoder thread may be reading, so the limit is on what waits: 2000 bytes at once
    with pytest.raises(DoorError) as info:
        dec.feed(b"\0" * 2000)
    assert info.value.code == "decoder_behind"
    dec.abort()
    dec.close()


def test_abort_ends_the_thread_without_waiting_for_input() -> None:
    dec = StreamDecoder("mp3")
    dec.abort()
    dec.close(timeout=5)
    assert dec.done
