"""uvicorn's sans-I/O WebSocket protocol with a direct lane for audio.

Through ASGI every message costs a dict, an ``asyncio.Queue`` hand-off, a
``pause_reading``/``resume_reading`` pair (two ``epoll_ctl`` calls) and a task switch into
the endpoint's ``await receive()``, which is most of a bare server's cost again per 20 ms
frame. :class:`EarshotWebSocketProtocol` keeps everything of uvicorn's implementation (the
handshake through the ASGI app — routing, the :class:`~earshot.server.guard.Guard`, auth,
access log, proxy headers, TLS — keepalive pings, the closing handshake) and adds one ASGI
extension, ``earshot.direct``, with a :class:`DirectLane`. An endpoint that has accepted the
connection may attach a :class:`DirectSink` to it; from then on:

* each complete binary message is offered to ``sink.on_bytes(data)`` synchronously, inside
  ``data_received``: the sink returns True when it has handled it (the audio hot path: no
  queue, no task switch, reading never paused) or False to have it queued for the
  endpoint's ``receive()`` as usual. While anything is queued, or the sink says it is
  ``busy`` with a queued message, later messages are queued too, so order is kept;
* text messages always go through ``receive()`` (start, stop, ping: rare);
* :meth:`DirectLane.send_text` writes a text frame to the transport at once, with no
  ``await`` (the endpoint keeps a queue for when the transport asks to pause writing).

Without the extension (another server, Starlette's TestClient) endpoints use plain ASGI.

Also: a text message that is not valid UTF-8 closes the connection with 1007 (invalid
frame payload data) and one log line, never a traceback.
"""

from __future__ import annotations

import logging
import struct
from typing import Any, Protocol

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State

log = logging.getLogger("earshot.ws")

EXTENSION = "earshot.direct"
CLOSE_INVALID_PAYLOAD = 1007


class DirectSink(Protocol):
    """What an endpoint attaches to a :class:`DirectLane`."""

    busy: bool  # handling a queued message: later ones must queue behind it

    def on_bytes(self, data: bytes) -> bool:
        """A complete binary message; True if handled here and now."""


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented server-to-client text frame (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x81, n) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class DirectLane:
    """The endpoint's handle on its connection's direct lane."""

    __slots__ = ("_proto",)

    def __init__(self, proto: EarshotWebSocketProtocol) -> None:
        self._proto = proto

    def attach(self, sink: DirectSink) -> None:
        self._proto.sink = sink

    def detach(self) -> None:
        self._proto.sink = None

    @property
    def writable(self) -> bool:
        """The transport takes writes without pausing (otherwise queue and ``await``)."""
        p = self._proto
        return (p.writable.is_set() and not p.close_sent and not p.disconnected
                and p.conn.state is State.OPEN)

    def send_text(self, text: str) -> bool:
        """Write one text message now; False (nothing written) when the connection is not
        open for it, or writing is paused: then send through ASGI instead."""
        if not self.writable:
            return False
        p = self._proto
        p.transport.write(text_frame(text.encode()))
        return True


class EarshotWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol plus the ``earshot.direct`` lane."""

    sink: DirectSink | None = None

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None and self.response.status_code == 101:
            scope["extensions"][EXTENSION] = {"lane": DirectLane(self)}

    def handle_events(self) -> None:
        """uvicorn's dispatch of parsed events, with the audio hot path first: a whole
        binary frame goes straight to the sink when nothing is queued before it."""
        conn = self.conn
        for event in conn.events_received():
            sink = self.sink
            if (sink is not None and type(event) is Frame and event.opcode is Opcode.BINARY
                    and event.fin and not sink.busy and not self.close_sent
                    and self.queue.empty()):
                try:
                    if sink.on_bytes(event.data):  # type: ignore[arg-type]
                        continue
                except Exception:  # a bug in the sink: it may have taken part of the message
                    log.exception("direct lane failed; closing the connection")
                    conn.send_close(1011, "internal server error; resume to go on")
                    self.handle_parser_exception()
                    return
                self.curr_msg_data_type = "bytes"
                self.frames = [event.data]  # type: ignore[list-item]
                self._to_receive(event.data)  # type: ignore[arg-type]
                continue
            self._handle_event(event)

    def _handle_event(self, event: Any) -> None:
        """One event, as uvicorn's ``handle_events`` treats it."""
        if isinstance(event, Request):
            self.handle_connect(event)
        elif isinstance(event, Frame):
            op = event.opcode
            if op == Opcode.CONT:
                self.handle_cont(event)
            elif op == Opcode.TEXT:
                self.handle_text(event)
            elif op == Opcode.BINARY:
                self.handle_bytes(event)
            elif op == Opcode.PING:
                self.handle_ping()
            elif op == Opcode.PONG:
                self.handle_pong(event)
            elif op == Opcode.CLOSE:
                self.handle_close(event)

    def _to_receive(self, data: bytes) -> None:
        """Queue a binary message for the endpoint's ``receive()`` (reading paused until
        it takes it, as uvicorn does)."""
        self.frames = []
        self.queue.put_nowait({"type": "websocket.receive", "bytes": data})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def send_receive_event_to_app(self) -> None:
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return  # past `websocket.close`: discard until the peer's close reply
        if self.curr_msg_data_type == "text":
            try:
                text = data.decode()
            except UnicodeDecodeError as exc:
                client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
                log.warning("closing WebSocket from %s: text message is not valid UTF-8 (%s)",
                            client, exc.reason)
                self.conn.send_close(CLOSE_INVALID_PAYLOAD, "text message is not valid UTF-8")
                self.handle_parser_exception()
                return
            self.queue.put_nowait({"type": "websocket.receive", "text": text})
        else:
            sink = self.sink
            if sink is not None and not sink.busy and self.queue.empty():
                try:
                    if sink.on_bytes(data):
                        return
                except Exception:  # a bug in the sink: it may have taken part of the message
                    log.exception("direct lane failed; closing the connection")
                    self.conn.send_close(1011, "internal server error; resume to go on")
                    self.handle_parser_exception()
                    return
            self.queue.put_nowait({"type": "websocket.receive", "bytes": data})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink = None
        super().connection_lost(exc)


def lane_of(scope: dict[str, Any]) -> DirectLane | None:
    """The connection's direct lane, if the server offers one."""
    ext = (scope.get("extensions") or {}).get(EXTENSION)
    return ext.get("lane") if isinstance(ext, dict) else None
