"""A room's state: a pure state machine. Calls in, events out, time passed in.

A **room** holds **seats**: a participant's name, the earshot stream that carries their
voice (named ``ROOM/participant`` by the glue), its rate, when they joined on the room
clock, and the stream offset they had then. The **room clock** starts at 0 when the room
is opened (its first join) and is shared by everyone in it: a seat's stream frame ``f`` is
at room time ``joined_at + (f - offset) / rate`` (:meth:`Seat.room_time`), so events from
different participants' streams (a VAD's ``speech_start`` at 3.2 s of Ann's stream) are
placed on one timeline.

Every method takes ``now`` (seconds, any origin, never going backwards) and returns the
:class:`RoomEvent` s it caused, in order:

* ``joined`` / ``left`` (``reason``: ``left``, ``lost`` when a dropped connection did not
  come back within ``seat_grace``, ``kicked``);
* ``speaking`` / ``silent``, from the seat's VAD events, at their own stream time mapped
  to the room clock (not when they arrive); a muted seat does not speak (muting a speaking
  seat makes it ``silent`` first);
* ``muted`` / ``unmuted``;
* ``ended``, once nobody has been left in the room for ``grace`` seconds
  (:meth:`Room.tick`); an ended room refuses everything (``room_ended``).

A dropped connection (:meth:`Room.disconnect`) keeps the seat for ``seat_grace`` seconds:
joining again with the same name, the same stream and the same key (the participant's
resume secret, compared in constant time) resumes the seat silently, with its clock
mapping unchanged. Anyone else asking for a name that is seated gets ``name_taken``.

Names: a room is 1-64 of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit (it goes
into stream names, URLs and MQTT topics). A participant is 1-64 printable characters
without ``/ + #`` and without leading or trailing spaces. Limits (:class:`RoomLimits`):
seats per room (``room_full``), rooms per server (:class:`Rooms`, ``too_many_rooms``); a
server takes them from its settings (``--room-seats``, ``--max-rooms``, ``--room-grace``,
``--seat-grace``: :func:`earshot.server.rooms.service.room_limits`).
"""

from __future__ import annotations

import hmac
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, SupportsFloat

from earshot.rooms.errors import RoomError, integer

__all__ = ["Room", "RoomEvent", "RoomLimits", "Rooms", "Seat", "check_participant",
           "check_room_name"]

EventType = Literal["joined", "left", "speaking", "silent", "muted", "unmuted", "ended"]

_ROOM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FORBIDDEN = frozenset("/+#")
MAX_PARTICIPANT = 64


def check_room_name(name: object) -> str:
    """``name`` if it is a valid room name, else :class:`RoomError` ``invalid_room``."""
    if not isinstance(name, str) or not _ROOM_RE.fullmatch(name):
        raise RoomError("invalid_room", f"invalid room name {name!r}: 1-64 of A-Z a-z 0-9 . _ "
                        "-, starting with a letter or digit")
    return name


def check_participant(name: object) -> str:
    """``name`` if it is a valid participant name, else ``invalid_name``."""
    ok = (isinstance(name, str) and 0 < len(name) <= MAX_PARTICIPANT and name.isprintable()
          and name == name.strip() and not (_FORBIDDEN & set(name)))
    if not ok:
        raise RoomError("invalid_name", f"invalid participant name {name!r}: 1-"
                        f"{MAX_PARTICIPANT} printable characters, no / + #, no spaces "
                        "around")
    assert isinstance(name, str)
    return name


