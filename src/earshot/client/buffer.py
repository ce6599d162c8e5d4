"""Where a publisher keeps the audio the server has not acknowledged yet.

The publisher's core (:class:`earshot.client.protocol.PublisherProtocol`) never stores audio
itself: it appends what the application sends to an :class:`AudioBuffer`, reads from it what
the server lacks, and releases what the server has acknowledged. Offsets are frames of the
server stream (sample frames; for Opus, samples of the stream at its rate). Three buffers
implement the interface:

* :class:`MemoryBuffer` — PCM bytes in memory, bounded (a :class:`~earshot.client.Publisher`'s
  ten minutes by default, after which :meth:`~earshot.client.Publisher.send` waits);
* :class:`PacketBuffer` — whole Opus packets in memory, each at its stream offset (packet
  ``i`` begins at ``D_i - pre_skip``, see :mod:`earshot.codec.opus`);
* :class:`SpoolBuffer` — a spool entry on disk (:mod:`earshot.client.spool`): audio that
  survives the process and waits out an outage of any length.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from earshot.client.spool import Dropped, Spool, SpoolEntry, SpoolError
from earshot.errors import ClientError

__all__ = ["AudioBuffer", "MemoryBuffer", "PacketBuffer", "SpoolBuffer"]


class AudioBuffer(Protocol):
    """The audio of one stream that is not acknowledged yet, by stream offset.

    The core uses only these members. ``start`` and ``end`` bound what is held; ``read``
    from any offset in between gives whole frames (or one whole packet) and the offset after
    them; ``release`` forgets what the server acknowledged. ``closed`` says nothing more will
    be appended (capture ended: the core sends ``stop`` once everything is sent). Durable
    buffers also remember the server stream they feed (``bind``) and may be ``cut``: audio
    of the stream was lost from them, so the stream ends as it is and the rest belongs to a
    new one.
    """

    @property
    def start(self) -> int:
        """Stream offset of the first frame held (everything before it was released)."""
        ...

    @property
    def end(self) -> int:
        """Stream offset after the last frame appended."""
        ...

    @property
    def capacity(self) -> int | None:
        """Frames this buffer may hold unacknowledged before appends wait; None: no bound
        (a spool makes room its own way)."""
        ...

    @property
    def closed(self) -> bool:
        """Capture ended: nothing more will be appended."""
        ...

    @property
    def cut(self) -> bool:
        """Audio of this stream was lost from the buffer: its stream ends as it is."""
        ...

    def append(self, data: bytes, frames: int) -> None:
        """Append ``frames`` frames of wire data (PCM frames, or one Opus packet)."""
        ...

    def read(self, offset: int, max_frames: int) -> tuple[bytes, int]:
        """The wire data from ``offset`` on (at most ``max_frames`` PCM frames, or the one
        packet that ends after ``offset``) and the offset after it; ``(b"", offset)`` if the
        buffer has none there."""
        ...

    def release(self, offset: int) -> None:
        """The server acknowledged everything before ``offset``: forget it."""
        ...

    def close(self) -> None:
        """End capture (after :meth:`close`, :attr:`closed` is true)."""
        ...

    def bind(self, stream: str, resume_token: str) -> bool:
        """Remember the server stream this audio goes to, before any of it is sent there.

        False when the buffer was cut meanwhile: the stream is to be ended as it is."""
        ...


class MemoryBuffer:
    """PCM frames in memory, at most ``capacity`` frames unacknowledged.

    ``start`` is where the buffer begins (a publisher continuing a stream the server already
    holds ``start`` frames of). (Its state is plain attributes: it is on the hot path of
    every message.)"""

    cut = False  # nothing is ever lost from memory

    def __init__(self, frame_bytes: int, capacity: int, *, start: int = 0) -> None:
        if frame_bytes <= 0:
            raise ClientError(f"frame_bytes must be positive, not {frame_bytes}")
        if start < 0:
            raise ClientError(f"a buffer cannot start at a negative offset ({start})")
        self.frame_bytes = frame_bytes
        self.capacity: int | None = max(1, capacity)
        self.start = start
        self.end = start
        self.closed = False
        self._data = bytearray()

    def append(self, data: bytes, frames: int) -> None:
        if len(data) != frames * self.frame_bytes:
            raise ClientError(f"{len(data)} bytes is not {frames} frames of "
                              f"{self.frame_bytes} bytes")
        self._data += data
        self.end += frames

    def read(self, offset: int, max_frames: int) -> tuple[bytes, int]:
        if not self.start <= offset < self.end or max_frames <= 0:
            return b"", offset
        n = min(self.end - offset, max_frames)
        fb = self.frame_bytes
        at = (offset - self.start) * fb
        return bytes(self._data[at : at + n * fb]), offset + n

    def release(self, offset: int) -> None:
        offset = min(offset, self.end)
        if offset > self.start:
            del self._data[: (offset - self.start) * self.frame_bytes]
            self.start = offset

    def close(self) -> None:
        self.closed = True

    def bind(self, stream: str, resume_token: str) -> bool:
        return True


class PacketBuffer:
    """Whole Opus packets in memory, each at its stream offset.

    The first packet begins at ``first`` (``-pre_skip``: the encoder's lookahead, which the
    server's decoder drops), so stream sample ``k`` is the ``k``-th sample encoded. ``end``
    is never below 0."""

    def __init__(self, capacity: int, *, first: int = 0) -> None:
        self._capacity = max(1, capacity)
        self._packets: deque[tuple[int, int, bytes]] = deque()  # (offset, frames, packet)
        self._next = first  # stream offset of the next packet
        self._start = 0
        self._closed = False

    @property
    def start(self) -> int:
        return self._start

    @property
    def end(self) -> int:
        return max(0, self._next)

    @property
    def capacity(self) -> int | None:
        return self._capacity

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def cut(self) -> bool:
        return False

    @property
    def packets(self) -> int:
        """Packets held."""
        return len(self._packets)

    def append(self, data: bytes, frames: int) -> None:
        if frames <= 0:
            raise ClientError(f"an Opus packet of {frames} samples")
        self._packets.append((self._next, frames, bytes(data)))
        self._next += frames

    def read(self, offset: int, max_frames: int) -> tuple[bytes, int]:
        for at, n, packet in self._packets:
            if at + n > offset:
                return packet, at + n
        return b"", offset

    def release(self, offset: int) -> None:
        packets = self._packets
        while packets and packets[0][0] + packets[0][1] <= offset:
            packets.popleft()
        self._start = max(self._start, min(offset, self.end))

    def close(self) -> None:
        self._closed = True

    def bind(self, stream: str, resume_token: str) -> bool:
        return True


class SpoolBuffer:
    """One server stream's part of a spool entry: entry frame ``origin + k`` is stream frame
    ``k``.

    ``origin`` is the entry's when the buffer is made. If the spool drops audio of the entry
    that was not acknowledged (``drop-oldest`` on a full spool), the entry's origin moves
    past the gap: this buffer is :attr:`cut`, its stream ends as it is and what follows
    goes to a new stream (a new buffer). Appends go through :meth:`Spool.append` (which
    makes room by the spool's policy); ``on_dropped`` hears what it dropped."""

    def __init__(self, entry: SpoolEntry, *, spool: Spool | None = None,
                 origin: int | None = None,
                 on_dropped: Callable[[list[Dropped]], None] | None = None) -> None:
        self.entry = entry
        self.spool = spool
        self.origin = entry.origin if origin is None else origin
        self.frame_bytes = entry.frame_bytes
        self.on_dropped = on_dropped

    @property
    def start(self) -> int:
        return max(0, self.entry.acked - self.origin)

    @property
    def end(self) -> int:
        return max(0, self.entry.written - self.origin)

    @property
    def capacity(self) -> int | None:
        return None

    @property
    def closed(self) -> bool:
        return self.entry.closed

    @property
    def cut(self) -> bool:
        return self.entry.origin != self.origin

    def append(self, data: bytes, frames: int) -> None:
        if self.spool is None:
            raise SpoolError(f"spool entry {self.entry.id} is being delivered, not captured")
        if len(data) != frames * self.frame_bytes:
            raise SpoolError(f"{len(data)} bytes is not {frames} frames of "
                             f"{self.frame_bytes} bytes")
        dropped = self.spool.append(self.entry, data)  # SpoolFull under when_full="stop"
        if dropped and self.on_dropped is not None:
            self.on_dropped(dropped)

    def read(self, offset: int, max_frames: int) -> tuple[bytes, int]:
        if offset < 0:
            return b"", offset
        data = self.entry.read(self.origin + offset, max_frames)
        return data, offset + len(data) // self.frame_bytes

    def release(self, offset: int) -> None:
        if not self.cut:  # else the frames are the next stream's to account for
            self.entry.ack(self.origin + offset)

    def close(self) -> None:
        self.entry.close_capture()

    def bind(self, stream: str, resume_token: str) -> bool:
        return self.entry.set_stream(stream, resume_token, self.origin)
