"""Run a processor over a finished stream's archive, as if it were live again.

``POST /api/streams/{id}/replay?processor=vad`` (and ``earshot replay ID --processor vad``).
The archive is read block by block and fed through the same :class:`StreamPipeline` the
live path uses, as fast as the processor goes; its events go through the event rules
(:meth:`earshot.server.events.EventRouter.replayed`): published to subscribers (marked
``"replay": true``), final transcripts stored, and speech segments cut — except those the
stream already has with the same frames (a replay of the processor that ran live finds the
same segments and stores none twice).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import soundfile as sf

from earshot.errors import ProcessorError, StorageError
from earshot.processors.base import Event, StreamInfo
from earshot.processors.runner import StreamPipeline
from earshot.storage import parts

if TYPE_CHECKING:
    from earshot.server.streams.hub import Hub

BLOCK_S = 1.0


async def replay(hub: Hub, stream_id: str, processor: str) -> dict[str, Any]:
    rec = hub.store.get(stream_id)
    if hub.is_live(stream_id) or rec.state == "live":
        raise StorageError(f"stream {stream_id} is live; replay runs on finished streams")
    specs, problems = hub.registry.for_start((processor,))
    if problems or not specs:
        raise ProcessorError("; ".join(problems) or f"no processor {processor!r}")
    path = hub.path_of(rec)
    events: list[Event] = []
    info = StreamInfo(rec.id, rec.rate, rec.channels, rec.name)
    pipeline = StreamPipeline(info, [specs[0].make()], events.extend, max_lag=1e9)
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
    except (OSError, RuntimeError, StorageError) as exc:  # soundfile: RuntimeError subclasses
        await pipeline.close(0.0)
        raise StorageError(f"cannot read the archive of stream {rec.id}: {exc}") from None
    await pipeline.close(None)
    segments = await hub.router.replayed(rec, path, events)
    return {"stream": rec.id, "processor": processor, "events": [*events, *segments],
            "segments": segments}