@dataclass(frozen=True, slots=True)
class RoomLimits:
    max_seats: int = 8  # participants per room
    max_rooms: int = 100  # rooms open at once (per server, see Rooms)
    grace: float = 30.0  # seconds an empty room lives on before it ends
    seat_grace: float = 10.0  # seconds a dropped participant has to resume its seat

    def __post_init__(self) -> None:
        for name in ("max_seats", "max_rooms"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RoomError("bad_limits", f"{name} must be a positive integer, "
                                f"got {value!r}")
        for name in ("grace", "seat_grace"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise RoomError("bad_limits", f"{name} must be a finite number of seconds "
                                f">= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class RoomEvent:
    """One room event. ``t``: room-clock seconds. ``reason``: for ``left``."""

    type: EventType
    room: str
    t: float
    participant: str | None = None
    stream: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The wire shape: ``{"type", "room", "t", "participant"?, "stream"?, "reason"?}``."""
        d: dict[str, Any] = {"type": self.type, "room": self.room, "t": round(self.t, 6)}
        if self.participant is not None:
            d["participant"] = self.participant
        if self.stream is not None:
            d["stream"] = self.stream
        if self.reason is not None:
            d["reason"] = self.reason
        return d


@dataclass(slots=True)
class Seat:
    participant: str
    stream: str
    rate: int
    joined_at: float  # room time of the join
    offset: int  # the stream's frame at the join
    key: str | None = field(default=None, repr=False)
    muted: bool = False
    speaking: bool = False
    connected: bool = True
    lost_at: float | None = None  # room time the connection dropped

    def room_time(self, stream_seconds: float) -> float:
        """Room time of the point ``stream_seconds`` into the seat's stream."""
        return self.joined_at + stream_seconds - self.offset / self.rate

    def stream_time(self, room_seconds: float) -> float:
        """Seconds into the seat's stream at room time ``room_seconds``."""
        return room_seconds - self.joined_at + self.offset / self.rate

    def to_dict(self) -> dict[str, Any]:
        return {"participant": self.participant, "stream": self.stream, "rate": self.rate,
                "joined_at": round(self.joined_at, 6), "offset": self.offset,
                "muted": self.muted, "speaking": self.speaking, "connected": self.connected}


class Room:
    """One room; see the module docstring."""

    def __init__(self, name: str, *, now: float, limits: RoomLimits | None = None) -> None:
        self.name = check_room_name(name)
        self.limits = limits or RoomLimits()
        self.origin = _time(now)
        self._now = self.origin
        self._seats: dict[str, Seat] = {}
        self._empty_since: float | None = self.origin  # room time nobody was left
        self.ended = False

    # -- queries -----------------------------------------------------------------------------

    def clock(self, now: float) -> float:
        """Room time at ``now`` (seconds since the room opened)."""
        return _time(now) - self.origin

    def __contains__(self, participant: object) -> bool:
        return participant in self._seats

    def __iter__(self) -> Iterator[Seat]:
        return iter(list(self._seats.values()))

    def __len__(self) -> int:
        return len(self._seats)

    def seat(self, participant: str) -> Seat:
        try:
            return self._seats[participant]
        except KeyError:
            raise RoomError("not_in_room", f"{participant!r} is not in room "
                            f"{self.name!r}") from None

    def snapshot(self, now: float) -> dict[str, Any]:
        """The room as the API shows it: its clock and its seats in joining order."""
        return {"room": self.name, "t": round(self._advance(now), 6), "ended": self.ended,
                "participants": [s.to_dict() for s in self._seats.values()]}

    # -- changes -----------------------------------------------------------------------------

    def join(self, participant: str, *, stream: str, rate: int, now: float, offset: int = 0,
             key: str | None = None) -> list[RoomEvent]:
        """Seat ``participant`` (or resume its seat: same name, stream and key)."""
        t = self._advance(now)
        self._open()
        participant = check_participant(participant)
        if not isinstance(stream, str) or not stream:
            raise RoomError("bad_stream", f"stream must be a non-empty string, got {stream!r}")
        rate = integer("rate", rate, code="bad_stream", minimum=1)
        offset = integer("offset", offset, code="bad_stream", minimum=0)
        seat = self._seats.get(participant)
        if seat is not None:
            if seat.stream == stream and _same_key(seat.key, key):
                seat.connected, seat.lost_at = True, None
                return []
            raise RoomError("name_taken", f"{participant!r} is already in room {self.name!r}")
        for other in self._seats.values():
            if other.stream == stream:
                raise RoomError("already_seated", f"stream {stream!r} already holds "
                                f"{other.participant!r}'s seat")
        if len(self._seats) >= self.limits.max_seats:
            raise RoomError("room_full", f"room {self.name!r} is full "
                            f"({self.limits.max_seats} participants)")
        self._seats[participant] = Seat(participant, stream, rate, t, offset, key)
        self._empty_since = None
        return [RoomEvent("joined", self.name, t, participant, stream)]

    def leave(self, participant: str, *, now: float, reason: str = "left") -> list[RoomEvent]:
        """``participant`` leaves (``reason``: ``left``, ``kicked``...)."""
        t = self._advance(now)
        self._open()
        seat = self.seat(participant)
        return self._remove(seat, t, reason)

    def disconnect(self, participant: str, *, now: float) -> list[RoomEvent]:
        """``participant``'s connection dropped: the seat waits ``seat_grace`` for a resume."""
        t = self._advance(now)
        self._open()
        seat = self.seat(participant)
        if seat.connected:
            seat.connected, seat.lost_at = False, t
        return []

    def speech(self, participant: str, kind: str, stream_seconds: float, *,
               now: float) -> list[RoomEvent]:
        """A VAD event of the seat's stream (``speech_start`` / ``speech_end`` at
        ``stream_seconds`` into it) as ``speaking`` / ``silent`` on the room clock."""
        self._advance(now)
        self._open()
        seat = self.seat(participant)
        if kind not in ("speech_start", "speech_end"):
            raise RoomError("bad_event", f"expected speech_start or speech_end, got {kind!r}")
        at = seat.room_time(_time(stream_seconds))
        if kind == "speech_start" and not seat.speaking and not seat.muted:
            seat.speaking = True
            return [RoomEvent("speaking", self.name, at, participant, seat.stream)]
        if kind == "speech_end" and seat.speaking:
            seat.speaking = False
            return [RoomEvent("silent", self.name, at, participant, seat.stream)]
        return []

    def mute(self, participant: str, muted: bool, *, now: float) -> list[RoomEvent]:
        """Mute or unmute ``participant`` (nothing happens if it already is)."""
        t = self._advance(now)
        self._open()
        seat = self.seat(participant)
        if bool(muted) == seat.muted:
            return []
        events = []
        if muted and seat.speaking:
            seat.speaking = False
            events.append(RoomEvent("silent", self.name, t, participant, seat.stream))
        seat.muted = bool(muted)
        kind: EventType = "muted" if muted else "unmuted"
        events.append(RoomEvent(kind, self.name, t, participant, seat.stream))
        return events

    def tick(self, now: float) -> list[RoomEvent]:
        """Time passes: lost seats past ``seat_grace`` leave; an empty room past ``grace``
        ends. Call it now and then (once a second is plenty)."""
        t = self._advance(now)
        if self.ended:
            return []
        events: list[RoomEvent] = []
        for seat in list(self._seats.values()):
            if seat.lost_at is not None and t - seat.lost_at >= self.limits.seat_grace:
                events += self._remove(seat, seat.lost_at + self.limits.seat_grace, "lost")
        if self._empty_since is not None and t - self._empty_since >= self.limits.grace:
            self.ended = True
            events.append(RoomEvent("ended", self.name, self._empty_since + self.limits.grace))
        return events

    # -- internals ---------------------------------------------------------------------------

    def _remove(self, seat: Seat, t: float, reason: str) -> list[RoomEvent]:
        events = []
        if seat.speaking:
            events.append(RoomEvent("silent", self.name, t, seat.participant, seat.stream))
        del self._seats[seat.participant]
        events.append(RoomEvent("left", self.name, t, seat.participant, seat.stream, reason))
        if not self._seats:
            self._empty_since = t
        return events

    def _open(self) -> None:
        if self.ended:
            raise RoomError("room_ended", f"room {self.name!r} has ended")

    def _advance(self, now: float) -> float:
        t = _time(now)
        if t < self._now - 1e-9:
            raise RoomError("bad_time", f"time went backwards: {t} after {self._now}")
        self._now = max(t, self._now)
        return t - self.origin


class Rooms:
    """Every room of one server, within ``limits.max_rooms``."""

    def __init__(self, limits: RoomLimits | None = None) -> None:
        self.limits = limits or RoomLimits()
        self._rooms: dict[str, Room] = {}

    def __len__(self) -> int:
        return len(self._rooms)

    def __contains__(self, name: object) -> bool:
        return name in self._rooms

    def get(self, name: str) -> Room:
        try:
            return self._rooms[name]
        except KeyError:
            raise RoomError("no_room", f"no room {name!r}") from None

    def names(self) -> list[str]:
        return list(self._rooms)

    def join(self, room: str, participant: str, *, stream: str, rate: int, now: float,
             offset: int = 0, key: str | None = None) -> tuple[Room, list[RoomEvent]]:
        """Join ``room``, opening it if needed (a room that fails its first join is not
        kept)."""
        check_room_name(room)
        existing = self._rooms.get(room)
        if existing is None:
            if len(self._rooms) >= self.limits.max_rooms:
                raise RoomError("too_many_rooms", f"this server holds at most "
                                f"{self.limits.max_rooms} rooms")
            existing = Room(room, now=now, limits=self.limits)
            events = existing.join(participant, stream=stream, rate=rate, now=now,
                                   offset=offset, key=key)  # may raise: then not kept
            self._rooms[room] = existing
            return existing, events
        return existing, existing.join(participant, stream=stream, rate=rate, now=now,
                                       offset=offset, key=key)

    def tick(self, now: float) -> list[RoomEvent]:
        """Tick every room; ended rooms are forgotten (their name is free again)."""
        events: list[RoomEvent] = []
        for name, room in list(self._rooms.items()):
            events += room.tick(now)
            if room.ended:
                del self._rooms[name]
        return events


def _same_key(held: str | None, given: str | None) -> bool:
    if held is None:
        return given is None
    return given is not None and hmac.compare_digest(held.encode(), given.encode())



def _time(now: object) -> float:
    try:
        if not isinstance(now, SupportsFloat | str):
            raise TypeError
        t = float(now)
    except (TypeError, ValueError):
        raise RoomError("bad_time", f"time must be a number of seconds, got {now!r}") from None
    if not math.isfinite(t):
        raise RoomError("bad_time", f"time must be finite, got {now!r}")
    return t
