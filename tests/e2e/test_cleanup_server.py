"""Voice cleanup through a real `earshot serve`: the archive stays raw, listeners and the
chosen processors get the filtered audio (stamped with stream time), the others raw."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from earshot.audio import s16_to_f32
from earshot.codec.opus import OpusDecoder
from earshot.dsp.cleanup import FilterChain, parse_filters
from helpers import FIXTURES, ROOT, ServerProcess

pytestmark = pytest.mark.slow
TESTS_ENV = {"PYTHONPATH": str(ROOT / "tests")}
RATE = 16000


def db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64))))


async def publish(url: str, x: np.ndarray, start: dict) -> list[dict]:
    """A plain WebSocket client: start, 20 ms s16 frames, stop; every event it is sent."""
    events: list[dict] = []
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "start", "format": "s16", "rate": RATE,
                                  "channels": 1, **start}))
        first = json.loads(await ws.recv())
        events.append(first)
        if first["type"] != "ready":
            return events
        for i in range(0, len(x), RATE // 50):
            await ws.send(x[i:i + RATE // 50].tobytes())
        await ws.send(json.dumps({"type": "stop"}))
        async for raw in ws:
            events.append(json.loads(raw))
            if events[-1]["type"] == "stopped":
                break
    return events


async def listen(url: str, ready: asyncio.Event, out: dict[str, list], streams: int = 1,
                 audio: str = "f32") -> None:
    """A listener of every stream, until ``streams`` streams have ended: (offset, samples)
    for PCM, (offset, packet, pre_skip) for Opus."""
    async with connect(url.replace("/ws", "/ws/subscribe") + f"?stream=*&audio={audio}") as ws:
        ready.set()
        header = None
        async for raw in ws:
            if isinstance(raw, bytes):
                assert header is not None
                out.setdefault(header["stream"], []).append(
                    (header["offset"], raw, header["pre_skip"]) if audio == "opus" else
                    (header["offset"], np.frombuffer(raw, "<f4").copy()))
                header = None
                continue
            e = json.loads(raw)
            if e["type"] == "audio":
                header = e
            elif e["type"] == "stream_ended":
                streams -= 1
                if not streams:
                    return


async def test_denoised_for_listeners_and_chosen_processors_raw_in_the_archive(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--processor", "level", "--processor", "testprocs:Heard",
                            "--filter-processors", "heard", env=TESTS_ENV)
    speech, sr = sf.read(FIXTURES / "speech_16k.wav", dtype="float32")
    assert sr == RATE
    noise = 0.02 * np.random.default_rng(7).standard_normal(RATE * 3)
    x = np.clip(np.rint((speech[:RATE * 3] + noise) * 32767), -32768, 32767).astype("<i2")
    heard: dict[str, list] = {}
    ready = asyncio.Event()
    sub = asyncio.create_task(listen(server.url, ready, heard))
    await ready.wait()
    events = await publish(server.url, x, {"filters": ["denoise"],
                                           "processors": ["level", "heard"]})
    await asyncio.wait_for(sub, 10)
    assert events[0]["type"] == "ready" and not [e for e in events if e["type"] == "warning"]
    sid = events[0]["stream"]
    # the archive is what the client sent, sample for sample
    rec = httpx.get(f"{server.http}/api/streams/{sid}").json()
    assert np.array_equal(sf.read(server.data_dir / rec["path"], dtype="int16")[0], x)
    # the listener got every frame once, in order, stamped with stream time ...
    parts = heard[sid]
    offsets = [o for o, _ in parts]
    assert offsets[0] == 0 and all(
        o + len(a) == n for (o, a), n in zip(parts, offsets[1:], strict=False))
    y = np.concatenate([a for _, a in parts])
    assert len(y) == len(x)
    # ... and it is the denoised audio: exactly what the chain makes of it offline, aligned
    chain = FilterChain(parse_filters(["denoise"]), RATE)
    raw = s16_to_f32(x)
    want = chain.process(np.concatenate([raw, np.zeros(chain.latency, np.float32)]))
    np.testing.assert_array_equal(y, want[chain.latency:])
    silence = slice(RATE // 10, RATE * 7 // 10)  # the fixture's leading silence: noise only
    assert db(y[silence]) < db(raw[silence]) - 8
    # the chosen processor (heard) got the filtered audio, the other one (level) the raw
    got = [e for e in events if e["type"] == "heard"]
    assert got[0]["offset"] == 0 and sum(e["frames"] for e in got) == len(x)
    assert sum(e["sum"] for e in got) == pytest.approx(float(np.sum(y, dtype=np.float64)),
                                                       rel=1e-5, abs=1e-3)
    levels = [e for e in events if e["type"] == "level" and 0.1 <= e["t"] < 0.65]
    assert levels
    for e in levels:
        block = raw[round(e["t"] * RATE):round(e["t"] * RATE) + RATE // 20]
        assert abs(e["rms"] - db(block)) < 0.5, (e, db(block))  # raw: the noise is there


async def test_agc_by_server_option_and_bad_filters_refused_alone(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--processor", "level", "--filters", "agc:target=-20",
                            "--filter-processors", "level")
    quiet = (0.01 * 32767 * np.sin(2 * np.pi * 440 * np.arange(RATE * 2) / RATE)).astype("<i2")
    bad = await publish(server.url, quiet, {"filters": ["denoise:level=9"]})
    assert bad[0]["type"] == "error" and bad[0]["code"] == "bad_start"
    assert "between 1 and 4" in bad[0]["message"]
    heard: dict[str, list] = {}
    packets: dict[str, list] = {}
    ready, opus_ready = asyncio.Event(), asyncio.Event()
    subs = [asyncio.create_task(listen(server.url, ready, heard, streams=2)),
            asyncio.create_task(listen(server.url, opus_ready, packets, 2, "opus"))]
    await ready.wait()
    await opus_ready.wait()
    events, raw_events = await asyncio.gather(
        publish(server.url, quiet, {"processors": ["level"]}),  # the server's filters: agc
        publish(server.url, quiet, {"processors": ["level"], "filters": []}))  # none: raw
    await asyncio.wait_for(asyncio.gather(*subs), 10)
    sid, raw_sid = events[0]["stream"], raw_events[0]["stream"]
    y = np.concatenate([a for _, a in heard[sid]])
    assert len(y) == len(quiet) and abs(db(y[RATE:]) - -20) < 1  # -43 dBFS brought to -20
    r = np.concatenate([a for _, a in heard[raw_sid]])
    np.testing.assert_array_equal(r, s16_to_f32(quiet))  # no filters: the raw audio
    for stream, want in ((sid, -20), (raw_sid, -43)):  # the Opus relay: filtered too
        dec = OpusDecoder(RATE, 1, pre_skip=packets[stream][0][2])
        assert packets[stream][0][0] == -packets[stream][0][2]  # stream time, as without
        z = np.concatenate([dec.decode(p) for _, p, _ in packets[stream]])[:, 0]
        assert abs(db(z[RATE:RATE * 2 - RATE // 10]) - want) < 1.5, (stream, want)
    late = [e["rms"] for e in events if e["type"] == "level" and e["t"] >= 1]
    assert late and all(abs(v - -20) < 1 for v in late)  # level was given the agc's audio
    raw_late = [e["rms"] for e in raw_events if e["type"] == "level" and e["t"] >= 1]
    assert raw_late and all(abs(v - -43) < 1 for v in raw_late)
    rec = httpx.get(f"{server.http}/api/streams/{sid}").json()
    assert np.array_equal(sf.read(server.data_dir / rec["path"], dtype="int16")[0], quiet)


async def test_a_dropped_and_resumed_stream_gives_listeners_every_filtered_frame_once(
        server_factory: Callable[..., ServerProcess]) -> None:
    """The filters' tail is delivered when the connection drops; the resumed connection
    starts a fresh chain where the archive ends: offsets stay contiguous stream time."""
    server = server_factory()
    rng = np.random.default_rng(8)
    x = (0.1 * 32767 * rng.standard_normal(RATE * 2)).astype("<i2")
    cut = RATE - 123
    heard: dict[str, list] = {}
    ready = asyncio.Event()
    sub = asyncio.create_task(listen(server.url, ready, heard, streams=2))
    await ready.wait()
    start = {"type": "start", "format": "s16", "rate": RATE, "channels": 1,
             "filters": ["denoise", "agc"]}
    async with connect(server.url) as ws:
        await ws.send(json.dumps(start))
        first = json.loads(await ws.recv())
        for i in range(0, cut, 320):
            await ws.send(x[i:min(i + 320, cut)].tobytes())
        while True:  # wait until all of it is acknowledged, then drop the connection
            e = json.loads(await ws.recv())
            if e["type"] == "ack" and e["offset"] == cut:
                break
    sid = first["stream"]
    events = await publish(server.url, x[cut:], {"resume": sid, "offset": cut,
                                                 "resume_token": first["resume_token"],
                                                 "filters": ["denoise", "agc"]})
    assert events[0]["type"] == "ready" and events[0]["offset"] == cut
    await asyncio.wait_for(sub, 10)
    parts = heard[sid]
    assert parts[0][0] == 0 and all(
        o + len(a) == n for (o, a), n in zip(parts, [o for o, _ in parts][1:], strict=False))
    y = np.concatenate([a for _, a in parts])
    assert len(y) == len(x)
    raw = s16_to_f32(x)
    for lo, hi in ((0, cut), (cut, len(x))):  # one chain per connection, each aligned
        chain = FilterChain(parse_filters(["denoise", "agc"]), RATE)
        want = chain.process(np.concatenate([raw[lo:hi], np.zeros(chain.latency, np.float32)]))
        np.testing.assert_array_equal(y[lo:hi], want[chain.latency:])
    rec = httpx.get(f"{server.http}/api/streams/{sid}").json()
    assert np.array_equal(sf.read(server.data_dir / rec["path"], dtype="int16")[0], x)


def test_serve_refuses_bad_or_unavailable_filters(tmp_path: Path) -> None:
    def serve(*args: str, block: bool = False) -> subprocess.CompletedProcess[str]:
        block_it = "sys.modules['webrtc_noise_gain'] = None; " if block else ""  # not installed
        code = f"import sys; {block_it}from earshot.cli import main; sys.exit(main())"
        return subprocess.run([sys.executable, "-c", code, "serve", "--data-dir",
                               str(tmp_path), "--port", "1", *args],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "COLUMNS": "200"})

    bad = serve("--filters", "agc", "gain:db=100")
    assert bad.returncode == 2 and "between -60 and 60" in bad.stdout + bad.stderr
    missing = serve("--filters", "denoise", block=True)
    assert missing.returncode == 2
    assert "pip install 'earshot[cleanup]'" in missing.stdout + missing.stderr
