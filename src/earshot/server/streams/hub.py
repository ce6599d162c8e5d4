"""The live streams of one gateway: create, resume, feed, detach, recover.

The hub owns the registry of live streams and their life cycle. Each live stream's
archive and acknowledgements belong to its :class:`~earshot.server.streams.writer.StreamWriter`
(a core without sockets, time passed in); where its events go is the
:class:`~earshot.server.events.EventRouter`'s business; the audio itself goes to the
stream's processors (in-process bus), onto the log (Redis bus), and to relay listeners
(:class:`~earshot.server.streams.relay.OpusRelay` for Opus). Nothing outside reads the hub's dict:
REST and subscribers ask the hub's methods, which answer on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from earshot.cluster.bus import ALL
from earshot.cluster.bus.base import Bus
from earshot.config import Settings
from earshot.errors import ProtocolError, StorageError, StorageFull, StreamNotFound
from earshot.processors.base import Event
from earshot.processors.registry import Registry
from earshot.server.events import EventRouter
from earshot.server.metrics import Metrics
from earshot.server.streams.archives import Archives, archive_format
from earshot.server.streams.batch import BatchPath, decoder_for, resume_skip
from earshot.server.streams.cleanup import open_cleanup
from earshot.server.streams.lifecycle import drain, read_held
from earshot.server.streams.live import LiveStream, Owner, hash_token, new_stream_id
from earshot.server.streams.load import Load
from earshot.server.streams.processing import remote_processors, start_pipeline
from earshot.server.streams.recovery import recover, register_orphans
from earshot.server.streams.replay import Replays
from earshot.storage.archive import Archive
from earshot.storage.metadata import MetadataStore, StreamRecord
from earshot.wire.codes import Code
from earshot.wire.ingest import Start

if TYPE_CHECKING:
    from earshot.server.streams.objects import ArchiveStore

__all__ = ["Hub", "LiveStream", "Owner", "hash_token", "new_stream_id"]

log = logging.getLogger("earshot.hub")

#: the ticker's period while no stream is live here: nothing can be due then but the
#: free-space check (once a second anyway); a stream attaching wakes it at once
IDLE_TICK = 1.0


class Hub:
    def __init__(
        self,
        settings: Settings,
        store: MetadataStore,
        metrics: Metrics,
        bus: Bus,
        *,
        registry: Registry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.bus = bus
        self.registry = registry or Registry(settings.processing.processors)
        self.clock = clock
        self.live: dict[str, LiveStream] = {}
        self.router = EventRouter(store, bus, metrics, settings.server.data_dir, self.owner_of,
                                  self._processed)
        self._background: set[asyncio.Task[Any]] = set()
        self._attached = asyncio.Event()  # wakes an idle ticker
        self.replays = Replays()  # replay jobs running here (server/streams/replay.py)
        self.load = Load(settings, metrics)  # admission, free space, the ack cadence
        self.admission, self.space = self.load.admission, self.load.space
        self.archives = Archives(settings, store, bus, self.space, self._spawn)
        self.batch = BatchPath(bus, metrics, self.space, ack_interval=self.load.cadence.current,
                               header_interval=settings.archive.header_interval,
                               quiet_interval=self.load.cadence.most)
        self.refresh_gauges()

    @property
    def objects(self) -> ArchiveStore | None:
        """The archive store (``--archive-store``; server/streams/objects.py), or None."""
        return self.archives.objects

    @objects.setter
    def objects(self, store: ArchiveStore | None) -> None:
        self.archives.objects = store

    # -- what others may ask (on the event loop) ----------------------------------------
    def owner_of(self, stream_id: str) -> Owner | None:
        live = self.live.get(stream_id)
        return live.owner if live is not None else None

    def path_of(self, rec: StreamRecord) -> Path:
        return self.archives.path_of(rec)

    def archive_of(self, stream_id: str) -> Archive | None:
        """The archive a live stream here is writing (None when not live here)."""
        live = self.live.get(stream_id)
        return live.archive if live is not None else None

    def is_live(self, stream_id: str) -> bool:
        return stream_id in self.live

    def live_info(self, stream: str) -> list[dict[str, Any]]:
        """The live streams a subscriber of ``stream`` (an id or ``*``) is told about: here,
        or in the whole cluster on a shared bus (from the store)."""
        if self.bus.remote:
            recs = self.store.with_state("live")
            held = {s: lv.offset for s, lv in self.live.items()}
            return [{"stream": r.id, "name": r.name, "rate": r.rate, "channels": r.channels,
                     "offset": held.get(r.id, r.frames)} for r in recs
                    if stream in (ALL, r.id)]
        lives = self.live.values() if stream == ALL else [self.live[stream]] \
            if stream in self.live else []
        return [{"stream": lv.id, "name": lv.rec.name, "rate": lv.rec.rate,
                 "channels": lv.rec.channels, "offset": lv.offset} for lv in lives]

    def record(self, stream_id: str) -> StreamRecord:
        """A stream's record, with the frames archived so far if it is live here."""
        live = self.live.get(stream_id)
        if live is not None:
            live.rec.frames = live.archive.frames
            return live.rec
        return self.store.get(stream_id)

    def sync_archive(self, stream_id: str) -> None:
        """Make a live archive's header match what is on disk (before serving the file)."""
        live = self.live.get(stream_id)
        if live is not None:
            live.archive.sync()

    def from_worker(self, stream_id: str, events: list[Event],
                    delivered: int = 0) -> tuple[str, str] | None:
        """Events a remote WebSocket worker sends back (``delivered``: the frames of the
        stream's audio it was sent, the bound of its spans for a stream held elsewhere);
        (code, message) when refused."""
        live = self.live.get(stream_id)
        return self.router.from_worker(stream_id, events, live.rec if live else None,
                                       live.archive.path if live else None,
                                       live.offset if live else delivered)

    # -- load (server/streams/load.py) -------------------------------------------------------
    @property
    def idle(self) -> bool:
        """No stream is live here (the ticker and the loop-lag probe wake less often)."""
        return not self.live

    def observe_loop_lag(self, lag: float, now: float) -> None:
        """The loop-lag probe's report (every 0.1 s, once a second while idle); also
        refreshes the gauges."""
        self.load.observe_loop_lag(lag, self.live, now)

    def refresh_gauges(self) -> None:
        """Bring the load gauges (admission, loop, free space) up to date now: at start, and
        for a ``/metrics`` scrape, which may come while an idle gateway's probe and ticker
        sleep."""
        now = self.clock()
        self.load.check_space(now)
        self.load.show(self.live, now)

    def admission_report(self) -> dict[str, Any]:
        """For /healthz: whether new publishers get in now, and why not."""
        return self.load.report(self.live, self.clock())

    def check_space(self) -> str:
        """The data directory's free-space state (measured at most once a second)."""
        return self.load.check_space(self.clock())

    # -- recovery (server/streams/recovery.py) -----------------------------------------------
    async def recover(self) -> list[str]:
        """Repair every archive a crash left open; those streams become resumable. On a
        shared bus, streams another live gateway holds are left alone. With one gateway on
        its own directory, archives whose database row is missing are registered again
        (server/streams/recovery.py)."""
        repaired = await recover(self.store, self.bus, self.settings.server.data_dir)
        if not self.bus.remote and self.settings.server.processes == 1:
            repaired += await asyncio.to_thread(register_orphans, self.store,
                                                self.settings.server.data_dir)
        return repaired

    # -- start / resume -----------------------------------------------------------------
    async def open(self, start: Start, owner: Owner) -> tuple[LiveStream, str, list[Event]]:
        """Create or resume the stream a start asks for.

        Returns it, its resume token, and warnings for the client (e.g. processors refused).
        """
        refused = self.load.refusal(resume=start.resume is not None, held=self.live,
                                    now=self.clock())
        if refused is not None:
            raise refused
        if start.processors is not None:  # the client's choices, checked before anything
            start = dataclasses.replace(start, processors=self.registry.check_start(
                start.processors, self.settings.processing.max_processors))
        if start.spec.format == "opus":  # refused now, not when the first packet comes
            from earshot.codec.opus import decoder_missing

            missing = decoder_missing()
            if missing is not None:
                raise ProtocolError(Code.UNSUPPORTED_FORMAT, "opus is not available on this "
                                    f"server: {missing}; send s16 or f32")
        if start.resume is not None:
            live, token = await self._resume(start, owner)
            self.admission.resumed(live.id)
        else:
            live, token = self._create(start, owner)
        # All or nothing: past this point any failure rolls the stream back, so no stream
        # is left live without a connection (nor its file, slot or lease held).
        try:
            warnings: list[Event] = []
            if live.cleanup is None:
                live.cleanup, warnings = open_cleanup(self.settings, start.filters,
                                                      live.rec.rate, live.rec.channels,
                                                      live.offset)
            if self.bus.remote:
                if not live.processors:
                    warnings += self._remote_processors(live, start)
            elif live.pipeline is None:
                warnings += self._start_pipeline(live, start)
            await self.bus.acquire(live.id)
        except BaseException:
            await self._roll_back(live, owner, created=start.resume is None)
            raise
        return live, token, warnings

    async def _roll_back(self, live: LiveStream, owner: Owner, *, created: bool) -> None:
        """Undo an open that failed half-way: the pipeline closed, the archive closed, the
        stream out of the live map (its admission slot free) and the lease given back. A
        stream created by this open is removed (nothing of it was acknowledged); a resumed
        one is left ``interrupted`` (resumable)."""
        if live.owner is not owner or live.detaching is not None:
            return
        live.owner = None
        pipeline, live.pipeline = live.pipeline, None
        if pipeline is not None:
            with contextlib.suppress(Exception):
                await pipeline.close(0.0)
        self.live.pop(live.id, None)
        self.metrics.streams_active.set(len(self.live))
        with contextlib.suppress(Exception):
            live.archive.close()
        rec = live.rec
        try:
            if created:
                self.archives.remove_new(rec)
            else:
                rec.state, rec.frames = "interrupted", live.archive.frames
                self.store.update(rec.id, state="interrupted", frames=rec.frames)
        except Exception:
            log.exception("rolling back stream %s", rec.id)
        with contextlib.suppress(Exception):
            await self.bus.release(rec.id)
        self.bus.publish(rec.id, {"type": "stream_ended", "stream": rec.id,
                                  "t": rec.frames / rec.rate, "state": "failed",
                                  "frames": rec.frames})

    def _create(self, start: Start, owner: Owner) -> tuple[LiveStream, str]:
        spec = start.spec
        fmt = archive_format(start.archive or self.settings.archive.format)
        sid = new_stream_id()
        token = secrets.token_urlsafe(18)
        rel = f"streams/{sid}.wav"
        archive = self.archives.create(rel, spec, fmt)
        rec = StreamRecord(
            id=sid, name=start.name, created=time.time(), format=spec.format,
            archive_format=fmt, rate=spec.rate, channels=spec.channels, path=rel,
            token_hash=hash_token(token), client=dict(start.client),
        )
        self.archives.register(rec, archive)
        writer = self.batch.writer(archive, spec, start.pre_skip, self.clock())
        live = LiveStream(rec, writer, start.compat, owner)
        self._attach(live, resumed=False)
        return live, token

    async def _resume(self, start: Start, owner: Owner) -> tuple[LiveStream, str]:
        sid, token = start.resume or "", start.resume_token or ""
        try:
            rec = self.store.get(sid)
        except StreamNotFound:
            raise ProtocolError(Code.UNKNOWN_STREAM, f"no stream {sid!r} to resume") from None
        if not hmac.compare_digest(rec.token_hash, hash_token(token)):
            raise ProtocolError(Code.BAD_RESUME_TOKEN, "wrong resume_token for this stream")
        if rec.state == "finished":  # with its count: the client checks it is its own
            raise ProtocolError(Code.STREAM_FINISHED, f"stream {sid} has finished with "
                                f"{rec.frames} frames; start a new one", frames=rec.frames)
        spec = start.spec
        if (spec.rate, spec.channels) != (rec.rate, rec.channels):
            raise ProtocolError(
                Code.RESUME_MISMATCH,
                f"stream {sid} is {rec.rate} Hz x{rec.channels}; "
                f"resume asked for {spec.rate} Hz x{spec.channels}",
            )
        if sid not in self.live and self.bus.remote and not await self.bus.take_over(sid):
            raise ProtocolError(Code.STREAM_BUSY, f"stream {sid} is held by another gateway "
                                "that did not let go; try again")
        live = self.live.get(sid)
        if live is not None and live.detaching is not None:
            await live.detaching.wait()  # finishing a detach: resume from disk once done
            live = self.live.get(sid)
        if live is not None:
            # The old connection has not noticed it is dead yet: it loses the stream.
            old = live.owner
            async with live.lock:
                self.batch.write(live)
                live.owner = owner
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.kick(Code.SUPERSEDED, "this stream was resumed by another connection")
            # the wire format may differ after a resume
            live.writer.reformat(spec.pcm,
                                 decoder_for(spec, resume_skip(spec, start, live.offset)))
            self.metrics.streams_started.labels("resume").inc()
            self._announce(live, resumed=True)
            return live, token
        archive = await self.archives.reopen(rec, spec)
        rec.state = "live"
        rec.frames = archive.frames
        rec.format = spec.format
        self.store.update(sid, state="live", frames=archive.frames, format=spec.format)
        writer = self.batch.writer(archive, spec, resume_skip(spec, start, archive.frames),
                                   self.clock())
        live = LiveStream(rec, writer, False, owner)
        self._attach(live, resumed=True)
        return live, token

    def _attach(self, live: LiveStream, *, resumed: bool) -> None:
        self.live[live.id] = live
        self._attached.set()
        self.batch.attach(live, self.clock())
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

    # -- processors (server/streams/processing.py) ------------------------------------------
    def _start_pipeline(self, live: LiveStream, start: Start) -> list[Event]:
        return start_pipeline(self.settings, self.registry, live, start,
                              lambda events: self.emit(live, events), bus=self.bus,
                              observers=lambda events: self.emit(live, events, sender=False))

    def _remote_processors(self, live: LiveStream, start: Start) -> list[Event]:
        return remote_processors(self.registry, self.bus, live, start)

    def emit(self, live: LiveStream, events: list[Event], *, sender: bool = True) -> None:
        """Events of a stream held here (its processors, the hub's own warnings); segments
        are cut in a worker thread (the detach waits for them). ``sender=False``: not to
        the stream's own connection (an on-demand processor it did not name)."""
        self.router.emit(live.rec, live.archive.path, events, cut_later=True, sender=sender)

    # -- the bus's callbacks ------------------------------------------------------------------
    def on_bus_events(self, sid: str, events: list[Event]) -> None:
        self.router.from_bus(sid, events)

    async def on_bus_job(self, sid: str, e: Event) -> None:
        await self.router.job(sid, e)

    def _processed(self, sid: str, processor: str) -> None:
        live = self.live.get(sid)
        if live is not None:
            live.done.add(processor)
            live.done_changed.set()

    async def on_bus_release(self, sid: str) -> None:
        """Another gateway is resuming this stream: our connection to it is stale."""
        live = self.live.get(sid)
        if live is None or live.owner is None:
            return
        owner = live.owner
        with contextlib.suppress(Exception):
            await owner.kick(Code.SUPERSEDED, "this stream was resumed on another gateway")
        await self.detach(live, owner, stopped=False)

    # -- audio (server/streams/batch.py) -------------------------------------------------------
    def add_audio(self, live: LiveStream, data: bytes, frames: int) -> bool:
        """Queue whole frames (or one Opus packet); True when a flush (write + ack) is due.

        Raises :class:`ProtocolError` (``bad_opus``) for a packet libopus cannot decode.
        """
        return self.batch.add(live, data, frames, self.clock())

    def flush_now(self, live: LiveStream) -> None:
        """:meth:`flush` from a synchronous hot path (the direct WebSocket lane), for a
        server without ``--fsync`` (where :meth:`_flush` never suspends anyway). A full
        disk kicks the owner in a task, as :meth:`flush` would."""
        assert not self.settings.archive.fsync
        try:
            self.batch.flush(live, self.clock())
        except StorageFull as exc:
            owner = live.owner
            if owner is not None:
                self._spawn(owner.kick(Code.STORAGE_FULL, str(exc)))

    def _spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background; shutdown waits for what is still running."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def flush(self, live: LiveStream) -> bool:
        """Write pending audio, then acknowledge everything durably written. A full disk
        ends the connection with ``storage_full`` (1013); the stream stays resumable.
        False when the write failed so."""
        try:
            await self._flush(live)
        except StorageFull as exc:
            owner = live.owner
            if owner is not None:
                with contextlib.suppress(Exception):
                    await owner.kick(Code.STORAGE_FULL, str(exc))
            return False
        return True

    async def _flush(self, live: LiveStream) -> None:
        """Write pending audio, then acknowledge everything durably written.

        Without ``--fsync`` this never suspends (one ``os.write``, then the ack is queued),
        so it needs no lock: nothing else can run on the loop in between.
        """
        if not self.settings.archive.fsync:
            self.batch.flush(live, self.clock())
            return
        async with live.lock:
            newest = live.writer.newest
            self.batch.write(live)
            if not live.archive.writer.closed:
                await asyncio.to_thread(live.archive.sync, True)
            self.batch.ack(live, newest, self.clock())

    async def tick(self) -> None:
        """Flush streams whose oldest pending audio waited an ack interval; sync headers.
        Only the streams whose deadline has come are looked at (server/streams/deadlines.py).
        Under load, batches stretch (server/streams/load.py, cadence.py)."""
        now = self.clock()
        load = self.load
        load.check_space(now)
        load.count(self.batch.take_tally(), now)
        interval = load.cadence_update(now)
        if interval is not None:
            self.batch.set_interval(interval, self.live.values())
        for live in self.batch.due(now, self.live):
            await self.flush(live)
        self.batch.sync_headers(now, self.live)

    async def finalize(self, live: LiveStream) -> bool:
        """A door's client ends the utterance being spoken now (Deepgram's ``Finalize``, a
        Realtime ``commit``, Wyoming's ``audio-stop``): the audio received is written and
        handed to the processors, then they are asked to cut
        (:meth:`~earshot.processors.runner.StreamPipeline.finalize`). True when a processor
        will answer with a ``finalized`` event (False: none runs here that can)."""
        await self.flush(live)
        pipeline = live.pipeline
        return pipeline.finalize() if pipeline is not None else False

    async def caught_up(self, live: LiveStream) -> None:
        """Write what is pending and wait until the stream's processors have processed it
        (a door feeding a file faster than real time paces itself with this, so no
        processor falls ``max_lag`` behind and skips audio)."""
        await self.flush(live)
        pipeline = live.pipeline
        if pipeline is not None:
            await pipeline.idle()

    def ingest_report(self) -> dict[str, Any]:
        """For /healthz: the current ack interval and its bounds."""
        return self.load.ingest_report()

    async def run_ticker(self) -> None:
        period = min(self.settings.ingest.ack_interval / 2, 0.05)
        while True:
            if self.live:
                await asyncio.sleep(period)
            else:  # an idle gateway wakes once a second, not twenty times
                self._attached.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._attached.wait(), IDLE_TICK)
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
            try:
                self.batch.write(live)
            except StorageFull:  # the client resends what is not written: a stop that
                stopped = False  # lost its tail must not finish the stream (resumable)
            self.batch.tail(live)
            if stopped and length is not None:
                extra = live.writer.trim_tail(length, limit=live.rec.rate // 5)
                if extra:
                    self.emit(live, [{"type": "warning", "code": Code.LENGTH_IGNORED,
                                      "t": live.offset / live.rec.rate,
                                      "message": f"stop asked to cut {extra} frames; only an "
                                                 "encoder's padding (at most 200 ms) is cut"}])
        finished = stopped or live.compat
        if self.bus.remote:
            self.bus.log_end(live.id, offset=live.offset,
                             state="finished" if finished else "interrupted",
                             processors=",".join(live.processors))
            if finished:
                await self._await_workers(live)
        pipeline, live.pipeline = live.pipeline, None
        if pipeline is not None:
            if finished:
                late = await pipeline.close(self.settings.processing.drain_timeout)
                self._late(live, late, "their last events are lost")
            else:
                self._spawn(pipeline.close(self.settings.processing.drain_timeout))
        await self.router.settle(live.id, self.settings.processing.drain_timeout)  # cuts
        async with live.lock:
            live.owner = None
            rec = live.rec
            await self.archives.finish(rec, live.archive, finished=finished)
            self.live.pop(rec.id, None)
            self.metrics.streams_active.set(len(self.live))
        self.archives.closed(rec)
        await self.bus.release(rec.id)
        self.bus.publish(rec.id, {
            "type": "stream_ended", "stream": rec.id, "t": rec.frames / rec.rate,
            "state": rec.state, "frames": rec.frames,
        })
        return rec.frames

    async def _await_workers(self, live: LiveStream) -> None:
        """A clean stop on a shared bus: wait (up to ``drain_timeout``) until every worker
        processing the stream has flushed, so its last events reach the sender first."""
        wanted = set()
        for kind in live.processors:
            if await self.bus.live_workers(kind):
                wanted.add(kind)
        deadline = self.clock() + self.settings.processing.drain_timeout
        while not wanted <= live.done and self.clock() < deadline:
            live.done_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.done_changed.wait(), deadline - self.clock())
        self._late(live, sorted(wanted - live.done), "their last events may come after it")
        await self.router.settle(live.id, self.settings.processing.drain_timeout)

    def _late(self, live: LiveStream, late: list[str], consequence: str) -> None:
        """Tell the sender which processors did not finish in time after its stop."""
        if late:
            self.emit(live, [{
                "type": "warning", "code": Code.PROCESSOR_TIMEOUT,
                "t": live.offset / live.rec.rate,
                "message": f"{', '.join(late)} did not finish within "
                           f"{self.settings.processing.drain_timeout:g} s of the stop; "
                           f"{consequence}"}])

    async def shutdown(self) -> None:
        for live in list(self.live.values()):
            owner = live.owner
            if owner is not None:
                with contextlib.suppress(Exception):
                    await owner.kick(Code.SHUTTING_DOWN,
                                     "the server is shutting down; resume later")
                await self.detach(live, owner, stopped=False)
        if self._background:
            await asyncio.wait(self._background, timeout=self.settings.processing.drain_timeout)

    async def drain(self, timeout: float = 5.0) -> list[str]:
        """A planned shutdown (SIGTERM/SIGINT): every publisher's audio written and
        acknowledged, ``shutting_down`` and close 1001, streams left resumable
        (:func:`~earshot.server.streams.lifecycle.drain`). Returns the streams held."""
        return await drain(self, timeout)

    def reserve_held(self) -> int:
        """After a planned restart: keep slots for the streams held at shutdown."""
        if self.settings.server.processes != 1 or self.bus.remote:
            return 0
        ids, left = read_held(self.settings.server.data_dir, self.admission.resume_grace)
        if ids:
            self.admission.reserve(ids, self.clock(), left)
        return len(ids)

    async def check_deletable(self, stream_id: str) -> None:
        """Refuse (:class:`StorageError`) to delete a stream live anywhere: here, by its
        stored state, or held by another gateway (its owner key on a shared bus)."""
        if stream_id in self.live:
            raise StorageError(f"stream {stream_id} is live; stop it before deleting")
        if self.store.get(stream_id).state == "live":
            raise StorageError(f"stream {stream_id} is live (on another gateway, or left "
                               "so by a crash until the next start repairs it)")
        if await self.bus.held_elsewhere(stream_id):
            raise StorageError(f"stream {stream_id} is held by another gateway")

    def delete(self, stream_id: str) -> None:
        """Delete a stream and its files; refused while it is live (here or by its stored
        state: ask :meth:`check_deletable` first for other gateways' claims)."""
        if stream_id in self.live:
            raise StorageError(f"stream {stream_id} is live; stop it before deleting")
        rec = self.store.get(stream_id)
        if rec.state == "live":
            raise StorageError(f"stream {stream_id} is live (on another gateway, or left "
                               "so by a crash until the next start repairs it)")
        self.archives.delete(rec)
