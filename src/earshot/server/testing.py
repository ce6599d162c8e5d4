"""An in-process gateway for tests and benchmarks: no sockets, no uvicorn, a fake clock.

:class:`Gateway` builds what ``earshot serve`` builds around one event loop — a
:class:`~earshot.server.streams.hub.Hub` on a :class:`~earshot.cluster.bus.MemoryBus`, a
SQLite metadata store in a directory of the caller's, fresh metrics — with time taken from a
:class:`FakeClock`. :meth:`Gateway.connect` opens an ingest session on a
:class:`MemoryWebSocket` (what :class:`~earshot.server.ingest.session.IngestSession` reads
and writes of a Starlette WebSocket) and, by default, a :class:`MemoryLane` standing in for
uvicorn's direct lane, so audio can take the same hot path as under ``earshot serve``::

    async with Gateway(tmp_path) as gw:
        client = await gw.connect()
        await client.send_json({"type": "start", "format": "s16", "rate": 16000})
        ready = await client.expect("ready")
        client.send_audio(pcm_bytes)          # the direct lane (IngestSession.on_bytes)
        gw.clock.advance(0.2)
        await gw.hub.tick()                   # a trickling stream's batch is flushed
        ack = await client.expect("ack")

Everything here is public API of the package's own objects; nothing reaches into private
state.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.websockets import WebSocketDisconnect

from earshot.cluster.bus import MemoryBus
from earshot.config import Settings
from earshot.server.ingest.lane import EXTENSION, DirectSink
from earshot.server.ingest.session import IngestSession
from earshot.server.metrics import Metrics
from earshot.server.streams.hub import Hub
from earshot.storage.metadata import SqliteStore

__all__ = ["FakeClock", "Gateway", "MemoryLane", "MemoryWebSocket", "SessionClient"]


class FakeClock:
    """Monotonic time that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class MemoryLane:
    """The direct lane of :mod:`earshot.server.ingest.lane` without a transport: binary
    messages offered to the attached sink as ``data_received`` would, text written to a
    list at once."""

    def __init__(self, sent: list[str] | None = None) -> None:
        self.sink: DirectSink | None = None
        self.sent: list[str] = [] if sent is None else sent  # shared with the WebSocket
        self.writable = True
        self.messages = 0
        self.bytes = 0
        self.writes = 0  # transport writes (syscalls): corked messages go out in one
        self._corked = False
        self._held = 0

    def attach(self, sink: DirectSink) -> None:
        self.sink = sink

    def detach(self) -> None:
        self.sink = None

    def send_text(self, text: str) -> bool:
        if not self.writable:
            return False
        self.sent.append(text)
        self.messages += 1
        self.bytes += len(text)
        if self._corked:
            self._held += 1
        else:
            self.writes += 1
        return True

    def cork(self) -> None:
        self._corked = True

    def uncork(self) -> None:
        if self._held:
            self.writes += 1
        self._corked, self._held = False, 0

    def offer(self, data: bytes) -> bool:
        """A complete binary message from the client: True when the sink handled it on
        the hot path (False: it goes through ``receive()``)."""
        sink = self.sink
        return sink is not None and not sink.busy and sink.on_bytes(data)


@dataclass
class MemoryWebSocket:
    """The part of a Starlette ``WebSocket`` an ingest session uses, in memory."""

    query_params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    lane: MemoryLane | None = None
    accepted: bool = False
    closed: tuple[int, str] | None = None
    sent: list[str] = field(default_factory=list)  # text sent through ASGI, in order
    binary: list[bytes] = field(default_factory=list)  # binary sent (e.g. a call's mix)
    _incoming: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)

    @property
    def scope(self) -> dict[str, Any]:
        return {"extensions": {EXTENSION: {"lane": self.lane}} if self.lane else {}}

    # -- the server's side ---------------------------------------------------------------
    async def accept(self) -> None:
        self.accepted = True

    async def receive(self) -> dict[str, Any]:
        if self.closed is not None:
            raise WebSocketDisconnect(self.closed[0])
        return await self._incoming.get()

    async def send_text(self, text: str) -> None:
        if self.closed is not None:
            raise RuntimeError("send after close")
        self.sent.append(text)

    async def send_bytes(self, data: bytes) -> None:
        if self.closed is not None:
            raise RuntimeError("send after close")
        self.binary.append(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)
        self._incoming.put_nowait({"type": "websocket.disconnect", "code": code})

    # -- the client's side ---------------------------------------------------------------
    def client_text(self, text: str) -> None:
        self._incoming.put_nowait({"type": "websocket.receive", "text": text})

    def client_bytes(self, data: bytes) -> None:
        self._incoming.put_nowait({"type": "websocket.receive", "bytes": data})

    def client_disconnect(self, code: int = 1006) -> None:
        self._incoming.put_nowait({"type": "websocket.disconnect", "code": code})

    def pending(self) -> int:
        """Client messages the session has not received yet."""
        return self._incoming.qsize()


