"""Admission control on a real server: --max-streams N with 2N publishers at once."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import websockets

from earshot.client import Publisher, Reconnect
from helpers import ROOT, ServerProcess

pytestmark = pytest.mark.slow

N = 3
RATE = 16000


def source(i: int, seconds: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(100 + i)
    return (rng.standard_normal(int(RATE * seconds)) * 3000).astype("<i2")


async def raw_start(url: str) -> tuple[dict[str, Any], int | None]:
    """A new publisher by hand: the server's answer to 'start' and its close code."""
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "start", "format": "s16", "rate": RATE}))
        msg = json.loads(await ws.recv())
        if msg["type"] == "ready":  # admitted: leave (the stream stays resumable)
            return msg, None
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return msg, ws.close_code


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_twice_max_streams_publishers_at_once(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--max-streams", str(N))
    gate = asyncio.Event()
    readies: dict[int, float] = {}
    stopped: dict[int, float] = {}
    events: dict[int, list[dict[str, Any]]] = {i: [] for i in range(2 * N)}
    pubs: dict[int, Publisher] = {}

    async def collect(i: int, pub: Publisher) -> None:
        async for e in pub.events():
            events[i].append(e)

    async def run(i: int) -> None:
        pub = Publisher(server.url, rate=RATE, format="s16", name=f"p{i}",
                        reconnect=Reconnect(initial=0.2, maximum=1.0, busy_attempts=300))
        pubs[i] = pub
        watcher = asyncio.create_task(collect(i, pub))
        await pub.start()
        readies[i] = time.monotonic()
        x = source(i)
        half = len(x) // 2
        await pub.send(x[:half])
        if len(readies) <= N:
            await gate.wait()  # the first N hold their streams until the test has looked
        await pub.send(x[half:])
        await pub.stop()
        stopped[i] = time.monotonic()
        await watcher

    tasks = [asyncio.create_task(run(i)) for i in range(2 * N)]
    try:
        # exactly N get in; the other N are told server_full and keep retrying
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            refused = [i for i in events if any(e.get("code") == "server_full"
                                                for e in events[i])]
            if len(readies) == N and len(refused) == N:
                break
            await asyncio.sleep(0.05)
        assert len(readies) == N, readies
        held = set(readies)
        assert set(refused) == set(range(2 * N)) - held
        health = httpx.get(server.http + "/healthz").json()
        assert health["live_streams"] == N
        assert health["admission"]["state"] == "full" and health["admission"]["held"] == N
        live = [s for s in httpx.get(server.http + "/api/streams").json()["streams"]
                if s["state"] == "live"]
        assert len(live) == N

        msg, code = await raw_start(server.url)  # what a client sees on the wire
        assert msg["type"] == "error" and msg["code"] == "server_full", msg
        assert "maximum of 3 streams" in msg["message"]
        assert code == 1013

        text = httpx.get(server.http + "/metrics").text
        assert metric(text, 'earshot_streams_refused_total{reason="full"}') >= N + 1
        assert metric(text, 'earshot_admission_state{state="full"}') == 1
        assert metric(text, "earshot_max_streams") == N
        # held streams are not degraded while the door is shut: they still get acks
        for i in held:
            await asyncio.wait_for(pubs[i].wait_acked(), 20)
    finally:
        gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 90)

    # the refused ones got in on their own, after the first ones stopped
    assert len(readies) == 2 * N and len(stopped) == 2 * N
    first_stop = min(stopped[i] for i in held)
    for i in set(range(2 * N)) - held:
        assert readies[i] > first_stop
        assert pubs[i].reconnects >= 1
    # every archive exact
    streams = httpx.get(server.http + "/api/streams").json()["streams"]
    by_name = {s["name"]: s for s in streams}
    assert len(by_name) == 2 * N  # nothing left over from refusals
    for i in range(2 * N):
        rec = by_name[f"p{i}"]
        assert rec["state"] == "finished" and rec["id"] == pubs[i].stream_id
        y, rate = sf.read(server.data_dir / rec["path"], dtype="int16")
        assert rate == RATE and np.array_equal(y, source(i))
    text = httpx.get(server.http + "/metrics").text
    assert metric(text, 'earshot_admission_state{state="ok"}') == 1
    stray = [p for p in (server.data_dir / "streams").iterdir()
             if p.stem not in {s["id"] for s in streams}]
    assert stray == []  # refusals leave no files behind


