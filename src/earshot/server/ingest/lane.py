"""uvicorn's sans-I/O WebSocket protocol with a direct lane for audio.

Through ASGI every message costs a dict, an ``asyncio.Queue`` hand-off, a
``pause_reading``/``resume_reading`` pair (two ``epoll_ctl`` calls) and a task switch into
the endpoint's ``await receive()``, which is most of a bare server's cost again per 20 ms
frame. :class:`EarshotWebSocketProtocol` keeps everything of uvicorn's implementation (the
handshake through the ASGI app — routing, the :class:`~earshot.server.http.guard.Guard`, auth,
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
from collections.abc import Mapping
from typing import Any, Protocol

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from earshot.wire.codes import Close

log = logging.getLogger("earshot.ws")

EXTENSION = "earshot.direct"


class DirectSink(Protocol):
    """What an endpoint attaches to a :class:`DirectLane`."""

    busy: bool  # handling a queued message: later ones must queue behind it

    def on_bytes(self, data: bytes) -> bool:
        """A complete binary message; True if handled here and now."""


try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets without its C extension
    from websockets.utils import apply_mask

MAX_HEAD = 65536  # an opening handshake longer than this is left to websockets whole


class FrameSplitter:
    """Cuts a client's byte stream into whole WebSocket frames (RFC 6455 §5.2). Pure.

    :meth:`feed` returns ``(True, payload)`` for a whole, final, masked binary frame no
    larger than ``max_size`` (unmasked here: the audio hot path), and ``(False, raw)`` for
    any other frame, whole and untouched, for websockets' parser, which so only ever sees
    whole frames and stays at a frame boundary. Bytes of an incomplete frame wait for the
    next call. Once a close frame or a frame too large goes by, or while a fragmented
    message is open, binary frames go to websockets too (it judges them); after a close or
    an oversized header, splitting stops: everything is passed on as it comes.
    """

    __slots__ = ("_buf", "fragmented", "max_size", "off")

    def __init__(self, max_size: int | None) -> None:
        self.max_size = max_size if max_size is not None else 1 << 62
        self._buf = bytearray()
        self.fragmented = False
        self.off = False

    def feed(self, data: bytes) -> list[tuple[bool, bytes]]:
        if self.off:
            return [(False, data)] if data else []
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        out: list[tuple[bool, bytes]] = []
        pos, n = 0, len(view)
        while n - pos >= 2:
            b0, b1 = view[pos], view[pos + 1]
            size = b1 & 0x7F
            head = 2
            if size == 126:
                if n - pos < 4:
                    break
                size = (view[pos + 2] << 8) | view[pos + 3]
                head = 4
            elif size == 127:
                if n - pos < 10:
                    break
                size = int.from_bytes(view[pos + 2:pos + 10], "big")
                head = 10
            if b1 & 0x80:
                head += 4
            if size > self.max_size:  # websockets refuses it (1009); nothing after counts
                self.off = True
                out.append((False, bytes(view[pos:])))
                pos = n
                break
            end = pos + head + size
            if end > n:
                break
            opcode = b0 & 0x0F
            if b0 == 0x82 and b1 & 0x80 and not self.fragmented:
                out.append((True, apply_mask(view[pos + head:end], view[pos + head - 4:
                                                                       pos + head])))
            else:
                out.append((False, bytes(view[pos:end])))
                if opcode in (0, 1, 2):  # data frames: is a fragmented message open?
                    self.fragmented = not b0 & 0x80
                elif opcode == 8:  # close: websockets takes everything from here on
                    self.off = True
                    if end < n:
                        out.append((False, bytes(view[end:])))
                    pos = n
                    break
            pos = end
        if buf:
            del buf[:pos]
        elif pos < n:
            buf += view[pos:]
        return out


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

    __slots__ = ("_corked", "_proto")

    def __init__(self, proto: EarshotWebSocketProtocol) -> None:
        self._proto = proto
        self._corked: list[bytes] | None = None

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
        frame = text_frame(text.encode())
        if self._corked is not None:
            self._corked.append(frame)
        else:
            self._proto.transport.write(frame)
        return True

    def cork(self) -> None:
        """Hold the frames :meth:`send_text` writes until :meth:`uncork`: what one audio
        message's flush sends back (an ack, its level readings, warnings) goes out in one
        ``write`` (one syscall) instead of one per message."""
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        """Write the held frames, in order, at once."""
        held, self._corked = self._corked, None
        if held:
            self._proto.transport.write(held[0] if len(held) == 1 else b"".join(held))


#: What the lane uses of uvicorn's ``WebSocketsSansIOProtocol`` beyond its documented
#: interface: attributes set by its ``__init__`` (or, for ``scope`` and ``response``, by
#: its ``handle_connect``) and methods it overrides or calls. uvicorn does not promise them,
#: so pyproject.toml pins uvicorn below the next minor release and
#: tests/server/ingest/test_uvicorn_contract.py checks each against the installed uvicorn.
RELIES_ON = {
    "attributes": ("conn", "transport", "close_sent", "queue", "frames", "read_paused",
                   "curr_msg_data_type", "client", "writable", "disconnected"),
    "set_on_connect": ("scope", "response"),
    "methods": ("data_received", "handle_connect", "send_receive_event_to_app",
                "handle_parser_exception", "connection_lost"),
}


class EarshotWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol plus the ``earshot.direct`` lane."""

    sink: DirectSink | None = None
    _splitter: FrameSplitter | None = None
    _head: bytearray | None = None  # the opening handshake, until its blank line

    def data_received(self, data: bytes) -> None:
        """Frames are cut here (:class:`FrameSplitter`): audio goes to the sink, or the
        queue, without websockets' generator-based parser; the opening handshake and
        every other frame go to websockets whole, as uvicorn would feed them."""
        sp = self._splitter
        if sp is None:
            head = self._head
            if head is None:
                head = self._head = bytearray()
            head += data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                if len(head) > MAX_HEAD:  # not ours to judge: websockets refuses it
                    self._head = None
                    sp = self._splitter = FrameSplitter(None)
                    sp.off = True
                    super().data_received(bytes(head))
                return
            rest = bytes(head[end + 4:])
            self._head = None
            sp = self._splitter = FrameSplitter(self.conn.max_message_size)
            super().data_received(bytes(head[:end + 4]))
            if not rest or self.transport.is_closing():
                return
            data = rest
        for fast, chunk in sp.feed(data):
            if fast:
                self._binary(chunk)
            else:
                super().data_received(chunk)
            if self.transport.is_closing():
                return

    def _binary(self, data: bytes) -> None:
        """A whole binary message (cut by the splitter, or assembled by websockets): to the
        sink when nothing is queued before it, else to ``receive()``."""
        if self.close_sent:
            return  # past `websocket.close`: discarded, as uvicorn does
        sink = self.sink
        if sink is not None and not sink.busy and self.queue.empty():
            try:
                if sink.on_bytes(data):
                    return
            except Exception:  # a bug in the sink: it may have taken part of the message
                log.exception("direct lane failed; closing the connection")
                self.conn.send_close(Close.INTERNAL, "internal server error; resume to go on")
                self.handle_parser_exception()
                return
        self._to_receive(data)

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None and self.response.status_code == 101:
            scope["extensions"][EXTENSION] = {"lane": DirectLane(self)}

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
                self.conn.send_close(Close.INVALID_PAYLOAD, "text message is not valid UTF-8")
                self.handle_parser_exception()
                return
            self.queue.put_nowait({"type": "websocket.receive", "text": text})
        else:  # a message websockets assembled (e.g. from fragments)
            self._binary(data)
            return
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink = None
        super().connection_lost(exc)


def lane_of(scope: Mapping[str, Any]) -> DirectLane | None:
    """The connection's direct lane, if the server offers one."""
    ext = (scope.get("extensions") or {}).get(EXTENSION)
    return ext.get("lane") if isinstance(ext, dict) else None
