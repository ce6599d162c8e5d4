"""A file of an archive that is in the object store only: read by ranged GETs.

:class:`RemoteFile` is what :mod:`earshot.storage.parts` reads when a part is not on the
local disk (it has the ``name``, ``suffix`` and ``size`` a reader needs of a ``Path``):
``pread`` and ``iter_range`` fetch exactly the bytes asked for with one ranged GET, and
``open`` gives a seekable file (for soundfile's FLAC and Ogg decoders) that fetches a block
at a time. Nothing here ever downloads a whole object to answer a small range.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

BLOCK = 256 * 1024  # bytes one read of an opened RemoteFile fetches (soundfile decoders)


class RangeReader(Protocol):
    """What a RemoteFile needs of the store (:class:`~earshot.storage.objects.S3ObjectStore`)."""

    def iter_range(self, name: str, start: int = 0, end: int | None = None,
                   chunk_size: int = ...) -> Iterator[bytes]: ...


@dataclass
class ReadCounter:
    """Requests made and bytes fetched by remote reads (for /metrics and the tests)."""

    requests: int = 0
    bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, requests: int, n: int) -> None:
        with self.lock:
            self.requests += requests
            self.bytes += n


class RemoteFile:
    """One object: ``rel`` its path relative to the data directory (its key under the
    store's prefix), ``size`` its length in bytes (from the metadata store)."""

    def __init__(self, store: RangeReader, rel: str, size: int,
                 counter: ReadCounter | None = None) -> None:
        self.store = store
        self.rel = rel
        self.name = rel.rsplit("/", 1)[-1]
        dot = self.name.rfind(".")
        self.suffix = self.name[dot:] if dot > 0 else ""
        self.size = size
        self.counter = counter or ReadCounter()
        self._head: bytes | None = None

    def __repr__(self) -> str:
        return f"RemoteFile({self.rel!r}, {self.size})"

    def iter_range(self, start: int, end: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
        """Bytes ``[start, end)`` streamed from one ranged GET."""
        end = min(end, self.size)
        if end <= start:
            return
        self.counter.add(1, 0)
        for data in self.store.iter_range(self.rel, start, end, chunk_size=chunk):
            self.counter.add(0, len(data))
            yield data

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer at the end), by one ranged GET."""
        if offset == 0 and self._head is not None and length <= len(self._head):
            return self._head[:length]
        data = b"".join(self.iter_range(offset, offset + length))
        if offset == 0:
            self._head = data
        return data

    def open(self) -> BinaryIO:
        """A seekable, buffered file over ranged GETs of :data:`BLOCK` bytes."""
        return io.BufferedReader(_Raw(self), buffer_size=BLOCK)  # type: ignore[return-value,unused-ignore]


class _Raw(io.RawIOBase):
    def __init__(self, f: RemoteFile) -> None:
        self.f = f
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.f.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, b: Any) -> int:
        want = min(len(b), self.f.size - self.pos)
        if want <= 0:
            return 0
        data = self.f.pread(self.pos, want)
        n = len(data)
        memoryview(b)[:n] = data
        self.pos += n
        return n