async def test_resume_is_admitted_when_full(
        server_factory: Callable[..., ServerProcess]) -> None:
    """A dropped stream resumes even though the server is full; newcomers still wait."""
    server = server_factory("--max-streams", "1")
    x = source(7, 0.6)
    pub = Publisher(server.url, rate=RATE, format="s16",
                    reconnect=Reconnect(initial=0.1, maximum=0.3))
    await pub.start()
    await pub.send(x[:4000])
    await pub.wait_acked(timeout=20)
    msg, code = await raw_start(server.url)
    assert (msg["code"], code) == ("server_full", 1013)
    # resume by hand over a second connection while the first still holds the stream
    async with websockets.connect(server.url) as ws:
        await ws.send(json.dumps({"type": "start", "format": "s16", "rate": RATE,
                                  "resume": pub.stream_id, "resume_token": pub.resume_token}))
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready" and ready["offset"] == 4000
        await ws.send(x[4000:].tobytes())
        await ws.send(json.dumps({"type": "stop"}))
        while (m := json.loads(await ws.recv()))["type"] != "stopped":
            pass
        assert m["offset"] == len(x)
    await pub.close()
    rec = httpx.get(f"{server.http}/api/streams/{pub.stream_id}").json()
    y, _ = sf.read(server.data_dir / rec["path"], dtype="int16")
    assert np.array_equal(y, x)


async def test_cli_send_waits_for_a_slot(server_factory: Callable[..., ServerProcess],
                                         tmp_path: Path) -> None:
    """`earshot send` on a full server backs off on 1013 and sends once a slot frees."""
    server = server_factory("--max-streams", "1")
    holder = Publisher(server.url, rate=RATE, format="s16")
    await holder.start()
    await holder.send(source(1, 0.2))
    x = source(2, 0.5)
    wav = tmp_path / "in.wav"
    sf.write(wav, x, RATE, subtype="PCM_16")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "earshot.cli", "send", str(wav), "--url", server.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await asyncio.sleep(2.0)  # refused meanwhile (several attempts), not given up
    assert proc.returncode is None
    text = httpx.get(server.http + "/metrics").text
    refused = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('earshot_streams_refused_total{reason="full"} ')]
    assert refused and refused[0] >= 2
    await holder.stop()
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    sid = out.decode().split("stream ", 1)[1].split(":", 1)[0]
    rec = httpx.get(f"{server.http}/api/streams/{sid}").json()
    y, _ = sf.read(server.data_dir / rec["path"], dtype="int16")
    assert np.array_equal(y, x)


async def test_cpu_headroom_guard_refuses_newcomers_while_the_loop_lags(
        server_factory: Callable[..., ServerProcess]) -> None:
    """A held stream whose (inline) processor starves the event loop: the loop-lag probe
    sees it, newcomers get server_full (overloaded) and get in once it is over."""
    server = server_factory("--max-loop-lag", "0.1", "--processor", "testprocs:LoopHog,factor=3",
                            env={"PYTHONPATH": str(ROOT / "tests")})
    hog = Publisher(server.url, rate=RATE, format="s16")  # runs the hog (the default)
    await hog.start()
    x = source(3, 1.5)
    for i in range(0, len(x), 1600):  # real time; the server takes 3x as long
        await hog.send(x[i:i + 1600])
        await asyncio.sleep(0.1)
    deadline = time.monotonic() + 30
    while True:
        msg, code = await raw_start(server.url)
        if msg.get("code") == "server_full":
            break
        assert time.monotonic() < deadline, "the guard never closed the door"
    assert code == 1013 and "overloaded" in msg["message"] and "event-loop lag" in msg["message"]
    text = httpx.get(server.http + "/metrics", timeout=30).text
    assert 'earshot_streams_refused_total{reason="overloaded"}' in text
    late = Publisher(server.url, rate=RATE, format="s16", processors=[],
                     reconnect=Reconnect(initial=0.2, maximum=1.0, busy_attempts=300))
    starting = asyncio.create_task(late.start())
    assert await hog.stop(timeout=60) == len(x)  # the held stream is served to the end
    await asyncio.wait_for(starting, 60)  # the lag is gone: the newcomer got in
    y = source(4, 0.3)
    await late.send(y)
    assert await late.stop() == len(y)
    health = httpx.get(server.http + "/healthz").json()["admission"]
    assert health["state"] == "ok" and health["loop_lag"] < 0.1
