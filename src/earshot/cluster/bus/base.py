"""What the rest of earshot needs of a bus, whichever one runs underneath.

A gateway (the process holding publishers' WebSockets) talks to the bus for four things:

* **local fan-out** — subscribers connected to *this* process (``subscribe``,
  ``publish_audio`` for relay listeners): always in-process, whatever the bus;
* **events** — ``publish`` an event of a stream so that every subscriber of the cluster
  and the stream's sender (wherever it is connected) receives it;
* **the audio log** — ``append`` one archived batch of a stream for remote processors
  (a no-op on the in-process bus, where processors run in the gateway);
* **ownership** — which gateway holds a live stream, so that a resume on another gateway
  supersedes the old connection and crash repair never touches a stream someone holds.

:class:`~earshot.cluster.bus.memory.MemoryBus` is the single-process implementation;
:class:`~earshot.cluster.bus.redis.RedisStreamsBus` puts the log, the events and the ownership on
Redis Streams.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from earshot.cluster.bus.memory import AudioItem, Subscription
from earshot.processors.base import Event

#: called with (stream id, events) for every event batch the bus delivers to this gateway
EventSink = Callable[[str, list[Event]], None]
#: called with a stream id when another gateway asks for it (a resume elsewhere)
ReleaseSink = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class LogAudio:
    """One archived batch of a stream, as it goes onto the audio log."""

    stream: str
    offset: int  # first frame, at the stream's rate
    frames: int
    rate: int
    channels: int
    format: str  # "s16" | "f32": the layout of ``data`` (little-endian, interleaved)
    data: bytes | bytearray | memoryview
    processors: str = ""  # the processor refs the stream asked for, comma-separated


#: called with (stream id, job event) for each storage job the bus hands this gateway
JobSink = Callable[[str, Event], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class BusStats:
    """What a shared bus last saw of itself (read without a round trip to it)."""

    up: bool
    errors: int  # operations that failed
    backlog_entries: int  # entries waiting to go onto the log
    dropped_entries: int  # entries dropped from a full backlog
    groups: Mapping[str, Mapping[str, int]]  # processor kind -> {"lag", "pending"} entries
    counters: Mapping[str, int]  # e.g. "takeovers:vad"
    used_memory: int  # bytes the bus server uses


class Bus(Protocol):
    """Everything the gateway (hub, router, REST, subscribers, metrics) asks of a bus."""

    #: True when processors run in other processes (the gateway runs none itself)
    remote: bool
    #: called with (stream, event) for each event published by this process (not those of
    #: other gateways or workers that a shared bus delivers): the MQTT bridge's hook
    taps: list[Callable[[str, Event], None]]

    # -- local fan-out (this process's subscribers) -----------------------------------------
    def subscribe(self, stream: str, *, audio: str | None = None,
                  maxsize: int = 1000) -> Subscription: ...
    def unsubscribe(self, sub: Subscription) -> None: ...
    def wants_audio(self, stream: str, *, opus: bool | None = None) -> bool: ...
    def watched(self, stream: str) -> bool:
        """Whether a stream's events reach anyone but its sender now (a subscriber here, a
        tap, or, on a shared bus, possibly another process): on-demand processors run
        only then, or for a sender that named them."""
    def publish_audio(self, item: AudioItem) -> None: ...
    # -- events and the audio log -----------------------------------------------------------
    def publish(self, stream: str, event: Event) -> None: ...
    def append(self, batch: LogAudio) -> None: ...
    def log_start(self, stream: str, *, rate: int, channels: int, offset: int,
                  processors: str) -> None: ...
    def log_end(self, stream: str, *, offset: int, state: str,
                processors: str = "") -> None: ...
    async def live_workers(self, kind: str) -> int:
        """Workers of processor ``kind`` alive now (0 on the in-process bus)."""
    # -- life cycle -------------------------------------------------------------------------
    async def start(self, on_events: EventSink, on_release: ReleaseSink,
                    on_job: JobSink | None = None) -> None: ...
    async def close(self) -> None: ...
    def health(self) -> dict[str, Any]: ...
    # -- ownership of live streams ----------------------------------------------------------
    async def acquire(self, stream: str) -> None: ...
    async def release(self, stream: str) -> None: ...
    async def held_elsewhere(self, stream: str) -> bool: ...
    async def log_tail(self, stream: str) -> int | None:
        """The stream offset after the stream's last entry in the retained audio log (None
        when the bus has no shared log or retains nothing of it): where a stream a dead
        gateway held continues on another (docs/deploy.md)."""
        ...
    async def take_over(self, stream: str, timeout: float | None = None) -> bool:
        """Ask the gateway holding ``stream`` to let go; True once it is free for us."""
