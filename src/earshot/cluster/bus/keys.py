"""The data model of earshot on Redis: key names and entry fields (a public interface).

Everything lives under one prefix (``earshot:`` by default); the README's "Data model on
Redis" section documents these for users who consume the log with plain redis-py.

* ``{prefix}audio:{p}`` — Redis Stream, one of ``partitions`` shards of the audio log. A
  stream's entries all go to partition ``crc32(stream id) % partitions``, in order. Fields:
  ``kind`` (``start`` | ``audio`` | ``end``), ``stream``, ``offset`` (first frame), ``rate``,
  ``channels``, and for ``audio``: ``frames``, ``format`` (``s16``/``f32``), ``data`` (the
  archived samples, little-endian, interleaved); for ``start``: ``procs`` (processor refs the
  stream asked for, comma-separated); for ``end``: ``state``. Trimmed by age (MINID).
* ``{prefix}events`` — Redis Stream of event batches: ``stream``, ``events`` (a JSON list),
  ``origin``; or a control entry ``control`` = ``release``, ``stream``, ``by``.
* ``{prefix}jobs`` — Redis Stream of work for gateways (cut a segment, store a final
  transcript), consumed by the consumer group ``store``.
* ``{prefix}owner:{stream}`` — the gateway holding a live stream (string, expires).
* ``{prefix}lease:{kind}:{p}`` — the worker of processor kind ``kind`` holding partition
  ``p`` (string, expires); consumer group ``{kind}`` on every partition.
* ``{prefix}workers:{kind}`` — sorted set: worker name → last heartbeat (ms).
* ``{prefix}dedup:{stream}`` — hash: processor → delivered-event state (JSON).
* ``{prefix}stats`` — hash of counters (``takeovers:{kind}``).
* ``{prefix}room:{room}:holder`` — the gateway holding a call's room (string, expires; its
  mix is made there, :mod:`earshot.server.rooms.relay`).
* ``{prefix}gateway:{name}`` — a pub/sub channel per gateway: the relay messages of calls
  (:mod:`earshot.rooms.relay`) for the rooms or the participants it has.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "earshot:"
    partitions: int = 16

    def partition(self, stream: str) -> int:
        return zlib.crc32(stream.encode()) % self.partitions

    def audio(self, p: int) -> str:
        return f"{self.prefix}audio:{p}"

    def audio_of(self, stream: str) -> str:
        return self.audio(self.partition(stream))

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}jobs"

    def owner(self, stream: str) -> str:
        return f"{self.prefix}owner:{stream}"

    def lease(self, kind: str, p: int) -> str:
        return f"{self.prefix}lease:{kind}:{p}"

    def workers(self, kind: str) -> str:
        return f"{self.prefix}workers:{kind}"

    def dedup(self, stream: str) -> str:
        return f"{self.prefix}dedup:{stream}"

    def room_holder(self, room: str) -> str:
        return f"{self.prefix}room:{room}:holder"

    def gateway(self, name: str) -> str:
        return f"{self.prefix}gateway:{name}"

    @property
    def stats(self) -> str:
        return f"{self.prefix}stats"

    def group(self, kind: str) -> str:
        return kind


STORE_GROUP = "store"


def parse_bus_url(url: str) -> tuple[str, Keys]:
    """``redis://host:port/db?prefix=earshot:&partitions=16`` → (redis URL, keys)."""
    from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

    from earshot.errors import ConfigError

    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"bus URL {url!r}: use redis://HOST:PORT/DB (or rediss://, unix://)")
    query = parse_qs(parts.query)
    prefix = query.pop("prefix", ["earshot:"])[0]
    try:
        partitions = int(query.pop("partitions", ["16"])[0])
    except ValueError:
        raise ConfigError(f"bus URL {url!r}: partitions must be a whole number") from None
    if not 1 <= partitions <= 1024:
        raise ConfigError(f"bus URL {url!r}: partitions must be between 1 and 1024")
    rest = urlencode({k: v[0] for k, v in query.items()})
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, "")), Keys(prefix,
                                                                               partitions)
