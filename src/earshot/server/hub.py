"""The live streams of one server: create, resume, write, acknowledge, detach, recover.

Audio of a stream is batched in memory only until the next ack is due (``ack_interval``
seconds of audio, or that long in wall time for a trickling client), then written to the
archive with one ``os.write`` and acknowledged. So per audio message the hot path is one
``bytearray.extend``; conversion, the write syscall and the JSON ack happen once per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from earshot.audio import StreamSpec
from earshot.bus import MemoryBus
from earshot.config import Settings
from earshot.errors import ProtocolError, StorageError, StreamNotFound
from earshot.protocol import Start
from earshot.server.metrics import Metrics
from earshot.storage.archive import Archive, ArchiveFormat, finalize
from earshot.storage.metadata import MetadataStore, StreamRecord
from earshot.storage.wav import repair

log = logging.getLogger("earshot.hub")
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_stream_id(now: float | None = None) -> str:
    """Time-sortable, unguessable, filename-safe: base36 milliseconds + 8 random hex."""
    ms = int((time.time() if now is None else now) * 1000)
    head = ""
    while ms:
        ms, r = divmod(ms, 36)
        head = _B36[r] + head
    return head + secrets.token_hex(4)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Owner(Protocol):
    """The connection currently feeding a stream, as the hub sees it."""

    async def send_json(self, message: dict[str, Any]) -> None: ...
    async def kick(self, code: str, message: str) -> None: ...


@dataclass(eq=False)
class LiveStream:
    rec: StreamRecord
    spec: StreamSpec
    archive: Archive
    compat: bool
    owner: Owner | None = None
    pending: bytearray = field(default_factory=bytearray)
    pending_frames: int = 0
    pending_since: float = 0.0
    newest: float = 0.0
    acked: int = 0
    header_synced: float = 0.0
    non_finite: int = 0
    clipped: int = 0
    warned: set[str] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def id(self) -> str:
        return self.rec.id

    @property
    def offset(self) -> int:
        """Frames received: written to the archive plus pending."""
        return self.archive.frames + self.pending_frames


class Hub:
    def __init__(
        self,
        settings: Settings,
        store: MetadataStore,
        metrics: Metrics,
        bus: MemoryBus,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.bus = bus
        self.clock = clock
        self.live: dict[str, LiveStream] = {}
        self.streams_dir = settings.data_dir / "streams"
        self.streams_dir.mkdir(parents=True, exist_ok=True)

    # -- paths --------------------------------------------------------------------------
    def path_of(self, rec: StreamRecord) -> Path:
        return self.settings.data_dir / rec.path

    # -- recovery -----------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Repair every archive a crash left open; those streams become resumable."""
        repaired = []
        for rec in self.store.with_state("live"):
            path = self.path_of(rec)
            try:
                frames = repair(path)
            except (OSError, StorageError) as exc:
                done = path.with_suffix(".flac")
                if rec.archive_format == "flac" and done.exists():
                    self.store.update(rec.id, state="finished", path=str(done.relative_to(
                        self.settings.data_dir)))
                    continue
                log.error("stream %s: cannot repair %s: %s", rec.id, path, exc)
                self.store.update(rec.id, state="interrupted")
                continue
            self.store.update(rec.id, frames=frames, state="interrupted")
            log.warning("stream %s: repaired archive after a crash, %d frames", rec.id, frames)
            repaired.append(rec.id)
        return repaired

    # -- start / resume -----------------------------------------------------------------
    async def open(self, start: Start, owner: Owner) -> tuple[LiveStream, str]:
        """Create or resume the stream a start asks for. Returns it and its resume token."""
        if start.resume is not None:
            return await self._resume(start, owner)
        spec = start.spec
        fmt: ArchiveFormat = self.settings.archive_format  # type: ignore[assignment]
        sid = new_stream_id()
        token = secrets.token_urlsafe(18)
        rel = f"streams/{sid}.wav"
        archive = Archive.create(self.settings.data_dir / rel, spec, fmt)
        rec = StreamRecord(
            id=sid, name=start.name, created=time.time(), format=spec.format,
            archive_format=fmt, rate=spec.rate, channels=spec.channels, path=rel,
            token_hash=hash_token(token), client=dict(start.client),
        )
        self.store.create(rec)
        live = LiveStream(rec, spec, archive, start.compat, owner, header_synced=self.clock())
        self._attach(live, resumed=False)
        return live, token

    async def _resume(self, start: Start, owner: Owner) -> tuple[LiveStream, str]:
        sid, token = start.resume or "", start.resume_token or ""
        try:
            rec = self.store.get(sid)
        except StreamNotFound:
            raise ProtocolError("unknown_stream", f"no stream {sid!r} to resume") from None
        if not hmac.compare_digest(rec.token_hash, hash_token(token)):
            raise ProtocolError("bad_resume_token", "wrong resume_token for this stream")
        if rec.state == "finished":
            raise ProtocolError("stream_finished", f"stream {sid} has finished; start a new one")
        spec = start.spec
        if (spec.rate, spec.channels) != (rec.rate, rec.channels):
            raise ProtocolError(
                "resume_mismatch",
                f"stream {sid} is {rec.rate} Hz x{rec.channels}; "
                f"resume asked for {spec.rate} Hz x{spec.channels}",
            )
        live = self.live.get(sid)
        if live is not None:
            # The old connection has not noticed it is dead yet: it loses the stream.
            old = live.owner
            async with live.lock:
                self._write_pending(live)
                live.owner = owner
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.kick("superseded", "this stream was resumed by another connection")
            live.spec = spec  # the wire format may differ after a resume
            live.archive.spec = spec
            self.metrics.streams_started.labels("resume").inc()
            self._announce(live, resumed=True)
            return live, token
        archive = Archive.reopen(self.path_of(rec), spec, rec.archive_format)  # type: ignore[arg-type]
        rec.state = "live"
        rec.frames = archive.frames
        rec.format = spec.format
        self.store.update(sid, state="live", frames=archive.frames, format=spec.format)
        live = LiveStream(rec, spec, archive, False, owner, header_synced=self.clock())
        self._attach(live, resumed=True)
        return live, token

    def _attach(self, live: LiveStream, *, resumed: bool) -> None:
        self.live[live.id] = live
        live.acked = live.archive.frames
        self.metrics.streams_active.set(len(self.live))
        self.metrics.streams_started.labels("resume" if resumed else "new").inc()
        self._announce(live, resumed=resumed)

    def _announce(self, live: LiveStream, *, resumed: bool) -> None:
        rec = live.rec
        self.bus.publish(live.id, {
            "type": "stream_started", "stream": live.id, "t": live.offset / rec.rate,
            "name": rec.name, "rate": rec.rate, "channels": rec.channels,
            "format": live.spec.format, "offset": live.offset, "resumed": resumed,
        })

    # -- audio --------------------------------------------------------------------------
    def add_audio(self, live: LiveStream, data: bytes, frames: int) -> bool:
        """Queue whole frames; True when a flush (write + ack) is due."""
        now = self.clock()
        if not live.pending_frames:
            live.pending_since = now
        live.newest = now
        live.pending += data
        live.pending_frames += frames
        return live.pending_frames >= live.spec.rate * self.settings.ack_interval

    def _write_pending(self, live: LiveStream) -> int:
        """Write what is pending to the archive (synchronously). Returns frames written."""
        frames = live.pending_frames
        if not frames:
            return 0
        nbytes = len(live.pending)
        result = live.archive.append(live.pending)
        live.pending.clear()
        live.pending_frames = 0
        self.metrics.frames_in.inc(frames)
        self.metrics.bytes_in.inc(nbytes)
        if result.non_finite:
            live.non_finite += result.non_finite
            self.metrics.samples_fixed.labels("non_finite").inc(result.non_finite)
        if result.clipped:
            live.clipped += result.clipped
            self.metrics.samples_fixed.labels("clipped").inc(result.clipped)
        return frames

    async def flush(self, live: LiveStream) -> None:
        """Write pending audio, then acknowledge everything durably written."""
        async with live.lock:
            newest = live.newest
            archive = live.archive
            self._write_pending(live)
            if self.settings.fsync and not archive.writer.closed:
                await asyncio.to_thread(archive.sync, True)
            offset = archive.frames
            owner = live.owner
            if offset <= live.acked or owner is None:
                return
            live.acked = offset
        self.metrics.acks.inc()
        self.metrics.ack_latency.observe(self.clock() - newest)
        messages = [*self._fix_warnings(live), {"type": "ack", "offset": offset}]
        with contextlib.suppress(Exception):
            for m in messages:
                await owner.send_json(m)

    def _fix_warnings(self, live: LiveStream) -> list[dict[str, Any]]:
        """One warning per stream and kind the first time samples had to be fixed."""
        out = []
        for code, count, what in (
            ("non_finite", live.non_finite, "non-finite samples (NaN/Inf) were written as 0"),
            ("clipped", live.clipped, "samples beyond ±1.0 were saturated"),
        ):
            if count and code not in live.warned:
                live.warned.add(code)
                out.append({
                    "type": "warning", "code": code, "count": count,
                    "message": f"{count} {what}; later ones are counted in /metrics only",
                })
        return out

    async def tick(self) -> None:
        """Flush streams whose oldest pending audio waited an ack interval; sync headers."""
        now = self.clock()
        due = self.settings.ack_interval
        for live in list(self.live.values()):
            if live.pending_frames and now - live.pending_since >= due:
                await self.flush(live)
            if now - live.header_synced >= self.settings.header_interval:
                live.archive.sync()
                live.header_synced = now

    async def run_ticker(self) -> None:
        period = min(self.settings.ack_interval / 2, 0.05)
        while True:
            await asyncio.sleep(period)
            try:
                await self.tick()
            except Exception:  # never let one bad stream stop the ticker
                log.exception("ticker")

    # -- end ----------------------------------------------------------------------------
    async def detach(self, live: LiveStream, owner: Owner, *, stopped: bool) -> int:
        """The owner is done with the stream: stop it cleanly or leave it resumable."""
        if live.owner is not owner:
            return live.offset  # superseded by a resume: the stream lives on
        async with live.lock:
            self._write_pending(live)
            live.owner = None
            archive = live.archive
            archive.sync(self.settings.fsync)
            archive.close()
            finished = stopped or live.compat
            rec = live.rec
            rec.frames = archive.frames
            fields: dict[str, Any] = {"frames": rec.frames}
            if finished:
                final = await asyncio.to_thread(
                    finalize, archive.path, rec.archive_format  # type: ignore[arg-type]
                )
                rec.path = str(final.relative_to(self.settings.data_dir))
                rec.state, rec.ended = "finished", time.time()
                fields.update(state="finished", ended=rec.ended, path=rec.path)
            else:
                rec.state = "interrupted"
                fields.update(state="interrupted")
            self.store.update(rec.id, **fields)
            self.live.pop(rec.id, None)
            self.metrics.streams_active.set(len(self.live))
        self.bus.publish(rec.id, {
            "type": "stream_ended", "stream": rec.id, "t": rec.frames / rec.rate,
            "state": rec.state, "frames": rec.frames,
        })
        return rec.frames

    async def shutdown(self) -> None:
        for live in list(self.live.values()):
            owner = live.owner
            if owner is not None:
                with contextlib.suppress(Exception):
                    await owner.kick("shutting_down", "the server is shutting down; resume later")
                await self.detach(live, owner, stopped=False)

    # -- REST helpers -------------------------------------------------------------------
    def record(self, stream_id: str) -> StreamRecord:
        live = self.live.get(stream_id)
        if live is not None:
            live.rec.frames = live.archive.frames
            return live.rec
        return self.store.get(stream_id)

    def delete(self, stream_id: str) -> None:
        if stream_id in self.live:
            raise StorageError(f"stream {stream_id} is live; stop it before deleting")
        rec = self.store.get(stream_id)
        for p in self.streams_dir.glob(f"{rec.id}.*"):
            p.unlink(missing_ok=True)
        self.store.delete(stream_id)
