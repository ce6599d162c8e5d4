"""A call whose participants are on two gateways (issue 21, item 7): two ``earshot serve
--bus redis://…`` on one test redis-server (sharing a data directory, as ``--processes``
does), ann joins through gateway 1 (which then holds the room and makes its mix), bob
through gateway 2 (his stream stays there; his audio reaches the mix over the relay). Each
hears the other and not itself, both archives are exact, the room's state is the same from
either gateway, and a refusal of the holder (``name_taken``) comes back through the other
one as the same error."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from helpers import (
    FIXTURES,
    ServerProcess,
    db,
    heard_rms,
    rms,
)
from redis_helpers import RedisServer

pytestmark = pytest.mark.slow
RATE = 16000
HEAR = 48000


def _file(path: Path, source: str, start: float, at: float, total: float) -> np.ndarray:
    speech, rate = sf.read(FIXTURES / f"{source}.wav", dtype="int16")
    assert rate == RATE
    x = np.zeros(int(total * RATE), np.int16)
    piece = speech[int(start * RATE):int((start + 2.0) * RATE)]
    x[int(at * RATE):int(at * RATE) + len(piece)] = piece
    sf.write(path, x, RATE, subtype="PCM_16")
    return x


def _call(srv: ServerProcess, name: str, f: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "earshot.cli", "call", "across", "--url",
                             srv.url, "--name", name, "--file", str(f), "--out", str(out),
                             "--linger", "1", "--min-delay", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)








async def _refused(srv: ServerProcess, name: str) -> dict:
    async with connect(srv.url.replace("/ws", "/ws/call") + f"?room=across&name={name}") as ws:
        await ws.send(json.dumps({"type": "start", "format": "s16", "rate": RATE,
                                  "processors": []}))
        return json.loads(await ws.recv())


def test_a_room_across_two_gateways(tmp_path: Path, redis_server: RedisServer) -> None:
    data = tmp_path / "data"
    gw1 = ServerProcess(data, "--bus", redis_server.url).start()
    gw2 = ServerProcess(data, "--bus", redis_server.url).start()
    try:
        spoken = {"ann": (1.0, 3.0), "bob": (3.5, 5.5)}
        files = {"ann": _file(tmp_path / "ann.wav", "speech_16k", 0.8, 1.0, 6.0),
                 "bob": _file(tmp_path / "bob.wav", "reading_16k", 0.3, 3.5, 6.0)}
        ann = _call(gw1, "ann", tmp_path / "ann.wav", tmp_path / "heard_ann.wav")
        # gateway 1 holds the room once ann is seated
        r = redis_server.client()
        for _ in range(100):
            if r.get("earshot:room:across:holder"):
                break
            time.sleep(0.05)
        holder = r.get("earshot:room:across:holder")
        assert holder is not None
        bob = _call(gw2, "bob", tmp_path / "bob.wav", tmp_path / "heard_bob.wav")
        time.sleep(1.5)
        # the same room from either gateway: gateway 2 asks the holder
        s1 = httpx.get(f"{gw1.http}/api/rooms/across").json()
        s2 = httpx.get(f"{gw2.http}/api/rooms/across").json()
        assert [p["participant"] for p in s1["participants"]] == ["ann", "bob"], s1
        assert s2["participants"] == s1["participants"] or \
            [p["participant"] for p in s2["participants"]] == ["ann", "bob"], s2
        assert "held_by" not in s1 and s2["held_by"] == holder.decode()
        for what in ("audio", "transcript"):  # made on the holder
            r409 = httpx.get(f"{gw2.http}/api/rooms/across/{what}")
            assert r409.status_code == 409 and r409.json()["detail"]["holder"], r409.text
        # a name taken on the holder is refused through the other gateway, the same way
        for srv in (gw2, gw1):
            refusal = asyncio.run(_refused(srv, "ann"))
            assert refusal["type"] == "error" and refusal["code"] == "name_taken", refusal
        events = {}
        for n, p in (("ann", ann), ("bob", bob)):
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            events[n] = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        for me, other in (("ann", "bob"), ("bob", "ann")):
            heard, rate = sf.read(tmp_path / f"heard_{me}.wav", dtype="float32")
            assert rate == HEAR and len(heard) >= 6.5 * HEAR
            other_rms = heard_rms(heard, files[other], spoken[other])
            own = spoken[me]
            mine = heard[int((own[0] + 0.1) * HEAR):int((own[1] - 0.1) * HEAR)]
            assert db(other_rms) - db(rms(mine)) >= 30, (me, other_rms, rms(mine))
            # bob (remote) was told of the room's events once each, as ann was
            joined = [e["participant"] for e in events[me] if e["type"] == "joined"]
            assert len(joined) == len(set(joined)) and "bob" in joined, events[me]
        # each archive exact, each stream held by the gateway it was sent to
        streams = httpx.get(gw1.http + "/api/streams").json()["streams"]
        got = {s["name"]: s for s in streams if s["name"].startswith("across/")}
        assert set(got) == {"across/ann", "across/bob"}
        for n, x in files.items():
            s = got[f"across/{n}"]
            assert s["state"] == "finished"
            audio = httpx.get(f"{gw1.http}/api/streams/{s['id']}/audio")
            y, _ = sf.read(io.BytesIO(audio.content), dtype="int16")
            assert np.array_equal(y, x), n
        # the room's events from the holder reach both: joined/left on one room clock
        ann_join = [e["t"] for e in events["ann"] if e["type"] == "joined"
                    and e["participant"] == "bob"]
        bob_join = [e["t"] for e in events["bob"] if e["type"] == "joined"
                    and e["participant"] == "bob"]
        assert ann_join and ann_join == bob_join
        # the call recording, made on the holder, has bob's track from gateway 2's stream
        rec = httpx.get(f"{gw1.http}/api/rooms/across/audio", params={"tracks": 1})
        assert rec.status_code == 200, rec.text
        tracks, rate = sf.read(io.BytesIO(rec.content), dtype="float32")
        assert rate == HEAR and tracks.shape[1] == 2
        bob_track = tracks[:, 1]
        assert rms(bob_track) > 0.01 and rms(tracks[:, 0]) > 0.01
    finally:
        gw1.stop()
        gw2.stop()
