"""Run a processor over a finished stream's archive, as if it were live again.

``POST /api/streams/{id}/replay?processor=vad`` (and ``earshot replay ID --processor vad``).
The archive is read block by block and fed through the same :class:`StreamPipeline` the
live path uses, as fast as the processor goes; its events go through the event rules
(:meth:`earshot.server.events.EventRouter.replayed`): published to subscribers (marked
``"replay": true``), final transcripts stored, and speech segments cut — except those the
stream already has with the same frames (a replay of the processor that ran live finds the
same segments and stores none twice).

A replay is a :class:`ReplayJob`: checked first (:func:`prepare`: unknown stream, live
stream, unknown processor), then run in a task of its own with its progress (frames done of
the archive's) readable while it runs (``GET /api/replays``). Its events go out as they
come, one block (a second of audio) at a time, to a consumer that may be slow: the job waits
for it, so memory stays bounded whatever the archive's length. The REST handler streams
them as NDJSON (``?format=ndjson``) and cancels the job when its client goes; the JSON form
keeps at most :data:`MAX_JSON_EVENTS` of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import soundfile as sf

from earshot.errors import ProcessorError, StorageError
from earshot.processors.base import Event, StreamInfo
from earshot.processors.registry import ProcessorSpec
from earshot.processors.runner import StreamPipeline
from earshot.storage import parts
from earshot.storage.metadata import StreamRecord
from earshot.wire.codes import Code

if TYPE_CHECKING:
    from earshot.server.streams.hub import Hub

BLOCK_S = 1.0
MAX_JSON_EVENTS = 100_000  # the JSON answer's events at most (NDJSON: no limit)
QUEUE_BLOCKS = 8  # blocks of events a slow consumer may leave waiting before the job waits
_ids = itertools.count(1)


@dataclass(eq=False)
class ReplayJob:
    """One replay: what it runs on, and how far it has got."""

    hub: Hub
    rec: StreamRecord
    processor: str
    spec: ProcessorSpec
    frames: int  # of the archive
    id: int = field(default_factory=lambda: next(_ids))
    done_frames: int = 0
    events: int = 0
    segments: list[Event] = field(default_factory=list)
    state: str = "running"  # running, done, failed, cancelled

    def progress(self) -> dict[str, Any]:
        return {"id": self.id, "stream": self.rec.id, "processor": self.processor,
                "state": self.state, "frames": self.frames, "done_frames": self.done_frames,
                "progress": round(self.done_frames / self.frames, 4) if self.frames else 1.0,
                "events": self.events}

    async def run(self, out: Callable[[list[Event]], Awaitable[None]]) -> dict[str, Any]:
        """Feed the archive through the processor; each block's events (with the segments
        they cut) go to ``out`` before the next block is read. Returns the summary."""
        hub, rec = self.hub, self.rec
        path = hub.path_of(rec)
        pending: list[Event] = []
        info = StreamInfo(rec.id, rec.rate, rec.channels, rec.name)
        pipeline = StreamPipeline(info, [self.spec.make()], pending.extend, max_lag=1e9)

        async def hand_on() -> None:
            if not pending:
                return
            batch = pending[:]
            pending.clear()
            segments = await hub.router.replayed(rec, path, batch)
            self.segments += segments
            self.events += len(batch) + len(segments)
            await out([*batch, *segments])

        closed = False
        try:
            offset = 0
            for part in parts.load(path):  # a stream rotated into parts: one after the other
                with sf.SoundFile(part.path) as f:
                    left = part.frames
                    for block in f.blocks(blocksize=int(rec.rate * BLOCK_S), dtype="float32",
                                          always_2d=True):
                        block = block[:left]
                        if not len(block):
                            break
                        pipeline.feed(block, offset)
                        offset += len(block)
                        left -= len(block)
                        await pipeline.idle()  # bounded memory: one block in flight
                        self.done_frames = offset
                        await hand_on()
            closed = True
            await pipeline.close(None)
            await hand_on()
        except (OSError, RuntimeError, StorageError) as exc:  # soundfile: RuntimeError too
            self.state = "failed"
            raise StorageError(f"cannot read the archive of stream {rec.id}: {exc}") from None
        except BaseException:
            self.state = "cancelled"
            raise
        finally:
            if not closed:
                with contextlib.suppress(Exception):
                    await pipeline.close(0.0)
        self.state = "done"
        return {"stream": rec.id, "processor": self.processor, "events": self.events,
                "segments": self.segments}


def prepare(hub: Hub, stream_id: str, processor: str) -> ReplayJob:
    """A replay of ``processor`` over a finished stream, checked; raises
    :class:`StorageError` (live) or :class:`ProcessorError` (not offered, bad options)."""
    rec = hub.store.get(stream_id)
    if hub.is_live(stream_id) or rec.state == "live":
        raise StorageError(f"stream {stream_id} is live; replay runs on finished streams")
    specs, problems = hub.registry.for_start((processor,))
    if problems or not specs:
        raise ProcessorError("; ".join(problems) or f"no processor {processor!r}")
    return ReplayJob(hub, rec, processor, specs[0], rec.frames)


class Replays:
    """The replays running on this gateway (for ``GET /api/replays``)."""

    def __init__(self) -> None:
        self.running: dict[int, ReplayJob] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=20)  # the last ones to end

    def list(self) -> list[dict[str, Any]]:
        return [job.progress() for job in self.running.values()]

    def _ended(self, job: ReplayJob) -> None:
        if self.running.pop(job.id, None) is not None:
            if job.state == "running":  # (ended before its task started)
                job.state = "cancelled"
            self.recent.appendleft(job.progress())

    async def collect(self, job: ReplayJob) -> dict[str, Any]:
        """The JSON answer: the summary with at most :data:`MAX_JSON_EVENTS` events."""
        events: list[Event] = []

        async def keep(batch: list[Event]) -> None:
            events.extend(batch[:MAX_JSON_EVENTS - len(events)])

        self.running[job.id] = job
        try:
            summary = await job.run(keep)
        finally:
            self._ended(job)
        return {**summary, "events": events, "total_events": job.events,
                "truncated": job.events > len(events)}

    async def ndjson(self, job: ReplayJob,
                     gone: Callable[[], Awaitable[bool]] | None = None
                     ) -> AsyncIterator[bytes]:
        """The job's output as NDJSON lines: ``replay_progress`` after each block that
        moved it on by a percent or more, every event, then ``replay_done`` (or
        ``error``). The job runs in its own task; closing this iterator, or ``gone()``
        saying the client went (asked before each line batch: a server may take writes
        to a closed connection without a word), cancels it."""
        queue: asyncio.Queue[list[Event] | None] = asyncio.Queue(QUEUE_BLOCKS)

        async def put(batch: list[Event]) -> None:
            await queue.put(batch)

        async def work() -> dict[str, Any]:
            try:
                return await job.run(put)
            finally:
                await queue.put(None)

        self.running[job.id] = job
        task = asyncio.create_task(work())
        shown = -1.0
        try:
            while (batch := await queue.get()) is not None:
                if gone is not None and await gone():
                    return
                lines = [orjson.dumps(e) for e in batch]
                p = job.progress()
                if p["progress"] - shown >= 0.01 or p["progress"] == 1.0:
                    shown = p["progress"]
                    lines.append(orjson.dumps({"type": "replay_progress", **p}))
                yield b"\n".join(lines) + b"\n"
            try:
                summary = await task
            except (StorageError, ProcessorError) as exc:
                yield orjson.dumps({"type": "error", "code": Code.INTERNAL,
                                    "message": str(exc)}) + b"\n"
                return
            yield orjson.dumps({"type": "replay_done", **summary,
                                "progress": job.progress()}) + b"\n"
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            self._ended(job)


async def replay(hub: Hub, stream_id: str, processor: str) -> dict[str, Any]:
    """The whole replay as one answer (events capped at :data:`MAX_JSON_EVENTS`)."""
    return await Replays().collect(prepare(hub, stream_id, processor))
