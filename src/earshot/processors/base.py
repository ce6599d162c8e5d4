"""The processor API: what a stream processor is, what it receives and what it returns.

A processor is a small class::

    class Loudest(Processor):
        name = "loudest"
        rate = 16000          # resampled for you (None: the stream's own rate)

        def process(self, chunk: Chunk) -> list[Event]:
            peak = float(abs(chunk.samples).max(initial=0))
            return [self.event("peak", chunk.t, value=peak)] if peak > 0.5 else []

``process`` gets consecutive chunks (float32 samples, mono unless ``mono = False``) with
their offset in the processor's own sample rate; ``flush`` is called once at the end of the
stream. Events are plain JSON-able dicts stamped with ``t``, seconds of stream time; the
runner adds ``stream`` and ``processor``. Processors run off the event loop, in batches,
each on its own bounded queue: a slow or failing one never stalls capture or the others.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

Event = dict[str, Any]


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What a processor knows of the stream it runs on."""

    id: str
    rate: int  # the stream's native rate
    channels: int
    name: str | None = None
    language: str | None = None  # BCP 47 tag from the start message, e.g. "en-US"


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive samples for a processor, in its own rate."""

    samples: np.ndarray  # float32, (frames,) when mono else (frames, channels); read-only
    offset: int  # frame index of samples[0] since stream start, at ``rate``
    rate: int

    @property
    def frames(self) -> int:
        return int(self.samples.shape[0])

    @property
    def t(self) -> float:
        """Stream time of the first sample, in seconds."""
        return self.offset / self.rate

    @property
    def end(self) -> int:
        return self.offset + self.frames


class Processor(ABC):
    """Base class of stream processors. Override :meth:`process` (and maybe the rest)."""

    #: short name, used in events, metrics and ``start`` messages
    name: ClassVar[str] = "processor"
    #: sample rate wanted (None: the stream's own); resampled once per rate per stream
    rate: ClassVar[int | None] = None
    #: mix down to mono (True) or keep the stream's channels (False)
    mono: ClassVar[bool] = True
    #: cheap processors (microseconds per chunk) run on the event loop, saving a thread hop
    inline: ClassVar[bool] = False
    #: the options a client's ``start`` may set, each with its type and range
    #: (:class:`earshot.processors.schema.Opt`); None: clients set none (server-only)
    client_options: ClassVar[Mapping[str, Any] | None] = None
    #: answers :meth:`finalize` with one ``finalized`` event (after the cut utterance's final)
    finalizes: ClassVar[bool] = False
    #: its events are made only while someone will receive them: the sender, if it named
    #: the processor in ``start``, or a subscriber of the stream (``/ws/subscribe``, the
    #: page, ``earshot watch``, MQTT). Meanwhile :meth:`skip` is called instead of
    #: :meth:`process`, and the events it does make never go to a sender that did not name
    #: it (it runs as a server default: for the stream's observers)
    on_demand: ClassVar[bool] = False

    def start(self, info: StreamInfo) -> None:
        """Called once before the first chunk."""
        self.info = info

    @abstractmethod
    def process(self, chunk: Chunk) -> Iterable[Event] | None:
        """Consume one chunk; return the events it produced (or None)."""

    def flush(self) -> Iterable[Event] | None:
        """Called once at the end of the stream; return the last events."""
        return None

    def skip(self, offset: int, frames: int, rate: int) -> None:
        """An :attr:`on_demand` processor's audio while nobody would receive its events:
        ``frames`` from ``offset`` at ``rate`` (the processor's), not given. Keep time
        (where the next reading falls) but do none of the work. Called on the event loop,
        so it must be cheap. The default does nothing."""
        return None

    def finalize(self) -> Iterable[Event] | None:
        """End the utterance in progress now, as if its end had just been heard (a door's
        client asked: Deepgram's ``Finalize``, a Realtime ``commit``, Wyoming's
        ``audio-stop``). Called in order with the audio: everything fed before the request
        has been processed. A processor with :attr:`finalizes` then emits exactly one
        ``{"type": "finalized", "segment": N | None}``, after that utterance's final (which
        carries ``"finalize": true``). The default does nothing."""
        return None

    def checkpoint(self) -> int | None:
        """The earliest offset (in this processor's rate) that a fresh instance would need
        to find again what this one still holds — e.g. the start of an utterance in
        progress; None: nothing is held beyond what was processed.

        On the Redis bus a worker acknowledges audio only up to here, so that the worker
        taking a stream over replays from a point where a new instance gives the same
        results. Called between batches, never concurrently with :meth:`process`.
        """
        return None

    def event(self, type: str, t: float, **fields: Any) -> Event:
        """An event stamped at ``t`` seconds of stream time."""
        return {"type": type, "t": round(t, 6), **fields}

    def attach(self, sink: Callable[[list[Event]], None]) -> None:
        """Where :meth:`emit` sends events: the runner attaches itself before
        :meth:`start` (a processor is attached to one runner at a time)."""
        self._sink: Callable[[list[Event]], None] | None = sink

    def emit(self, events: Iterable[Event]) -> None:
        """Publish events produced later or elsewhere (a result from a worker thread, say).

        Safe to call from any thread; the runner sets this up before :meth:`start`.
        """
        sink = getattr(self, "_sink", None)
        if sink is None:
            raise RuntimeError(f"processor {self.name!r} is not attached to a runner")
        sink(list(events))
