"""The ingest hot path end to end (issue 10): the direct WebSocket lane, levels batched
with their acks, and a text frame that is not UTF-8.

Levels and acks must arrive in stream-time order and cover the whole stream: every 50 ms
of audio has its level reading (checked against the source's own RMS and peak), each
reading comes before the ack that covers it, acks only grow, and the last one is the
stream's length — batched (``"batch": true``), unbatched (today's protocol), and through
the Python client (which asks for batches and hands out events one by one).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect

from earshot.client import Publisher
from helpers import ROOT, ServerProcess

pytestmark = pytest.mark.slow

RATE = 48000
FRAME = 960  # 20 ms
SECONDS = 3.0
INTERVAL = 2400  # the level meter's 50 ms at 48 kHz


def source(seconds: float = SECONDS, seed: int = 3) -> np.ndarray:
    """Noise whose loudness changes every 50 ms, so each reading is told apart."""
    rng = np.random.default_rng(seed)
    n = int(RATE * seconds)
    gains = 10 ** (-rng.uniform(0, 60, n // INTERVAL + 1) / 20)
    x = rng.standard_normal(n) * 0.3 * np.repeat(gains, INTERVAL)[:n]
    return np.clip(x, -0.99, 0.99).astype(np.float32)


def expected_levels(x: np.ndarray) -> list[tuple[float, float, float]]:
    """(t, rms dB, peak dB) of every whole 50 ms interval, plus the partial last one."""
    out = []
    for i in range(0, len(x), INTERVAL):
        b = x[i:i + INTERVAL].astype(np.float64)
        rms = 10 * np.log10(max(float(np.mean(b * b)), 1e-12))
        peak = 20 * np.log10(max(float(np.max(np.abs(b))), 1e-6))
        out.append((i / RATE, rms, peak))
    return out


def check_order_and_coverage(messages: list[dict[str, Any]], x: np.ndarray) -> None:
    """The stream's messages (events expanded in order): every level reading present,
    right, in stream-time order, and before the ack that covers it."""
    levels = [m for m in messages if m.get("type") == "level"]
    want = expected_levels(x)
    assert [round(m["t"], 6) for m in levels] == [round(t, 6) for t, _, _ in want]
    for m, (_, rms, peak) in zip(levels, want, strict=True):
        assert abs(m["rms"] - rms) < 0.02 and abs(m["peak"] - peak) < 0.02
    acked = 0
    seen_end = 0  # end (frames) of the last level reading received
    for m in messages:
        if m.get("type") == "level":
            end = round((m["t"] + m["duration"]) * RATE)
            assert end > acked or m is levels[-1], "a reading came after the ack covering it"
            seen_end = max(seen_end, end)
        elif m.get("type") == "ack":
            assert m["offset"] > acked, "acks must only grow"
            acked = m["offset"]
            # everything acknowledged has had its reading (whole intervals)
            assert seen_end >= acked - acked % INTERVAL
    assert messages[-1]["type"] == "stopped" and messages[-1]["offset"] == len(x)


async def raw_stream(url: str, x: np.ndarray, *, batch: bool | None) -> list[dict[str, Any]]:
    """Send ``x`` in 20 ms messages (faster than real time), stop; every message back,
    with batched events expanded before their ack."""
    start: dict[str, Any] = {"type": "start", "format": "f32", "rate": RATE,
                             "processors": ["level"]}
    if batch is not None:
        start["batch"] = batch
    out: list[dict[str, Any]] = []
    batched = 0
    async with connect(url, compression=None) as ws:
        await ws.send(json.dumps(start))
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready", ready
        for i in range(0, len(x), FRAME):
            await ws.send(x[i:i + FRAME].tobytes())
            if i % (FRAME * 10) == 0:
                await asyncio.sleep(0.01)  # let acks come back while we send
        await ws.send('{"type":"stop"}')
        async for raw in ws:
            m = json.loads(raw)
            if m.get("type") == "ack" and "events" in m:
                batched += 1
                out.extend(m.pop("events"))
            out.append(m)
            if m["type"] == "stopped":
                break
    if batch:
        assert batched > 0, "no ack carried its events"
    else:
        assert batched == 0, "events batched without being asked for"
    return out


@pytest.mark.parametrize("batch", [True, False, None], ids=["batch", "unbatched", "default"])
def test_levels_and_acks_arrive_in_stream_time_order_covering_every_frame(
        shared_server: ServerProcess, batch: bool | None) -> None:
    x = source()
    messages = asyncio.run(raw_stream(shared_server.url, x, batch=batch))
    check_order_and_coverage(messages, x)
    if batch:  # one message per ack interval: far fewer messages than events + acks
        n_acks = sum(m["type"] == "ack" for m in messages)
        assert n_acks <= len(x) / (RATE * 0.1) + 2


def test_the_python_client_asks_for_batches_and_sees_every_event_in_order(
        shared_server: ServerProcess) -> None:
    x = source(seed=4)

    async def go() -> list[dict[str, Any]]:
        pub = Publisher(shared_server.url, rate=RATE, format="f32", processors=["level"])
        seen: list[dict[str, Any]] = []

        async def collect() -> None:
            async for e in pub.events():
                seen.append(e)

        async with pub:
            reader = asyncio.create_task(collect())
            for i in range(0, len(x), FRAME):
                await pub.send(x[i:i + FRAME])
            await pub.stop()
            await asyncio.wait_for(reader, 20)
        return seen

    events = asyncio.run(go())
    levels = [e for e in events if e.get("type") == "level"]
    assert [round(e["t"], 6) for e in levels] == [round(t, 6) for t, _, _ in
                                                  expected_levels(x)]
    assert events[-1]["type"] == "stopped" and events[-1]["offset"] == len(x)


def _frame(opcode: int, payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked


def test_a_text_frame_that_is_not_utf8_closes_1007_with_one_log_line(
        server_factory: Any, tmp_path: Path) -> None:
    srv: ServerProcess = server_factory(data_dir=tmp_path / "data")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 101")
        s.sendall(_frame(0x1, b'{"type":"start","name":"\xff\xfe"}'))
        data = head.split(b"\r\n\r\n", 1)[1]
        while len(data) < 4:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data[0] == 0x88, data  # a close frame
        assert struct.unpack("!H", data[2:4])[0] == 1007
    # the server goes on serving others
    x = source(0.5)
    check_order_and_coverage(asyncio.run(raw_stream(srv.url, x, batch=True)), x)
    srv.stop()
    log = srv.log.read_text()
    assert "not valid UTF-8" in log
    assert "Traceback" not in log


async def _paced_stream(url: str, x: np.ndarray, processors: list[str]
                        ) -> list[dict[str, Any]]:
    """Send ``x`` in real time (20 ms messages), stop; every message back, batched events
    expanded before their ack."""
    out: list[dict[str, Any]] = []
    async with connect(url, compression=None) as ws:
        await ws.send(json.dumps({"type": "start", "format": "f32", "rate": RATE,
                                  "processors": processors, "batch": True}))
        assert json.loads(await ws.recv())["type"] == "ready"

        async def read() -> None:
            async for raw in ws:
                m = json.loads(raw)
                out.extend(m.pop("events", []))
                out.append(m)
                if m["type"] == "stopped":
                    return

        reader = asyncio.create_task(read())
        t0 = asyncio.get_running_loop().time()
        for n, i in enumerate(range(0, len(x), FRAME)):
            await ws.send(x[i:i + FRAME].tobytes())
            await asyncio.sleep(max(0.0, t0 + (n + 1) * FRAME / RATE
                                    - asyncio.get_running_loop().time()))
        await ws.send('{"type":"stop"}')
        await asyncio.wait_for(reader, 30)
    return out


def test_acks_stretch_while_the_loop_is_busy_and_every_level_still_comes(
        server_factory: Any) -> None:
    """A processor burning 80 % of the event loop's core: batches (acks with their level
    readings) stretch from 0.1 s towards --ack-interval-max, every 50 ms still has its
    reading in order, and once the load is gone the cadence is back to 0.1 s."""
    import httpx

    server = server_factory("--ack-interval-max", "0.3", "--processor", "level",
                            "--processor", "testprocs:LoopBurn,share=0.8",
                            env={"PYTHONPATH": str(ROOT / "tests")})
    x = source(seconds=8.0, seed=5)
    messages = asyncio.run(_paced_stream(server.url, x, ["level", "loopburn"]))
    check_order_and_coverage(messages, x)
    acks = [m["offset"] for m in messages if m["type"] == "ack"]
    steps = np.diff([0, *acks]) / RATE
    late = steps[len(steps) // 2:-1]  # the second half, once the load is measured
    assert steps[0] == pytest.approx(0.1, abs=0.021)  # the first, before any load showed
    assert np.median(late) >= 0.17, steps  # stretched: (0.8 - 0.5) / 0.4 of the way to 0.3
    assert max(steps) <= 0.3 + 0.021
    metrics = httpx.get(server.http + "/metrics").text
    assert "earshot_ack_interval_seconds" in metrics

    async def settles() -> float:
        for _ in range(100):
            now = httpx.get(server.http + "/healthz").json()["ingest"]["ack_interval"]
            if now == 0.1:
                return now
            await asyncio.sleep(0.1)
        return now

    assert asyncio.run(settles()) == 0.1  # the load is gone: back to the base cadence
    health = httpx.get(server.http + "/healthz").json()["ingest"]
    assert health == {"ack_interval": 0.1, "ack_interval_min": 0.1, "ack_interval_max": 0.3}
