"""Opus on the wire, Ogg Opus archives, kill -9 + resume with Opus, and the live relay."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from earshot.client import OpusPublisher, Reconnect, send_file
from helpers import FIXTURES, ServerProcess, best_alignment, best_lag, ffprobe_duration

pytestmark = pytest.mark.slow


def archive_of(server: ServerProcess, stream: str) -> tuple[np.ndarray, dict]:
    rec = httpx.get(f"{server.http}/api/streams/{stream}").json()
    return sf.read(server.data_dir / rec["path"], dtype="float32")[0], rec


@pytest.mark.parametrize("rate", [16000, 48000])
async def test_opus_stream_arrives_with_the_right_length_and_content(
        shared_server: ServerProcess, rate: int) -> None:
    src = FIXTURES / f"speech_{rate // 1000}k.wav"
    x = sf.read(src, dtype="float32")[0]
    result = await send_file(shared_server.url, src, codec="opus")
    assert result["format"] == "opus" and result["frames"] == len(x)
    pcm_bytes = len(x) * 2
    assert result["bytes_sent"] * 8 < pcm_bytes  # at least 8x smaller than PCM16
    y, rec = archive_of(shared_server, result["stream"])
    assert rec["format"] == "opus" and len(y) == len(x)  # sample-exact, padding trimmed
    lag, corr = best_lag(y, x)
    assert abs(lag) <= 3 and corr >= 0.9, (lag, corr)


async def test_ogg_opus_archive_is_read_back_with_the_right_duration(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--archive-format", "ogg")
    x = sf.read(FIXTURES / "speech_16k.wav", dtype="float32")[0]
    result = await send_file(server.url, FIXTURES / "speech_16k.wav", codec="opus")
    _, rec = archive_of(server, result["stream"])
    path = server.data_dir / rec["path"]
    assert path.suffix == ".ogg" and rec["archive_format"] == "ogg"
    assert abs(ffprobe_duration(path) - len(x) / 16000) < 0.02
    assert path.stat().st_size < len(x) * 2 / 8
    r = httpx.get(f"{server.http}/api/streams/{result['stream']}/audio")
    assert r.headers["content-type"] == "audio/ogg" and r.content == path.read_bytes()
    # decoded by an independent decoder (libsndfile's Opus support, or ffmpeg)
    wav = server.data_dir.parent / "decoded.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(path), "-ar", "16000", str(wav)],
                   check=True)
    z = sf.read(wav, dtype="float32")[0]
    assert abs(len(z) - len(x)) <= 16
    assert best_lag(z, x)[1] >= 0.9


async def test_kill9_and_resume_with_opus_loses_and_duplicates_nothing(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory()
    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="float32")
    pub = OpusPublisher(server.url, rate=rate, reconnect=Reconnect(initial=0.1, maximum=0.5,
                                                                   attempts=100))
    await pub.start()
    block = rate // 50
    killed_at = 0
    for i in range(0, len(x), block):
        if i == rate * 3:
            await pub.wait_acked(rate * 2, timeout=10)  # some audio is surely acknowledged
            killed_at = pub.acked
            server.kill9()
            await asyncio.sleep(0.3)
            await asyncio.to_thread(server.start)
        await pub.send(x[i:i + block])
        await asyncio.sleep(0.002)
    assert await pub.stop() == len(x)
    assert pub.reconnects >= 1 and killed_at > 0
    y, _ = archive_of(server, pub.stream_id)
    assert len(y) == len(x)
    # alignment holds on both sides of the crash: nothing lost, nothing twice
    for a, b in ((0, killed_at - 100), (killed_at + 2000, len(x))):
        lag, corr = best_lag(y[a:b], x[a:b])
        assert abs(lag) <= 3 and corr >= 0.9, (a, b, lag, corr)


async def _listen(url: str, audio: str, until_end: bool = True) -> list[dict]:
    got: list[dict] = []
    async with connect(url.replace("/ws", "/ws/subscribe") + f"?stream=*&audio={audio}") as ws:
        header = None
        async for raw in ws:
            if isinstance(raw, bytes):
                assert header is not None
                header["bytes"] = len(raw)
                got.append(header)
                header = None
                continue
            msg = json.loads(raw)
            if msg["type"] == "audio":
                header = msg
            elif msg["type"] == "stream_ended" and until_end:
                return got
    return got


async def test_listeners_get_every_frame_in_order_and_a_stalled_one_harms_nobody(
        shared_server: ServerProcess) -> None:
    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="int16")
    x = x[: rate * 4]
    pub = OpusPublisher(shared_server.url, rate=rate)
    await pub.start()
    acks: list[float] = []
    stalled = await connect(shared_server.url.replace("/ws", "/ws/subscribe")
                            + "?stream=*&audio=s16", max_queue=1)  # never read
    listeners: list[asyncio.Task[list[dict]]] = []
    block = rate // 50
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(0, len(x), block):
        if i == rate:  # two listeners join a second into the stream
            listeners = [asyncio.create_task(_listen(shared_server.url, "opus")),
                         asyncio.create_task(_listen(shared_server.url, "s16"))]
        await pub.send(x[i:i + block])
        acks.append(pub.acked)
        await asyncio.sleep(max(0.0, t0 + (i + block) / rate - loop.time()))
    assert await pub.stop() == len(x)
    opus, pcm = await asyncio.gather(*listeners)
    await stalled.close()
    for got, fmt in ((opus, "opus"), (pcm, "s16")):
        assert got and all(h["format"] == fmt for h in got)
        offsets = [h["offset"] for h in got]
        assert offsets == sorted(offsets)
        assert all(b["offset"] == a["offset"] + a["frames"] for a, b in itertools.pairwise(got))
        assert got[0]["offset"] >= rate * 0.8  # from when it joined, not from the start
        end = got[-1]["offset"] + got[-1]["frames"]
        assert end >= len(x) - rate // 10  # and up to the end
    assert sum(h["bytes"] for h in opus) * 6 < sum(h["bytes"] for h in pcm)
    # the publisher's acks kept coming while the stalled listener read nothing
    assert acks[-1] >= len(x) - rate // 2


def test_earshot_listen_writes_what_it_hears(shared_server: ServerProcess, tmp_path) -> None:
    src = FIXTURES / "speech_16k.wav"
    x = sf.read(src, dtype="float32")[0]
    sender = subprocess.Popen([sys.executable, "-m", "earshot.cli", "send", str(src),
                               "--realtime", "--codec", "opus", "--url", shared_server.url,
                               "-q"], stdout=subprocess.PIPE, text=True)
    stream = None
    for _ in range(100):
        live = [s for s in httpx.get(f"{shared_server.http}/api/streams").json()["streams"]
                if s["state"] == "live"]
        if live:
            stream = live[0]["id"]
            break
        time.sleep(0.05)
    assert stream is not None
    out = tmp_path / "heard.wav"
    res = subprocess.run([sys.executable, "-m", "earshot.cli", "listen", stream, "--url",
                          shared_server.url, "--codec", "opus", "--out", str(out)],
                         capture_output=True, text=True, timeout=60)
    sender.wait(30)
    assert res.returncode == 0, res.stderr
    assert "delay p50" in res.stderr
    y = sf.read(out, dtype="float32")[0]
    # it joined a little late (process start-up) and heard the rest of the stream
    assert len(x) / 16000 - 4.0 < len(y) / 16000 <= len(x) / 16000 + 1.0
    # what was heard is the source: a second of it, found in the source (wherever the
    # jitter buffer's stretches put it), matches
    seg = y[len(y) // 2: len(y) // 2 + 16000]
    lag, corr = best_alignment(seg, x)
    assert corr >= 0.8 and 0 <= -lag < len(x), (lag, corr)
