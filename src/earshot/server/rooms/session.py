"""``/ws/call?room=ROOM&name=PARTICIPANT``: a participant's connection.

An ordinary ingest session (:class:`~earshot.server.ingest.session.IngestSession`: the same
``start``, acks, ``stop`` and resume), so the participant's publish is an earshot stream
named ``ROOM/PARTICIPANT``, archived and processed like any other. On top of it:

* the room is checked before the stream is opened (``invalid_room``, ``invalid_name``,
  ``room_full``, ``name_taken``, ``too_many_rooms``: a refused start, the connection stays
  open for another try); once ``ready`` is sent the participant is seated and gets
  ``{"type": "room", ...}`` (the room's state);
* each audio message goes to the archive as usual *and* to the room's mixer at once, at its
  stream offset (the direct lane is off for calls: it would batch);
* the stream's VAD events become ``speaking`` / ``silent``; ``{"type": "mute", "muted":
  bool}`` mutes; a ``stop`` leaves the room, a dropped connection keeps the seat for a
  resume (``seat_grace``);
* the server sends the participant's mix-minus as binary messages (see
  :mod:`earshot.server.rooms`).

With a Redis bus (``relay``), the room may be held by another gateway
(:mod:`earshot.server.rooms.relay`): then the checks, the seat, the audio, mute, speech and
leaving go to the holder through a :class:`~earshot.server.rooms.relay.RemoteSeat`, and the
holder's mix packets and room messages come back through it; the stream stays here.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from starlette.websockets import WebSocket

from earshot.audio import decode
from earshot.rooms.errors import RoomError
from earshot.rooms.room import check_participant, check_room_name
from earshot.server.ingest.session import IngestSession
from earshot.server.rooms.relay import RemoteSeat, RoomRelay
from earshot.server.rooms.service import RoomService
from earshot.server.streams.hub import Hub, LiveStream
from earshot.wire.codes import Code
from earshot.wire.ingest import Output, Send, StartRequested, error_message

__all__ = ["CallSession"]

SPEECH = frozenset({"speech_start", "speech_end"})
# room events, which a room held elsewhere also publishes on the bus under the participant's
# stream: its sender gets them from the holder (relay_post), not twice
ROOM_EVENTS = frozenset({"joined", "left", "speaking", "silent", "muted", "unmuted",
                         "ended"})


def room_code(exc: RoomError) -> Code:
    """The wire code of a room error (the cores' codes that reach the wire are Codes)."""
    try:
        return Code(exc.code)
    except ValueError:
        return Code.BAD_START


class CallSession(IngestSession):
    direct_lane = False

    def __init__(self, ws: WebSocket, hub: Hub, rooms: RoomService,
                 relay: RoomRelay | None = None) -> None:
        super().__init__(ws, hub)
        self.rooms = rooms
        self.relay = relay
        self.remote: RemoteSeat | None = None  # the room is held by another gateway
        self.room = ws.query_params.get("room", "")
        self.participant = ws.query_params.get("name", "")
        self.mix = "s16" if ws.query_params.get("mix") == "s16" else "opus"
        self.seated = False
        self.stopped = False

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            if self.seated:
                self._leave(lost=not self.stopped)

    def _leave(self, *, lost: bool = False) -> None:
        if self.remote is not None:
            self.remote.leave(lost=lost)
        else:
            self.rooms.leave(self.room, self.participant, self, lost=lost)
        self.seated = False

    async def _check(self, resume: bool) -> None:
        """Where the room is held (here, or ``self.remote``), and whether it would seat us."""
        self.remote = None
        if self.relay is not None:
            check_room_name(self.room)
            check_participant(self.participant)
            holder = await self.relay.locate(self.room)
            if holder is not None:
                self.remote = RemoteSeat(self.relay, holder, self.room, self.participant)
                await self.remote.check(resume=resume)
                return
        self.rooms.check(self.room, self.participant, resume=resume)

    async def _start(self, req: StartRequested) -> list[Output]:
        start = req.start
        try:
            await self._check(start.resume is not None)
        except RoomError as exc:
            return self.conn.refuse(room_code(exc), exc.message)
        start = dataclasses.replace(start, name=f"{self.room}/{self.participant}")
        outs = await super()._start(StartRequested(start))
        live = self.live
        if live is None:
            return outs
        key = start.resume_token
        for out in outs:
            if isinstance(out, Send) and out.message.get("type") == "ready":
                key = out.message.get("resume_token", key)
        try:
            if self.remote is not None:
                state = await self.remote.join(self, stream=live.id, rate=live.rec.rate,
                                               channels=live.rec.channels,
                                               offset=live.offset, key=key, mix=self.mix)
            else:
                state = self.rooms.join(self.room, self.participant, stream=live.id,
                                        rate=live.rec.rate, channels=live.rec.channels,
                                        offset=live.offset, key=key, conn=self, mix=self.mix)
        except RoomError as exc:  # lost a race for the last seat or the name
            await self.hub.detach(live, self, stopped=False)
            self.live = None
            return [*outs, *self.conn.fail(room_code(exc), exc.message)]
        self.seated = True
        return [*outs, Send({"type": "room", **state})]

    async def _stop(self, length: int | None = None) -> None:
        self.stopped = True
        await super()._stop(length)
        if self.seated:
            self._leave()

    def add_audio(self, live: LiveStream, data: bytes, frames: int) -> bool:
        before = live.offset
        due = super().add_audio(live, data, frames)
        n = live.offset - before
        if n > 0 and self.seated:
            fmt = live.archive.sample_format
            raw = live.writer.last  # this message's audio, as queued for the archive
            if self.remote is not None:
                self.remote.audio(before, fmt, live.rec.channels, raw)
            else:
                samples = decode(raw, fmt, live.rec.channels)  # type: ignore[arg-type]
                self.rooms.audio(self.room, self.participant, before, samples)
        return due

    def receive_text(self, text: str) -> list[Output]:
        if '"mute"' in text:
            try:
                msg = json.loads(text)
            except ValueError:
                msg = None
            if isinstance(msg, dict) and msg.get("type") == "mute":
                muted = msg.get("muted")
                if not isinstance(muted, bool):
                    return [Send(error_message(Code.BAD_EVENT, "mute needs 'muted': true or "
                                               "false"))]
                if not self.seated:
                    return [Send(error_message(Code.NOT_IN_ROOM, "not in a room yet"))]
                if self.remote is not None:
                    self.remote.mute(muted)
                else:
                    self.rooms.mute(self.room, self.participant, muted)
                return []
        return super().receive_text(text)

    def post(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind in SPEECH and self.seated:
            t = message.get("t")
            if isinstance(t, int | float):
                if self.remote is not None:
                    self.remote.speech(str(kind), float(t))
                else:
                    self.rooms.speech(self.room, self.participant, str(kind), float(t))
        elif (self.remote is not None and kind in ROOM_EVENTS
              and message.get("room") == self.room):
            return  # the holder sends it through the relay (relay_post)
        super().post(message)

    def relay_post(self, message: dict[str, Any]) -> None:
        """A room message from the gateway holding the room."""
        super().post(message)
