"""The asyncio layer (``Publisher`` over ``earshot.client.connection``) against a websockets
server in this process that speaks through the server-side protocol core (:mod:`ingest_double`):
real sockets on loopback, no server process; what the server holds is compared byte for byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import numpy as np
import pytest
from ingest_double import IngestServer
from websockets.asyncio.server import ServerConnection, serve

from earshot.client import Publisher, Reconnect, SyncPublisher
from earshot.errors import ClientError

RATE = 16000
FAST = Reconnect(initial=0.01, maximum=0.05)


@asynccontextmanager
async def ingest(server: IngestServer,
                 script: Callable[[int, int], str | None] | None = None,
                 ) -> AsyncIterator[str]:
    """A WebSocket server on a free port. After each client message, the server acks what
    it holds; ``script(connection, messages)`` may answer "drop" (the network goes),
    "mute" (say nothing more) or None."""

    async def handler(ws: ServerConnection) -> None:
        server.accept_connection()
        n, muted = 0, False
        async for message in ws:
            n += 1
            server.receive(message)
            action = script(server.connections, n) if script else None
            if action == "drop":
                server.drop()
                ws.transport.abort()
                return
            muted = muted or action == "mute"
            if server.current is not None and server.close_frame is None and \
                    isinstance(message, bytes):
                server.ack()
            for text in server.take():
                if not muted:
                    await ws.send(text)
            if server.close_frame is not None:
                await ws.close(*server.close_frame)
                return

    async with serve(handler, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"


def pcm(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-20000, 20000, n).astype("<i2")


async def test_publisher_resumes_after_the_network_drops() -> None:
    server = IngestServer()
    x = pcm(RATE, seed=4)
    async with ingest(server, lambda conn, n: "drop" if (conn, n) == (1, 8) else None) as url:
        pub = Publisher(url, rate=RATE, format="s16", reconnect=FAST, max_message_frames=640)
        events: list[dict[str, object]] = []
        async with pub:
            watch = asyncio.create_task(_collect(pub, events))
            for i in range(0, len(x), 320):
                await pub.send(x[i:i + 320])
                await asyncio.sleep(0.001)
        await watch
    assert pub.reconnects == 1 and server.connections == 2
    assert [e["type"] for e in events if e["type"] != "reconnecting"] == [
        "ready", "ready", "stopped"]
    assert pub.acked == len(x) and pub.stream_id in server.streams
    assert bytes(server.streams[pub.stream_id or ""].data) == x.tobytes()


async def test_no_ready_in_time_means_another_attempt_then_a_clear_error() -> None:
    server = IngestServer()
    async with ingest(server, lambda conn, n: "mute") as url:
        pub = Publisher(url, rate=RATE, format="s16", open_timeout=0.2,
                        reconnect=Reconnect(initial=0.01, first_attempts=1))
        with pytest.raises(ClientError, match=r"gave up after 1 attempts.*no 'ready' within"):
            await pub.start()
    assert server.connections == 2


async def test_a_fatal_refusal_is_raised_by_start() -> None:
    server = IngestServer()
    server.refusals = [("unauthorized", "a token is needed")]
    async with ingest(server) as url:
        with pytest.raises(ClientError, match=r"a token is needed \[unauthorized\]") as exc:
            await Publisher(url, rate=RATE, format="s16", reconnect=FAST).start()
    assert exc.value.code == "unauthorized" and server.connections == 1


async def test_sync_publisher_in_a_thread() -> None:
    server = IngestServer()
    x = pcm(3200, seed=8)
    async with ingest(server) as url:
        def script() -> tuple[int, str | None]:
            with SyncPublisher(url, rate=RATE, format="s16") as pub:
                pub.send(x[:1600])
                pub.send(x[1600:].tobytes())
            return pub.acked, pub.stream_id

        acked, sid = await asyncio.to_thread(script)
    assert acked == len(x) and bytes(server.streams[sid or ""].data) == x.tobytes()


async def _collect(pub: Publisher, into: list[dict[str, object]]) -> None:
    async for e in pub.events():
        into.append(e)
