"""Python client: publish audio to an earshot server, survive drops, read its events.

    async with Publisher("ws://127.0.0.1:8000/ws", rate=16000, format="f32") as pub:
        await pub.send(samples)              # numpy array (frames,) or (frames, channels)
        async for event in pub.events():     # speech, warnings... (acks are internal)
            ...
    # leaving the block sends 'stop' and waits until every sample is acknowledged

Every sample not yet acknowledged stays in a bounded buffer (or, with ``spool=DIR``, on
disk); when the connection drops, the client reconnects with exponential backoff, resumes
the stream by offset and resends exactly what the server does not hold.

The rules live in the sans-I/O core, :class:`earshot.client.protocol.PublisherProtocol`;
:class:`Publisher` is its asyncio layer (:func:`earshot.client.connection.deliver` runs the
connections), :class:`SyncPublisher` a thread around that for plain scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from ssl import SSLContext
from types import EllipsisType
from typing import Any

import numpy as np

from earshot.audio import BYTES_PER_SAMPLE, SampleFormat, WireFormat
from earshot.client.connection import Endpoint, deliver
from earshot.client.protocol import (
    Done,
    Failed,
    PacketEncoder,
    PublisherProtocol,
    Reconnect,
    Resume,
)
from earshot.client.sources import FileSource, MicSource
from earshot.client.spool import Dropped, Spool, SpoolEntry
from earshot.client.spooled import FOREVER, deliver_entry, entry_protocol
from earshot.errors import ClientError

__all__ = ["OpusPublisher", "Publisher", "Reconnect", "Resume", "SyncPublisher", "publish",
           "send_file"]

log = logging.getLogger("earshot.client")
_DONE = object()  # the end of events()


class Publisher:
    """One resumable stream from this program to an earshot server.

    :meth:`send` queues audio and returns (waiting only while the buffer of unacknowledged
    audio is full); a background task connects, sends, and after a drop reconnects with
    backoff and resends exactly what the server lacks. :meth:`stop` waits until the server
    has confirmed every frame. Use it as ``async with Publisher(...) as pub:``.

    With ``spool=DIR`` (a directory or an :class:`earshot.client.spool.Spool`), the
    unacknowledged audio is kept on disk instead of in memory: :meth:`send` never waits for
    the network, the audio survives the process, and it is delivered however long the server
    stays away (the spool's older entries first, then this stream's)."""

    encoder: PacketEncoder | None = None  # (OpusPublisher)

    def __init__(
        self,
        url: str,
        *,
        rate: int,
        channels: int = 1,
        format: SampleFormat | WireFormat = "f32",
        name: str | None = None,
        processors: list[Any] | None = None,
        token: str | None = None,
        buffer_seconds: float = 600.0,
        max_message_frames: int | None = None,
        reconnect: Reconnect | None = None,
        open_timeout: float = 10.0,
        client_info: dict[str, Any] | None = None,
        ssl: SSLContext | None = None,
        spool: str | Path | Spool | None = None,
        language: str | None = None,
        resume: Resume | None = None,
    ) -> None:
        """
        :param url: the server's ingest WebSocket, ``ws://HOST:PORT/ws`` (or ``wss://``).
        :param rate: sample rate in Hz.
        :param channels: channels per frame (interleaved on the wire).
        :param format: the wire format: ``"f32"`` (float32) or ``"s16"`` (int16). Arrays
            given to :meth:`send` are converted to it (:class:`OpusPublisher` sends Opus).
        :param name: the stream's name (a device or a room); listed by the REST API.
        :param processors: processors to run on the stream, by name or as
            ``{"name": ..., **options}`` (default: the server's, whose ``level``
            readings then go to the stream's subscribers, not to this client: name
            ``level`` to get them).
        :param token: the server's access token, sent as ``Authorization: Bearer``.
        :param buffer_seconds: how much unacknowledged audio is kept in memory; while it
            is full, :meth:`send` waits (default: ten minutes).
        :param max_message_frames: frames per binary message at most (default: 256 KiB
            of audio per message).
        :param reconnect: the backoff between attempts and how many to make
            (:class:`Reconnect`); with a spool, attempts are never bounded (a busy
            server's refusals included).
        :param open_timeout: seconds for a WebSocket handshake, and then for the server's
            ``ready``.
        :param client_info: what the server records about this client (default
            ``{"agent": "earshot-python"}``).
        :param ssl: the TLS context for ``wss://`` (:func:`earshot.client.transport.client_ssl`);
            default: the system's CAs.
        :param spool: store and forward: a directory or a
            :class:`~earshot.client.spool.Spool` (PCM formats only).
        :param language: the spoken language (a BCP 47 tag such as ``"en-US"``), for
            speech-to-text.
        :param resume: continue an existing stream (:class:`Resume`: its id, resume token,
            and the frame the audio given to :meth:`send` begins at) instead of starting one.
        """
        self.url = url
        self.token = token
        self.ssl = ssl
        self.open_timeout = open_timeout
        self.language = language
        self.rate = rate
        self.channels = channels
        self.format: SampleFormat | WireFormat = format
        self.name = name
        self.processors = processors
        self.client_info = client_info or {"agent": "earshot-python"}
        self.frame_bytes = BYTES_PER_SAMPLE.get(format, 2) * channels
        self.buffer_frames = int(buffer_seconds * rate)
        self.max_message_frames = max_message_frames
        self._spool_reconnects = 0
        self.spool: Spool | None = None
        self.entry: SpoolEntry | None = None
        self.dropped: list[Dropped] = []  # spool: audio deleted unacknowledged to make room
        self.delivered: list[tuple[str, str | None]] = []  # spool: (entry, stream) of older ones
        if spool is not None:
            if self.encoder is not None:
                raise ClientError(f"{type(self).__name__} cannot use a spool (it keeps PCM)")
            if format not in ("s16", "f32"):
                raise ClientError("a spool keeps PCM: use format s16 or f32 (not opus)")
            if resume is not None:
                raise ClientError("a spooled publisher resumes what its spool remembers; "
                                  "resume= is for one without a spool")
            self.spool = spool if isinstance(spool, Spool) else Spool(spool)
            # a spool waits out any outage: the backoff timing is kept, the attempt limits not
            self.reconnect = dataclasses.replace(reconnect or FOREVER, attempts=None,
                                                 first_attempts=None, busy_attempts=None)
        else:
            self.reconnect = reconnect or Reconnect()
        self._core: PublisherProtocol | None = None
        if self.spool is None:
            self._core = PublisherProtocol(
                rate=rate, channels=channels, format=format, name=name, processors=processors,
                language=language, client_info=self.client_info, buffer_seconds=buffer_seconds,
                encoder=self.encoder, resume=resume, max_message_frames=max_message_frames,
                reconnect=self.reconnect, ready_timeout=open_timeout, server=url)
        self._stream: tuple[str | None, str | None] = (None, None)  # (spool: the last ready)
        self._wake = asyncio.Event()  # audio to send, or stop
        self._space = asyncio.Event()  # the server said something (acks free room)
        self._ready = asyncio.Event()
        self._finished: asyncio.Future[int] | None = None
        self._events: asyncio.Queue[Any] = asyncio.Queue(maxsize=10_000)
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    # -- public API ----------------------------------------------------------------------
    @property
    def stream_id(self) -> str | None:
        """The server stream's id (once ``ready`` came)."""
        if self._core is not None and self.spool is None:
            return self._core.stream_id
        return self._stream[0]

    @property
    def resume_token(self) -> str | None:
        """The token that resumes this stream (with :attr:`stream_id`, see :class:`Resume`)."""
        if self._core is not None and self.spool is None:
            return self._core.resume_token
        return self._stream[1]

    @property
    def reconnects(self) -> int:
        """Connections made after a drop or a refusal (with a spool: the reconnection
        attempts for this stream)."""
        if self._core is not None and self.spool is None:
            return self._core.reconnects
        return self._spool_reconnects

    @property
    def acked(self) -> int:
        """Frames the server has durably written."""
        if self.entry is not None:
            return self.entry.acked
        return self._core.acked if self._core is not None else 0

    @property
    def offset(self) -> int:
        """Frames handed to :meth:`send` so far."""
        if self.entry is not None:
            return self.entry.written
        return self._core.offset if self._core is not None else 0

    @property
    def unacked(self) -> int:
        """Frames sent or queued that the server has not acknowledged."""
        if self.entry is not None:
            return self.entry.pending
        return self._core.unacked if self._core is not None else 0

    async def start(self) -> Publisher:
        """Connect and wait for the server's ``ready``; raises :class:`ClientError` if refused.

        With a spool it returns at once (the server need not be reachable): this stream's
        spool entry is opened and delivery starts in the background."""
        loop = asyncio.get_running_loop()
        self._finished = loop.create_future()
        if self.spool is not None:
            entry = self.entry = self.spool.create(
                format=self.format, rate=self.rate, channels=self.channels, name=self.name,
                processors=self.processors)
            self._core = entry_protocol(
                entry, server=self.url, reconnect=self.reconnect, spool=self.spool,
                on_dropped=self._on_dropped, client_info=self.client_info,
                language=self.language, max_message_frames=self.max_message_frames,
                ready_timeout=self.open_timeout)
            self._task = asyncio.create_task(self._run_spool(entry), name="earshot-spool")
            return self
        self._task = asyncio.create_task(self._run(), name="earshot-publisher")
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        self._raise_if_failed()
        return self

    async def send(self, audio: np.ndarray | bytes | bytearray | memoryview) -> None:
        """Queue audio for sending: an array of float/int16 samples or raw wire bytes.

        Waits (backpressure) while the unacknowledged buffer is full. With a spool it
        appends to the spool and returns (a full spool drops its oldest audio, or raises
        :class:`~earshot.client.spool.SpoolFull` under ``when_full="stop"``)."""
        self._raise_if_failed()
        core = self._core
        if core is None:
            raise ClientError("send() before start()")
        if core.buffer.closed:
            raise ClientError("send() after stop()")
        while not core.room_for(audio):
            self._space.clear()
            await self._wait(self._space.wait())
        core.send(audio)
        self._wake.set()

    async def wait_acked(self, offset: int | None = None, timeout: float | None = None) -> None:
        """Wait until the server has acknowledged ``offset`` frames (default: all sent)."""
        target = self.offset if offset is None else offset

        async def until() -> None:
            while self.acked < target:
                self._space.clear()
                await self._wait(self._space.wait())

        await asyncio.wait_for(until(), timeout)

    async def stop(self, timeout: float | EllipsisType | None = ...) -> int:
        """Send ``stop`` once every frame is delivered; return the final frame count, which
        the server confirmed (its ``stopped`` count equals the frames sent).

        :param timeout: seconds to wait, None for as long as it takes. Default: 60 s, and
            with a spool as long as it takes (what is not delivered by a timeout stays in
            the spool, for the next run or ``earshot spool --flush``).
        """
        if self._task is None or self._finished is None or self._core is None:
            raise ClientError("stop() before start()")
        if timeout is ...:
            timeout = None if self.spool is not None else 60.0
        self._core.stop()
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(self._finished), timeout)
        finally:
            self._raise_if_failed()

    async def close(self) -> None:
        """Drop the connection without stopping the stream (it stays resumable; with a
        spool, what is not acknowledged stays in the spool)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.entry is not None:
            self.entry.close_files()
            self.entry.unlock()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Server events (everything but acks) until the stream is stopped or failed."""
        while True:
            item = await self._events.get()
            if item is _DONE:
                self._events.put_nowait(_DONE)
                return
            yield item

    async def __aenter__(self) -> Publisher:
        return await self.start()

    async def __aexit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            await self.stop()
        else:
            await self.close()

    # -- internals -----------------------------------------------------------------------
    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    async def _wait(self, aw: Awaitable[Any]) -> None:
        """Await ``aw`` but wake up with the error if the connection task died."""
        if self._task is None:
            raise ClientError("the publisher is not started (start() first)")
        fut = asyncio.ensure_future(aw)
        await asyncio.wait({fut, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not fut.done():
            fut.cancel()
        self._raise_if_failed()

    def _emit(self, event: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(event)

    def _on_event(self, event: dict[str, Any]) -> None:
        """An event of this publisher's own stream."""
        kind = event.get("type")
        if kind == "ready":
            self._stream = (event.get("stream"), event.get("resume_token"))
            self._ready.set()
        elif kind == "reconnecting" and self.spool is not None:
            self._spool_reconnects += 1
        self._emit(event)

    def _on_dropped(self, dropped: list[Dropped]) -> None:
        for d in dropped:
            self.dropped.append(d)
            self._emit({"type": "spool_dropped", "entry": d.entry, "start": d.start,
                        "end": d.end, "frames": d.frames, "seconds": d.frames / d.rate})
        self._wake.set()  # the stream in flight may have to end here
        self._space.set()

    def _finish(self, outcome: Done | Failed) -> None:
        fut = self._finished
        if isinstance(outcome, Failed):
            self._error = outcome.error
            self._space.set()
            if fut is not None and not fut.done():
                fut.set_exception(outcome.error)
                fut.exception()  # retrieved: stop() re-raises through _error
        elif fut is not None and not fut.done():
            fut.set_result(int(outcome.frames or 0))
        self._emit(_DONE)

    async def _guarded(self, body: Awaitable[Done | Failed]) -> None:
        try:
            outcome = await body
        except asyncio.CancelledError:
            self._finish(Failed(ClientError("publisher closed")))
            raise
        except ClientError as exc:
            outcome = Failed(exc)
        except Exception as exc:  # a bug or a local failure (the spool's disk): say so
            log.exception("publisher failed")
            outcome = Failed(ClientError(f"publisher failed: {exc!r}", code="internal"))
        self._finish(outcome)

    def _endpoint(self) -> Endpoint:
        return Endpoint(self.url, self.token, self.ssl, self.open_timeout)

    async def _run(self) -> None:
        assert self._core is not None
        await self._guarded(deliver(self._core, self._endpoint(), wake=self._wake,
                                    on_event=self._on_event, on_progress=self._space.set))

    async def _run_spool(self, entry: SpoolEntry) -> None:
        await self._guarded(self._deliver_spool(entry))

    async def _deliver_spool(self, own: SpoolEntry) -> Done:
        assert self.spool is not None
        common: dict[str, Any] = dict(token=self.token, reconnect=self.reconnect, ssl=self.ssl,
                                      open_timeout=self.open_timeout, wake=self._wake)
        for entry in self.spool.entries():  # what earlier runs left, first
            if entry is own or not entry.try_lock():
                continue
            try:
                if not entry.closed:
                    entry.close_capture()
                sid = await deliver_entry(self.url, entry, on_event=self._emit, **common)
                self.delivered.append((entry.id, sid))
                self._emit({"type": "spool_delivered", "entry": entry.id, "stream": sid})
                entry.remove()
            finally:
                entry.unlock()
        sid = await deliver_entry(self.url, own, on_event=self._on_event, protocol=self._core,
                                  client_info=self.client_info, language=self.language,
                                  **common)
        self._stream = (sid, self._stream[1])
        frames = own.written - own.origin
        own.remove()
        return Done(frames, sid)


class OpusPublisher(Publisher):
    """A :class:`Publisher` that sends Opus packets (about 30 kbit/s instead of 768 for
    48 kHz f32). Same API; ``send`` takes PCM arrays and encodes them.

    Offsets stay in samples of the stream: packet ``i`` starts at ``D_i - pre_skip`` (the
    encoder's lookahead), which the server's decoder drops, so stream sample ``k`` is the
    ``k``-th sample given to :meth:`send`. Unacknowledged packets are kept whole; after a
    drop the publisher resends from its last ack (always a packet boundary) and says so in
    ``start.offset``, and the server's fresh decoder drops what it already holds.
    """

    def __init__(self, url: str, *, rate: int, channels: int = 1, bitrate: int = 32000,
                 frame_ms: float = 20.0, **kwargs: Any) -> None:
        """
        :param bitrate: the encoder's target, in bit/s.
        :param frame_ms: the duration of each packet (10, 20, 40 or 60 ms).

        The other parameters are :class:`Publisher`'s (``format`` is Opus, a spool is not
        possible).
        """
        from earshot.codec.opus import OpusEncoder

        kwargs.pop("format", None)
        encoder = OpusEncoder(rate, channels, frame_ms=frame_ms, bitrate=bitrate)
        self.encoder = encoder
        self.pre_skip = encoder.pre_skip
        super().__init__(url, rate=rate, channels=channels, format="opus", **kwargs)

    @property
    def bytes_sent(self) -> int:
        """Bytes of Opus packets sent (resent ones included)."""
        return self._core.bytes_sent if self._core is not None else 0


# -- sources ------------------------------------------------------------------------------
async def publish(
    url: str,
    source: FileSource | MicSource,
    *,
    name: str | None = None,
    token: str | None = None,
    processors: list[Any] | None = None,
    reconnect: Reconnect | None = None,
    on_block: Callable[[Publisher, np.ndarray], None] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    codec: str = "pcm",
    bitrate: int = 32000,
    ssl: SSLContext | None = None,
    spool: str | Path | Spool | None = None,
) -> dict[str, Any]:
    """Stream a source to the server until it ends (or the task is cancelled, e.g. Ctrl-C,
    which still stops the stream cleanly). Returns the stream's summary.

    ``codec="opus"`` sends Opus packets at ``bitrate`` (the source's rate must be one of
    Opus's: 8, 12, 16, 24 or 48 kHz). ``spool=DIR`` stores and forwards through a spool
    on disk (PCM only; see :class:`Publisher`)."""
    info = source.info
    common: dict[str, Any] = dict(
        rate=info.rate, channels=info.channels, name=name or info.label or None, token=token,
        processors=processors, reconnect=reconnect, ssl=ssl,
        client_info={"agent": "earshot-python", "source": info.label, "codec": codec})
    pub: Publisher
    if codec == "opus" and spool is not None:
        raise ClientError("a spool keeps PCM: use --codec pcm with --spool")
    if codec == "opus":
        from earshot.codec.opus import OPUS_RATES

        if info.rate not in OPUS_RATES or info.channels > 2:
            raise ClientError(f"opus needs mono or stereo at {OPUS_RATES} Hz; "
                              f"{info.label} is {info.rate} Hz x{info.channels}: send PCM")
        pub = OpusPublisher(url, bitrate=bitrate, **common)
    else:
        pub = Publisher(url, format=info.format, spool=spool, **common)
    await pub.start()
    watcher = None
    if on_event is not None:
        async def watch() -> None:
            async for ev in pub.events():
                on_event(ev)
        watcher = asyncio.create_task(watch())
    full = None
    try:
        try:
            async for block in source:
                await pub.send(block if info.channels > 1 else block[:, 0])
                if on_block is not None:
                    on_block(pub, block)
        except asyncio.CancelledError:
            if pub._error is not None:
                raise
        except ClientError as exc:  # a full spool under when_full="stop": deliver the rest
            if exc.code != "spool_full":
                raise
            full = exc
        frames = await pub.stop()
        if full is not None:
            raise full
    except BaseException:
        await pub.close()
        raise
    finally:
        if watcher is not None:
            watcher.cancel()
    return {"stream": pub.stream_id, "frames": frames, "rate": info.rate,
            "channels": info.channels, "format": pub.format, "reconnects": pub.reconnects,
            "bytes_sent": pub.bytes_sent if isinstance(pub, OpusPublisher) else None}


async def send_file(
    url: str,
    path: str | Path,
    *,
    realtime: bool = False,
    format: SampleFormat | None = None,
    frame_ms: float = 20.0,
    **kwargs: Any,
) -> dict[str, Any]:
    """Stream a sound file (anything soundfile reads); returns the stream's summary.

    ``realtime=True`` paces it like a live source; ``format`` is the wire format (default:
    the file's, s16 or f32); the other keyword arguments are :func:`publish`'s."""
    source = FileSource(path, realtime=realtime, format=format, frame_ms=frame_ms)
    return await publish(url, source, **kwargs)


# -- synchronous wrapper -----------------------------------------------------------------
class SyncPublisher:
    """:class:`Publisher` for synchronous code: an event loop in a background thread.

    Takes :class:`Publisher`'s arguments, connects at once (raising
    :class:`~earshot.errors.ClientError` if refused); use it as ``with SyncPublisher(...)``
    (leaving the block stops the stream, or closes it on an exception)."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="earshot-client")
        self._thread.start()
        try:
            self._pub: Publisher = self._call(self._make(url, kwargs))
            self._call(self._pub.start())
        except BaseException:
            self._shutdown()
            raise

    @staticmethod
    async def _make(url: str, kwargs: dict[str, Any]) -> Publisher:
        return Publisher(url, **kwargs)

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def stream_id(self) -> str | None:
        """The server stream's id."""
        return self._pub.stream_id

    @property
    def acked(self) -> int:
        """Frames the server has durably written."""
        return self._pub.acked

    def send(self, audio: np.ndarray | bytes) -> None:
        """Queue audio (an array of float or int16 samples, or bytes of whole frames);
        blocks while the buffer of unacknowledged audio is full. See :meth:`Publisher.send`."""
        self._call(self._pub.send(audio))

    def stop(self, timeout: float | None = 60.0) -> int:
        """Stop the stream once every frame is delivered and return the final frame count
        (confirmed by the server); ends the background thread. ``timeout`` in seconds
        (None: as long as it takes)."""
        try:
            return int(self._call(self._pub.stop(timeout)))
        finally:
            self._shutdown()

    def close(self) -> None:
        """Drop the connection without stopping the stream (it stays resumable) and end
        the background thread."""
        self._call(self._pub.close())
        self._shutdown()

    def events(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Server events as they come; ends when the stream stops."""
        agen = self._pub.events()
        while True:
            try:
                yield self._call(agen.__anext__(), timeout)
            except StopAsyncIteration:
                return

    def _shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> SyncPublisher:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.stop()
        else:
            self.close()