class SessionClient:
    """A client of one in-process ingest session: sends, and reads what it was sent."""

    def __init__(self, ws: MemoryWebSocket, session: IngestSession,
                 task: asyncio.Task[None]) -> None:
        self.ws = ws
        self.session = session
        self.task = task
        self._read = 0

    @property
    def lane(self) -> MemoryLane | None:
        return self.ws.lane

    def messages(self) -> list[dict[str, Any]]:
        """Every message the client was sent so far, in the order the session wrote them
        (on the lane or through ASGI)."""
        return [json.loads(t) for t in self.ws.sent]

    async def send_json(self, message: dict[str, Any]) -> None:
        self.ws.client_text(json.dumps(message))
        await asyncio.sleep(0)

    def send_audio(self, data: bytes) -> None:
        """A binary message: on the direct lane if the session takes it there, otherwise
        queued for its receive loop (as uvicorn does)."""
        lane = self.ws.lane
        if lane is None or self.ws.pending() or not lane.offer(data):
            self.ws.client_bytes(data)

    async def expect(self, kind: str, timeout: float = 2.0,
                     where: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """The next message of type ``kind`` not read yet (earlier ones of other types are
        skipped); TimeoutError if none comes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msgs = self.messages()
            for i in range(self._read, len(msgs)):
                m = msgs[i]
                if m.get("type") == kind and (where is None or where(m)):
                    self._read = i + 1
                    return m
            left = deadline - loop.time()
            if left <= 0 or self.task.done():
                raise TimeoutError(f"no {kind!r} message; got {msgs[self._read:]}")
            await asyncio.sleep(min(0.005, left))

    async def closed(self, timeout: float = 2.0) -> tuple[int, str]:
        """Wait until the session has closed its socket; its code and reason."""
        await asyncio.wait_for(asyncio.shield(self.task), timeout)
        assert self.ws.closed is not None, "the session ended without closing"
        return self.ws.closed

    async def disconnect(self) -> None:
        """The network drops (no close frame): the session ends, its stream resumable."""
        self.ws.client_disconnect()
        await asyncio.wait_for(asyncio.shield(self.task), 5)


class Gateway:
    """A hub with its store, bus and metrics on the running loop; see the module doc."""

    def __init__(self, data_dir: Path | None = None, *, clock: FakeClock | None = None,
                 **settings: Any) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="earshot-gw-")
            data_dir = Path(self._tmp.name)
        self.data_dir = data_dir
        settings.setdefault("min_free_space", 0)
        self.settings = Settings.of(data_dir=self.data_dir, **settings)  # flat: ack_interval=…
        self.clock = clock or FakeClock()
        self.store = SqliteStore(self.data_dir / "earshot.db")
        self.metrics = Metrics()
        self.bus = MemoryBus()
        self.hub = Hub(self.settings, self.store, self.metrics, self.bus, clock=self.clock)
        self.clients: list[SessionClient] = []

    async def __aenter__(self) -> Gateway:
        await self.bus.start(self.hub.on_bus_events, self.hub.on_bus_release)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, query: Mapping[str, str] | None = None,
                      headers: Mapping[str, str] | None = None, *,
                      lane: bool = True) -> SessionClient:
        """A new ingest connection (``/ws?query``), its session running in a task."""
        ws = MemoryWebSocket(dict(query or {}), {k.lower(): v for k, v in
                                                 (headers or {}).items()})
        if lane:
            ws.lane = MemoryLane(ws.sent)
        session = IngestSession(ws, self.hub)  # type: ignore[arg-type]  # a duck-typed WebSocket
        task = asyncio.create_task(session.run())
        await asyncio.sleep(0)
        client = SessionClient(ws, session, task)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for c in self.clients:
            if not c.task.done():
                c.ws.client_disconnect()
        if self.clients:
            await asyncio.wait([c.task for c in self.clients], timeout=5)
        await self.hub.shutdown()
        await self.bus.close()
        self.store.close()
        if self._tmp is not None:
            self._tmp.cleanup()
