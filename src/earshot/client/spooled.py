"""Delivering a spool (:mod:`earshot.client.spool`) to the server, and the spooled publisher.

* :func:`deliver_entry` sends one entry: it creates its stream on first contact (or resumes
  the one the entry remembers), sends every frame the server lacks, read from disk, sends
  ``stop`` once capture has ended and removes the entry when ``stopped`` arrives.
* :func:`flush` delivers every entry no other process holds, oldest first
  (``earshot spool DIR --flush``).
* :class:`SpooledPublisher` (``Publisher(url, ..., spool=DIR)``) writes what :meth:`send` is
  given to the spool, never waiting for the network, while a background task delivers the
  spool's older entries first and then this one, retrying for as long as it takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from earshot.client.publisher import _DONE, Publisher, Reconnect, _Done
from earshot.client.spool import Dropped, Spool, SpoolEntry
from earshot.errors import ClientError
from earshot.wire.ingest import RETRYABLE

log = logging.getLogger("earshot.client.spool")
FOREVER = Reconnect(attempts=None, first_attempts=None)
_LIVE: dict[str, _EntryPublisher] = {}  # entry id -> the publisher delivering it right now


class _EntryPublisher(Publisher):
    """A :class:`Publisher` whose unacknowledged audio is a spool entry on disk.

    Offsets on the wire are frames of the current server stream: entry frame
    ``entry.origin + k`` is stream frame ``k``."""

    def __init__(self, url: str, entry: SpoolEntry, *, token: str | None,
                 reconnect: Reconnect, client_info: dict[str, Any] | None = None) -> None:
        super().__init__(url, rate=entry.rate, channels=entry.channels,
                         format=entry.format,  # type: ignore[arg-type]
                         name=entry.name, processors=entry.processors, token=token,
                         reconnect=reconnect,
                         client_info={**(client_info or {"agent": "earshot-python"}),
                                      "spool": entry.id,
                                      # wall time of this stream's first frame (it may
                                      # reach the server hours later)
                                      "captured_at": float(entry.meta.get("created", 0))
                                      + entry.origin / entry.rate})
        self.entry = entry
        self.origin = entry.origin
        self.stream_id = entry.stream_id
        self.resume_token = entry.resume_token
        self._base = max(0, entry.acked - self.origin)
        self._sent = self._base
        self._total = entry.written - self.origin
        self._stopping = entry.closed

    def grew(self) -> None:
        """The entry was appended to (same process)."""
        if self.entry.origin != self.origin:
            return  # audio was dropped: the rest belongs to the next stream
        self._total = self.entry.written - self.origin
        self._wake.set()

    def end(self) -> None:
        """Capture ended: send ``stop`` once everything is delivered."""
        self._stopping = True
        self._wake.set()

    async def _handshake(self, ws: ClientConnection) -> None:
        if self.superseded:
            raise _Done  # audio was dropped while we were away: never start this stream
        await super()._handshake(ws)
        # persisted before any audio is sent on this connection: a restart resumes it
        assert self.stream_id is not None and self.resume_token is not None
        if not self.entry.set_stream(self.stream_id, self.resume_token, self.origin):
            raise _Done  # audio was dropped meanwhile: this stream is to be stopped as it is

    def _next_message(self) -> bytes | None:
        if self._sent >= self._total:
            return None
        data = self.entry.read(self.origin + self._sent,
                               min(self._total - self._sent, self.max_message_frames))
        if not data:  # dropped under us (spool full): this stream ends here; the
            self._total = self._sent  # deliverer, told by epoch_changed, starts a new one
            return None
        self._sent += len(data) // self.frame_bytes
        return data

    def _trim(self, offset: int) -> None:
        if offset > self._base:
            self._base = offset
            if not self.superseded:  # else the frames are the next stream's to account for
                self.entry.ack(self.origin + offset)
            self._space.set()

    @property
    def superseded(self) -> bool:
        """Audio of this entry was dropped after this publisher began: its stream ends."""
        return self.entry.origin != self.origin

    async def run_to_end(self) -> int | None:
        """Connect (for as long as it takes), deliver, and return the final frame count;
        None if audio was dropped under this stream (the caller starts a new one)."""
        await self.start()
        assert self._stopped is not None and self._task is not None
        await asyncio.wait({self._stopped, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self.superseded:
            return None
        self._raise_if_failed()
        frames = await self._stopped
        self.entry.mark_stopped(frames)
        return int(frames)


async def _finish_stream(url: str, entry: SpoolEntry, stream_id: str, resume_token: str,
                         token: str | None, reconnect: Reconnect) -> None:
    """Stop an earlier server stream of ``entry`` (before a drop gap) as it is."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    attempt = 0
    held: int | None = None
    while True:
        try:
            async with connect(url, additional_headers=headers, open_timeout=10,
                               close_timeout=2, compression=None) as ws:
                await ws.send(json.dumps({
                    "type": "start", "resume": stream_id, "resume_token": resume_token,
                    "format": entry.format, "rate": entry.rate, "channels": entry.channels}))
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    kind, code = msg.get("type"), msg.get("code")
                    if kind == "ready":
                        held = int(msg["offset"])
                        await ws.send('{"type":"stop"}')
                    elif kind == "stopped":
                        entry.finished(stream_id, int(msg["offset"]))
                        return
                    elif kind == "error" and code in ("stream_finished", "unknown_stream"):
                        entry.finished(stream_id, held)
                        return
                    elif kind == "error" and code not in RETRYABLE:
                        raise ClientError(f"server refused to stop {stream_id}: "
                                          f"{msg.get('message')} [{code}]", code=code)
                    elif kind == "error":
                        raise ConnectionError(msg.get("message"))
        except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
            attempt += 1
            if reconnect.attempts is not None and attempt > reconnect.attempts:
                raise ClientError(f"cannot reach {url}: {exc}", code="unreachable") from None
            await asyncio.sleep(reconnect.delay(attempt))


