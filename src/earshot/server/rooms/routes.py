"""The call endpoints: ``/ws/call`` and the ``/api/rooms`` REST routes.

* ``GET /api/rooms`` — the rooms live on this gateway, and its limits (``--max-rooms``,
  ``--room-seats``, ``--room-grace``, ``--seat-grace``);
* ``GET /api/rooms/ROOM`` — one live room's state (its clock, its participants);
* ``GET /api/rooms/ROOM/audio`` — the call recording as WAV (16-bit, 48 kHz): every
  participant's archive aligned on the room clock and summed (no limiter: the sum of the
  archives), silence where nobody had joined; ``?tracks=1``: one channel per participant,
  in joining order;
* ``GET /api/rooms/ROOM/transcript`` — the transcript by speaker (each participant's
  finals on the room clock, the speaker named), ``?format=json|txt|srt|vtt``.

The recording and the transcript are of the room's current call, or of the last call
held under that name on this gateway (``DATA/rooms/ROOM.json``).

With a Redis bus a room may be held by another gateway (:mod:`earshot.server.rooms.relay`):
then ``GET /api/rooms/ROOM`` answers with the holder's state (asked of it through the
relay, ``held_by`` naming it), and the recording and the transcript of a call under way
are refused with 409 ``held_elsewhere`` naming the holder (they are made there, where the
call's stretches are kept); once the call has ended they are served from any gateway that
shares the holder's data directory.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
import soundfile as sf
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from starlette.websockets import WebSocket

from earshot.config import Settings
from earshot.errors import StreamNotFound
from earshot.rooms.errors import RoomError
from earshot.rooms.recording import Track, call_transcript, mix_call, participants
from earshot.server.http.rest import require_token
from earshot.server.rooms.relay import RoomRelay
from earshot.server.rooms.service import MIX_RATE, RoomService, limits_report
from earshot.server.rooms.session import CallSession
from earshot.server.streams.hub import Hub
from earshot.wire.codes import Code

__all__ = ["add_rooms", "close_rooms", "open_rooms", "relay_of", "rooms_of"]

router = APIRouter(prefix="/api/rooms", tags=["rooms"], dependencies=[Depends(require_token)])


def rooms_of(app: Any) -> RoomService:
    """The gateway's rooms (made on first use, once the hub exists)."""
    service = getattr(app.state, "rooms", None)
    if service is None:
        service = app.state.rooms = RoomService(app.state.hub)
    return service


def relay_of(app: Any) -> RoomRelay | None:
    """The gateway's relay of rooms across gateways (None: not on a Redis bus)."""
    return getattr(app.state, "room_relay", None)


async def open_rooms(app: Any) -> None:
    """On a Redis bus, start the relay that lets a room's participants be on any gateway."""
    from earshot.cluster.bus.redis import RedisStreamsBus

    bus = app.state.hub.bus
    if isinstance(bus, RedisStreamsBus):
        relay = RoomRelay(rooms_of(app), bus.url, bus.keys, bus.name)
        await relay.start(wait=5.0 if bus.up else 0.0)  # Redis down: start anyway
        app.state.room_relay = relay


async def close_rooms(app: Any) -> None:
    relay = relay_of(app)
    if relay is not None:
        await relay.close()
        app.state.room_relay = None
    service = getattr(app.state, "rooms", None)
    if service is not None:
        await service.close()


def _service(request: Request) -> RoomService:
    return rooms_of(request.app)


Rooms = Annotated[RoomService, Depends(_service)]


def _http(exc: RoomError) -> HTTPException:
    status = 404 if exc.code in ("no_room", "not_in_room") else 400
    if exc.code == Code.ROOM_UNREACHABLE:
        status = 503
    return HTTPException(status, {"code": exc.code, "message": exc.message})


async def _held_elsewhere(request: Request, room: str) -> str | None:
    relay = relay_of(request.app)
    return None if relay is None else await relay.holder_of(room)


async def _not_held_elsewhere(request: Request, room: str) -> None:
    """409 for the recording or transcript of a call under way on another gateway."""
    holder = await _held_elsewhere(request, room)
    if holder is not None:
        raise HTTPException(409, {"code": Code.HELD_ELSEWHERE, "holder": holder,
                                  "message": f"room {room!r} is held by gateway {holder}: "
                                  "its recording and transcript are made there"})


