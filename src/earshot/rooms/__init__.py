"""Calls: rooms where people talk to each other.

Pure cores, no I/O and no clock (time is passed in), importing nothing from the server:

* :mod:`earshot.rooms.room` — a room's state: seats, the room clock, events, limits;
* :mod:`earshot.rooms.mixer` — per 20 ms tick, one mix-minus per seat;
* :mod:`earshot.rooms.recording` — the call recording and the transcript by speaker;
* :mod:`earshot.rooms.echo` — the speaking side's echo cancellation, AGC and NS.

How these fit the server and the clients per 20 ms frame, and where each millisecond of
the mouth-to-ear budget goes: docs/calls-latency.md.
"""
