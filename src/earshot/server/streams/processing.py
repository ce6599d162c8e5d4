"""Which processors a stream gets, and where they run.

On the in-process bus a stream's processors run in the gateway, in a
:class:`~earshot.processors.runner.StreamPipeline` fed by the batch path; on a shared bus
(Redis) workers run them, and the gateway only names them on the audio log. Either way the
client is told which processors run, and warned about the ones it asked for that cannot.
"""

from __future__ import annotations

from collections.abc import Callable

from earshot.cluster.bus.base import Bus
from earshot.config import Settings
from earshot.errors import ProcessorError
from earshot.processors.base import Event, StreamInfo
from earshot.processors.registry import Registry
from earshot.processors.runner import Audience, StreamPipeline
from earshot.server.streams.cleanup import filtered_processors
from earshot.server.streams.live import LiveStream
from earshot.wire.codes import Code
from earshot.wire.ingest import Start


def unavailable(message: str) -> Event:
    return {"type": "warning", "code": Code.PROCESSOR_UNAVAILABLE, "message": message}


def start_pipeline(settings: Settings, registry: Registry, live: LiveStream, start: Start,
                   emit: Callable[[list[Event]], None], *, bus: Bus,
                   observers: Callable[[list[Event]], None]) -> list[Event]:
    """Start the stream's processors in this process (``live.pipeline``; none when the
    start asks for none that can run). Returns warnings for the client.

    ``emit`` delivers events to the sender and everyone else; ``observers`` to everyone
    but the sender. A sender that named its processors receives all their events; one that
    left the choice to the server does not receive on-demand processors' events (``level``:
    it has its own audio), and those run only while the stream is ``bus.watched``."""
    specs, problems = registry.for_start(start.processors)
    warnings = [unavailable(p) for p in problems]
    procs = []
    for spec in specs:
        try:
            procs.append(spec.make())
        except ProcessorError as exc:
            warnings.append(unavailable(str(exc)))
    if procs:
        rec = live.rec
        live.pipeline = StreamPipeline(
            StreamInfo(rec.id, rec.rate, rec.channels, rec.name, start.language), procs,
            emit, start_offset=live.offset, max_lag=settings.processing.max_lag,
            filtered=filtered_processors(settings, live.cleanup),
            audience=Audience(
                named=frozenset(p.name for p in procs if start.processors is not None),
                watched=lambda: bus.watched(rec.id), observers=observers))
        live.processors = live.pipeline.names
    return warnings


def remote_processors(registry: Registry, bus: Bus, live: LiveStream,
                      start: Start) -> list[Event]:
    """On a shared bus the workers run the processors: name them on the log."""
    warnings: list[Event] = []
    if start.processors is None:
        names = [s.ref for s in registry.defaults]
    else:
        names = []
        for item in start.processors:
            ref = item if isinstance(item, str) else str(item.get("name", ""))
            if ref in registry.offered or ref in registry.unavailable:
                names.append(ref)
            else:
                warnings.append(unavailable(
                    f"processor {ref!r} is not offered by this server (offered: "
                    f"{', '.join(sorted(registry.offered))})"))
    live.processors = names
    rec = live.rec
    bus.log_start(live.id, rate=rec.rate, channels=rec.channels, offset=live.offset,
                  processors=",".join(names))
    return warnings
