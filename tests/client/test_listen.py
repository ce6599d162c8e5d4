"""The end of a listened stream (client/listen.py): the jitter buffer drains in order, the
recording gets the last partial frame, fills what the relay dropped and stops at --seconds."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from earshot.client.jitter import JitterBuffer
from earshot.client.listen import Listener


def test_drain_plays_out_everything_buffered_in_order() -> None:
    jb = JitterBuffer(16000, 320)
    for k in (0, 1, 2, 4):
        jb.push(k * 320, 320, k, 0.0)
    outs = jb.drain()
    assert [(o.kind, o.media_offset, o.payload) for o in outs] == [
        ("audio", 0, 0), ("audio", 320, 1), ("audio", 640, 2), ("concealed", 960, None),
        ("audio", 1280, 4)]
    assert (jb.stats.played_frames, jb.stats.lost_frames, jb.stats.buffered_packets) == (4, 1, 0)
    assert jb.drain() == []


def _feed(listener: Listener, x: np.ndarray, batch: int) -> None:
    for off in range(0, len(x), batch):
        part = x[off:off + batch]
        listener._audio({"type": "audio", "offset": 1000 + off, "frames": len(part),
                         "rate": 16000, "channels": 1, "format": "s16"},
                        part.astype("<i2").tobytes(), 0.0)
    listener._finish()


@pytest.mark.parametrize("record", [True, False])
def test_listener_writes_the_last_partial_frame(tmp_path: Path, record: bool) -> None:
    """Recording writes every frame; playing through the jitter buffer plays out what is
    buffered at the end; both end with the stream's last partial 20 ms frame."""
    x = (np.random.default_rng(7).uniform(-0.5, 0.5, 16000 + 100) * 32767).astype(np.int16)
    out = tmp_path / "heard.wav"
    listener = Listener("ws://127.0.0.1:1/ws", "s", out=out, record=record)
    _feed(listener, x, 1600)  # 100 ms batches, as the relay sends them
    if not record:
        asyncio.run(listener._playout())
    listener._close_sinks()
    y = sf.read(out, dtype="int16")[0]
    assert len(y) == len(x) and np.array_equal(y, x)
    s = listener.stats.summary()
    assert s["recorded"] is record and s["first_offset"] == 1000
    assert math.isclose(s["seconds"], len(x) / 16000) and s["concealed_ms"] == 0


def test_recording_fills_what_the_relay_dropped(tmp_path: Path) -> None:
    x = np.arange(1, 3201, dtype=np.int16)
    listener = Listener("ws://127.0.0.1:1/ws", "s", out=tmp_path / "r.wav")
    hdr = {"type": "audio", "rate": 16000, "channels": 1, "format": "s16"}
    listener._audio({**hdr, "offset": 0, "frames": 1600}, x[:1600].tobytes(), 0.0)
    listener._audio({**hdr, "offset": 1920, "frames": 1280}, x[1920:].tobytes(), 0.1)
    listener._finish()
    listener._close_sinks()
    y = sf.read(tmp_path / "r.wav", dtype="int16")[0]
    assert np.array_equal(y[:1600], x[:1600]) and not y[1600:1920].any()
    assert np.array_equal(y[1920:], x[1920:]) and listener.stats.concealed_ms == 20


def test_recording_stops_at_seconds(tmp_path: Path) -> None:
    x = np.arange(1, 3201, dtype=np.int16)
    listener = Listener("ws://127.0.0.1:1/ws", "s", out=tmp_path / "r.wav", seconds=0.05)
    listener._audio({"type": "audio", "offset": 0, "frames": 3200, "rate": 16000,
                     "channels": 1, "format": "s16"}, x.tobytes(), 0.0)
    listener._close_sinks()
    assert listener._ended.is_set()
    assert np.array_equal(sf.read(tmp_path / "r.wav", dtype="int16")[0], x[:800])


def test_playback_without_sounddevice_is_refused_before_connecting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Playing (the default of ``earshot listen``) on an install without the mic extra: one
    clear error naming what is missing, before any connection (port 1 would refuse it)."""
    from earshot.errors import MissingDependency

    monkeypatch.setitem(__import__("sys").modules, "sounddevice", None)  # not installed
    listener = Listener("ws://127.0.0.1:1/ws", "s1", play=True)
    with pytest.raises(MissingDependency) as got:
        asyncio.run(listener.run())
    assert str(got.value).startswith("playback needs sounddevice")
    assert "pip install 'earshot[mic]'" in str(got.value)
    assert listener.stats.bytes_in == 0


def test_opus_without_a_decoder_is_refused_before_connecting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from earshot.codec import opus
    from earshot.errors import MissingDependency

    monkeypatch.setattr(opus, "decoder_missing", lambda: "Opus support needs PyAV")
    with pytest.raises(MissingDependency, match="--codec opus: Opus support needs PyAV"):
        asyncio.run(Listener("ws://127.0.0.1:1/ws", "s1", codec="opus").run())
