"""One live stream's archive and acknowledgements: a core without sockets or asyncio.

Audio is batched in memory only until the next ack is due (``ack_interval`` seconds of
audio, or that long in wall time for a trickling client), then written to the archive with
one ``os.write`` and acknowledged. So per audio message the hot path is one
``list.append`` of the message, joined once per batch (one copy; a ``bytearray`` grown per
message would copy the batch so far on each reallocation); conversion, the write syscall
and the JSON ack happen once per batch.
Time is passed in (``now``), so the batching rules are tested with a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from earshot.audio import StreamSpec, f32_to_s16
from earshot.storage.archive import AppendResult, Archive


@dataclass(frozen=True, slots=True)
class Written:
    """One batch as it went into the archive."""

    first: int  # frame offset of the batch
    frames: int
    data: bytes  # the batch in the wire format (s16 for Opus streams)
    result: AppendResult  # what the archive wrote (``written``) and had to fix

    @property
    def nbytes(self) -> int:
        return len(self.data)


FIXES = (("non_finite", "non-finite samples (NaN/Inf) were written as 0"),
         ("clipped", "samples beyond ±1.0 were saturated"))


class StreamWriter:
    """Owns a live stream's archive, the batch not yet written, and what was acknowledged."""

    def __init__(self, archive: Archive, *, ack_interval: float, header_interval: float,
                 now: float, decoder: Any = None) -> None:
        self.archive = archive
        self.set_interval(ack_interval)
        self.header_interval = header_interval
        self.decoder = decoder  # OpusDecoder for opus streams: packets become s16 on arrival
        self._chunks: list[bytes] = []  # the pending batch, message by message
        self.last = b""  # the newest message's audio as queued (Opus: decoded to s16)
        self.pending_frames = 0
        self.pending_since = 0.0
        self.batch = 0  # number of the pending batch (counts the batches written)
        self.newest = 0.0  # when the newest pending audio arrived
        self.acked = archive.frames
        self.header_synced = now
        self.fixed = {"non_finite": 0, "clipped": 0}
        self._warned: set[str] = set()

    @property
    def spec(self) -> StreamSpec:
        return self.archive.spec

    def set_interval(self, ack_interval: float) -> None:
        """Batches of this length from now on (the gateway's cadence, server/cadence.py);
        the batch being filled is flushed by the new rule."""
        self.ack_interval = ack_interval
        self._due_frames = self.archive.spec.rate * ack_interval

    def reformat(self, spec: StreamSpec, decoder: Any) -> None:
        """After a resume the wire format may differ (same rate and channels)."""
        self.archive.spec = spec
        self.decoder = decoder

    @property
    def offset(self) -> int:
        """Frames received: written to the archive plus pending."""
        return self.archive.frames + self.pending_frames

    def add(self, data: bytes | bytearray | memoryview, frames: int, now: float) -> bool:
        """Queue whole frames (or one Opus packet); True when a flush is due.

        Raises :class:`~earshot.errors.ProtocolError` (``bad_opus``) for a packet libopus
        cannot decode.
        """
        if self.decoder is not None:
            pcm = self.decoder.decode(data)
            data, frames = f32_to_s16(pcm).samples.tobytes(), len(pcm)
            if not frames:
                return False
        if type(data) is not bytes:  # held until the batch is written: never a buffer
            data = bytes(data)       # its caller could reuse
        if not self.pending_frames:
            self.pending_since = now
        self.newest = now
        self._chunks.append(data)
        self.last = data
        self.pending_frames += frames
        return self.pending_frames >= self._due_frames

    def write(self) -> Written | None:
        """Write what is pending to the archive (one ``os.write``); None if nothing was."""
        frames = self.pending_frames
        if not frames:
            return None
        chunks, self._chunks = self._chunks, []
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.pending_frames = 0
        self.batch += 1
        first = self.archive.frames
        result = self.archive.append(data)
        if result.non_finite:
            self.fixed["non_finite"] += result.non_finite
        if result.clipped:
            self.fixed["clipped"] += result.clipped
        return Written(first, frames, data, result)

    def take_ack(self) -> int | None:
        """The offset to acknowledge now (everything written), or None if already told."""
        offset = self.archive.frames
        if offset <= self.acked:
            return None
        self.acked = offset
        return offset

    def warnings(self) -> list[dict[str, Any]]:
        """One warning per kind, the first time samples had to be fixed."""
        fixed = self.fixed
        if not (fixed["non_finite"] or fixed["clipped"]):
            return []  # the common case, once per ack
        out = []
        for code, what in FIXES:
            count = self.fixed[code]
            if count and code not in self._warned:
                self._warned.add(code)
                out.append({"type": "warning", "code": code, "count": count,
                            "message": f"{count} {what}; later ones are counted in "
                                       "/metrics only"})
        return out

    def flush_due(self, now: float) -> bool:
        """A trickling client: its oldest pending audio waited an ack interval."""
        return bool(self.pending_frames) and now >= self.due_at

    @property
    def due_at(self) -> float:
        """When the pending batch is due by time (its oldest audio waited an interval)."""
        return self.pending_since + self.ack_interval

    def sync_header_if_due(self, now: float) -> bool:
        """Patch the RIFF sizes every ``header_interval`` (crash-safe readers see them)."""
        if now - self.header_synced < self.header_interval:
            return False
        self.archive.sync()
        self.header_synced = now
        return True

    def trim_tail(self, length: int, *, limit: int) -> int:
        """Cut an encoder's end padding (``stop`` with ``length``), at most ``limit``
        frames. Returns the frames it would have had to cut beyond that (0: done)."""
        extra = self.archive.frames - length
        if 0 < extra <= limit:
            self.archive.writer.truncate(length)
            return 0
        return max(0, extra)