async def deliver_entry(url: str, entry: SpoolEntry, *, token: str | None = None,
                        reconnect: Reconnect = FOREVER,
                        on_event: Callable[[dict[str, Any]], None] | None = None,
                        epoch_changed: asyncio.Event | None = None) -> str | None:
    """Deliver one entry (already locked by the caller) to the end; return its last stream
    id. While capture goes on (same process), new frames are sent as they are appended: the
    capturer calls ``grew()`` on ``_LIVE[entry.id]`` (see :class:`SpooledPublisher`).
    ``epoch_changed`` is set when audio of this entry was dropped: the stream in flight is
    left, stopped as it is, and the rest goes to a new one."""
    while True:
        for sid, rtok, _origin in entry.finish:
            await _finish_stream(url, entry, sid, rtok, token, reconnect)
        if entry.closed and entry.stream_id is None and entry.written <= entry.origin:
            entry.meta["stopped"] = True
            return None  # nothing left to send (all dropped, or an empty capture)
        if entry.delivered:
            return entry.stream_id
        pub = _EntryPublisher(url, entry, token=token, reconnect=reconnect)
        watcher = None
        if on_event is not None:
            async def forward(p: _EntryPublisher = pub) -> None:
                async for ev in p.events():
                    on_event(ev)
            watcher = asyncio.create_task(forward())
        _LIVE[entry.id] = pub
        run = asyncio.create_task(pub.run_to_end())
        waits: set[asyncio.Future[Any]] = {run}
        changed = None
        if epoch_changed is not None:
            changed = asyncio.ensure_future(epoch_changed.wait())
            waits.add(changed)
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if run.done() and not pub.superseded:
                await run  # raises what the publisher raised
                return pub.stream_id
            # audio was dropped under this stream: stop it as it is, the rest is a new one
            if epoch_changed is not None:
                epoch_changed.clear()
            if not run.done() and pub._ready.is_set():
                # its stream is known (queued in finish by set_stream): leave it now
                entry.set_stream(pub.stream_id or "", pub.resume_token or "", origin=pub.origin)
                run.cancel()
            # else let it finish its handshake: it queues the stream the server may be
            # creating right now in finish, or starts none, and returns
            with contextlib.suppress(asyncio.CancelledError, ClientError):
                await run
            await pub.close()
        finally:
            _LIVE.pop(entry.id, None)
            if changed is not None:
                changed.cancel()
            if watcher is not None:
                watcher.cancel()


