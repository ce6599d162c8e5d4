"""The Python API of calls (`earshot.call.Call`) against a real server: a bot sends audio,
receives the mix and the room's events; refusals; echo cancellation through a simulated
room; a dropped connection resumed into the same seat and stream."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import soxr

from earshot.call import Call
from earshot.errors import ClientError
from helpers import (
    FIXTURES,
    HEARD_CORRELATION,
    CutProxy,
    ServerProcess,
    best_alignment,
    block_correlation,
    free_port,
    rms,
)

pytestmark = pytest.mark.slow
HEAR = 48000


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    srv = ServerProcess(tmp_path / "data").start()
    yield srv
    srv.stop()


def _speech(name: str, start: float, seconds: float) -> np.ndarray:
    x, rate = sf.read(FIXTURES / f"{name}.wav", dtype="float32")
    return x[int(start * rate):int((start + seconds) * rate)]


def _player(x: np.ndarray) -> Callable[[int], np.ndarray | None]:
    pos = 0

    def mic(n: int) -> np.ndarray | None:
        nonlocal pos
        chunk = x[pos:pos + n]
        pos += len(chunk)
        return chunk if len(chunk) else None

    return mic


def _archive(srv: ServerProcess, stream: str) -> np.ndarray:
    r = httpx.get(f"{srv.http}/api/streams/{stream}/audio")
    assert r.status_code == 200
    return sf.read(io.BytesIO(r.content), dtype="int16")[0]


def _s16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1.0, 1.0 - 1 / 32768) * 32768.0).round().astype(np.int16)




async def test_a_bot_sends_hears_mutes_and_gets_events(server: ServerProcess) -> None:
    voice = _speech("reading_16k", 0.3, 5.0)  # 16 kHz, mixed with a 48 kHz participant
    async with Call(server.url, "bots", "listener", rate=48000, record=True) as ear:
        with pytest.raises(ClientError) as taken:
            await Call(server.url, "bots", "listener").join()
        assert taken.value.code == "name_taken"
        with pytest.raises(ClientError) as bad:
            await Call(server.url, "no/slash", "x").join()
        assert bad.value.code == "invalid_room"
        with pytest.raises(ClientError) as bad_name:
            await Call(server.url, "bots", " spaced").join()
        assert bad_name.value.code == "invalid_name"
        talker = Call(server.url, "bots", "talker", rate=16000, mic=_player(voice))
        state = await talker.join()
        assert [p["participant"] for p in state["participants"]] == ["listener", "talker"]
        await asyncio.sleep(5.5)
        await talker.mute(True)
        await asyncio.sleep(0.5)
        await talker.mute(False)
        frames = await talker.leave()
        await asyncio.sleep(0.3)
        heard = ear.heard()
    assert frames == len(voice)
    assert np.array_equal(_archive(server, talker.stream or ""), _s16(voice))
    v48 = soxr.resample(voice, 16000, HEAR)
    lag, _ = best_alignment(heard, v48)
    assert block_correlation(heard[lag:] if lag >= 0 else heard, v48, HEAR) >= HEARD_CORRELATION
    kinds = []
    while not ear.events.empty():
        e = ear.events.get_nowait()
        if e["type"] in ("joined", "left", "muted", "unmuted", "speaking", "silent"):
            kinds.append((e["type"], e.get("participant")))
    assert kinds[0] == ("joined", "talker") or kinds[:2] == [("joined", "listener"),
                                                             ("joined", "talker")]
    assert ("speaking", "talker") in kinds
    order = [k for k in kinds if k[0] in ("muted", "unmuted", "left")]
    assert order == [("muted", "talker"), ("unmuted", "talker"), ("left", "talker")]
    r = httpx.get(server.http + "/api/rooms/bots")  # ear left too: empty, in its grace
    assert r.status_code == 200 and r.json()["participants"] == []


async def _echo_room(srv: ServerProcess, room: str, aec: bool) -> float:
    """B speaks; A's speaker leaks into A's microphone 100 ms later at -6 dB; how loud B's
    own voice comes back to B (RMS over the last seconds, when AEC3 has converged)."""
    voice = _speech("reading_16k", 0.3, 7.0)
    delay = int(0.1 * HEAR)
    played: list[np.ndarray] = []
    line = np.zeros(delay, np.float32)

    def speaker(frame: np.ndarray) -> None:
        played.append(frame)

    def mic(n: int) -> np.ndarray:
        nonlocal line
        if played:
            line = np.concatenate([line, *played])
            played.clear()
        out, line = line[:n], line[n:]
        if len(out) < n:
            out = np.concatenate([out, np.zeros(n - len(out), np.float32)])
        return 0.5 * out

    async with (Call(srv.url, room, "a", rate=HEAR, mic=mic, on_audio=speaker, aec=aec),
                Call(srv.url, room, "b", rate=16000, mic=_player(voice), record=True) as b):
        await asyncio.sleep(7.5)
        heard = b.heard()
    return rms(heard[int(4.0 * HEAR):int(7.0 * HEAR)])


async def test_echo_cancellation_quiets_the_far_ends_own_voice(server: ServerProcess) -> None:
    # the two rooms at once (each 7.5 s of real time), as two calls on one server would be
    off, on = await asyncio.gather(_echo_room(server, "echo-off", aec=False),
                                   _echo_room(server, "echo-on", aec=True))
    assert off > 1e-3  # without cancellation B hears itself back
    assert 20 * np.log10(off / max(on, 1e-9)) >= 20, (off, on)


def _sweep(seconds: float, rate: int = 16000) -> np.ndarray:
    """A voice that never pauses: harmonics gliding 150 -> 400 Hz (so any stretch of it
    aligns in one place only)."""
    t = np.arange(int(seconds * rate)) / rate
    f = 150 + 250 * t / seconds
    phase = 2 * np.pi * np.cumsum(f) / rate
    x = sum(np.sin(k * phase) / k for k in (1, 2, 3, 5))
    return (0.2 * x).astype(np.float32)


async def test_a_dropped_participant_resumes_into_its_seat(server: ServerProcess) -> None:
    voice = _sweep(8.0)
    async with (CutProxy(server.port) as proxy,
                Call(server.url, "drop", "bob", rate=16000, record=True) as bob):
        ann = Call(proxy.url, "drop", "ann", rate=16000, mic=_player(voice))
        await ann.join()
        stream = ann.stream
        await asyncio.sleep(3.0)
        targets = proxy.targets
        proxy.targets = (free_port(),)  # nothing gets through for 2 s
        proxy.cut()
        await asyncio.sleep(2.0)
        proxy.targets = targets
        await asyncio.sleep(4.0)
        frames = await ann.leave()
        await asyncio.sleep(0.2)
        heard = bob.heard()
    assert ann.reconnects >= 1 and ann.stream == stream  # the same stream, resumed
    assert frames == len(voice)
    assert np.array_equal(_archive(server, stream or ""), _s16(voice))  # nothing lost
    # Bob heard a gap of about 2 s, then ann again at the live edge (not replayed late).
    block = HEAR // 50
    loud = np.array([rms(heard[i:i + block]) > 1e-3 for i in range(0, len(heard), block)])
    runs, start = [], None
    for i, v in enumerate(loud):
        if not v and start is None:
            start = i
        elif v and start is not None:
            runs.append((start, i))
            start = None
    longest = max(runs, key=lambda r: r[1] - r[0])
    gap = (longest[1] - longest[0]) * 0.02
    assert 1.6 <= gap <= 3.2, (gap, runs)
    v48 = soxr.resample(voice, 16000, HEAR)
    cut = longest[0] * block
    lag_before, c1 = best_alignment(heard[cut - 2 * HEAR:cut], v48)
    lag_after, c2 = best_alignment(heard[longest[1] * block:longest[1] * block + 2 * HEAR], v48)
    after = lag_after + longest[1] * block
    before = lag_before + cut - 2 * HEAR
    # the same mouth-to-ear delay after the gap as before: what was missed was skipped
    assert abs(after - before) < 0.25 * HEAR, (before / HEAR, after / HEAR, c1, c2)


async def test_a_token_that_may_not_publish_there_cannot_speak(tmp_path: Path) -> None:
    """A call seat is a publish of ``ROOM/name``: a listen-only token, or a publish token
    for other names, is refused (``forbidden``) and takes no seat; one for the room joins."""
    admin = "calls-admin-secret-0123456789"
    srv = ServerProcess(tmp_path / "data", "--token", admin).start()
    try:
        def token(scope: str, names: str | None = None) -> str:
            r = httpx.post(f"{srv.http}/api/tokens", json={"scope": [scope], "names": names},
                           headers={"authorization": f"Bearer {admin}"})
            assert r.status_code == 200, r.text
            return str(r.json()["token"])

        for refused in (token("listen"), token("publish", "other/*")):
            with pytest.raises(ClientError) as exc:
                await Call(srv.url, "standup", "eve", token=refused).join()
            assert exc.value.code == "forbidden"
        rooms = httpx.get(f"{srv.http}/api/rooms",
                          headers={"authorization": f"Bearer {admin}"}).json()
        assert "eve" not in str(rooms)  # no seat was taken
        async with Call(srv.url, "standup", "ann", token=token("publish", "standup/*")) as ann:
            assert ann.stream
    finally:
        srv.stop()


async def test_the_servers_room_limits_are_its_options(tmp_path: Path) -> None:
    """``earshot serve --room-seats 2 --max-rooms 1``: a third participant gets ``room_full``
    and a second room ``too_many_rooms``, each naming the limit; /api/rooms and /healthz
    report the limits; the room that is held goes on."""
    srv = ServerProcess(tmp_path / "data", "--room-seats", "2", "--max-rooms", "1",
                        "--seat-grace", "4").start()
    try:
        limits = httpx.get(f"{srv.http}/api/rooms").json()["limits"]
        assert limits == {"max_rooms": 1, "room_seats": 2, "room_grace": 30.0,
                          "seat_grace": 4.0}
        assert httpx.get(f"{srv.http}/healthz").json()["rooms"] == limits
        async with Call(srv.url, "standup", "ann"), Call(srv.url, "standup", "bob"):
            with pytest.raises(ClientError) as full:
                await Call(srv.url, "standup", "cat").join()
            assert full.value.code == "room_full"
            assert "full (2 participants)" in str(full.value)
            with pytest.raises(ClientError) as many:
                await Call(srv.url, "retro", "dan").join()
            assert many.value.code == "too_many_rooms"
            assert "at most 1 rooms" in str(many.value)
            rooms = httpx.get(f"{srv.http}/api/rooms").json()["rooms"]
            assert [(r["room"], [p["participant"] for p in r["participants"]])
                    for r in rooms] == [("standup", ["ann", "bob"])]
        names = {s["name"] for s in httpx.get(f"{srv.http}/api/streams").json()["streams"]}
        assert names == {"standup/ann", "standup/bob"}  # the refused joins opened no stream
    finally:
        srv.stop()
    assert "Traceback" not in srv.log.read_text()
