"""Icecast sources through ``earshot serve --icecast``, pushed by the real ffmpeg
(``icecast://source:TOKEN@HOST:PORT/kitchen``): MP3 with ``-re`` (PUT, ``Expect:
100-continue``) makes a live stream named after the mount while ffmpeg runs, with level and
VAD events to subscribers, and its archive is ffmpeg's own decode of the same MP3 (within
a frame in length, correlation ≥ 0.99); Ogg Opus with ``-legacy_icecast 1`` (SOURCE) too;
a wrong password gets ``401`` with ``WWW-Authenticate`` and opens no stream; a PUT without a
content type is refused (400, saying which types are taken)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from helpers import FIXTURES, ServerProcess, free_port, require_tool

pytestmark = pytest.mark.slow
pytest.importorskip("av")
TOKEN = "ice-secret"
HEADERS = {"authorization": f"Bearer {TOKEN}"}


def encoded(tmp_path: Path, name: str, seconds: float, *args: str) -> Path:
    out = tmp_path / name
    subprocess.run([require_tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-y",
                    "-t", str(seconds), "-i", str(FIXTURES / "reading_16k.wav"), *args,
                    str(out)], check=True)
    return out


def ffmpeg_decode(path: Path) -> np.ndarray:
    out = subprocess.run([require_tool("ffmpeg"), "-hide_banner", "-loglevel", "error",
                          "-i", str(path), "-f", "f32le", "-"], capture_output=True,
                         check=True).stdout
    return np.frombuffer(out, "<f4")


def best_lead(y: np.ndarray, ref: np.ndarray, most: int) -> int:
    """Where ``ref`` starts in ``y`` (0..most frames in), by correlation."""
    window = ref[16000:32000]
    scores = [float(np.dot(y[16000 + d:32000 + d], window)) for d in range(most + 1)]
    return int(np.argmax(scores))


def push(source: Path, port: int, mount: str, *args: str, password: str = TOKEN,
         realtime: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [require_tool("ffmpeg"), "-hide_banner", "-loglevel", "error",
         *(["-re"] if realtime else []), "-i", str(source), "-c", "copy", *args,
         f"icecast://source:{password}@127.0.0.1:{port}/{mount}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def subscribe(url: str, events: list[dict], ready: asyncio.Event) -> None:
    async with connect(url.replace("/ws", "/ws/subscribe") + f"?stream=*&token={TOKEN}") \
            as ws:
        ready.set()
        async for raw in ws:
            if isinstance(raw, str):
                events.append(json.loads(raw))


def streams(server: ServerProcess) -> list[dict]:
    got: list[dict] = httpx.get(f"{server.http}/api/streams", headers=HEADERS,
                                params={"limit": 50}).json()["streams"]
    return got


def record(server: ServerProcess, stream: dict) -> dict:
    """The stream's own record: its client info in full (a listing holds the dialect)."""
    got: dict = httpx.get(f"{server.http}/api/streams/{stream['id']}", headers=HEADERS).json()
    return got


def test_ffmpeg_sources_through_earshot(server_factory: Callable[..., ServerProcess],
                                        tmp_path: Path) -> None:
    port = free_port()
    server = server_factory("--token", TOKEN, "--icecast", f"127.0.0.1:{port}",
                            "--processor", "level", "--processor", "vad")
    mp3 = encoded(tmp_path, "r.mp3", 6, "-c:a", "libmp3lame", "-b:a", "64k")
    events: list[dict] = []

    async def live_push() -> tuple[list[dict], subprocess.Popen[str]]:
        ready = asyncio.Event()
        sub = asyncio.create_task(subscribe(server.url, events, ready))
        await asyncio.wait_for(ready.wait(), 5)
        proc = push(mp3, port, "kitchen", "-f", "mp3", "-ice_name", "Kitchen radio",
                    realtime=True)
        seen: list[dict] = []
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            seen = await asyncio.to_thread(streams, server)
            if seen and seen[0]["state"] == "live":
                break
            await asyncio.sleep(0.2)
        await asyncio.to_thread(proc.wait, 30)
        deadline = time.monotonic() + 10  # the last events: up to the stream's end
        while not [e for e in events if e.get("type") == "stream_ended"]:
            assert time.monotonic() < deadline, events[-5:]
            await asyncio.sleep(0.05)
        sub.cancel()
        return seen, proc

    seen, proc = asyncio.run(live_push())
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert seen and seen[0]["name"] == "kitchen" and seen[0]["state"] == "live"
    rec = record(server, streams(server)[0])
    assert rec["state"] == "finished" and rec["client"]["dialect"] == "icecast"
    assert rec["client"]["method"] == "PUT" and rec["client"]["ice"]["name"] == "Kitchen radio"
    mine = [e for e in events if e.get("stream") == rec["id"]]
    assert any(e["type"] == "level" for e in mine)
    assert any(e["type"] == "speech_start" for e in mine)
    assert any(e["type"] == "speech_end" for e in mine)
    # the archive is ffmpeg's decode of the MP3: a stream has no LAME tag, so the codec's
    # delay stays in front and the last frame's padding at the end (each within a frame)
    y, rate = sf.read(server.data_dir / rec["path"], dtype="float32")
    ref = ffmpeg_decode(mp3)
    assert rate == 16000 and len(ref) <= len(y) <= len(ref) + 2 * 1152
    lead = best_lead(y, ref, 1152 + 529)
    assert 0 <= len(y) - lead - len(ref) <= 1152
    corr = float(np.corrcoef(y[lead:lead + len(ref)], ref)[0, 1])
    print(f"\nicecast mp3: {len(y)} frames archived, ffmpeg {len(ref)}, the codec's delay "
          f"{lead}, corr {corr:.5f}")
    assert corr >= 0.99

    # Ogg Opus, legacy SOURCE, as fast as ffmpeg sends (processors from the mount)
    ogg = encoded(tmp_path, "r.ogg", 6, "-c:a", "libopus", "-b:a", "32k")
    p = push(ogg, port, "porch?processors=vad", "-f", "ogg", "-content_type", "audio/ogg",
             "-legacy_icecast", "1")
    p.wait(30)
    assert p.returncode == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
            len(streams(server)) < 2 or streams(server)[0]["state"] != "finished"):
        time.sleep(0.1)
    porch = record(server, streams(server)[0])
    assert porch["name"] == "porch" and porch["client"]["method"] == "SOURCE"
    y, rate = sf.read(server.data_dir / porch["path"], dtype="float32")
    ref = ffmpeg_decode(ogg)  # 48 kHz: Opus decodes at 48 kHz
    assert rate == 48000 and len(y) == len(ref)
    assert float(np.corrcoef(y, ref)[0, 1]) >= 0.99

    # a wrong password: 401 with WWW-Authenticate; a PUT without a content type: 400
    bad = push(mp3, port, "garage", "-f", "mp3", password="wrong")
    bad.wait(30)
    assert bad.returncode != 0 and "401" in (bad.stderr.read() if bad.stderr else "")
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"PUT /shed HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
                  b"c291cmNlOmljZS1zZWNyZXQ=\r\nExpect: 100-continue\r\n\r\n")
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.0 400 ") and b"Content-Type" in answer
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"PUT /garage HTTP/1.1\r\nHost: x\r\nContent-Type: audio/mpeg\r\n\r\n")
        answer = s.recv(4096)
    assert b" 401 " in answer.split(b"\r\n")[0] and b"WWW-Authenticate: Basic" in answer
    assert [s["name"] for s in streams(server)] == ["porch", "kitchen"]  # no others
