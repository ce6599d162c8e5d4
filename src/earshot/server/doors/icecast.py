"""Icecast sources (ffmpeg ``icecast://``, BUTT, liquidsoap) on their own port (``--icecast
HOST:PORT``). The glue of :mod:`earshot.integrations.icecast`: the head parsed by
:class:`IcecastConnection`, the token (Basic auth, user ``source``) and the mount checked
(a mount with a source connected is refused, 403), the body decoded by
:class:`~earshot.integrations.decode.StreamDecoder` (its thread wakes the connection when
blocks are ready) into an ordinary stream named after the mount, at the source's own rate
and channels; the processors from ``?processors=`` on the mount, else the server's. The
client's close ends the stream (the decoder's last blocks first). A source that reconnects
to its mount continues as a new stream of the same name."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import numpy as np

from earshot.config import Settings
from earshot.integrations.common import (
    Action,
    Audio,
    Close,
    DoorError,
    Event,
    OpenStream,
    Send,
    Stop,
    is_stream_error,
)
from earshot.integrations.decode import StreamDecoder
from earshot.integrations.icecast import (
    Body,
    BodyEnd,
    IcecastAction,
    IcecastConnection,
    SourceRequest,
    SourceRequested,
)
from earshot.server.auth import AuthError, Scope, authenticate
from earshot.server.doors.runner import DoorRunner
from earshot.server.doors.wyoming import TcpTransport
from earshot.server.streams.hub import Hub

log = logging.getLogger("earshot.doors.icecast")
READ_BYTES = 64 * 1024
_WAKE = b"\0wake"  # (a bytes object no read returns: identity is what counts)


def address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--icecast {value!r}: use HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def on_event(event: Event) -> list[Action]:
    """A source hears nothing back; a failing stream ends its connection."""
    return [Close()] if is_stream_error(event) else []


class IcecastSource:
    """One source connection."""

    def __init__(self, hub: Hub, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, mounts: set[str] | None = None) -> None:
        self.hub = hub
        #: the mounts a source is connected to now (one source a mount, as Icecast)
        self.mounts = mounts if mounts is not None else set()
        self.mount: str | None = None
        self.reader = reader
        self.writer = writer
        self.transport = TcpTransport(writer)
        self.conn = IcecastConnection(time.monotonic())
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.runner: DoorRunner | None = None
        self.request: SourceRequest | None = None
        self.decoder: StreamDecoder | None = None
        self.done = False
        peer = writer.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else "unknown"

    async def run(self) -> None:
        reads = asyncio.create_task(self._read())
        try:
            while not self.done:
                due = self.conn.next_deadline
                timeout = 0.5 if due is None else max(0.0, due - time.monotonic())
                try:
                    data = await asyncio.wait_for(self.queue.get(), timeout)
                except TimeoutError:
                    await self._do(self.conn.tick(time.monotonic()))
                    continue
                if data is _WAKE:
                    await self._audio(self.decoder.take() if self.decoder else [])
                elif not data:
                    await self._end()
                else:
                    await self._do(self.conn.receive(data, time.monotonic()))
        except DoorError as exc:
            log.warning("icecast %s: %s", self.peer, exc.message)
        except Exception:
            log.exception("icecast source failed")
        finally:
            reads.cancel()
            if self.mount is not None:  # free for a reconnect while this one finishes
                self.mounts.discard(self.mount)
            if self.decoder is not None:
                self.decoder.abort()
            if self.runner is not None:
                await self.runner.finish()
            self.writer.close()

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                data = await self.reader.read(READ_BYTES)
                self.queue.put_nowait(data)
                if not data:
                    return
        self.queue.put_nowait(b"")

    async def _send(self, actions: list[IcecastAction]) -> None:
        for a in actions:
            if isinstance(a, Send):
                await self.transport.send(a.data)
            elif isinstance(a, Close):
                self.done = True

    async def _do(self, actions: list[IcecastAction]) -> None:
        for a in actions:
            if isinstance(a, SourceRequested):
                await self._do(self._decide(a.request))
            elif isinstance(a, Body):
                await self._feed(a.data)
            elif isinstance(a, BodyEnd):
                await self._end()
            else:
                await self._send([a])

    def _decide(self, request: SourceRequest) -> list[IcecastAction]:
        hub = self.hub
        try:
            principal = authenticate(hub.settings.security, request.token)
            principal.require(Scope.PUBLISH, name=request.name)
        except AuthError as exc:
            log.warning("icecast %s: %s refused: %s", self.peer, request.mount, exc.message)
            return self.conn.refuse(DoorError(exc.code, exc.message, status=exc.status))
        if request.name in self.mounts:
            return self.conn.refuse(DoorError("mount_in_use", f"mount {request.mount} has "
                                              "a source already", status=403))
        self.mounts.add(request.name)
        self.mount = request.name
        self.request = request
        self.runner = DoorRunner(hub, principal, on_event, self.transport, name=request.name,
                                 processors=() if request.processors is not None else None)
        loop = asyncio.get_running_loop()

        def notify() -> None:  # on the decoder's thread
            loop.call_soon_threadsafe(self.queue.put_nowait, _WAKE)

        self.decoder = StreamDecoder(request.format, notify=notify)
        return self.conn.accept(time.monotonic())

    async def _feed(self, data: bytes) -> None:
        assert self.decoder is not None
        await self._audio(self.decoder.feed(data))

    async def _audio(self, blocks: list[np.ndarray]) -> None:
        runner, dec, request = self.runner, self.decoder, self.request
        if runner is None or dec is None or request is None:
            return
        if dec.error is not None:
            raise dec.error
        actions: list[Action] = []
        for b in blocks:
            if runner.stream is None and not actions:
                assert dec.rate is not None and dec.channels is not None
                actions.append(OpenStream("f32", dec.rate, dec.channels, name=request.name,
                                          processors=request.processors or (),
                                          client=request.client_info()))
            actions.append(Audio(np.ascontiguousarray(b, dtype="<f4").tobytes()))
        await runner.perform(actions)
        if runner.closed:
            self.done = True

    async def _end(self) -> None:
        """The source closed (or its Content-Length is complete): the last blocks, stop.
        Its mount is free from now: a source reconnecting goes on as a new stream of the
        same name while this one finishes."""
        self.done = True
        if self.mount is not None:
            self.mounts.discard(self.mount)
            self.mount = None
        dec, runner = self.decoder, self.runner
        if dec is None or runner is None:
            return
        try:
            await self._audio(await asyncio.to_thread(dec.close))
        finally:
            if runner.live is not None:
                await runner.perform([Stop()])


async def start(settings: Settings, hub: Hub, capabilities: dict[str, Any]) -> asyncio.Server:
    value = settings.doors.icecast
    assert value is not None
    host, port = address(value)
    mounts: set[str] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await IcecastSource(hub, reader, writer, mounts).run()

    server = await asyncio.start_server(handle, host, port,
                                        reuse_port=settings.server.processes > 1)
    log.info("icecast sources on %s:%d", host, port)
    return server
