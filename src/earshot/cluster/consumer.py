"""Processor workers on the Redis Streams log (``earshot worker --bus redis://… vad level``).

Each processor kind is a consumer group on every partition of the audio log. Processors
keep per-stream state, so a partition (and with it every stream hashed to it) is read by
one worker of a kind at a time: the holder of the lease ``{prefix}lease:{kind}:{p}``,
renewed every ``lease_ttl / 3`` and lost when not renewed for ``lease_ttl`` (a dead
worker). Workers heartbeat in ``{prefix}workers:{kind}``; each aims at its fair share,
``ceil(partitions / live workers)``, taking free leases and giving back extras, so
streams are rebalanced when workers come and go (:func:`plan`, pure).

A worker acknowledges (XACK) an entry only once its processors hold no state from before
the entry's end (:meth:`earshot.processors.runner.StreamPipeline.checkpoint`) and the events found
up to there are published. A worker that takes a partition over first claims the
entries still pending in the group (XAUTOCLAIM) — the previous holder's unacknowledged
tail — and replays them through fresh processors: at-least-once. Replayed events are
recognised (:class:`earshot.cluster.dedup.Deduper`, whose state lives on Redis) and not published
twice. Published with the events, in the same MULTI/EXEC: the dedup state and, for
``speech_end`` and final transcripts, a job for the gateways (cut the segment, store the
transcript), done once by one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import socket
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from earshot.cluster.bus.keys import Keys, parse_bus_url
from earshot.cluster.bus.redis import connect
from earshot.cluster.dedup import Deduper
from earshot.processors.base import Event, StreamInfo
from earshot.processors.registry import ProcessorSpec
from earshot.processors.runner import StreamPipeline
from earshot.server.events import storage_work

log = logging.getLogger("earshot.cluster.worker")


#: renew leases held by ARGV[1] (or free ones), in one round trip; 1 per key kept, else 0
RENEW = """
local out = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder == ARGV[1] or not holder then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""


def plan(partitions: int, holders: dict[int, str | None], live: Iterable[str], me: str,
         busy: dict[int, int] | None = None) -> tuple[list[int], list[int]]:
    """Which partitions to try to take and which to give back, for a fair share.

    ``holders``: partition → worker holding its lease (None: free); ``live``: workers with
    a recent heartbeat (``me`` included); ``busy``: partition → live streams on it (extras
    given back are the least busy ones).
    """
    alive = set(live) | {me}
    target = math.ceil(partitions / len(alive))
    mine = [p for p in range(partitions) if holders.get(p) == me]
    free = [p for p in range(partitions) if holders.get(p) is None
            or holders.get(p) not in alive]
    busy = busy or {}
    if len(mine) > target:
        extra = sorted(mine, key=lambda p: (busy.get(p, 0), -p))[:len(mine) - target]
        return [], sorted(extra)
    return free[:target - len(mine)], []


def decode_audio(fields: dict[bytes, bytes]) -> np.ndarray:
    """An audio entry's samples as float32 (frames, channels)."""
    channels = int(fields[b"channels"])
    data = fields[b"data"]
    if fields.get(b"format") == b"s16":
        x = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    else:
        x = np.frombuffer(data, "<f4").astype(np.float32, copy=False)
    return x.reshape(-1, channels)


@dataclass(eq=False)
class _Stream:
    id: str
    partition: int
    pipeline: StreamPipeline
    dedup: Deduper
    entries: deque[tuple[bytes, int]] = field(default_factory=deque)  # (entry id, end)


