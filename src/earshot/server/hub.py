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
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from earshot.audio import StreamSpec, decode, f32_to_s16, sanitize_f32
from earshot.bus import AudioItem, MemoryBus
from earshot.config import Settings
from earshot.errors import ProcessorError, ProtocolError, StorageError, StreamNotFound
from earshot.pipeline import StreamPipeline
from earshot.processors.base import Event, StreamInfo
from earshot.processors.registry import Registry
from earshot.protocol import Start
from earshot.server.metrics import Metrics
from earshot.storage import segments
from earshot.storage.archive import FINAL_SUFFIX, Archive, ArchiveFormat, finalize
from earshot.storage.metadata import MetadataStore, SegmentRecord, StreamRecord
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

    def post(self, message: dict[str, Any]) -> None:
        """Queue a message for the client, in order, without waiting."""

    def post_text(self, text: str) -> None:
        """Same, for a message already serialized (the ack on the hot path)."""

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
    pipeline: StreamPipeline | None = None
    detaching: asyncio.Event | None = None
    decoder: Any = None  # OpusDecoder for opus streams: packets become s16 on arrival
    relay: list[Any] | None = None  # [OpusEncoder, next input offset, next packet offset]

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
        registry: Registry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.bus = bus
        self.registry = registry or Registry(settings.processors)
        self.clock = clock
        self.live: dict[str, LiveStream] = {}
        self._background: set[asyncio.Task[Any]] = set()
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
                done = path.with_suffix(FINAL_SUFFIX.get(rec.archive_format, ".wav"))
                if done != path and done.exists():
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
    async def open(self, start: Start, owner: Owner) -> tuple[LiveStream, str, list[Event]]:
        """Create or resume the stream a start asks for.

        Returns it, its resume token, and warnings for the client (e.g. processors refused).
        """
        if start.resume is not None:
            live, token = await self._resume(start, owner)
        else:
            live, token = self._create(start, owner)
        warnings = self._start_pipeline(live, start) if live.pipeline is None else []
        return live, token, warnings

    def _create(self, start: Start, owner: Owner) -> tuple[LiveStream, str]:
        spec = start.spec
        fmt: ArchiveFormat = (start.archive or self.settings.archive_format)  # type: ignore[assignment]
        sid = new_stream_id()
        token = secrets.token_urlsafe(18)
        rel = f"streams/{sid}.wav"
        archive = Archive.create(self.settings.data_dir / rel, spec.pcm, fmt)
        rec = StreamRecord(
            id=sid, name=start.name, created=time.time(), format=spec.format,
            archive_format=fmt, rate=spec.rate, channels=spec.channels, path=rel,
            token_hash=hash_token(token), client=dict(start.client),
        )
        self.store.create(rec)
        live = LiveStream(rec, spec.pcm, archive, start.compat, owner,
                          header_synced=self.clock(), decoder=_decoder(spec, start.pre_skip))
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
        if live is not None and live.detaching is not None:
            await live.detaching.wait()  # finishing a detach: resume from disk once done
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
            live.spec = spec.pcm  # the wire format may differ after a resume
            live.archive.spec = spec.pcm
            live.decoder = _decoder(spec, _resume_skip(spec, start, live.offset))
            self.metrics.streams_started.labels("resume").inc()
            self._announce(live, resumed=True)
            return live, token
        archive = Archive.reopen(self.path_of(rec), spec.pcm, rec.archive_format)  # type: ignore[arg-type]
        rec.state = "live"
        rec.frames = archive.frames
        rec.format = spec.format
        self.store.update(sid, state="live", frames=archive.frames, format=spec.format)
        live = LiveStream(rec, spec.pcm, archive, False, owner, header_synced=self.clock(),
                          decoder=_decoder(spec, _resume_skip(spec, start, archive.frames)))
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

    # -- processors and events ------------------------------------------------------------
    def _start_pipeline(self, live: LiveStream, start: Start) -> list[Event]:
        specs, problems = self.registry.for_start(start.processors)
        warnings: list[Event] = [
            {"type": "warning", "code": "processor_unavailable", "message": p} for p in problems]
        procs = []
        for spec in specs:
            try:
                procs.append(spec.make())
            except ProcessorError as exc:
                warnings.append({"type": "warning", "code": "processor_unavailable",
                                 "message": str(exc)})
        if procs:
            rec = live.rec
            live.pipeline = StreamPipeline(
                StreamInfo(rec.id, rec.rate, rec.channels, rec.name, start.language), procs,
                lambda events: self.emit(live, events), start_offset=live.offset,
                max_lag=self.settings.max_lag)
        return warnings

    def emit(self, live: LiveStream, events: list[Event]) -> None:
        """Deliver events of a stream: to its sender, to subscribers; cut VAD segments."""
        sid = live.id
        owner = live.owner
        for e in events:
            e["stream"] = sid
            kind = e.get("type")
            if kind == "lag":
                self.metrics.processor_lag.labels(e.get("processor", "?")).observe(e["lag"])
            elif kind == "dropped":
                self.metrics.processor_dropped.labels(e.get("processor", "?")).inc(e["seconds"])
            elif kind == "error":
                self.metrics.errors.labels(e.get("code", "?")).inc()
            if owner is not None:
                owner.post(e)
            self.bus.publish(sid, e)
            if kind == "transcript" and e.get("final"):
                try:
                    self.store.add_transcript(sid, e)
                except (KeyError, TypeError, ValueError) as exc:
                    log.warning("stream %s: malformed final transcript: %s", sid, exc)
            if kind == "speech_end" and "start" in e and "end" in e:
                seg = self._cut_segment(live, e)
                if seg is not None:
                    if owner is not None:
                        owner.post(seg)
                    self.bus.publish(sid, seg)

    def _cut_segment(self, live: LiveStream, e: Event) -> Event | None:
        rec = live.rec
        try:
            start = max(0, round(float(e["start"]) * rec.rate))
            end = round(float(e["end"]) * rec.rate)
            n = self.store.next_segment(rec.id)
            rel = f"streams/{rec.id}.segments/{n:04d}.wav"
            frames = segments.cut(live.archive.path, start, end,
                                  self.settings.data_dir / rel)
        except (OSError, StorageError, ValueError, TypeError) as exc:
            log.warning("stream %s: cannot cut segment: %s", rec.id, exc)
            return {"type": "error", "code": "segment_failed", "stream": rec.id,
                    "t": e.get("t"), "message": f"cannot save the speech segment: {exc}"}
        seg = SegmentRecord(rec.id, n, start, start + frames, rec.rate, rel, time.time())
        self.store.add_segment(seg)
        return {"type": "segment", "stream": rec.id, "t": e.get("t"), **seg.public()}

    # -- audio --------------------------------------------------------------------------
    def add_audio(self, live: LiveStream, data: bytes, frames: int) -> bool:
        """Queue whole frames (or one Opus packet); True when a flush (write + ack) is due.

        Raises :class:`ProtocolError` (``bad_opus``) for a packet libopus cannot decode.
        """
        if live.decoder is not None:
            pcm = live.decoder.decode(data)
            data, frames = f32_to_s16(pcm).samples.tobytes(), len(pcm)
            if not frames:
                return False
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
        data, live.pending = live.pending, bytearray()  # views of `data` stay valid
        live.pending_frames = 0
        nbytes = len(data)
        first = live.archive.frames
        result = live.archive.append(data)
        pipeline = live.pipeline
        pcm_listeners = self.bus.wants_audio(live.id, opus=False)
        opus_listeners = self.bus.wants_audio(live.id, opus=True)
        if pipeline is not None or pcm_listeners or opus_listeners:
            spec = live.spec
            samples = decode(data, spec.format, spec.channels)
            if spec.format == "f32" and (result.non_finite or result.clipped):
                samples = sanitize_f32(samples).samples
            if pipeline is not None:
                pipeline.feed(samples, first)
            if pcm_listeners:
                self.bus.publish_audio(AudioItem(live.id, first, spec.rate, samples,
                                                 channels=spec.channels))
            if opus_listeners:
                self._relay_opus(live, samples, first)
        self.metrics.frames_in.inc(frames)
        self.metrics.bytes_in.inc(nbytes)
        if result.non_finite:
            live.non_finite += result.non_finite
            self.metrics.samples_fixed.labels("non_finite").inc(result.non_finite)
        if result.clipped:
            live.clipped += result.clipped
            self.metrics.samples_fixed.labels("clipped").inc(result.clipped)
        return frames

    def _relay_opus(self, live: LiveStream, samples: Any, first: int) -> None:
        """Encode once per stream for every Opus listener (started when the first asks)."""
        from earshot.codec.opus import OPUS_RATES, OpusEncoder, packet_samples

        spec = live.spec
        if spec.rate not in OPUS_RATES or spec.channels > 2:
            return  # documented: Opus relay needs an Opus rate; PCM listeners still work
        if live.relay is None or live.relay[1] != first:
            enc = OpusEncoder(spec.rate, spec.channels, bitrate=32000)
            live.relay = [enc, first, first - enc.pre_skip]
        enc, _, pos = live.relay
        packets = []
        for p in enc.encode(samples):
            n = packet_samples(p, spec.rate)
            packets.append((pos, n, p))
            pos += n
        live.relay[1] = first + len(samples)
        live.relay[2] = pos
        if packets:
            self.bus.publish_audio(AudioItem(live.id, packets[0][0], spec.rate, None,
                                             tuple(packets), spec.channels, enc.pre_skip))

    async def flush(self, live: LiveStream) -> None:
        """Write pending audio, then acknowledge everything durably written.

        Without ``--fsync`` this never suspends (one ``os.write``, then the ack is queued),
        so it needs no lock: nothing else can run on the loop in between.
        """
        if not self.settings.fsync:
            self._write_pending(live)
            self._ack(live, live.newest)
            return
        async with live.lock:
            newest = live.newest
            self._write_pending(live)
            if not live.archive.writer.closed:
                await asyncio.to_thread(live.archive.sync, True)
            self._ack(live, newest)

    def _ack(self, live: LiveStream, newest: float) -> None:
        offset = live.archive.frames
        owner = live.owner
        if offset <= live.acked or owner is None:
            return
        live.acked = offset
        self.metrics.acks.inc()
        self.metrics.ack_latency.observe(self.clock() - newest)
        for m in self._fix_warnings(live):
            owner.post(m)
        owner.post_text(f'{{"type":"ack","offset":{offset}}}')

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
    async def detach(self, live: LiveStream, owner: Owner, *, stopped: bool,
                     length: int | None = None) -> int:
        """The owner is done with the stream: stop it cleanly or leave it resumable.

        On a clean stop the processors get up to ``drain_timeout`` to finish (their last
        events still reach the sender) before the archive is finalized. After a drop the
        archive is closed at once and the processors finish in the background, so a resume
        is never kept waiting by a slow processor.
        """
        if live.owner is not owner or live.detaching is not None:
            return live.offset  # superseded by a resume: the stream lives on
        live.detaching = asyncio.Event()
        try:
            return await self._detach(live, stopped=stopped, length=length)
        finally:
            live.detaching.set()

    async def _detach(self, live: LiveStream, *, stopped: bool, length: int | None) -> int:
        async with live.lock:
            self._write_pending(live)
            if stopped and length is not None:
                self._trim_tail(live, length)
        finished = stopped or live.compat
        pipeline, live.pipeline = live.pipeline, None
        if pipeline is not None:
            if finished:
                late = await pipeline.close(self.settings.drain_timeout)
                if late:
                    self.emit(live, [{
                        "type": "warning", "code": "processor_timeout",
                        "t": live.offset / live.rec.rate,
                        "message": f"{', '.join(late)} did not finish within "
                                   f"{self.settings.drain_timeout:g} s of the stop; "
                                   "their last events are lost"}])
            else:
                task = asyncio.create_task(pipeline.close(self.settings.drain_timeout))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        async with live.lock:
            live.owner = None
            archive = live.archive
            archive.sync(self.settings.fsync)
            archive.close()
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

    def _trim_tail(self, live: LiveStream, length: int) -> None:
        """Cut an encoder's end padding (``stop`` with ``length``); at most 200 ms."""
        extra = live.archive.frames - length
        if 0 < extra <= live.rec.rate // 5:
            live.archive.writer.truncate(length)
        elif extra > 0:
            self.emit(live, [{"type": "warning", "code": "length_ignored",
                              "t": live.offset / live.rec.rate,
                              "message": f"stop asked to cut {extra} frames; only an "
                                         "encoder's padding (at most 200 ms) is cut"}])

    async def shutdown(self) -> None:
        for live in list(self.live.values()):
            owner = live.owner
            if owner is not None:
                with contextlib.suppress(Exception):
                    await owner.kick("shutting_down", "the server is shutting down; resume later")
                await self.detach(live, owner, stopped=False)
        if self._background:
            await asyncio.wait(self._background, timeout=self.settings.drain_timeout)

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
        seg_dir = self.streams_dir / f"{rec.id}.segments"
        if seg_dir.is_dir():
            shutil.rmtree(seg_dir)
        for p in self.streams_dir.glob(f"{rec.id}.*"):
            p.unlink(missing_ok=True)
        self.store.delete(stream_id)


def _decoder(spec: StreamSpec, pre_skip: int) -> Any:
    """An Opus decoder for opus streams (None for PCM)."""
    if spec.format != "opus":
        return None
    from earshot.codec.opus import OpusDecoder

    return OpusDecoder(spec.rate, spec.channels, pre_skip=pre_skip)


def _resume_skip(spec: StreamSpec, start: Start, held: int) -> int:
    """Opus resume: the client resends packets from ``start.offset`` (a packet boundary at
    or before ``held``); a fresh decoder drops the ``held - offset`` samples already held."""
    if spec.format != "opus" or start.offset is None:
        return 0
    if start.offset > held:
        raise ProtocolError("gap", f"the server holds {held} frames but the client would "
                                   f"continue at {start.offset}")
    return held - start.offset
