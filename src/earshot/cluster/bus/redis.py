"""The gateway's side of the Redis Streams bus (``earshot serve --bus redis://…``).

* Audio goes onto the log once per ack batch (``append``), through one outbox drained by
  a single task in pipelines: the hot path never waits for Redis. The archive never depends
  on the bus: when Redis is down the gateway keeps archiving and acknowledging, reports the
  bus as degraded, keeps a bounded backlog and sends it when Redis is back.
* Events of every stream arrive on ``{prefix}events``; every gateway reads it (no consumer
  group: each needs all of them) and hands them to its local subscribers and to the hub,
  which posts those of its own streams to their senders.
* Jobs (segment cuts, final transcripts to store) are consumed in the consumer group
  ``store`` by the gateways, once each, with entries of a dead gateway claimed after
  ``job_claim_idle``.
* Ownership of live streams: ``{prefix}owner:{stream}`` holds the gateway's name and is
  renewed while the stream is live; a resume elsewhere asks the holder to let go.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections import deque
from typing import Any

from earshot.cluster.bus.base import BusStats, EventSink, JobSink, LogAudio, ReleaseSink
from earshot.cluster.bus.keys import STORE_GROUP, parse_bus_url
from earshot.cluster.bus.memory import AudioItem, Fanout, Subscription, Tap
from earshot.errors import MissingDependency
from earshot.processors.base import Event

log = logging.getLogger("earshot.cluster.bus")


def redis_module() -> Any:
    """``redis.asyncio``, or :class:`MissingDependency` saying how to install it (called at
    start-up, so a missing extra fails before anything listens)."""
    try:
        import redis.asyncio as aioredis
    except ImportError:
        raise MissingDependency(
            "the Redis bus needs redis-py: pip install 'earshot[redis]'") from None
    return aioredis


def connect(url: str) -> Any:
    """An asyncio Redis client (hiredis parser when installed)."""
    return redis_module().from_url(url, decode_responses=False, health_check_interval=10,
                                    socket_connect_timeout=2, socket_timeout=10)


def gateway_name() -> str:
    return f"gw@{socket.gethostname()}:{os.getpid()}"


class RedisStreamsBus:
    """Local fan-out (a :class:`Fanout` of this process's subscribers) plus the log, events,
    jobs and ownership on Redis."""

    remote = True

    def __init__(self, url: str, *, retention: float = 60.0, owner_ttl: float = 5.0,
                 max_backlog_bytes: int = 256 << 20, name: str | None = None,
                 job_claim_idle: float = 5.0, job_delay: float = 2.0) -> None:
        self.local = Fanout()
        self.taps: list[Tap] = []  # the events published here, not those of other processes
        self.url, self.keys = parse_bus_url(url)
        self.retention = retention
        self.owner_ttl = owner_ttl
        self.name = name or gateway_name()
        self._name_b = self.name.encode()
        self.max_backlog_bytes = max_backlog_bytes
        self.job_claim_idle = job_claim_idle
        self.job_delay = job_delay
        self.redis: Any = None
        self._outbox: deque[tuple[str, dict[str, Any]]] = deque()
        self._outbox_bytes = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._held: set[str] = set()
        self._names: dict[str, str] = {}  # live streams' names, on their log entries
        self._on_events: EventSink | None = None
        self._on_release: ReleaseSink | None = None
        self._on_job: JobSink | None = None
        self.up = False
        self.degraded_since: float | None = None
        self.outages = 0
        self.errors = 0
        self.dropped_entries = 0
        self.stats: dict[str, Any] = {}

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self, on_events: EventSink | None = None,
                    on_release: ReleaseSink | None = None,
                    on_job: JobSink | None = None) -> None:
        self._on_events, self._on_release, self._on_job = on_events, on_release, on_job
        self.redis = connect(self.url)
        try:
            await self.redis.ping()
            self.up = True
        except Exception as exc:  # start anyway: capture never depends on the bus
            self._down(exc)
        self._tasks = [asyncio.create_task(f(), name=f"earshot-bus-{f.__name__}")
                       for f in (self._send_loop, self._event_loop, self._owner_loop,
                                 self._job_loop)]

    async def close(self) -> None:
        # give the outbox a moment to drain (the log is best effort; the archive is not)
        deadline = time.monotonic() + 2.0
        while self._outbox and self.up and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.redis is not None:
            with contextlib.suppress(Exception):
                if self._held:
                    await self.redis.delete(*(self.keys.owner(s) for s in self._held))
            with contextlib.suppress(Exception):
                await self.redis.aclose()

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "redis", "state": "ok" if self.up else "degraded",
                               "gateway": self.name, "outages": self.outages,
                               "backlog_entries": len(self._outbox)}
        if self.degraded_since is not None:
            out["degraded_for"] = round(time.monotonic() - self.degraded_since, 3)
        return out

    def snapshot(self) -> BusStats:
        """What the bus last saw of itself (refreshed every ``owner_ttl / 4`` seconds)."""
        s = self.stats or {}
        return BusStats(up=self.up, errors=self.errors, backlog_entries=len(self._outbox),
                        dropped_entries=self.dropped_entries, groups=s.get("groups") or {},
                        counters=s.get("counters") or {}, used_memory=s.get("used_memory", 0))

    # -- local fan-out ---------------------------------------------------------------------
    def subscribe(self, stream: str, *, audio: str | None = None,
                  maxsize: int = 1000) -> Subscription:
        return self.local.subscribe(stream, audio=audio, maxsize=maxsize)

    def unsubscribe(self, sub: Subscription) -> None:
        self.local.unsubscribe(sub)

    def wants_audio(self, stream: str, *, opus: bool | None = None) -> bool:
        return self.local.wants_audio(stream, opus=opus)

    def watched(self, stream: str) -> bool:
        return True  # a subscriber on any gateway of the cluster may want its events

    def publish_audio(self, item: AudioItem) -> None:
        """Relay audio goes to this process's listeners only (not through Redis)."""
        self.local.audio(item)

    def _down(self, exc: BaseException) -> None:
        self.errors += 1
        if self.up or self.degraded_since is None:
            self.outages += 1
            self.degraded_since = time.monotonic()
            log.warning("bus: Redis at %s unreachable (%s); capture goes on, processing "
                        "waits", self.url, exc)
        self.up = False

    def _recovered(self) -> None:
        if not self.up:
            log.warning("bus: Redis is back")
        self.up = True
        self.degraded_since = None

    # -- outbox --------------------------------------------------------------------------
    def _enqueue(self, key: str, fields: dict[str, Any], size: int = 0) -> None:
        self._outbox.append((key, fields))
        self._outbox_bytes += size
        while self._outbox_bytes > self.max_backlog_bytes and len(self._outbox) > 1:
            _, old = self._outbox.popleft()
            self._outbox_bytes -= len(old.get("data", b""))
            self.dropped_entries += 1
        self._wake.set()

    def _minid(self) -> str:
        return f"{int((time.time() - self.retention) * 1000)}-0"

    async def _send_loop(self) -> None:
        backoff = 0.1
        while True:
            if not self._outbox:
                self._wake.clear()
                await self._wake.wait()
            batch = [self._outbox[i] for i in range(min(len(self._outbox), 500))]
            minid = self._minid()
            try:
                pipe = self.redis.pipeline(transaction=False)
                for key, fields in batch:
                    pipe.xadd(key, fields, minid=minid, approximate=True)
                await pipe.execute()
            except Exception as exc:
                self._down(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            self._recovered()
            for _ in batch:
                _, fields = self._outbox.popleft()
                self._outbox_bytes -= len(fields.get("data", b""))

    # -- the log and events ----------------------------------------------------------------
    def _named(self, stream: str, fields: dict[str, Any]) -> dict[str, Any]:
        """A log entry with the stream's name, when it has one (workers name their MQTT
        topics by it, whichever entry they start at)."""
        name = self._names.get(stream)
        if name:
            fields["name"] = name
        return fields

    def append(self, batch: LogAudio) -> None:
        self._enqueue(self.keys.audio_of(batch.stream), self._named(batch.stream, {
            "kind": "audio", "stream": batch.stream, "offset": batch.offset,
            "frames": batch.frames, "rate": batch.rate, "channels": batch.channels,
            "format": batch.format, "procs": batch.processors, "data": bytes(batch.data)}),
            len(batch.data))

    def log_start(self, stream: str, *, rate: int, channels: int, offset: int,
                  processors: str) -> None:
        self._enqueue(self.keys.audio_of(stream), self._named(stream, {
            "kind": "start", "stream": stream, "offset": offset, "rate": rate,
            "channels": channels, "procs": processors}))

    def log_end(self, stream: str, *, offset: int, state: str, processors: str = "") -> None:
        self._enqueue(self.keys.audio_of(stream), {
            "kind": "end", "stream": stream, "offset": offset, "state": state,
            "procs": processors})
        self._names.pop(stream, None)

    async def live_workers(self, kind: str) -> int:
        """Workers of ``kind`` with a heartbeat within their lease time (a few seconds)."""
        try:
            now = int(time.time() * 1000)
            return int(await self.redis.zcount(self.keys.workers(kind), now - 10_000, "+inf"))
        except Exception:
            return 0

    def publish(self, stream: str, event: Event) -> None:
        """To every subscriber of the cluster (this gateway's included, via Redis)."""
        self.publish_many(stream, [event])

    def publish_many(self, stream: str, events: list[Event]) -> None:
        for e in events:
            if e.get("type") == "stream_started" and e.get("name"):
                self._names[stream] = str(e["name"])  # for workers' topics (MQTT)
            for tap in self.taps:
                tap(stream, e)
        self._enqueue(self.keys.events, {"stream": stream, "origin": self.name,
                                         "events": json.dumps(events, separators=(",", ":"))})

    async def _event_loop(self) -> None:
        last = "$"
        while True:
            try:
                if last == "$":  # start from the current end (nothing older is ours)
                    info = await self.redis.xinfo_stream(self.keys.events)
                    last = info["last-generated-id"].decode()
            except Exception as exc:
                if "no such key" not in str(exc).lower():
                    self._down(exc)
                    await asyncio.sleep(0.5)
                    continue
                last = "0-0"
            try:
                got = await self.redis.xread({self.keys.events: last}, count=500, block=500)
            except Exception as exc:
                self._down(exc)
                await asyncio.sleep(0.5)
                last = "$"  # Redis may have restarted empty: take it from its end again
                continue
            for _, entries in got or ():
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    await self._deliver(fields)

    async def _deliver(self, fields: dict[bytes, bytes]) -> None:
        stream = fields.get(b"stream", b"").decode()
        control = fields.get(b"control")
        if control == b"release":
            if stream in self._held and fields.get(b"by", b"").decode() != self.name \
                    and self._on_release is not None:
                await self._on_release(stream)
            return
        try:
            events = json.loads(fields[b"events"])
        except (KeyError, ValueError):
            log.warning("bus: malformed event entry for %s", stream)
            return
        for e in events:
            e.setdefault("stream", stream)
            self.local.event(stream, e)
        # our own events were posted to our senders already
        if self._on_events is not None and fields.get(b"origin") != self._name_b:
            self._on_events(stream, events)

    # -- jobs (segment cuts, transcript storage): once each, by any gateway ----------------
    async def _job_loop(self) -> None:
        created = False
        while True:
            try:
                if not created:
                    with contextlib.suppress(Exception):  # BUSYGROUP: exists already
                        await self.redis.xgroup_create(self.keys.jobs, STORE_GROUP, id="0",
                                                       mkstream=True)
                    created = True
                claimed = await self.redis.xautoclaim(
                    self.keys.jobs, STORE_GROUP, self.name,
                    min_idle_time=int(self.job_claim_idle * 1000), start_id="0-0", count=100)
                entries = list(claimed[1]) if claimed else []
                got = await self.redis.xreadgroup(STORE_GROUP, self.name,
                                                  {self.keys.jobs: ">"}, count=100, block=500)
                for _, more in got or ():
                    entries.extend(more)
                for entry_id, fields in entries:
                    if fields:  # claimed entries trimmed meanwhile come back empty
                        await self._delay(entry_id, fields)
                        await self._run_job(fields)
                    await self.redis.xack(self.keys.jobs, STORE_GROUP, entry_id)
            except Exception as exc:
                if "NOGROUP" in str(exc):
                    created = False
                else:
                    self._down(exc)
                await asyncio.sleep(0.5)

    async def _delay(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        """Segment cuts wait ``job_delay``: the gateway holding the stream normally cuts
        it as the event arrives (so its sender gets the segment at once); the job is the
        fallback when no gateway held the stream, or the one holding it died."""
        if b'"speech_end"' not in fields.get(b"event", b""):
            return
        born = int(entry_id.split(b"-")[0]) / 1000
        wait = born + self.job_delay - time.time()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _run_job(self, fields: dict[bytes, bytes]) -> None:
        if self._on_job is None:
            return
        try:
            event = json.loads(fields[b"event"])
        except (KeyError, ValueError):
            log.warning("bus: malformed job %r", fields)
            return
        try:
            await self._on_job(fields.get(b"stream", b"").decode(), event)
        except Exception:
            log.exception("bus: job failed")

    # -- ownership of live streams ---------------------------------------------------------
    async def acquire(self, stream: str) -> None:
        self._held.add(stream)
        with contextlib.suppress(Exception):
            await self.redis.set(self.keys.owner(stream), self.name,
                                 px=int(self.owner_ttl * 1000))

    async def release(self, stream: str) -> None:
        self._held.discard(stream)
        with contextlib.suppress(Exception):
            key = self.keys.owner(stream)
            if await self.redis.get(key) == self.name.encode():
                await self.redis.delete(key)

    async def held_elsewhere(self, stream: str) -> bool:
        try:
            holder = await self.redis.get(self.keys.owner(stream))
        except Exception:
            return False  # Redis down: nobody can prove a claim; the archive decides
        return holder is not None and holder != self.name.encode()

    async def log_tail(self, stream: str, *, scan: int = 50_000) -> int | None:
        """The offset after the stream's newest entry in its partition of the audio log
        (an ``end`` entry's offset, an ``audio`` entry's offset + frames), looking back at
        most ``scan`` entries; None when none is retained."""
        key, want, last, seen = self.keys.audio_of(stream), stream.encode(), "+", 0
        while seen < scan:
            rows = await self.redis.xrevrange(key, max=last, min="-", count=500)
            for _id, f in rows:
                if f.get(b"stream") == want and b"offset" in f:
                    off = int(f[b"offset"])
                    return off + int(f.get(b"frames", 0)) if f.get(b"kind") == b"audio" else off
            if len(rows) < 500:
                return None
            seen += len(rows)
            last = "(" + (rows[-1][0].decode() if isinstance(rows[-1][0], bytes)
                          else str(rows[-1][0]))
        return None

    async def take_over(self, stream: str, timeout: float | None = None) -> bool:
        """Ask the gateway holding ``stream`` to let go; wait until it did or its claim
        expired (it died). True when the stream is free for us."""
        if not await self.held_elsewhere(stream):
            return True
        with contextlib.suppress(Exception):
            await self.redis.xadd(self.keys.events, {"control": "release", "stream": stream,
                                                     "by": self.name})
        deadline = time.monotonic() + (timeout if timeout is not None else self.owner_ttl + 1)
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if not await self.held_elsewhere(stream):
                return True
        return False

    async def _owner_loop(self) -> None:
        period = self.owner_ttl / 4
        while True:
            await asyncio.sleep(period)
            try:
                if self._held:
                    pipe = self.redis.pipeline(transaction=False)
                    for s in self._held:
                        pipe.set(self.keys.owner(s), self.name, px=int(self.owner_ttl * 1000))
                    await pipe.execute()
                await self._refresh_stats()
                self._recovered()
            except Exception as exc:
                self._down(exc)

    async def _refresh_stats(self) -> None:
        """Consumer-group lag and pending entries per processor kind, Redis memory."""
        kinds: dict[str, dict[str, int]] = {}
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.keys.partitions):
            pipe.xinfo_groups(self.keys.audio(p))
        results = await pipe.execute(raise_on_error=False)
        for groups in results:
            if isinstance(groups, Exception):
                continue
            for g in groups:
                name = g["name"].decode()
                k = kinds.setdefault(name, {"lag": 0, "pending": 0})
                k["lag"] += int(g.get("lag") or 0)
                k["pending"] += int(g.get("pending") or 0)
        mem = await self.redis.info("memory")
        counters = await self.redis.hgetall(self.keys.stats)
        self.stats = {"groups": kinds, "used_memory": int(mem.get("used_memory", 0)),
                      "counters": {k.decode(): int(v) for k, v in counters.items()}}
