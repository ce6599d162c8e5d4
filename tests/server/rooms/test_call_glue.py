"""The call glue in process (server/rooms): the ingest session on a call socket, the room
service on a fake clock. Refusals and limits, mixing streams of different rates, mute, and
the call recording equal to the sum of the archives."""

from __future__ import annotations

import asyncio
import io
import json
import struct

import numpy as np
import pytest
import soundfile as sf

from earshot.rooms.room import RoomLimits
from earshot.server.rooms.routes import get_room_audio
from earshot.server.rooms.service import RoomService
from earshot.server.rooms.session import CallSession
from earshot.server.testing import Gateway, MemoryWebSocket, SessionClient

FRAME = 960


async def connect(gw: Gateway, rooms: RoomService, room: str, name: str,
                  mix: str = "s16") -> SessionClient:
    ws = MemoryWebSocket({"room": room, "name": name, "mix": mix})
    session = CallSession(ws, gw.hub, rooms)  # type: ignore[arg-type]
    task = asyncio.create_task(session.run())
    await asyncio.sleep(0)
    client = SessionClient(ws, session, task)
    gw.clients.append(client)
    return client


async def start(c: SessionClient, rate: int) -> dict:
    await c.send_json({"type": "start", "format": "s16", "rate": rate, "processors": []})
    return await c.expect("room")


def mix_of(c: SessionClient) -> tuple[int, np.ndarray]:
    """What ``c`` was sent as its mix (mix=s16): the first room frame, the samples."""
    ws = c.ws
    assert isinstance(ws, MemoryWebSocket)
    frames = {struct.unpack_from("<Q", b)[0]: np.frombuffer(b[8:], "<i2") for b in ws.binary}
    if not frames:
        return 0, np.zeros(0, np.int16)
    first, last = min(frames), max(frames)
    out = np.zeros(last - first + FRAME, np.int16)
    for f, x in frames.items():
        out[f - first:f - first + FRAME] = x
    return first, out


async def run(gw: Gateway, seconds: float, feed: dict[SessionClient, np.ndarray],
              rates: dict[SessionClient, int], pos: dict[SessionClient, int]) -> None:
    """``seconds`` of the fake clock in 20 ms steps, each client sending 20 ms per step."""
    for _ in range(round(seconds / 0.02)):
        for c, x in feed.items():
            n = rates[c] // 50
            chunk = x[pos[c]:pos[c] + n]
            pos[c] += len(chunk)
            if len(chunk):
                c.send_audio(chunk.astype("<i2").tobytes())
        await asyncio.sleep(0.001)
        gw.clock.advance(0.02)
        await gw.hub.tick()
        await asyncio.sleep(0.025)  # the room's timer wakes (it sleeps at most a tick)


