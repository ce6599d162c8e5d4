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


async def make_stream(url: str, x: np.ndarray, *, rate: int = 16000, **start_fields: Any) -> str:
    """A finished stream of ``x`` (int16, frames by channels) sent over a raw WebSocket."""
    channels = 1 if x.ndim == 1 else x.shape[1]
    async with connect(url) as ws:
        await ws.send(start(rate=rate, channels=channels, **start_fields))
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready", ready
        step = rate // 10 * channels * 2
        data = x.astype("<i2").tobytes()
        for i in range(0, len(data), step):
            await ws.send(data[i:i + step])
        await ws.send(json.dumps({"type": "stop"}))
        while json.loads(await ws.recv())["type"] != "stopped":
            pass
    return str(ready["stream"])


async def test_audio_endpoints_answer_what_they_should(
        server_factory: Callable[..., ServerProcess]) -> None:
    """The issue's cases: a non-Latin source name (was 500, and a ``"`` broke the header),
    ``captured_at: "nan"`` (was 500 forever), ``?start=inf`` (500), a window holding none of
    the source's audio (streamed silence: 115 MB an hour)."""
    import datetime as dt
    from urllib.parse import quote, unquote

    server = server_factory()
    x = (np.arange(16000) % 300 - 150).astype("<i2")
    name = 'Кухня "мик" 台所'
    await make_stream(server.url, x, name=name)
    nan_sid = await make_stream(server.url, x, name="nan-clock",
                                client={"captured_at": "nan"})
    async with httpx.AsyncClient(base_url=server.http) as c:
        rec = (await c.get(f"/api/streams/{nan_sid}")).json()
        t0 = rec["created"]
        iso = [dt.datetime.fromtimestamp(t, dt.UTC).isoformat()
               for t in (t0 - 600, t0 + 600, t0 - 7200, t0 - 3600)]
        r = await c.get(f"/api/sources/{quote(name, safe='')}/audio",
                        params={"from": iso[0], "to": iso[1]})
        assert r.status_code == 200, r.text
        cd = r.headers["content-disposition"]
        assert cd.startswith('attachment; filename="') and '\\"' not in cd
        assert cd.count('"') == 2  # the name's own quotes are not in the ASCII fallback
        assert unquote(cd.split("filename*=UTF-8''")[1]) == f"{name}.wav"
        r = await c.get("/api/sources/nan-clock/audio", params={"from": iso[0], "to": iso[1]})
        assert r.status_code == 200, r.text  # placed at its creation time instead
        # an hour that holds none of its audio: 404, not an hour of zeros
        r = await c.get("/api/sources/nan-clock/audio", params={"from": iso[2], "to": iso[3]})
        assert r.status_code == 404 and "no audio" in r.json()["detail"]
        for bad in ({"start": "inf"}, {"start": "nan"}, {"end": "1e400"}, {"start": "1e12"}):
            r = await c.get(f"/api/streams/{nan_sid}/audio", params=bad)
            assert r.status_code == 422, (bad, r.status_code, r.text)
            assert r.json()["detail"][0]["loc"][-1] in bad
        r = await c.get("/api/streams", params={"offset": str(10**30)})
        assert r.status_code == 422
        r = await c.get(f"/api/streams/{nan_sid}/transcript", params={"format": "srt"})
        assert r.headers["content-disposition"] == (
            f"attachment; filename=\"{nan_sid}.srt\"; filename*=UTF-8''{nan_sid}.srt")


def slow_reader(port: int, path: str) -> Any:
    """A raw HTTP client that asks for ``path`` and then reads nothing (a tiny receive
    buffer, so the server's writes stall at once)."""
    import socket

    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    return s


async def test_slow_readers_from_one_address_hold_only_their_share(
        server_factory: Callable[..., ServerProcess]) -> None:
    """64 slow readers from one address held every REST place (others got 429) and were
    never let go. Now one address holds at most --max-rest-per-client (8) of them, another
    address is served meanwhile, and --rest-send-timeout frees the places."""
    server = server_factory("--rest-send-timeout", "1")
    x = np.tile((np.arange(48000 * 2) % 500 - 250).astype("<i2").reshape(-1, 2), (20, 1))
    sid = await make_stream(server.url, x, rate=48000)  # 20 s of 48 kHz stereo: 3.8 MB
    readers = [slow_reader(server.port, f"/api/streams/{sid}/audio") for _ in range(64)]
    try:
        statuses = []
        for s in readers:
            s.settimeout(5)
            statuses.append(s.recv(12).decode().split(" ")[1])
        assert statuses.count("200") == 8 and statuses.count("429") == 56, statuses
        other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(transport=other, base_url=server.http) as c:
            r = await c.get("/api/streams")
            assert r.status_code == 200, r.text  # another address is served meanwhile
        r = httpx.get(server.http + "/api/streams")
        assert r.status_code == 429 and "in flight" in r.json()["message"]
        # the readers that got in read nothing: a second later they are abandoned
        for _ in range(100):
            rest = httpx.get(server.http + "/healthz").json()["rest"]
            if rest["in_flight"] == 0:
                break
            await asyncio.sleep(0.1)
        assert rest["in_flight"] == 0 and rest["refused"]["per_client"] == 57, rest
        assert httpx.get(server.http + "/api/streams").status_code == 200
    finally:
        for s in readers:
            s.close()


