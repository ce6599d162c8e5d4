"""Python client: publish audio to an earshot server, survive drops, read its events.

    async with Publisher("ws://127.0.0.1:8000/ws", rate=16000, format="f32") as pub:
        await pub.send(samples)              # numpy array (frames,) or (frames, channels)
        async for event in pub.events():     # level, speech, warnings... (acks are internal)
            ...
    # leaving the block sends 'stop' and waits until every sample is acknowledged

Every sample not yet acknowledged stays in a bounded buffer; when the connection drops,
the client reconnects with exponential backoff, resumes the stream by offset and resends
exactly what the server does not hold. :class:`SyncPublisher` wraps it for plain scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from ssl import SSLContext
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from earshot.audio import BYTES_PER_SAMPLE, SampleFormat, encode
from earshot.client.sources import FileSource, MicSource
from earshot.client.transport import handshake_refusal, ws_options
from earshot.errors import ClientError
from earshot.wire.ingest import BUSY, RETRYABLE

log = logging.getLogger("earshot.client")
_DONE = object()
FATAL_CLOSE_CODES = frozenset({1008, 1009})  # plus every 44xx


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconnect:
    """Backoff between reconnection attempts, in seconds. ``attempts=None`` retries forever."""

    initial: float = 0.2
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.2
    attempts: int | None = 30
    first_attempts: int | None = 3  # before the stream ever started: fail fast if nobody is there
    busy_attempts: int | None = 120  # refusals of a busy server (server_full, shutting_down)

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * self.factor ** max(0, attempt - 1))
        return base * (1 + random.uniform(-self.jitter, self.jitter))

    def busy_delay(self, attempt: int) -> float:
        """After a busy server's refusal: wider jitter (0.5x to 1.5x), so that many clients
        refused or dropped together (a restart) come back spread out, not as a herd."""
        base = min(self.maximum, self.initial * self.factor ** max(0, attempt - 1))
        return base * random.uniform(0.5, 1.5)


class _Done(Exception):
    """The stream turned out to be finished already."""


class _Busy(ConnectionError):
    """The server asked us to come back later (server_full, storage_full, shutting_down)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]")
        self.code = code


