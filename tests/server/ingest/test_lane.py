"""The direct WebSocket lane (server/wsdirect.py) without sockets: uvicorn's protocol object
driven with bytes through a fake transport, an ASGI app that attaches a sink."""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from earshot.server.ingest.lane import (
    EarshotWebSocketProtocol,
    FrameSplitter,
    lane_of,
    text_frame,
)

HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             b"Sec-WebSocket-Version: 13\r\n\r\n")


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.paused_reading = 0
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(
            name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def pause_reading(self) -> None:
        self.paused_reading += 1

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class Sink:
    def __init__(self, take: bool = True) -> None:
        self.busy = False
        self.take = take
        self.got: list[bytes] = []

    def on_bytes(self, data: bytes) -> bool:
        self.got.append(bytes(data))
        return self.take


def client_frame(opcode: Opcode, payload: bytes) -> bytes:
    return Frame(opcode, payload).serialize(mask=True)


def server_frames(data: bytes) -> list[Frame]:
    reader = StreamReader()
    reader.feed_data(data)
    frames = []
    while True:
        gen = Frame.parse(reader.read_exact, mask=False)
        try:
            next(gen)
            while True:
                gen.send(None)
        except StopIteration as stop:
            frames.append(stop.value)
        except EOFError:
            return frames
        if not reader.buffer:
            return frames


def opened(sink: Sink) -> tuple[EarshotWebSocketProtocol, FakeTransport,
                                list[dict[str, Any]]]:
    """uvicorn's protocol object on a fake transport, serving an ASGI app that accepts,
    attaches ``sink`` to the lane and records what ``receive()`` gives it."""
    received: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        lane = lane_of(scope)
        assert lane is not None
        lane.attach(sink)
        while True:
            msg = await receive()
            received.append(msg)
            if msg["type"] == "websocket.disconnect":
                return

    config = Config(app, ws=EarshotWebSocketProtocol, log_level="warning")
    config.load()
    proto = EarshotWebSocketProtocol(config, ServerState(), {})
    transport = FakeTransport()
    proto.connection_made(transport)
    return proto, transport, received


async def connected(sink: Sink) -> tuple[EarshotWebSocketProtocol, FakeTransport,
                                         list[dict[str, Any]]]:
    proto, transport, received = opened(sink)
    proto.data_received(HANDSHAKE)
    for _ in range(5):
        await asyncio.sleep(0)
    assert transport.out.startswith(b"HTTP/1.1 101")
    transport.out.clear()
    return proto, transport, received


def test_binary_messages_reach_the_sink_synchronously_without_pausing_reads() -> None:
    async def go() -> None:
        sink = Sink()
        proto, transport, received = await connected(sink)
        paused = transport.paused_reading
        proto.data_received(client_frame(Opcode.BINARY, b"a" * 3840)
                            + client_frame(Opcode.BINARY, b"b" * 200))
        # no await in between: handled inside data_received
        assert sink.got == [b"a" * 3840, b"b" * 200]
        assert transport.paused_reading == paused
        await asyncio.sleep(0)
        assert received == []

    asyncio.run(go())


def test_text_goes_through_receive_and_what_follows_queues_behind_it() -> None:
    async def go() -> None:
        sink = Sink()
        proto, _transport, received = await connected(sink)
        proto.data_received(client_frame(Opcode.TEXT, b'{"type":"start"}')
                            + client_frame(Opcode.BINARY, b"after"))
        assert sink.got == []  # queued behind the text, in order
        for _ in range(3):
            await asyncio.sleep(0)
        assert received[0] == {"type": "websocket.receive", "text": '{"type":"start"}'}
        assert received[1] == {"type": "websocket.receive", "bytes": b"after"}
        sink.busy = True  # the endpoint is handling a queued message
        proto.data_received(client_frame(Opcode.BINARY, b"while busy"))
        assert sink.got == []
        await asyncio.sleep(0)
        assert received[2]["bytes"] == b"while busy"

    asyncio.run(go())


def test_a_sink_that_declines_leaves_the_message_to_receive() -> None:
    async def go() -> None:
        sink = Sink(take=False)
        proto, _, received = await connected(sink)
        proto.data_received(client_frame(Opcode.BINARY, b"partial"))
        await asyncio.sleep(0)
        assert sink.got == [b"partial"] and received[0]["bytes"] == b"partial"

    asyncio.run(go())


def test_invalid_utf8_closes_1007_with_a_log_line_and_no_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        proto, transport, received = await connected(Sink())
        with caplog.at_level(logging.WARNING):
            proto.data_received(client_frame(Opcode.TEXT, b'{"name":"\xff"}'))
        frames = server_frames(bytes(transport.out))
        assert frames[0].opcode is Opcode.CLOSE
        assert struct.unpack("!H", frames[0].data[:2])[0] == 1007
        assert transport.closed
        await asyncio.sleep(0)
        assert received[-1]["type"] == "websocket.disconnect"

    asyncio.run(go())
    lines = [r for r in caplog.records if "not valid UTF-8" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None


def test_send_text_writes_one_frame_now_and_refuses_after_close() -> None:
    async def go() -> None:
        proto, transport, _ = await connected(Sink())
        lane = lane_of(proto.scope)  # type: ignore[arg-type]
        assert lane is not None
        assert lane.send_text('{"type":"ack","offset":4800}')
        (frame,) = server_frames(bytes(transport.out))
        assert frame.opcode is Opcode.TEXT and frame.data == b'{"type":"ack","offset":4800}'
        proto.pause_writing()
        assert not lane.send_text("x")  # the caller queues it and awaits
        proto.resume_writing()
        proto.connection_lost(None)
        assert not lane.send_text("late")

    asyncio.run(go())


@pytest.mark.parametrize("n", [0, 1, 125, 126, 65535, 65536, 70000])
def test_text_frames_of_every_length_class_parse_back(n: int) -> None:
    payload = b"x" * n
    (frame,) = server_frames(text_frame(payload))
    assert frame.opcode is Opcode.TEXT and frame.fin and frame.data == payload


# -- the frame splitter (a pure core) ---------------------------------------------------------


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` in pieces of the given sizes (cycled), as reads from a socket may come."""
    out, pos, i = [], 0, 0
    while pos < len(data):
        n = max(1, sizes[i % len(sizes)]) if sizes else len(data)
        out.append(data[pos:pos + n])
        pos += n
        i += 1
    return out


frames_st = st.lists(st.one_of(
    st.binary(max_size=300).map(lambda b: ("bin", b)),
    st.sampled_from([0, 125, 126, 65535, 65536]).map(lambda n: ("bin", b"\x07" * n)),
    st.binary(max_size=40).map(lambda b: ("ping", b)),
    st.text(max_size=40).map(lambda t: ("text", t.encode())),
), max_size=12)


@settings(max_examples=150, deadline=None)
@given(frames=frames_st, sizes=st.lists(st.integers(1, 70000), max_size=6))
def test_the_splitter_gives_audio_unmasked_and_everything_else_whole_in_order(
        frames: list[tuple[str, bytes]], sizes: list[int]) -> None:
    wire = b"".join(client_frame({"bin": Opcode.BINARY, "ping": Opcode.PING,
                                  "text": Opcode.TEXT}[k], p) for k, p in frames)
    sp = FrameSplitter(1 << 20)
    got: list[tuple[bool, bytes]] = []
    for piece in cut(wire, sizes):
        got += sp.feed(piece)
    assert len(got) == len(frames)
    for (kind, payload), (fast, chunk) in zip(frames, got, strict=True):
        if kind == "bin":
            assert fast and chunk == payload
        else:
            assert not fast  # whole and untouched: websockets parses it to the same frame
            (frame,) = parse_client_frames(chunk)
            assert frame.data == payload


def parse_client_frames(data: bytes) -> list[Frame]:
    reader = StreamReader()
    reader.feed_data(data)
    gen = Frame.parse(reader.read_exact, mask=True)
    try:
        next(gen)
        while True:
            gen.send(None)
    except StopIteration as stop:
        return [stop.value]


def test_fragments_close_and_oversized_frames_go_to_websockets() -> None:
    sp = FrameSplitter(1000)
    first = Frame(Opcode.BINARY, b"part1", fin=False).serialize(mask=True)
    cont = Frame(Opcode.CONT, b"part2", fin=True).serialize(mask=True)
    whole = client_frame(Opcode.BINARY, b"whole")
    out = sp.feed(first + whole + cont + whole)
    # a binary frame inside an open fragmented message is websockets' to refuse
    assert [f for f, _ in out] == [False, False, False, True]
    close = client_frame(Opcode.CLOSE, struct.pack("!H", 1000))
    out = sp.feed(close + whole)
    assert [f for f, _ in out] == [False, False] and sp.off
    assert sp.feed(whole) == [(False, whole)]  # after a close: everything as it comes
    big = FrameSplitter(1000)
    head = client_frame(Opcode.BINARY, b"x" * 2000)[:20]
    assert big.feed(head) == [(False, head)] and big.off


def test_the_handshake_and_frames_in_one_read_are_told_apart() -> None:
    async def go() -> None:
        sink = Sink()
        proto, transport, received = opened(sink)
        # an eager client: the request and its first frame in one segment, split oddly
        wire = HANDSHAKE + client_frame(Opcode.BINARY, b"early")
        for i in range(0, len(wire), 7):
            proto.data_received(wire[i:i + 7])
        for _ in range(5):
            await asyncio.sleep(0)
        assert transport.out.startswith(b"HTTP/1.1 101")
        proto.data_received(client_frame(Opcode.BINARY, b"later"))
        await asyncio.sleep(0)
        # the early frame came before the sink was there: through receive(), in order
        assert received == [{"type": "websocket.receive", "bytes": b"early"}]
        assert sink.got == [b"later"]

    asyncio.run(go())


def test_a_fragmented_binary_message_is_assembled_by_websockets_and_reaches_the_sink() -> None:
    async def go() -> None:
        sink = Sink()
        proto, _, received = await connected(sink)
        proto.data_received(Frame(Opcode.BINARY, b"frag", fin=False).serialize(mask=True)
                            + Frame(Opcode.CONT, b"ment", fin=True).serialize(mask=True)
                            + client_frame(Opcode.BINARY, b"next"))
        assert sink.got == [b"fragment", b"next"]  # in order, synchronously
        await asyncio.sleep(0)
        assert received == []

    asyncio.run(go())
