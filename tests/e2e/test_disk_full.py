"""A full disk is a first-class condition: on a 3 MiB tmpfs the test mounts (root only)."""

from __future__ import annotations

import asyncio
import json
import os
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
from helpers import ServerProcess

pytestmark = pytest.mark.slow

RATE, CH = 48000, 2  # 192 kB/s of s16


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


async def raw_start(url: str) -> tuple[dict[str, Any], int | None]:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "start", "format": "s16", "rate": 16000}))
        msg = json.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return msg, ws.close_code


async def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def health(server: ServerProcess) -> dict[str, Any]:
    return httpx.get(server.http + "/healthz").json()


async def test_disk_full_reserve_storage_full_and_recovery(
        small_fs: Path, server_factory: Callable[..., ServerProcess]) -> None:
    data = small_fs / "data"
    server = server_factory("--min-free-space", "1M", data_dir=data)
    assert health(server)["storage"]["state"] == "ok"
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((RATE * 6, CH)) * 3000).astype("<i2")  # 1.15 MB
    events: list[dict[str, Any]] = []
    pub = Publisher(server.url, rate=RATE, channels=CH, format="s16",
                    reconnect=Reconnect(initial=0.1, maximum=0.5, busy_attempts=400))

    async def watch() -> None:
        async for e in pub.events():
            events.append(e)

    watcher = asyncio.create_task(watch())
    await pub.start()
    await pub.send(x[:RATE])
    await pub.wait_acked(timeout=20)

    # 1. below the reserve: new streams are refused before the disk is full
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * (free(small_fs) - 600 * 1024))
    await wait_for(lambda: health(server)["storage"]["state"] == "low", 10, "state low")
    h = health(server)
    assert h["status"] == "degraded" and h["storage"]["free_bytes"] < 1 << 20
    assert h["storage"]["min_free_bytes"] == 1 << 20
    before = sorted(p.name for p in (data / "streams").iterdir())
    msg, code = await raw_start(server.url)
    assert (msg["code"], code) == ("storage_full", 1013), msg
    assert "reserve" in msg["message"]
    assert sorted(p.name for p in (data / "streams").iterdir()) == before  # no stray file

    # 2. the held stream goes on into the reserve, until the disk is really full
    await pub.send(x[RATE:])
    await wait_for(lambda: any(e.get("code") == "storage_full" for e in events), 30,
                   "storage_full")
    acked = pub.acked
    assert 0 < acked < len(x)
    wav = data / "streams" / f"{pub.stream_id}.wav"
    assert (wav.stat().st_size - 44) // 4 >= acked  # everything acknowledged is on disk
    h = health(server)
    assert h["storage"]["state"] == "full" and h["status"] == "degraded"
    msg, code = await raw_start(server.url)
    assert (msg["code"], code) == ("storage_full", 1013), msg
    text = httpx.get(server.http + "/metrics").text
    assert 'earshot_storage_state{state="full"} 1.0' in text
    assert "earshot_storage_free_bytes" in text
    refused = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('earshot_streams_refused_total{reason="storage"} ')]
    assert refused and refused[0] >= 2  # the two newcomers (and the resume retries)
    await asyncio.sleep(1.0)  # the client keeps retrying meanwhile (storage_full, 1013)
    assert any(e["type"] == "reconnecting" and e.get("code") == "storage_full"
               for e in events)

    # 3. space comes back: the server notices by itself and the stream resumes, exact
    filler.unlink()
    assert await pub.stop(timeout=60) == len(x)
    await watcher
    rec = httpx.get(f"{server.http}/api/streams/{pub.stream_id}").json()
    assert rec["state"] == "finished" and rec["frames"] == len(x)
    y, rate = sf.read(data / rec["path"], dtype="int16")
    assert rate == RATE and np.array_equal(y, x)
    assert health(server)["storage"]["state"] == "ok"
    # streams dir: just the one archive (no zero-byte leftovers from the refusals)
    assert [p.name for p in (data / "streams").iterdir()] == [Path(rec["path"]).name]

    log = server.log.read_text()
    assert "Traceback" not in log
    assert log.count("storage full on") == 1 and "storage low on" in log
    assert "space is back" in log
