"""Opus from encoders that know nothing of earshot: no ``pre_skip`` in ``start`` means the
standard libopus lookahead (312 samples at 48 kHz, scaled to the stream's rate). Real
encoders (opuslib, PyAV) into a real server; the default itself: tests/wire/test_pre_skip.py."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from earshot.wire.ingest import default_pre_skip
from helpers import FIXTURES, ServerProcess, best_lag

pytestmark = pytest.mark.slow


def _archive(server: ServerProcess, stream: str) -> np.ndarray:
    rec = httpx.get(f"{server.http}/api/streams/{stream}").json()
    assert rec["format"] == "opus"
    return sf.read(server.data_dir / rec["path"], dtype="float32")[0]


async def _latest_stream(server: ServerProcess) -> str:
    async with httpx.AsyncClient() as c:
        page = (await c.get(f"{server.http}/api/streams", params={"limit": 1})).json()
    return page["streams"][0]["id"]


async def test_opuslib_voip_16k_60ms_frames_line_up(shared_server: ServerProcess) -> None:
    """The classic Python voice-chat client: opuslib, Encoder(16000, 1, 'voip'), 60 ms
    frames, a bare WebSocket with the format in the URL (no ``start`` at all)."""
    opuslib = pytest.importorskip("opuslib_next")
    x16, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="int16")
    assert rate == 16000
    frame = 960  # 60 ms
    enc = opuslib.Encoder(16000, 1, "voip")
    padded = np.concatenate([x16, np.zeros(-len(x16) % frame, np.int16)])
    packets = [enc.encode(padded[i:i + frame].tobytes(), frame)
               for i in range(0, len(padded), frame)]
    url = shared_server.url + "?format=opus&rate=16000&channels=1"
    async with connect(url, max_size=None) as ws:
        for p in packets:
            await ws.send(p)
        await ws.send(json.dumps({"type": "ping", "id": 1}))
        while json.loads(await ws.recv()).get("type") != "pong":
            pass
    stream = await _latest_stream(shared_server)
    for _ in range(100):  # the stream is finalized when the socket closes
        rec = httpx.get(f"{shared_server.http}/api/streams/{stream}").json()
        if rec["state"] != "live":
            break
        import asyncio

        await asyncio.sleep(0.05)
    y = _archive(shared_server, stream)
    x = x16.astype(np.float32) / 32768
    lag, corr = best_lag(y, x, 400)
    assert abs(lag) <= 2 and corr > 0.9, (lag, corr)  # 104 samples late without the default
    # the archive is every decoded sample minus the lookahead: the input plus the zero
    # padding of the last frame, nothing missing at the start
    assert len(y) == len(padded) - default_pre_skip(16000)


async def test_pyav_48k_20ms_frames_line_up(shared_server: ServerProcess) -> None:
    """PyAV's libopus encoder at 48 kHz, 20 ms frames; ``start`` without ``pre_skip`` and
    ``stop`` with the true length."""
    import av

    x, rate = sf.read(FIXTURES / "speech_48k.wav", dtype="float32")
    assert rate == 48000 and x.ndim == 1
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate, ctx.layout, ctx.format, ctx.bit_rate = 48000, "mono", "flt", 32000
    ctx.options = {"frame_duration": "20"}
    ctx.open()
    packets: list[bytes] = []
    frame = 960
    padded = np.concatenate([x, np.zeros(-len(x) % frame, np.float32)])
    for i in range(0, len(padded), frame):
        f = av.AudioFrame.from_ndarray(padded[None, i:i + frame], format="flt", layout="mono")
        f.sample_rate, f.pts = 48000, i
        packets += [bytes(p) for p in ctx.encode(f)]
    packets += [bytes(p) for p in ctx.encode(None)]
    async with connect(shared_server.url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "format": "opus", "rate": 48000}))
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready"
        for p in packets:
            await ws.send(p)
        await ws.send(json.dumps({"type": "stop", "length": len(x)}))
        while (msg := json.loads(await ws.recv()))["type"] != "stopped":
            assert msg["type"] != "error", msg
    assert msg["offset"] == len(x)
    y = _archive(shared_server, ready["stream"])
    assert len(y) == len(x)
    lag, corr = best_lag(y, x, 400)
    assert abs(lag) <= 2 and corr > 0.85, (lag, corr)  # 312 samples late without the default
