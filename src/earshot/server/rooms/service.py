"""The rooms held on one gateway: the glue between the ingest sessions and the room cores.

Everything runs on the event loop, time from the hub's clock. Per room:

* a :class:`~earshot.rooms.room.Room` (seats, the room clock, events, limits) inside the
  gateway's :class:`~earshot.rooms.room.Rooms` (``too_many_rooms``);
* a :class:`~earshot.rooms.mixer.Mixer`, fed each participant's audio as it arrives
  (:meth:`RoomService.audio`, one push per WebSocket message, not per ack batch), and a
  timer task that calls :meth:`Mixer.tick` when it is due and encodes each seat's
  mix-minus with that seat's own Opus encoder (one 20 ms packet per tick);
* the call's *stretches* (who was in it, on which stream, from which room time and stream
  frame, for how many frames), kept in ``DATA/rooms/ROOM.json`` for the call recording and
  the transcript by speaker (:mod:`earshot.server.rooms.routes`).

The limits (:class:`~earshot.rooms.room.RoomLimits`) are the gateway's ``rooms`` settings
(``--max-rooms``, ``--room-seats``, ``--room-grace``, ``--seat-grace``: :func:`room_limits`)
unless given.

Room events (:class:`~earshot.rooms.room.RoomEvent`) go to every participant, and onto the
bus under the stream of the participant they are about (subscribers of that stream or of
``*``, MQTT), with ``room`` and room-clock ``t``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from earshot.audio import f32_to_s16
from earshot.codec.opus import OpusEncoder
from earshot.config import RoomsSettings
from earshot.rooms.errors import RoomError
from earshot.rooms.mixer import Mixer
from earshot.rooms.room import (
    Room,
    RoomEvent,
    RoomLimits,
    Rooms,
    check_participant,
    check_room_name,
)
from earshot.server.streams.hub import Hub

__all__ = ["MIX_RATE", "Member", "RoomService", "limits_report", "mix_header", "room_limits"]

log = logging.getLogger("earshot.rooms")
MIX_RATE = 48000
TICK_MS = 20
LEVEL_TICKS = 5  # a levels message every 100 ms
HEADER = struct.Struct("<Q")


def mix_header(room_frame: int) -> bytes:
    """The 8 bytes before each mix packet: its first room frame (48 kHz), little-endian."""
    return HEADER.pack(room_frame)


def room_limits(settings: RoomsSettings) -> RoomLimits:
    """The room limits the ``rooms`` settings ask for (``--max-rooms``, ``--room-seats``,
    ``--room-grace``, ``--seat-grace``)."""
    return RoomLimits(max_seats=settings.seats, max_rooms=settings.max_rooms,
                      grace=settings.grace, seat_grace=settings.seat_grace)


def limits_report(limits: RoomLimits) -> dict[str, Any]:
    """The limits as ``/api/rooms`` and ``/healthz`` report them (by the settings' names)."""
    return {"max_rooms": limits.max_rooms, "room_seats": limits.max_seats,
            "room_grace": limits.grace, "seat_grace": limits.seat_grace}


class Listener(Protocol):
    """What the service needs of a participant's connection (the call session)."""

    def post(self, message: dict[str, Any]) -> None: ...

    def post_bytes(self, data: bytes) -> None: ...


@dataclass(eq=False)
class Member:
    participant: str
    stream: str
    rate: int
    conn: Listener | None
    encoder: OpusEncoder | None  # None: the mix goes as 16-bit PCM (``?mix=s16``)


@dataclass(eq=False)
class _Call:
    room: Room
    mixer: Mixer
    members: dict[str, Member] = field(default_factory=dict)
    stretches: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    peaks: dict[str, float] = field(default_factory=dict)


class RoomService:
    """Every room of this gateway; see the module docstring."""

    def __init__(self, hub: Hub, limits: RoomLimits | None = None, *,
                 bitrate: int = 32000) -> None:
        self.hub = hub
        self.rooms = Rooms(limits if limits is not None else room_limits(hub.settings.rooms))
        self.limits = self.rooms.limits
        self.bitrate = bitrate
        self._calls: dict[str, _Call] = {}
        self.dir = hub.settings.server.data_dir / "rooms"
        self.dir.mkdir(parents=True, exist_ok=True)

    # -- queries ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        return self.rooms.names()

    def snapshot(self, name: str, *, stats: bool = False) -> dict[str, Any]:
        """A live room's state (raises ``no_room``); with ``stats``, each seat's mixer
        counters (``mix``: frames in, repeated, gaps, restarts, stale, late, concealed)."""
        state = self.rooms.get(name).snapshot(self.hub.clock())
        call = self._calls.get(name)
        if stats and call is not None:
            for p in state["participants"]:
                if p["participant"] in call.mixer.seats:
                    st = call.mixer.stats(p["participant"])
                    p["mix"] = {"frames_in": st.frames_in, "repeated": st.repeated_frames,
                                "gaps": st.gaps, "restarts": st.restarts,
                                "stale": st.stale_frames, "late": st.jitter.late,
                                "concealed_ms": st.jitter.concealed_ms,
                                "delay": round(st.jitter.delay, 3)}
        return state

    def stretches(self, name: str) -> list[dict[str, Any]]:
        """The call's stretches: the live room's, else the last call's kept on disk."""
        check_room_name(name)
        call = self._calls.get(name)
        if call is not None:
            return [dict(s) for s in call.stretches]
        path = self._path(name)
        try:
            return list(json.loads(path.read_text())["stretches"])
        except FileNotFoundError:
            raise RoomError("no_room", f"no call in room {name!r}") from None

    def check(self, name: str, participant: str, *, resume: bool) -> None:
        """Raise what joining would raise, before any stream is opened for it."""
        check_room_name(name)
        check_participant(participant)
        if name not in self.rooms:
            if len(self.rooms) >= self.limits.max_rooms:
                raise RoomError("too_many_rooms", f"this server holds at most "
                                f"{self.limits.max_rooms} rooms")
            return
        room = self.rooms.get(name)
        if room.ended:
            raise RoomError("room_ended", f"room {name!r} has ended")
        if participant in room:
            if not resume:
                raise RoomError("name_taken", f"{participant!r} is already in room {name!r}")
            return
        if len(room) >= self.limits.max_seats:
            raise RoomError("room_full", f"room {name!r} is full ({self.limits.max_seats} "
                            "participants)")

    # -- seats ---------------------------------------------------------------------------
    def join(self, name: str, participant: str, *, stream: str, rate: int, channels: int,
             offset: int, key: str | None, conn: Listener,
             mix: str = "opus") -> dict[str, Any]:
        """Seat ``participant`` (or resume its seat); returns the room's state."""
        now = self.hub.clock()
        room, events = self.rooms.join(name, participant, stream=stream, rate=rate, now=now,
                                       offset=offset, key=key)
        call = self._calls.get(name)
        if call is None:
            call = self._calls[name] = _Call(room, Mixer(origin=room.origin, rate=MIX_RATE,
                                                          tick_ms=TICK_MS,
                                                          max_seats=self.limits.max_seats))
            call.task = asyncio.create_task(self._run(name, call), name=f"room-{name}")
        member = call.members.get(participant)
        if member is None:
            call.mixer.add_seat(participant, rate, channels)
            encoder = None if mix == "s16" else OpusEncoder(
                MIX_RATE, 1, bitrate=self.bitrate, application="lowdelay")
            member = Member(participant, stream, rate, conn, encoder)
            call.members[participant] = member
            seat = room.seat(participant)
            call.stretches.append({"participant": participant, "stream": stream,
                                   "rate": rate, "joined_at": seat.joined_at,
                                   "offset": seat.offset, "frames": None})
            self._save(name, call)
        else:  # a resume: the same seat, a new connection
            member.conn = conn
        self._dispatch(call, events)
        return room.snapshot(now)

    def leave(self, name: str, participant: str, conn: Listener, *,
              lost: bool = False) -> None:
        """``participant`` left (a stop), or its connection ``conn`` dropped (``lost``: the
        seat waits ``seat_grace`` for a resume). A connection that a resume superseded
        changes nothing."""
        call = self._calls.get(name)
        if call is None or participant not in call.room:
            return
        member = call.members.get(participant)
        if member is not None and member.conn is not conn:
            return
        now = self.hub.clock()
        if lost:
            call.room.disconnect(participant, now=now)
            if member is not None:
                member.conn = None
            return
        self._dispatch(call, call.room.leave(participant, now=now))

    def mute(self, name: str, participant: str, muted: bool) -> None:
        call = self._calls.get(name)
        if call is None:
            raise RoomError("no_room", f"no room {name!r}")
        events = call.room.mute(participant, muted, now=self.hub.clock())
        call.mixer.set_muted(participant, muted)
        self._dispatch(call, events)

    def speech(self, name: str, participant: str, kind: str, stream_seconds: float) -> None:
        """A VAD event of a participant's stream: ``speaking`` / ``silent``."""
        call = self._calls.get(name)
        if call is None or participant not in call.room:
            return
        self._dispatch(call, call.room.speech(participant, kind, stream_seconds,
                                              now=self.hub.clock()))

    def audio(self, name: str, participant: str, offset: int, samples: np.ndarray) -> None:
        """A participant's audio from stream frame ``offset``, as it arrives."""
        call = self._calls.get(name)
        if call is None or participant not in call.members:
            return
        try:
            call.mixer.push(participant, offset, samples, self.hub.clock())
        except RoomError as exc:  # never let one seat's audio stop the room
            log.warning("room %s: %s's audio refused: %s", name, participant, exc)

    # -- the timer ---------------------------------------------------------------------------
    async def _run(self, name: str, call: _Call) -> None:
        clock = self.hub.clock
        mixer = call.mixer
        next_room_tick = clock() + 1.0
        try:
            while True:
                now = clock()
                for tick in mixer.tick(now):
                    self._send(call, tick.index, tick.mixes, tick.full)
                if now >= next_room_tick:
                    next_room_tick = now + 1.0
                    events = call.room.tick(now)
                    self._dispatch(call, events)
                    if call.room.ended:
                        self.rooms.tick(now)  # forgets it: the name is free again
                        return
                await asyncio.sleep(max(0.0, mixer.next_due() - clock()))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("room %s stopped", name)
        finally:
            if self._calls.get(name) is call:
                del self._calls[name]

    def _send(self, call: _Call, index: int, mixes: Any, full: np.ndarray) -> None:
        frame = index * call.mixer.tick_frames
        for participant, mix in mixes.items():
            member = call.members.get(participant)
            if member is None:
                continue
            contribution = full - mix
            peak = float(np.max(np.abs(contribution))) if len(contribution) else 0.0
            call.peaks[participant] = max(call.peaks.get(participant, 0.0), peak)
            if member.conn is None:
                continue
            if member.encoder is None:
                member.conn.post_bytes(mix_header(frame) + f32_to_s16(mix).samples.tobytes())
                continue
            for packet in member.encoder.encode(mix):
                member.conn.post_bytes(mix_header(frame) + packet)
        if index % LEVEL_TICKS == LEVEL_TICKS - 1 and call.members:
            t = (index + 1) * call.mixer.tick_seconds
            levels = {p: (round(20 * math.log10(v), 1) if v > 1e-5 else -100.0)
                      for p, v in call.peaks.items() if p in call.members}
            call.peaks.clear()
            message = {"type": "levels", "room": call.room.name, "t": round(t, 3),
                       "levels": levels}
            for member in call.members.values():
                if member.conn is not None:
                    member.conn.post(message)

    # -- events ---------------------------------------------------------------------------
    def _dispatch(self, call: _Call, events: list[RoomEvent]) -> None:
        for e in events:
            if e.type == "left" and e.participant is not None:
                self._left(call, e)
            d = e.to_dict()
            for member in list(call.members.values()):
                if member.conn is not None:
                    member.conn.post(dict(d))
            left = call.room.name if e.stream is None else e.stream
            with contextlib.suppress(Exception):  # a bus hiccup never stops a room
                self.hub.bus.publish(left, dict(d))

    def _left(self, call: _Call, e: RoomEvent) -> None:
        participant = e.participant
        assert participant is not None
        member = call.members.pop(participant, None)
        if participant in call.mixer.seats:
            call.mixer.remove_seat(participant)
        if member is not None:
            with contextlib.suppress(Exception):
                frames = self.hub.record(member.stream).frames
                for s in call.stretches:
                    if s["participant"] == participant and s["frames"] is None:
                        s["frames"] = max(0, frames - s["offset"])
            self._save(call.room.name, call)
            member.conn = None

    def _path(self, name: str) -> Path:
        return self.dir / f"{check_room_name(name)}.json"

    def _save(self, name: str, call: _Call) -> None:
        data = {"room": name, "saved": time.time(), "stretches": call.stretches}
        path = self._path(name)
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data))
            tmp.replace(path)
        except OSError:
            log.exception("room %s: cannot save its stretches", name)

    async def close(self) -> None:
        for call in list(self._calls.values()):
            if call.task is not None:
                call.task.cancel()
                with contextlib.suppress(BaseException):
                    await call.task
