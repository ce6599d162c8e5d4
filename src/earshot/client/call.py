"""Calls from Python: :class:`Call` joins a room, sends a microphone, hears the mix.

One WebSocket, ``/ws/call?room=ROOM&name=NAME``: the ordinary ingest protocol for the
participant's own audio (16-bit PCM, archived losslessly as the stream ``ROOM/NAME``,
acknowledged by offset, resumed after a drop), and from the server the participant's
mix-minus (everyone else) as 20 ms Opus packets, each after 8 bytes giving its room frame,
plus the room's events.

The call runs on a 20 ms clock, as a sound card's duplex callback would
(:meth:`Call.run_clock`): each tick

1. takes one 20 ms frame from the microphone (``mic``: a callable given the frame length;
   or nothing, and the bot calls :meth:`Call.send` itself), cleans it
   (:class:`~earshot.rooms.echo.VoiceProcessor`: echo cancellation, AGC, NS, each
   switchable) and sends it;
2. pops one frame of the mix from the offset-aware jitter buffer
   (:class:`~earshot.client.jitter.JitterBuffer`), decodes it (Opus concealment for a lost
   packet, silence while nothing arrives), hands it to the echo canceller as the far end,
   to ``on_audio`` and, with ``record=True``, to :meth:`Call.heard`.

So what was heard is on the participant's own clock, one frame per tick from joining to
leaving, and gaps are silence: audio that arrives too late is dropped, never replayed late.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from earshot.client.jitter import JitterBuffer
from earshot.client.transport import ws_options
from earshot.errors import ClientError
from earshot.wire.codes import BUSY, RETRYABLE, Code

__all__ = ["MIX_RATE", "Call"]

log = logging.getLogger("earshot.call")
MIX_RATE = 48000
TICK = 0.02
MIX_FRAME = 960
HEADER = struct.Struct("<Q")
PHASE_PACKETS = 25  # the mix packets whose arrival phase sets the clock's
PHASE_MARGIN = 0.003  # seconds between a packet's usual (p90) arrival and its pop
ROOM_EVENTS = frozenset({"room", "joined", "left", "speaking", "silent", "muted", "unmuted",
                         "ended", "levels"})

Mic = Callable[[int], "np.ndarray | None"]


def call_url(url: str, room: str, name: str) -> str:
    """``ws://HOST:PORT/ws`` (or ``.../ws/call``) → the call socket of ``room`` as ``name``."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith("/ws/call"):
        path = (path[: -len("/ws")] if path.endswith("/ws") else path) + "/ws/call"
    query = urllib.parse.urlencode({"room": room, "name": name})
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, query, ""))


