"""Secrets stay out of a real server's output (issue 12, must-show 6): ``earshot serve
--token T --log-level debug`` taking the token in every place a client may put it. (The
patterns and the filter: tests/test_redact.py.)"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from earshot.redact import MASK
from helpers import ServerProcess

pytestmark = pytest.mark.slow

T = "Tk-9f2c81e7d4b0a6"


async def test_token_never_in_server_output(server_factory: Callable[..., ServerProcess]
                                            ) -> None:
    srv = server_factory("--token", T, "--log-level", "debug")
    # REST, ingest and subscribe, each with ?token=T: all succeed
    r = httpx.get(f"{srv.http}/api/streams?token={T}")
    assert r.status_code == 200
    sub_url = f"ws://127.0.0.1:{srv.port}/ws/subscribe?stream=*&token={T}"
    async with connect(sub_url) as sub:
        assert json.loads(await sub.recv())["type"] == "subscribed"
        async with connect(f"{srv.url}?token={T}") as ws:
            await ws.send(json.dumps({"type": "start", "format": "s16", "rate": 16000}))
            ready = json.loads(await ws.recv())
            assert ready["type"] == "ready"
            await ws.send(np.arange(1600, dtype="<i2").tobytes())
            await ws.send(json.dumps({"type": "stop"}))
            while (msg := json.loads(await ws.recv()))["type"] != "stopped":
                pass
            assert msg["offset"] == 1600
        started = json.loads(await sub.recv())
        assert started["type"] == "stream_started" and started["stream"] == ready["stream"]
    # the token in the start message, and in the Authorization header, too
    async with connect(srv.url) as ws:
        await ws.send(json.dumps({"type": "start", "format": "s16", "rate": 16000, "token": T}))
        assert json.loads(await ws.recv())["type"] == "ready"
    r = httpx.get(f"{srv.http}/api/streams/{ready['stream']}",
                  headers={"Authorization": f"Bearer {T}"})
    assert r.status_code == 200 and r.json()["frames"] == 1600
    # failures: a wrong token, and a request the server cannot parse
    assert httpx.get(f"{srv.http}/api/streams?token={T}x").status_code == 401
    assert httpx.get(f"{srv.http}/api/streams?limit=nope&token={T}").status_code == 422
    srv.stop()
    out = srv.log.read_text()
    assert f'"GET /api/streams?token={MASK} HTTP/1.1" 200' in out, out[-3000:]
    assert f"/ws?token={MASK}" in out and "[accepted]" in out
    assert T not in out