async def test_replay_streams_ndjson_with_progress_and_stops_when_its_client_goes(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory()
    x = (np.sin(np.arange(16000 * 30) / 8) * 8000).astype("<i2")  # 30 s
    sid = await make_stream(server.url, x, processors=[])
    url = f"{server.http}/api/streams/{sid}/replay"
    lines = []
    async with httpx.AsyncClient() as c, c.stream(
            "POST", url, params={"processor": "level", "format": "ndjson"}) as r:
        assert r.headers["content-type"] == "application/x-ndjson"
        async for line in r.aiter_lines():
            lines.append(json.loads(line))
    levels = [e for e in lines if e["type"] == "level"]
    assert len(levels) == 600 and levels[-1]["t"] == 29.95  # every 50 ms of the 30 s
    progress = [e["progress"] for e in lines if e["type"] == "replay_progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) >= 20
    assert lines[-1]["type"] == "replay_done" and lines[-1]["events"] == 600
    # the JSON form still answers at once, within its cap
    body = httpx.post(url, params={"processor": "level"}, timeout=30).json()
    assert body["total_events"] == 600 and not body["truncated"]
    # a client that reads nothing: the job waits for it (bounded), and is cancelled when
    # the client goes, not run to the end
    long = (np.sin(np.arange(8000 * 1200) / 8) * 8000).astype("<i2")  # 20 min at 8 kHz
    sid = await make_stream(server.url, long, rate=8000, processors=[])
    s = slow_reader(server.port, "/")
    s.sendall(f"POST /api/streams/{sid}/replay?processor=level&format=ndjson HTTP/1.1\r\n"
              f"Host: 127.0.0.1:{server.port}\r\nContent-Length: 0\r\n\r\n".encode())
    seen: list[dict[str, Any]] = []
    for _ in range(100):
        await asyncio.sleep(0.1)
        seen += [j for j in httpx.get(f"{server.http}/api/replays").json()["replays"]
                 if j["stream"] == sid]
        if len(seen) >= 3 and seen[-1]["done_frames"] == seen[-3]["done_frames"]:
            break  # it stands still, waiting for its reader
    assert seen and 0 < seen[-1]["done_frames"] < len(long), seen[-3:]
    s.close()
    for _ in range(100):
        body = httpx.get(f"{server.http}/api/replays").json()
        if not body["replays"]:
            break
        await asyncio.sleep(0.05)
    assert body["replays"] == []
    ended = next(j for j in body["recent"] if j["stream"] == sid)
    assert ended["state"] == "cancelled" and ended["done_frames"] < len(long)


async def test_a_full_disk_at_stop_leaves_the_stream_resumable_and_whole(
        small_fs: Path, server_factory: Callable[..., ServerProcess]) -> None:
    """The stop's final write fails on a full disk: the stream was marked finished without
    its tail, and the client, resuming into ``stream_finished``, reported success with its
    own count. Now the stream stays interrupted; once there is space the client resumes,
    resends the tail and stops with every frame, sample for sample."""
    import os

    from earshot.client import Publisher, Reconnect

    data = small_fs / "data"
    # acks every 5 s of audio: the 2 s sent are all pending when the stop comes
    # (the database elsewhere, with room: the state it records is what a resume reads)
    server = server_factory("--min-free-space", "0", "--ack-interval", "5",
                            "--ack-interval-max", "5", "--db", str(small_fs.parent / "m.db"),
                            data_dir=data)
    rate, ch = 48000, 2
    x = (np.random.default_rng(3).standard_normal((rate * 2, ch)) * 3000).astype("<i2")
    events: list[dict[str, Any]] = []
    pub = Publisher(server.url, rate=rate, channels=ch, format="s16", processors=[],
                    reconnect=Reconnect(initial=0.1, maximum=0.3, busy_attempts=400))

    async def watch() -> None:
        async for e in pub.events():
            events.append(e)

    watcher = asyncio.create_task(watch())
    await pub.start()
    await pub.send(x)
    for _ in range(200):  # every frame received by the server, not all of it written
        async with connect(f"{server.url}/subscribe?stream={pub.stream_id}") as sub:
            held = json.loads(await sub.recv())["live"][0]["offset"]
        if held == len(x):
            break
        await asyncio.sleep(0.02)
    written = httpx.get(f"{server.http}/api/streams/{pub.stream_id}").json()["frames"]
    assert held == len(x) and written < len(x), (held, written)
    st = os.statvfs(small_fs)
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 4096))  # a page left

    async def free_when_refused() -> None:
        while not any(e.get("code") == "storage_full" for e in events):
            await asyncio.sleep(0.02)
        for _ in range(300):  # until the stop's connection is done with the stream
            if httpx.get(f"{server.http}/healthz").json()["live_streams"] == 0:
                break
            await asyncio.sleep(0.05)
        state = httpx.get(f"{server.http}/api/streams/{pub.stream_id}").json()["state"]
        assert state == "interrupted"  # (was 'finished', without the tail)
        filler.unlink()

    freer = asyncio.create_task(free_when_refused())
    frames = await pub.stop(timeout=30)
    await freer
    await watcher
    assert frames == len(x)
    rec = httpx.get(f"{server.http}/api/streams/{pub.stream_id}").json()
    assert rec["state"] == "finished" and rec["frames"] == len(x)
    import soundfile as sf

    y, _ = sf.read(data / rec["path"], dtype="int16")
    assert np.array_equal(y, x)
    assert any(e.get("code") == "storage_full" for e in events)
