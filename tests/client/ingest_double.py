"""The server side of the ingest protocol in memory, for driving the publisher's core.

:class:`IngestServer` runs the real server-side core, :class:`earshot.wire.ingest.
IngestConnection`, one per connection, and keeps the streams it was given in dicts (the
part a hub and an archive would do). It acknowledges only when told (:meth:`ack`), can refuse
the next starts with scripted codes, and :func:`pump` shuttles messages between it and a
:class:`~earshot.client.protocol.PublisherProtocol` until both are quiet: no sockets, no event
loop, in the manner of aioquic's ``client_and_server()`` / ``roundtrip()``.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from earshot.client.protocol import Decision, PublisherProtocol
from earshot.wire.ingest import (
    AudioIn,
    Close,
    IngestConnection,
    Limits,
    Output,
    Send,
    StartRequested,
    StopRequested,
)


@dataclass
class Stored:
    """One stream as the server holds it."""

    token: str
    format: str
    frame_bytes: int  # 0 for Opus
    data: bytearray = field(default_factory=bytearray)  # PCM: every frame, in order
    packets: list[tuple[int, bytes]] = field(default_factory=list)  # Opus: (begin, packet)
    frames: int = 0
    finished: bool = False
    starts: list[dict[str, Any]] = field(default_factory=list)  # every start it was given


class IngestServer:
    """See the module doc. ``lose_unacked`` on :meth:`drop`: the server keeps only what it
    acknowledged (a crash before the write), else everything it received."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.streams: dict[str, Stored] = {}
        self.refusals: list[tuple[str, str]] = []  # the next starts get these errors
        self.conn: IngestConnection | None = None
        self.current: str | None = None
        self.outbox: list[str] = []
        self.close_frame: tuple[int, str] | None = None
        self.received: list[str | bytes] = []  # every client message, in order
        self.connections = 0
        self._pos = 0  # Opus: the stream offset the next packet begins at
        self._acked: dict[str, int] = {}

    # -- connections ---------------------------------------------------------------------
    def accept_connection(self) -> None:
        self.conn = IngestConnection(self.limits)
        self.current = None
        self.outbox = []
        self.close_frame = None
        self.connections += 1

    def drop(self, *, lose_unacked: bool = False) -> None:
        """The connection is gone (no close frame)."""
        assert self.conn is not None
        self.conn.closed()
        if lose_unacked and self.current is not None:
            s = self.streams[self.current]
            keep = self._acked.get(self.current, 0)
            s.frames = keep
            del s.data[keep * s.frame_bytes:]
        self.conn = None

    def stream(self) -> Stored:
        assert self.current is not None
        return self.streams[self.current]

    # -- messages ------------------------------------------------------------------------
    def receive(self, message: str | bytes) -> None:
        assert self.conn is not None and self.close_frame is None
        self.received.append(message)
        if isinstance(message, str):
            self._do(self.conn.receive_text(message))
        else:
            self._do(self.conn.receive_bytes(message))

    def take(self) -> list[str]:
        out, self.outbox = self.outbox, []
        return out

    def send(self, message: dict[str, Any]) -> None:
        self.outbox.append(json.dumps(message))

    def ack(self, frames: int | None = None, events: list[dict[str, Any]] | None = None) -> int:
        """Acknowledge ``frames`` (default: everything received); returns the offset."""
        s = self.stream()
        offset = s.frames if frames is None else frames
        assert self.current is not None
        self._acked[self.current] = offset
        msg: dict[str, Any] = {"type": "ack", "offset": offset}
        if events:
            msg["events"] = events
        self.send(msg)
        return offset

    def _do(self, outputs: list[Output]) -> None:
        assert self.conn is not None
        for out in outputs:
            if isinstance(out, Send):
                self.send(out.message)
            elif isinstance(out, Close):
                self.close_frame = (out.code, out.reason)
            elif isinstance(out, StartRequested):
                self._start(out)
            elif isinstance(out, AudioIn):
                s = self.stream()
                if s.format == "opus":
                    s.packets.append((self._pos, out.data))
                    self._pos += out.frames
                    s.frames = max(s.frames, self._pos)
                else:
                    s.data += out.data
                    s.frames += out.frames
            elif isinstance(out, StopRequested):
                s = self.stream()
                if out.length is not None:
                    s.frames = out.length  # (an encoder's padding is cut)
                s.finished = True
                self.send({"type": "stopped", "stream": self.current, "offset": s.frames,
                           "duration": 0.0})
                self.close_frame = (1000, "stopped")

    def _start(self, req: StartRequested) -> None:
        assert self.conn is not None
        start = req.start
        if self.refusals:
            self._do(self.conn.refuse(*self.refusals.pop(0)))
            return
        if start.resume is not None:
            s = self.streams.get(start.resume)
            if s is None:
                self._do(self.conn.refuse("unknown_stream", f"no stream {start.resume!r}"))
                return
            if s.token != start.resume_token:
                self._do(self.conn.refuse("bad_resume_token", "wrong resume_token"))
                return
            if s.finished:
                self._do(self.conn.refuse("stream_finished", "stream has finished",
                                          frames=s.frames))
                return
            sid = start.resume
        else:
            sid = secrets.token_hex(4)
            s = self.streams[sid] = Stored(secrets.token_hex(8), start.spec.format,
                                          start.spec.frame_bytes)
        s.starts.append(json.loads(self.received[-1]) if isinstance(self.received[-1], str)
                        else {})
        self.current = sid
        held = s.frames
        if start.spec.format == "opus":
            # a new stream's first packet begins at -pre_skip; a resume continues at 'offset'
            self._pos = (start.offset if start.offset is not None else held) if start.resume \
                else -start.pre_skip
        self._do(self.conn.accept(sid, s.token, held))


def pump(core: PublisherProtocol, server: IngestServer, now: float = 0.0) -> None:
    """Shuttle messages both ways until neither side has anything to say (or the
    connection is to be closed)."""
    while True:
        moved = False
        if server.close_frame is None and not core.close_expected():
            for m in core.data_to_send():
                server.receive(m)
                moved = True
                if server.close_frame is not None:
                    break
        for text in server.take():
            core.receive_text(text, now)
            moved = True
        if not moved:
            return


def connect(core: PublisherProtocol, server: IngestServer, now: float = 0.0) -> None:
    """A connection opens; everything both sides have to say is said."""
    assert core.connecting() is None
    server.accept_connection()
    core.connected(now)
    pump(core, server, now)


def hang_up(core: PublisherProtocol, server: IngestServer, *,
            lose_unacked: bool = False) -> Decision:
    """The connection ends: as the server closed it (its close frame), or a network drop."""
    code, reason = server.close_frame or (1006, "")
    if server.conn is not None:
        server.drop(lose_unacked=lose_unacked)
    return core.connection_lost(code, reason)
