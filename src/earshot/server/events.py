"""Where a stream's events go: its sender, subscribers (through the bus), and storage.

One router per gateway. Events come from the stream's own processors (in-process bus),
from the bus (workers on Redis, other gateways), from remote WebSocket workers and from
replays. The router counts them in metrics, posts them to the sender when this gateway
holds the stream, publishes them, stores final transcripts and cuts speech segments from
the archive — on a shared bus once in the cluster (a claim on Redis), whichever process
made the event. It never looks into another module's state: the hub hands it a way to
find a stream's sender (``owner_of``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from earshot.cluster.bus.base import Bus
from earshot.errors import StorageError, StreamNotFound
from earshot.processors.base import Event
from earshot.server.metrics import Metrics
from earshot.storage import segments
from earshot.storage.metadata import MetadataStore, SegmentRecord, StreamRecord

log = logging.getLogger("earshot.router")


class Owner(Protocol):
    """The connection currently feeding a stream, as the gateway sees it."""

    def post(self, message: dict[str, Any]) -> None:
        """Queue a message for the client, in order, without waiting."""

    def ack(self, offset: int) -> None:
        """Queue the acknowledgement of everything up to ``offset`` frames (after the
        events posted before it)."""

    async def kick(self, code: str, message: str) -> None: ...


#: the events that come from the gateway itself, never forwarded back to a sender
GATEWAY_EVENTS = frozenset({"stream_started", "stream_ended"})


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

    # -- events of a stream held here (its processors run in this process) -----------------
    def emit(self, rec: StreamRecord, archive: Path, events: list[Event]) -> None:
        """Deliver events of a stream: to its sender, to subscribers; cut VAD segments."""
        sid = rec.id
        owner = self.owner_of(sid)
        for e in events:
            e["stream"] = sid
            kind = e.get("type")
            self.count(e)
            if owner is not None:
                owner.post(e)
            self.bus.publish(sid, e)
            if kind == "transcript" and e.get("final"):
                self.store_transcript(sid, e)
            if kind == "speech_end" and "start" in e and "end" in e:
                seg = self.cut(rec, archive, e)
                if owner is not None:
                    owner.post(seg)
                self.bus.publish(sid, seg)

    def count(self, e: Event) -> None:
        kind = e.get("type")
        if kind == "lag":
            self.metrics.processor_lag.labels(e.get("processor", "?")).observe(e["lag"])
        elif kind == "dropped":
            self.metrics.processor_dropped.labels(e.get("processor", "?")).inc(e["seconds"])
        elif kind == "error":
            self.metrics.errors.labels(e.get("code", "?")).inc()

    def store_transcript(self, sid: str, e: Event) -> None:
        try:
            self.store.add_transcript(sid, e)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("stream %s: malformed final transcript: %s", sid, exc)

    def cut(self, rec: StreamRecord, archive: Path, e: Event) -> Event:
        """Cut the segment a ``speech_end`` names from the archive; its event (or an error)."""
        try:
            start = max(0, round(float(e["start"]) * rec.rate))
            end = round(float(e["end"]) * rec.rate)
            n = self.store.allocate_segment(rec.id)
            rel = f"streams/{rec.id}.segments/{n:04d}.wav"
            frames = segments.cut(archive, start, end, self.data_dir / rel)
        except (OSError, StorageError, ValueError, TypeError) as exc:
            log.warning("stream %s: cannot cut segment: %s", rec.id, exc)
            return {"type": "error", "code": "segment_failed", "stream": rec.id,
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
            if kind == "transcript" and e.get("final"):
                # stored before the sender can hear `stopped` (the job on the bus stores it
                # again, an upsert by segment, when no gateway holds the stream)
                self.store_transcript(sid, e)
            elif kind == "speech_end" and "start" in e and "end" in e:
                task = asyncio.create_task(self.cut_once(sid, e))
                cuts = self._cuts.setdefault(sid, set())
                cuts.add(task)
                task.add_done_callback(cuts.discard)

    async def settle(self, sid: str, timeout: float) -> None:
        """Wait for the segment cuts of a stream under way (before it is finalized)."""
        cuts = self._cuts.pop(sid, set())
        if cuts:
            await asyncio.wait(cuts, timeout=timeout)

    async def job(self, sid: str, e: Event) -> None:
        """A job from the bus, once per event on one gateway: store a final transcript,
        or cut a segment no gateway holding the stream cut."""
        kind = e.get("type")
        if kind == "transcript" and e.get("final"):
            self.store_transcript(sid, e)
        elif kind == "speech_end" and "start" in e and "end" in e:
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
                    archive: Path | None) -> bool:
        """Fan out a remote worker's events like local ones; False for an unknown stream."""
        if held is not None and archive is not None:
            self.emit(held, archive, events)
            return True
        try:
            self.store.get(sid)
        except StreamNotFound:
            return False
        for e in events:  # a worker's last events after the stream ended: subscribers only
            e["stream"] = sid
            self.bus.publish(sid, e)
        return True
