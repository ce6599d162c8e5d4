"""Where a byte becomes a sample: the batch path of every live stream on a gateway.

A synchronous core, no asyncio, time passed in. Audio comes in as whole frames in the
stream's wire format (:meth:`BatchPath.add`: one ``list.append`` per message; an Opus
packet is decoded on arrival); once per ack interval (or when a trickling stream's oldest
audio has waited that long, :meth:`BatchPath.due`) the batch is written to the archive with
one ``os.write`` (:meth:`BatchPath.write`) and handed on, as float32 samples, to the
stream's processors, onto the audio log (Redis bus) and to relay listeners (PCM and Opus);
then everything written is acknowledged (:meth:`BatchPath.ack`). What the hot path counts
goes into the metrics once a tick (:meth:`BatchPath.take_tally`).

A batch costs the same fixed work whatever its length (the write, the conversion, the ack
and their syscalls), and short batches only matter to someone receiving the stream live.
So a *quiet* stream, whose last batch nobody received (no processor ran on it: none, or
only on-demand ones nobody watches; no relay listener; no shared log), is batched as long
as the cadence ever allows (``--ack-interval-max``); the next batch after anyone starts
receiving it is short again (:meth:`BatchPath.write` decides, batch by batch).

The hub (:mod:`earshot.server.streams.hub`) owns the registry and the life cycle and calls
this core; with ``--fsync`` it puts the disk sync between :meth:`write` and :meth:`ack`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from earshot.audio import StreamSpec, decode, sanitize_f32
from earshot.cluster.bus import AudioItem
from earshot.cluster.bus.base import Bus, LogAudio
from earshot.errors import MissingDependency, ProtocolError, StorageFull
from earshot.server.metrics import Metrics
from earshot.server.streams.deadlines import Deadlines
from earshot.server.streams.live import LiveStream
from earshot.server.streams.relay import OpusRelay
from earshot.server.streams.space import Space, is_no_space
from earshot.server.streams.writer import StreamWriter, Written
from earshot.storage.archive import Archive
from earshot.wire.codes import Code
from earshot.wire.ingest import Start

log = logging.getLogger("earshot.batch")

__all__ = ["BatchPath", "Tally", "decoder_for", "resume_skip"]


@dataclass(slots=True)
class Tally:
    """What the hot path counted since the last tick."""

    frames: int = 0
    bytes: int = 0
    acks: int = 0
    latency: float = 0.0  # sum of the acks' latencies


class BatchPath:
    """Moves every live stream's audio from the wire to the archive, the acks, the
    processors, the log and the listeners."""

    def __init__(self, bus: Bus, metrics: Metrics, space: Space, *, ack_interval: float,
                 header_interval: float, quiet_interval: float | None = None) -> None:
        self.bus = bus
        self.metrics = metrics
        self.space = space
        self.ack_interval = ack_interval  # the cadence's current interval (hub: set_interval)
        # a quiet stream's batches (nobody receives them live): the cadence's longest
        # (none given: never longer than the cadence's own)
        self.quiet_interval = quiet_interval or 0.0
        self.header_interval = header_interval
        # a batch's deadline (its stream, its number): one entry per batch, dropped once
        # the batch is gone (flushed by size), so the heap holds about one per live stream
        self._flushes: Deadlines[tuple[LiveStream, int]] = Deadlines()
        self._syncs: Deadlines[LiveStream] = Deadlines()  # header syncs, every stream
        self._tally = Tally()
        self._relay_warned = False

    # -- streams coming and going -----------------------------------------------------------
    def writer(self, archive: Archive, spec: StreamSpec, pre_skip: int,
               now: float) -> StreamWriter:
        """The writer of a stream opened (or reopened) now."""
        return StreamWriter(archive, ack_interval=self.ack_interval,
                            header_interval=self.header_interval, now=now,
                            decoder=decoder_for(spec, pre_skip))

    def attach(self, live: LiveStream, now: float) -> None:
        """A stream is live here from now: its archive header is synced periodically."""
        self._syncs.push(now + self.header_interval, live)

    def set_interval(self, interval: float, streams: Iterable[LiveStream]) -> None:
        """Batches are ``interval`` long from now on (the gateway's ack cadence)."""
        self.ack_interval = interval
        for live in streams:
            live.writer.set_interval(self._interval(live.quiet))

    def _interval(self, quiet: bool) -> float:
        return max(self.quiet_interval, self.ack_interval) if quiet else self.ack_interval

    # -- the hot path -------------------------------------------------------------------------
    def add(self, live: LiveStream, data: bytes, frames: int, now: float) -> bool:
        """Queue whole frames (or one Opus packet); True when a flush (write + ack) is due.

        Raises :class:`ProtocolError` (``bad_opus``) for a packet libopus cannot decode.
        """
        w = live.writer
        new = not w.pending_frames  # a new batch: flushed by size, or by its deadline
        due = w.add(data, frames, now)
        if new and w.pending_frames:
            self._flushes.push(w.due_at, (live, w.batch))
        return due

    def write(self, live: LiveStream) -> Written | None:
        """Write what is pending (synchronously) and hand the batch on: onto the log, to
        the processors, to relay listeners. A full disk raises :class:`StorageFull` (the
        pending audio is kept: the client resends what was not acknowledged)."""
        try:
            w = live.writer.write()
        except OSError as exc:
            if not is_no_space(exc):
                raise
            self.space.write_failed(f"stream {live.id}")
            raise StorageFull(f"the server's disk is full; {live.offset} frames of stream "
                              f"{live.id} are kept, resume later") from None
        if w is None:
            return None
        bus = self.bus
        rec = live.rec
        if bus.remote:
            bus.append(LogAudio(live.id, w.first, w.frames, rec.rate, rec.channels,
                                live.archive.sample_format, bytes(w.result.written),
                                ",".join(live.processors)))
        pipeline = live.pipeline
        pcm_listeners = bus.wants_audio(live.id, opus=False)
        opus_listeners = bus.wants_audio(live.id, opus=True)
        if pipeline is not None or pcm_listeners or opus_listeners:
            spec = live.spec
            samples = decode(w.data, spec.sample_format, spec.channels)
            if spec.format == "f32" and (w.result.non_finite or w.result.clipped):
                samples = sanitize_f32(samples).samples
            first, clean = w.first, None  # listeners and chosen processors get it filtered
            if live.cleanup is not None and (pcm_listeners or opus_listeners or (
                    pipeline is not None and pipeline.filtered)):
                clean = live.cleanup.feed(samples, w.first)
            if pipeline is not None:
                pipeline.feed(samples, w.first, clean)
            if clean is not None:
                samples, first = clean
            self._relay(live, samples, first, pcm_listeners, opus_listeners)
        quiet = not (bus.remote or pcm_listeners or opus_listeners) and (
            pipeline is None or pipeline.rested)
        if quiet != live.quiet:  # the next batch's length
            live.quiet = quiet
            live.writer.set_interval(self._interval(quiet))
        t = self._tally  # into the metrics once a tick (take_tally)
        t.frames += w.frames
        t.bytes += w.nbytes
        if w.result.non_finite:
            self.metrics.samples_fixed.labels("non_finite").inc(w.result.non_finite)
        if w.result.clipped:
            self.metrics.samples_fixed.labels("clipped").inc(w.result.clipped)
        return w

    def ack(self, live: LiveStream, newest: float, now: float) -> int | None:
        """Acknowledge everything written to the stream's owner (with the warnings about
        fixed samples); ``newest`` is when the newest audio of the batch arrived. Returns
        the offset acknowledged, or None if there was nothing new (or no owner)."""
        owner = live.owner
        if owner is None:
            return None
        offset = live.writer.take_ack()
        if offset is None:
            return None
        latency = now - newest
        self.metrics.ack_latency.observe(latency)
        t = self._tally
        t.acks += 1
        t.latency += latency
        for m in live.writer.warnings():
            owner.post(m)
        owner.ack(offset)
        return offset

    def flush(self, live: LiveStream, now: float) -> int | None:
        """:meth:`write`, then :meth:`ack` (without ``--fsync``: nothing waits for the disk
        in between). Raises :class:`StorageFull` like :meth:`write`."""
        newest = live.writer.newest
        self.write(live)
        return self.ack(live, newest, now)

    def tail(self, live: LiveStream) -> None:
        """The end of a connection: what the voice-cleanup filters still hold goes to the
        processors and listeners that get filtered audio."""
        if live.cleanup is None:
            return
        samples, first = live.cleanup.tail()
        if live.pipeline is not None:
            live.pipeline.feed_clean(samples, first)
        self._relay(live, samples, first, self.bus.wants_audio(live.id, opus=False),
                    self.bus.wants_audio(live.id, opus=True))

    def _relay(self, live: LiveStream, samples: np.ndarray, first: int, pcm: bool,
               opus: bool) -> None:
        """Audio (float32, from stream frame ``first``) to the PCM and Opus listeners."""
        spec, bus = live.spec, self.bus
        if pcm and len(samples):
            bus.publish_audio(AudioItem(live.id, first, spec.rate, samples,
                                        channels=spec.channels))
        if opus and len(samples) and OpusRelay.supports(spec.rate, spec.channels):
            # documented: Opus relay needs an Opus rate; PCM listeners still work
            if live.relay is None:
                live.relay = OpusRelay(live.id, spec.rate, spec.channels)
            try:
                item = live.relay.encode(samples, first)
            except MissingDependency as exc:  # (refused at subscribe: never the publisher's
                if not self._relay_warned:   # problem, whatever a listener asks for)
                    log.warning("no Opus relay: %s", exc)
                    self._relay_warned = True
                item = None
            if item is not None:
                bus.publish_audio(item)

    # -- deadlines (the hub's ticker) ---------------------------------------------------------
    def due(self, now: float, current: Mapping[str, LiveStream]) -> list[LiveStream]:
        """Streams still live (in ``current``) whose oldest pending audio waited an ack
        interval: flush them. Only streams whose deadline came are looked at."""
        out = []
        for live, batch in self._flushes.due(now):
            w = live.writer
            if w.batch != batch or not w.pending_frames or current.get(live.id) is not live:
                continue  # written already (its successor has its own deadline), or ended
            if w.flush_due(now):
                out.append(live)
            else:  # the interval grew since the batch began: not forgotten
                self._flushes.push(w.due_at, (live, batch))
        return out

    def scheduled(self) -> int:
        """Flush deadlines waiting in the schedule: about one per live stream."""
        return len(self._flushes)

    def sync_headers(self, now: float, current: Mapping[str, LiveStream]) -> None:
        """Patch the archive headers that are due (crash-safe readers see their sizes)."""
        for live in self._syncs.due(now):
            if current.get(live.id) is live:
                live.writer.sync_header_if_due(now)
                self._syncs.push(now + self.header_interval, live)

    def take_tally(self) -> Tally:
        """What the hot path counted since the last call (frames, bytes, acks, latency)."""
        t, self._tally = self._tally, Tally()
        return t


def decoder_for(spec: StreamSpec, pre_skip: int) -> Any:
    """An Opus decoder for opus streams (None for PCM)."""
    if spec.format != "opus":
        return None
    from earshot.codec.opus import OpusDecoder

    return OpusDecoder(spec.rate, spec.channels, pre_skip=pre_skip)


def resume_skip(spec: StreamSpec, start: Start, held: int) -> int:
    """Opus resume: the client resends packets from ``start.offset`` (a packet boundary at
    or before ``held``); a fresh decoder drops the ``held - offset`` samples already held."""
    if spec.format != "opus" or start.offset is None:
        return 0
    if start.offset > held:
        raise ProtocolError(Code.GAP, f"the server holds {held} frames but the client would "
                                   f"continue at {start.offset}")
    return held - start.offset
