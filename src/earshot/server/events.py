"""Where a stream's events go — its sender, subscribers (through the bus), storage — and
the one place the rules about them live.

**The rules** (pure, :func:`storage_work`): a final ``transcript`` is stored (idempotent by
segment); a ``speech_end`` with ``start`` and ``end`` gets its segment cut from the archive
and announced as a ``segment`` event; nothing else touches storage. The gateway's own
``stream_started``/``stream_ended`` are never sent back to a sender. Every caller applies
them through this module: the hub (events of the stream's processors in this process), the
bus (events of workers, :meth:`EventRouter.from_bus`, and the jobs of the Redis log,
:meth:`EventRouter.job`), remote WebSocket workers (:meth:`EventRouter.from_worker`),
replays (:meth:`EventRouter.replayed`), and the Redis log workers when they decide which
events become jobs (:mod:`earshot.cluster.consumer`).

**The router** (one per gateway) counts events in metrics, posts them to the sender when
this gateway holds the stream, publishes them, stores final transcripts and cuts speech
segments — on a shared bus once in the cluster (a claim in the metadata store), whichever
process made the event. It never looks into another module's state: the hub hands it a way
to find a stream's sender (``owner_of``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from earshot.cluster.bus.base import Bus
from earshot.errors import StorageError, StreamNotFound
from earshot.processors.base import Event
from earshot.server.metrics import Metrics
from earshot.server.streams.live import Owner
from earshot.storage import segments
from earshot.storage.metadata import MetadataStore, SegmentRecord, StreamRecord
from earshot.storage.parts import Part
from earshot.wire.codes import Code, metric_code

log = logging.getLogger("earshot.router")


MAX_FLOORS = 10_000  # (stream, processor) span floors remembered for remote workers
#: the events that come from the gateway itself, never forwarded back to a sender
GATEWAY_EVENTS = frozenset({"stream_started", "stream_ended"})


class Work(enum.Enum):
    """The storage work an event asks for."""

    STORE_FINAL = "store_final"  # a final transcript: stored, by (stream, segment)
    CUT_SEGMENT = "cut_segment"  # a speech_end: its span cut from the archive


def storage_work(e: Event) -> Work | None:
    """What storage work event ``e`` asks for, if any (the rule, in one place)."""
    kind = e.get("type")
    if kind == "transcript" and e.get("final"):
        return Work.STORE_FINAL
    if kind == "speech_end" and "start" in e and "end" in e:
        return Work.CUT_SEGMENT
    return None


def segment_span(e: Event, rate: int) -> tuple[int, int]:
    """The frames a ``speech_end`` names, ``[start, end)``; ValueError when they are not
    finite numbers or the span is empty."""
    start, end = float(e["start"]), float(e["end"])
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ValueError(f"segment span {e['start']!r}..{e['end']!r} is not finite")
    first, last = max(0, round(start * rate)), round(end * rate)
    if last <= first:
        raise ValueError(f"segment span {start:g}..{end:g} s is empty")
    return first, last


class EventRouter:
    def __init__(self, store: MetadataStore, bus: Bus, metrics: Metrics, data_dir: Path,
                 owner_of: Callable[[str], Owner | None],
                 on_processed: Callable[[str, str], None] | None = None) -> None:
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self.data_dir = data_dir
        self.owner_of = owner_of
        self.on_processed = on_processed
        self._cuts: dict[str, set[asyncio.Task[None]]] = {}
        #: (stream, processor) → the frame a remote worker's next speech_end starts at or after
        self._floors: dict[tuple[str, str], int] = {}
        self._last_cut: dict[str, asyncio.Task[None]] = {}  # the cuts in a thread, in order
        #: with an archive store: a stream's parts wherever they are (a segment of an
        #: archive not on this disk, e.g. a worker's speech_end handled here, is cut from them)
        self.parts_of: Callable[[StreamRecord], list[Part]] | None = None

    # -- events of a stream held here (its processors run in this process) -----------------
    def emit(self, rec: StreamRecord, archive: Path, events: list[Event], *,
             cut_later: bool = False, sender: bool = True) -> None:
        """Deliver events of a stream: to its sender (unless ``sender`` is False), to
        subscribers; store finals, cut segments (announced to both; ``cut_later``: in a
        worker thread, announced when cut)."""
        sid = rec.id
        owner = self.owner_of(sid) if sender else None
        for e in events:
            e["stream"] = sid
            self.count(e)
            if owner is not None:
                owner.post(e)
            self.bus.publish(sid, e)
            work = storage_work(e)
            if work is Work.STORE_FINAL:
                self.store_transcript(sid, e)
            elif work is Work.CUT_SEGMENT and cut_later:
                before = self._last_cut.get(sid)
                task = asyncio.create_task(self._cut_in_thread(rec, archive, e, before))
                self._last_cut[sid] = task
                self._track(sid, task)
            elif work is Work.CUT_SEGMENT:
                seg = self.cut(rec, archive, e)
                if owner is not None:
                    owner.post(seg)
                self.bus.publish(sid, seg)

    def _track(self, sid: str, task: asyncio.Task[None]) -> None:
        cuts = self._cuts.setdefault(sid, set())
        cuts.add(task)

        def done(t: asyncio.Task[None]) -> None:
            cuts.discard(t)
            if self._last_cut.get(sid) is t:
                del self._last_cut[sid]

        task.add_done_callback(done)

    async def _cut_in_thread(self, rec: StreamRecord, archive: Path, e: Event,
                             before: asyncio.Task[None] | None) -> None:
        """One cut in a worker thread, after the stream's previous one (so the segments
        are numbered and announced in order, and one stream cuts one at a time)."""
        if before is not None:
            await asyncio.wait([before])
        seg = await asyncio.to_thread(self.cut, rec, archive, e)
        owner = self.owner_of(rec.id)
        if owner is not None:
            owner.post(seg)
        self.bus.publish(rec.id, seg)

    def count(self, e: Event) -> None:
        kind = e.get("type")
        if kind == "lag":
            self.metrics.processor_lag.labels(e.get("processor", "?")).observe(e["lag"])
        elif kind == "dropped":
            self.metrics.processor_dropped.labels(e.get("processor", "?")).inc(e["seconds"])
        elif kind == "error":
            self.metrics.errors.labels(metric_code(e.get("code"))).inc()

    def store_transcript(self, sid: str, e: Event) -> None:
        """Store a final transcript; a malformed one is logged and left out."""
        try:
            self.store.add_transcript(sid, e)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("stream %s: malformed final transcript: %s", sid, exc)

    def cut(self, rec: StreamRecord, archive: Path, e: Event) -> Event:
        """Cut the segment a ``speech_end`` names from the archive; its ``segment`` event
        (or an ``error`` event saying why it could not be cut)."""
        try:
            start, end = segment_span(e, rec.rate)
            n = self.store.allocate_segment(rec.id)
            rel = f"streams/{rec.id}.segments/{n:04d}.wav"
            try:
                frames = segments.cut(archive, start, end, self.data_dir / rel)
            except (OSError, StorageError):
                if self.parts_of is None:
                    raise
                frames = segments.cut(archive, start, end, self.data_dir / rel,
                                      parts=self.parts_of(rec))
        except (OSError, StorageError, ValueError, TypeError, KeyError) as exc:
            log.warning("stream %s: cannot cut segment: %s", rec.id, exc)
            return {"type": "error", "code": Code.SEGMENT_FAILED, "stream": rec.id,
                    "t": e.get("t"), "message": f"cannot save the speech segment: {exc}"}
        seg = SegmentRecord(rec.id, n, start, start + frames, rec.rate, rel, time.time())
        self.store.add_segment(seg)
        return {"type": "segment", "stream": rec.id, "t": e.get("t"), **seg.public()}

    # -- events from the bus (workers on Redis, other gateways) -----------------------------
    def from_bus(self, sid: str, events: list[Event]) -> None:
        """To this stream's sender, if it is connected here; the segments and final
        transcripts of streams held here are cut and stored here, as they arrive."""
        owner = self.owner_of(sid)
        if owner is None:
            return
        for e in events:
            kind = e.get("type")
            if kind in GATEWAY_EVENTS:
                continue
            if kind == "processed":
                if self.on_processed is not None:
                    self.on_processed(sid, str(e.get("processor")))
                continue
            self.count(e)
            owner.post(e)
            work = storage_work(e)
            if work is Work.STORE_FINAL:
                # stored before the sender can hear `stopped` (the job on the bus stores it
                # again, an upsert by segment, when no gateway holds the stream)
                self.store_transcript(sid, e)
            elif work is Work.CUT_SEGMENT:
                task = asyncio.create_task(self.cut_once(sid, e))
                cuts = self._cuts.setdefault(sid, set())
                cuts.add(task)
                task.add_done_callback(cuts.discard)

    async def settle(self, sid: str, timeout: float) -> None:
        """Wait for the segment cuts of a stream under way (before it is finalized)."""
        for key in [k for k in self._floors if k[0] == sid]:
            del self._floors[key]
        cuts = self._cuts.pop(sid, set())
        if cuts:
            await asyncio.wait(cuts, timeout=timeout)

    async def job(self, sid: str, e: Event) -> None:
        """A job from the bus, once per event on one gateway: store a final transcript,
        or cut a segment no gateway holding the stream cut."""
        work = storage_work(e)
        if work is Work.STORE_FINAL:
            self.store_transcript(sid, e)
        elif work is Work.CUT_SEGMENT:
            await self.cut_once(sid, e)

    async def cut_once(self, sid: str, e: Event) -> None:
        """Cut the segment of a worker's ``speech_end``, once in the cluster: the event's
        identity is claimed in the metadata store first."""
        if not self.store.claim_event(sid, f"segment:{e.get('processor')}:{e['end']}"):
            return  # cut already
        try:
            rec = self.store.get(sid)
        except StreamNotFound:
            return
        seg = self.cut(rec, self.data_dir / rec.path, e)
        owner = self.owner_of(sid)
        if owner is not None:
            owner.post(seg)
        self.bus.publish(sid, seg)

    # -- events of remote WebSocket workers (``earshot worker --url``) ---------------------
    def from_worker(self, sid: str, events: list[Event], held: StreamRecord | None,
                    archive: Path | None, received: int = 0) -> tuple[str, str] | None:
        """Fan out a remote worker's events like local ones (its segments cut in a worker
        thread); ``received``: the frames of the stream received so far (held elsewhere:
        the frames the worker was sent). None when done,
        else (code, message) and nothing delivered: an unknown stream, or a ``speech_end``
        span outside the audio received or not after the processor's previous one."""
        if held is not None and archive is not None:
            problem = self.check_spans(held, received, events)
            if problem is not None:
                return Code.BAD_EVENT, problem
            self.emit(held, archive, events, cut_later=True)
            return None
        try:
            rec = self.store.get(sid)
        except StreamNotFound:
            return Code.UNKNOWN_STREAM, f"no stream {sid!r}"
        problem = self.check_spans(rec, received, events)
        if problem is not None:
            return Code.BAD_EVENT, problem
        for e in events:  # held by another gateway (it gets them through the bus), or a
            e["stream"] = sid  # worker's last events after the stream ended
            self.bus.publish(sid, e)
        return None

    def check_spans(self, rec: StreamRecord, received: int, events: list[Event]) -> str | None:
        """The ``speech_end`` spans of a remote worker's events: each within the ``received``
        frames and starting at or after the end of the same processor's previous one (so
        no span is cut twice); the floors move only when every span is good."""
        floors: dict[tuple[str, str], int] = {}
        for e in events:
            if storage_work(e) is not Work.CUT_SEGMENT:
                continue
            try:
                first, last = segment_span(e, rec.rate)
            except (ValueError, TypeError) as exc:
                return f"speech_end: {exc}"
            key = (rec.id, str(e.get("processor")))
            floor = floors.get(key, self._floors.get(key, 0))
            if last > received:
                return (f"speech_end span ends at {last / rec.rate:g} s, after the "
                        f"{received / rec.rate:g} s of audio received")
            if first < floor:
                return (f"speech_end span starts at {first / rec.rate:g} s, before the end "
                        f"of the previous one ({floor / rec.rate:g} s)")
            floors[key] = last
        self._floors.update(floors)
        while len(self._floors) > MAX_FLOORS:  # (streams held elsewhere are never settled here)
            self._floors.pop(next(iter(self._floors)))
        return None

    # -- a replay over a finished stream's archive (server/streams/replay.py) --------------
    async def replayed(self, rec: StreamRecord, archive: Path,
                       events: list[Event]) -> list[Event]:
        """Publish a replay's events (marked ``"replay": true``), store its finals and cut
        its segments — except those the stream already has with the same frames (a replay
        of the processor that ran live stores none twice). Cuts run in a thread. Returns
        the segment events."""
        existing = {(s.start, s.end): s for s in self.store.segments(rec.id)}
        out = []
        for e in events:
            e["stream"], e["replay"] = rec.id, True
            self.bus.publish(rec.id, e)
            work = storage_work(e)
            if work is Work.STORE_FINAL:
                self.store_transcript(rec.id, e)
            elif work is Work.CUT_SEGMENT:
                try:
                    known = existing.get(segment_span(e, rec.rate))
                except (ValueError, TypeError, KeyError):
                    known = None
                seg = ({"type": "segment", "stream": rec.id, "t": e.get("t"),
                        **known.public()} if known is not None
                       else await asyncio.to_thread(self.cut, rec, archive, e))
                seg["replay"] = True
                self.bus.publish(rec.id, seg)
                out.append(seg)
        return out