class _Fatal(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Publisher:
    """One resumable stream from this program to an earshot server.

    With ``spool=DIR`` (a directory or an :class:`earshot.client.spool.Spool`) the publisher is an
    :class:`earshot.client.spooled.SpooledPublisher`: unacknowledged audio is kept on disk, not in
    memory, survives the process and is delivered however long the server stays away."""

    def __new__(cls, *args: Any, spool: Any = None, **kwargs: Any) -> Any:
        if spool is not None and cls is Publisher:
            from earshot.client.spooled import SpooledPublisher

            return super().__new__(SpooledPublisher)
        return super().__new__(cls)

    def __init__(
        self,
        url: str,
        *,
        rate: int,
        channels: int = 1,
        format: SampleFormat = "f32",
        name: str | None = None,
        processors: list[Any] | None = None,
        token: str | None = None,
        buffer_seconds: float = 600.0,
        max_message_frames: int | None = None,
        reconnect: Reconnect | None = None,
        open_timeout: float = 10.0,
        client_info: dict[str, Any] | None = None,
        ssl: SSLContext | None = None,
        spool: Any = None,  # see __new__ (SpooledPublisher)
        language: str | None = None,
    ) -> None:
        if spool is not None:
            raise ClientError(f"{type(self).__name__} cannot use a spool (it keeps PCM)")
        self.url = url
        self.ssl = ssl  # for wss:// (earshot.client.transport.client_ssl); default: system CAs
        self.language = language  # spoken language (BCP 47), for speech-to-text
        self.rate = rate
        self.channels = channels
        self.format: SampleFormat = format
        self.name = name
        self.processors = processors
        self.token = token
        self.frame_bytes = BYTES_PER_SAMPLE.get(format, 2) * channels
        self.buffer_frames = int(buffer_seconds * rate)
        self.max_message_frames = max_message_frames or max(1, (256 * 1024) // self.frame_bytes)
        self.reconnect = reconnect or Reconnect()
        self.open_timeout = open_timeout
        self.client_info = client_info or {"agent": "earshot-python"}
        self.stream_id: str | None = None
        self.resume_token: str | None = None
        self.reconnects = 0
        # Buffer of unacknowledged audio: frames [base, total) live in _buf.
        self._buf = bytearray()
        self._base = 0  # offset of _buf[0] == highest ack
        self._total = 0  # frames handed to send()
        self._sent = 0  # frames sent on the current connection
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._ready = asyncio.Event()
        self._stopping = False
        self._stopped: asyncio.Future[int] | None = None
        self._events: asyncio.Queue[Any] = asyncio.Queue(maxsize=10_000)
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    # -- public API ----------------------------------------------------------------------
    @property
    def acked(self) -> int:
        """Frames the server has durably written."""
        return self._base

    @property
    def offset(self) -> int:
        """Frames handed to :meth:`send` so far."""
        return self._total

    @property
    def unacked(self) -> int:
        return self._total - self._base

    async def start(self) -> Publisher:
        """Connect and wait for the server's ``ready``; raises :class:`ClientError` if refused."""
        self._stopped = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name="earshot-publisher")
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        self._raise_if_failed()
        return self

    async def send(self, audio: np.ndarray | bytes | bytearray | memoryview) -> None:
        """Queue audio for sending: an array of float/int16 samples or raw wire bytes.

        Waits (backpressure) while the unacknowledged buffer is full.
        """
        self._raise_if_failed()
        if self._stopping:
            raise ClientError("send() after stop()")
        if isinstance(audio, np.ndarray):
            data = self._encode(audio)
        else:
            data = bytes(audio)
            if len(data) % self.frame_bytes:
                raise ClientError(f"{len(data)} bytes is not whole {self.frame_bytes}-byte frames")
        frames = len(data) // self.frame_bytes
        while self.unacked + frames > self.buffer_frames and self.unacked > 0:
            self._space.clear()
            await self._wait(self._space.wait())
        self._buf += data
        self._total += frames
        self._wake.set()

    async def wait_acked(self, offset: int | None = None, timeout: float | None = None) -> None:
        """Wait until the server has acknowledged ``offset`` frames (default: all sent)."""
        target = self._total if offset is None else offset

        async def until() -> None:
            while self._base < target:
                self._space.clear()
                await self._wait(self._space.wait())

        await asyncio.wait_for(until(), timeout)

    async def stop(self, timeout: float | None = 60.0) -> int:
        """Send ``stop`` once every frame is delivered; return the final frame count."""
        if self._task is None or self._stopped is None:
            raise ClientError("stop() before start()")
        self._before_stop()
        self._stopping = True
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(self._stopped), timeout)
        finally:
            self._raise_if_failed()

    async def close(self) -> None:
        """Drop the connection without stopping the stream (it stays resumable)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

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
    def _encode(self, audio: np.ndarray) -> bytes:
        if audio.ndim == 1 and self.channels != 1:
            raise ClientError(f"1-D array for a {self.channels}-channel stream")
        if audio.ndim == 2 and audio.shape[1] != self.channels:
            raise ClientError(f"array has {audio.shape[1]} channels, stream has {self.channels}")
        if audio.dtype == np.int16:
            if self.format == "s16":
                return audio.astype("<i2", copy=False).tobytes()
            audio = audio.astype(np.float32) / 32768.0
        return encode(audio, self.format)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    async def _wait(self, aw: Any) -> None:
        """Await ``aw`` but wake up with the error if the connection task died."""
        assert self._task is not None
        fut = asyncio.ensure_future(aw)
        await asyncio.wait({fut, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not fut.done():
            fut.cancel()
        self._raise_if_failed()

    def _emit(self, event: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(event)

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._space.set()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_exception(exc)
            self._stopped.exception()  # mark retrieved; stop() re-raises via _error
        self._emit(_DONE)

    async def _run(self) -> None:
        attempt = busy = 0
        spread = False  # after a busy server's refusal (a restart): wider jitter
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        while True:
            try:
                async with connect(
                    self.url, additional_headers=headers, max_size=None, compression=None,
                    open_timeout=self.open_timeout, ping_interval=10, ping_timeout=10,
                    close_timeout=2, **ws_options(self.url, self.ssl),
                ) as ws:
                    await self._handshake(ws)
                    attempt = busy = 0
                    spread = False
                    if await self._connected(ws):
                        return
            except _Done:
                return
            except _Fatal as exc:
                self._fail(ClientError(f"server refused: {exc} [{exc.code}]", code=exc.code))
                return
            except asyncio.CancelledError:
                self._fail(ClientError("publisher closed"))
                raise
            except _Busy as exc:
                busy += 1
                spread = True
                limit = self.reconnect.busy_attempts
                if limit is not None and busy > limit:
                    self._fail(ClientError(f"server stayed busy (gave up after {limit} "
                                           f"attempts): {exc}", code=exc.code))
                    return
                delay = self.reconnect.busy_delay(busy)
                self._emit({"type": "reconnecting", "attempt": busy, "delay": delay,
                            "code": exc.code, "reason": str(exc)})
                await asyncio.sleep(delay)
                self.reconnects += 1
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                if isinstance(exc, InvalidURI):
                    self._fail(ClientError(f"bad server URL {self.url!r}: {exc}"))
                    return
                refused = handshake_refusal(exc)  # 403 origin, 429 rate limited, TLS, ...
                if refused is not None and not refused.retryable:
                    self._fail(ClientError(f"server refused: {refused.message} "
                                           f"[{refused.code}]", code=refused.code))
                    return
                attempt += 1
                limit = self.reconnect.attempts
                if self.stream_id is None:
                    limit = self.reconnect.first_attempts
                if limit is not None and attempt > limit:
                    self._fail(ClientError(
                        f"cannot reach {self.url} (gave up after {limit} attempts): "
                        f"{refused.message if refused is not None else exc}",
                        code=refused.code if refused is not None else "unreachable"))
                    return
                delay = (self.reconnect.busy_delay if spread else self.reconnect.delay)(attempt)
                if refused is not None and refused.retry_after:
                    delay = max(delay, refused.retry_after)
                self._emit({"type": "reconnecting", "attempt": attempt, "delay": delay,
                            "reason": str(exc) or type(exc).__name__})
                await asyncio.sleep(delay)
                self.reconnects += 1

    async def _handshake(self, ws: ClientConnection) -> None:
        start: dict[str, Any] = {
            "type": "start", "format": self.format, "rate": self.rate,
            "channels": self.channels, "client": self.client_info,
            "batch": True,  # events ride along with the ack: one message per ack interval
        }
        if self.name is not None:
            start["name"] = self.name
        if self.processors is not None:
            start["processors"] = self.processors
        if self.language is not None:
            start["language"] = self.language
        if self.stream_id is not None:
            # No 'offset': we wait for 'ready' and resend from the server's own offset.
            # (Declaring our last ack here would make the server skip frames it holds
            # beyond that ack a second time.) A server holding less than it acknowledged
            # is caught below as a gap.
            start.update(resume=self.stream_id, resume_token=self.resume_token)
        start.update(self._start_fields())
        await ws.send(json.dumps(start))
        deadline = time.monotonic() + self.open_timeout
        while True:
            raw = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
            msg = json.loads(raw)
            kind = msg.get("type")
            if kind == "ready":
                break
            if kind == "error":
                code = msg.get("code", "error")
                if code in BUSY:
                    raise _Busy(code, msg.get("message", ""))
                if code in RETRYABLE:
                    raise ConnectionError(msg.get("message"))
                if code == "stream_finished" and self._stopping and self._stopped is not None:
                    # Our 'stop' landed but its 'stopped' answer was lost with the connection.
                    if not self._stopped.done():
                        self._stopped.set_result(self._total)
                    self._emit(_DONE)
                    raise _Done
                raise _Fatal(code, msg.get("message", ""))
            self._emit(msg)
        held = int(msg["offset"])
        if held < self._base:
            raise _Fatal("gap", f"server holds {held} frames but had acknowledged {self._base}")
        if held > self._total:
            raise _Fatal("ahead", f"server holds {held} frames but only {self._total} were sent")
        self._resume_from(held)
        self.stream_id = msg["stream"]
        self.resume_token = msg["resume_token"]
        self._ready.set()
        self._emit(msg)

    async def _connected(self, ws: ClientConnection) -> bool:
        """Run one connection; True when the stream was stopped (done).

        Error events are passed on like any event (a processor failing is not the end);
        the server's close code says whether the stream can go on: a 44xx or 1009 close is
        final (with the error that preceded it), anything else means reconnect and resume.
        """
        writer = asyncio.create_task(self._writer(ws))
        last_error: dict[str, Any] = {}
        try:
            with contextlib.suppress(ConnectionClosed):
                async for raw in ws:
                    if isinstance(raw, bytes):
                        continue
                    msg = json.loads(raw)
                    kind = msg.get("type")
                    if kind == "ack":
                        for e in msg.get("events") or ():  # (batch): before the ack, in order
                            if e.get("type") == "error":
                                last_error = e
                            self._emit(e)
                        self._trim(int(msg["offset"]))
                        continue
                    if kind == "stopped":
                        self._trim(int(msg["offset"]))
                        assert self._stopped is not None
                        if not self._stopped.done():
                            self._stopped.set_result(int(msg["offset"]))
                        self._emit(msg)
                        self._emit(_DONE)
                        return True
                    if kind == "error":
                        last_error = msg
                    self._emit(msg)
            code = ws.close_code
            if code is not None and (4400 <= code < 4500 or code in FATAL_CLOSE_CODES):
                raise _Fatal(last_error.get("code", str(code)),
                             last_error.get("message") or ws.close_reason or "closed")
            if last_error.get("code") in BUSY:  # e.g. shutting_down (1001): back off, resume
                raise _Busy(last_error["code"], last_error.get("message", ""))
            raise ConnectionError(f"connection closed ({code} {ws.close_reason})")
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer

    # -- hooks for other wire formats (see OpusPublisher) ---------------------------------
    def _before_stop(self) -> None:
        """Last chance to queue audio (an encoder's tail) before ``stop``."""
    def _start_fields(self) -> dict[str, Any]:
        """Extra fields of ``start``."""
        return {}

    def _resume_from(self, held: int) -> None:
        """After ``ready``: continue sending from the server's offset."""
        self._trim(held)
        self._sent = held

    def _next_message(self) -> bytes | None:
        """The next binary message to send (advancing ``_sent``), or None when all is sent."""
        if self._sent >= self._total:
            return None
        fb = self.frame_bytes
        start = (self._sent - self._base) * fb
        n = min(self._total - self._sent, self.max_message_frames)
        self._sent += n
        return bytes(self._buf[start : start + n * fb])

    def _stop_message(self) -> str:
        return '{"type":"stop"}'

    async def _writer(self, ws: ClientConnection) -> None:
        stop_sent = False
        while True:
            while (chunk := self._next_message()) is not None:
                await ws.send(chunk)
            if self._stopping and not stop_sent:
                await ws.send(self._stop_message())
                stop_sent = True
            self._wake.clear()
            if self._sent >= self._total and (stop_sent or not self._stopping):
                await self._wake.wait()

    def _trim(self, offset: int) -> None:
        if offset > self._base:
            del self._buf[: (offset - self._base) * self.frame_bytes]
            self._base = offset
            self._space.set()


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
        from earshot.codec.opus import OpusEncoder

        kwargs.pop("format", None)
        super().__init__(url, rate=rate, channels=channels, format="opus", **kwargs)  # type: ignore[arg-type]
        self.encoder = OpusEncoder(rate, channels, frame_ms=frame_ms, bitrate=bitrate)
        self.pre_skip = self.encoder.pre_skip
        self._packets: deque[tuple[int, int, bytes]] = deque()  # (offset, frames, packet)
        self._decoded = -self.pre_skip  # stream offset of the next packet
        self._given = 0  # samples handed to send(): the true length
        self.bytes_sent = 0

    @property
    def offset(self) -> int:
        return self._given

    async def send(self, audio: np.ndarray | bytes | bytearray | memoryview) -> None:
        self._raise_if_failed()
        if self._stopping:
            raise ClientError("send() after stop()")
        if not isinstance(audio, np.ndarray):
            raise ClientError("an Opus publisher takes numpy arrays of samples")
        x = audio.astype(np.float32) / 32768.0 if audio.dtype == np.int16 else audio
        while self.unacked > self.buffer_frames and self.unacked > 0:
            self._space.clear()
            await self._wait(self._space.wait())
        self._given += len(x)
        self._queue(self.encoder.encode(x))

    def _queue(self, packets: list[bytes]) -> None:
        from earshot.codec.opus import packet_samples

        for p in packets:
            n = packet_samples(p, self.rate)
            self._packets.append((self._decoded, n, p))
            self._decoded += n
        self._total = max(0, self._decoded)
        self._wake.set()

    def _before_stop(self) -> None:
        if not self._stopping:
            self._queue(self.encoder.flush())

    def _start_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"pre_skip": self.pre_skip}
        if self.stream_id is not None:
            fields["offset"] = self._base  # we resend every packet from our last ack on
        return fields

    def _resume_from(self, held: int) -> None:
        self._sent = self._base  # the server's decoder drops [base, held)

    def _next_message(self) -> bytes | None:
        for offset, n, packet in self._packets:
            if offset + n > self._sent:
                self._sent = offset + n
                self.bytes_sent += len(packet)
                return packet
        return None

    def _stop_message(self) -> str:
        return json.dumps({"type": "stop", "length": self._given})

    def _trim(self, offset: int) -> None:
        if offset > self._base:
            while self._packets and self._packets[0][0] + self._packets[0][1] <= offset:
                self._packets.popleft()
            self._base = offset
            self._space.set()


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
    spool: Any = None,
) -> dict[str, Any]:
    """Stream a source to the server until it ends (or the task is cancelled, e.g. Ctrl-C,
    which still stops the stream cleanly). Returns the stream's summary.

    ``codec="opus"`` sends Opus packets at ``bitrate`` (the source's rate must be one of
    Opus's: 8, 12, 16, 24 or 48 kHz). ``spool=DIR`` stores and forwards through a spool
    on disk (PCM only; see :class:`earshot.client.spooled.SpooledPublisher`)."""
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
            "bytes_sent": getattr(pub, "bytes_sent", None)}


