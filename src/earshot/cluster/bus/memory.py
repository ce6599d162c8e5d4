"""In-process bus: fan-out of stream events to subscribers, each with its own bounded queue.

A slow subscriber never slows a publisher: when its queue is full the oldest item is dropped
for that subscriber only, counted, and reported to it in a ``dropped`` event.

Items are events (dicts) or, for subscribers that asked for audio, :class:`AudioItem`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

ALL = "*"


@dataclass(frozen=True, slots=True)
class AudioItem:
    """A stream's audio as archived: float32 (frames, channels) from frame ``offset``;
    or, for Opus listeners, ``packets`` of (offset, frames, packet) with the encoder's
    ``pre_skip``."""

    stream: str
    offset: int
    rate: int
    samples: np.ndarray | None
    packets: tuple[tuple[int, int, bytes], ...] = ()
    channels: int = 1
    pre_skip: int = 0

    @property
    def frames(self) -> int:
        if self.samples is not None:
            return int(self.samples.shape[0])
        return sum(n for _, n, _ in self.packets)


Item = dict[str, Any] | AudioItem
#: sees every event this process publishes (the MQTT bridge): called with (stream, event)
Tap = Callable[[str, dict[str, Any]], None]


class Subscription:
    """One subscriber's view of the bus: ``async for item in sub``."""

    def __init__(self, stream: str, *, audio: str | None = None, maxsize: int = 1000) -> None:
        self.stream = stream
        self.audio = audio  # None (events only), "s16", "f32" or "opus"
        self.maxsize = maxsize
        self.dropped = 0
        self._items: deque[Item] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def offer(self, item: Item) -> None:
        """Queue without waiting; past ``maxsize`` the oldest item is dropped and counted."""
        if self._closed:
            return
        if len(self._items) >= self.maxsize:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def get(self) -> Item | None:
        """The next item, or None once closed and drained."""
        while not self._items:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        if self.dropped:
            n, self.dropped = self.dropped, 0
            self._items.appendleft({"type": "dropped", "count": n,
                                    "message": f"{n} events dropped: subscriber too slow"})
        return self._items.popleft()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Item:
        item = await self.get()
        if item is None:
            raise StopAsyncIteration
        return item


class Fanout:
    """Local fan-out: the subscribers connected to *this* process, by stream id (or ``*``),
    each with its own bounded queue. Every bus has one; a shared bus feeds it what the
    cluster publishes."""

    def __init__(self) -> None:
        self._subs: dict[str, set[Subscription]] = {}
        self._audio_subs = 0

    def subscribe(self, stream: str, *, audio: str | None = None,
                  maxsize: int = 1000) -> Subscription:
        sub = Subscription(stream, audio=audio, maxsize=maxsize)
        self._subs.setdefault(stream, set()).add(sub)
        self._audio_subs += sub.audio is not None
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.stream)
        if subs is not None and sub in subs:
            subs.discard(sub)
            self._audio_subs -= sub.audio is not None
            if not subs:
                del self._subs[sub.stream]
        sub.close()

    def wants_audio(self, stream: str, *, opus: bool | None = None) -> bool:
        """Whether anyone subscribed to this stream's audio (``opus``: in that form, or
        not); saves the work when nobody did."""
        if not self._audio_subs:
            return False
        return any(s.audio is not None and (opus is None or (s.audio == "opus") == opus)
                   for key in (stream, ALL) for s in self._subs.get(key, ()))

    def watching(self, stream: str) -> bool:
        """Whether anyone here subscribed to this stream (or to every stream)."""
        subs = self._subs
        return stream in subs or ALL in subs

    def event(self, stream: str, event: dict[str, Any]) -> None:
        """An event to this process's subscribers of ``stream`` and of every stream."""
        for key in (stream, ALL):
            for sub in self._subs.get(key, ()):
                sub.offer(event)

    def audio(self, item: AudioItem) -> None:
        """To PCM listeners (an item with samples) or Opus listeners (one with packets)."""
        opus = item.samples is None
        for key in (item.stream, ALL):
            for sub in self._subs.get(key, ()):
                if sub.audio is not None and (sub.audio == "opus") == opus:
                    sub.offer(item)


class MemoryBus:
    """Publish/subscribe by stream id, in one process (the default bus: processors run in
    the gateway, so there is no audio log, and every stream is owned here)."""

    remote = False

    def __init__(self) -> None:
        self.local = Fanout()
        self.taps: list[Tap] = []  # the events published here, not those of other processes

    # -- the cluster side of the Bus interface: nothing to do in one process -------------
    async def start(self, on_events: Any = None, on_release: Any = None,
                    on_job: Any = None) -> None:
        return None  # (jobs and releases come only from a shared bus)

    async def close(self) -> None:
        return None

    def append(self, batch: Any) -> None:
        return None

    def log_start(self, stream: str, *, rate: int, channels: int, offset: int,
                  processors: str) -> None:
        return None

    def log_end(self, stream: str, *, offset: int, state: str, processors: str = "") -> None:
        return None

    async def acquire(self, stream: str) -> None:
        return None

    async def release(self, stream: str) -> None:
        return None

    async def held_elsewhere(self, stream: str) -> bool:
        return False

    async def log_tail(self, stream: str) -> int | None:
        return None  # no shared log

    async def take_over(self, stream: str, timeout: float | None = None) -> bool:
        return True  # nobody else holds anything

    async def live_workers(self, kind: str) -> int:
        return 0  # processors run in the gateway

    def health(self) -> dict[str, Any]:
        return {"kind": "memory", "state": "ok"}

    # -- local fan-out ---------------------------------------------------------------------
    def subscribe(self, stream: str, *, audio: str | None = None,
                  maxsize: int = 1000) -> Subscription:
        return self.local.subscribe(stream, audio=audio, maxsize=maxsize)

    def unsubscribe(self, sub: Subscription) -> None:
        self.local.unsubscribe(sub)

    def wants_audio(self, stream: str, *, opus: bool | None = None) -> bool:
        return self.local.wants_audio(stream, opus=opus)

    def watched(self, stream: str) -> bool:
        return bool(self.taps) or self.local.watching(stream)

    def publish(self, stream: str, event: dict[str, Any]) -> None:
        for tap in self.taps:
            tap(stream, event)
        self.local.event(stream, event)

    def publish_audio(self, item: AudioItem) -> None:
        self.local.audio(item)
