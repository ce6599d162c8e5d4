"""Issue 19, the robustness half, probed from another process against a real server:
malformed starts leave no zombie stream, bounded client choices, dependencies refused up
front, REST bounded, source windows."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from helpers import ServerProcess

pytestmark = pytest.mark.slow

TOKEN = "t0ken-for-trust"


def start(**kw: Any) -> str:
    return json.dumps({"type": "start", "format": "s16", "rate": 16000, "channels": 1, **kw})


async def first_answer(url: str, message: str) -> tuple[dict[str, Any], int | None]:
    async with connect(url) as ws:
        await ws.send(message)
        msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 0.3)
        return msg, ws.close_code


def metric(server: ServerProcess, name: str) -> float:
    text = httpx.get(server.http + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


async def test_malformed_starts_leave_no_zombie_stream(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--token", TOKEN, "--max-streams", "5")
    url = f"{server.url}?token={TOKEN}"
    for bad in ([{"name": ["x"]}], [{"name": {"a": 1}}], [{"name": "level", "options": 3}],
                [{"name": ["x"]}], [7]):
        msg, _ = await first_answer(url, start(processors=bad))
        assert (msg["type"], msg["code"]) == ("error", "bad_start"), msg
    health = httpx.get(server.http + "/healthz").json()
    assert health["admission"]["held"] == 0
    assert metric(server, "earshot_streams_active") == 0
    # every slot is free: five publishers get in at once (--max-streams 5)
    async with connect(url) as a, connect(url) as b, connect(url) as c, connect(url) as d, \
            connect(url) as e:
        ids = []
        for ws in (a, b, c, d, e):
            await ws.send(start(processors=[]))
            ready = json.loads(await ws.recv())
            assert ready["type"] == "ready", ready
            ids.append(ready["stream"])
            await ws.send(np.ones(1600, "<i2").tobytes())
            await ws.send(json.dumps({"type": "stop"}))
        for ws in (a, b, c, d, e):
            while json.loads(await ws.recv())["type"] != "stopped":
                pass
    r = httpx.delete(f"{server.http}/api/streams/{ids[0]}",
                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 204, r.text
    # and the shutdown has nothing to wait for
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(10)
    # what the drain held (a zombie would be listed, and waited for)
    held = json.loads((server.data_dir / "held-at-shutdown.json").read_text())
    assert held["streams"] == []



async def test_client_choices_are_bounded(server_factory: Callable[..., ServerProcess]) -> None:
    """The issue's probes: a 3 GiB spectrogram, 32,000 level events for 2 s, 16 processors
    with duplicates, a 1 MiB ``client``; each refused (or merged) at the door, naming the
    field, and the list of streams carries no client info."""
    server = server_factory("--token", TOKEN)
    url = f"{server.url}?token={TOKEN}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    msg, _ = await first_answer(url, start(processors=[
        {"name": "spectrogram", "options": {"mels": 3000, "win_ms": 4000}}]))
    assert msg["code"] == "bad_start" and "'processors[0].options.mels'" in msg["message"]
    msg, _ = await first_answer(url, start(processors=[
        {"name": "level", "options": {"interval": 1 / 16000}}]))
    assert msg["code"] == "bad_start" and "'processors[0].options.interval'" in msg["message"]
    msg, _ = await first_answer(url, start(client={"blob": "x" * ((1 << 20) - 1000)}))
    assert msg["code"] == "bad_start" and "'client'" in msg["message"]
    assert httpx.get(server.http + "/healthz").json()["admission"]["held"] == 0
    # sixteen processors, duplicates included: one level runs, at the last interval asked
    async with connect(url) as ws:
        await ws.send(start(name="dup", client={"app": "probe"}, processors=[
            "level", *[{"name": "level", "options": {"interval": 0.5}}] * 15]))
        ready = json.loads(await ws.recv())
        assert ready["processors"] == ["level"], ready
        await ws.send(np.ones(16000, "<i2").tobytes())
        await ws.send(json.dumps({"type": "stop"}))
        events = []
        while (m := json.loads(await ws.recv()))["type"] != "stopped":
            events.append(m)
    assert [e["t"] for e in events if e["type"] == "level"] == [0.0, 0.5]
    listed = httpx.get(server.http + "/api/streams", headers=auth).json()["streams"]
    assert [s["name"] for s in listed] == ["dup"] and "client" not in listed[0]
    one = httpx.get(f"{server.http}/api/streams/{ready['stream']}", headers=auth).json()
    assert one["client"] == {"app": "probe"}


async def test_a_listener_asking_for_opus_never_breaks_the_publisher(
        tmp_path: Path, server_factory: Callable[..., ServerProcess]) -> None:
    """On a server without PyAV (hidden here by a stand-in ``av`` that fails to import), a
    subscriber asking ``audio=opus`` is refused with ``unsupported_format`` at once; the
    publisher of the stream it wanted goes on and stops cleanly with every frame."""
    hide = tmp_path / "hide-av" / "av"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text('raise ImportError("PyAV hidden by the test")\n')
    server = server_factory(env={"PYTHONPATH": str(hide.parent)})
    async with connect(server.url) as pub:
        await pub.send(start(rate=16000, processors=[]))
        ready = json.loads(await pub.recv())
        sid = ready["stream"]
        x = (np.arange(16000) % 200 - 100).astype("<i2")
        await pub.send(x[:8000].tobytes())
        async with connect(f"{server.url}/subscribe?stream={sid}&audio=opus") as sub:
            first = json.loads(await sub.recv())
            assert (first["type"], first["code"]) == ("error", "unsupported_format"), first
            assert "PyAV" in first["message"]
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(sub.recv(), 5)
        await pub.send(x[8000:].tobytes())
        await pub.send(json.dumps({"type": "stop"}))
        got = []
        while (m := json.loads(await pub.recv()))["type"] != "stopped":
            got.append(m)
    assert m["offset"] == 16000 and not [e for e in got if e["type"] == "error"], got
    # PCM listeners are unaffected: audio=s16 is still served
    async with connect(f"{server.url}/subscribe?stream=*&audio=s16") as sub:
        assert json.loads(await sub.recv())["type"] == "subscribed"


def test_pyav_is_part_of_the_server_extra() -> None:
    """Opus ingest and audio=opus work on the default install (``earshot[server]``)."""
    import tomllib

    from helpers import ROOT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.replace(" ", "").startswith("av>=") for d in
               project["optional-dependencies"]["server"])
