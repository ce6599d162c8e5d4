"""DELETE through one gateway of a stream another gateway holds (issue 19, item 10): it
checked only its own live map, so it removed a live stream's archive under its publisher.
Now it refuses (409) while the stored state is live or another gateway's owner key is set;
two gateways on a real redis-server, sharing a data directory and database."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from helpers import ServerProcess
from redis_helpers import RedisServer

pytestmark = pytest.mark.slow


async def test_delete_refuses_a_stream_live_on_the_other_gateway(
        tmp_path: Path, redis_server: RedisServer) -> None:
    data = tmp_path / "data"
    a = ServerProcess(data, "--bus", redis_server.url).start()
    b = ServerProcess(data, "--bus", redis_server.url).start()
    try:
        x = (np.arange(16000) % 100).astype("<i2")
        async with connect(a.url) as ws:  # held by A, live
            await ws.send(json.dumps({"type": "start", "format": "s16", "rate": 16000,
                                      "processors": []}))
            ready = json.loads(await ws.recv())
            sid = ready["stream"]
            await ws.send(x.tobytes())
            r = httpx.delete(f"{b.http}/api/streams/{sid}")
            assert r.status_code == 409 and "live" in r.json()["detail"], r.text
            archive = data / "streams" / f"{sid}.wav"
            assert archive.exists()
            await ws.send(json.dumps({"type": "stop"}))
            while (m := json.loads(await ws.recv()))["type"] != "stopped":
                pass
            assert m["offset"] == len(x)
        # finished, but another gateway's claim on it (its owner key) still stands
        r_cli = redis_server.client()
        r_cli.set(f"earshot:owner:{sid}", "gateway-elsewhere", px=60_000)
        r = httpx.delete(f"{b.http}/api/streams/{sid}")
        assert r.status_code == 409 and "another gateway" in r.json()["detail"], r.text
        r_cli.delete(f"earshot:owner:{sid}")
        r = httpx.delete(f"{b.http}/api/streams/{sid}")
        assert r.status_code == 204, r.text
        assert not list((data / "streams").glob(f"{sid}*"))
        assert httpx.get(f"{a.http}/api/streams/{sid}").status_code == 404
    finally:
        a.stop()
        b.stop()