class KindConsumer:
    """One processor kind in one worker process."""

    def __init__(self, redis: Any, keys: Keys, spec: ProcessorSpec, *, name: str,
                 lease_ttl: float = 3.0, start_from: str = "latest",
                 max_lag: float = 3600.0, drain_timeout: float = 10.0,
                 retention: float = 60.0, mqtt: Any = None) -> None:
        self.redis = redis
        self.mqtt = mqtt  # an integrations.mqtt.MqttBridge: the events published, once on Redis
        self.retention = retention  # events and jobs are trimmed by age, like the log
        self.keys = keys
        self.spec = spec
        self.kind = spec.ref
        self.group = keys.group(self.kind)
        self.name = name
        self.lease_ttl = lease_ttl
        self.start_from = start_from
        self.max_lag = max_lag
        self.drain_timeout = drain_timeout
        self.held: set[int] = set()
        self._fresh: set[int] = set()  # acquired, pending entries not yet claimed
        self.streams: dict[str, _Stream] = {}
        self._outbox: deque[tuple[str, Any]] = deque()
        self._wake = asyncio.Event()
        self.takeovers = 0
        self.balanced = asyncio.Event()
        self._renew = redis.register_script(RENEW)
        self._send_wake = asyncio.Event()

    # -- leases -----------------------------------------------------------------------------
    async def lease_loop(self) -> None:
        while True:
            try:
                await self._rebalance()
            except Exception as exc:
                log.warning("%s %s: leases: %s", self.name, self.kind, exc)
            await asyncio.sleep(self.lease_ttl / 3)

    async def _rebalance(self) -> None:
        r, k, now = self.redis, self.keys, int(time.time() * 1000)
        ttl_ms = int(self.lease_ttl * 1000)
        pipe = r.pipeline(transaction=False)
        pipe.zadd(k.workers(self.kind), {self.name: now})
        pipe.zremrangebyscore(k.workers(self.kind), "-inf", now - ttl_ms)
        pipe.zrange(k.workers(self.kind), 0, -1)
        pipe.mget([k.lease(self.kind, p) for p in range(k.partitions)])
        _, _, live_raw, lease_raw = await pipe.execute()
        live = [w.decode() for w in live_raw]
        holders = {p: (h.decode() if h else None) for p, h in enumerate(lease_raw)}
        if self.held:  # renew all at once; a lease that expired unclaimed is kept too
            mine = sorted(self.held)
            kept = await self._renew(keys=[k.lease(self.kind, p) for p in mine],
                                     args=[self.name, ttl_ms])
            for p, ok in zip(mine, kept, strict=True):
                if ok:
                    holders[p] = self.name
                    continue
                holder = (await r.get(k.lease(self.kind, p)) or b"?").decode()
                log.warning("%s %s: lost partition %d to %s", self.name, self.kind, p,
                            holder)
                self._drop_partition(p)
                holders[p] = holder
        busy: dict[int, int] = {}
        for s in self.streams.values():
            busy[s.partition] = busy.get(s.partition, 0) + 1
        take, give = plan(k.partitions, holders, live, self.name, busy)
        for p in give:
            self._drop_partition(p)
            if await r.get(k.lease(self.kind, p)) == self.name.encode():
                await r.delete(k.lease(self.kind, p))
        for p in take:
            if await r.set(k.lease(self.kind, p), self.name, nx=True, px=ttl_ms):
                await self._ensure_group(p)
                self.held.add(p)
                self._fresh.add(p)
        target = math.ceil(k.partitions / len(set(live) | {self.name}))
        if len(self.held) == target or (not take and not give):
            self.balanced.set()
        self._wake.set()

    async def _ensure_group(self, p: int, start: str | None = None) -> None:
        """The kind's group on partition ``p``: a new kind starts at the live edge (or the
        oldest entry with ``--from oldest``); a group lost with a Redis restart starts at
        the oldest entry, so what gateways kept through the outage is processed."""
        first = start or ("0" if self.start_from == "oldest" else "$")
        with contextlib.suppress(Exception):  # BUSYGROUP: it exists
            await self.redis.xgroup_create(self.keys.audio(p), self.group, mkstream=True,
                                           id=first)

    def _drop_partition(self, p: int) -> None:
        """Stop reading ``p``: its streams' state is dropped unacknowledged, so the next
        holder replays them from their checkpoints."""
        self.held.discard(p)
        self._fresh.discard(p)
        for sid in [s.id for s in self.streams.values() if s.partition == p]:
            st = self.streams.pop(sid)
            task = asyncio.ensure_future(st.pipeline.close(timeout=0.0))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def release_all(self) -> None:
        for p in list(self.held):
            self._drop_partition(p)
            with contextlib.suppress(Exception):
                if await self.redis.get(self.keys.lease(self.kind, p)) == self.name.encode():
                    await self.redis.delete(self.keys.lease(self.kind, p))
        with contextlib.suppress(Exception):
            await self.redis.zrem(self.keys.workers(self.kind), self.name)

    # -- reading -------------------------------------------------------------------------
    async def read_loop(self) -> None:
        while True:
            try:
                await self._read_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if "NOGROUP" in str(exc):  # Redis restarted empty: make the groups again
                    log.warning("%s %s: consumer groups gone (Redis restarted?); "
                                "recreating them", self.name, self.kind)
                    for p in self.held:
                        await self._ensure_group(p, "0")
                else:
                    log.warning("%s %s: read: %s", self.name, self.kind, exc)
                await asyncio.sleep(0.5)

    async def _read_once(self) -> None:
        if not self.held:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.5)
            return
        for p in sorted(self._fresh):
            await self._claim_pending(p)
            self._fresh.discard(p)
        held = sorted(self.held - self._fresh)  # taken meanwhile: claimed first, next time
        if not held:
            return
        got = await self.redis.xreadgroup(self.group, self.name,
                                          {self.keys.audio(p): ">" for p in held},
                                          count=200, block=200)
        for key, entries in got or ():
            p = int(key.decode().rsplit(":", 1)[1])
            if p not in self.held:
                continue  # given away while we waited
            for entry_id, fields in entries:
                if p not in self.held:
                    break  # given away meanwhile: the next holder reads these
                await self._handle(p, entry_id, fields)
        self._checkpoint()
        await self._pace()

    async def _pace(self) -> None:
        """The log is the buffer: read on only when the processors kept up (a worker never
        skips audio for lag, unlike processors in the gateway; it falls behind the log and
        says so in ``lag`` events and the group's lag)."""
        for st in list(self.streams.values()):
            if any(r.lag > self.PACE_S for _, r in st.pipeline.runners):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(st.pipeline.idle(), self.lease_ttl / 3)
                self._checkpoint()

    #: seconds of audio a processor may have queued before the worker stops reading
    PACE_S = 2.0

    async def _claim_pending(self, p: int) -> None:
        """Take over what the previous holder of ``p`` read but never acknowledged."""
        key = self.keys.audio(p)
        summary = await self.redis.xpending(key, self.group)
        others = [c for c in (summary.get("consumers") or [])
                  if c["name"].decode() != self.name and int(c["pending"]) > 0]
        if others:
            self.takeovers += 1
            await self.redis.hincrby(self.keys.stats, f"takeovers:{self.kind}", 1)
            log.warning("%s %s: taking over partition %d from %s (%d entries to replay)",
                        self.name, self.kind, p, ", ".join(c["name"].decode() for c in others),
                        sum(int(c["pending"]) for c in others))
        start = "0-0"
        while True:
            cursor, entries, *_ = await self.redis.xautoclaim(
                key, self.group, self.name, min_idle_time=0, start_id=start, count=200)
            for entry_id, fields in entries:
                if p not in self.held:
                    return
                if fields:
                    await self._handle(p, entry_id, fields)
                else:  # trimmed meanwhile: nothing to replay
                    self._ack(p, [entry_id])
            if cursor in (b"0-0", "0-0"):
                break
            start = cursor
        for c in others:
            with contextlib.suppress(Exception):
                await self.redis.xgroup_delconsumer(key, self.group, c["name"])

    async def _handle(self, p: int, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        kind = fields.get(b"kind")
        sid = fields.get(b"stream", b"").decode()
        st = self.streams.get(sid)
        if kind == b"end":
            if st is not None:
                await self._finish(st)
            if st is not None or self.kind in fields.get(b"procs", b"").decode().split(","):
                self._outbox.append(("events", (sid, [{
                    "type": "processed", "stream": sid, "processor": self.kind,
                    "offset": int(fields.get(b"offset", 0)), "worker": self.name}], None)))
            self._ack(p, [entry_id])
            return
        if kind == b"start":
            procs = fields.get(b"procs", b"").decode().split(",")
            if self.kind in procs and st is None:
                await self._open(p, sid, fields)
            self._ack(p, [entry_id])
            return
        if st is None:  # audio of a stream we never saw start: opted in?
            procs = fields.get(b"procs", b"").decode().split(",")
            if self.kind not in procs:
                self._ack(p, [entry_id])
                return
            st = await self._open(p, sid, fields)
        offset, frames = int(fields[b"offset"]), int(fields[b"frames"])
        end = offset + frames
        if end <= st.pipeline.offset:  # replayed entry we processed already
            st.entries.append((entry_id, end))
            return
        if offset != st.pipeline.offset:  # a gap (entries trimmed or lost): start afresh
            if offset < st.pipeline.offset:
                log.debug("%s: partial overlap at %d", sid, offset)
                return
            log.warning("%s %s: stream %s jumps from frame %d to %d; restarting its "
                        "processors", self.name, self.kind, sid, st.pipeline.offset, offset)
            await st.pipeline.close(timeout=0.0)
            st.pipeline = self._pipeline(sid, fields, offset)
        st.pipeline.feed(decode_audio(fields), offset)
        st.entries.append((entry_id, end))

    async def _open(self, p: int, sid: str, fields: dict[bytes, bytes]) -> _Stream:
        raw = await self.redis.hget(self.keys.dedup(sid), self.kind)
        dedup = Deduper(json.loads(raw) if raw else None)
        if self.mqtt is not None and fields.get(b"name"):
            self.mqtt.remember(sid, fields[b"name"].decode(errors="replace"))
        st = _Stream(sid, p, self._pipeline(sid, fields, int(fields[b"offset"])), dedup)
        self.streams[sid] = st
        return st

    def _pipeline(self, sid: str, fields: dict[bytes, bytes], offset: int) -> StreamPipeline:
        info = StreamInfo(sid, int(fields[b"rate"]), int(fields[b"channels"]))
        return StreamPipeline(info, [self.spec.make()], functools.partial(self._publish, sid),
                              start_offset=offset, max_lag=self.max_lag)

    async def _finish(self, st: _Stream) -> None:
        await st.pipeline.close(self.drain_timeout)  # its last events are published
        self.streams.pop(st.id, None)
        self._ack(st.partition, [i for i, _ in st.entries])

    def _checkpoint(self) -> None:
        for st in self.streams.values():
            safe = st.pipeline.checkpoint()
            done = []
            while st.entries and st.entries[0][1] <= safe:
                done.append(st.entries.popleft()[0])
            if done:
                self._ack(st.partition, done)

    # -- publishing (in order: events, then the acks they allow) ---------------------------
    def _publish(self, sid: str, events: list[Event]) -> None:
        st = self.streams.get(sid)
        if st is None:
            return  # dropped (partition given away): the next holder finds them again
        for e in events:
            e["stream"] = sid
            e.setdefault("worker", self.name)
        fresh = st.dedup.filter(events)
        if fresh:
            self._outbox.append(("events", (sid, fresh, st.dedup.state())))
            self._wake_sender()

    def _ack(self, p: int, ids: list[bytes]) -> None:
        if not ids:
            return
        self._outbox.append(("ack", (p, ids)))
        self._wake_sender()

    def _wake_sender(self) -> None:
        self._wake.set()
        self._send_wake.set()

    async def send_loop(self) -> None:
        """Everything queued goes out in one MULTI/EXEC: events with the dedup state they
        leave, jobs, then the acks they allow — in order, all or nothing."""
        while True:
            if not self._outbox:
                self._send_wake.clear()
                await self._send_wake.wait()
                continue
            batch = [self._outbox[i] for i in range(min(len(self._outbox), 500))]
            try:
                await self._send(batch)
            except Exception as exc:
                log.warning("%s %s: publish: %s (retrying)", self.name, self.kind, exc)
                await asyncio.sleep(0.5)
                continue
            for _ in batch:
                self._outbox.popleft()
            if self.mqtt is not None:  # committed on Redis: now to MQTT, once each
                for kind, item in batch:
                    if kind == "events":
                        for e in item[1]:
                            self.mqtt.offer(item[0], e)

    async def _send(self, batch: list[tuple[str, Any]]) -> None:
        k = self.keys
        minid = f"{int((time.time() - self.retention) * 1000)}-0"
        pipe = self.redis.pipeline(transaction=True)
        states: dict[str, dict[str, Any]] = {}
        for kind, item in batch:
            if kind == "ack":
                p, ids = item
                pipe.xack(k.audio(p), self.group, *ids)
                continue
            sid, events, state = item
            if state is not None:
                states[sid] = state
                pipe.hset(k.dedup(sid), self.kind, json.dumps(state))
            pipe.xadd(k.events, {"stream": sid, "origin": self.name,
                                 "events": json.dumps(events, separators=(",", ":"))},
                      minid=minid, approximate=True)
            for e in events:
                if storage_work(e) is not None:  # stored or cut once, by a gateway
                    pipe.xadd(k.jobs, {"stream": sid,
                                       "event": json.dumps(e, separators=(",", ":"))},
                              minid=minid, approximate=True)
        for sid in states:
            pipe.expire(k.dedup(sid), 7 * 86400)
        await pipe.execute()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class LogWorker:
    """``earshot worker --bus URL KIND...``: serve one or more processor kinds."""

    def __init__(self, url: str, specs: list[ProcessorSpec], *, name: str | None = None,
                 lease_ttl: float = 3.0, start_from: str = "latest",
                 max_lag: float = 3600.0, retention: float = 60.0,
                 mqtt: Any = None) -> None:
        self.url, self.keys = parse_bus_url(url)
        self.mqtt = mqtt
        self.retention = retention
        self.specs = specs
        self.name = name or worker_name()
        self.lease_ttl = lease_ttl
        self.start_from = start_from
        self.max_lag = max_lag
        self.consumers: list[KindConsumer] = []

    async def run(self) -> None:
        redis = connect(self.url)
        if self.mqtt is not None:
            self.mqtt.start()
        self.consumers = [KindConsumer(redis, self.keys, spec, name=self.name,
                                       lease_ttl=self.lease_ttl, start_from=self.start_from,
                                       max_lag=self.max_lag, retention=self.retention,
                                       mqtt=self.mqtt)
                          for spec in self.specs]
        tasks = [asyncio.create_task(f()) for c in self.consumers
                 for f in (c.lease_loop, c.read_loop, c.send_loop)]
        log.info("worker %s serving %s on %s", self.name,
                 ", ".join(c.kind for c in self.consumers), self.url)
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            for c in self.consumers:
                await c.release_all()
            with contextlib.suppress(Exception):
                await redis.aclose()
            if self.mqtt is not None:
                await self.mqtt.close()
