"""Calls on a gateway: thin adapters over the hub around the cores of :mod:`earshot.rooms`.

* :mod:`~earshot.server.rooms.service` — :class:`RoomService`: the rooms held here, each
  with its :class:`~earshot.rooms.room.Room` (seats, clock, events) and its
  :class:`~earshot.rooms.mixer.Mixer`, a timer per room that mixes every 20 ms and sends each
  participant its own mix-minus as one Opus packet;
* :mod:`~earshot.server.rooms.session` — ``/ws/call?room=R&name=N``: an ordinary ingest
  session (start, acks, resume: the participant's stream ``R/N`` is archived and processed
  like any other) whose audio is also handed to the room as it arrives;
* :mod:`~earshot.server.rooms.routes` — ``GET /api/rooms``, ``/api/rooms/R``,
  ``/api/rooms/R/audio`` (the call recording) and ``/api/rooms/R/transcript`` (by speaker).

Wire format of the call socket, beyond the ingest protocol (docs/calls.md): the server
sends each mix-minus packet as a binary message, 8 bytes little-endian (the room frame, at
48 kHz, where the packet starts) followed by one 20 ms Opus packet; room events as JSON
(``joined``, ``left``, ``speaking``, ``silent``, ``muted``, ``unmuted``, ``ended``, and
``room`` with the room's state once, after ``ready``). The client may send
``{"type": "mute", "muted": true|false}``.
"""

from earshot.server.rooms.routes import add_rooms
from earshot.server.rooms.service import RoomService

__all__ = ["RoomService", "add_rooms"]
