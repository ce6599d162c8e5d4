"""Processors through the real server: VAD segments, slow and failing processors, remote
workers, subscribers, resampling."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from helpers import FIXTURES, ROOT, ServerProcess, of, stream_file

pytestmark = pytest.mark.slow
TESTS_ENV = {"PYTHONPATH": str(ROOT / "tests")}
TRUTH = json.loads((FIXTURES / "speech_16k.json").read_text())["speech"]


@pytest.mark.parametrize("rate", [48000, 16000])
async def test_vad_finds_each_phrase_and_saves_exact_segments(
        shared_server: ServerProcess, rate: int) -> None:
    """Also the resampling check: at 48 kHz the 16 kHz VAD's times map to archive frames."""
    x, sr = sf.read(FIXTURES / f"speech_{rate // 1000}k.wav", dtype="int16")
    assert sr == rate
    pub, events, _ = await stream_file(shared_server.url, x, rate,
                                       processors=["vad", "level"], realtime=False)
    assert of(events, "ready")[0]["processors"] == ["vad", "level"]
    starts, ends, segs = of(events, "speech_start"), of(events, "speech_end"), of(events, "segment")
    assert len(starts) == len(ends) == len(segs) == len(TRUTH)
    for s, e, seg, truth in zip(starts, ends, segs, TRUTH, strict=True):
        assert abs(s["t"] - truth["start_s"]) <= 0.1, (s, truth)
        assert abs(e["end"] - truth["end_s"]) <= 0.1, (e, truth)
        assert e["start"] == s["t"]
        assert seg["start_frame"] == round(e["start"] * rate)
    archive = sf.read(shared_server.data_dir / httpx.get(
        f"{shared_server.http}/api/streams/{pub.stream_id}").json()["path"], dtype="int16")[0]
    assert np.array_equal(archive, x)
    listed = httpx.get(f"{shared_server.http}/api/streams/{pub.stream_id}/segments").json()
    assert [s["segment"] for s in listed["segments"]] == [0, 1, 2]
    for seg in listed["segments"]:
        r = httpx.get(shared_server.http + seg["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        path = Path(f"/tmp/seg-{pub.stream_id}-{seg['segment']}.wav")
        path.write_bytes(r.content)
        y, yr = sf.read(path, dtype="int16")
        path.unlink()
        assert yr == rate
        assert np.array_equal(y, archive[seg["start_frame"]:seg["end_frame"]])
        truth = TRUTH[seg["segment"]]
        assert abs(seg["start_frame"] - truth["start_s"] * rate) <= 0.1 * rate
        assert abs(seg["end_frame"] - truth["end_s"] * rate) <= 0.1 * rate
    assert httpx.get(f"{shared_server.http}/api/streams/{pub.stream_id}/segments/9/audio"
                     ).status_code == 404


async def test_slow_processor_lags_and_drops_while_level_stays_on_time(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--processor", "level", "--processor", "testprocs:Slow,factor=10",
                            "--max-lag", "1", "--drain-timeout", "2", env=TESTS_ENV)
    rate = 16000
    x = (np.random.default_rng(4).standard_normal(rate * 4) * 3000).astype("<i2")
    pub, events, arrived = await stream_file(server.url, x, rate, realtime=True,
                                             processors=["level", "testprocs:Slow"])
    t0 = pub.t0  # type: ignore[attr-defined]
    levels = [(e, at) for e, at in zip(events, arrived, strict=True) if e["type"] == "level"]
    assert len(levels) == 80  # every 50 ms of 4 s
    delays = [at - (t0 + e["t"] + 0.05) for e, at in levels]
    assert np.percentile(delays, 90) < 0.5, delays  # live, not held back by the slow one
    lags = [e for e in of(events, "lag") if e["processor"] == "slow"]
    dropped = [e for e in of(events, "dropped") if e["processor"] == "slow"]
    assert lags and max(e["lag"] for e in lags) >= 1.0
    assert dropped and dropped[-1]["total_seconds"] >= 1.0
    rec = httpx.get(f"{server.http}/api/streams/{pub.stream_id}").json()
    assert np.array_equal(sf.read(server.data_dir / rec["path"], dtype="int16")[0], x)
    metrics = httpx.get(f"{server.http}/metrics").text
    assert 'earshot_processor_dropped_seconds_total{processor="slow"}' in metrics


async def test_failing_processor_is_stopped_alone(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--processor", "testprocs:Boom,after=0.5", "--processor", "level",
                            env=TESTS_ENV)
    rate = 16000
    x = (np.random.default_rng(5).standard_normal(rate * 2) * 3000).astype("<i2")
    pub, events, _ = await stream_file(server.url, x, rate, realtime=True,
                                       processors=["testprocs:Boom", "level"])
    errors = of(events, "error")
    assert len(errors) == 1 and errors[0]["processor"] == "boom"
    assert errors[0]["code"] == "processor_failed" and "RuntimeError: boom" in errors[0]["message"]
    levels = of(events, "level")
    assert len(levels) == 40 and levels[-1]["t"] == pytest.approx(1.95)  # level went on
    assert of(events, "stopped")[0]["offset"] == len(x)
    rec = httpx.get(f"{server.http}/api/streams/{pub.stream_id}").json()
    assert np.array_equal(sf.read(server.data_dir / rec["path"], dtype="int16")[0], x)


async def test_remote_worker_attached_mid_stream(shared_server: ServerProcess) -> None:
    rate = 16000
    x = (np.random.default_rng(6).standard_normal(rate * 6) * 3000).astype("<i2")
    sub_events: list[dict] = []

    async def subscriber() -> None:
        async with connect(shared_server.url.replace("/ws", "/ws/subscribe") + "?stream=*") as ws:
            async for raw in ws:
                e = json.loads(raw)
                sub_events.append(e)
                if e["type"] == "stream_ended":
                    return

    sub = asyncio.create_task(subscriber())
    worker: subprocess.Popen[bytes] | None = None

    async def attach_then_kill() -> None:
        nonlocal worker
        await asyncio.sleep(1.5)
        worker = subprocess.Popen(
            [sys.executable, "-m", "earshot.cli", "worker", "testprocs:Heard", "--url",
             shared_server.url, "--name", "w1"],
            env={**os.environ, **TESTS_ENV}, stderr=subprocess.DEVNULL)
        while not any(e.get("type") == "heard" for e in sub_events):
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        worker.send_signal(signal.SIGKILL)
        worker.wait(5)

    killer = asyncio.create_task(attach_then_kill())
    pub, events, _ = await stream_file(shared_server.url, x, rate, processors=["level"],
                                       realtime=True)
    await killer
    await asyncio.wait_for(sub, 10)
    heard = of(events, "heard")
    assert heard, "worker events reached the sender"
    assert all(e["worker"] == "w1" and e["stream"] == pub.stream_id for e in heard)
    first = heard[0]["offset"]
    assert first >= rate  # attached mid-stream: audio from then on, not from the start
    assert [e["offset"] for e in heard[1:]] == [e["offset"] + e["frames"] for e in heard[:-1]]
    # the worker saw the very samples that were archived
    for e in heard[:5]:
        chunk = x[e["offset"]:e["offset"] + e["frames"]].astype(np.float64) / 32768
        assert e["sum"] == pytest.approx(chunk.sum(), abs=1e-3)
    assert [e["offset"] for e in of(sub_events, "heard")] == [e["offset"] for e in heard]
    # killing the worker harmed nothing
    assert not of(events, "error")
    assert of(events, "stopped")[0]["offset"] == len(x)
    assert of(events, "level")[-1]["t"] == pytest.approx(5.95)
    rec = httpx.get(f"{shared_server.http}/api/streams/{pub.stream_id}").json()
    assert np.array_equal(sf.read(shared_server.data_dir / rec["path"], dtype="int16")[0], x)


async def test_subscriber_to_all_streams_sees_each_correctly_attributed(
        shared_server: ServerProcess) -> None:
    rate = 16000
    quiet = np.zeros(rate * 2, "<i2")
    loud = (np.sin(2 * np.pi * 440 * np.arange(rate * 2) / rate) * 16384).astype("<i2")
    seen: list[dict] = []
    audio_frames: dict[str, int] = {}

    async def subscriber(ready: asyncio.Event) -> None:
        url = shared_server.url.replace("/ws", "/ws/subscribe") + "?stream=*&audio=s16"
        async with connect(url) as ws:
            ready.set()
            header = None
            ended = 0
            async for raw in ws:
                if isinstance(raw, bytes):
                    assert header is not None and len(raw) == header["frames"] * 2
                    audio_frames[header["stream"]] = audio_frames.get(header["stream"], 0) + \
                        header["frames"]
                    header = None
                    continue
                e = json.loads(raw)
                if e["type"] == "audio":
                    header = e
                    continue
                seen.append(e)
                ended += e["type"] == "stream_ended"
                if ended == 2:
                    return

    ready = asyncio.Event()
    sub = asyncio.create_task(subscriber(ready))
    await ready.wait()
    (qa, _, _), (la, _, _) = await asyncio.gather(
        stream_file(shared_server.url, quiet, rate, processors=["level"], realtime=True),
        stream_file(shared_server.url, loud, rate, processors=["level"], realtime=True))
    await asyncio.wait_for(sub, 10)
    levels = {sid: [e["rms"] for e in seen if e["type"] == "level" and e["stream"] == sid]
              for sid in (qa.stream_id, la.stream_id)}
    assert len(levels[qa.stream_id]) == len(levels[la.stream_id]) == 40
    assert all(v == -120.0 for v in levels[qa.stream_id])
    assert all(abs(v - (-9.03)) < 0.1 for v in levels[la.stream_id])  # 0.5 FS sine
    assert audio_frames == {qa.stream_id: 2 * rate, la.stream_id: 2 * rate}
    started = {e["stream"] for e in seen if e["type"] == "stream_started"}
    assert started == {qa.stream_id, la.stream_id}


async def test_unknown_processor_is_a_warning_not_a_failure(shared_server: ServerProcess) -> None:
    x = np.zeros(1600, "<i2")
    _, events, _ = await stream_file(shared_server.url, x, 16000,
                                       processors=["level", "os:system", "nope"],
                                       realtime=False)
    warns = [e for e in of(events, "warning") if e["code"] == "processor_unavailable"]
    assert len(warns) == 2 and "os:system" in warns[0]["message"]
    assert of(events, "ready")[0]["processors"] == ["level"]
    assert of(events, "stopped")[0]["offset"] == 1600


async def test_level_as_a_default_is_made_for_subscribers_not_the_sender(
        shared_server: ServerProcess) -> None:
    """``level`` on demand, through a real server: a native sender naming no processors and
    a classic snippet are sent no readings (nobody watching: none are made); with a
    subscriber to the stream, it gets every reading on the 50 ms grid and the sender still
    none; a sender that names ``level`` gets them itself."""
    rate = 16000
    x = (np.random.default_rng(8).standard_normal(rate) * 3000).astype("<i2")
    pub, events, _ = await stream_file(shared_server.url, x, rate, processors=None,
                                       realtime=False)
    assert of(events, "ready")[0]["processors"] == ["level"] and not of(events, "level")
    assert of(events, "stopped")[0]["offset"] == len(x)
    async with connect(shared_server.url + "?rate=16000&format=s16") as ws:  # the snippet
        for i in range(0, len(x), 1600):
            await ws.send(x[i:i + 1600].tobytes())
        got = [json.loads(await ws.recv())]
        with pytest.raises(TimeoutError):  # nothing more comes: no acks, no readings
            got.append(json.loads(await asyncio.wait_for(ws.recv(), 0.5)))
    assert [m["type"] for m in got] == ["ready"]

    seen: list[dict] = []
    subscribed = asyncio.Event()

    async def subscriber() -> None:
        async with connect(shared_server.url.replace("/ws", "/ws/subscribe") + "?stream=*") as ws:
            started = set()
            async for raw in ws:
                e = json.loads(raw)
                subscribed.set()
                seen.append(e)
                if e["type"] == "stream_started":
                    started.add(e["stream"])
                if e["type"] == "stream_ended" and e["stream"] in started:
                    return

    sub = asyncio.create_task(subscriber())
    await asyncio.wait_for(subscribed.wait(), 5)
    pub, events, _ = await stream_file(shared_server.url, x, rate, processors=None,
                                       realtime=False)
    await asyncio.wait_for(sub, 10)
    assert not of(events, "level")  # the sender: none
    readings = [e for e in of(seen, "level") if e["stream"] == pub.stream_id]
    assert [e["t"] for e in readings] == [pytest.approx(0.05 * k) for k in range(20)]
    ref = 20 * np.log10(np.sqrt(np.mean((x[:800] / 32768.0) ** 2)))
    assert readings[0]["rms"] == pytest.approx(ref, abs=0.05)
    _, events, _ = await stream_file(shared_server.url, x, rate, processors=["level"],
                                     realtime=False)
    assert [e["t"] for e in of(events, "level")] == [pytest.approx(0.05 * k) for k in range(20)]