@router.get("", summary="The rooms live on this gateway, and its limits")
async def list_rooms(rooms: Rooms) -> dict[str, Any]:
    return {"rooms": [rooms.snapshot(n) for n in rooms.names()],
            "limits": limits_report(rooms.limits)}


@router.get("/{room}", summary="One live room: its clock and participants (with each "
            "seat's mixer counters)")
async def get_room(room: str, rooms: Rooms, request: Request) -> dict[str, Any]:
    try:
        holder = await _held_elsewhere(request, room)
        if holder is not None:
            relay = relay_of(request.app)
            assert relay is not None
            return {**await relay.state(room, holder), "held_by": holder}
        return rooms.snapshot(room, stats=True)
    except RoomError as exc:
        raise _http(exc) from None


def _tracks(hub: Hub, stretches: list[dict[str, Any]]) -> list[Track]:
    out = []
    for s in stretches:
        stream = s["stream"]
        try:
            hub.sync_archive(stream)
            rec = hub.record(stream)
        except StreamNotFound:
            continue
        path = hub.path_of(rec)
        have = max(0, rec.frames - s["offset"])
        frames = have if s["frames"] is None else min(have, s["frames"])
        out.append(Track(s["participant"], rec.rate, s["joined_at"], s["offset"], frames,
                         read=_reader(str(path)), stream=stream))
    return out


def _reader(path: str) -> Callable[[int, int], np.ndarray]:
    def read(start: int, count: int) -> np.ndarray:
        with sf.SoundFile(path) as f:
            f.seek(min(start, f.frames))
            return np.asarray(f.read(count, dtype="float32", always_2d=True), np.float32)

    return read


@router.get("/{room}/audio", summary="The call recording (WAV); ?tracks=1: a channel each",
            responses={200: {"content": {"audio/wav": {}}}},
            dependencies=[Depends(_not_held_elsewhere)])
async def get_room_audio(room: str, rooms: Rooms,
                         tracks: Annotated[bool, Query()] = False) -> Response:
    try:
        stretches = rooms.stretches(room)
    except RoomError as exc:
        raise _http(exc) from None
    parts = _tracks(rooms.hub, stretches)

    def render() -> bytes:
        pcm = mix_call(parts, MIX_RATE, tracks_mode=tracks)
        if tracks and pcm.ndim == 2 and pcm.shape[1] == 0:
            pcm = np.zeros((len(pcm), 1), np.float32)
        buf = io.BytesIO()
        sf.write(buf, np.clip(pcm, -1.0, 1.0), MIX_RATE, subtype="PCM_16", format="WAV")
        return buf.getvalue()

    body = await asyncio.to_thread(render)
    names = ",".join(participants(parts))
    return Response(body, media_type="audio/wav", headers={
        "Content-Disposition": f'attachment; filename="{room}.wav"',
        "X-Earshot-Participants": names.encode("ascii", "replace").decode()})


@router.get("/{room}/transcript", summary="The transcript by speaker: JSON, or "
            "?format=srt|vtt|txt", dependencies=[Depends(_not_held_elsewhere)])
async def get_room_transcript(
        room: str, rooms: Rooms,
        format: Annotated[str, Query(pattern="^(json|srt|vtt|txt)$")] = "json") -> Response:
    from earshot.asr.export import FORMATS

    try:
        stretches = rooms.stretches(room)
    except RoomError as exc:
        raise _http(exc) from None
    hub = rooms.hub
    parts = _tracks(hub, stretches)
    finals = {t.stream: hub.store.transcripts(t.stream) for t in parts if t.stream}
    try:
        items = call_transcript(parts, finals)
    except RoomError as exc:
        raise _http(exc) from None
    media, render = FORMATS[format]
    headers = {}
    if format != "json":
        headers["Content-Disposition"] = f'attachment; filename="{room}.{format}"'
    return Response(render(items), media_type=media, headers=headers)


def add_rooms(app: FastAPI, settings: Settings) -> None:
    """Calls on this app: ``/ws/call`` and the ``/api/rooms`` routes."""
    del settings  # (the call socket checks the token as the ingest does)
    app.include_router(router)

    @app.websocket("/ws/call")
    async def call(ws: WebSocket) -> None:
        await CallSession(ws, app.state.hub, rooms_of(app), relay_of(app)).run()
