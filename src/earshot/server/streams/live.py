"""What a live stream is on a gateway, and who feeds it.

A :class:`LiveStream` is the hub's record of one stream held here: its metadata record, its
:class:`~earshot.server.streams.writer.StreamWriter` (archive and acks), the connection
feeding it (an :class:`Owner`), and what hangs off it (processors, relay, voice cleanup).
The hub owns the registry of them; the batch path (:mod:`earshot.server.streams.batch`)
moves their audio; nobody else writes their fields.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from earshot.audio import StreamSpec
from earshot.dsp.cleanup import AlignedCleanup
from earshot.processors.runner import StreamPipeline
from earshot.server.streams.relay import OpusRelay
from earshot.server.streams.writer import StreamWriter
from earshot.storage.archive import Archive
from earshot.storage.metadata import StreamRecord

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_stream_id(now: float | None = None) -> str:
    """Time-sortable, unguessable, filename-safe: base36 milliseconds + 8 random hex."""
    ms = int((time.time() if now is None else now) * 1000)
    head = ""
    while ms:
        ms, r = divmod(ms, 36)
        head = _B36[r] + head
    return head + secrets.token_hex(4)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Owner(Protocol):
    """The connection currently feeding a stream, as the gateway sees it: the ingest
    WebSocket (:class:`~earshot.server.ingest.session.IngestSession`), or any adapter that
    opens streams through the hub."""

    def post(self, message: dict[str, Any]) -> None:
        """Queue a message for the client, in order, without waiting."""

    def ack(self, offset: int) -> None:
        """Queue the acknowledgement of everything up to ``offset`` frames (after the
        events posted before it)."""

    async def kick(self, code: str, message: str) -> None:
        """End the connection with an error ``code`` (the stream stays resumable)."""


@dataclass(eq=False)
class LiveStream:
    rec: StreamRecord
    writer: StreamWriter
    compat: bool
    owner: Owner | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pipeline: StreamPipeline | None = None
    detaching: asyncio.Event | None = None
    relay: OpusRelay | None = None
    cleanup: AlignedCleanup | None = None  # voice cleanup for listeners, chosen processors
    processors: list[str] = field(default_factory=list)  # names told to the client
    done: set[str] = field(default_factory=set)  # remote processors done with the stream
    done_changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: nobody received its last batch live (no processor ran on it, no listener, no log):
    #: the batch path makes its batches the longest the cadence allows
    quiet: bool = False

    @property
    def id(self) -> str:
        return self.rec.id

    @property
    def archive(self) -> Archive:
        return self.writer.archive

    @property
    def spec(self) -> StreamSpec:
        return self.writer.spec

    @property
    def offset(self) -> int:
        """Frames received: written to the archive plus pending."""
        return self.writer.offset

    @property
    def t(self) -> float:
        """Stream time of the newest frame received, in seconds."""
        return self.writer.offset / self.rec.rate
