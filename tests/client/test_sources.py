"""Edge capture (client/sources.py): soxr resampling and a true downmix from any rate, devices
by name or index. (`earshot stream --rate --channels` into a real server:
tests/e2e/test_capture.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from earshot.client.sources import Conditioner, FileSource, mix_channels, resolve_device
from earshot.errors import ClientError


def tone(freq: float, rate: int, n: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


def amplitude_at(x: np.ndarray, freq: float, rate: int) -> float:
    """Amplitude of the component at ``freq`` (windowed DFT at that one frequency)."""
    w = np.hanning(len(x))
    basis = np.exp(-2j * np.pi * freq * np.arange(len(x)) / rate)
    return float(2 * abs(np.sum(x * w * basis)) / np.sum(w))


def run_blocks(cond: Conditioner, x: np.ndarray, block: int) -> np.ndarray:
    out = [cond.process(x[i:i + block]) for i in range(0, len(x), block)]
    return np.concatenate([*out, cond.flush()])


def test_48k_to_16k_is_band_limited_never_every_third_sample() -> None:
    rate, n = 48000, 48000
    x = tone(1000, rate, n) + tone(10000, rate, n, 0.3)  # 10 kHz is above 16 kHz's Nyquist
    y = run_blocks(Conditioner(rate, 1, 16000, 1), x[:, None], 441)[:, 0]  # odd block size
    assert len(y) == 16000  # exactly a second, after the tail
    mid = y[2000:14000]
    assert amplitude_at(mid, 1000, 16000) == pytest.approx(0.5, abs=0.01)
    assert amplitude_at(mid, 6000, 16000) < 1e-3  # where decimation would alias 10 kHz
    naive = x[::3][2000:14000]
    assert amplitude_at(naive, 6000, 16000) > 0.25  # ...as taking every 3rd sample does


def test_stereo_to_mono_is_the_mean_of_both_sides() -> None:
    rate, n = 44100, 44100
    left = tone(440, rate, n) + tone(3000, rate, n, 0.4)
    right = tone(440, rate, n) - tone(3000, rate, n, 0.4)  # 3 kHz cancels in (L+R)/2
    x = np.stack([left, right], axis=1)
    y = run_blocks(Conditioner(rate, 2, 16000, 1), x, 1024)[:, 0]
    assert len(y) == round(n * 16000 / rate)
    mid = y[1000:-1000]
    assert amplitude_at(mid, 440, 16000) == pytest.approx(0.5, abs=0.01)
    assert amplitude_at(mid, 3000, 16000) < 1e-3  # the left channel alone would keep 0.4
    same_rate = Conditioner(rate, 2, rate, 1).process(x[:100])
    np.testing.assert_allclose(same_rate[:, 0], (left[:100] + right[:100]) / 2, atol=1e-7)


def test_channel_mixing_rules() -> None:
    x = np.array([[1, 2, 3, 4]], np.float32)
    np.testing.assert_allclose(mix_channels(x, 1), [[2.5]])
    np.testing.assert_allclose(mix_channels(x, 2), [[2.0, 3.0]])  # (1+3)/2, (2+4)/2
    np.testing.assert_allclose(mix_channels(x[:, :1], 2), [[1.0, 1.0]])
    assert Conditioner(16000, 1, 16000, 1).identity
    pcm = Conditioner(16000, 1, 16000, 1).process(np.array([[16384]], np.int16))
    assert pcm.dtype == np.float32 and pcm[0, 0] == 0.5


DEVICES = [
    {"index": 0, "name": "HDA Intel PCH: ALC257 Analog (hw:0,0)", "channels": 2, "rate": 48000},
    {"index": 3, "name": "USB Audio Device: - (hw:1,0)", "channels": 1, "rate": 44100},
    {"index": 5, "name": "ReSpeaker 4 Mic Array (hw:2,0)", "channels": 6, "rate": 16000},
    {"index": 7, "name": "default", "channels": 32, "rate": 44100},
]


def test_devices_by_index_or_by_part_of_the_name() -> None:
    assert resolve_device(None, DEVICES) is None
    assert resolve_device(3, DEVICES) == 3
    assert resolve_device("5", DEVICES) == 5
    assert resolve_device("respeaker", DEVICES) == 5
    assert resolve_device("USB Audio", DEVICES) == 3
    assert resolve_device("default", DEVICES) == 7
    with pytest.raises(ClientError, match="no input device 4; inputs: 0: HDA"):
        resolve_device(4, DEVICES)
    with pytest.raises(ClientError, match="no input device matches 'bluetooth'"):
        resolve_device("bluetooth", DEVICES)
    with pytest.raises(ClientError, match="matches several input devices"):
        resolve_device("hw:", DEVICES)


def test_a_file_source_converts_like_a_microphone(tmp_path: Path) -> None:
    f = tmp_path / "st.wav"
    x = np.stack([tone(500, 48000, 9600), tone(500, 48000, 9600)], axis=1)
    sf.write(f, x, 48000, subtype="FLOAT")
    src = FileSource(f, rate=16000, channels=1)
    assert (src.info.rate, src.info.channels, src.info.format, src.info.frames) == \
        (16000, 1, "f32", 3200)
