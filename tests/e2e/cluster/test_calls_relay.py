"""The relay of rooms across gateways in process (server/rooms/relay.py): two gateways
(hubs on one fake clock, each its own RoomService and RoomRelay) on a real redis-server.
Remote seats hear and are heard, refusals come back as the same codes, mute is told to
everyone once, a remote seat whose gateway goes quiet counts as a dropped connection, and
a holder key left by a gateway that no longer listens is taken over."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from earshot.cluster.bus.keys import Keys
from earshot.rooms.room import RoomLimits
from earshot.server.rooms.relay import RoomRelay
from earshot.server.rooms.service import RoomService
from earshot.server.rooms.session import CallSession
from earshot.server.testing import FakeClock, Gateway, MemoryWebSocket, SessionClient
from redis_helpers import RedisServer

pytestmark = pytest.mark.slow
FRAME = 960


@dataclass
class Side:
    gw: Gateway
    rooms: RoomService
    relay: RoomRelay

    async def connect(self, room: str, name: str) -> SessionClient:
        ws = MemoryWebSocket({"room": room, "name": name, "mix": "s16"})
        session = CallSession(ws, self.gw.hub, self.rooms, self.relay)  # type: ignore[arg-type]
        task = asyncio.create_task(session.run())
        await asyncio.sleep(0)
        client = SessionClient(ws, session, task)
        self.gw.clients.append(client)
        return client


@pytest.fixture
async def sides(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[list[Side]]:
    clock = FakeClock()
    out = []
    for i in (1, 2):
        (tmp_path / f"gw{i}").mkdir()
        gw = await Gateway(tmp_path / f"gw{i}", clock=clock).__aenter__()
        rooms = RoomService(gw.hub, RoomLimits(max_seats=2))
        relay = RoomRelay(rooms, redis_server.url, Keys(), f"gw{i}", lost_after=1.0)
        await relay.start()
        out.append(Side(gw, rooms, relay))
    yield out
    for s in out:
        await s.relay.close()
        await s.rooms.close()
        await s.gw.close()


async def start(c: SessionClient, rate: int = 48000) -> dict:
    await c.send_json({"type": "start", "format": "s16", "rate": rate, "processors": []})
    return await c.expect("room")


def tone(freq: float, seconds: float, rate: int = 48000) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(0.3 * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def heard(c: SessionClient) -> np.ndarray:
    ws = c.ws
    assert isinstance(ws, MemoryWebSocket)
    frames = {struct.unpack_from("<Q", b)[0]: np.frombuffer(b[8:], "<i2") for b in ws.binary}
    if not frames:
        return np.zeros(0, np.int16)
    first = min(frames)
    out = np.zeros(max(frames) - first + FRAME, np.int16)
    for f, x in frames.items():
        out[f - first:f - first + FRAME] = x
    return out


def power_at(x: np.ndarray, freq: float) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    k = round(freq * len(x) / 48000)
    return float(spec[max(0, k - 2):k + 3].max())


async def talk(sides: list[Side], seconds: float, feed: dict[SessionClient, np.ndarray],
               pos: dict[SessionClient, int]) -> None:
    """``seconds`` of the fake clock in 20 ms steps, each client sending 20 ms per step."""
    clock = sides[0].gw.clock
    for _ in range(round(seconds / 0.02)):
        for c, x in feed.items():
            c.send_audio(x[pos[c]:pos[c] + FRAME].astype("<i2").tobytes())
            pos[c] += FRAME
        await asyncio.sleep(0.01)  # the relayed audio reaches the holder (real time)
        clock.advance(0.02)
        for s in sides:
            await s.gw.hub.tick()
        await asyncio.sleep(0.02)  # the room's timer wakes; the mix comes back


async def test_remote_seats_hear_and_are_heard(sides: list[Side],
                                               redis_server: RedisServer) -> None:
    one, two = sides
    ann = await one.connect("r", "ann")
    await start(ann)
    assert redis_server.client().get("earshot:room:r:holder") == b"gw1"
    bob = await two.connect("r", "bob")
    state = await start(bob)
    assert [p["participant"] for p in state["participants"]] == ["ann", "bob"]
    assert two.rooms.names() == [] and one.rooms.names() == ["r"]  # held on gateway 1 only
    # refusals of the holder, through either gateway, as the same codes
    for side, name, code in ((two, "ann", "name_taken"), (one, "bob", "name_taken"),
                             (two, "cat", "room_full")):
        c = await side.connect("r", name)
        await c.send_json({"type": "start", "format": "s16", "rate": 16000})
        assert (await c.expect("error", timeout=5))["code"] == code
    pos = {ann: 0, bob: 0}
    a, b = tone(440, 3.0), tone(1000, 3.0)
    await talk(sides, 1.0, {ann: a, bob: b}, pos)
    ha, hb = heard(ann), heard(bob)
    assert len(ha) >= 0.6 * 48000 and len(hb) >= 0.6 * 48000, (len(ha), len(hb))
    assert power_at(ha, 1000) > 1000 * power_at(ha, 440)  # bob (remote), not itself
    assert power_at(hb, 440) > 1000 * power_at(hb, 1000)  # ann, not itself
    # the holder mixed every sample bob's gateway archived (relayed, binary, exact count)
    snap = one.rooms.snapshot("r", stats=True)
    assert snap["participants"][1]["mix"]["frames_in"] == pos[bob]
    # mute through the remote gateway: told to both, once each
    await bob.send_json({"type": "mute", "muted": True})
    for c in (ann, bob):
        e = await c.expect("muted", timeout=5)
        assert e["participant"] == "bob"
    await talk(sides, 0.2, {ann: a, bob: b}, pos)
    assert sum(1 for m in bob.messages() if m.get("type") == "muted") == 1
    assert sum(1 for m in bob.messages() if m.get("type") == "joined"
               and m.get("participant") == "bob") == 1
    # the room's state asked of the holder through gateway 2
    remote = await two.relay.state("r", "gw1")
    assert [p["muted"] for p in remote["participants"]] == [False, True]
    await bob.send_json({"type": "mute", "muted": False})
    await ann.expect("unmuted", timeout=5)
    # bob's VAD (its stream's events, on gateway 2) makes him speaking in the room
    bob.session.post({"type": "speech_start", "t": 0.5})
    for c in (ann, bob):
        e = await c.expect("speaking", timeout=5)
        assert e["participant"] == "bob"
        assert e["t"] == pytest.approx(state["participants"][1]["joined_at"] + 0.5)
    # bob's network drops: his seat waits; he resumes through gateway 2 into it
    ready = next(m for m in bob.messages() if m.get("type") == "ready")
    await bob.disconnect()
    for _ in range(50):
        if not one.rooms.snapshot("r")["participants"][1]["connected"]:
            break
        await asyncio.sleep(0.05)
    assert not one.rooms.snapshot("r")["participants"][1]["connected"]
    again = await two.connect("r", "bob")
    await again.send_json({"type": "start", "format": "s16", "rate": 48000,
                           "processors": [], "resume": ready["stream"],
                           "resume_token": ready["resume_token"]})
    resumed = await again.expect("room", timeout=5)
    assert resumed["participants"][1]["connected"] is True
    assert [m for m in ann.messages() if m.get("type") in ("joined", "left")
            and m.get("participant") == "bob"] == [next(
                m for m in ann.messages() if m.get("type") == "joined"
                and m.get("participant") == "bob")]  # resumed silently, never left
    before = len(again.ws.binary)  # type: ignore[attr-defined]
    await talk(sides, 0.6, {ann: a, again: b}, pos | {again: pos[bob]})
    assert len(again.ws.binary) > before + 10  # type: ignore[attr-defined]  # hears again
    # bob stops: he leaves the room on the holder
    await again.send_json({"type": "stop"})
    left = await ann.expect("left", timeout=5)
    assert left["participant"] == "bob" and left["reason"] == "left"


async def test_a_quiet_gateway_loses_its_seats_and_a_dead_holder_is_replaced(
        sides: list[Side], redis_server: RedisServer) -> None:
    one, two = sides
    ann = await one.connect("q", "ann")
    await start(ann)
    bob = await two.connect("q", "bob")
    await start(bob)
    await two.relay.close()  # gateway 2 goes quiet: no audio, no "alive"
    for _ in range(40):
        seats = one.rooms.snapshot("q")["participants"]
        if not seats[1]["connected"]:
            break
        await asyncio.sleep(0.1)
    assert [s["connected"] for s in seats] == [True, False]  # waits for a resume
    # a holder key whose gateway no longer listens is taken by the next join
    r = redis_server.client()
    r.set("earshot:room:z:holder", "gw-dead", px=60_000)
    assert await one.relay.locate("z") is None
    assert r.get("earshot:room:z:holder") == b"gw1"
    r.set("earshot:room:y:holder", "gw2", px=60_000)  # gw2's relay is closed
    assert await one.relay.locate("y") is None