async def flush(spool: Spool, url: str, *, token: str | None = None,
                reconnect: Reconnect | None = None,
                on_delivered: Callable[[SpoolEntry, str | None], None] | None = None,
                skip: Callable[[SpoolEntry], None] | None = None) -> list[str]:
    """Deliver every entry this process can take, oldest first; return the stream ids.

    Entries another process holds (a running capture) are left to it (``skip``)."""
    done: list[str] = []
    for entry in spool.entries():
        if not entry.try_lock():
            if skip is not None:
                skip(entry)
            continue
        try:
            if not entry.closed:
                entry.close_capture()  # its capturer is gone (killed, crashed, rebooted)
            sid = await deliver_entry(url, entry, token=token,
                                      reconnect=reconnect or Reconnect(attempts=30))
            if on_delivered is not None:
                on_delivered(entry, sid)
            if sid:
                done.append(sid)
            entry.remove()
        finally:
            entry.unlock()
    return done


class SpooledPublisher(Publisher):
    """``Publisher(url, ..., spool=DIR)``: capture goes to disk first, delivery follows.

    :meth:`send` appends to this stream's spool entry and returns (it waits only for the
    disk). A background task delivers the spool's older entries first (what a killed or
    rebooted client left), then this one, live, for as long as the outage lasts.
    :meth:`stop` ends capture and waits until the server has acknowledged everything (or
    ``timeout``; what is left stays in the spool for the next run or ``earshot spool
    --flush``). ``spool`` is a directory or a configured :class:`~earshot.client.spool.Spool`.
    """

    def __init__(self, url: str, *, rate: int, channels: int = 1, format: Any = "f32",
                 name: str | None = None, processors: list[Any] | None = None,
                 token: str | None = None, spool: str | Path | Spool,
                 reconnect: Reconnect | None = None, **kwargs: Any) -> None:
        super().__init__(url, rate=rate, channels=channels, format=format, name=name,
                         processors=processors, token=token, **kwargs)
        if format not in ("s16", "f32"):
            raise ClientError("a spool keeps PCM: use format s16 or f32 (not opus)")
        self.spool = spool if isinstance(spool, Spool) else Spool(spool)
        # a spool waits out any outage: the backoff timing is kept, the attempt limits not
        self.reconnect = dataclasses.replace(reconnect or FOREVER, attempts=None,
                                             first_attempts=None)
        self.entry: SpoolEntry | None = None
        self.dropped: list[Dropped] = []
        self.delivered: list[tuple[str, str | None]] = []  # (entry, stream) of older entries
        self._epoch_events: dict[str, asyncio.Event] = {}  # entry id -> "audio was dropped"
        self._finished: asyncio.Future[int] | None = None

    # -- the Publisher API -------------------------------------------------------------------
    @property
    def acked(self) -> int:
        return self.entry.acked if self.entry is not None else 0

    @property
    def offset(self) -> int:
        return self.entry.written if self.entry is not None else 0

    @property
    def unacked(self) -> int:
        return self.entry.pending if self.entry is not None else 0

    async def start(self) -> SpooledPublisher:
        """Open this stream's spool entry and start delivering in the background (returns
        at once: the server need not be reachable)."""
        self.entry = self.spool.create(format=self.format, rate=self.rate,
                                       channels=self.channels, name=self.name,
                                       processors=self.processors)
        loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        self._finished = loop.create_future()
        self._task = asyncio.create_task(self._deliver(), name="earshot-spool")
        return self

    async def send(self, audio: np.ndarray | bytes | bytearray | memoryview) -> None:
        self._raise_if_failed()
        if self.entry is None:
            raise ClientError("send() before start()")
        if self._stopping:
            raise ClientError("send() after stop()")
        data = self._encode(audio) if isinstance(audio, np.ndarray) else bytes(audio)
        dropped = self.spool.append(self.entry, data)  # SpoolFull under when_full="stop"
        for d in dropped:
            self.dropped.append(d)
            self._emit({"type": "spool_dropped", "entry": d.entry, "start": d.start,
                        "end": d.end, "frames": d.frames, "seconds": d.frames / d.rate})
            self._epoch_events.setdefault(d.entry, asyncio.Event()).set()
        pub = _LIVE.get(self.entry.id)
        if pub is not None:
            pub.grew()

    async def wait_acked(self, offset: int | None = None, timeout: float | None = None) -> None:
        assert self.entry is not None
        entry = self.entry
        target = entry.written if offset is None else offset

        async def until() -> None:
            while entry.acked < target:
                self._raise_if_failed()
                await asyncio.sleep(0.02)

        await asyncio.wait_for(until(), timeout)

    async def stop(self, timeout: float | None = None) -> int:
        """End capture; wait (default: as long as it takes) until all is delivered."""
        if self.entry is None or self._finished is None:
            raise ClientError("stop() before start()")
        self._stopping = True
        self.entry.close_capture()
        pub = _LIVE.get(self.entry.id)
        if pub is not None:
            pub.end()
        try:
            return await asyncio.wait_for(asyncio.shield(self._finished), timeout)
        finally:
            self._raise_if_failed()

    async def close(self) -> None:
        """Stop delivering; the spool keeps what is not yet acknowledged."""
        await super().close()
        if self.entry is not None:
            self.entry.close_files()
            self.entry.unlock()

    # -- delivery ----------------------------------------------------------------------------
    async def _deliver(self) -> None:
        assert self.entry is not None and self._finished is not None
        try:
            for entry in self.spool.entries():  # what earlier runs left, first
                if entry is self.entry or not entry.try_lock():
                    continue
                try:
                    if not entry.closed:
                        entry.close_capture()
                    sid = await deliver_entry(
                        self.url, entry, token=self.token, reconnect=self.reconnect,
                        on_event=self._emit,
                        epoch_changed=self._epoch_events.setdefault(entry.id, asyncio.Event()))
                    self.delivered.append((entry.id, sid))
                    self._emit({"type": "spool_delivered", "entry": entry.id, "stream": sid})
                    entry.remove()
                finally:
                    entry.unlock()
            sid = await deliver_entry(self.url, self.entry, token=self.token,
                                      reconnect=self.reconnect, on_event=self._on_event,
                                      epoch_changed=self._epoch_events.setdefault(
                                          self.entry.id, asyncio.Event()))
            self.stream_id = sid
            frames = self.entry.written - self.entry.origin
            self.entry.remove()
            if not self._finished.done():
                self._finished.set_result(frames)
            self._emit(_DONE)
        except asyncio.CancelledError:
            self._fail(ClientError("publisher closed"))
            raise
        except ClientError as exc:
            self._fail(exc)
            if not self._finished.done():
                self._finished.set_exception(exc)
                self._finished.exception()

    def _on_event(self, ev: dict[str, Any]) -> None:
        if ev.get("type") == "ready":
            self.stream_id = ev.get("stream")
            self.resume_token = ev.get("resume_token")
            self._ready.set()
        elif ev.get("type") == "reconnecting":
            self.reconnects += 1
        self._emit(ev)