async def send_file(
    url: str,
    path: str | Path,
    *,
    realtime: bool = False,
    format: SampleFormat | None = None,
    frame_ms: float = 20.0,
    **kwargs: Any,
) -> dict[str, Any]:
    """Stream a sound file (anything soundfile reads); returns the stream's summary."""
    source = FileSource(path, realtime=realtime, format=format, frame_ms=frame_ms)
    return await publish(url, source, **kwargs)


# -- synchronous wrapper -----------------------------------------------------------------
class SyncPublisher:
    """:class:`Publisher` for synchronous code: an event loop in a background thread."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="earshot-client")
        self._thread.start()
        self._pub: Publisher = self._call(self._make(url, kwargs))
        self._call(self._pub.start())

    @staticmethod
    async def _make(url: str, kwargs: dict[str, Any]) -> Publisher:
        return Publisher(url, **kwargs)

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def stream_id(self) -> str | None:
        return self._pub.stream_id

    @property
    def acked(self) -> int:
        return self._pub.acked

    def send(self, audio: np.ndarray | bytes) -> None:
        self._call(self._pub.send(audio))

    def stop(self, timeout: float | None = 60.0) -> int:
        try:
            return int(self._call(self._pub.stop(timeout)))
        finally:
            self._shutdown()

    def close(self) -> None:
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