class Call:
    """One participant of a call (asyncio). See the module docstring.

    ``rate``: the microphone's rate (the stream's; 16, 32 or 48 kHz with any of
    ``aec``/``agc``/``ns``). ``processors``: what runs on the participant's stream
    (``vad`` gives the room's ``speaking``/``silent``). ``on_event`` gets every event
    (room events and the stream's own), ``on_audio`` every 20 ms of the mix as played.
    """

    def __init__(self, url: str, room: str, name: str, *, rate: int = 48000,
                 token: str | None = None, aec: bool = False, agc: bool = False,
                 ns: bool = False, processors: tuple[str, ...] | None = ("vad",),
                 mic: Mic | None = None, on_audio: Callable[[np.ndarray], None] | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None,
                 record: bool = False, reconnect_for: float = 10.0,
                 min_delay: float = 0.02) -> None:
        if not isinstance(rate, int) or rate <= 0 or rate % 50:
            raise ClientError(f"rate must be a positive multiple of 50 Hz, got {rate!r}")
        self.url = call_url(url, room, name)
        self.room, self.name, self.rate = room, name, rate
        self.token = token
        self.processors = processors
        self.mic = mic
        self.on_audio, self.on_event = on_audio, on_event
        self.record = record
        self.reconnect_for = reconnect_for
        self.frame = rate // 50  # samples per 20 ms at the mic's rate
        self.vp: Any = None
        if aec or agc or ns:
            from earshot.rooms.echo import VoiceProcessor

            self.vp = VoiceProcessor(rate, aec=aec, agc=agc, ns=ns)
        self._reverse: Any = None
        if self.vp is not None and rate != MIX_RATE:
            import soxr

            self._reverse = soxr.ResampleStream(MIX_RATE, rate, 1, dtype="float32",
                                                quality="QQ")
        self._rev_buf = np.zeros(0, np.float32)
        self.jb = JitterBuffer(MIX_RATE, MIX_FRAME, min_delay=min_delay,
                               max_delay=max(0.2, min_delay),
                               initial_delay=max(0.02, min_delay))
        from earshot.codec.opus import OpusDecoder

        self._decoder = OpusDecoder(MIX_RATE, 1)
        self._decoder.conceal(MIX_FRAME)  # loads libopus now, not in the first tick
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.state: dict[str, Any] | None = None  # the room, as sent after ready
        self.stream: str | None = None
        self._token: str | None = None
        self._ws: ClientConnection | None = None
        self._unacked = bytearray()  # s16 frames from self.acked on
        self.acked = 0
        self.offset = 0  # frames given to send() (the stream's length so far)
        self._sent = 0  # frames written on the current connection (absolute offset)
        self._ready = asyncio.Event()  # seated (the room's state came)
        self._live = asyncio.Event()  # the current connection's stream is ready
        self._stopped: asyncio.Future[int] | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._heard: list[np.ndarray] = []
        self._pending_mic = np.zeros(0, np.float32)
        self._closing = False
        self._failed: BaseException | None = None
        self.reconnects = 0
        self.ticks = 0
        self.joined_at: float | None = None  # monotonic time of joining
        self._base: float | None = None  # the clock: tick k is due at _base + k * TICK
        self._k = 0  # the next tick
        self._phases: list[float] | None = []  # arrival phases of the first packets

    # -- life cycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Call:
        await self.join()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if exc[0] is None:
            await self.leave()
        else:
            await self.close()

    async def join(self, timeout: float = 10.0) -> dict[str, Any]:
        """Connect and take a seat; returns the room's state (``{"room", "t",
        "participants"}``). Raises :class:`ClientError` (with the server's ``code``:
        ``room_full``, ``name_taken``, ``invalid_room``...) if the room refuses."""
        loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        self._tasks.append(asyncio.create_task(self._connection_loop()))
        ready = asyncio.create_task(self._ready.wait())
        done, _ = await asyncio.wait({ready, self._tasks[0]}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            await self.close()
            if self._failed is not None:
                raise self._failed
            raise ClientError(f"no answer from {self.url} within {timeout} s")
        self.joined_at = time.monotonic()
        self._tasks.append(asyncio.create_task(self.run_clock()))
        assert self.state is not None
        return self.state

    async def leave(self, timeout: float = 30.0) -> int:
        """Send what is left, stop the stream (the archive is finalized), leave the room.
        Returns the stream's length in frames."""
        self._closing = True
        await self._flush_mic()
        ws = self._ws
        try:
            if ws is not None:
                await self._send_pending(ws)
                await ws.send(json.dumps({"type": "stop"}))
            assert self._stopped is not None
            frames = await asyncio.wait_for(asyncio.shield(self._stopped), timeout)
        finally:
            await self.close()
        return frames

    async def close(self) -> None:
        """Drop the connection without leaving cleanly (the seat waits for a resume)."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()

    # -- what the participant does ----------------------------------------------------------
    def send(self, samples: np.ndarray) -> None:
        """Microphone audio (mono, float32 in [-1, 1] or int16, at ``rate``), any length:
        cleaned (if switched on) in 10 ms blocks and sent."""
        x = np.asarray(samples)
        if x.ndim == 2:
            x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
        x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
        if self.vp is not None:
            buf = np.concatenate([self._pending_mic, x])
            block = self.rate // 100
            whole = len(buf) // block * block
            self._pending_mic = buf[whole:]
            x = self.vp.process(buf[:whole]) if whole else buf[:0]
        if len(x):
            self._queue(x)

    async def mute(self, muted: bool = True) -> None:
        """Mute (the others hear silence from you) or unmute."""
        if self._ws is not None:
            await self._ws.send(json.dumps({"type": "mute", "muted": bool(muted)}))

    def unacknowledged(self) -> np.ndarray:
        """The 16-bit samples sent (or queued) that the server has not acknowledged yet."""
        return np.frombuffer(bytes(self._unacked), "<i2")

    def heard(self) -> np.ndarray:
        """Everything heard so far (``record=True``): float32 at 48 kHz, one 20 ms frame per
        tick of the call's clock from joining on, silence where nothing came."""
        return np.concatenate(self._heard) if self._heard else np.zeros(0, np.float32)

    # -- the clock ------------------------------------------------------------------------------
    async def run_clock(self) -> None:
        """The duplex loop: each 20 ms, one microphone frame out and one mix frame played.

        Once the first packets of the mix have come, the clock's phase is moved (once) to
        a few ms after their usual arrival, and each packet is stamped with the pop that
        will first play it: jitter that does not carry a packet past its pop costs no
        cushion (the jitter buffer sees none)."""
        self._base = time.monotonic()
        k = 0
        while True:
            now = time.monotonic()
            due = int((now - self._base) / TICK) + 1
            while k < due:  # after a stall, every tick: the microphone's frames were made

                self.tick(self._base + k * TICK)
                k += 1
            self._k = k
            await asyncio.sleep(max(0.0, self._base + k * TICK - time.monotonic()))

    def _stamp(self, now: float) -> float:
        """The time of the first pop at or after ``now`` (what a packet arriving now waits
        for); the first arrivals set the clock's phase."""
        base = self._base
        if base is None:
            return now
        if self._phases is not None:
            self._phases.append((now - base) % TICK)
            if len(self._phases) >= PHASE_PACKETS:
                phase = float(np.percentile(self._phases, 90)) + PHASE_MARGIN
                self._phases = None
                self._base = base = base + phase % TICK
        k = max(self._k, int(np.ceil((now - base) / TICK - 1e-9)))
        return base + k * TICK

    def tick(self, now: float) -> np.ndarray:
        """One 20 ms tick (the clock calls it): the mic frame out, a mix frame played."""
        self.ticks += 1
        if self.mic is not None:
            x = self.mic(self.frame)
            if x is not None and len(x):
                self.send(x)
        play = self.jb.pop(now)
        if play.kind == "audio":
            assert isinstance(play.payload, bytes)
            try:
                y = self._decoder.decode(play.payload)[:, 0]
            except Exception:  # a bad packet: concealed
                y = self._decoder.conceal(MIX_FRAME)[:, 0]
        elif play.kind == "concealed":
            y = self._decoder.conceal(MIX_FRAME)[:, 0]
        else:
            y = np.zeros(MIX_FRAME, np.float32)
        y = np.ascontiguousarray(y, dtype=np.float32)
        if len(y) != MIX_FRAME:
            y = np.resize(y, MIX_FRAME) if len(y) else np.zeros(MIX_FRAME, np.float32)
        if self.vp is not None and self.vp.aec:
            far = y if self._reverse is None else self._reverse.resample_chunk(y)
            self._rev_buf = np.concatenate([self._rev_buf, far])
            block = self.rate // 100
            whole = len(self._rev_buf) // block * block
            if whole:
                self.vp.process_reverse(self._rev_buf[:whole])
                self._rev_buf = self._rev_buf[whole:]
        if self.record:
            self._heard.append(y)
        if self.on_audio is not None:
            self.on_audio(y)
        return y

    # -- sending ------------------------------------------------------------------------------
    def _queue(self, x: np.ndarray) -> None:
        pcm = (np.clip(x, -1.0, 1.0 - 1 / 32768) * 32768.0).round().astype("<i2")
        self._unacked += pcm.tobytes()
        self.offset += len(pcm)
        self._wake.set()

    async def _flush_mic(self) -> None:
        if len(self._pending_mic):  # the last partial 10 ms block, unprocessed
            x, self._pending_mic = self._pending_mic, np.zeros(0, np.float32)
            self._queue(x)

    async def _send_pending(self, ws: ClientConnection) -> None:
        start = (self._sent - self.acked) * 2
        if 0 <= start < len(self._unacked):
            data = bytes(self._unacked[start:])
            self._sent = self.acked + len(self._unacked) // 2
            for i in range(0, len(data), 1 << 16):
                await ws.send(data[i:i + (1 << 16)])

    # -- the connection ------------------------------------------------------------------------
    async def _connection_loop(self) -> None:
        deadline: float | None = None
        delay = 0.1
        while True:
            try:
                await self._connect_once()
                return
            except ClientError as exc:
                busy = exc.code in BUSY  # a busy server's refusal: back off, try again
                if not busy and (not self._ready.is_set() or exc.code not in RETRYABLE):
                    self._fail(exc)
                    return
                if busy:
                    delay = max(delay, 0.5)
            except (OSError, ConnectionClosed, InvalidHandshake, InvalidURI,
                    TimeoutError) as exc:
                if not self._ready.is_set():
                    self._fail(ClientError(f"cannot join {self.url}: {exc}"))
                    return
            if self._closing and self._stopped is not None and self._stopped.done():
                return
            now = time.monotonic()
            deadline = deadline or now + self.reconnect_for
            if now > deadline:
                self._fail(ClientError("the connection dropped and could not be resumed"))
                return
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(0.25, delay * 2)  # a call wants its seat back soon

    def _fail(self, exc: ClientError) -> None:
        self._failed = exc
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_exception(exc)
            self._stopped.exception()  # retrieved here: leave() raises it if it waits

    async def _connect_once(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        opts = ws_options(self.url, None)
        async with connect(self.url, additional_headers=headers, max_size=1 << 22,
                           open_timeout=10, ping_interval=None, **opts) as ws:
            start: dict[str, Any] = {"type": "start", "format": "s16", "rate": self.rate,
                                     "channels": 1, "client": {"name": "earshot-call"}}
            if self.processors is not None:
                start["processors"] = list(self.processors)
            if self.stream is not None:  # the server says what it holds; we go on from there
                start.update(resume=self.stream, resume_token=self._token)
            self._live.clear()
            await ws.send(json.dumps(start))
            self._ws = ws
            writer = asyncio.create_task(self._writer(ws))
            try:
                async for msg in ws:
                    if isinstance(msg, bytes):
                        self.receive_mix(msg)
                        continue
                    self._message(json.loads(msg))
            finally:
                writer.cancel()
                self._ws = None
        if not (self._stopped is not None and self._stopped.done()):
            raise ConnectionError("the server closed the connection")

    async def _writer(self, ws: ClientConnection) -> None:
        await self._live.wait()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.stream is not None and self._sent >= self.acked:
                await self._send_pending(ws)

    def receive_mix(self, msg: bytes) -> None:
        """One binary message of the mix (8 bytes of room frame, one packet) into the
        jitter buffer, stamped with the pop that will first play it."""
        if len(msg) <= HEADER.size:
            return
        (frame,) = HEADER.unpack_from(msg)
        with contextlib.suppress(Exception):  # off the grid: dropped
            self.jb.push(frame, MIX_FRAME, bytes(msg[HEADER.size:]), self._stamp(time.monotonic()))

    def _message(self, m: dict[str, Any]) -> None:
        kind = m.get("type")
        if kind == "ready":
            self.stream, self._token = m["stream"], m["resume_token"]
            held = int(m.get("offset", 0))
            self._sent = max(held, self.acked)
            self._live.set()
            if held > self.acked:  # the server holds more than it had acknowledged
                del self._unacked[: (held - self.acked) * 2]
                self.acked = held
            self._wake.set()
            return
        if kind == "ack":
            offset = int(m["offset"])
            if offset > self.acked:
                del self._unacked[: (offset - self.acked) * 2]
                self.acked = offset
            for e in m.get("events") or []:
                self._event(e)
            return
        if kind == "room":
            self.state = m
            self._ready.set()
        elif kind == "stopped":
            if self._stopped is not None and not self._stopped.done():
                self._stopped.set_result(int(m.get("offset", 0)))
        elif kind == "error":
            code = m.get("code")
            if not self._ready.is_set() or code == Code.SUPERSEDED:
                raise ClientError(f"{code}: {m.get('message')}", code=code)
        self._event(m)

    def _event(self, e: dict[str, Any]) -> None:
        self.events.put_nowait(e)
        if self.on_event is not None:
            self.on_event(e)