def tone(freq: float, rate: int, seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(amp * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def power_at(x: np.ndarray, freq: float, rate: int = 48000) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    k = round(freq * len(x) / rate)
    return float(spec[max(0, k - 2):k + 3].max())


async def test_refusals_are_clear_and_leave_other_rooms_alone() -> None:
    async with Gateway() as gw:
        rooms = RoomService(gw.hub, RoomLimits(max_seats=2, max_rooms=1))
        bad = await connect(gw, rooms, "no/slash", "ann")
        await bad.send_json({"type": "start", "format": "s16", "rate": 16000})
        assert (await bad.expect("error"))["code"] == "invalid_room"
        nameless = await connect(gw, rooms, "r", " ann")
        await nameless.send_json({"type": "start", "format": "s16", "rate": 16000})
        assert (await nameless.expect("error"))["code"] == "invalid_name"
        ann = await connect(gw, rooms, "r", "ann")
        state = await start(ann, 16000)
        assert [p["participant"] for p in state["participants"]] == ["ann"]
        twin = await connect(gw, rooms, "r", "ann")
        await twin.send_json({"type": "start", "format": "s16", "rate": 16000})
        assert (await twin.expect("error"))["code"] == "name_taken"
        bob = await connect(gw, rooms, "r", "bob")
        await start(bob, 48000)
        cat = await connect(gw, rooms, "r", "cat")
        await cat.send_json({"type": "start", "format": "s16", "rate": 16000})
        assert (await cat.expect("error"))["code"] == "room_full"
        other = await connect(gw, rooms, "s", "dan")
        await other.send_json({"type": "start", "format": "s16", "rate": 16000})
        assert (await other.expect("error"))["code"] == "too_many_rooms"
        # refused starts opened no stream, and the connection may try again
        assert {r.name for r in gw.store.list(limit=10, offset=0)[0]} == {"r/ann", "r/bob"}
        await cat.send_json({"type": "start", "format": "s16", "rate": 16000})
        assert (await cat.expect("error"))["code"] == "room_full"
        # the room goes on: ann (16 kHz) and bob (48 kHz) hear each other, resampled
        a, b = tone(440, 16000, 1.0), tone(1000, 48000, 1.0)
        await run(gw, 1.0, {ann: a, bob: b}, {ann: 16000, bob: 48000}, {ann: 0, bob: 0})
        _, heard_a = mix_of(ann)
        _, heard_b = mix_of(bob)
        assert len(heard_a) >= 0.8 * 48000 and len(heard_b) >= 0.8 * 48000
        assert power_at(heard_a, 1000) > 1000 * power_at(heard_a, 440)  # bob, not itself
        assert power_at(heard_b, 440) > 1000 * power_at(heard_b, 1000)  # ann, not itself
        snap = rooms.snapshot("r", stats=True)
        assert [p["participant"] for p in snap["participants"]] == ["ann", "bob"]
        assert snap["participants"][0]["mix"]["frames_in"] == len(a)


async def test_mute_is_told_to_everyone_and_silences_the_seat() -> None:
    async with Gateway() as gw:
        rooms = RoomService(gw.hub)
        ann, bob = await connect(gw, rooms, "m", "ann"), await connect(gw, rooms, "m", "bob")
        await start(ann, 48000)
        await start(bob, 48000)
        pos = {ann: 0, bob: 0}
        a = tone(440, 48000, 2.0)
        silent = np.zeros(len(a), np.int16)
        await run(gw, 0.6, {ann: a, bob: silent}, {ann: 48000, bob: 48000}, pos)
        await ann.send_json({"type": "mute", "muted": True})
        for c in (ann, bob):
            e = await c.expect("muted")
            assert e["participant"] == "ann" and e["room"] == "m"
        before = len(bob.ws.binary)  # type: ignore[attr-defined]
        await run(gw, 0.6, {ann: a, bob: silent}, {ann: 48000, bob: 48000}, pos)
        later = [np.frombuffer(m[8:], "<i2") for m in bob.ws.binary[before + 2:]]  # type: ignore[attr-defined]
        assert later and max(int(np.abs(x).max()) for x in later) == 0
        await ann.send_json({"type": "mute", "muted": "yes"})
        assert (await ann.expect("error"))["code"] == "bad_event"


async def test_the_call_recording_is_the_sum_of_the_archives() -> None:
    async with Gateway() as gw:
        rooms = RoomService(gw.hub)
        rng = np.random.default_rng(7)
        ann, bob = await connect(gw, rooms, "rec", "ann"), await connect(gw, rooms, "rec", "bob")
        await start(ann, 48000)
        a = np.round(rng.standard_normal(48000) * 3000).astype(np.int16)
        b = np.round(rng.standard_normal(48000) * 3000).astype(np.int16)
        pos = {ann: 0, bob: 0}
        await run(gw, 0.3, {ann: a}, {ann: 48000}, pos)  # bob joins 0.3 s later
        await start(bob, 48000)
        await run(gw, 0.8, {ann: a, bob: b}, {ann: 48000, bob: 48000}, pos)
        for c in (ann, bob):
            await c.send_json({"type": "stop"})
            await c.expect("stopped")
        stretches = rooms.stretches("rec")
        assert [s["participant"] for s in stretches] == ["ann", "bob"]
        joined = {s["participant"]: round(s["joined_at"] * 48000) for s in stretches}
        sent = {"ann": a[:pos[ann]], "bob": b[:pos[bob]]}
        total = max(joined[n] + len(x) for n, x in sent.items())
        expect = np.zeros(total, np.int64)
        for n, x in sent.items():
            expect[joined[n]:joined[n] + len(x)] += x
        r = await get_room_audio("rec", rooms, tracks=False)
        y, rate = sf.read(io.BytesIO(r.body), dtype="int16")
        assert rate == 48000 and len(y) == total
        assert int(np.abs(y.astype(np.int64) - expect).max()) <= 1
        r = await get_room_audio("rec", rooms, tracks=True)
        y2, _ = sf.read(io.BytesIO(r.body), dtype="int16")
        assert y2.shape == (total, 2)
        assert np.array_equal(y2[joined["bob"]:joined["bob"] + len(sent["bob"]), 1],
                              sent["bob"])
        assert json.loads((rooms.dir / "rec.json").read_text())["room"] == "rec"


@pytest.mark.parametrize("kind", ["speech_start", "speech_end"])
async def test_vad_events_become_speaking_and_silent(kind: str) -> None:
    async with Gateway() as gw:
        rooms = RoomService(gw.hub)
        ann = await connect(gw, rooms, "v", "ann")
        await start(ann, 16000)
        session = ann.session
        session.post({"type": "speech_start", "t": 0.5})
        e = await ann.expect("speaking")
        assert e["participant"] == "ann" and e["t"] == pytest.approx(0.5)
        if kind == "speech_end":
            session.post({"type": "speech_end", "t": 1.25})
            assert (await ann.expect("silent"))["t"] == pytest.approx(1.25)


async def test_the_rooms_settings_are_the_limits_a_gateway_keeps() -> None:
    """``--room-seats 2 --max-rooms 1 --seat-grace 0.5 --room-grace 1`` (the flat settings a
    gateway is built with) are what its rooms refuse and end by, on the fake clock."""
    async with Gateway(room_seats=2, max_rooms=1, seat_grace=0.5, room_grace=1.0) as gw:
        rooms = RoomService(gw.hub)  # no limits given: the gateway's settings
        assert (rooms.limits.max_seats, rooms.limits.max_rooms) == (2, 1)
        assert (rooms.limits.seat_grace, rooms.limits.grace) == (0.5, 1.0)
        ann, bob = await connect(gw, rooms, "r", "ann"), await connect(gw, rooms, "r", "bob")
        await start(ann, 16000)
        await start(bob, 16000)
        cat = await connect(gw, rooms, "r", "cat")
        await cat.send_json({"type": "start", "format": "s16", "rate": 16000})
        err = await cat.expect("error")
        assert err["code"] == "room_full" and "2 participants" in err["message"]
        dan = await connect(gw, rooms, "s", "dan")
        await dan.send_json({"type": "start", "format": "s16", "rate": 16000})
        err = await dan.expect("error")
        assert err["code"] == "too_many_rooms" and "at most 1 rooms" in err["message"]
        # bob's network drops: his seat waits 0.5 s (then at the room's next 1 s tick) ...
        await bob.disconnect()
        quiet = np.zeros(16000 * 4, np.int16)
        pos = {ann: 0}
        await run(gw, 0.4, {ann: quiet}, {ann: 16000}, pos)
        assert [p["participant"] for p in rooms.snapshot("r")["participants"]] == ["ann", "bob"]
        await run(gw, 0.8, {ann: quiet}, {ann: 16000}, pos)
        left = await ann.expect("left")
        assert left["participant"] == "bob" and left["reason"] == "lost"
        assert left["t"] == pytest.approx(0.5, abs=0.05)  # lost at 0, gone after seat_grace
        # ... and once ann stops, the empty room ends after 1 s: the gateway may open another
        await ann.send_json({"type": "stop"})
        await ann.expect("stopped")
        await run(gw, 0.5, {}, {}, {})
        assert rooms.names() == ["r"]  # within its grace
        await run(gw, 1.6, {}, {}, {})
        assert rooms.names() == []
        await dan.send_json({"type": "start", "format": "s16", "rate": 16000})
        assert [p["participant"] for p in (await dan.expect("room"))["participants"]] == ["dan"]
