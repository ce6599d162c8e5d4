"""Zero-loss planned restarts: SIGTERM/SIGINT during real-time streams, then a restart on
the same data dir; every client resumes on its own and every archive equals its source."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import websockets

from earshot.client import Publisher, Reconnect
from helpers import ServerProcess

pytestmark = pytest.mark.slow

RATE = 16000
BLOCK = RATE // 10


def source(i: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(1000 + i)
    return (rng.standard_normal(int(RATE * seconds)) * 3000).astype("<i2")


class Client:
    """One publisher and what it saw: readies, and its ack when told shutting_down."""

    def __init__(self, server: ServerProcess, i: int, seconds: float) -> None:
        self.i = i
        self.x = source(i, seconds)
        # the default backoff, but capped at 1 s (not 10) to keep the test short
        self.pub = Publisher(server.url, rate=RATE, format="s16", name=f"c{i}",
                             reconnect=Reconnect(maximum=1.0, attempts=100))
        self.readies: list[dict[str, Any]] = []
        self.acked_at_shutdown: list[int] = []
        self.watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.watcher = asyncio.create_task(self._watch())
        await self.pub.start()

    async def _watch(self) -> None:
        async for e in self.pub.events():
            if e["type"] == "ready":
                self.readies.append(e)
            elif e["type"] == "error" and e.get("code") == "shutting_down":
                self.acked_at_shutdown.append(self.pub.acked)

    async def send_realtime(self, start: int = 0, end: int | None = None) -> None:
        end = len(self.x) if end is None else end
        t0 = time.monotonic()
        for n, i in enumerate(range(start, end, BLOCK)):
            await self.pub.send(self.x[i:min(i + BLOCK, end)])
            await asyncio.sleep(max(0.0, t0 + (n + 1) * 0.1 - time.monotonic()))


def db_rows(server: ServerProcess) -> dict[str, tuple[str, int]]:
    with sqlite3.connect(server.data_dir / "earshot.db") as db:
        return {r[0]: (r[1], r[2]) for r in db.execute("SELECT id, state, frames FROM streams")}


async def stop_gracefully(server: ServerProcess, sig: int = signal.SIGTERM) -> float:
    assert server.proc is not None
    t0 = time.monotonic()
    server.proc.send_signal(sig)
    rc = await asyncio.to_thread(server.proc.wait, 60)
    assert rc in (0, -sig), rc
    return time.monotonic() - t0


async def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def check_archives(server: ServerProcess, clients: list[Client]) -> None:
    streams = httpx.get(server.http + "/api/streams", params={"limit": 500}).json()["streams"]
    assert len(streams) == len(clients)  # one stream per client: nothing started twice
    by_id = {s["id"]: s for s in streams}
    for c in clients:
        rec = by_id[c.pub.stream_id]
        assert rec["state"] == "finished" and rec["frames"] == len(c.x)
        y, rate = sf.read(server.data_dir / rec["path"], dtype="int16")
        assert rate == RATE and np.array_equal(y, c.x), c.i  # nothing lost or duplicated


async def test_sigterm_and_sigint_during_20_realtime_streams_three_restarts(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory()
    clients = [Client(server, i, 9.0) for i in range(20)]
    await asyncio.gather(*(c.start() for c in clients))
    senders = [asyncio.create_task(c.send_realtime()) for c in clients]
    exits = []
    for k, sig in enumerate((signal.SIGTERM, signal.SIGINT, signal.SIGTERM)):
        await asyncio.sleep(1.0)
        exits.append(await stop_gracefully(server, sig))
        # every publisher was told, with everything it sent written and acknowledged;
        # nothing was finalized (all resumable)
        rows = db_rows(server)
        for c in clients:
            assert len(c.acked_at_shutdown) == k + 1, (c.i, c.acked_at_shutdown)
            state, frames = rows[c.pub.stream_id]
            assert state == "interrupted"
            assert frames == c.acked_at_shutdown[-1] > 0
        await asyncio.to_thread(server.start, 60)
        await wait_until(lambda k=k: all(len(c.readies) == k + 2 for c in clients), 60,
                         "every client to resume")
        for c in clients:  # the same stream, resumed at what the server held
            assert {r["stream"] for r in c.readies} == {c.pub.stream_id}
            assert c.readies[-1]["offset"] >= c.acked_at_shutdown[-1]
    await asyncio.gather(*senders)
    assert await asyncio.gather(*(c.pub.stop() for c in clients)) == [len(c.x)
                                                                      for c in clients]
    check_archives(server, clients)
    assert all(e < 30 for e in exits), exits  # bounded (drain <= 8 s, then uvicorn)
    log = server.log.read_text()
    assert "Traceback" not in log


async def test_200_publishers_resume_at_once_after_a_restart(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--max-streams", "200")
    clients = [Client(server, i, 0.5) for i in range(200)]
    await asyncio.gather(*(c.start() for c in clients))
    half = 4000
    for c in clients:
        await c.pub.send(c.x[:half])
    await asyncio.gather(*(c.pub.wait_acked(timeout=60) for c in clients))
    await stop_gracefully(server)
    rows = db_rows(server)
    assert sorted(s for s, _ in rows.values()) == ["interrupted"] * 200
    assert (server.data_dir / "held-at-shutdown.json").exists()
    for c in clients:  # audio captured while the server is down stays in the buffer
        await c.pub.send(c.x[half:])
    await asyncio.to_thread(server.start, 60)
    # the 200 slots are kept for the resuming streams: a newcomer waits
    async with websockets.connect(server.url) as ws:
        await ws.send(json.dumps({"type": "start", "format": "s16", "rate": RATE}))
        msg = json.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert msg["code"] == "server_full" and ws.close_code == 1013, msg
    await wait_until(lambda: all(len(c.readies) == 2 for c in clients), 90,
                     "200 clients to resume")
    assert all(c.pub.stream_id == c.readies[0]["stream"] for c in clients)
    assert await asyncio.gather(*(c.pub.stop() for c in clients)) == [len(c.x)
                                                                      for c in clients]
    check_archives(server, clients)
    # once they are done, the door opens again
    late = Client(server, 999, 0.2)
    await late.start()
    await late.pub.send(late.x)
    assert await late.pub.stop() == len(late.x)
    assert "Traceback" not in server.log.read_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_the_wire_on_a_planned_stop_acks_everything_then_closes_1001(
        server_factory: Callable[..., ServerProcess], sig: int) -> None:
    """What a publisher of its own sees: the ack of every frame it sent, then the
    `shutting_down` error, then close code 1001 (going away), and a resumable stream."""
    server = server_factory()
    x = source(7, 1.0)
    async with websockets.connect(server.url) as ws:
        await ws.send(json.dumps({"type": "start", "format": "s16", "rate": RATE}))
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready"
        for i in range(0, len(x), BLOCK):
            await ws.send(x[i:i + BLOCK].tobytes())
        await asyncio.sleep(0.3)  # (the audio is in; acks may or may not have come yet)
        assert server.proc is not None
        server.proc.send_signal(sig)
        seen: list[dict[str, Any]] = []
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                seen.append(json.loads(await asyncio.wait_for(ws.recv(), 20)))
    assert ws.close_code == 1001, (ws.close_code, ws.close_reason)
    acks = [m["offset"] for m in seen if m["type"] == "ack"]
    errors = [m for m in seen if m["type"] == "error"]
    assert [e["code"] for e in errors] == ["shutting_down"]
    assert max(acks, default=-1) == len(x)  # (earlier acks are in `seen` too: read in order)
    assert seen.index(errors[0]) > max((i for i, m in enumerate(seen) if m["type"] == "ack"),
                                       default=-1)  # the ack comes before the error
    await asyncio.to_thread(server.proc.wait, 30)
    assert db_rows(server)[ready["stream"]] == ("interrupted", len(x))
